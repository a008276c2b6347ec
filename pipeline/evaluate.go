package pipeline

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/responder-dev/responder/alert"
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
				item.decision, item.notes, item.err = p.prepare(budget, job.JobRow, item.alert, item.received)
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
			batch = append(batch, decideItem{rowID: item.rowID, alert: item.alert, decision: item.decision, notes: item.notes})
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
			if e == nil || e.Decision != DecisionCollect {
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
	decision rules.Decision
	notes    []string
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

// prepare readies the decision of one stored alert: resolve the machine,
// read its attributes when a rule needs them, and evaluate the rules. It
// returns an error only when the alert must stay undecided for now.
func (p *Pipeline) prepare(ctx context.Context, job *rivertype.JobRow, a *alert.Alert, received time.Time) (rules.Decision, []string, error) {
	log := p.log.With(zap.String("source", string(a.Source)), zap.String("alert_id", a.ID))
	attempt := job.Attempt

	var notes []string
	if a.MachineID == "" {
		if p.api == nil {
			return rules.Decision{Reason: fmt.Sprintf("machine name %q cannot be resolved without Defender credentials (dry run)", a.MachineName)}, nil, nil
		}
		note, err := p.resolveName(ctx, a)
		if err != nil {
			if outcomeOf(err) == defender.OutcomeMachineNotFound {
				return rules.Decision{Reason: unknownMachineName(a.MachineName)}, nil, nil
			}
			log.Warn("machine lookup failed", zap.String("machine_name", a.MachineName), zap.Int("attempt", attempt), zap.Error(err))
			if p.giveUp(received, err) {
				return rules.Decision{Reason: fmt.Sprintf("machine name %q could not be resolved: %v", a.MachineName, err)}, nil, nil
			}
			return rules.Decision{}, nil, err
		}
		notes = append(notes, note)
	}

	set := p.rules.Current()
	var machine *alert.Machine
	if set.NeedsMachine() {
		switch {
		case p.api == nil:
			notes = append(notes, "machine attributes unavailable without Defender credentials (dry run)")
		default:
			m, err := p.machine(ctx, a.MachineID)
			switch {
			case err == nil:
				machine = m
			case outcomeOf(err) == defender.OutcomeMachineNotFound:
				notes = append(notes, "Defender does not know the machine; machine attributes are empty")
			default:
				log.Warn("machine attributes unavailable", zap.String("machine_id", a.MachineID), zap.Int("attempt", attempt), zap.Error(err))
				if p.giveUp(received, err) {
					// Fail safe: rules that exclude machines by their
					// attributes cannot be trusted on empty attributes.
					return rules.Decision{Reason: fmt.Sprintf("not evaluated: the rules read machine attributes and they could not be fetched: %v", err)}, notes, nil
				}
				return rules.Decision{}, nil, err
			}
		}
	}
	if machine == nil {
		machine = &alert.Machine{ID: a.MachineID, Name: a.MachineName}
	}
	d := set.Evaluate(a, machine)
	for _, e := range d.Errors {
		// A condition that fails at run time counts as not matching; say so.
		log.Warn("rule evaluation error", zap.String("machine_id", a.MachineID), zap.String("rule", e.Rule), zap.Error(e.Err))
	}
	return d, notes, nil
}

// decideItem is one alert with its rule decision, to be recorded.
type decideItem struct {
	rowID    int64
	alert    *alert.Alert
	decision rules.Decision
	notes    []string
}

// decide records the decision for one alert row (see decideBatch).
func (p *Pipeline) decide(ctx context.Context, rowID int64, a *alert.Alert, d rules.Decision, notes []string) (*Entry, error) {
	entries, err := p.decideBatch(ctx, []decideItem{{rowID: rowID, alert: a, decision: d, notes: notes}})
	if err != nil {
		return nil, err
	}
	return entries[0], nil
}

// decideBatch records the decisions of several alert rows in one
// transaction (serialised across replicas), applying cooldown, the kill
// switch, the circuit breaker and dry run in order, so that each decision
// sees the ones before it. An entry is nil where the row was decided
// earlier. A collect entry is left queued for the caller to send.
func (p *Pipeline) decideBatch(ctx context.Context, items []decideItem) ([]*Entry, error) {
	now := p.cfg.Now()
	var entries []*Entry
	// The commit need not be flushed at once (redoableTx): nothing leaves
	// the process on a decision before a later flushed commit (a
	// collection claims "posting" before its POST), which makes this one
	// durable too; a decision lost with the power is made again, since its
	// job is then still running.
	err := p.store.redoableTx(ctx, func(tx *sql.Tx) error {
		entries = make([]*Entry, len(items)) // a retried attempt starts afresh
		if err := p.store.lockClaims(ctx, tx); err != nil {
			return err
		}
		done, err := decidedAmong(ctx, tx, items)
		if err != nil {
			return err
		}
		c := &claims{p: p, tx: tx, now: now}
		defer c.close()
		for i, it := range items {
			if done[it.rowID] {
				continue // decided by an earlier attempt
			}
			a, d := it.alert, it.decision
			rec := &Entry{
				Source: string(a.Source), AlertID: a.ID, MachineID: a.MachineID, MachineName: a.MachineName,
				Rule: d.Rule, Action: string(d.Action), Reason: d.Reason, Comment: d.Comment, State: StateDone,
			}
			if len(it.notes) > 0 {
				rec.Reason = strings.Join(append(slices.Clip(it.notes), d.Reason), "; ")
			}
			if err := c.classify(ctx, rec, d); err != nil {
				return err
			}
			if err := c.record(ctx, it.rowID, rec, d.Action); err != nil {
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
func (p *Pipeline) reportDecision(rec *Entry) {
	label := rec.Rule
	if label == "" {
		label = metrics.NoRule
	}
	p.m.Decisions.WithLabelValues(label, rec.Decision).Inc()
	fields := []zap.Field{zap.String("source", rec.Source), zap.String("alert_id", rec.AlertID)}
	// An alert may name its machine by id, by name, or by a name that no
	// machine has: log what is known, never an empty key.
	if rec.MachineID != "" {
		fields = append(fields, zap.String("machine_id", rec.MachineID))
	}
	if rec.MachineName != "" {
		fields = append(fields, zap.String("machine_name", rec.MachineName))
	}
	fields = append(fields, zap.String("rule", label), zap.String("decision", rec.Decision), zap.String("reason", rec.Reason), zap.Int64("audit_id", rec.ID))
	if rec.Decision == DecisionCircuitOpen && !p.circuitOpen.Swap(true) {
		p.m.CircuitOpen.Set(1)
		p.log.Error("circuit breaker opened: collections are suppressed until the window clears", zap.String("reason", rec.Reason))
	}
	switch rec.Decision {
	case DecisionCircuitOpen, DecisionPaused:
		// Every alert is suppressed while it lasts: one line per window
		// and decision, with the count of those not written.
		p.sample.Write(p.log, zapcore.WarnLevel, "decision:"+rec.Decision, "decision", fields...)
	default:
		p.log.Info("decision", fields...)
	}
}

// claims is the state one decision transaction reads once and then keeps
// up to date as it records decisions: the kill switch, the safety windows,
// and the statements it runs per alert, prepared once.
type claims struct {
	p   *Pipeline
	tx  *sql.Tx
	now time.Time

	paused *bool

	windowRead bool
	lastHour   int             // collections in the last hour
	machines   int             // distinct machines collected in the last 10 minutes
	inWindow   map[string]bool // machines known to be among them

	readCooldown, writeCooldown, insert *sql.Stmt
}

func (c *claims) close() {
	for _, st := range []*sql.Stmt{c.readCooldown, c.writeCooldown, c.insert} {
		if st != nil {
			_ = st.Close()
		}
	}
}

func (c *claims) stmt(ctx context.Context, st **sql.Stmt, query string) (*sql.Stmt, error) {
	if *st == nil {
		prepared, err := c.tx.PrepareContext(ctx, query)
		if err != nil {
			return nil, err
		}
		*st = prepared
	}
	return *st, nil
}

// classify turns a rule decision into the recorded decision.
func (c *claims) classify(ctx context.Context, rec *Entry, d rules.Decision) error {
	p := c.p
	switch {
	case !d.Matched:
		rec.Decision = DecisionNoMatch
		if rec.Reason == "" {
			rec.Reason = "no enabled rule matched"
		}
		return nil
	case d.Action == rules.ActionIgnore:
		rec.Decision = DecisionIgnore
		return nil
	}
	dry := p.cfg.DryRun || d.DryRun
	rec.DryRun = dry

	st, err := c.stmt(ctx, &c.readCooldown, `SELECT last_at, audit_id FROM responder_cooldown WHERE machine_id = $1 AND action = $2`)
	if err != nil {
		return fmt.Errorf("reading the cooldown: %w", err)
	}
	var lastAt, lastAudit int64
	err = st.QueryRowContext(ctx, rec.MachineID, cooldownKey(d.Action, dry)).Scan(&lastAt, &lastAudit)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("reading the cooldown: %w", err)
	}
	if err == nil && d.Cooldown > 0 && fromMS(lastAt).After(c.now.Add(-d.Cooldown)) {
		rec.Decision = DecisionCooldown
		rec.Reason = fmt.Sprintf("rule %q matched, but the machine had a %s decision at %s (audit #%d), within the cooldown of %s",
			d.Rule, d.Action, fromMS(lastAt).Format(time.RFC3339), lastAudit, d.Cooldown)
		return nil
	}
	if c.paused == nil {
		paused := p.cfg.Paused
		if !paused {
			if paused, err = pausedIn(ctx, c.tx); err != nil {
				return err
			}
		}
		c.paused = &paused
	}
	if *c.paused {
		rec.Decision = DecisionPaused
		rec.Reason = fmt.Sprintf("rule %q matched, but responder is paused (kill switch)", d.Rule)
		return nil
	}
	if !dry {
		open, why, err := c.circuit(ctx, rec.MachineID)
		if err != nil {
			return err
		}
		if open {
			rec.Decision = DecisionCircuitOpen
			rec.Reason = fmt.Sprintf("rule %q matched, but the circuit breaker is open: %s", d.Rule, why)
			return nil
		}
		rec.Decision = DecisionCollect
		rec.State = StateQueued
		return nil
	}
	rec.Decision = DecisionDryRun
	return nil
}

// circuit tells whether one more collection, for machineID, would pass a
// safety limit (circuitCheck, with the windows counted once per
// transaction and kept up to date as it records collections).
func (c *claims) circuit(ctx context.Context, machineID string) (bool, string, error) {
	p := c.p
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
	if c.lastHour >= p.cfg.MaxCollectionsPerHour {
		return true, fmt.Sprintf("%d collect decisions in the last hour reach safety.max_collections_per_hour (%d)", c.lastHour, p.cfg.MaxCollectionsPerHour), nil
	}
	if machineID == "" || c.machines < p.cfg.MaxMachinesPer10m {
		return false, "", nil
	}
	known, ok := c.inWindow[machineID]
	if !ok {
		err := c.tx.QueryRowContext(ctx, `SELECT 1 FROM responder_audit WHERE machine_id = $1 AND decision = 'collect' AND created_at > $2 LIMIT 1`,
			machineID, ms(c.now.Add(-10*time.Minute))).Scan(new(int))
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return false, "", fmt.Errorf("looking for the machine's recent collections: %w", err)
		}
		known = err == nil
		c.inWindow[machineID] = known
	}
	if !known {
		return true, fmt.Sprintf("%d distinct machines with collect decisions in the last 10 minutes reach safety.max_machines_per_10m (%d)", c.machines, p.cfg.MaxMachinesPer10m), nil
	}
	return false, "", nil
}

// record inserts the audit entry and claims the cooldown of a collection
// (or of a dry run, apart).
func (c *claims) record(ctx context.Context, rowID int64, rec *Entry, action rules.Action) error {
	st, err := c.stmt(ctx, &c.insert, insertEntrySQL)
	if err != nil {
		return fmt.Errorf("recording the decision: %w", err)
	}
	dry := 0
	if rec.DryRun {
		dry = 1
	}
	if err := st.QueryRowContext(ctx, rowID, ms(c.now), rec.Source, rec.AlertID, rec.MachineID, rec.MachineName, rec.Rule, rec.Action,
		rec.Decision, truncate(rec.Reason, 2000), rec.Comment, dry, rec.State).Scan(&rec.ID); err != nil {
		return fmt.Errorf("recording the decision: %w", err)
	}
	if rec.Decision != DecisionCollect && rec.Decision != DecisionDryRun {
		return nil
	}
	st, err = c.stmt(ctx, &c.writeCooldown, `INSERT INTO responder_cooldown (machine_id, action, last_at, audit_id) VALUES ($1, $2, $3, $4)
ON CONFLICT (machine_id, action) DO UPDATE SET last_at = excluded.last_at, audit_id = excluded.audit_id`)
	if err != nil {
		return fmt.Errorf("claiming the cooldown: %w", err)
	}
	if _, err := st.ExecContext(ctx, rec.MachineID, cooldownKey(action, rec.DryRun), ms(c.now), rec.ID); err != nil {
		return fmt.Errorf("claiming the cooldown: %w", err)
	}
	if rec.Decision == DecisionCollect && c.windowRead {
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
rule, action, decision, reason, comment, dry_run, state) VALUES ($1, $2, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id`

// circuitCheck tells whether one more collection, for machineID, would pass
// a safety limit.
func (p *Pipeline) circuitCheck(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, machineID string, now time.Time) (bool, string, error) {
	var lastHour int
	if err := q.QueryRowContext(ctx, `SELECT COUNT(*) FROM responder_audit WHERE decision = 'collect' AND created_at > $1`,
		ms(now.Add(-time.Hour))).Scan(&lastHour); err != nil {
		return false, "", fmt.Errorf("counting recent collections: %w", err)
	}
	if lastHour >= p.cfg.MaxCollectionsPerHour {
		return true, fmt.Sprintf("%d collect decisions in the last hour reach safety.max_collections_per_hour (%d)", lastHour, p.cfg.MaxCollectionsPerHour), nil
	}
	if machineID == "" {
		return false, "", nil
	}
	var machines, known int
	if err := q.QueryRowContext(ctx, `SELECT COUNT(DISTINCT machine_id), COUNT(DISTINCT CASE WHEN machine_id = $2 THEN machine_id END)
FROM responder_audit WHERE decision = 'collect' AND created_at > $1`, ms(now.Add(-10*time.Minute)), machineID).Scan(&machines, &known); err != nil {
		return false, "", fmt.Errorf("counting recent machines: %w", err)
	}
	if known == 0 && machines >= p.cfg.MaxMachinesPer10m {
		return true, fmt.Sprintf("%d distinct machines with collect decisions in the last 10 minutes reach safety.max_machines_per_10m (%d)", machines, p.cfg.MaxMachinesPer10m), nil
	}
	return false, "", nil
}

func cooldownKey(action rules.Action, dry bool) string {
	if dry {
		// A dry run must not hold back a real collection later.
		return "dry_run:" + string(action)
	}
	return string(action)
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
