package pipeline

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
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
	"github.com/responder-dev/responder/store"
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
// default queue (collect jobs) and the track queue (track and download
// jobs), so that a backlog of evaluations waiting for the machine-read
// quota never holds up a collection or the tracking of actions.
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

// Work decides the alerts of the job that have no decision yet. Each alert
// is decided on its own (an alert that is decided stays decided), so a retry
// only redoes the rest.
//
// Alerts are prepared in parallel (the stored alert, its machine) and the
// ready ones decided and recorded together, in one transaction per group:
// under load one commit records many decisions, while a lone alert is
// recorded as soon as it is ready. Collections start right after their
// decision is committed.
func (w *evaluateWorker) Work(ctx context.Context, job *river.Job[evaluateArgs]) error {
	p := w.p
	todo, err := p.store.Undecided(ctx, job.Args.AlertRowIDs)
	if err != nil {
		return err
	}
	// Jobs fetched together must not all give up together: each one's
	// snooze is a statement in one completion transaction.
	budget, cancel := context.WithTimeout(ctx, evaluateBudget-time.Duration(rand.Int64N(int64(evaluateBudget/4))))
	defer cancel()
	ready := make(chan preparedAlert, len(todo))
	var prepared sync.WaitGroup
	for i, rowID := range todo {
		prepared.Add(1)
		go func() {
			defer prepared.Done()
			ready <- p.prepareRow(ctx, budget, job.JobRow, i, rowID)
		}()
	}
	left := p.decideAsReady(ctx, ready, len(todo))
	prepared.Wait()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return p.jobResult(left)
}

// prepareRow loads one stored alert and gathers what its decision needs to
// know of its machine. It never panics: River recovers a panicking job, but
// not its goroutines, and one bad alert must not take the process down.
func (p *Pipeline) prepareRow(ctx, budget context.Context, job *rivertype.JobRow, index int, rowID int64) (item preparedAlert) {
	item = preparedAlert{index: index, rowID: rowID}
	defer func() {
		if r := recover(); r != nil {
			p.log.Error("panic evaluating an alert", zap.Int64("alert_row_id", rowID), zap.Any("panic", r), zap.Stack("stack"))
			item.err = fmt.Errorf("panic evaluating alert row %d: %v", rowID, r)
		}
	}()
	// No per-job bound on the machine reads: they have their own
	// (lookupSlot), and an alert waiting for one must not hold up one
	// whose machine is known.
	item.alert, item.received, item.err = p.store.Alert(budget, rowID)
	if item.err == nil {
		item.set = p.rules.Current()
		item.machine, item.err = p.prepare(budget, job, item.alert, item.set, item.received)
	}
	if item.err != nil && budget.Err() != nil && ctx.Err() == nil {
		item.err = errBudget
	}
	return item
}

// decideAsReady decides the prepared alerts in groups as they come, starts
// the collections of the collect decisions, and returns the alerts left
// undecided (with why) once all n came and the collections ended.
func (p *Pipeline) decideAsReady(ctx context.Context, ready <-chan preparedAlert, n int) []preparedAlert {
	var left []preparedAlert
	sem := make(chan struct{}, evaluateParallel) // collections in flight
	var collects sync.WaitGroup
	for received := 0; received < n; {
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
		var waiting []preparedAlert
		for _, item := range group {
			switch {
			case errors.Is(item.err, store.ErrAlertGone):
				p.log.Info("alert no longer stored; nothing to decide", zap.Int64("alert_row_id", item.rowID))
			case item.err != nil:
				left = append(left, item)
			default:
				batch = append(batch, decideItem{rowID: item.rowID, alert: item.alert, set: item.set, machine: item.machine})
				waiting = append(waiting, item)
			}
		}
		if len(batch) == 0 {
			continue
		}
		entries, err := p.decideBatch(ctx, batch)
		if err != nil {
			for _, item := range waiting {
				item.err = err
				left = append(left, item)
			}
			continue
		}
		for _, e := range entries {
			if e != nil && e.Decision == audit.Collect {
				collects.Add(1)
				go p.collectInBackground(ctx, e, sem, &collects)
			}
		}
	}
	collects.Wait()
	return left
}

// collectInBackground sends the collection of a decision just recorded,
// at most evaluateParallel at once (sem). A panic is logged: the decision
// is recorded and its entry queued, so the sweep hands it to a collect job.
func (p *Pipeline) collectInBackground(ctx context.Context, e *audit.Entry, sem chan struct{}, wg *sync.WaitGroup) {
	defer wg.Done()
	defer func() {
		if r := recover(); r != nil {
			p.log.Error("panic sending a collection", zap.Int64("audit_id", e.ID), zap.Any("panic", r), zap.Stack("stack"))
		}
	}()
	sem <- struct{}{}
	defer func() { <-sem }()
	p.collectInline(ctx, e)
}

// jobResult is the job's end for the alerts left undecided: nil when none
// is; a snooze (no attempt used) while they wait for the quota or through
// a Defender outage; else the first error, retried with backoff.
func (p *Pipeline) jobResult(left []preparedAlert) error {
	var snooze time.Duration
	var first error
	for _, item := range left {
		var de *defender.Error
		switch err := item.err; {
		case errors.Is(err, errBudget), errors.Is(err, defender.ErrQuotaWait):
			snooze = max(snooze, time.Second)
		case errors.As(err, &de) && de.Outcome == defender.OutcomeRateLimited:
			snooze = max(snooze, de.RetryAfter, time.Second)
		case errors.As(err, &de):
			// Defender failing (an outage): wait without using up the
			// job's attempts, for as long as RetryFor allows (prepare
			// decides without Defender after that).
			snooze = max(snooze, p.outageDelay(p.cfg.Now().Sub(item.received)))
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
	if m, ok := p.knownMachine(a, set); ok {
		return m, nil
	}
	var m rules.Machine
	if a.MachineID == "" {
		if p.api == nil {
			m.Unavailable = fmt.Sprintf("machine name %q cannot be resolved without Defender credentials (dry run)", a.MachineName)
			return m, nil
		}
		note, err := p.resolveName(ctx, a)
		switch {
		case defender.OutcomeOf(err) == defender.OutcomeMachineNotFound:
			m.Unavailable = unknownMachineName(a.MachineName)
			return m, nil
		case err != nil:
			return m, &lookupError{what: fmt.Sprintf("machine name %q could not be resolved", a.MachineName), err: err}
		}
		m.Notes = append(m.Notes, note)
	}
	if !set.NeedsMachine() {
		return m, nil // resolved by name: no attribute to read
	}
	// With credentials (knownMachine settles it without), and not cached.
	attrs, err := p.machine(ctx, a.MachineID)
	switch {
	case err == nil:
		m.Attributes = attrs
	case defender.OutcomeOf(err) == defender.OutcomeMachineNotFound:
		m.Unavailable = fmt.Sprintf("Defender does not know machine %s", a.MachineID)
	default:
		return m, &lookupError{what: "machine attributes could not be fetched", err: err}
	}
	return m, nil
}

// knownMachine is what machineFor gives a without asking Defender, and
// whether it could: the alert names its machine by id and the rules read no
// machine attribute, or read them and the machine's are cached (as fresh
// as machineFor would take them), or there are no credentials to ask with.
// machineFor takes this path first, so that both give the same.
func (p *Pipeline) knownMachine(a *alert.Alert, set *rules.Set) (rules.Machine, bool) {
	var m rules.Machine
	switch {
	case a.MachineID == "":
		return m, false // the name is resolved through Defender
	case !set.NeedsMachine():
		return m, true
	case p.api == nil:
		m.Unavailable = "machine attributes unavailable without Defender credentials (dry run)"
		return m, true
	}
	attrs, ok := p.machines.get(a.MachineID)
	m.Attributes = attrs
	return m, ok
}

// decideAtDoor decides an alert at intake (store.Door) when nothing but
// the alert, the rules and what is known of its machine without asking
// Defender (knownMachine: no attribute read, or the machine's cached) can
// change its decision, and no rule with an action matches it. Most alerts
// of most deployments are of that kind; they are recorded in the commit
// that stores them and never become a job. The others return nil and go
// through the queue. Both ways call rules.Decide's halves with what
// machineFor gives the alert, so they decide alike.
func (p *Pipeline) decideAtDoor(a *alert.Alert) *store.DoorDecision {
	set := p.rules.Current()
	if set == nil {
		return nil
	}
	m, ok := p.knownMachine(a, set)
	if !ok {
		return nil
	}
	d, ok := rules.DecideWithoutState(rules.Input{Alert: a, Machine: m, Rules: set, DryRun: p.cfg.DryRun, Now: p.cfg.Now()})
	if !ok {
		return nil
	}
	return &store.DoorDecision{Entry: d.Entry(a), Report: func(rec *audit.Entry) {
		p.logEvalErrors(a, d)
		p.reportDecision(rec)
	}}
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
// of the store (serialised across replicas), each with rules.Decide over
// the state as that transaction sees it, so that each decision sees the
// ones before it (cooldown, circuit breaker). An entry is nil where the row
// was decided earlier. A collect entry is left queued for the caller to
// send.
func (p *Pipeline) decideBatch(ctx context.Context, items []decideItem) ([]*audit.Entry, error) {
	now := p.cfg.Now()
	var entries []*audit.Entry
	err := p.store.Decide(ctx, now, p.stateOptions(), func(v *store.View) error {
		entries = make([]*audit.Entry, len(items)) // a retried attempt starts afresh
		rowIDs := make([]int64, len(items))
		for i, it := range items {
			rowIDs[i] = it.rowID
		}
		done, err := v.Decided(rowIDs)
		if err != nil {
			return err
		}
		for i, it := range items {
			if done[it.rowID] {
				continue // decided by an earlier attempt
			}
			d, err := rules.Decide(rules.Input{Alert: it.alert, Machine: it.machine, Rules: it.set, State: v, DryRun: p.cfg.DryRun, Now: now})
			if err != nil {
				return err
			}
			p.logEvalErrors(it.alert, d)
			rec := d.Entry(it.alert)
			if err := v.Record(it.rowID, rec, d.ClaimedCooldown()); err != nil {
				return err
			}
			if err := p.raiseDecided(ctx, v.Tx(), rec, it.alert, now); err != nil {
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

// stateOptions are the parts of the decisions' state the configuration
// sets.
func (p *Pipeline) stateOptions() store.StateOptions {
	return store.StateOptions{Paused: p.cfg.Paused, Limits: p.limits()}
}

// limits are the circuit breaker's safety limits.
func (p *Pipeline) limits() rules.CircuitLimits {
	return rules.CircuitLimits{PerHour: p.cfg.MaxCollectionsPerHour, MachinesPer10m: p.cfg.MaxMachinesPer10m}
}

// logEvalErrors says which rules failed on an alert: a condition that
// fails at run time counts as not matching.
func (p *Pipeline) logEvalErrors(a *alert.Alert, d rules.Decision) {
	for _, e := range d.Errors {
		p.log.Warn("rule evaluation error", zap.String("alert_id", a.ID), zap.String("machine_id", a.MachineID),
			zap.String("rule", e.Rule), zap.Error(e.Err))
	}
}

// reportDecision counts and logs a committed decision.
func (p *Pipeline) reportDecision(rec *audit.Entry) {
	label := rec.Rule
	if label == "" {
		label = metrics.NoRule
	}
	p.m.Decisions.WithLabelValues(label, string(rec.Decision)).Inc()
	fields := make([]zap.Field, 0, 8) // the most there are: one allocation
	fields = append(fields, zap.String("source", rec.Source), zap.String("alert_id", rec.AlertID))
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
		p.circuitOpened(rec.Reason)
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
