package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/responder-dev/responder/quota"
)

// The quota log (package quota): every call admitted is a row of
// responder_quota, and a 429's Retry-After a responder_setting row that
// holds the group back. *Store implements quota.Log.
var _ quota.Log = (*Store)(nil)

// quotaThrottleKey names the setting that holds a group back until a time
// (unix ms) after a 429.
func quotaThrottleKey(group string) string { return "quota_throttle:" + group }

// quotaKeep is how far back calls are kept: an hour and the slack.
const quotaKeep = time.Hour + quota.DefaultSlack

// QuotaCalls implements quota.Log. It also reads, once, the windows that
// versions before the per-call log saved every few seconds as a setting,
// and keeps them as rows, so that an upgrade does not forget them.
func (s *Store) QuotaCalls(ctx context.Context, group string, since time.Time) ([]time.Time, error) {
	if err := s.convertSavedQuota(ctx, group); err != nil {
		return nil, err
	}
	rows, err := s.DB.QueryContext(ctx, `SELECT at_ms FROM responder_quota WHERE grp = $1 AND at_ms > $2 ORDER BY at_ms`, group, ms(since))
	if err != nil {
		return nil, fmt.Errorf("reading the quota calls of %s: %w", group, err)
	}
	defer rows.Close()
	var calls []time.Time
	for rows.Next() {
		var at int64
		if err := rows.Scan(&at); err != nil {
			return nil, fmt.Errorf("reading the quota calls of %s: %w", group, err)
		}
		calls = append(calls, time.UnixMilli(at))
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading the quota calls of %s: %w", group, err)
	}
	return calls, nil
}

func (s *Store) convertSavedQuota(ctx context.Context, group string) error {
	key := "quota_calls:" + group
	var value string
	err := s.DB.QueryRowContext(ctx, `SELECT value FROM responder_setting WHERE name = $1`, key).Scan(&value)
	if errors.Is(err, sql.ErrNoRows) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading the saved quota of %s: %w", group, err)
	}
	var saved []int64
	_ = json.Unmarshal([]byte(value), &saved) // unreadable: a hint lost, not a reason to stop
	return s.InTx(ctx, func(tx *sql.Tx) error {
		for _, at := range saved {
			if _, err := tx.ExecContext(ctx, `INSERT INTO responder_quota (grp, at_ms) VALUES ($1, $2)`, group, at); err != nil {
				return fmt.Errorf("converting the saved quota of %s: %w", group, err)
			}
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM responder_setting WHERE name = $1`, key); err != nil {
			return fmt.Errorf("converting the saved quota of %s: %w", group, err)
		}
		return nil
	})
}

// RecordQuotaCall implements quota.Log, forgetting the calls that can no
// longer count. The commit is not flushed at once (RedoableTx): a committed
// transaction survives the process being killed, and only a power loss
// could forget the last few calls, while an fsync per call would lengthen
// every collection's way to Defender.
func (s *Store) RecordQuotaCall(ctx context.Context, group string, at time.Time) error {
	err := s.RedoableTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM responder_quota WHERE grp = $1 AND at_ms <= $2`, group, ms(at.Add(-quotaKeep))); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO responder_quota (grp, at_ms) VALUES ($1, $2)`, group, ms(at))
		return err
	})
	if err != nil {
		return fmt.Errorf("quota: recording a call of %s: %w", group, err)
	}
	return nil
}

// QuotaThrottle implements quota.Log.
func (s *Store) QuotaThrottle(ctx context.Context, group string) (time.Time, error) {
	until, err := throttledUntil(ctx, s.DB, group)
	return fromMS(until), err
}

// SetQuotaThrottle implements quota.Log: it keeps until unless a later
// throttle is kept.
func (s *Store) SetQuotaThrottle(ctx context.Context, group string, until time.Time) error {
	v := strconv.FormatInt(ms(until), 10)
	_, err := s.DB.ExecContext(ctx, `INSERT INTO responder_setting (name, value, updated_at) VALUES ($1, $2, $3)
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

// AdmitQuotaCall implements quota.Log for replicas sharing the store: in
// one transaction that locks the group's row (PostgreSQL), it counts the
// calls of both windows and records a new one at now when both allow it;
// else it says how long to wait for the call that must leave a window, or
// for the group's throttle.
func (s *Store) AdmitQuotaCall(ctx context.Context, group string, now time.Time, w quota.Windows) (time.Duration, error) {
	var wait time.Duration
	key := "quota:" + group
	nowMS := ms(now)
	err := s.InTx(ctx, func(tx *sql.Tx) error {
		wait = 0
		if _, err := tx.ExecContext(ctx, `INSERT INTO responder_setting (name, value, updated_at) VALUES ($1, '', 0) ON CONFLICT (name) DO NOTHING`, key); err != nil {
			return fmt.Errorf("quota: %w", err)
		}
		if s.Driver == DriverPostgres {
			if _, err := tx.ExecContext(ctx, `SELECT value FROM responder_setting WHERE name = $1 FOR UPDATE`, key); err != nil {
				return fmt.Errorf("quota: locking: %w", err)
			}
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM responder_quota WHERE grp = $1 AND at_ms <= $2`, group, ms(now.Add(-time.Hour-w.Slack))); err != nil {
			return fmt.Errorf("quota: pruning: %w", err)
		}
		until, err := throttledUntil(ctx, tx, group)
		if err != nil {
			return err
		}
		if until > nowMS {
			wait = time.Duration(until-nowMS) * time.Millisecond
			return nil
		}
		for _, win := range []struct {
			span  int64
			limit int
		}{{(time.Minute + w.Slack).Milliseconds(), w.PerMinute}, {(time.Hour + w.Slack).Milliseconds(), w.PerHour}} {
			var n int
			var oldest sql.NullInt64
			// The call that must leave the window before a new one fits is
			// the (n-limit+1)-th oldest one in it.
			if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM responder_quota WHERE grp = $1 AND at_ms > $2`, group, nowMS-win.span).Scan(&n); err != nil {
				return fmt.Errorf("quota: counting: %w", err)
			}
			if n < win.limit {
				continue
			}
			if err := tx.QueryRowContext(ctx, fmt.Sprintf(`SELECT at_ms FROM responder_quota WHERE grp = $1 AND at_ms > $2 ORDER BY at_ms LIMIT 1 OFFSET %d`, n-win.limit),
				group, nowMS-win.span).Scan(&oldest); err != nil {
				return fmt.Errorf("quota: reading the window: %w", err)
			}
			if d := time.Duration(oldest.Int64+win.span-nowMS+1) * time.Millisecond; d > wait {
				wait = d
			}
		}
		if wait > 0 {
			return nil
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO responder_quota (grp, at_ms) VALUES ($1, $2)`, group, nowMS)
		return err
	})
	return wait, err
}
