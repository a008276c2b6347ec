package pipeline

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/responder-dev/responder/alert"
	"github.com/responder-dev/responder/audit"
	"github.com/responder-dev/responder/defender"
	"github.com/responder-dev/responder/metrics"
	"github.com/responder-dev/responder/rules"
)

// evaluateArgs names the alerts of one group commit: one job decides them
// all, so that the queue's per-job cost is paid once per batch.
type evaluateArgs struct {
	AlertRowIDs []int64 `json:"alert_row_ids"`
}

func (evaluateArgs) Kind() string { return "responder.evaluate" }

func (evaluateArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{MaxAttempts: 10, Queue: queueEvaluate}
}

// queueEvaluate is the queue of evaluate jobs. It is separate from the
// default queue (collect, track, download) so that a backlog of evaluations
// waiting for the machine-read quota never starves the tracking of actions.
const queueEvaluate = "evaluate"

// maxLookups bounds the machine reads in flight. The read quota admits
// callers in arrival order; more waiters than can be served within a job's
// budget would each give up in turn and none would ever be served.
const maxLookups = 8

// maxEvaluateBatch bounds the alerts of one evaluate job.
const maxEvaluateBatch = 100

// evaluateParallel is how many collections of a job are sent at once.
const evaluateParallel = 8

// evaluateBudget bounds one evaluate job's work; alerts left undecided when
// it runs out (the machine-read quota is spent) wait in the queue.
const evaluateBudget = 20 * time.Second

type evaluateWorker struct {
	river.WorkerDefaults[evaluateArgs]
	p *Pipeline
}

// errBudget marks an alert left for later because the job's time ran out.
var errBudget = errors.New("evaluation budget spent")

// errAlertGone marks an alert row that no longer exists: retention deleted
// it with its decision, so a job that runs again has nothing to do for it.
var errAlertGone = errors.New("the alert row no longer exists")

// Work decides the alerts of the job that have no decision yet. Each alert
// is decided on its own (an alert that is decided stays decided), so a retry
// only redoes the rest.
//
// Alerts are prepared in parallel (machine look-ups, rules) and the ready
// ones recorded together, in one transaction per group: under load one
// commit records many decisions, while a lone alert is recorded as soon as
// it is ready. Collections start right after their decision is committed.
func (w *evaluateWorker) Work(ctx context.Context, job *river.Job[evaluateArgs]) error {
	p := w.p
	todo, err := p.undecided(ctx, job.Args.AlertRowIDs)
	if err != nil {
		return err
	}
	// Jobs fetched together must not all give up together: each one's
	// snooze is a statement in one completion transaction.
	budget, cancel := context.WithTimeout(ctx, evaluateBudget-time.Duration(rand.Int64N(int64(evaluateBudget/4))))
	defer cancel()
	errs := make([]error, len(todo))
	receivedAt := make([]time.Time, len(todo)) // of the alerts left undecided
	ready := make(chan preparedAlert, len(todo))
	sem := make(chan struct{}, evaluateParallel) // collections in flight
	var prepared, collects sync.WaitGroup
	for i, rowID := range todo {
		prepared.Add(1)
		go func() {
			defer prepared.Done()
			item := preparedAlert{index: i, rowID: rowID}
			defer func() {
				// River recovers a panicking job, but not its goroutines:
				// one bad alert must not take the process down.
				if r := recover(); r != nil {
					p.log.Error("panic evaluating an alert", zap.Int64("alert_row_id", rowID), zap.Any("panic", r), zap.Stack("stack"))
					item.err = fmt.Errorf("panic evaluating alert row %d: %v", rowID, r)
				}
				ready <- item
			}()
			// No per-job bound here: machine reads have their own
			// (lookupSlot), and an alert waiting for a machine read must
			// not hold up one whose machine is known.
			item.alert, item.received, item.err = p.loadAlert(budget, rowID)
			if item.err == nil {
				item.set = p.rules.Current()
				item.machine, item.err = p.prepare(budget, job.JobRow, item.alert, item.set, item.received)
			}
			if item.err != nil && budget.Err() != nil && ctx.Err() == nil {
				item.err = errBudget
			}
		}()
	}
	for received := 0; received < len(todo); {
		group := []preparedAlert{<-ready}
		for more := true; more; {
			select {
			case item := <-ready:
				group = append(group, item)
			default:
				more = false
			}
		}
		received += len(group)
		var batch []decideItem
		var indexes []int
		for _, item := range group {
			if errors.Is(item.err, errAlertGone) {
				p.log.Info("alert no longer stored; nothing to decide", zap.Int64("alert_row_id", item.rowID))
				continue
			}
			if item.err != nil {
				errs[item.index] = item.err
				receivedAt[item.index] = item.received
				continue
			}
			batch = append(batch, decideItem{rowID: item.rowID, alert: item.alert, set: item.set, machine: item.machine})
			indexes = append(indexes, item.index)
		}
		if len(batch) == 0 {
			continue
		}
		entries, err := p.decideBatch(ctx, batch)
		if err != nil {
			for _, i := range indexes {
				errs[i] = err
			}
			continue
		}
		for _, e := range entries {
			if e == nil || e.Decision != audit.Collect {
				continue
			}
			collects.Add(1)
			go func() {
				defer collects.Done()
				defer func() {
					// The decision is recorded and the entry queued: the
					// sweep hands it to a collect job.
					if r := recover(); r != nil {
						p.log.Error("panic sending a collection", zap.Int64("audit_id", e.ID), zap.Any("panic", r), zap.Stack("stack"))
					}
				}()
				sem <- struct{}{}
				defer func() { <-sem }()
				p.collectInline(ctx, e)
			}()
		}
	}
	prepared.Wait()
	collects.Wait()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var snooze time.Duration
	var first error
	for i, err := range errs {
		var de *defender.Error
		switch {
		case err == nil:
		case errors.Is(err, errBudget), errors.Is(err, defender.ErrQuotaWait):
			snooze = max(snooze, time.Second)
		case errors.As(err, &de) && de.Outcome == defender.OutcomeRateLimited:
			snooze = max(snooze, de.RetryAfter, time.Second)
		case errors.As(err, &de):
			// Defender failing (an outage): wait without using up the
			// job's attempts, for as long as RetryFor allows (prepare
			// decides without Defender after that).
			snooze = max(snooze, p.outageDelay(p.cfg.Now().Sub(receivedAt[i])))
		case first == nil:
			first = err
		}
	}
	switch {
	case first != nil:
		return first // transient: retried with backoff
	case snooze > 0:
		return river.JobSnooze(snooze) // waiting for quota uses no attempt
	}
	return nil
}

// preparedAlert is the outcome of preparing one alert of a job.
type preparedAlert struct {
	index    int
	rowID    int64
	alert    *alert.Alert
	set      *rules.Set // the rules it is decided with
	machine  rules.Machine
	received time.Time // when intake stored the alert
	err      error     // left undecided
}

// undecided returns the ids among rowIDs that have no audit entry yet.
func (p *Pipeline) undecided(ctx context.Context, rowIDs []int64) ([]int64, error) {
	if len(rowIDs) == 0 {
		return nil, nil
	}
	args := make([]any, len(rowIDs))
	marks := make([]string, len(rowIDs))
	for i, id := range rowIDs {
		args[i] = id
		marks[i] = fmt.Sprintf("$%d", i+1)
	}
	rows, err := p.store.DB.QueryContext(ctx, `SELECT alert_row_id FROM responder_audit WHERE alert_row_id IN (`+strings.Join(marks, ", ")+`)`, args...)
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

// loadAlert reads one stored alert. Each preparing goroutine reads its own,
// so that jobs starting together do not hold the store for long reads while
// webhooks wait to commit.
func (p *Pipeline) loadAlert(ctx context.Context, rowID int64) (*alert.Alert, time.Time, error) {
	var payload string
	var received int64
	err := p.store.DB.QueryRowContext(ctx, `SELECT payload, received_at FROM responder_alert WHERE id = $1`, rowID).Scan(&payload, &received)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, time.Time{}, errAlertGone
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

// prepare gathers what the decision of one stored alert needs to know of
// its machine (machineFor). It returns an error only when the alert must
// stay undecided for now: Defender fails, and the alert has not waited
// RetryFor yet; past it, the machine is decided as unavailable.
func (p *Pipeline) prepare(ctx context.Context, job *rivertype.JobRow, a *alert.Alert, set *rules.Set, received time.Time) (rules.Machine, error) {
	m, err := p.machineFor(ctx, a, set)
	if err == nil {
		return m, nil
	}
	p.log.Warn("machine lookup failed", zap.String("source", string(a.Source)), zap.String("alert_id", a.ID),
		zap.String("machine_id", a.MachineID), zap.String("machine_name", a.MachineName), zap.Int("attempt", job.Attempt), zap.Error(err))
	if !p.giveUp(received, err) {
		return rules.Machine{}, err
	}
	// Fail safe: rules that exclude machines by their attributes cannot be
	// trusted on empty attributes.
	m.Unavailable = err.Error()
	return m, nil
}

// lookupError is a failed machine look-up, named for the decision's reason.
type lookupError struct {
	what string
	err  error
}

func (e *lookupError) Error() string { return e.what + ": " + e.err.Error() }
func (e *lookupError) Unwrap() error { return e.err }

// machineFor gathers what the decision of a needs to know of its machine:
// its id (resolving a host name through Defender), and its attributes when
// the rules of set read machine.*. What Defender settles (no such machine,
// no credentials to ask with) is returned as rules.Machine.Unavailable; a
// failure of Defender is returned as a *lookupError, for the caller to wait
// (the evaluator) or to decide without (the evaluate API). The evaluator and
// the evaluate API both use it, so that they decide alike.
func (p *Pipeline) machineFor(ctx context.Context, a *alert.Alert, set *rules.Set) (rules.Machine, error) {
	var m rules.Machine
	if a.MachineID == "" {
		if p.api == nil {
			m.Unavailable = fmt.Sprintf("machine name %q cannot be resolved without Defender credentials (dry run)", a.MachineName)
			return m, nil
		}
		note, err := p.resolveName(ctx, a)
		switch {
		case outcomeOf(err) == defender.OutcomeMachineNotFound:
			m.Unavailable = unknownMachineName(a.MachineName)
			return m, nil
		case err != nil:
			return m, &lookupError{what: fmt.Sprintf("machine name %q could not be resolved", a.MachineName), err: err}
		}
		m.Notes = append(m.Notes, note)
	}
	if !set.NeedsMachine() {
		return m, nil
	}
	if p.api == nil {
		m.Unavailable = "machine attributes unavailable without Defender credentials (dry run)"
		return m, nil
	}
	attrs, err := p.machine(ctx, a.MachineID)
	switch {
	case err == nil:
		m.Attributes = attrs
	case outcomeOf(err) == defender.OutcomeMachineNotFound:
		m.Unavailable = fmt.Sprintf("Defender does not know machine %s", a.MachineID)
	default:
		return m, &lookupError{what: "machine attributes could not be fetched", err: err}
	}
	return m, nil
}

// decideItem is one alert with what is known of its machine, to be decided
// and recorded.
type decideItem struct {
	rowID   int64
	alert   *alert.Alert
	set     *rules.Set
	machine rules.Machine
}

// decide decides and records one alert row (see decideBatch).
func (p *Pipeline) decide(ctx context.Context, it decideItem) (*audit.Entry, error) {
	entries, err := p.decideBatch(ctx, []decideItem{it})
	if err != nil {
		return nil, err
	}
	return entries[0], nil
}

// decideBatch decides and records several alert rows in one transaction
// (serialised across replicas), each with rules.Decide over the store's
// state as the transaction sees it, so that each decision sees the ones
// before it (cooldown, circuit breaker). An entry is nil where the row was
// decided earlier. A collect entry is left queued for the caller to send.
func (p *Pipeline) decideBatch(ctx context.Context, items []decideItem) ([]*audit.Entry, error) {
	now := p.cfg.Now()
	var entries []*audit.Entry
	// The commit need not be flushed at once (redoableTx): nothing leaves
	// the process on a decision before a later flushed commit (a
	// collection claims "posting" before its POST), which makes this one
	// durable too; a decision lost with the power is made again, since its
	// job is then still running.
	err := p.store.redoableTx(ctx, func(tx *sql.Tx) error {
		entries = make([]*audit.Entry, len(items)) // a retried attempt starts afresh
		if err := p.store.lockClaims(ctx, tx); err != nil {
			return err
		}
		done, err := decidedAmong(ctx, tx, items)
		if err != nil {
			return err
		}
		c := &claims{p: p, ctx: ctx, tx: tx, now: now}
		defer c.close()
		for i, it := range items {
			if done[it.rowID] {
				continue // decided by an earlier attempt
			}
			d, err := rules.Decide(rules.Input{Alert: it.alert, Machine: it.machine, Rules: it.set, State: c, DryRun: p.cfg.DryRun, Now: now})
			if err != nil {
				return err
			}
			for _, e := range d.Errors {
				// A condition that fails at run time counts as not matching; say so.
				p.log.Warn("rule evaluation error", zap.String("alert_id", it.alert.ID), zap.String("machine_id", it.alert.MachineID),
					zap.String("rule", e.Rule), zap.Error(e.Err))
			}
			rec := entryOf(it.alert, d)
			if err := c.record(it.rowID, rec, d); err != nil {
				return err
			}
			done[it.rowID] = true
			entries[i] = rec
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, rec := range entries {
		if rec != nil {
			p.reportDecision(rec)
		}
	}
	return entries, nil
}

// entryOf is the audit entry of decision d for alert a, not yet recorded.
func entryOf(a *alert.Alert, d rules.Decision) *audit.Entry {
	rec := &audit.Entry{
		Source: string(a.Source), AlertID: a.ID, MachineID: a.MachineID, MachineName: a.MachineName,
		Rule: d.Rule, Action: string(d.Action), Decision: d.Decision, Reason: d.Reason, Comment: d.Comment,
		DryRun: d.DryRun, State: audit.Done, Machine: d.Snapshot,
	}
	if d.Decision == audit.Collect {
		rec.State = audit.Queued
	}
	return rec
}

// decidedAmong returns the rows among items that have a decision already.
func decidedAmong(ctx context.Context, tx *sql.Tx, items []decideItem) (map[int64]bool, error) {
	args := make([]any, len(items))
	marks := make([]string, len(items))
	for i, it := range items {
		args[i] = it.rowID
		marks[i] = fmt.Sprintf("$%d", i+1)
	}
	rows, err := tx.QueryContext(ctx, `SELECT alert_row_id FROM responder_audit WHERE alert_row_id IN (`+strings.Join(marks, ", ")+`)`, args...)
	if err != nil {
		return nil, fmt.Errorf("checking for earlier decisions: %w", err)
	}
	defer rows.Close()
	done := make(map[int64]bool, len(items))
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

// reportDecision counts and logs a committed decision.
func (p *Pipeline) reportDecision(rec *audit.Entry) {
	label := rec.Rule
	if label == "" {
		label = metrics.NoRule
	}
	p.m.Decisions.WithLabelValues(label, string(rec.Decision)).Inc()
	fields := []zap.Field{zap.String("source", rec.Source), zap.String("alert_id", rec.AlertID)}
	// An alert may name its machine by id, by name, or by a name that no
	// machine has: log what is known, never an empty key.
	if rec.MachineID != "" {
		fields = append(fields, zap.String("machine_id", rec.MachineID))
	}
	if rec.MachineName != "" {
		fields = append(fields, zap.String("machine_name", rec.MachineName))
	}
	fields = append(fields, zap.String("rule", label), zap.String("decision", string(rec.Decision)), zap.String("reason", rec.Reason), zap.Int64("audit_id", rec.ID))
	if rec.Decision == audit.CircuitOpen && !p.circuitOpen.Swap(true) {
		p.m.CircuitOpen.Set(1)
		p.log.Error("circuit breaker opened: collections are suppressed until the window clears", zap.String("reason", rec.Reason))
	}
	switch rec.Decision {
	case audit.CircuitOpen, audit.Paused:
		// Every alert is suppressed while it lasts: one line per window
		// and decision, with the count of those not written.
		p.sample.Write(p.log, zapcore.WarnLevel, "decision:"+string(rec.Decision), "decision", fields...)
	default:
		p.log.Info("decision", fields...)
	}
}

// claims is the state one decision transaction reads once and then keeps
// up to date as it records decisions: the kill switch, the safety windows,
// and the statements it runs per alert, prepared once.
type claims struct {
	p   *Pipeline
	ctx context.Context
	tx  *sql.Tx
	now time.Time

	paused *bool

	windowRead bool
	lastHour   int             // collections in the last hour
	machines   int             // distinct machines collected in the last 10 minutes
	inWindow   map[string]bool // machines known to be among them

	readCooldown, writeCooldown, insert *sql.Stmt
}

var _ rules.State = (*claims)(nil)

func (c *claims) close() {
	for _, st := range []*sql.Stmt{c.readCooldown, c.writeCooldown, c.insert} {
		if st != nil {
			_ = st.Close()
		}
	}
}

func (c *claims) stmt(st **sql.Stmt, query string) (*sql.Stmt, error) {
	if *st == nil {
		prepared, err := c.tx.PrepareContext(c.ctx, query)
		if err != nil {
			return nil, err
		}
		*st = prepared
	}
	return *st, nil
}

// LastAction implements rules.State from the cooldown table.
func (c *claims) LastAction(machineID, key string) (time.Time, int64, bool, error) {
	st, err := c.stmt(&c.readCooldown, `SELECT last_at, audit_id FROM responder_cooldown WHERE machine_id = $1 AND action = $2`)
	if err != nil {
		return time.Time{}, 0, false, fmt.Errorf("reading the cooldown: %w", err)
	}
	var lastAt, auditID int64
	err = st.QueryRowContext(c.ctx, machineID, key).Scan(&lastAt, &auditID)
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
func (c *claims) Paused() (bool, error) {
	if c.paused == nil {
		paused := c.p.cfg.Paused
		if !paused {
			var err error
			if paused, err = pausedIn(c.ctx, c.tx); err != nil {
				return false, err
			}
		}
		c.paused = &paused
	}
	return *c.paused, nil
}

// CircuitOpen implements rules.State, with the windows counted once per
// transaction and kept up to date as it records collections.
func (c *claims) CircuitOpen(machineID string) (bool, string, error) {
	ctx, p := c.ctx, c.p
	if !c.windowRead {
		if err := c.tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM responder_audit WHERE decision = 'collect' AND created_at > $1`,
			ms(c.now.Add(-time.Hour))).Scan(&c.lastHour); err != nil {
			return false, "", fmt.Errorf("counting recent collections: %w", err)
		}
		if err := c.tx.QueryRowContext(ctx, `SELECT COUNT(DISTINCT machine_id) FROM responder_audit WHERE decision = 'collect' AND created_at > $1`,
			ms(c.now.Add(-10*time.Minute))).Scan(&c.machines); err != nil {
			return false, "", fmt.Errorf("counting recent machines: %w", err)
		}
		c.inWindow = map[string]bool{}
		c.windowRead = true
	}
	limits := p.limits()
	known := true // below the machine limit, whether it is among them does not matter
	if machineID != "" && c.machines >= limits.MachinesPer10m {
		k, ok := c.inWindow[machineID]
		if !ok {
			err := c.tx.QueryRowContext(ctx, `SELECT 1 FROM responder_audit WHERE machine_id = $1 AND decision = 'collect' AND created_at > $2 LIMIT 1`,
				machineID, ms(c.now.Add(-10*time.Minute))).Scan(new(int))
			if err != nil && !errors.Is(err, sql.ErrNoRows) {
				return false, "", fmt.Errorf("looking for the machine's recent collections: %w", err)
			}
			k = err == nil
			c.inWindow[machineID] = k
		}
		known = k
	}
	why := limits.Why(c.lastHour, c.machines, known)
	return why != "", why, nil
}

// record inserts the audit entry and claims the cooldown of a collection
// (or of a dry run, apart).
func (c *claims) record(rowID int64, rec *audit.Entry, d rules.Decision) error {
	ctx := c.ctx
	snapshot, err := audit.MarshalSnapshot(rec.Machine)
	if err != nil {
		return fmt.Errorf("recording the machine snapshot: %w", err)
	}
	st, err := c.stmt(&c.insert, insertEntrySQL)
	if err != nil {
		return fmt.Errorf("recording the decision: %w", err)
	}
	dry := 0
	if rec.DryRun {
		dry = 1
	}
	if err := st.QueryRowContext(ctx, rowID, ms(c.now), rec.Source, rec.AlertID, rec.MachineID, rec.MachineName, rec.Rule, rec.Action,
		rec.Decision, truncate(rec.Reason, 2000), rec.Comment, dry, rec.State, snapshot).Scan(&rec.ID); err != nil {
		return fmt.Errorf("recording the decision: %w", err)
	}
	if !rec.Decision.ClaimsCooldown() {
		return nil
	}
	st, err = c.stmt(&c.writeCooldown, `INSERT INTO responder_cooldown (machine_id, action, last_at, audit_id) VALUES ($1, $2, $3, $4)
ON CONFLICT (machine_id, action) DO UPDATE SET last_at = excluded.last_at, audit_id = excluded.audit_id`)
	if err != nil {
		return fmt.Errorf("claiming the cooldown: %w", err)
	}
	if _, err := st.ExecContext(ctx, rec.MachineID, rules.CooldownKey(d.Action, d.DryRun), ms(c.now), rec.ID); err != nil {
		return fmt.Errorf("claiming the cooldown: %w", err)
	}
	if rec.Decision == audit.Collect && c.windowRead {
		c.lastHour++
		if known, ok := c.inWindow[rec.MachineID]; !known {
			if !ok {
				// Below the limit the machine was not looked up: ask now,
				// so that it is counted once.
				err := c.tx.QueryRowContext(ctx, `SELECT 1 FROM responder_audit WHERE machine_id = $1 AND decision = 'collect' AND created_at > $2 AND id <> $3 LIMIT 1`,
					rec.MachineID, ms(c.now.Add(-10*time.Minute)), rec.ID).Scan(new(int))
				if err != nil && !errors.Is(err, sql.ErrNoRows) {
					return fmt.Errorf("looking for the machine's recent collections: %w", err)
				}
				if err == nil {
					c.inWindow[rec.MachineID] = true
					return nil
				}
			}
			c.machines++
			c.inWindow[rec.MachineID] = true
		}
	}
	return nil
}

const insertEntrySQL = `INSERT INTO responder_audit (alert_row_id, created_at, updated_at, source, alert_id, machine_id, machine_name,
rule, action, decision, reason, comment, dry_run, state, machine) VALUES ($1, $2, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING id`

// circuitCheck tells whether one more collection, for machineID, would pass
// a safety limit.
func (p *Pipeline) circuitCheck(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, machineID string, now time.Time) (bool, string, error) {
	var lastHour, machines, known int
	if err := q.QueryRowContext(ctx, `SELECT COUNT(*) FROM responder_audit WHERE decision = 'collect' AND created_at > $1`,
		ms(now.Add(-time.Hour))).Scan(&lastHour); err != nil {
		return false, "", fmt.Errorf("counting recent collections: %w", err)
	}
	if err := q.QueryRowContext(ctx, `SELECT COUNT(DISTINCT machine_id), COUNT(DISTINCT CASE WHEN machine_id = $2 THEN machine_id END)
FROM responder_audit WHERE decision = 'collect' AND created_at > $1`, ms(now.Add(-10*time.Minute)), machineID).Scan(&machines, &known); err != nil {
		return false, "", fmt.Errorf("counting recent machines: %w", err)
	}
	why := p.limits().Why(lastHour, machines, machineID == "" || known > 0)
	return why != "", why, nil
}

// limits are the circuit breaker's safety limits.
func (p *Pipeline) limits() rules.CircuitLimits {
	return rules.CircuitLimits{PerHour: p.cfg.MaxCollectionsPerHour, MachinesPer10m: p.cfg.MaxMachinesPer10m}
}

// machineCache keeps machine attributes for a while (SPEC 6.2: TTL 10m).
type machineCache struct {
	ttl time.Duration
	now func() time.Time
	mu  sync.Mutex
	m   map[string]cachedMachine
}

type cachedMachine struct {
	machine alert.Machine
	at      time.Time
}

func newMachineCache(ttl time.Duration, now func() time.Time) *machineCache {
	return &machineCache{ttl: ttl, now: now, m: map[string]cachedMachine{}}
}

func (c *machineCache) get(id string) (*alert.Machine, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[id]
	if !ok || c.now().Sub(e.at) > c.ttl {
		return nil, false
	}
	m := e.machine
	return &m, true
}

func (c *machineCache) put(m alert.Machine) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) > 50000 {
		// Bound memory in a storm: drop expired entries, then everything.
		for k, e := range c.m {
			if c.now().Sub(e.at) > c.ttl {
				delete(c.m, k)
			}
		}
		if len(c.m) > 50000 {
			c.m = map[string]cachedMachine{}
		}
	}
	c.m[strings.ToLower(m.ID)] = cachedMachine{machine: m, at: c.now()}
}

func (p *Pipeline) machine(ctx context.Context, id string) (*alert.Machine, error) {
	if m, ok := p.machines.get(id); ok {
		return m, nil
	}
	release, err := p.lookupSlot(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	if m, ok := p.machines.get(id); ok {
		return m, nil // read by another goroutine meanwhile
	}
	dm, err := p.api.GetMachine(ctx, id)
	if err != nil {
		return nil, err
	}
	m := toMachine(dm)
	p.machines.put(m)
	return &m, nil
}

// unknownMachineName is the reason of a decision whose machine name no
// Defender machine has (the evaluator's and the evaluate API's).
func unknownMachineName(name string) string {
	return fmt.Sprintf("no Defender machine is named %q", name)
}

// resolveName sets a.MachineID from a.MachineName through Defender (several
// matches: the most recently seen active machine), within a lookup slot, and
// caches the machine's attributes. It returns a note for the decision.
func (p *Pipeline) resolveName(ctx context.Context, a *alert.Alert) (string, error) {
	release, err := p.lookupSlot(ctx)
	if err != nil {
		return "", err
	}
	m, err := p.api.FindMachineByName(ctx, a.MachineName)
	release()
	if err != nil {
		return "", err
	}
	a.MachineID = strings.ToLower(m.ID)
	p.machines.put(toMachine(m))
	return fmt.Sprintf("machine name %q resolved to %s", a.MachineName, a.MachineID), nil
}

// lookupSlot waits for one of the maxLookups machine-read slots.
func (p *Pipeline) lookupSlot(ctx context.Context) (func(), error) {
	select {
	case p.lookups <- struct{}{}:
		return func() { <-p.lookups }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func toMachine(m defender.Machine) alert.Machine {
	return alert.Machine{
		ID: strings.ToLower(m.ID), Name: m.ComputerDNSName, OSPlatform: m.OSPlatform, HealthStatus: m.HealthStatus,
		RiskScore: m.RiskScore, ExposureLevel: m.ExposureLevel, DeviceValue: m.DeviceValue, Tags: m.MachineTags,
		Group: m.RBACGroupName, OnboardingStatus: m.OnboardingStatus, LastSeen: m.LastSeen,
	}
}

// giveUp reports whether an alert whose machine could not be read from
// Defender is decided without it now: at once for a refusal that no retry
// changes, never while the quota is only waited for, and for a transient
// failure (an outage) once the alert has waited RetryFor. The caller then
// records a decision that says so, so that no accepted alert is left
// without one.
func (p *Pipeline) giveUp(received time.Time, err error) bool {
	if errors.Is(err, defender.ErrQuotaWait) {
		return false // nothing was sent: waiting is not failing
	}
	switch outcomeOf(err) {
	case defender.OutcomeForbidden, defender.OutcomeUnauthorized, defender.OutcomePermanent:
		return true
	case defender.OutcomeRateLimited:
		return false
	}
	return p.cfg.Now().Sub(received) >= p.cfg.RetryFor
}

// outageDelay is how long to wait before trying Defender again for work
// that has waited age already: half of it, between RetryBase and RetryCap,
// with jitter so that many waiting jobs do not come back together. It grows
// like a doubling backoff without counting attempts, which snoozes keep.
func (p *Pipeline) outageDelay(age time.Duration) time.Duration {
	d := min(max(age/2, p.cfg.RetryBase), p.cfg.RetryCap)
	return d - time.Duration(rand.Int64N(int64(d/5)+1))
}

// outcomeOf reads the outcome of a Defender error ("" for other errors).
func outcomeOf(err error) defender.Outcome {
	var de *defender.Error
	if errors.As(err, &de) {
		return de.Outcome
	}
	return ""
}

// retryable maps a failed read call to queue semantics: wait as MDE asks on
// 429 (without using an attempt), give up on permanent failures, retry with
// backoff otherwise.
func (p *Pipeline) retryable(err error) error {
	if errors.Is(err, defender.ErrQuotaWait) {
		return river.JobSnooze(5 * time.Second) // nothing was sent; no attempt used
	}
	var de *defender.Error
	if errors.As(err, &de) {
		switch de.Outcome {
		case defender.OutcomeRateLimited:
			return river.JobSnooze(max(de.RetryAfter, time.Second))
		case defender.OutcomeForbidden, defender.OutcomeUnauthorized, defender.OutcomePermanent:
			return river.JobCancel(err)
		}
	}
	return err
}
