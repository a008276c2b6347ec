package pipeline

import (
	"context"
	"database/sql"
	"fmt"
	"strings"

	"github.com/responder-dev/responder/alert"
	"github.com/responder-dev/responder/defender"
	"github.com/responder-dev/responder/metrics"
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
		a := batch.Alerts[i]
		ex := Explanation{AlertID: a.ID, Source: string(a.Source), MachineID: a.MachineID, MachineName: a.MachineName, Rule: metrics.NoRule}
		var dup int
		if err := p.store.DB.QueryRowContext(ctx, `SELECT COUNT(*) FROM responder_alert WHERE dedup_key = $1`, a.DedupKey()).Scan(&dup); err != nil {
			return nil, fmt.Errorf("checking for duplicates: %w", err)
		}
		ex.Duplicate = dup > 0
		var notes []string
		// What intake ignores is never stored, so never decided: say so
		// with intake's outcome, as the webhook would count it.
		if reason := alert.IgnoreReason(&a, set.AcceptsResolved()); reason != "" {
			ex.Decision, ex.Reason = IgnoredAtIntake, reason
			out.Decisions = append(out.Decisions, ex)
			continue
		}
		if a.MachineID == "" {
			if p.api == nil {
				ex.Decision, ex.Reason = DecisionNoMatch, "machine name cannot be resolved without Defender credentials"
				out.Decisions = append(out.Decisions, ex)
				continue
			}
			note, err := p.resolveName(ctx, &a)
			if err != nil {
				ex.Decision, ex.Reason = DecisionNoMatch, fmt.Sprintf("machine name %q not resolved: %v", a.MachineName, err)
				if outcomeOf(err) == defender.OutcomeMachineNotFound {
					ex.Reason = unknownMachineName(a.MachineName)
				}
				out.Decisions = append(out.Decisions, ex)
				continue
			}
			ex.MachineID = a.MachineID
			notes = append(notes, note)
		}
		machine := &alert.Machine{ID: a.MachineID, Name: a.MachineName}
		if set.NeedsMachine() && p.api != nil {
			m, err := p.machine(ctx, a.MachineID)
			switch {
			case err == nil:
				machine = m
			case outcomeOf(err) == defender.OutcomeMachineNotFound:
				notes = append(notes, "Defender does not know the machine")
			default:
				notes = append(notes, fmt.Sprintf("machine attributes unavailable: %v", err))
			}
		}
		d := set.Evaluate(&a, machine)
		rec := &Entry{MachineID: a.MachineID, Rule: d.Rule, Reason: d.Reason}
		// classify only reads; the transaction is rolled back.
		tx, err := p.store.DB.BeginTx(ctx, &sql.TxOptions{ReadOnly: p.store.Driver == DriverPostgres})
		if err != nil {
			return nil, fmt.Errorf("evaluating: %w", err)
		}
		c := &claims{p: p, tx: tx, now: p.cfg.Now()}
		err = c.classify(ctx, rec, d)
		c.close()
		_ = tx.Rollback()
		if err != nil {
			return nil, err
		}
		if d.Rule != "" {
			ex.Rule = d.Rule
		}
		ex.Action, ex.Decision, ex.Comment, ex.DryRun = string(d.Action), rec.Decision, d.Comment, rec.DryRun
		ex.Reason = strings.Join(append(notes, rec.Reason), "; ")
		if d.Matched {
			ex.Cooldown = d.Cooldown.String()
		}
		out.Decisions = append(out.Decisions, ex)
	}
	return out, nil
}
