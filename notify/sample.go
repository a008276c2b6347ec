package notify

import (
	"strconv"
	"time"
)

// Sample returns a realistic sample event of kind k, at now (for
// `responder notify test NAME`, and the tests). Its id is unique per now,
// and its approval link, if any, opens nothing.
func Sample(k Kind, now time.Time) Event {
	ev := Event{
		Version: Version,
		Kind:    k,
		ID:      "sample-" + string(k) + "-" + strconv.FormatInt(now.UnixNano(), 10),
		Time:    now.UTC().Truncate(time.Second),
	}
	now = ev.Time
	alert := &Alert{Source: "defender", ID: "da638495372945237819_-1823562347", Title: "Ransomware behavior detected in the file system", Severity: "high"}
	machine := &Machine{ID: "1e5bc9d7e413ddd7902c2932e418702b84d0cc07", Name: "ws-042.contoso.local"}
	collection := func() {
		ev.Alert, ev.Machine = alert, machine
		ev.Rule, ev.Action = "ransomware", "collect_investigation_package"
	}
	switch k {
	case Decided:
		collection()
		ev.Decision, ev.Reason = "collect", "high severity ransomware alert on a workstation"
	case Collected:
		collection()
		ev.Decision, ev.Outcome, ev.Status = "collect", "created", "Succeeded"
		ev.ActionID = "7f5b8c21-4b4e-4f3a-9d7e-2a6f0c1e9b44"
		ev.DurationSeconds = 252
		ev.Package = &Package{Bytes: 12_345_678, SHA256: "ab12cd34ef56a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4a5b6c7d8e9f0a1b2"}
	case Failed:
		collection()
		ev.Decision, ev.Outcome, ev.Status = "collect", "created", "TimeOut"
		ev.ActionID = "0c3e2f9a-5d1b-4e8c-a7f6-3b2d1c0e9f8a"
		ev.DurationSeconds = (72 * time.Hour).Seconds()
		ev.Reason = "the machine did not report within the action timeout"
	case CircuitOpen:
		ev.Reason = "200 collections in the last hour (safety.max_collections_per_hour 200)"
	case CircuitClosed:
		ev.Reason = "collections in the last hour fell below the limit"
	case PermissionMissing:
		ev.MissingPermissions = []string{"Machine.CollectForensics"}
		ev.Reason = "the application's token has no role Machine.CollectForensics"
	case ApprovalRequested:
		ev.Alert, ev.Machine = alert, machine
		ev.Rule, ev.Action, ev.Decision = "isolate-ransomware", "isolate", "awaiting_approval"
		ev.Approval = &Approval{ID: "apr-7d1e0b5c", URL: "https://responder.example.com/approvals/sample-not-a-token", ExpiresAt: now.Add(30 * time.Minute)}
	case ApprovalExpired:
		ev.Alert, ev.Machine = alert, machine
		ev.Rule, ev.Action, ev.Decision = "isolate-ransomware", "isolate", "awaiting_approval"
		ev.Approval = &Approval{ID: "apr-7d1e0b5c", ExpiresAt: now.Add(-time.Minute)}
		ev.Reason = "nobody answered within 30m; the cooldown is released"
	}
	return ev
}
