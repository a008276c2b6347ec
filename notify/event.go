// Package notify tells people what the responder did, where they work
// (SPEC 13): a Slack incoming webhook (Block Kit), a Teams workflow webhook
// (an Adaptive Card), a signed webhook carrying the versioned Event
// document, or the service's own log.
//
// One Event is rendered per format; Send delivers it once and classifies a
// failure (Permanent, Retryable, RateLimited) so that the queue, not this
// package, does the retrying. No message carries a secret, and no error
// carries a notifier's URL (it is a secret for Slack and Teams).
package notify

import (
	"fmt"
	"strings"
	"time"
)

// Version is the version of the Event document (the webhook body).
const Version = "1"

// Kind is what an event is about: a closed set, and a metric label.
type Kind string

// The kinds of event (SPEC 13, 15).
const (
	// Decided: a rule decided to act on a machine (dry runs included).
	Decided Kind = "decided"
	// Collected: the machine action ended Succeeded (with its package
	// when downloaded).
	Collected Kind = "collected"
	// Failed: the action ended any other way (Failed, TimeOut, Cancelled,
	// Untracked) or was refused (machine_not_found, forbidden, gave up).
	Failed Kind = "failed"
	// CircuitOpen: the circuit breaker opened; collections are held.
	CircuitOpen Kind = "circuit_open"
	// CircuitClosed: the circuit breaker closed again.
	CircuitClosed Kind = "circuit_closed"
	// PermissionMissing: Defender lacks an application permission the
	// configuration needs.
	PermissionMissing Kind = "permission_missing"
	// ApprovalRequested: a disruptive action waits for a person (SPEC 15).
	ApprovalRequested Kind = "approval_requested"
	// ApprovalExpired: nobody answered in time; the action was not sent.
	ApprovalExpired Kind = "approval_expired"
)

var kinds = []Kind{Decided, Collected, Failed, CircuitOpen, CircuitClosed, PermissionMissing, ApprovalRequested, ApprovalExpired}

// Kinds returns every kind in a stable order (a metric label set).
func Kinds() []Kind { return append([]Kind(nil), kinds...) }

// ParseKind returns the kind spelled s, and whether there is one.
func ParseKind(s string) (Kind, bool) {
	for _, k := range kinds {
		if string(k) == s {
			return k, true
		}
	}
	return "", false
}

// Event is the versioned document of SPEC 13: the webhook body (version
// "1"), from which the Slack, Teams and log messages are rendered. Keys that
// do not apply are omitted. Alert titles, machine names and reasons may come
// from an attacker; every format escapes them.
type Event struct {
	// Version is always Version; the senders set it when empty.
	Version string `json:"version"`
	Kind    Kind   `json:"event"`
	// ID is unique per event: receivers dedup on it.
	ID   string    `json:"id"`
	Time time.Time `json:"time"`
	// Tenant is the tenant's configured name (SPEC 14), "" when single-tenant.
	Tenant   string   `json:"tenant,omitempty"`
	Alert    *Alert   `json:"alert,omitempty"`
	Machine  *Machine `json:"machine,omitempty"`
	Rule     string   `json:"rule,omitempty"`
	Action   string   `json:"action,omitempty"`
	Decision string   `json:"decision,omitempty"`
	DryRun   bool     `json:"dry_run,omitempty"`
	// Outcome is the collection's outcome (created, machine_not_found, ...).
	Outcome  string `json:"outcome,omitempty"`
	ActionID string `json:"action_id,omitempty"`
	// Status is the machine action's final status (Succeeded, Failed, ...).
	Status string `json:"status,omitempty"`
	// DurationSeconds runs from the action's creation to its end.
	DurationSeconds float64  `json:"duration_seconds,omitempty"`
	Package         *Package `json:"package,omitempty"`
	// Reason says why: a failure, an open circuit, a decision.
	Reason string `json:"reason,omitempty"`
	// AuditID is the audit entry the event is about (GET
	// /api/v1/actions/{audit_id}, responder actions); 0 for none.
	AuditID            int64     `json:"audit_id,omitempty"`
	MissingPermissions []string  `json:"missing_permissions,omitempty"`
	Approval           *Approval `json:"approval,omitempty"`
}

// Alert names the alert an event is about.
type Alert struct {
	Source   string `json:"source,omitempty"`
	ID       string `json:"id"`
	Title    string `json:"title,omitempty"`
	Severity string `json:"severity,omitempty"`
}

// Machine names the machine an event is about.
type Machine struct {
	ID   string `json:"id"`
	Name string `json:"name,omitempty"`
}

// Package describes a downloaded investigation package.
type Package struct {
	Bytes  int64  `json:"bytes"`
	SHA256 string `json:"sha256,omitempty"`
}

// Approval is a pending or expired approval (SPEC 15). URL opens the
// approval page; it holds the one-time token, so only the messages meant
// for the approvers carry it (the log notifier redacts it).
type Approval struct {
	ID        string    `json:"id"`
	URL       string    `json:"url,omitempty"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	By        string    `json:"by,omitempty"`
}

// Caps on the text an event carries into a human line, in runes.
const (
	maxNameRunes   = 120 // a machine name, alert id, rule, tenant
	maxReasonRunes = 300
)

// Summary returns one human line, the same in every human format, e.g.
// "Collected investigation package on WS-042 (alert da6374_1, rule
// ransomware): Succeeded in 4m12s, 12.3 MB, sha256 ab12cd34ef56…". It holds
// no control character; each part is capped. It is not escaped: each
// format escapes it.
func (e Event) Summary() string {
	var b strings.Builder
	if e.Tenant != "" {
		fmt.Fprintf(&b, "[%s] ", clip(e.Tenant, maxNameRunes))
	}
	verb := actionVerb(e.Action)
	on := e.machineLabel() + e.scope()
	switch e.Kind {
	case Decided:
		if e.DryRun {
			fmt.Fprintf(&b, "Dry run: would %s on %s", verb, on)
		} else {
			fmt.Fprintf(&b, "Decided to %s on %s", verb, on)
		}
		b.WriteString(e.reasonSuffix())
	case Collected:
		fmt.Fprintf(&b, "%s on %s: %s", actionDone(e.Action), on, orDefault(clip(e.Status, maxNameRunes), "Succeeded"))
		if d := e.duration(); d != "" {
			b.WriteString(" in " + d)
		}
		if p := e.Package; p != nil {
			fmt.Fprintf(&b, ", %s", humanBytes(p.Bytes))
			if p.SHA256 != "" {
				fmt.Fprintf(&b, ", sha256 %s", shortHash(p.SHA256))
			}
		}
	case Failed:
		fmt.Fprintf(&b, "Failed to %s on %s: %s", verb, on, orDefault(clip(firstNonEmpty(e.Status, e.Outcome), maxNameRunes), "failed"))
		if d := e.duration(); d != "" {
			b.WriteString(" after " + d)
		}
		b.WriteString(e.reasonSuffix())
	case CircuitOpen:
		b.WriteString("Circuit breaker open: collections are held")
		b.WriteString(e.reasonSuffix())
	case CircuitClosed:
		b.WriteString("Circuit breaker closed: collections resume")
		b.WriteString(e.reasonSuffix())
	case PermissionMissing:
		b.WriteString("Defender permission missing")
		if len(e.MissingPermissions) > 0 {
			b.WriteString(": " + clip(strings.Join(e.MissingPermissions, ", "), maxReasonRunes))
		}
		b.WriteString(e.reasonSuffix())
	case ApprovalRequested:
		fmt.Fprintf(&b, "Approval requested to %s on %s", verb, on)
		if a := e.Approval; a != nil && !a.ExpiresAt.IsZero() {
			fmt.Fprintf(&b, ", expires %s", a.ExpiresAt.UTC().Format("2006-01-02 15:04 UTC"))
		}
	case ApprovalExpired:
		fmt.Fprintf(&b, "Approval expired: %s on %s was not sent", verb, on)
	default:
		fmt.Fprintf(&b, "Event %s on %s", clip(string(e.Kind), maxNameRunes), on)
		b.WriteString(e.reasonSuffix())
	}
	return b.String()
}

// headline is the short title of a message (Slack header, Teams title).
func (e Event) headline() string {
	verb := actionVerb(e.Action)
	var h string
	switch e.Kind {
	case Decided:
		h = "Decided: " + verb
		if e.DryRun {
			h = "Dry run: " + verb
		}
	case Collected:
		h = actionDone(e.Action)
	case Failed:
		h = "Failed: " + verb
	case CircuitOpen:
		return "Circuit breaker open"
	case CircuitClosed:
		return "Circuit breaker closed"
	case PermissionMissing:
		return "Defender permission missing"
	case ApprovalRequested:
		h = "Approval requested: " + verb
	case ApprovalExpired:
		h = "Approval expired: " + verb
	default:
		return "Event " + clip(string(e.Kind), maxNameRunes)
	}
	if e.Machine != nil {
		h += " on " + e.machineLabel()
	}
	return h
}

// machineLabel names the machine by name, else id.
func (e Event) machineLabel() string {
	if e.Machine == nil {
		return "an unknown machine"
	}
	return orDefault(clip(firstNonEmpty(e.Machine.Name, e.Machine.ID), maxNameRunes), "an unknown machine")
}

// scope is " (alert X, rule R)", or "" when the event names neither.
func (e Event) scope() string {
	var parts []string
	if e.Alert != nil && e.Alert.ID != "" {
		parts = append(parts, "alert "+clip(e.Alert.ID, maxNameRunes))
	}
	if e.Rule != "" {
		parts = append(parts, "rule "+clip(e.Rule, maxNameRunes))
	}
	if len(parts) == 0 {
		return ""
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

func (e Event) reasonSuffix() string {
	if r := clip(e.Reason, maxReasonRunes); r != "" {
		return ": " + r
	}
	return ""
}

// duration is the action's duration for people ("4m12s"), "" when unknown.
func (e Event) duration() string {
	if e.DurationSeconds <= 0 {
		return ""
	}
	d := time.Duration(e.DurationSeconds * float64(time.Second)).Round(time.Second)
	if d < time.Second {
		return "under 1s"
	}
	return d.String()
}

// actions maps the responder's action names to words: the infinitive
// ("collect investigation package") and the past, as a headline.
var actions = map[string][2]string{
	"collect_investigation_package": {"collect investigation package", "Collected investigation package"},
	"isolate":                       {"isolate", "Isolated"},
	"unisolate":                     {"release from isolation", "Released from isolation"},
	"run_antivirus_scan":            {"run antivirus scan", "Ran antivirus scan"},
	"restrict_code_execution":       {"restrict code execution", "Restricted code execution"},
	"unrestrict_code_execution":     {"lift code execution restriction", "Lifted code execution restriction"},
}

// defaultAction is the action an event that names none is about: the
// responder's first one.
const defaultAction = "collect_investigation_package"

func actionVerb(action string) string {
	if action == "" {
		action = defaultAction
	}
	if w, ok := actions[action]; ok {
		return w[0]
	}
	return clip(strings.ReplaceAll(action, "_", " "), maxNameRunes)
}

func actionDone(action string) string {
	if action == "" {
		action = defaultAction
	}
	if w, ok := actions[action]; ok {
		return w[1]
	}
	return "Completed " + actionVerb(action)
}

// humanBytes writes n in decimal units, one decimal: "12.3 MB".
func humanBytes(n int64) string {
	if n < 1000 {
		return fmt.Sprintf("%d B", n)
	}
	v := float64(n)
	for _, unit := range []string{"kB", "MB", "GB", "TB"} {
		v /= 1000
		if v < 1000 || unit == "TB" {
			return fmt.Sprintf("%.1f %s", v, unit)
		}
	}
	return fmt.Sprintf("%d B", n) // not reached
}

// shortHash is the first 12 characters of a hash and an ellipsis.
func shortHash(h string) string {
	return clip(h, 13)
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func firstNonEmpty(ss ...string) string {
	for _, s := range ss {
		if s != "" {
			return s
		}
	}
	return ""
}
