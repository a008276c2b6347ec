package store

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
)

// JobCounts counts the queue's jobs by kind and state.
func (s *Store) JobCounts(ctx context.Context) (map[[2]string]float64, error) {
	rows, err := s.DB.QueryContext(ctx, `SELECT kind, state, COUNT(*) FROM river_job GROUP BY kind, state`)
	if err != nil {
		return nil, fmt.Errorf("counting jobs: %w", err)
	}
	defer rows.Close()
	out := map[[2]string]float64{}
	for rows.Next() {
		var kind, state string
		var n float64
		if err := rows.Scan(&kind, &state, &n); err != nil {
			return nil, fmt.Errorf("counting jobs: %w", err)
		}
		out[[2]string{kind, state}] = n
	}
	return out, rows.Err()
}

// RecoverRunningJobs makes the jobs a dead process left running available
// again at once, and returns how many. Only for SQLite: this process is the
// only node (the store holds an exclusive lock), so a running job belongs to
// a dead process; the queue's own rescuer would wait for minutes.
func (s *Store) RecoverRunningJobs(ctx context.Context) (int64, error) {
	res, err := s.DB.ExecContext(ctx,
		`UPDATE river_job SET state = 'available', scheduled_at = datetime('now', 'subsec') WHERE state = 'running'`)
	if err != nil {
		return 0, fmt.Errorf("recovering in-flight jobs: %w", err)
	}
	n, _ := res.RowsAffected()
	return n, nil
}

// TakeUndispatched marks up to limit alert rows dispatched, skipping rows
// another replica holds, and runs enqueue with their ids in the same
// transaction (PostgreSQL): a row is marked only with its job committed.
func (s *Store) TakeUndispatched(ctx context.Context, limit int, enqueue func(tx *sql.Tx, ids []int64) error) (int, error) {
	q := fmt.Sprintf(`UPDATE responder_alert SET dispatched = 1 WHERE id IN (
SELECT id FROM responder_alert WHERE dispatched = 0 ORDER BY id LIMIT %d FOR UPDATE SKIP LOCKED) RETURNING id`, limit)
	var ids []int64
	err := s.RetryTx(ctx, func(tx *sql.Tx) error {
		var err error
		if ids, err = queryIDs(ctx, tx, q); err != nil || len(ids) == 0 {
			return err
		}
		return enqueue(tx, ids)
	})
	return len(ids), err
}

// Undispatched returns up to limit alert rows not yet dispatched, oldest
// first (SQLite: the one node is the only dispatcher).
func (s *Store) Undispatched(ctx context.Context, limit int) ([]int64, error) {
	return queryIDs(ctx, s.DB, fmt.Sprintf(`SELECT id FROM responder_alert WHERE dispatched = 0 ORDER BY id LIMIT %d`, limit))
}

// MarkDispatched marks alert rows dispatched. The commit need not be flushed
// at once: rows a power loss forgets are dispatched again, and their second
// evaluation finds them decided.
func (s *Store) MarkDispatched(ctx context.Context, ids []int64) error {
	return s.RedoableTx(ctx, func(tx *sql.Tx) error {
		args := make([]any, len(ids))
		marks := make([]string, len(ids))
		for i, id := range ids {
			args[i] = id
			marks[i] = "?"
		}
		if _, err := tx.ExecContext(ctx, `UPDATE responder_alert SET dispatched = 1 WHERE id IN (`+strings.Join(marks, ", ")+`)`, args...); err != nil {
			return fmt.Errorf("marking alerts dispatched: %w", err)
		}
		return nil
	})
}

func queryIDs(ctx context.Context, q interface {
	QueryContext(context.Context, string, ...any) (*sql.Rows, error)
}, query string) ([]int64, error) {
	rows, err := q.QueryContext(ctx, query)
	if err != nil {
		return nil, fmt.Errorf("taking alerts to dispatch: %w", err)
	}
	defer rows.Close()
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("taking alerts to dispatch: %w", err)
		}
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("taking alerts to dispatch: %w", err)
	}
	return ids, nil
}
