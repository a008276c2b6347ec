package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/responder-dev/responder/audit"
)

// The reads of `responder replay` (SPEC 12). They only read, in pages of
// their own short transactions (read-only on PostgreSQL): on SQLite no
// reader holds a snapshot that would keep the service's checkpoints from
// completing, and on both the service's writes never wait for a replay.

// ReplayWindow selects the decisions a replay reads: those taken from From
// (inclusive) to To (exclusive). Source ("" for all) narrows the counts
// only: the state a decision reads (cooldowns, the circuit breaker) is made
// by every source's decisions, so every one is replayed.
type ReplayWindow struct {
	From, To time.Time
	Source   string
}

// ReplayRow is one decided alert as the audit trail recorded it.
type ReplayRow struct {
	// AuditID orders the decisions as the service took them.
	AuditID   int64
	DecidedAt time.Time
	// Payload is the stored alert (JSON of alert.Alert).
	Payload []byte
	// MachineID is the machine the decision was for (the alert's, or the
	// one its host name resolved to).
	MachineID string
	Decision  audit.Decision
	Rule      string
	Action    string
	DryRun    bool
	// Snapshot is the machine attributes the rules read (JSON; "" when
	// none were kept).
	Snapshot string
	// ReleasedAt, when not zero, is when the decision's collection gave
	// its cooldown back (it collected nothing; audit.Entry.ReleasesCooldown).
	ReleasedAt time.Time
}

const replaySelect = `SELECT au.id, au.created_at, a.payload, au.machine_id, au.decision, au.rule, au.action, au.dry_run, au.machine,
au.state, au.outcome, au.action_status, au.updated_at
FROM responder_audit au JOIN responder_alert a ON a.id = au.alert_row_id `

// ReplayRange returns the audit ids that bound the decisions of w: every
// one has an id in (after, last]. ok is false when w holds none. The pages
// then walk the primary key: the order in which the decisions were taken.
func (s *Store) ReplayRange(ctx context.Context, w ReplayWindow) (after, last int64, ok bool, err error) {
	var lo, hi sql.NullInt64
	err = s.readTx(ctx, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, `SELECT MIN(id), MAX(id) FROM responder_audit WHERE created_at >= $1 AND created_at < $2`,
			ms(w.From), ms(w.To)).Scan(&lo, &hi)
	})
	if err != nil {
		return 0, 0, false, fmt.Errorf("finding the decisions to replay: %w", err)
	}
	if !lo.Valid {
		return 0, 0, false, nil
	}
	return lo.Int64 - 1, hi.Int64, true, nil
}

// ReplayPage returns up to limit decisions of w, of every source, with
// audit ids in (after, last], in the order they were taken.
func (s *Store) ReplayPage(ctx context.Context, w ReplayWindow, after, last int64, limit int) ([]ReplayRow, error) {
	var out []ReplayRow
	err := s.readTx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, replaySelect+`WHERE au.id > $1 AND au.id <= $2 AND au.created_at >= $3 AND au.created_at < $4
ORDER BY au.id LIMIT $5`, after, last, ms(w.From), ms(w.To), limit)
		if err != nil {
			return err
		}
		out, err = scanReplayRows(rows, limit)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("reading the decisions to replay: %w", err)
	}
	return out, nil
}

// ReplayPrior returns the decisions taken in [from-lookback, from) that
// hold a cooldown or count in the circuit breaker's windows (collect and
// dry_run), of every source: the state a replay of the window starts from.
func (s *Store) ReplayPrior(ctx context.Context, from time.Time, lookback time.Duration) ([]ReplayRow, error) {
	var out []ReplayRow
	err := s.readTx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, replaySelect+`WHERE au.created_at >= $1 AND au.created_at < $2 AND au.decision IN ($3, $4)
ORDER BY au.id`, ms(from.Add(-lookback)), ms(from), string(audit.Collect), string(audit.DryRun))
		if err != nil {
			return err
		}
		out, err = scanReplayRows(rows, 0)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("reading the decisions before the window: %w", err)
	}
	return out, nil
}

func scanReplayRows(rows *sql.Rows, capacity int) ([]ReplayRow, error) {
	defer rows.Close()
	out := make([]ReplayRow, 0, capacity)
	for rows.Next() {
		var r ReplayRow
		var decided, updated int64
		var dry int
		var decision, state, outcome, status string
		if err := rows.Scan(&r.AuditID, &decided, &r.Payload, &r.MachineID, &decision, &r.Rule, &r.Action, &dry, &r.Snapshot,
			&state, &outcome, &status, &updated); err != nil {
			return nil, err
		}
		r.DecidedAt, r.Decision, r.DryRun = fromMS(decided), audit.Decision(decision), dry != 0
		e := audit.Entry{Decision: r.Decision, State: audit.State(state), Outcome: audit.Outcome(outcome), ActionStatus: status}
		if e.ReleasesCooldown() {
			r.ReleasedAt = fromMS(updated)
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// ReplayCounts counts the alerts of w (of its source, when it names one):
// decided (decisions taken in the window) and undecided (received in it,
// no decision yet).
func (s *Store) ReplayCounts(ctx context.Context, w ReplayWindow) (decided, undecided int, err error) {
	err = s.readTx(ctx, func(tx *sql.Tx) error {
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM responder_audit WHERE created_at >= $1 AND created_at < $2 AND ($3 = '' OR source = $3)`,
			ms(w.From), ms(w.To), w.Source).Scan(&decided); err != nil {
			return err
		}
		// Alerts are numbered as they arrive: those received in the window
		// come after the alert of the last decision taken before it, and
		// the count reads only them (no index on received_at).
		var before sql.NullInt64
		err := tx.QueryRowContext(ctx, `SELECT alert_row_id FROM responder_audit WHERE created_at < $1 ORDER BY created_at DESC, id DESC LIMIT 1`,
			ms(w.From)).Scan(&before)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		return tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM responder_alert a WHERE a.id > $1 AND a.received_at >= $2 AND a.received_at < $3 AND ($4 = '' OR a.source = $4)
AND NOT EXISTS (SELECT 1 FROM responder_audit au WHERE au.alert_row_id = a.id)`, before.Int64, ms(w.From), ms(w.To), w.Source).Scan(&undecided)
	})
	if err != nil {
		return 0, 0, fmt.Errorf("counting the alerts to replay: %w", err)
	}
	return decided, undecided, nil
}

// DecisionSpan returns when the oldest and the newest stored decisions
// were taken; ok is false when there is none.
func (s *Store) DecisionSpan(ctx context.Context) (oldest, newest time.Time, ok bool, err error) {
	var lo, hi sql.NullInt64
	err = s.readTx(ctx, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, `SELECT MIN(created_at), MAX(created_at) FROM responder_audit`).Scan(&lo, &hi)
	})
	if err != nil {
		return time.Time{}, time.Time{}, false, fmt.Errorf("reading the span of the audit trail: %w", err)
	}
	if !lo.Valid {
		return time.Time{}, time.Time{}, false, nil
	}
	return fromMS(lo.Int64), fromMS(hi.Int64), true, nil
}

// readTx runs fn in a short transaction that only reads (read-only on
// PostgreSQL; SQLite stores opened by OpenReadOnly refuse writes).
func (s *Store) readTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := s.DB.BeginTx(ctx, &sql.TxOptions{ReadOnly: s.Driver == DriverPostgres})
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	return fn(tx)
}
