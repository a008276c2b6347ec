package pipeline

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/responder-dev/responder/defender"
)

// The quota lives in the store on both drivers, so that a restart, even a
// crash loop, never grants a fresh quota while Defender still counts the
// calls before it: every admitted call is a row of responder_quota,
// committed before the call is sent, and a 429's Retry-After is a
// responder_setting row that holds the group back (quotaThrottleKey).
//
// On PostgreSQL (SharedLimiter) the replicas admit calls through the store
// itself. On SQLite (LocalLimiter) the one node waits in process, in arrival
// order, and only records the calls it admits.

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

// quotaThrottleKey names the setting that holds back a group until a
// time (unix ms) after a 429.
func quotaThrottleKey(group string) string { return "quota_throttle:" + group }

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
		until, err := throttledUntil(ctx, tx, l.group)
		if err != nil {
			return err
		}
		if until > now {
			wait = time.Duration(until-now) * time.Millisecond
			return nil
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
		_, err = tx.ExecContext(ctx, `INSERT INTO responder_quota (grp, at_ms) VALUES ($1, $2)`, l.group, now)
		return err
	})
	return wait, err
}

// Throttle implements defender.Throttler for every replica: no call of the
// group is admitted before until. Best effort: a throttle that cannot be
// recorded is logged by nobody and costs only more 429s.
func (l *SharedLimiter) Throttle(until time.Time) {
	ctx, cancel := context.WithTimeout(context.Background(), quotaTxTimeout)
	defer cancel()
	_ = recordThrottle(ctx, l.store, l.group, until)
}

// recordThrottle stores until as the group's throttle unless a later one is
// there.
func recordThrottle(ctx context.Context, store *Store, group string, until time.Time) error {
	v := strconv.FormatInt(ms(until), 10)
	_, err := store.DB.ExecContext(ctx, `INSERT INTO responder_setting (name, value, updated_at) VALUES ($1, $2, $3)
ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at
WHERE CAST(responder_setting.value AS BIGINT) < CAST(excluded.value AS BIGINT)`, quotaThrottleKey(group), v, ms(time.Now()))
	if err != nil {
		return fmt.Errorf("quota: recording the throttle of %s: %w", group, err)
	}
	return nil
}

// throttledUntil reads the group's throttle (unix ms; 0 when none).
func throttledUntil(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, group string) (int64, error) {
	var v string
	err := q.QueryRowContext(ctx, `SELECT value FROM responder_setting WHERE name = $1`, quotaThrottleKey(group)).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("quota: reading the throttle of %s: %w", group, err)
	}
	until, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, nil // damaged: no throttle rather than none ever again
	}
	return until, nil
}

// LocalLimiter is the quota of one API group on a single node (SQLite): an
// in-process sliding-window limiter for the waiting (fair, in arrival
// order, no polling of the store), and the store for memory. Each call it
// admits is committed to responder_quota before Wait returns, that is
// before the call is sent; at start the calls of the last hour are read
// back. So a process killed at any instant, restarted at once, and killed
// again, still never sends more than the quota allows.
type LocalLimiter struct {
	store  *Store
	group  string
	window *defender.WindowLimiter
	now    func() time.Time
}

// NewLocalLimiter returns the limiter of group with the calls and the
// throttle of the processes before this one.
func NewLocalLimiter(ctx context.Context, store *Store, group string, perMinute, perHour int, log *zap.Logger) (*LocalLimiter, error) {
	l := &LocalLimiter{
		store:  store,
		group:  group,
		window: defender.NewWindowLimiter(perMinute, perHour, nil).WithSlack(slackMS * time.Millisecond),
		now:    time.Now,
	}
	since := ms(l.now()) - 3_600_000 - slackMS
	rows, err := store.DB.QueryContext(ctx, `SELECT at_ms FROM responder_quota WHERE grp = $1 AND at_ms > $2 ORDER BY at_ms`, group, since)
	if err != nil {
		return nil, fmt.Errorf("reading the quota calls of %s: %w", group, err)
	}
	var calls []time.Time
	for rows.Next() {
		var at int64
		if err := rows.Scan(&at); err != nil {
			rows.Close()
			return nil, fmt.Errorf("reading the quota calls of %s: %w", group, err)
		}
		calls = append(calls, time.UnixMilli(at))
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading the quota calls of %s: %w", group, err)
	}
	legacy, err := l.legacyCalls(ctx, log)
	if err != nil {
		return nil, err
	}
	l.window.Remember(append(calls, legacy...))
	until, err := throttledUntil(ctx, store.DB, group)
	if err != nil {
		return nil, err
	}
	if until > 0 {
		l.window.Throttle(time.UnixMilli(until))
	}
	return l, nil
}

// legacyCalls reads, once, the windows that versions before the per-call
// record saved every few seconds, so that an upgrade does not forget them.
func (l *LocalLimiter) legacyCalls(ctx context.Context, log *zap.Logger) ([]time.Time, error) {
	key := "quota_calls:" + l.group
	var value string
	err := l.store.DB.QueryRowContext(ctx, `SELECT value FROM responder_setting WHERE name = $1`, key).Scan(&value)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the saved quota of %s: %w", l.group, err)
	}
	var saved []int64
	if err := json.Unmarshal([]byte(value), &saved); err != nil {
		log.Warn("the saved quota calls are unreadable; ignoring them", zap.String("group", l.group), zap.Error(err))
	}
	calls := make([]time.Time, len(saved))
	for i, v := range saved {
		calls[i] = time.UnixMilli(v)
	}
	// Recorded as rows, the calls outlive the setting, which goes.
	err = l.store.inTx(ctx, func(tx *sql.Tx) error {
		for _, c := range calls {
			if _, err := tx.ExecContext(ctx, `INSERT INTO responder_quota (grp, at_ms) VALUES ($1, $2)`, l.group, c.UnixMilli()); err != nil {
				return err
			}
		}
		_, err := tx.ExecContext(ctx, `DELETE FROM responder_setting WHERE name = $1`, key)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("converting the saved quota of %s: %w", l.group, err)
	}
	return calls, nil
}

// Wait admits one call when the quota allows it and records it in the store
// before returning. When the record fails the call must not be made: Wait
// returns the error, and the slot stays taken in process (a call that was
// perhaps recorded must count).
func (l *LocalLimiter) Wait(ctx context.Context) (time.Duration, error) {
	waited, err := l.window.Wait(ctx)
	if err != nil {
		return 0, err
	}
	// Not under the caller's deadline: a deadline that fell during COMMIT
	// would leave it unknown whether the call was recorded. Not flushed at
	// once (redoableTx): a committed transaction survives the process being
	// killed, and only a power loss could forget the last few calls, while
	// an fsync per call would lengthen every collection's way to Defender.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), quotaTxTimeout)
	defer cancel()
	now := ms(l.now())
	err = l.store.redoableTx(rctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(rctx, `DELETE FROM responder_quota WHERE grp = $1 AND at_ms <= $2`, l.group, now-3_600_000-slackMS); err != nil {
			return err
		}
		_, err := tx.ExecContext(rctx, `INSERT INTO responder_quota (grp, at_ms) VALUES ($1, $2)`, l.group, now)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("quota: recording a call of %s: %w", l.group, err)
	}
	return waited, nil
}

// Throttle implements defender.Throttler: the waiting calls of this process
// are held back at once, and the throttle is kept in the store for a
// restart within it.
func (l *LocalLimiter) Throttle(until time.Time) {
	l.window.Throttle(until)
	ctx, cancel := context.WithTimeout(context.Background(), quotaTxTimeout)
	defer cancel()
	_ = recordThrottle(ctx, l.store, l.group, until)
}
