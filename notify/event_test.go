package notify

import (
	"strings"
	"testing"
	"time"
)

// TestSummary: the one human line of each kind, and its variants (dry run,
// tenant, another action, no machine, a long or hostile value).
func TestSummary(t *testing.T) {
	t.Parallel()
	sample := func(k Kind, change func(*Event)) Event {
		ev := Sample(k, fixedNow)
		if change != nil {
			change(&ev)
		}
		return ev
	}
	for _, tc := range []struct {
		name string
		ev   Event
		want string
	}{
		{"decided", sample(Decided, nil),
			"Decided to collect investigation package on ws-042.contoso.local (alert da638495372945237819_-1823562347, rule ransomware): high severity ransomware alert on a workstation"},
		{"decided dry run", sample(Decided, func(e *Event) { e.DryRun, e.Reason, e.Decision = true, "", "dry_run" }),
			"Dry run: would collect investigation package on ws-042.contoso.local (alert da638495372945237819_-1823562347, rule ransomware)"},
		{"collected", sample(Collected, nil),
			"Collected investigation package on ws-042.contoso.local (alert da638495372945237819_-1823562347, rule ransomware): Succeeded in 4m12s, 12.3 MB, sha256 ab12cd34ef56…"},
		{"collected without package", sample(Collected, func(e *Event) { e.Package, e.DurationSeconds = nil, 0.4 }),
			"Collected investigation package on ws-042.contoso.local (alert da638495372945237819_-1823562347, rule ransomware): Succeeded in under 1s"},
		{"collected, another action, a tenant", sample(Collected, func(e *Event) { e.Action, e.Tenant, e.Package = "isolate", "contoso", nil }),
			"[contoso] Isolated on ws-042.contoso.local (alert da638495372945237819_-1823562347, rule ransomware): Succeeded in 4m12s"},
		{"failed", sample(Failed, nil),
			"Failed to collect investigation package on ws-042.contoso.local (alert da638495372945237819_-1823562347, rule ransomware): TimeOut after 72h0m0s: the machine did not report within the action timeout"},
		{"failed refused", sample(Failed, func(e *Event) {
			e.Status, e.Outcome, e.DurationSeconds, e.Reason, e.Machine = "", "machine_not_found", 0, "", &Machine{ID: "abc"}
		}), "Failed to collect investigation package on abc (alert da638495372945237819_-1823562347, rule ransomware): machine_not_found"},
		{"failed, unknown action, no machine", sample(Failed, func(e *Event) {
			e.Action, e.Machine, e.Alert, e.Rule, e.Reason, e.DurationSeconds = "stop_and_quarantine", nil, nil, "", "", 0
		}), "Failed to stop and quarantine on an unknown machine: TimeOut"},
		{"circuit open", sample(CircuitOpen, nil),
			"Circuit breaker open: collections are held: 200 collections in the last hour (safety.max_collections_per_hour 200)"},
		{"circuit closed", sample(CircuitClosed, nil),
			"Circuit breaker closed: collections resume: collections in the last hour fell below the limit"},
		{"permission missing", sample(PermissionMissing, nil),
			"Defender permission missing: Machine.CollectForensics: the application's token has no role Machine.CollectForensics"},
		{"approval requested", sample(ApprovalRequested, nil),
			"Approval requested to isolate on ws-042.contoso.local (alert da638495372945237819_-1823562347, rule isolate-ransomware), expires 2025-03-14 09:56 UTC"},
		{"approval expired", sample(ApprovalExpired, nil),
			"Approval expired: isolate on ws-042.contoso.local (alert da638495372945237819_-1823562347, rule isolate-ransomware) was not sent"},
		{"hostile values stay on one line", sample(Failed, func(e *Event) {
			e.Machine.Name, e.Reason, e.DurationSeconds, e.Status = "ws\n042\u202e", "a\r\nb", 0, "Failed"
		}), "Failed to collect investigation package on ws 042 (alert da638495372945237819_-1823562347, rule ransomware): Failed: a  b"},
	} {
		if got := tc.ev.Summary(); got != tc.want {
			t.Errorf("%s:\n got %q\nwant %q", tc.name, got, tc.want)
		}
	}
	long := Sample(Failed, fixedNow)
	long.Reason = strings.Repeat("x", 10_000)
	if got := long.Summary(); len([]rune(got)) > 1000 || !strings.HasSuffix(got, "…") {
		t.Errorf("a long reason is not capped: %d runes", len([]rune(got)))
	}
}

// TestSample: a sample of every kind is a complete event of that kind,
// with an id unique to its time.
func TestSample(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for _, k := range Kinds() {
		for _, at := range []time.Time{fixedNow, fixedNow.Add(time.Nanosecond)} {
			ev := Sample(k, at)
			if ev.Kind != k || ev.Version != Version || !validID(ev.ID) || ev.Time.IsZero() {
				t.Errorf("Sample(%s) = %+v", k, ev)
			}
			if seen[ev.ID] {
				t.Errorf("Sample(%s) repeats id %s", k, ev.ID)
			}
			seen[ev.ID] = true
			if strings.HasPrefix(ev.Summary(), "Event ") {
				t.Errorf("Sample(%s) summary %q", k, ev.Summary())
			}
		}
	}
}

// TestHumanBytes: package sizes for people.
func TestHumanBytes(t *testing.T) {
	t.Parallel()
	for n, want := range map[int64]string{0: "0 B", 999: "999 B", 1000: "1.0 kB", 12_345_678: "12.3 MB", 4_500_000_000: "4.5 GB", 7_000_000_000_000_000: "7000.0 TB"} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %q, want %q", n, got, want)
		}
	}
}
