package quota

import (
	"context"
	"time"
)

// Shared is a sliding-window quota kept in a log that several replicas
// share (PostgreSQL), so that together they never exceed Defender's quota
// of an API group: each call is admitted in one transaction of the log
// (AdmitQuotaCall); when the quota is spent the caller sleeps until the
// oldest call leaves the window, and tries again.
//
// Why a shared log rather than splitting the quota between replicas: an
// even split wastes the quota of idle replicas and must be reconfigured
// whenever the replica count changes, while Defender counts per application
// and tenant, whatever the number of callers.
type Shared struct {
	log   Log
	group string
	w     Windows
	now   func() time.Time
}

var _ Throttler = (*Shared)(nil)

// NewShared returns the limiter of group on log.
func NewShared(log Log, group string, w Windows) *Shared {
	return &Shared{log: log, group: group, w: w, now: time.Now}
}

// Wait admits one call, blocking until the quota allows it or ctx ends.
func (l *Shared) Wait(ctx context.Context) (time.Duration, error) {
	start := l.now()
	for {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		// The caller's deadline bounds the waiting, not the transaction: a
		// deadline that fell during the commit would leave it unknown
		// whether the call was recorded, and a recorded call that is not
		// made wastes a slot of the quota for a minute.
		tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), txTimeout)
		wait, err := l.log.AdmitQuotaCall(tctx, l.group, l.now(), l.w)
		cancel()
		if err != nil {
			return 0, err
		}
		if wait <= 0 {
			return l.now().Sub(start), nil
		}
		t := time.NewTimer(min(wait, 5*time.Second))
		select {
		case <-ctx.Done():
			t.Stop()
			return 0, ctx.Err()
		case <-t.C:
		}
	}
}

// Throttle implements Throttler for every replica sharing the log (best
// effort: a throttle not kept costs only more 429s).
func (l *Shared) Throttle(until time.Time) {
	ctx, cancel := context.WithTimeout(context.Background(), txTimeout)
	defer cancel()
	_ = l.log.SetQuotaThrottle(ctx, l.group, until)
}
