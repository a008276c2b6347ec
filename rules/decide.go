package rules

import (
	"fmt"
	"strings"
	"time"

	"github.com/responder-dev/responder/alert"
	"github.com/responder-dev/responder/audit"
	"github.com/responder-dev/responder/metrics"
)

// Machine is what is known of the machine of an alert when it is decided.
type Machine struct {
	// Attributes are the machine's attributes as Defender gave them (or a
	// rule test or `eval --machine` gives them); nil when none were read.
	Attributes *alert.Machine
	// Unavailable, when set, says why the machine cannot be evaluated: it
	// could not be resolved (the alert names a host no machine has), or the
	// rules read machine.* and its attributes could not be had. The rules
	// are then not evaluated: an exclusion by a machine's attribute must
	// not fail open on empty attributes.
	Unavailable string
	// Notes say how the machine was found (a name resolved to an id, ...);
	// they start the decision's reason.
	Notes []string
}

// State is the view of the state a decision reads: the kill switch, the
// cooldowns and the circuit breaker's windows. The evaluator reads it from
// the store, within the transaction that records the decision; replay,
// rule tests and `eval` keep it in memory (Memory).
type State interface {
	// Paused reports whether the kill switch is on.
	Paused() (bool, error)
	// LastAction returns when the machine last had a decision holding the
	// cooldown key (CooldownKey), and that decision's audit id.
	LastAction(machineID, key string) (at time.Time, auditID int64, ok bool, err error)
	// CircuitOpen reports whether one more collection, for machineID, would
	// pass a safety limit of the circuit breaker, and which.
	CircuitOpen(machineID string) (open bool, why string, err error)
}

// Input is everything a decision depends on.
type Input struct {
	Alert   *alert.Alert
	Machine Machine
	Rules   *Set
	State   State
	// DryRun is the global dry run (defender.dry_run).
	DryRun bool
	// Now is when the decision is taken.
	Now time.Time
}

// Decision is what is decided for one alert and machine, and why.
type Decision struct {
	// Decision is the audit trail's decision.
	Decision audit.Decision
	// Rule is the deciding rule's name, "" when no rule matched.
	Rule string
	// Action is the deciding rule's action, "" when no rule matched.
	Action Action
	// Comment is the rendered comment for actions that send one.
	Comment string
	// Cooldown is the deciding rule's cooldown.
	Cooldown time.Duration
	// DryRun reports that the action is recorded but never sent (the rule's
	// or the global dry run).
	DryRun bool
	// Reason explains the decision in one line, for the audit trail.
	Reason string
	// Errors are the rules that failed on this alert (counted as not
	// matching) and comment templates that failed.
	Errors []EvalError
	// Snapshot is the machine attributes the rules read, kept with the
	// decision so that a replay sees what the rules saw; nil when the rules
	// read none, or they could not be had.
	Snapshot *alert.Machine
}

// Matched reports whether a rule matched.
func (d Decision) Matched() bool { return d.Rule != "" }

// MetricRule is the rule label of responder_decisions_total: the rule, or
// metrics.NoRule.
func (d Decision) MetricRule() string {
	if d.Rule == "" {
		return metrics.NoRule
	}
	return d.Rule
}

// Entry is the audit entry of the decision for alert a, not yet recorded:
// a collection starts queued, every other decision is done.
func (d Decision) Entry(a *alert.Alert) *audit.Entry {
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

// ClaimedCooldown is the cooldown key the decision claims when recorded
// (CooldownKey), "" when it claims none.
func (d Decision) ClaimedCooldown() string {
	if !d.Decision.ClaimsCooldown() {
		return ""
	}
	return CooldownKey(d.Action, d.DryRun)
}

// CooldownKey is the key of the cooldown an action holds on a machine. A dry
// run holds one of its own: it must not hold back a real collection later.
func CooldownKey(action Action, dryRun bool) string {
	if dryRun {
		return "dry_run:" + string(action)
	}
	return string(action)
}

// notEvaluated prefixes the reason of an alert whose rules were not
// evaluated because its machine's attributes could not be had.
const notEvaluated = "not evaluated: the rules read machine attributes and they could not be had: "

// Decide is the one function that decides (SPEC 11). The evaluator, the
// evaluate API, `responder eval`, `responder test` and `responder replay`
// all call it, with the state they have: the same input gives the same
// decision everywhere. It does no I/O of its own; the state view may read
// the store, and only its errors are returned.
//
// In order: the machine must be known and, when the rules read machine.*,
// its attributes too (otherwise no_match, "not evaluated"); the first
// matching rule decides (no_match, ignore); then for an action the cooldown
// of that machine and action, the kill switch, the circuit breaker (not for
// a dry run) and the dry run.
func Decide(in Input) (Decision, error) {
	return Prepare(in).Settle(in.State, in.Now)
}

// DecideWithoutState is Decide for a caller that has no state to read:
// it returns the decision when the state cannot change it (no rule with an
// action matched: no_match or ignore), and ok false otherwise. Intake
// decides such alerts as they arrive; it is Decide, not a copy: the same
// Prepare, the same Settle.
func DecideWithoutState(in Input) (d Decision, ok bool) {
	p := Prepare(in)
	if !p.final {
		return Decision{}, false
	}
	d, err := p.Settle(nil, in.Now)
	return d, err == nil
}

// Prepared is a decision whose rules are evaluated and whose state is not
// read yet: Decide is Prepare then Settle. Replay evaluates the rules of
// many alerts in parallel (Prepare needs no state) and settles them in
// order on its virtual clock; it calls these two, not a copy of them.
type Prepared struct {
	d     Decision
	final bool // the state cannot change it (no action to hold back)
	in    Input
}

// Prepare evaluates the rules of in (its State and Now are not read).
func Prepare(in Input) Prepared {
	d, final := decideRules(in)
	return Prepared{d: d, final: final, in: in}
}

// Matched is the decision's rule and action before the state is read: what
// the rules alone decided.
func (p Prepared) Matched() Decision { return p.d }

// Settle completes the decision with the state at now.
func (p Prepared) Settle(state State, now time.Time) (Decision, error) {
	if p.final {
		return p.d, nil
	}
	in := p.in
	in.State, in.Now = state, now
	d := p.d
	reason, err := suppressed(in, &d)
	if err != nil {
		return Decision{}, err
	}
	if reason != "" {
		d.Reason = reason
	}
	d.Reason = withNotes(in.Machine.Notes, d.Reason)
	return d, nil
}

// decideRules evaluates the rules; done reports a decision that the state
// cannot change (no action to hold back).
func decideRules(in Input) (Decision, bool) {
	a, set := in.Alert, in.Rules
	if a.MachineID == "" || (set.NeedsMachine() && in.Machine.Attributes == nil && in.Machine.Unavailable != "") {
		why := in.Machine.Unavailable
		switch {
		case a.MachineID == "" && why == "":
			why = fmt.Sprintf("alert %s names no machine id that could be resolved", a.ID)
		case a.MachineID != "":
			why = notEvaluated + why
		}
		return Decision{Decision: audit.NoMatch, Reason: withNotes(in.Machine.Notes, why)}, true
	}
	m := in.Machine.Attributes
	var snapshot *alert.Machine
	if set.NeedsMachine() && m != nil {
		snapshot = m
	}
	if m == nil {
		m = &alert.Machine{ID: a.MachineID, Name: a.MachineName}
	}
	match := set.Evaluate(a, m)
	d := Decision{
		Rule: match.Rule, Action: match.Action, Comment: match.Comment, Cooldown: match.Cooldown,
		Reason: match.Reason, Errors: match.Errors, Snapshot: snapshot,
	}
	switch {
	case !match.Matched:
		d.Decision = audit.NoMatch
	case match.Action == ActionIgnore:
		d.Decision = audit.Ignore
	default:
		d.DryRun = in.DryRun || match.DryRun
		return d, false
	}
	d.Reason = withNotes(in.Machine.Notes, d.Reason)
	return d, true
}

// suppressed sets the decision of a matched action from the state, and
// returns the reason when the state holds it back.
func suppressed(in Input, d *Decision) (string, error) {
	machineID := in.Alert.MachineID
	at, auditID, ok, err := in.State.LastAction(machineID, CooldownKey(d.Action, d.DryRun))
	if err != nil {
		return "", err
	}
	if ok && d.Cooldown > 0 && at.After(in.Now.Add(-d.Cooldown)) {
		d.Decision = audit.Cooldown
		return fmt.Sprintf("rule %q matched, but the machine had a %s decision at %s (audit #%d), within the cooldown of %s",
			d.Rule, d.Action, at.UTC().Format(time.RFC3339), auditID, d.Cooldown), nil
	}
	paused, err := in.State.Paused()
	if err != nil {
		return "", err
	}
	if paused {
		d.Decision = audit.Paused
		return fmt.Sprintf("rule %q matched, but responder is paused (kill switch)", d.Rule), nil
	}
	if d.DryRun {
		d.Decision = audit.DryRun
		return "", nil
	}
	open, why, err := in.State.CircuitOpen(machineID)
	if err != nil {
		return "", err
	}
	if open {
		d.Decision = audit.CircuitOpen
		return fmt.Sprintf("rule %q matched, but the circuit breaker is open: %s", d.Rule, why), nil
	}
	d.Decision = audit.Collect
	return "", nil
}

func withNotes(notes []string, reason string) string {
	if len(notes) == 0 {
		return reason
	}
	return strings.Join(append(append([]string(nil), notes...), reason), "; ")
}
