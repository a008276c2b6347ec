package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/responder-dev/responder/defender/defendertest"
	"github.com/responder-dev/responder/internal/testkit"
)

// e2eRules is the rule set of the pipeline end-to-end tests.
const e2eRules = `
rules:
  - name: never-domain-controllers
    when: '"domain-controller" in machine.tags'
    action: ignore
  - name: high-or-critical
    when: 'alert.severity in ["high", "critical"]'
    cooldown: 24h
`

// stack is a responder binary wired to an in-process Defender simulator.
type stack struct {
	sim   *defendertest.Simulator
	dir   string
	env   []string
	proc  *proc
	hook  string
	admin string
}

func newStack(t *testing.T, simOpts defendertest.Options, extraEnv ...string) *stack {
	t.Helper()
	o := defendertest.DevOptions()
	o.PendingFor, o.InProgressFor = 200*time.Millisecond, 300*time.Millisecond
	if simOpts.PendingFor != 0 {
		o.PendingFor = simOpts.PendingFor
	}
	if simOpts.Machines != nil {
		o.Machines = simOpts.Machines
	}
	sim, _ := defendertest.NewServer(t, o)
	dir := t.TempDir()
	rules := filepath.Join(dir, "rules.yaml")
	if err := os.WriteFile(rules, []byte(e2eRules), 0o600); err != nil {
		t.Fatal(err)
	}
	s := &stack{sim: sim, dir: dir}
	s.env = append([]string{
		"RESPONDER_SERVER_LISTEN=127.0.0.1:0",
		"RESPONDER_SERVER_ADMIN_LISTEN=127.0.0.1:0",
		"RESPONDER_ADMIN_ALLOW_UNAUTHENTICATED=true", // the tests read the admin API on loopback
		"RESPONDER_WEBHOOKS_BEARER_TOKEN=" + e2eBearer,
		"RESPONDER_STORE_DSN=" + filepath.Join(dir, "responder.db"),
		"RESPONDER_RULES_FILES=" + rules,
		"RESPONDER_DEFENDER_API_URL=" + sim.URL(),
		"RESPONDER_DEFENDER_TOKEN_URL=" + sim.TokenURL(),
		"RESPONDER_DEFENDER_TENANT_ID=" + defendertest.DevTenantID,
		"RESPONDER_DEFENDER_CLIENT_ID=" + defendertest.DevClientID,
		"RESPONDER_DEFENDER_CLIENT_SECRET=" + defendertest.DevClientSecret,
		"RESPONDER_DEFENDER_POLL_INTERVAL=200ms",
	}, extraEnv...)
	s.start(t)
	return s
}

func (s *stack) start(t *testing.T) {
	t.Helper()
	s.proc = startResponder(t, s.env, "serve")
	s.hook = "http://" + s.proc.addr("webhooks")
	s.admin = "http://" + s.proc.addr("admin")
}

func (s *stack) postDefender(t *testing.T, body string) answer {
	t.Helper()
	return post(t, s.hook+"/webhooks/defender", []byte(body), map[string]string{"Authorization": "Bearer " + e2eBearer})
}

func (s *stack) postAM(t *testing.T, body string) answer {
	t.Helper()
	return post(t, s.hook+"/webhooks/alertmanager", []byte(body), map[string]string{"Authorization": "Bearer " + e2eBearer})
}

type auditEntry struct {
	ID           int64  `json:"id"`
	AlertID      string `json:"alert_id"`
	MachineID    string `json:"machine_id"`
	Rule         string `json:"rule"`
	Decision     string `json:"decision"`
	Reason       string `json:"reason"`
	State        string `json:"state"`
	Outcome      string `json:"outcome"`
	ActionID     string `json:"action_id"`
	ActionStatus string `json:"action_status"`
}

func (s *stack) actions(t *testing.T) []auditEntry {
	t.Helper()
	resp, err := http.Get(s.admin + "/api/v1/actions?limit=10000")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct{ Actions []auditEntry }
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out.Actions
}

func (s *stack) entry(t *testing.T, alertID string, cond func(auditEntry) bool) auditEntry {
	t.Helper()
	var got auditEntry
	testkit.WaitFor(t, 30*time.Second, "the audit entry of "+alertID+" to meet the condition", func() (bool, string) {
		for _, e := range s.actions(t) {
			if e.AlertID == alertID && cond(e) {
				got = e
				return true, ""
			}
			if e.AlertID == alertID {
				got = e
			}
		}
		return false, fmt.Sprintf("%+v", got)
	})
	return got
}

func (s *stack) metrics(t *testing.T) string {
	t.Helper()
	resp, err := http.Get(s.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// collectPosts returns the statuses MDE answered to collect POSTs, by machine.
func collectPosts(sim *defendertest.Simulator) map[string][]int {
	out := map[string][]int{}
	for _, r := range sim.Requests() {
		if r.Method == "POST" && strings.HasSuffix(r.Path, "/collectInvestigationPackage") {
			m := strings.TrimSuffix(strings.TrimPrefix(r.Path, "/api/machines/"), "/collectInvestigationPackage")
			out[m] = append(out[m], r.Status)
		}
	}
	return out
}

func mdeAlertJSON(id, machine, severity string) string {
	return fmt.Sprintf(`{"id":%q,"machineId":%q,"severity":%q,"status":"New","category":"Malware","title":"e2e","alertCreationTime":"2026-11-26T10:00:00Z"}`, id, machine, severity)
}

func TestCollectEndToEnd(t *testing.T) {
	t.Parallel()
	s := newStack(t, defendertest.Options{})
	ws := defendertest.DevWorkstationID
	id := "da637472900382838869_1364969609"

	if a := s.postDefender(t, mdeAlertJSON(id, ws, "High")); a.Code != 202 || a.Body["accepted"] != 1.0 {
		t.Fatalf("first delivery: %+v", a)
	}
	got := s.entry(t, id, func(e auditEntry) bool { return e.ActionStatus == "Succeeded" })
	if got.Decision != "collect" || got.Outcome != "created" || got.Rule != "high-or-critical" {
		t.Fatalf("entry = %+v", got)
	}
	var bodies []string
	for _, r := range s.sim.Requests() {
		if strings.HasSuffix(r.Path, "/collectInvestigationPackage") {
			bodies = append(bodies, string(r.Body))
			if r.UserAgent != "responder/dev" {
				t.Errorf("User-Agent = %q", r.UserAgent)
			}
		}
	}
	if len(bodies) != 1 || bodies[0] != `{"Comment":"Collect forensics due to alert `+id+`"}` {
		t.Fatalf("collect bodies = %q", bodies)
	}
	// The same alert again: a duplicate. Another alert on the machine within
	// the cooldown: decided "cooldown". Neither posts.
	if a := s.postDefender(t, mdeAlertJSON(id, ws, "High")); a.Body["duplicates"] != 1.0 {
		t.Fatalf("redelivery: %+v", a)
	}
	s.postDefender(t, mdeAlertJSON("da-second", ws, "Critical"))
	if e := s.entry(t, "da-second", func(auditEntry) bool { return true }); e.Decision != "cooldown" {
		t.Fatalf("second alert: %+v", e)
	}
	if n := len(collectPosts(s.sim)[ws]); n != 1 {
		t.Fatalf("%d collect POSTs for the workstation, want 1", n)
	}

	// An Alertmanager alert naming only a host is resolved and collected.
	am := `{"version":"4","status":"firing","receiver":"responder","groupKey":"{}","alerts":[{"status":"firing","labels":{"alertname":"Beacon","severity":"critical","instance":"srv-app-07.corp.example.com:9100"},"annotations":{},"startsAt":"2026-11-26T10:00:00Z","endsAt":"0001-01-01T00:00:00Z","fingerprint":"aaaabbbbccccdddd"}]}`
	if a := s.postAM(t, am); a.Code != 202 || a.Body["accepted"] != 1.0 {
		t.Fatalf("alertmanager: %+v", a)
	}
	srv := s.entry(t, "aaaabbbbccccdddd", func(e auditEntry) bool { return e.Outcome != "" })
	if srv.MachineID != defendertest.DevServerID || srv.Outcome != "created" {
		t.Fatalf("hostname alert: %+v", srv)
	}

	m := s.metrics(t)
	for _, want := range []string{
		`responder_collections_total{outcome="created"} 2`,
		`responder_machine_actions_finished_total{status="Succeeded"} 1`,
		`responder_decisions_total{decision="cooldown",rule="high-or-critical"} 1`,
		`responder_defender_requests_total{code="201",operation="collect_investigation_package"} 2`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

func TestActiveRequestAndRetriesEndToEnd(t *testing.T) {
	t.Parallel()
	s := newStack(t, defendertest.Options{PendingFor: time.Hour})
	ws, srv := defendertest.DevWorkstationID, defendertest.DevServerID
	// A collection already runs on the workstation (an analyst started it).
	first := s.postDefender(t, mdeAlertJSON("da-a1", ws, "High"))
	if first.Code != 202 {
		t.Fatal(first)
	}
	s.entry(t, "da-a1", func(e auditEntry) bool { return e.Outcome == "created" })
	// 429 then two 500s on the server: waited, retried, created once.
	s.sim.InjectFault(defendertest.Fault{Method: "POST", PathContains: srv + "/collectInvestigationPackage", Status: 429, RetryAfter: 1, Times: 1})
	s.sim.InjectFault(defendertest.Fault{Method: "POST", PathContains: srv + "/collectInvestigationPackage", Status: 500, Times: 2})
	s.postDefender(t, mdeAlertJSON("da-r1", srv, "High"))
	got := s.entry(t, "da-r1", func(e auditEntry) bool { return e.Outcome != "" })
	if got.Outcome != "created" {
		t.Fatalf("retried entry: %+v", got)
	}
	if st := collectPosts(s.sim)[srv]; fmt.Sprint(st) != "[429 500 500 201]" {
		t.Fatalf("statuses for the server = %v", st)
	}
	// MDE answers ActiveRequestAlreadyExists for the workstation (its first
	// collection is still pending): tracked, never retried.
	restartWithoutCooldown(t, s)
	s.postDefender(t, mdeAlertJSON("da-a2", ws, "High"))
	ar := s.entry(t, "da-a2", func(e auditEntry) bool { return e.Outcome != "" })
	a1 := s.entry(t, "da-a1", func(auditEntry) bool { return true })
	if ar.Outcome != "already_running" || ar.ActionID != a1.ActionID || ar.State != "tracking" {
		t.Fatalf("already running: %+v (first %+v)", ar, a1)
	}
	if st := collectPosts(s.sim)[ws]; fmt.Sprint(st) != "[201 400]" {
		t.Fatalf("statuses for the workstation = %v", st)
	}
}

// restartWithoutCooldown restarts the responder with a rule set whose
// cooldown is 0, on the same store.
func restartWithoutCooldown(t *testing.T, s *stack) {
	t.Helper()
	_ = s.proc.cmd.Process.Signal(syscall.SIGTERM)
	if err := <-s.proc.exited; err != nil {
		t.Fatalf("stop: %v", err)
	}
	rules := filepath.Join(s.dir, "rules.yaml")
	if err := os.WriteFile(rules, []byte(strings.Replace(e2eRules, "cooldown: 24h", "cooldown: 0s", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	s.start(t)
}

func TestCrashRecoverySQLite(t *testing.T) {
	t.Parallel()
	machines := make([]defendertest.Machine, 0, 8)
	for i := 0; i < 8; i++ {
		machines = append(machines, defendertest.Machine{ID: fmt.Sprintf("%040x", 0xc0ffee00+i), ComputerDNSName: fmt.Sprintf("crash-%d.example.com", i), HealthStatus: "Active"})
	}
	// The shortest settle: a POST cut short by the kill is looked for once
	// it has certainly timed out, then sent again.
	s := newStack(t, defendertest.Options{Machines: machines}, "RESPONDER_DEFENDER_POST_SETTLE=16s")

	kill := func() {
		_ = s.proc.cmd.Process.Signal(syscall.SIGKILL)
		<-s.proc.exited
	}
	restart := func() time.Time {
		at := time.Now()
		s.start(t)
		return at
	}
	ids := func(from, to int) []string {
		var out []string
		for i := from; i < to; i++ {
			out = append(out, fmt.Sprintf("crash-%d", i))
		}
		return out
	}

	// 1. Before the POST: the workers are held by a slow token endpoint, the
	//    alerts are accepted, then the process dies.
	s.sim.InjectFault(defendertest.Fault{PathContains: "/oauth2/", Delay: 3 * time.Second})
	for i, id := range ids(0, 3) {
		if a := s.postDefender(t, mdeAlertJSON(id, machines[i].ID, "High")); a.Code != 202 {
			t.Fatal(a)
		}
	}
	kill()
	s.sim.ClearFaults()
	at := restart()
	for _, id := range ids(0, 3) {
		s.entry(t, id, func(e auditEntry) bool { return e.Outcome == "created" })
	}
	if d := time.Since(at); d > 30*time.Second {
		t.Fatalf("work resumed %s after the restart", d)
	}

	// 2. During the POST: MDE holds the request; the process dies while it
	//    waits for the answer.
	s.sim.InjectFault(defendertest.Fault{Method: "POST", PathContains: "collectInvestigationPackage", Delay: 2 * time.Second})
	for i, id := range ids(3, 6) {
		s.postDefender(t, mdeAlertJSON(id, machines[i+3].ID, "High"))
	}
	waitUntil(t, "the POSTs to be in flight", func() bool {
		n := 0
		for _, r := range s.sim.Requests() {
			if strings.HasSuffix(r.Path, "/collectInvestigationPackage") && r.Status == 0 {
				n++
			}
		}
		return n >= 1
	})
	kill()
	s.sim.ClearFaults()
	at = restart()
	for _, id := range ids(3, 6) {
		s.entry(t, id, func(e auditEntry) bool { return e.Outcome != "" })
	}
	if d := time.Since(at); d > 30*time.Second {
		t.Fatalf("work resumed %s after the restart", d)
	}

	// 3. After the POST: the action is created and tracked; the process
	//    dies while tracking and finishes tracking after the restart.
	for i, id := range ids(6, 8) {
		s.postDefender(t, mdeAlertJSON(id, machines[i+6].ID, "High"))
	}
	for _, id := range ids(6, 8) {
		s.entry(t, id, func(e auditEntry) bool { return e.Outcome == "created" })
	}
	kill()
	restart()
	for _, id := range ids(0, 8) {
		s.entry(t, id, func(e auditEntry) bool { return e.ActionStatus == "Succeeded" })
	}

	// Every accepted alert was decided once, and no decision produced two
	// machine actions.
	perMachine := map[string]int{}
	for _, a := range s.sim.Actions() {
		perMachine[a.MachineID]++
	}
	for _, m := range machines {
		if perMachine[m.ID] != 1 {
			for _, r := range s.sim.Requests() {
				t.Logf("%s %s %s %d %s", r.Time.Format("15:04:05.000"), r.Method, r.Path, r.Status, r.RawQuery)
			}
			for _, l := range s.proc.output() {
				if strings.Contains(l, "c0ffee03") {
					t.Log(l)
				}
			}
			t.Fatalf("machine %s has %d machine actions, want 1 (%v)", m.ID, perMachine[m.ID], perMachine)
		}
	}
	if n := len(s.actions(t)); n != 8 {
		t.Fatalf("%d audit entries, want 8", n)
	}
}

// waitUntil waits for a condition on the responder or the simulator, for
// at most 30 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testkit.WaitUntil(t, 30*time.Second, what, cond)
}

func TestDevModeEndToEnd(t *testing.T) {
	t.Parallel()
	testkit.LookPath(t, "curl", "the test runs the curl line --dev prints; apt-get install curl")
	p := startResponder(t, []string{"RESPONDER_SERVER_LISTEN=127.0.0.1:0", "RESPONDER_SERVER_ADMIN_LISTEN=127.0.0.1:0"}, "serve", "--dev")
	var curl, actions string
	waitUntil(t, "the dev help", func() bool {
		for _, l := range p.output() {
			if strings.HasPrefix(strings.TrimSpace(l), "curl -sS -H") {
				curl = strings.TrimSpace(l)
			}
			if strings.Contains(l, " actions") && strings.Contains(l, "RESPONDER_STORE_DSN=") {
				actions = strings.TrimSpace(l)
			}
		}
		return curl != "" && actions != ""
	})
	// Run the printed curl line as a newcomer would.
	out, err := exec.Command("sh", "-c", curl).CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"accepted":1`) {
		t.Fatalf("curl line: %v %s", err, out)
	}
	waitUntil(t, "the collection in the log", func() bool {
		for _, l := range p.output() {
			if strings.Contains(l, `"msg":"machine action created"`) {
				return true
			}
		}
		return false
	})
	dsn := regexp.MustCompile(`RESPONDER_STORE_DSN=(\S+)`).FindStringSubmatch(actions)[1]
	cmd := exec.Command(binary, "actions")
	cmd.Env = append(os.Environ(), "RESPONDER_STORE_DSN="+dsn)
	var stdout bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stdout
	if err := cmd.Run(); err != nil {
		t.Fatalf("responder actions: %v\n%s", err, stdout.String())
	}
	if !strings.Contains(stdout.String(), "collect") || !strings.Contains(stdout.String(), "da637472900382838869_1364969609") {
		t.Fatalf("responder actions output:\n%s", stdout.String())
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.exited:
		if err != nil {
			t.Fatalf("exit: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no exit after SIGTERM")
	}
}
