package pipeline

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
	"go.uber.org/zap"

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

// evaluateParallel is how many alerts of a job are decided at once.
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

// Work decides the alerts of the job that have no decision yet. Each alert
// is decided on its own (an alert that is decided stays decided), so a retry
// only redoes the rest.
func (w *evaluateWorker) Work(ctx context.Context, job *river.Job[evaluateArgs]) error {
	p := w.p
	todo, err := p.undecided(ctx, job.Args.AlertRowIDs)
	if err != nil {
		return err
	}
	budget, cancel := context.WithTimeout(ctx, evaluateBudget)
	defer cancel()
	errs := make([]error, len(todo))
	sem := make(chan struct{}, evaluateParallel)
	var wg sync.WaitGroup
	for i, id := range todo {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			defer func() {
				// River recovers a panicking job, but not its goroutines:
				// one bad alert must not take the process down.
				if r := recover(); r != nil {
					p.log.Error("panic evaluating an alert", zap.Int64("alert_row_id", id), zap.Any("panic", r), zap.Stack("stack"))
					errs[i] = fmt.Errorf("panic evaluating alert row %d: %v", id, r)
				}
			}()
			if budget.Err() != nil {
				errs[i] = errBudget
				return
			}
			err := p.evaluateOne(budget, job.JobRow, id)
			if err != nil && budget.Err() != nil && ctx.Err() == nil {
				err = errBudget
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var snooze time.Duration
	var first error
	for _, err := range errs {
		var de *defender.Error
		switch {
		case err == nil:
		case errors.Is(err, errBudget), errors.Is(err, defender.ErrQuotaWait):
			snooze = max(snooze, time.Second)
		case errors.As(err, &de) && de.Outcome == defender.OutcomeRateLimited:
			snooze = max(snooze, de.RetryAfter, time.Second)
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

// evaluateOne decides one stored alert: resolve the machine, read its
// attributes when a rule needs them, evaluate the rules, and record the
// decision. It returns an error only when the alert is left undecided.
func (p *Pipeline) evaluateOne(ctx context.Context, job *rivertype.JobRow, rowID int64) error {
	a, err := p.loadAlert(ctx, rowID)
	if err != nil {
		return err
	}
	log := p.log.With(zap.String("source", string(a.Source)), zap.String("alert_id", a.ID))
	attempt := job.Attempt

	var notes []string
	if a.MachineID == "" {
		if p.api == nil {
			return p.decideAndSettle(ctx, rowID, a, rules.Decision{Reason: fmt.Sprintf("machine name %q cannot be resolved without Defender credentials (dry run)", a.MachineName)}, nil)
		}
		note, err := p.resolveName(ctx, a)
		if err != nil {
			if outcomeOf(err) == defender.OutcomeMachineNotFound {
				return p.decideAndSettle(ctx, rowID, a, rules.Decision{Reason: fmt.Sprintf("no Defender machine is named %q", a.MachineName)}, nil)
			}
			log.Warn("machine lookup failed", zap.String("machine_name", a.MachineName), zap.Int("attempt", attempt), zap.Error(err))
			if finalAttempt(job, err) {
				return p.decideAndSettle(ctx, rowID, a, rules.Decision{Reason: fmt.Sprintf("machine name %q could not be resolved: %v", a.MachineName, err)}, nil)
			}
			return err
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
				if finalAttempt(job, err) {
					// Fail safe: rules that exclude machines by their
					// attributes cannot be trusted on empty attributes.
					return p.decideAndSettle(ctx, rowID, a, rules.Decision{Reason: fmt.Sprintf("not evaluated: the rules read machine attributes and they could not be fetched: %v", err)}, notes)
				}
				return err
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
	return p.decideAndSettle(ctx, rowID, a, d, notes)
}

func (p *Pipeline) loadAlert(ctx context.Context, rowID int64) (*alert.Alert, error) {
	var payload string
	err := p.store.DB.QueryRowContext(ctx, `SELECT payload FROM responder_alert WHERE id = $1`, rowID).Scan(&payload)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("alert row %d does not exist", rowID)
	}
	if err != nil {
		return nil, fmt.Errorf("loading alert %d: %w", rowID, err)
	}
	var a alert.Alert
	if err := json.Unmarshal([]byte(payload), &a); err != nil {
		return nil, fmt.Errorf("decoding stored alert %d: %w", rowID, err)
	}
	return &a, nil
}

// decideAndSettle records the decision and finishes what it started: a
// collection is sent at once, in this goroutine, rather than after a queue
// round trip.
func (p *Pipeline) decideAndSettle(ctx context.Context, rowID int64, a *alert.Alert, d rules.Decision, notes []string) error {
	e, err := p.decide(ctx, rowID, a, d, notes)
	if err != nil || e == nil {
		return err
	}
	if e.Decision == DecisionCollect {
		p.collectInline(ctx, e)
	}
	return nil
}

// decide records the decision for one alert row, applying cooldown, the kill
// switch, the circuit breaker and dry run, all claimed in one transaction
// (serialised across replicas), and enqueues the collection when due.
func (p *Pipeline) decide(ctx context.Context, rowID int64, a *alert.Alert, d rules.Decision, notes []string) (*Entry, error) {
	now := p.cfg.Now()
	rec := &Entry{
		Source: string(a.Source), AlertID: a.ID, MachineID: a.MachineID, MachineName: a.MachineName,
		Rule: d.Rule, Action: string(d.Action), Reason: d.Reason, Comment: d.Comment, State: StateDone,
	}
	if len(notes) > 0 {
		rec.Reason = strings.Join(append(notes, d.Reason), "; ")
	}
	base := *rec
	err := p.store.retryTx(ctx, func(tx *sql.Tx) error {
		rec = &Entry{}
		*rec = base // a retried attempt starts afresh
		if err := p.store.lockClaims(ctx, tx); err != nil {
			return err
		}
		var exists int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM responder_audit WHERE alert_row_id = $1`, rowID).Scan(&exists); err != nil {
			return fmt.Errorf("checking for an earlier decision: %w", err)
		}
		if exists > 0 {
			rec = nil // decided by an earlier attempt
			return nil
		}
		if err := p.classify(ctx, tx, rec, d, now); err != nil {
			return err
		}
		id, err := insertEntry(ctx, tx, rowID, rec, now)
		if err != nil {
			return err
		}
		rec.ID = id
		if rec.Decision == DecisionCollect || rec.Decision == DecisionDryRun {
			key := cooldownKey(d.Action, rec.Decision == DecisionDryRun)
			if _, err := tx.ExecContext(ctx, `INSERT INTO responder_cooldown (machine_id, action, last_at, audit_id) VALUES ($1, $2, $3, $4)
ON CONFLICT (machine_id, action) DO UPDATE SET last_at = excluded.last_at, audit_id = excluded.audit_id`,
				rec.MachineID, key, ms(now), id); err != nil {
				return fmt.Errorf("claiming the cooldown: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if rec == nil {
		return nil, nil
	}
	label := rec.Rule
	if label == "" {
		label = metrics.NoRule
	}
	p.m.Decisions.WithLabelValues(label, rec.Decision).Inc()
	fields := []zap.Field{
		zap.String("source", rec.Source), zap.String("alert_id", rec.AlertID), zap.String("machine_id", rec.MachineID),
		zap.String("rule", label), zap.String("decision", rec.Decision), zap.String("reason", rec.Reason), zap.Int64("audit_id", rec.ID),
	}
	if rec.Decision == DecisionCircuitOpen && !p.circuitOpen.Swap(true) {
		p.m.CircuitOpen.Set(1)
		p.log.Error("circuit breaker opened: collections are suppressed until the window clears", zap.String("reason", rec.Reason))
	}
	switch rec.Decision {
	case DecisionCircuitOpen, DecisionPaused:
		p.log.Warn("decision", fields...)
	default:
		p.log.Info("decision", fields...)
	}
	return rec, nil
}

// classify turns a rule decision into the recorded decision.
func (p *Pipeline) classify(ctx context.Context, tx *sql.Tx, rec *Entry, d rules.Decision, now time.Time) error {
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

	var lastAt, lastAudit int64
	err := tx.QueryRowContext(ctx, `SELECT last_at, audit_id FROM responder_cooldown WHERE machine_id = $1 AND action = $2`,
		rec.MachineID, cooldownKey(d.Action, dry)).Scan(&lastAt, &lastAudit)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("reading the cooldown: %w", err)
	}
	if err == nil && d.Cooldown > 0 && fromMS(lastAt).After(now.Add(-d.Cooldown)) {
		rec.Decision = DecisionCooldown
		rec.Reason = fmt.Sprintf("rule %q matched, but the machine had a %s decision at %s (audit #%d), within the cooldown of %s",
			d.Rule, d.Action, fromMS(lastAt).Format(time.RFC3339), lastAudit, d.Cooldown)
		return nil
	}
	paused := p.cfg.Paused
	if !paused {
		if paused, err = pausedIn(ctx, tx); err != nil {
			return err
		}
	}
	if paused {
		rec.Decision = DecisionPaused
		rec.Reason = fmt.Sprintf("rule %q matched, but responder is paused (kill switch)", d.Rule)
		return nil
	}
	if !dry {
		open, why, err := p.circuitCheck(ctx, tx, rec.MachineID, now)
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
		return true, fmt.Sprintf("%d collections in the last hour reach safety.max_collections_per_hour (%d)", lastHour, p.cfg.MaxCollectionsPerHour), nil
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
		return true, fmt.Sprintf("%d distinct machines collected in the last 10 minutes reach safety.max_machines_per_10m (%d)", machines, p.cfg.MaxMachinesPer10m), nil
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

func insertEntry(ctx context.Context, tx *sql.Tx, rowID int64, e *Entry, now time.Time) (int64, error) {
	dry := 0
	if e.DryRun {
		dry = 1
	}
	var id int64
	err := tx.QueryRowContext(ctx, `INSERT INTO responder_audit (alert_row_id, created_at, updated_at, source, alert_id, machine_id, machine_name,
rule, action, decision, reason, comment, dry_run, state) VALUES ($1, $2, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id`,
		rowID, ms(now), e.Source, e.AlertID, e.MachineID, e.MachineName, e.Rule, e.Action, e.Decision, truncate(e.Reason, 2000),
		e.Comment, dry, e.State).Scan(&id)
	if err != nil {
		return 0, fmt.Errorf("recording the decision: %w", err)
	}
	return id, nil
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

// finalAttempt reports whether err ends the job: a permanent failure, or a
// transient one on the last attempt. The caller then records a decision that
// says so, so that no accepted alert is left without one.
func finalAttempt(job *rivertype.JobRow, err error) bool {
	if errors.Is(err, defender.ErrQuotaWait) {
		return false // nothing was sent: waiting is not failing
	}
	switch outcomeOf(err) {
	case defender.OutcomeForbidden, defender.OutcomeUnauthorized, defender.OutcomePermanent:
		return true
	case defender.OutcomeRateLimited:
		return false
	}
	return job.Attempt >= job.MaxAttempts
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
