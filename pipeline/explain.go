package pipeline

import (
	"context"

	"github.com/responder-dev/responder/alert"
	"github.com/responder-dev/responder/metrics"
	"github.com/responder-dev/responder/rules"
	"github.com/responder-dev/responder/store"
)

// Explanation is what the pipeline would decide for one alert and machine
// now, without acting (POST /api/v1/evaluate). Decision is one of the
// decisions of the audit trail, or IgnoredAtIntake for an alert intake
// would not store (it names no machine, or is resolved and unwanted).
type Explanation struct {
	AlertID     string `json:"alert_id"`
	Source      string `json:"source"`
	MachineID   string `json:"machine_id,omitempty"`
	MachineName string `json:"machine_name,omitempty"`
	Rule        string `json:"rule"`
	Action      string `json:"action,omitempty"`
	Decision    string `json:"decision"`
	Reason      string `json:"reason"`
	Comment     string `json:"comment,omitempty"`
	Cooldown    string `json:"cooldown,omitempty"`
	DryRun      bool   `json:"dry_run"`
	Duplicate   bool   `json:"duplicate"`
	// Machine is the snapshot the decision would keep: the attributes the
	// rules read.
	Machine *alert.Machine `json:"machine,omitempty"`
}

// IgnoredAtIntake is the Explanation of an alert the webhook would count
// as ignored (responder_alerts_received_total{outcome="ignored"}).
const IgnoredAtIntake = "ignored"

// Evaluation is the answer of Explain.
type Evaluation struct {
	Decisions []Explanation `json:"decisions"`
	Invalid   []string      `json:"invalid,omitempty"`
}

// Explain decodes a payload and says what would be decided for each alert:
// rules, cooldown, kill switch, circuit breaker and dry run, as the workers
// would apply them. It writes nothing; Defender is only read (machine names
// and attributes), never asked to act.
func (p *Pipeline) Explain(ctx context.Context, format alert.Format, body []byte) (*Evaluation, error) {
	batch, err := alert.Decode(format, body)
	if err != nil {
		return nil, err
	}
	out := &Evaluation{Decisions: []Explanation{}}
	for _, pr := range batch.Invalid {
		out.Invalid = append(out.Invalid, pr.String())
	}
	set := p.rules.Current()
	for i := range batch.Alerts {
		ex, err := p.explainOne(ctx, batch.Alerts[i], set)
		if err != nil {
			return nil, err
		}
		out.Decisions = append(out.Decisions, ex)
	}
	return out, nil
}

// explainOne decides one alert as the evaluator would (machineFor, then
// rules.Decide over the store's state in a transaction that is rolled
// back), except that a failing Defender is not waited for: the machine is
// then decided as unavailable, as the evaluator does once it gives up.
func (p *Pipeline) explainOne(ctx context.Context, a alert.Alert, set *rules.Set) (Explanation, error) {
	ex := Explanation{AlertID: a.ID, Source: string(a.Source), MachineID: a.MachineID, MachineName: a.MachineName, Rule: metrics.NoRule}
	dup, err := p.store.Stored(ctx, a.DedupKey())
	if err != nil {
		return ex, err
	}
	ex.Duplicate = dup
	// What intake ignores is never stored, so never decided: say so with
	// intake's outcome, as the webhook would count it.
	if reason := alert.IgnoreReason(&a, set.AcceptsResolved()); reason != "" {
		ex.Decision, ex.Reason = IgnoredAtIntake, reason
		return ex, nil
	}
	m, err := p.machineFor(ctx, &a, set)
	if err != nil {
		m.Unavailable = err.Error()
	}
	ex.MachineID = a.MachineID
	// The state is only read; the transaction is rolled back.
	var d rules.Decision
	now := p.cfg.Now()
	err = p.store.Look(ctx, now, p.stateOptions(), func(v *store.View) error {
		var err error
		d, err = rules.Decide(rules.Input{Alert: &a, Machine: m, Rules: set, State: v, DryRun: p.cfg.DryRun, Now: now})
		return err
	})
	if err != nil {
		return ex, err
	}
	ex.Rule, ex.Action, ex.Decision, ex.Comment, ex.DryRun, ex.Reason = d.MetricRule(), string(d.Action), string(d.Decision), d.Comment, d.DryRun, d.Reason
	if d.Matched() {
		ex.Cooldown = d.Cooldown.String()
	}
	ex.Machine = d.Snapshot
	return ex, nil
}
