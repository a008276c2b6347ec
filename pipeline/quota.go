package pipeline

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// SharedLimiter is a sliding-window quota kept in the store, so that several
// replicas on one PostgreSQL database together never exceed MDE's quota of
// an API group (100 calls per 60 s and 1500 per hour for action POSTs). A
// call is admitted inside a transaction that locks the group's row, counts
// the calls of both windows and records the new one; when the quota is
// spent, the caller sleeps until the oldest call leaves the window.
//
// Why a shared log rather than splitting the quota evenly between replicas:
// an even split wastes the quota of idle replicas and must be reconfigured
// whenever the replica count changes; MDE counts per application and tenant,
// whatever the number of callers.
type SharedLimiter struct {
	store              *Store
	group              string
	perMinute, perHour int
	now                func() time.Time
}

// slackMS lengthens both windows by a second: a call admitted here reaches
// MDE a little later, on MDE's clock.
const slackMS = 1000

// quotaTxTimeout bounds one admission transaction.
const quotaTxTimeout = 10 * time.Second

// NewSharedLimiter returns the limiter of one API group.
func NewSharedLimiter(store *Store, group string, perMinute, perHour int) *SharedLimiter {
	return &SharedLimiter{store: store, group: group, perMinute: perMinute, perHour: perHour, now: time.Now}
}

// Wait admits one call, blocking until the quota allows it or ctx ends.
func (l *SharedLimiter) Wait(ctx context.Context) (time.Duration, error) {
	start := l.now()
	for {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		// The caller's deadline bounds the waiting, not the transaction: a
		// deadline that fell during COMMIT would leave it unknown whether
		// the call was recorded, and a recorded call that is not made
		// wastes a slot of the quota for a minute.
		tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), quotaTxTimeout)
		wait, err := l.try(tctx)
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

// try admits the call now (0), or says how long to wait.
func (l *SharedLimiter) try(ctx context.Context) (time.Duration, error) {
	var wait time.Duration
	key := "quota:" + l.group
	err := l.store.inTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO responder_setting (name, value, updated_at) VALUES ($1, '', 0) ON CONFLICT (name) DO NOTHING`, key); err != nil {
			return fmt.Errorf("quota: %w", err)
		}
		if l.store.Driver == DriverPostgres {
			if _, err := tx.ExecContext(ctx, `SELECT value FROM responder_setting WHERE name = $1 FOR UPDATE`, key); err != nil {
				return fmt.Errorf("quota: locking: %w", err)
			}
		}
		now := ms(l.now())
		if _, err := tx.ExecContext(ctx, `DELETE FROM responder_quota WHERE grp = $1 AND at_ms <= $2`, l.group, now-3_600_000-slackMS); err != nil {
			return fmt.Errorf("quota: pruning: %w", err)
		}
		wait = 0
		for _, w := range []struct {
			span  int64
			limit int
		}{{60_000 + slackMS, l.perMinute}, {3_600_000 + slackMS, l.perHour}} {
			var n int
			var oldest sql.NullInt64
			// The call that must leave the window before a new one fits is
			// the (n-limit+1)-th oldest one in it.
			if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM responder_quota WHERE grp = $1 AND at_ms > $2`, l.group, now-w.span).Scan(&n); err != nil {
				return fmt.Errorf("quota: counting: %w", err)
			}
			if n < w.limit {
				continue
			}
			if err := tx.QueryRowContext(ctx, fmt.Sprintf(`SELECT at_ms FROM responder_quota WHERE grp = $1 AND at_ms > $2 ORDER BY at_ms LIMIT 1 OFFSET %d`, n-w.limit),
				l.group, now-w.span).Scan(&oldest); err != nil {
				return fmt.Errorf("quota: reading the window: %w", err)
			}
			if d := time.Duration(oldest.Int64+w.span-now+1) * time.Millisecond; d > wait {
				wait = d
			}
		}
		if wait > 0 {
			return nil
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO responder_quota (grp, at_ms) VALUES ($1, $2)`, l.group, now)
		return err
	})
	return wait, err
}
