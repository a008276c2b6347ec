package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"time"

	"github.com/responder-dev/responder/metrics"
)

// Retention (SPEC 16): alert payloads and finished audit entries older than
// the retention are deleted in small batches by a background job, and the
// store's size is exported as gauges.
//
// What is kept, whatever its age:
//   - an entry in a live state (audit.LiveStates), and its alert row;
//   - an alert row with no entry yet: it is work still to do;
//   - a cooldown row while it may be in force, and the entry it points at
//     (with its alert row). The store does not know the window of a
//     cooldown (it is the deciding rule's, and rules change), so a cooldown
//     row is deleted only once older than both the retention and the
//     longest cooldown of the rules in force. Raising a cooldown later thus
//     finds every collection of the last retention period.
//
// Deleting an alert row forgets its dedup key: the same alert sent again
// after the retention is decided again (at most once per retention period).

// DefaultRetention is the default of Config.Retention (store.retention).
const DefaultRetention = 90 * 24 * time.Hour

// Retention batches. Each batch is one short transaction deleting up to
// RetentionBatch entries and as many alerts (measured over 100,000 entries
// with 1 KiB payloads: 11 ms on average on SQLite, where intake's commits
// wait for it, the one writer; 37 ms on PostgreSQL, where they do not), and
// the pause between batches lets intake and decisions in, so a pass over a
// large backlog (the first after an upgrade: a million entries take about
// five minutes) never holds them up for long.
const (
	RetentionBatch = 250
	retentionPause = 50 * time.Millisecond
	// retentionTxTimeout bounds one batch.
	retentionTxTimeout = 30 * time.Second
	// retentionLockKey is the PostgreSQL advisory lock that lets one
	// replica at a time run a pass: the two-key form (the migration lock's
	// number, then the SPEC section), which cannot meet a one-key lock.
	retentionLockKey = "7406211, 16"
)

// exactRowsBelow: on PostgreSQL a table whose planner estimate is under
// this many rows is counted exactly (COUNT(*) costs a few milliseconds
// there); a larger one reports the estimate, since counting a million rows
// every minute would cost up to seconds of I/O.
const exactRowsBelow = 100000

// storeTables maps each table label of responder_store_rows
// (metrics.StoreTables) to its table.
var storeTables = map[string]string{
	"alert":        "responder_alert",
	"audit":        "responder_audit",
	"cooldown":     "responder_cooldown",
	"quota":        "responder_quota",
	"notification": "responder_notification",
	"job":          "river_job",
}

// Retainer runs retention passes over a store.
type Retainer struct {
	store     *Store
	retention time.Duration
	// cooldown returns the longest cooldown of the rules in force; false
	// when no rule set is known, and then no cooldown row is deleted.
	cooldown func() (time.Duration, bool)
	batch    int
	pause    time.Duration
	now      func() time.Time
	// onBatch, when set, is told the rows each committed batch deleted
	// from table ("cooldown", or "audit" for entries; tests).
	onBatch func(table string, rows int64)
}

// NewRetainer returns the retainer of s: entries finished before now -
// retention go; cooldown returns the longest cooldown of the rules in force
// (false when none is known: then no cooldown row is deleted).
func (s *Store) NewRetainer(retention time.Duration, cooldown func() (time.Duration, bool), now func() time.Time) *Retainer {
	if now == nil {
		now = time.Now
	}
	return &Retainer{store: s, retention: retention, cooldown: cooldown, batch: RetentionBatch, pause: retentionPause, now: now}
}

// OnBatch has fn told the rows each committed batch deleted from table
// ("cooldown", or "audit" for entries), for tests and observers.
func (r *Retainer) OnBatch(fn func(table string, rows int64)) { r.onBatch = fn }

// SetPause sets the pause between two batches (default 50 ms).
func (r *Retainer) SetPause(d time.Duration) { r.pause = d }

// Retention returns the retention the retainer applies.
func (r *Retainer) Retention() time.Duration { return r.retention }

// RetentionResult counts what one pass deleted.
type RetentionResult struct {
	Audit, Alerts, Cooldowns, Notifications int64
	// Batches is the number of transactions run.
	Batches int
}

// ErrRetentionBusy reports that another replica is running a pass.
var ErrRetentionBusy = errors.New("another replica is running a retention pass")

// pass deletes, in batches, the cooldown rows that can no longer be in
// force, then the finished audit entries older than the retention with
// their alert rows. On PostgreSQL one replica at a time runs it.
func (r *Retainer) Pass(ctx context.Context) (RetentionResult, error) {
	var res RetentionResult
	if r.store.Driver == DriverPostgres {
		release, ok, err := r.lock(ctx)
		if err != nil {
			return res, err
		}
		if !ok {
			return res, ErrRetentionBusy
		}
		defer release()
	}
	now := r.now()
	if longest, ok := r.cooldown(); ok {
		if err := r.deleteCooldowns(ctx, ms(now.Add(-max(r.retention, longest))), &res); err != nil {
			return res, err
		}
	}
	if err := r.deleteEntries(ctx, ms(now.Add(-r.retention)), &res); err != nil {
		return res, err
	}
	return res, r.deleteNotifications(ctx, ms(now.Add(-r.retention)), &res)
}

// deleteNotifications deletes the notifications that ended (sent, failed,
// given up, dropped) before before; pending ones are kept, whatever their
// age (their job gives them up after a day).
func (r *Retainer) deleteNotifications(ctx context.Context, before int64, res *RetentionResult) error {
	for {
		var n int64
		err := r.batchTx(ctx, func(tx *sql.Tx) error {
			out, err := tx.ExecContext(ctx, `DELETE FROM responder_notification WHERE id IN (SELECT id FROM responder_notification
WHERE state <> 'pending' AND updated_at < $1 ORDER BY state, updated_at, id LIMIT $2)`, before, r.batch)
			if err != nil {
				return fmt.Errorf("retention: deleting old notifications: %w", err)
			}
			n, err = out.RowsAffected()
			return err
		})
		if err != nil {
			return err
		}
		res.Batches++
		res.Notifications += n
		if r.onBatch != nil {
			r.onBatch("notification", n)
		}
		if n < int64(r.batch) {
			return nil
		}
		if err := retentionSleep(ctx, r.pause); err != nil {
			return err
		}
	}
}

// lock takes the retention advisory lock on a connection of its own; the
// returned function releases it.
func (r *Retainer) lock(ctx context.Context) (func(), bool, error) {
	conn, err := r.store.DB.Conn(ctx)
	if err != nil {
		return nil, false, fmt.Errorf("retention: taking a connection for the lock: %w", err)
	}
	var ok bool
	if err := conn.QueryRowContext(ctx, `SELECT pg_try_advisory_lock(`+retentionLockKey+`)`).Scan(&ok); err != nil {
		_ = conn.Close()
		return nil, false, fmt.Errorf("retention: taking the lock: %w", err)
	}
	if !ok {
		_ = conn.Close()
		return nil, false, nil
	}
	return func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, err := conn.ExecContext(uctx, `SELECT pg_advisory_unlock(`+retentionLockKey+`)`); err != nil {
			// A session lock lasts as long as its session: end it.
			_ = conn.Raw(func(any) error { return driver.ErrBadConn })
		}
		_ = conn.Close()
	}, true, nil
}

// deleteCooldowns deletes the cooldown rows last claimed before before.
// It runs before the entries, which it may free.
func (r *Retainer) deleteCooldowns(ctx context.Context, before int64, res *RetentionResult) error {
	for {
		var n int64
		err := r.batchTx(ctx, func(tx *sql.Tx) error {
			out, err := tx.ExecContext(ctx, `DELETE FROM responder_cooldown WHERE last_at < $1
AND audit_id IN (SELECT audit_id FROM responder_cooldown WHERE last_at < $1 LIMIT $2)`, before, r.batch)
			if err != nil {
				return fmt.Errorf("retention: deleting expired cooldowns: %w", err)
			}
			n, err = out.RowsAffected()
			return err
		})
		if err != nil {
			return err
		}
		res.Batches++
		res.Cooldowns += n
		if r.onBatch != nil {
			r.onBatch("cooldown", n)
		}
		if n < int64(r.batch) {
			return nil
		}
		if err := retentionSleep(ctx, r.pause); err != nil {
			return err
		}
	}
}

// retentionSelectSQL finds the next batch of deletable entries after the
// cursor (updated_at, id), in the order of the index
// responder_audit_retention: finished, unchanged since before the cutoff,
// and not pointed at by a cooldown row.
const retentionSelectSQL = `SELECT id, updated_at FROM responder_audit a
WHERE state = 'done' AND updated_at < $1 AND (updated_at, id) > ($2, $3)
AND NOT EXISTS (SELECT 1 FROM responder_cooldown c WHERE c.audit_id = a.id)
ORDER BY updated_at, id LIMIT $4`

// deleteEntries deletes the finished entries last changed before cutoff,
// each with its alert row in the same transaction.
func (r *Retainer) deleteEntries(ctx context.Context, cutoff int64, res *RetentionResult) error {
	afterAt, afterID := int64(-1), int64(0)
	for {
		var selected int
		var audit, alerts int64
		err := r.batchTx(ctx, func(tx *sql.Tx) error {
			selected, audit, alerts = 0, 0, 0
			rows, err := tx.QueryContext(ctx, retentionSelectSQL, cutoff, afterAt, afterID, r.batch)
			if err != nil {
				return fmt.Errorf("retention: finding old entries: %w", err)
			}
			var ids []any
			lastAt, lastID := afterAt, afterID
			for rows.Next() {
				if err := rows.Scan(&lastID, &lastAt); err != nil {
					rows.Close()
					return fmt.Errorf("retention: finding old entries: %w", err)
				}
				ids = append(ids, lastID)
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return fmt.Errorf("retention: finding old entries: %w", err)
			}
			selected = len(ids)
			if selected == 0 {
				return nil
			}
			// The state is checked again: the entry is deleted only if it
			// is still finished now.
			rows, err = tx.QueryContext(ctx, `DELETE FROM responder_audit WHERE state = 'done' AND id IN (`+numberedParams(1, len(ids))+`) RETURNING alert_row_id`, ids...)
			if err != nil {
				return fmt.Errorf("retention: deleting old entries: %w", err)
			}
			var alertIDs []any
			for rows.Next() {
				var id int64
				if err := rows.Scan(&id); err != nil {
					rows.Close()
					return fmt.Errorf("retention: deleting old entries: %w", err)
				}
				alertIDs = append(alertIDs, id)
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return fmt.Errorf("retention: deleting old entries: %w", err)
			}
			audit = int64(len(alertIDs))
			if len(alertIDs) > 0 {
				out, err := tx.ExecContext(ctx, `DELETE FROM responder_alert WHERE id IN (`+numberedParams(1, len(alertIDs))+`)`, alertIDs...)
				if err != nil {
					return fmt.Errorf("retention: deleting the alerts of old entries: %w", err)
				}
				if alerts, err = out.RowsAffected(); err != nil {
					return fmt.Errorf("retention: deleting the alerts of old entries: %w", err)
				}
			}
			afterAt, afterID = lastAt, lastID
			return nil
		})
		if err != nil {
			return err
		}
		res.Batches++
		res.Audit += audit
		res.Alerts += alerts
		if r.onBatch != nil {
			r.onBatch("audit", audit)
		}
		if selected < r.batch {
			return nil
		}
		if err := retentionSleep(ctx, r.pause); err != nil {
			return err
		}
	}
}

// batchTx runs one batch in a transaction of its own. Its commit need not
// be flushed at once (redoableTx): a batch lost with the power is deleted
// again by the next pass.
func (r *Retainer) batchTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tctx, cancel := context.WithTimeout(ctx, retentionTxTimeout)
	defer cancel()
	return r.store.RedoableTx(tctx, fn)
}

// retentionSleep waits d, or until ctx ends.
func retentionSleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// StatsReader reads the store's row counts and size.
//
// On SQLite it reads through a read-only connection of its own: in WAL mode
// a reader never blocks the one writer, so counting (about 0.1 s per million
// rows) never delays a webhook's commit. On PostgreSQL it uses the pool;
// tables the planner estimates at over exactRowsBelow rows report that
// estimate (free) instead of a COUNT(*) (0.2 to 2 s per million rows).
type StatsReader struct {
	store *Store
	db    *sql.DB // SQLite: the read-only connection, opened on first use
	path  string  // SQLite: the database file
}

func (sr *StatsReader) Close() {
	if sr.db != nil {
		_ = sr.db.Close()
		sr.db = nil
	}
}

// Read returns the rows by table label and the size in bytes (-1 when it
// could not be read), with every error met.
func (sr *StatsReader) Read(ctx context.Context) (map[string]int64, int64, error) {
	db := sr.store.DB
	if sr.store.Driver == DriverSQLite {
		if err := sr.openSQLite(ctx); err != nil {
			return nil, -1, err
		}
		db = sr.db
	}
	var errs []error
	rows := map[string]int64{}
	for _, label := range metrics.StoreTables {
		table, ok := storeTables[label]
		if !ok {
			errs = append(errs, fmt.Errorf("store rows: no table for label %q", label))
			continue
		}
		n, err := sr.count(ctx, db, table)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		rows[label] = n
	}
	size, err := sr.size(ctx, db)
	if err != nil {
		errs = append(errs, err)
		size = -1
	}
	return rows, size, errors.Join(errs...)
}

// openSQLite opens the read-only connection on the store's file, once.
func (sr *StatsReader) openSQLite(ctx context.Context) error {
	if sr.db != nil {
		return nil
	}
	if sr.path == "" {
		if err := sr.store.DB.QueryRowContext(ctx, `SELECT file FROM pragma_database_list WHERE name = 'main'`).Scan(&sr.path); err != nil {
			return fmt.Errorf("store size: finding the sqlite file: %w", err)
		}
		if sr.path == "" {
			return errors.New("store size: the sqlite store has no file")
		}
	}
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "query_only(1)")
	db, err := sql.Open("sqlite", "file:"+sr.path+"?"+q.Encode())
	if err != nil {
		return fmt.Errorf("store size: opening a read connection: %w", err)
	}
	db.SetMaxOpenConns(1)
	sr.db = db
	return nil
}

// count returns the rows of table: exact, except for large PostgreSQL
// tables (see StatsReader).
func (sr *StatsReader) count(ctx context.Context, db *sql.DB, table string) (int64, error) {
	if sr.store.Driver == DriverPostgres {
		// The planner's own estimate: the tuple density of the last
		// VACUUM or ANALYZE times the table's current pages.
		var tuples float64
		var pages, current int64
		err := db.QueryRowContext(ctx, `SELECT c.reltuples, c.relpages, pg_relation_size(c.oid) / current_setting('block_size')::bigint
FROM pg_class c WHERE c.oid = to_regclass($1::text)`, table).Scan(&tuples, &pages, &current)
		if err != nil {
			return 0, fmt.Errorf("store rows: estimating %s: %w", table, err)
		}
		if tuples >= 0 && pages > 0 {
			if est := tuples / float64(pages) * float64(current); est >= exactRowsBelow {
				return int64(est), nil
			}
		}
	}
	var n int64
	// The table name comes from storeTables, never from input.
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM `+table).Scan(&n); err != nil {
		return 0, fmt.Errorf("store rows: counting %s: %w", table, err)
	}
	return n, nil
}

// size returns the store's size in bytes: on SQLite the database (pages
// times page size) plus its WAL file; on PostgreSQL the responder's and
// River's tables with their indexes and TOAST, not the whole database
// (which other applications may share).
func (sr *StatsReader) size(ctx context.Context, db *sql.DB) (int64, error) {
	if sr.store.Driver == DriverPostgres {
		var n int64
		err := db.QueryRowContext(ctx, `SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::bigint
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname = current_schema()
AND (c.relname LIKE 'responder\_%' OR c.relname LIKE 'river\_%')`).Scan(&n)
		if err != nil {
			return 0, fmt.Errorf("store size: %w", err)
		}
		return n, nil
	}
	var pages, pageSize int64
	if err := db.QueryRowContext(ctx, `PRAGMA page_count`).Scan(&pages); err != nil {
		return 0, fmt.Errorf("store size: %w", err)
	}
	if err := db.QueryRowContext(ctx, `PRAGMA page_size`).Scan(&pageSize); err != nil {
		return 0, fmt.Errorf("store size: %w", err)
	}
	var wal int64
	fi, err := os.Stat(sr.path + "-wal")
	switch {
	case err == nil:
		wal = fi.Size()
	case !errors.Is(err, fs.ErrNotExist):
		return 0, fmt.Errorf("store size: %w", err)
	}
	return pages*pageSize + wal, nil
}

// NewStatsReader returns a reader of s's row counts and size; Close it.
func (s *Store) NewStatsReader() *StatsReader { return &StatsReader{store: s} }
