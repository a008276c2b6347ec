package main

// End-to-end test of POST /api/v1/replay (SPEC 12): the real binary, its
// store and its admin listener.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// TestReplayAPIEndToEnd: the service replays its own store with candidate
// rules sent as YAML, behind the admin token; bad rules are 400 with
// file:line:col problems, a bad window 400 in one line.
func TestReplayAPIEndToEnd(t *testing.T) {
	t.Parallel()
	p := startAdminProc(t, "RESPONDER_ADMIN_BEARER_TOKEN="+e2eAdmin)
	auth := []string{"Authorization", "Bearer " + e2eAdmin}
	const n = 6
	for i := range n {
		severity := "High"
		if i%2 == 1 {
			severity = "Low"
		}
		body := fmt.Sprintf(`{"id":"da-replay-%d","machineId":"1e5bc9d7e413ddd7902c2932e418702b84d0cc07","severity":%q}`, i, severity)
		if a := post(t, p.hook+"/webhooks/defender", []byte(body), map[string]string{"Authorization": "Bearer " + e2eBearer}); a.Code != 202 {
			t.Fatalf("alert %d: %v", i, a)
		}
		// Decided one after the other: alerts accepted together may be
		// decided in either order (parallel evaluate jobs), and the
		// expected transitions below depend on which comes first.
		waitUntil(t, "an audit entry per alert so far", func() bool {
			code, body := call(t, http.MethodGet, p.admin+"/api/v1/actions?limit=100", "", auth...)
			return code == 200 && strings.Count(body, `"alert_id"`) == i+1
		})
	}

	yaml := append([]string{"Content-Type", "application/yaml"}, auth...)
	if code, body := call(t, http.MethodPost, p.admin+"/api/v1/replay?since=1h", "rules: []", "Content-Type", "application/yaml"); code != 401 {
		t.Fatalf("replay without the admin token: %d %s", code, body)
	}
	// The service's rule decides every alert: a dry run, then its cooldown
	// for the same machine. The candidate dry-runs the high ones only and
	// ignores the rest: the three low ones go from cooldown to ignore.
	candidate := "rules:\n  - name: high-only\n    when: 'alert.severity == \"high\"'\n    dry_run: true\n  - name: rest\n    when: 'true'\n    action: ignore\n"
	code, body := call(t, http.MethodPost, p.admin+"/api/v1/replay?since=1h", candidate, yaml...)
	if code != 200 {
		t.Fatalf("replay: %d %s", code, body)
	}
	var r struct {
		Alerts      int `json:"alerts"`
		Transitions []struct {
			From, To string
			Count    int
		} `json:"transitions"`
		Rules []struct {
			Name               string
			Current, Candidate int
		} `json:"rules"`
	}
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatal(err)
	}
	if r.Alerts != n || len(r.Transitions) != 1 || r.Transitions[0].From != "cooldown" || r.Transitions[0].To != "ignore" || r.Transitions[0].Count != n/2 {
		t.Fatalf("replay report %s: want %d alerts, cooldown -> ignore for %d", body, n, n/2)
	}

	code, body = call(t, http.MethodPost, p.admin+"/api/v1/replay", "rules:\n  - name: bad\n    when: 'alert.nope == 1'\n", yaml...)
	if code != 400 || !strings.Contains(body, `request body:3:`) || !strings.Contains(body, `"problems"`) {
		t.Fatalf("bad rules: %d %s, want 400 with request body:line:col problems", code, body)
	}
	code, body = call(t, http.MethodPost, p.admin+"/api/v1/replay?from=2026-12-02T00:00:00Z&to=2026-12-01T00:00:00Z", candidate, yaml...)
	if code != 400 || !strings.Contains(body, "is not before to") {
		t.Fatalf("bad window: %d %s", code, body)
	}
	code, body = call(t, http.MethodPost, p.admin+"/api/v1/replay?from=2020-01-01T00:00:00Z&to=2020-01-02T00:00:00Z", candidate, yaml...)
	if code != 400 || !strings.Contains(body, "ends before the store's oldest decision") {
		t.Fatalf("window before the store: %d %s", code, body)
	}
	if lines := p.logLines("admin action"); !containsAction(lines, "replay") {
		t.Errorf("the replay is not logged as an admin action: %v", lines)
	}
}

func containsAction(lines []map[string]any, action string) bool {
	for _, l := range lines {
		if l["action"] == action {
			return true
		}
	}
	return false
}
