package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/responder-dev/responder/alert"
	"github.com/responder-dev/responder/audit"
	"github.com/responder-dev/responder/rules"
)

// StateOptions are the parts of the state that the configuration, not the
// store, sets.
type StateOptions struct {
	// Paused is the configuration's kill switch (safety.paused): on, the
	// store's is not read.
	Paused bool
	// Limits are the circuit breaker's safety limits.
	Limits rules.CircuitLimits
}

// View is the store's state as one transaction sees it: a rules.State for
// the decisions taken in it, and the recorder of those decisions. It
// counts the circuit breaker's windows once and keeps them up to date as
// it records collections, so that each decision sees the ones before it.
type View struct {
	ctx  context.Context
	tx   *sql.Tx
	now  time.Time
	opts StateOptions

	paused *bool

	windowRead bool
	lastHour   int             // collections in the last hour
	machines   int             // distinct machines collected in the last 10 minutes
	inWindow   map[string]bool // machines known to be among them, or not

	readCooldown, writeCooldown, insert *sql.Stmt
}

var _ rules.State = (*View)(nil)

// Decide runs fn on a view of the state in one transaction, serialised
// across replicas, which commits when fn returns nil: decisions are taken
// and recorded in it. The commit need not be flushed at once (RedoableTx):
// nothing leaves the process on a decision before a later flushed commit (a
// collection claims "posting" before its request), which makes this one
// durable too; a decision lost with the power is made again, its job being
// then still running.
func (s *Store) Decide(ctx context.Context, now time.Time, opts StateOptions, fn func(v *View) error) error {
	return s.RedoableTx(ctx, func(tx *sql.Tx) error {
		if err := s.lockClaims(ctx, tx); err != nil {
			return err
		}
		v := &View{ctx: ctx, tx: tx, now: now, opts: opts}
		defer v.close()
		return fn(v)
	})
}

// Look runs fn on a view of the state that only reads: the transaction is
// rolled back (the evaluate API).
func (s *Store) Look(ctx context.Context, now time.Time, opts StateOptions, fn func(v *View) error) error {
	tx, err := s.DB.BeginTx(ctx, &sql.TxOptions{ReadOnly: s.Driver == DriverPostgres})
	if err != nil {
		return fmt.Errorf("reading the state: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	v := &View{ctx: ctx, tx: tx, now: now, opts: opts}
	defer v.close()
	return fn(v)
}

// Tx is the view's transaction, for what must commit with the decisions
// taken in it: the notifications they raise, with their queue jobs.
func (v *View) Tx() *sql.Tx { return v.tx }

func (v *View) close() {
	for _, st := range []*sql.Stmt{v.readCooldown, v.writeCooldown, v.insert} {
		if st != nil {
			_ = st.Close()
		}
	}
}

// stmt prepares query once per transaction: a batch of decisions runs it
// once per alert.
func (v *View) stmt(st **sql.Stmt, query string) (*sql.Stmt, error) {
	if *st == nil {
		prepared, err := v.tx.PrepareContext(v.ctx, query)
		if err != nil {
			return nil, err
		}
		*st = prepared
	}
	return *st, nil
}

// Decided returns the rows among rowIDs that have a decision already.
func (v *View) Decided(rowIDs []int64) (map[int64]bool, error) {
	done := make(map[int64]bool, len(rowIDs))
	if len(rowIDs) == 0 {
		return done, nil
	}
	args := make([]any, len(rowIDs))
	for i, id := range rowIDs {
		args[i] = id
	}
	rows, err := v.tx.QueryContext(v.ctx, `SELECT alert_row_id FROM responder_audit WHERE alert_row_id IN (`+numberedParams(1, len(rowIDs))+`)`, args...)
	if err != nil {
		return nil, fmt.Errorf("checking for earlier decisions: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("checking for earlier decisions: %w", err)
		}
		done[id] = true
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("checking for earlier decisions: %w", err)
	}
	return done, nil
}

// LastAction implements rules.State from the cooldown table.
func (v *View) LastAction(machineID, key string) (time.Time, int64, bool, error) {
	st, err := v.stmt(&v.readCooldown, `SELECT last_at, audit_id FROM responder_cooldown WHERE machine_id = $1 AND action = $2`)
	if err != nil {
		return time.Time{}, 0, false, fmt.Errorf("reading the cooldown: %w", err)
	}
	var lastAt, auditID int64
	err = st.QueryRowContext(v.ctx, machineID, key).Scan(&lastAt, &auditID)
	if errors.Is(err, sql.ErrNoRows) {
		return time.Time{}, 0, false, nil
	}
	if err != nil {
		return time.Time{}, 0, false, fmt.Errorf("reading the cooldown: %w", err)
	}
	return fromMS(lastAt), auditID, true, nil
}

// Paused implements rules.State: the configuration's kill switch, or the
// store's, read once per transaction.
func (v *View) Paused() (bool, error) {
	if v.paused == nil {
		paused := v.opts.Paused
		if !paused {
			var err error
			if paused, err = pausedIn(v.ctx, v.tx); err != nil {
				return false, err
			}
		}
		v.paused = &paused
	}
	return *v.paused, nil
}

// CircuitOpen implements rules.State.
func (v *View) CircuitOpen(machineID string) (bool, string, error) {
	if !v.windowRead {
		var err error
		if v.lastHour, v.machines, err = countWindows(v.ctx, v.tx, v.now); err != nil {
			return false, "", err
		}
		v.inWindow = map[string]bool{}
		v.windowRead = true
	}
	known := true // below the machine limit, whether it is among them does not matter
	if machineID != "" && v.machines >= v.opts.Limits.MachinesPer10m {
		var err error
		if known, err = v.collectedRecently(machineID, 0); err != nil {
			return false, "", err
		}
	}
	why := v.opts.Limits.Why(v.lastHour, v.machines, known)
	return why != "", why, nil
}

// collectedRecently reports whether machineID has a collect decision in
// the last 10 minutes, other than entry except.
func (v *View) collectedRecently(machineID string, except int64) (bool, error) {
	if known, ok := v.inWindow[machineID]; ok {
		return known, nil
	}
	err := v.tx.QueryRowContext(v.ctx, `SELECT 1 FROM responder_audit WHERE machine_id = $1 AND decision = 'collect' AND created_at > $2 AND id <> $3 LIMIT 1`,
		machineID, ms(v.now.Add(-10*time.Minute)), except).Scan(new(int))
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return false, fmt.Errorf("looking for the machine's recent collections: %w", err)
	}
	v.inWindow[machineID] = err == nil
	return err == nil, nil
}

// Record inserts the audit entry rec of alert row rowID and claims the
// cooldown key its decision holds (rules.CooldownKey; "" for none); rec
// gets its id.
func (v *View) Record(rowID int64, rec *audit.Entry, cooldownKey string) error {
	values, err := entryValues(rowID, v.now, rec)
	if err != nil {
		return err
	}
	st, err := v.stmt(&v.insert, insertEntrySQL)
	if err != nil {
		return fmt.Errorf("recording the decision: %w", err)
	}
	if err := st.QueryRowContext(v.ctx, values...).Scan(&rec.ID); err != nil {
		return fmt.Errorf("recording the decision: %w", err)
	}
	recorded(rec, rowID, v.now)
	if cooldownKey == "" {
		return nil
	}
	st, err = v.stmt(&v.writeCooldown, `INSERT INTO responder_cooldown (machine_id, action, last_at, audit_id) VALUES ($1, $2, $3, $4)
ON CONFLICT (machine_id, action) DO UPDATE SET last_at = excluded.last_at, audit_id = excluded.audit_id`)
	if err != nil {
		return fmt.Errorf("claiming the cooldown: %w", err)
	}
	if _, err := st.ExecContext(v.ctx, rec.MachineID, cooldownKey, ms(v.now), rec.ID); err != nil {
		return fmt.Errorf("claiming the cooldown: %w", err)
	}
	if rec.Decision != audit.Collect || !v.windowRead {
		return nil
	}
	v.lastHour++
	// Counted once: a machine is new to the window unless it had a
	// collection in it already.
	known, err := v.collectedRecently(rec.MachineID, rec.ID)
	if err != nil {
		return err
	}
	if !known {
		v.machines++
	}
	v.inWindow[rec.MachineID] = true
	return nil
}

const insertEntrySQL = `INSERT INTO responder_audit (alert_row_id, created_at, updated_at, source, alert_id, machine_id, machine_name,
rule, action, decision, reason, comment, dry_run, state, machine) VALUES ($1, $2, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING id`

// entryValues are the values of insertEntrySQL for the decision rec of
// alert row rowID taken at now: every way of recording a decision (one by
// one in a View, many at once at intake) writes its row from them.
func entryValues(rowID int64, now time.Time, rec *audit.Entry) ([]any, error) {
	snapshot, err := audit.MarshalSnapshot(rec.Machine)
	if err != nil {
		return nil, fmt.Errorf("recording the machine snapshot: %w", err)
	}
	dry := 0
	if rec.DryRun {
		dry = 1
	}
	return []any{rowID, ms(now), rec.Source, rec.AlertID, rec.MachineID, rec.MachineName, rec.Rule, rec.Action,
		string(rec.Decision), truncate(rec.Reason, 2000), rec.Comment, dry, string(rec.State), snapshot}, nil
}

// recorded sets what the store gave rec when it recorded it.
func recorded(rec *audit.Entry, rowID int64, now time.Time) {
	rec.AlertRowID, rec.CreatedAt, rec.UpdatedAt = rowID, fromMS(ms(now)), fromMS(ms(now))
}

// countWindows counts the circuit breaker's windows at now: the collect
// decisions of the last hour, and their distinct machines in the last 10
// minutes.
func countWindows(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, now time.Time) (lastHour, machines int, err error) {
	if err := q.QueryRowContext(ctx, `SELECT COUNT(*) FROM responder_audit WHERE decision = 'collect' AND created_at > $1`,
		ms(now.Add(-time.Hour))).Scan(&lastHour); err != nil {
		return 0, 0, fmt.Errorf("counting recent collections: %w", err)
	}
	if err := q.QueryRowContext(ctx, `SELECT COUNT(DISTINCT machine_id) FROM responder_audit WHERE decision = 'collect' AND created_at > $1`,
		ms(now.Add(-10*time.Minute))).Scan(&machines); err != nil {
		return 0, 0, fmt.Errorf("counting recent machines: %w", err)
	}
	return lastHour, machines, nil
}

// CircuitWindows counts the circuit breaker's windows at now (see
// countWindows), for the gauge that shows whether it is open.
func (s *Store) CircuitWindows(ctx context.Context, now time.Time) (lastHour, machines int, err error) {
	return countWindows(ctx, s.DB, now)
}

// SetPaused turns the store's kill switch on or off, for every replica.
func (s *Store) SetPaused(ctx context.Context, on bool, now time.Time) error {
	_, err := s.DB.ExecContext(ctx, `UPDATE responder_setting SET value = $1, updated_at = $2 WHERE name = 'paused'`,
		strconv.FormatBool(on), ms(now))
	if err != nil {
		return fmt.Errorf("setting the kill switch: %w", err)
	}
	return nil
}

// Paused reads the store's kill switch.
func (s *Store) Paused(ctx context.Context) (bool, error) { return pausedIn(ctx, s.DB) }

func pausedIn(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}) (bool, error) {
	var v string
	if err := q.QueryRowContext(ctx, `SELECT value FROM responder_setting WHERE name = 'paused'`).Scan(&v); err != nil {
		return false, fmt.Errorf("reading the kill switch: %w", err)
	}
	return v == "true", nil
}

// ErrAlertGone is returned for an alert row that no longer exists:
// retention deleted it with its decision.
var ErrAlertGone = errors.New("the alert row no longer exists")

// Alert loads a stored alert and when it was received.
func (s *Store) Alert(ctx context.Context, rowID int64) (*alert.Alert, time.Time, error) {
	return s.AlertIn(ctx, s.DB, rowID)
}

// AlertIn is Alert through q: a transaction reads it inside itself (on
// SQLite another connection would wait for the transaction's own).
func (s *Store) AlertIn(ctx context.Context, q Querier, rowID int64) (*alert.Alert, time.Time, error) {
	var payload string
	var received int64
	err := q.QueryRowContext(ctx, `SELECT payload, received_at FROM responder_alert WHERE id = $1`, rowID).Scan(&payload, &received)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, time.Time{}, ErrAlertGone
	}
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("loading alert %d: %w", rowID, err)
	}
	var a alert.Alert
	if err := json.Unmarshal([]byte(payload), &a); err != nil {
		return nil, time.Time{}, fmt.Errorf("decoding stored alert %d: %w", rowID, err)
	}
	return &a, fromMS(received), nil
}

// Undecided returns the ids among rowIDs that have no audit entry yet.
func (s *Store) Undecided(ctx context.Context, rowIDs []int64) ([]int64, error) {
	if len(rowIDs) == 0 {
		return nil, nil
	}
	args := make([]any, len(rowIDs))
	for i, id := range rowIDs {
		args[i] = id
	}
	rows, err := s.DB.QueryContext(ctx, `SELECT alert_row_id FROM responder_audit WHERE alert_row_id IN (`+numberedParams(1, len(rowIDs))+`)`, args...)
	if err != nil {
		return nil, fmt.Errorf("finding undecided alerts: %w", err)
	}
	defer rows.Close()
	done := map[int64]bool{}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		done[id] = true
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	var out []int64
	for _, id := range rowIDs {
		if !done[id] {
			out = append(out, id)
		}
	}
	return out, nil
}

// Stored reports whether an alert with this dedup key is stored (the next
// one would be a duplicate).
func (s *Store) Stored(ctx context.Context, dedupKey string) (bool, error) {
	var n int
	if err := s.DB.QueryRowContext(ctx, `SELECT COUNT(*) FROM responder_alert WHERE dedup_key = $1`, dedupKey).Scan(&n); err != nil {
		return false, fmt.Errorf("checking for duplicates: %w", err)
	}
	return n > 0, nil
}

// numberedParams returns n numbered parameters starting at $from: "$1, $2, ...".
func numberedParams(from, n int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "$%d", from+i)
	}
	return b.String()
}
