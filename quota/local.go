package quota

import (
	"context"
	"fmt"
	"time"
)

// Local is the quota of one API group on a single node (SQLite): an
// in-process sliding window for the waiting (fair, in arrival order, no
// polling of the store), and the log for memory. Each call it admits is in
// the log before Wait returns, that is before the call is sent, and a new
// Local starts with the calls of the last hour and the throttle in force.
// So a process killed at any instant, restarted at once and killed again
// still never sends more than the quota allows.
type Local struct {
	log    Log
	group  string
	window *WindowLimiter
	now    func() time.Time
}

var _ Throttler = (*Local)(nil)

// NewLocal returns the limiter of group with what log remembers of it.
func NewLocal(ctx context.Context, log Log, group string, w Windows) (*Local, error) {
	l := &Local{log: log, group: group, window: NewWindowLimiter(w.PerMinute, w.PerHour, nil).WithSlack(w.Slack), now: time.Now}
	calls, err := log.QuotaCalls(ctx, group, l.now().Add(-time.Hour-w.Slack))
	if err != nil {
		return nil, err
	}
	l.window.Remember(calls)
	until, err := log.QuotaThrottle(ctx, group)
	if err != nil {
		return nil, err
	}
	if !until.IsZero() {
		l.window.Throttle(until)
	}
	return l, nil
}

// Wait admits one call when the quota allows it and records it in the log
// before returning. When the record fails the call must not be made: Wait
// returns the error, and the slot stays taken in process (a call that was
// perhaps recorded must count).
func (l *Local) Wait(ctx context.Context) (time.Duration, error) {
	waited, err := l.window.Wait(ctx)
	if err != nil {
		return 0, err
	}
	// Not under the caller's deadline: a deadline that fell during the
	// commit would leave it unknown whether the call was recorded.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), txTimeout)
	defer cancel()
	if err := l.log.RecordQuotaCall(rctx, l.group, l.now()); err != nil {
		return 0, fmt.Errorf("quota: %w", err)
	}
	return waited, nil
}

// Throttle implements Throttler: the waiting calls of this process are held
// back at once, and the throttle is kept in the log for a restart within
// it (best effort: a throttle not kept costs only more 429s).
func (l *Local) Throttle(until time.Time) {
	l.window.Throttle(until)
	ctx, cancel := context.WithTimeout(context.Background(), txTimeout)
	defer cancel()
	_ = l.log.SetQuotaThrottle(ctx, l.group, until)
}
