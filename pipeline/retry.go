package pipeline

import (
	"errors"
	"math/rand/v2"
	"time"

	"github.com/responder-dev/responder/defender"
	"github.com/riverqueue/river"
)

// giveUp reports whether an alert whose machine could not be read from
// Defender is decided without it now: at once for a refusal that no retry
// changes, never while the quota is only waited for, and for a transient
// failure (an outage) once the alert has waited RetryFor. The caller then
// records a decision that says so, so that no accepted alert is left
// without one.
func (p *Pipeline) giveUp(received time.Time, err error) bool {
	if errors.Is(err, defender.ErrQuotaWait) {
		return false // nothing was sent: waiting is not failing
	}
	switch defender.OutcomeOf(err) {
	case defender.OutcomeForbidden, defender.OutcomeUnauthorized, defender.OutcomePermanent:
		return true
	case defender.OutcomeRateLimited:
		return false
	}
	return p.cfg.Now().Sub(received) >= p.cfg.RetryFor
}

// outageDelay is how long to wait before trying Defender again for work
// that has waited age already: half of it, between RetryBase and RetryCap,
// with jitter so that many waiting jobs do not come back together. It grows
// like a doubling backoff without counting attempts, which snoozes keep.
func (p *Pipeline) outageDelay(age time.Duration) time.Duration {
	d := min(max(age/2, p.cfg.RetryBase), p.cfg.RetryCap)
	return d - time.Duration(rand.Int64N(int64(d/5)+1))
}

// retryable maps a failed read call to queue semantics: wait as MDE asks on
// 429 (without using an attempt), give up on permanent failures, retry with
// backoff otherwise.
func (p *Pipeline) retryable(err error) error {
	if errors.Is(err, defender.ErrQuotaWait) {
		return river.JobSnooze(5 * time.Second) // nothing was sent; no attempt used
	}
	var de *defender.Error
	if errors.As(err, &de) {
		switch de.Outcome {
		case defender.OutcomeRateLimited:
			return river.JobSnooze(max(de.RetryAfter, time.Second))
		case defender.OutcomeForbidden, defender.OutcomeUnauthorized, defender.OutcomePermanent:
			return river.JobCancel(err)
		}
	}
	return err
}
