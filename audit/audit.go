// Package audit is the vocabulary and the model of the audit trail: what was
// decided for an alert and machine (Decision), where its action stands
// (State), what Defender answered its request (Outcome), how its machine
// action ended (Final status), and the Entry that holds them.
//
// Each closed set is typed here once. The metric label sets, the store's
// queries and the README's tables are derived from these lists, or checked
// against them by a test, so that no second copy drifts.
package audit

import (
	"encoding/json"
	"time"

	"github.com/responder-dev/responder/alert"
)

// Decision is what was decided for an alert and machine
// (responder_decisions_total{decision}).
type Decision string

// The decisions (SPEC 9).
const (
	// Collect: a rule matched and nothing held the action back; it is sent.
	Collect Decision = "collect"
	// Ignore: the first matching rule's action is ignore.
	Ignore Decision = "ignore"
	// NoMatch: no rule matched, or the alert could not be evaluated (its
	// machine is unknown, or its attributes could not be had).
	NoMatch Decision = "no_match"
	// Cooldown: the machine had the same action within the rule's cooldown.
	Cooldown Decision = "cooldown"
	// CircuitOpen: a safety limit of the circuit breaker held it back.
	CircuitOpen Decision = "circuit_open"
	// Paused: the kill switch held it back.
	Paused Decision = "paused"
	// DryRun: recorded as it would have been sent, never sent.
	DryRun Decision = "dry_run"
)

// Decisions lists every decision, in the order of SPEC 9.
func Decisions() []Decision {
	return []Decision{Collect, Ignore, NoMatch, Cooldown, CircuitOpen, Paused, DryRun}
}

// Suppressed reports whether d is an action held back by the state (the
// cooldown, the kill switch or the circuit breaker).
func (d Decision) Suppressed() bool { return d == Cooldown || d == CircuitOpen || d == Paused }

// ClaimsCooldown reports whether d holds the machine's cooldown for its
// action: a collection, or a dry run (with a cooldown of its own).
func (d Decision) ClaimsCooldown() bool { return d == Collect || d == DryRun }

// State is where the action of an entry stands.
type State string

// The states of an entry. Only a collect decision has a life after it is
// recorded: queued, then posting, then tracking, then done; every other
// decision is done when it is recorded.
const (
	// Queued: decided, nothing sent yet.
	Queued State = "queued"
	// Posting: the request may have reached Defender; look for its action
	// before sending it again.
	Posting State = "posting"
	// Tracking: the machine action is known; its status is polled.
	Tracking State = "tracking"
	// Done: nothing more to do.
	Done State = "done"
)

// States lists every state, in the order of an action's life.
func States() []State { return []State{Queued, Posting, Tracking, Done} }

// Live reports whether an entry in state s is still being worked on:
// retention never deletes it.
func (s State) Live() bool { return s != Done }

// LiveStates lists the states in which an entry is still worked on.
func LiveStates() []State {
	var out []State
	for _, s := range States() {
		if s.Live() {
			out = append(out, s)
		}
	}
	return out
}

// Outcome is what became of the request of a collect decision
// (responder_collections_total{outcome}).
type Outcome string

// The outcomes (SPEC 9).
const (
	// Created: Defender created the machine action.
	Created Outcome = "created"
	// AlreadyRunning: an action of that type was running on the machine; it
	// is tracked instead.
	AlreadyRunning Outcome = "already_running"
	// MachineNotFound: Defender does not know the machine.
	MachineNotFound Outcome = "machine_not_found"
	// Forbidden: the application lacks the action's permission.
	Forbidden Outcome = "forbidden"
	// Failed: given up (a permanent refusal, or retries spent).
	Failed Outcome = "failed"
)

// Outcomes lists every outcome, in the order of SPEC 9.
func Outcomes() []Outcome {
	return []Outcome{Created, AlreadyRunning, MachineNotFound, Forbidden, Failed}
}

// ReleasesCooldown reports whether a collection that ended with outcome o
// collected nothing in a way the next alert may retry: Defender refused it,
// or it was given up. One already running keeps the cooldown.
func (o Outcome) ReleasesCooldown() bool { return o != Created && o != AlreadyRunning }

// Final is how a tracked machine action ended
// (responder_machine_actions_finished_total{status}): Defender's terminal
// statuses, spelled as Defender does, or Untracked.
type Final string

// The final statuses.
const (
	Succeeded    Final = "Succeeded"
	FailedAction Final = "Failed"
	TimeOut      Final = "TimeOut"
	Cancelled    Final = "Cancelled" // two Ls, as Defender spells it
	// Untracked: tracking gave up (action_timeout, or the action could no
	// longer be read); how it ended is unknown.
	Untracked Final = "Untracked"
)

// Finals lists every final status, in the order of SPEC 9.
func Finals() []Final { return []Final{Succeeded, FailedAction, TimeOut, Cancelled, Untracked} }

// ReleasesCooldown reports whether an action that ended so collected nothing
// in a way the next alert should be allowed to retry: it failed, or
// Defender gave up on an unreachable machine. A cancelled action keeps the
// cooldown (somebody chose to stop it), and so does one no longer tracked
// (its outcome is unknown).
func (f Final) ReleasesCooldown() bool { return f == FailedAction || f == TimeOut }

// Entry is one decision of the audit trail: what was decided for an alert
// and machine, why, and what became of the action. Its JSON form is the one
// of GET /api/v1/actions and `responder actions --json`.
type Entry struct {
	ID              int64     `json:"id"`
	CreatedAt       time.Time `json:"created_at"`
	UpdatedAt       time.Time `json:"updated_at"`
	Source          string    `json:"source"`
	AlertID         string    `json:"alert_id"`
	MachineID       string    `json:"machine_id,omitempty"`
	MachineName     string    `json:"machine_name,omitempty"`
	Rule            string    `json:"rule,omitempty"`
	Action          string    `json:"action,omitempty"`
	Decision        Decision  `json:"decision"`
	Reason          string    `json:"reason"`
	Comment         string    `json:"comment,omitempty"`
	DryRun          bool      `json:"dry_run"`
	State           State     `json:"state"`
	Outcome         Outcome   `json:"outcome,omitempty"`
	ActionID        string    `json:"action_id,omitempty"`
	ActionStatus    string    `json:"action_status,omitempty"`
	ActionCreatedAt time.Time `json:"action_created_at,omitzero"`
	FinishedAt      time.Time `json:"finished_at,omitzero"`
	PackagePath     string    `json:"package_path,omitempty"`
	PackageSHA256   string    `json:"package_sha256,omitempty"`
	PackageSize     int64     `json:"package_size,omitempty"`
	Error           string    `json:"error,omitempty"`
	// Posts counts the requests sent to Defender for this decision.
	Posts int `json:"posts,omitempty"`
	// Machine is the snapshot of the machine attributes the rules read for
	// this decision (nil when they read none, or could not be had): what a
	// later replay sees.
	Machine *alert.Machine `json:"machine,omitempty"`

	// AlertRowID is the stored alert the entry decides.
	AlertRowID int64 `json:"-"`
	// PostedAt is when the last request was claimed (posting).
	PostedAt time.Time `json:"-"`
	// SettleUntil is until when a request whose answer was lost may still
	// show up in Defender (zero on entries from before it was recorded).
	SettleUntil time.Time `json:"-"`
}

// ReleasesCooldown reports whether the entry's collection has ended
// collecting nothing in a way that gave its cooldown back (Outcome's and
// Final's ReleasesCooldown).
func (e *Entry) ReleasesCooldown() bool {
	if e.Decision != Collect || e.State != Done {
		return false
	}
	return (e.Outcome != "" && e.Outcome.ReleasesCooldown()) || Final(e.ActionStatus).ReleasesCooldown()
}

// MarshalSnapshot encodes a machine snapshot for the store ("" for none).
func MarshalSnapshot(m *alert.Machine) (string, error) {
	if m == nil {
		return "", nil
	}
	b, err := json.Marshal(m)
	return string(b), err
}

// UnmarshalSnapshot decodes a stored machine snapshot ("" is none).
func UnmarshalSnapshot(s string) (*alert.Machine, error) {
	if s == "" {
		return nil, nil
	}
	var m alert.Machine
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		return nil, err
	}
	return &m, nil
}
