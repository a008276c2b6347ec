package pipeline

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/responder-dev/responder/defender"
)

// LimiterMemory keeps the quota windows of a single node's in-process
// limiters (SQLite) in the store. Without it a restart, a crash loop above
// all, would grant a fresh quota while Defender still counts the calls of
// the last minute and hour. The calls are saved every few seconds and at
// stop, so a crash forgets at most the last interval's. (On PostgreSQL the
// shared limiter keeps every call in the database already.)
type LimiterMemory struct {
	store *Store
	log   *zap.Logger

	mu       sync.Mutex
	limiters map[defender.Group]*defender.WindowLimiter
}

// limiterSaveEvery is how often the windows are saved.
const limiterSaveEvery = 5 * time.Second

// NewLimiterMemory returns an empty memory on store.
func NewLimiterMemory(store *Store, log *zap.Logger) *LimiterMemory {
	return &LimiterMemory{store: store, log: log, limiters: map[defender.Group]*defender.WindowLimiter{}}
}

func limiterKey(g defender.Group) string { return "quota_calls:" + string(g) }

// Add gives l the calls saved for group by an earlier process and keeps it
// to save.
func (m *LimiterMemory) Add(ctx context.Context, group defender.Group, l *defender.WindowLimiter) error {
	var value string
	err := m.store.DB.QueryRowContext(ctx, `SELECT value FROM responder_setting WHERE name = $1`, limiterKey(group)).Scan(&value)
	switch {
	case errors.Is(err, sql.ErrNoRows):
	case err != nil:
		return fmt.Errorf("reading the saved quota of %s: %w", group, err)
	default:
		var ms []int64
		if err := json.Unmarshal([]byte(value), &ms); err != nil {
			// Only a hint: a damaged value must not stop the start.
			m.log.Warn("the saved quota calls are unreadable; starting with a fresh window", zap.String("group", string(group)), zap.Error(err))
			break
		}
		calls := make([]time.Time, len(ms))
		for i, v := range ms {
			calls[i] = time.UnixMilli(v)
		}
		l.Remember(calls)
	}
	m.mu.Lock()
	m.limiters[group] = l
	m.mu.Unlock()
	return nil
}

// Save writes every limiter's calls of the last hour.
func (m *LimiterMemory) Save(ctx context.Context) error {
	m.mu.Lock()
	saved := make(map[string][]int64, len(m.limiters))
	for g, l := range m.limiters {
		ms := []int64{}
		for _, t := range l.Calls() {
			ms = append(ms, t.UnixMilli())
		}
		saved[limiterKey(g)] = ms
	}
	m.mu.Unlock()
	now := time.Now().UnixMilli()
	// Losing the last save in a crash forgets a few seconds of calls, no
	// more than the interval between saves does: no fsync needed.
	return m.store.redoableTx(ctx, func(tx *sql.Tx) error {
		for name, ms := range saved {
			value, err := json.Marshal(ms)
			if err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO responder_setting (name, value, updated_at) VALUES ($1, $2, $3)
ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at`, name, string(value), now); err != nil {
				return fmt.Errorf("saving the quota calls: %w", err)
			}
		}
		return nil
	})
}

// Run saves the windows every limiterSaveEvery until ctx ends, then once
// more.
func (m *LimiterMemory) Run(ctx context.Context) {
	t := time.NewTicker(limiterSaveEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			if err := m.Save(sctx); err != nil {
				m.log.Warn("saving the quota windows at stop failed", zap.Error(err))
			}
			return
		case <-t.C:
			if err := m.Save(ctx); err != nil && ctx.Err() == nil {
				m.log.Warn("saving the quota windows failed", zap.Error(err))
			}
		}
	}
}
