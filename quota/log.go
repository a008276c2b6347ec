package quota

import (
	"context"
	"time"
)

// Log is where the calls and throttles are kept so that they outlive the
// process: the store (*store.Store).
type Log interface {
	// QuotaCalls returns the calls of group made after since, oldest first.
	QuotaCalls(ctx context.Context, group string, since time.Time) ([]time.Time, error)
	// RecordQuotaCall keeps a call of group made at at.
	RecordQuotaCall(ctx context.Context, group string, at time.Time) error
	// QuotaThrottle returns until when group is held back (zero: not).
	QuotaThrottle(ctx context.Context, group string) (time.Time, error)
	// SetQuotaThrottle holds group back until until, unless it is already
	// held back longer.
	SetQuotaThrottle(ctx context.Context, group string, until time.Time) error
	// AdmitQuotaCall records a call of group at now when both windows allow
	// it and returns 0, or returns how long to wait first; it is atomic
	// across every process sharing the log.
	AdmitQuotaCall(ctx context.Context, group string, now time.Time, w Windows) (time.Duration, error)
}

// Windows is the quota of one API group.
type Windows struct {
	// PerMinute and PerHour bound the calls of any 60 s and 3600 s.
	PerMinute, PerHour int
	// Slack lengthens both windows (see WindowLimiter).
	Slack time.Duration
}

// txTimeout bounds one transaction of the log.
const txTimeout = 10 * time.Second
