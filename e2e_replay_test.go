package main

// End-to-end test of `responder replay` (SPEC 12, issue 13) with the real
// binary: serve decides a known history with rule set A against the
// Defender simulator; replaying that history with A must reproduce every
// recorded decision, and replaying it with the candidate B must report
// exactly the differences worked out below by hand, from the alerts sent
// and the rules' meaning (the history table of replayHistory), not by
// calling package replay or rules.Decide.

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/responder-dev/responder/defender/defendertest"
	"github.com/responder-dev/responder/examples"
	"github.com/responder-dev/responder/internal/testkit"
)

// The circuit breaker's limits of the history: low, so that a burst of
// alerts on new machines opens it.
const (
	replayPerHour   = 8 // safety.max_collections_per_hour
	replayPer10mMax = 5 // safety.max_machines_per_10m
)

// replayRulesA is the rule set the service decides with.
const replayRulesA = `
defaults:
  action: collect_investigation_package
  cooldown: 24h
rules:
  - name: never-domain-controllers
    when: '"domain-controller" in machine.tags'
    action: ignore
  - name: ignore-informational
    when: 'alert.severity == "informational"'
    action: ignore
  - name: ransomware
    when: 'alert.category == "Ransomware" && alert.severity in ["medium", "high", "critical"]'
    cooldown: 6h
  - name: high-malware
    when: 'alert.category == "Malware" && alert.severity in ["high", "critical"]'
  - name: credential-theft
    when: 'any(alert.mitre_techniques, # == "T1003" || # startsWith "T1003.")'
  - name: security-canary
    when: 'alert.source in ["alertmanager", "grafana"] && alert.severity == "critical" && alert.labels["team"] == "security"'
    dry_run: true
`

// replayRulesB is the candidate: A with high-malware narrowed to
// workstations, lateral-movement-servers added, and ransomware's cooldown
// shortened from 6h to 1s (short enough for the history's seconds).
const replayRulesB = `
defaults:
  action: collect_investigation_package
  cooldown: 24h
rules:
  - name: never-domain-controllers
    when: '"domain-controller" in machine.tags'
    action: ignore
  - name: ignore-informational
    when: 'alert.severity == "informational"'
    action: ignore
  - name: ransomware
    when: 'alert.category == "Ransomware" && alert.severity in ["medium", "high", "critical"]'
    cooldown: 1s
  - name: high-malware
    when: 'alert.category == "Malware" && alert.severity in ["high", "critical"] && "workstation" in machine.tags'
  - name: credential-theft
    when: 'any(alert.mitre_techniques, # == "T1003" || # startsWith "T1003.")'
  - name: lateral-movement-servers
    when: 'alert.category == "LateralMovement" && "server" in machine.tags'
  - name: security-canary
    when: 'alert.source in ["alertmanager", "grafana"] && alert.severity == "critical" && alert.labels["team"] == "security"'
    dry_run: true
`

// The simulator's machines of the history.
var (
	rpWSA  = replayMachine(1, "e2e-ws-01", "workstation")
	rpWSB  = replayMachine(2, "e2e-ws-02", "workstation")
	rpWSC  = replayMachine(3, "e2e-ws-03", "workstation")
	rpWSD  = replayMachine(4, "e2e-ws-04", "workstation")
	rpWSE  = replayMachine(5, "e2e-ws-05", "workstation")
	rpWSF  = replayMachine(6, "e2e-ws-06", "workstation")
	rpSrv1 = replayMachine(7, "e2e-srv-01", "server", "prod")
	rpSrv2 = replayMachine(8, "e2e-srv-02", "server")
	rpDC   = replayMachine(9, "e2e-dc-01", "domain-controller", "tier0")
)

func replayMachine(n int, name string, tags ...string) defendertest.Machine {
	return defendertest.Machine{ID: fmt.Sprintf("%040x", 0xe2e0_0000+n), ComputerDNSName: name + ".corp.example.com", HealthStatus: "Active", MachineTags: tags}
}

// replayDecision is a decision and its rule.
type replayDecision struct{ decision, rule string }

var (
	rpNoMatch = replayDecision{"no_match", ""}
	rpIgnDC   = replayDecision{"ignore", "never-domain-controllers"}
	rpIgnInfo = replayDecision{"ignore", "ignore-informational"}
)

func rpCollect(rule string) replayDecision  { return replayDecision{"collect", rule} }
func rpCooldown(rule string) replayDecision { return replayDecision{"cooldown", rule} }
func rpOpen(rule string) replayDecision     { return replayDecision{"circuit_open", rule} }

// replayWant is one decision of the history: an alert and machine, what
// the service decides with A, and what B decides in its place.
type replayWant struct {
	alertID, source string
	machine         defendertest.Machine
	a, b            replayDecision
}

// replayStep is one webhook request of the history and the decisions it
// brings; before and after run around it.
type replayStep struct {
	endpoint, body string
	want           []replayWant
	duplicate      bool // the request repeats an earlier one: no decision
	before, after  func(t *testing.T, h *replayStack)
}

// replayHistory is the history and the decisions expected of A and B.
//
// Reading it: cooldowns claimed with A are hours long, so a machine
// collected once stays in cooldown for A; B's ransomware cooldown is 1s
// and the history waits 1.5s before e2e-11, so every ransomware alert after
// that is outside B's cooldown. The circuit breaker opens at the 6th
// distinct machine in 10 minutes (unless the machine is among the 5) or at
// the 9th collection in the hour. A collects wsA, srv1, wsB, wsC (e2e-09,
// refused: machine not found, which gives its cooldown back), wsC again
// (e2e-10) and wsD: wsE and wsF then find 5 machines. B spares srv1 at
// e2e-03 and wsD, and collects srv1 (e2e-04), srv2 (e2e-08), wsC (e2e-11)
// and wsA (e2e-15): its 5 machines are there before wsD, and its 8th
// collection (e2e-15) leaves e2e-16 to the hourly limit.
func replayHistory() []replayStep {
	return []replayStep{
		{endpoint: "defender", body: rpMDE("e2e-01", rpWSA, "High", "Malware"),
			want: []replayWant{{"e2e-01", "defender", rpWSA, rpCollect("high-malware"), rpCollect("high-malware")}}},
		// A repeat within the cooldown.
		{endpoint: "defender", body: rpMDE("e2e-02", rpWSA, "Critical", "Malware"),
			want: []replayWant{{"e2e-02", "defender", rpWSA, rpCooldown("high-malware"), rpCooldown("high-malware")}}},
		// The same alert again: a duplicate, never decided.
		{endpoint: "defender", body: rpMDE("e2e-01", rpWSA, "High", "Malware"), duplicate: true},
		// Narrowed: B does not collect malware on a server.
		{endpoint: "defender", body: rpMDE("e2e-03", rpSrv1, "High", "Malware"),
			want: []replayWant{{"e2e-03", "defender", rpSrv1, rpCollect("high-malware"), rpNoMatch}}},
		// Graph, two machines: srv1 is in A's cooldown (e2e-03), not in B's.
		{endpoint: "defender", body: rpGraph("e2e-04", "high", "CredentialAccess", []string{"T1003.001"}, rpWSB, rpSrv1),
			want: []replayWant{
				{"e2e-04", "graph", rpWSB, rpCollect("credential-theft"), rpCollect("credential-theft")},
				{"e2e-04", "graph", rpSrv1, rpCooldown("credential-theft"), rpCollect("credential-theft")},
			}},
		// Alertmanager naming a host: a dry run (per rule), no circuit breaker.
		{endpoint: "alertmanager", body: rpAlertmanager("e2e-05", rpSrv2, "critical", "security"),
			want: []replayWant{{"e2e-05", "alertmanager", rpSrv2, replayDecision{"dry_run", "security-canary"}, replayDecision{"dry_run", "security-canary"}}}},
		{endpoint: "alertmanager", body: rpGrafana("e2e-06", rpWSC, "info"),
			want: []replayWant{{"e2e-06", "grafana", rpWSC, rpIgnInfo, rpIgnInfo}}},
		{endpoint: "defender", body: rpMDE("e2e-07", rpDC, "High", "Ransomware"),
			want: []replayWant{{"e2e-07", "defender", rpDC, rpIgnDC, rpIgnDC}}},
		// Added: B collects lateral movement on a server.
		{endpoint: "defender", body: rpMDE("e2e-08", rpSrv2, "High", "LateralMovement", "T1021.002"),
			want: []replayWant{{"e2e-08", "defender", rpSrv2, rpNoMatch, rpCollect("lateral-movement-servers")}}},
		// Defender answers 404: the collection ends machine_not_found and
		// gives its cooldown back, so e2e-10 is collected again.
		{endpoint: "defender", body: rpMDE("e2e-09", rpWSC, "High", "Ransomware"),
			want: []replayWant{{"e2e-09", "defender", rpWSC, rpCollect("ransomware"), rpCollect("ransomware")}},
			before: func(t *testing.T, h *replayStack) {
				h.sim.InjectFault(defendertest.Fault{Method: "POST", PathContains: rpWSC.ID + "/collectInvestigationPackage", Status: 404, Times: 1})
			},
			after: func(t *testing.T, h *replayStack) {
				h.waitEntry(t, "e2e-09", func(e replayEntry) bool { return e.State == "done" && e.Outcome == "machine_not_found" })
			}},
		{endpoint: "defender", body: rpMDE("e2e-10", rpWSC, "High", "Ransomware"),
			want: []replayWant{{"e2e-10", "defender", rpWSC, rpCollect("ransomware"), rpCollect("ransomware")}}},
		// Shortened: outside B's 1s ransomware cooldown, inside A's 6h.
		{endpoint: "defender", body: rpMDE("e2e-11", rpWSC, "Critical", "Ransomware"),
			want: []replayWant{{"e2e-11", "defender", rpWSC, rpCooldown("ransomware"), rpCollect("ransomware")}},
			before: func(t *testing.T, h *replayStack) {
				// B's cooldown must have passed since e2e-10 was decided:
				// a wait on the clock, not a synchronisation.
				at := h.waitEntry(t, "e2e-10", func(replayEntry) bool { return true }).CreatedAt
				testkit.WaitUntil(t, 10*time.Second, "1.5s to pass since e2e-10 was decided", func() bool {
					return time.Since(at) > 1500*time.Millisecond
				})
			}},
		// The burst: new machines until the circuit breaker opens.
		{endpoint: "defender", body: rpMDE("e2e-12", rpWSD, "High", "Malware"),
			want: []replayWant{{"e2e-12", "defender", rpWSD, rpCollect("high-malware"), rpOpen("high-malware")}}},
		{endpoint: "defender", body: rpMDE("e2e-13", rpWSE, "High", "Malware"),
			want: []replayWant{{"e2e-13", "defender", rpWSE, rpOpen("high-malware"), rpOpen("high-malware")}}},
		{endpoint: "defender", body: rpMDE("e2e-14", rpWSF, "Critical", "Malware"),
			want: []replayWant{{"e2e-14", "defender", rpWSF, rpOpen("high-malware"), rpOpen("high-malware")}}},
		{endpoint: "defender", body: rpMDE("e2e-15", rpWSA, "High", "Ransomware"),
			want: []replayWant{{"e2e-15", "defender", rpWSA, rpCooldown("ransomware"), rpCollect("ransomware")}}},
		{endpoint: "defender", body: rpMDE("e2e-16", rpWSB, "High", "Ransomware"),
			want: []replayWant{{"e2e-16", "defender", rpWSB, rpCooldown("ransomware"), rpOpen("ransomware")}}},
	}
}

func rpJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func rpMDE(id string, m defendertest.Machine, severity, category string, mitre ...string) string {
	return rpJSON(map[string]any{
		"id": id, "machineId": m.ID, "computerDnsName": m.ComputerDNSName, "severity": severity, "status": "New",
		"category": category, "title": "e2e " + category, "mitreTechniques": mitre, "alertCreationTime": "2026-11-26T10:00:00Z",
	})
}

func rpGraph(id, severity, category string, mitre []string, ms ...defendertest.Machine) string {
	var evidence []map[string]any
	for _, m := range ms {
		evidence = append(evidence, map[string]any{"@odata.type": "#microsoft.graph.security.deviceEvidence", "mdeDeviceId": m.ID, "deviceDnsName": m.ComputerDNSName})
	}
	return rpJSON(map[string]any{
		"@odata.type": "#microsoft.graph.security.alert", "id": id, "providerAlertId": id, "severity": severity, "status": "new",
		"category": category, "title": "e2e " + category, "mitreTechniques": mitre, "createdDateTime": "2026-11-26T10:00:00Z", "evidence": evidence,
	})
}

// rpAlertmanager names its machine by host name (instance, port dropped),
// which the service resolves through Defender.
func rpAlertmanager(id string, m defendertest.Machine, severity, team string) string {
	return rpJSON(map[string]any{
		"version": "4", "status": "firing", "receiver": "responder", "groupKey": "{}",
		"alerts": []map[string]any{{"status": "firing", "startsAt": "2026-11-26T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
			"labels": map[string]string{"alert_id": id, "alertname": "Canary", "severity": severity, "team": team, "instance": m.ComputerDNSName + ":9100"}}},
	})
}

func rpGrafana(id string, m defendertest.Machine, severity string) string {
	return rpJSON(map[string]any{
		"version": "1", "status": "firing", "receiver": "responder", "orgId": 1,
		"alerts": []map[string]any{{"status": "firing", "startsAt": "2026-11-26T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
			"labels": map[string]string{"alert_id": id, "alertname": "Sensor tampering", "severity": severity, "hostname": m.ComputerDNSName}}},
	})
}

// replayStack is a responder serving the history, on its store.
type replayStack struct {
	sim         *defendertest.Simulator
	dir         string
	driver, dsn string
	config      string // serve's and replay's --config: the store and safety.*
	proc        *proc
	hook        string
	admin       string
}

// replayEntry is an audit entry as GET /api/v1/actions gives it.
type replayEntry struct {
	ID        int64     `json:"id"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
	Source    string    `json:"source"`
	AlertID   string    `json:"alert_id"`
	MachineID string    `json:"machine_id"`
	Rule      string    `json:"rule"`
	Decision  string    `json:"decision"`
	State     string    `json:"state"`
	Outcome   string    `json:"outcome"`
	Reason    string    `json:"reason"`
}

func newReplayStack(t *testing.T, driver, dsn string) *replayStack {
	t.Helper()
	o := defendertest.DevOptions()
	o.PendingFor, o.InProgressFor = 200*time.Millisecond, 300*time.Millisecond
	o.Machines = []defendertest.Machine{rpWSA, rpWSB, rpWSC, rpWSD, rpWSE, rpWSF, rpSrv1, rpSrv2, rpDC}
	sim, _ := defendertest.NewServer(t, o)
	h := &replayStack{sim: sim, dir: t.TempDir(), driver: driver}
	if dsn == "" {
		dsn = filepath.Join(h.dir, "responder.db")
	}
	h.dsn = dsn
	writeTestFile(t, filepath.Join(h.dir, "rules-a.yaml"), replayRulesA)
	writeTestFile(t, filepath.Join(h.dir, "rules-b.yaml"), replayRulesB)
	h.config = filepath.Join(h.dir, "responder.yaml")
	writeTestFile(t, h.config, fmt.Sprintf("store: {driver: %s, dsn: %q}\nrules: {files: [rules-a.yaml]}\nsafety: {max_collections_per_hour: %d, max_machines_per_10m: %d}\n",
		driver, dsn, replayPerHour, replayPer10mMax))
	h.proc = startResponder(t, []string{
		"RESPONDER_SERVER_LISTEN=127.0.0.1:0",
		"RESPONDER_SERVER_ADMIN_LISTEN=127.0.0.1:0",
		"RESPONDER_ADMIN_ALLOW_UNAUTHENTICATED=true", // the test reads the audit trail on loopback
		"RESPONDER_WEBHOOKS_BEARER_TOKEN=" + e2eBearer,
		"RESPONDER_DEFENDER_API_URL=" + sim.URL(),
		"RESPONDER_DEFENDER_TOKEN_URL=" + sim.TokenURL(),
		"RESPONDER_DEFENDER_TENANT_ID=" + defendertest.DevTenantID,
		"RESPONDER_DEFENDER_CLIENT_ID=" + defendertest.DevClientID,
		"RESPONDER_DEFENDER_CLIENT_SECRET=" + defendertest.DevClientSecret,
		"RESPONDER_DEFENDER_POLL_INTERVAL=200ms",
	}, "serve", "--config", h.config)
	h.hook, h.admin = "http://"+h.proc.addr("webhooks"), "http://"+h.proc.addr("admin")
	t.Cleanup(func() {
		if t.Failed() {
			t.Log("serve stderr: " + h.proc.stderr.String())
			for _, l := range h.proc.output() {
				if !strings.Contains(l, `"level":"info"`) {
					t.Log(l)
				}
			}
		}
	})
	return h
}

func writeTestFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func (h *replayStack) entries(t *testing.T) []replayEntry {
	t.Helper()
	resp, err := http.Get(h.admin + "/api/v1/actions?limit=10000")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct{ Actions []replayEntry }
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out.Actions
}

// waitEntry waits for the entry of alertID to meet cond, and returns it.
func (h *replayStack) waitEntry(t *testing.T, alertID string, cond func(replayEntry) bool) replayEntry {
	t.Helper()
	var got replayEntry
	testkit.WaitFor(t, 30*time.Second, "the audit entry of "+alertID, func() (bool, string) {
		for _, e := range h.entries(t) {
			if e.AlertID == alertID {
				got = e
				if cond(e) {
					return true, ""
				}
			}
		}
		return false, fmt.Sprintf("%+v", got)
	})
	return got
}

// play sends the history one request at a time, each once the decisions
// of the one before are recorded, so that the service decides in the
// order of the table. It returns the recorded entries.
func (h *replayStack) play(t *testing.T, steps []replayStep) []replayEntry {
	t.Helper()
	auth := map[string]string{"Authorization": "Bearer " + e2eBearer}
	for i, st := range steps {
		if st.before != nil {
			st.before(t, h)
		}
		a := post(t, h.hook+"/webhooks/"+st.endpoint, []byte(st.body), auth)
		switch {
		case a.Code != 202:
			t.Fatalf("step %d: %d %v", i, a.Code, a.Body)
		case st.duplicate && a.Body["duplicates"] != 1.0:
			t.Fatalf("step %d: a repeated alert is not a duplicate: %v", i, a.Body)
		case !st.duplicate && a.Body["accepted"] != float64(len(st.want)):
			t.Fatalf("step %d: accepted %v, want %d", i, a.Body, len(st.want))
		}
		testkit.WaitFor(t, 30*time.Second, fmt.Sprintf("the decisions of step %d", i), func() (bool, string) {
			have := map[string]bool{}
			for _, e := range h.entries(t) {
				have[e.AlertID+" "+e.MachineID] = true
			}
			for _, w := range st.want {
				if !have[w.alertID+" "+w.machine.ID] {
					return false, w.alertID + " on " + w.machine.ComputerDNSName + " is not decided"
				}
			}
			return true, ""
		})
		if st.after != nil {
			st.after(t, h)
		}
	}
	return h.entries(t)
}

func (h *replayStack) stop(t *testing.T) {
	t.Helper()
	_ = h.proc.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-h.proc.exited:
		if err != nil {
			t.Fatalf("serve exited: %v (stderr %s)", err, h.proc.stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not exit after SIGTERM")
	}
}

// replay runs `responder replay` with args and --config, from the stack's
// directory.
func (h *replayStack) replay(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	return h.replayIn(t, h.dir, nil, append([]string{"--config", h.config}, args...)...)
}

// replayIn runs `responder replay` with args from dir, with env.
func (h *replayStack) replayIn(t *testing.T, dir string, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(binary, append([]string{"replay"}, args...)...)
	cmd.Dir = dir
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir}, env...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code = exitCode(err)
	if code < 0 {
		t.Fatalf("responder replay %v: %v", args, err)
	}
	return out.String(), errOut.String(), code
}

// replayReport is the JSON report of SPEC 12 (the keys the test reads).
type replayReport struct {
	Window struct {
		From time.Time `json:"from"`
		To   time.Time `json:"to"`
	} `json:"window"`
	Alerts            int  `json:"alerts"`
	Undecided         *int `json:"undecided"`
	UnknownAttributes int  `json:"unknown_attributes"`
	Decisions         struct {
		Current   map[string]int `json:"current"`
		Candidate map[string]int `json:"candidate"`
	} `json:"decisions"`
	Transitions []struct {
		From  string `json:"from"`
		To    string `json:"to"`
		Count int    `json:"count"`
	} `json:"transitions"`
	Rules []struct {
		Name      string `json:"name"`
		Current   int    `json:"current"`
		Candidate int    `json:"candidate"`
	} `json:"rules"`
	NewlyCollected []replayChange `json:"newly_collected"`
	NewlySpared    []replayChange `json:"newly_spared"`
	Quota          struct {
		PeakPerMinute   int `json:"peak_per_minute"`
		PeakPerHour     int `json:"peak_per_hour"`
		LateCollections int `json:"late_collections"`
	} `json:"quota"`
}

type replayChange struct {
	Source    string `json:"source"`
	AlertID   string `json:"alert_id"`
	MachineID string `json:"machine_id"`
	Rule      string `json:"rule"`
	Action    string `json:"action"`
	Reason    string `json:"reason"`
}

func (h *replayStack) replayJSON(t *testing.T, args ...string) replayReport {
	t.Helper()
	stdout, stderr, code := h.replay(t, append(args, "--format", "json")...)
	return decodeReport(t, args, stdout, stderr, code)
}

func decodeReport(t *testing.T, args []string, stdout, stderr string, code int) replayReport {
	t.Helper()
	if code != 0 {
		t.Fatalf("replay %v: exit %d\nstderr: %s\nstdout: %s", args, code, stderr, stdout)
	}
	var r replayReport // the keys SPEC 12 names; more may come
	if err := json.Unmarshal([]byte(stdout), &r); err != nil {
		t.Fatalf("replay %v: the output is not the JSON report: %v\n%s", args, err, stdout)
	}
	return r
}

// replayExpectation is a report as the history says it must be.
type replayExpectation struct {
	alerts                 int
	current, candidate     map[string]int
	transitions            map[string]int    // "from -> to"
	rules                  map[string][2]int // current, candidate
	newlyCollected, spared []string          // "source alert machine rule"
}

// expect works out the report of replaying the history with the rules of
// column b (a: the recorded decisions).
func expect(wants []replayWant, candidate func(replayWant) replayDecision) replayExpectation {
	e := replayExpectation{current: map[string]int{}, candidate: map[string]int{}, transitions: map[string]int{}, rules: map[string][2]int{}}
	for _, w := range wants {
		a, b := w.a, candidate(w)
		e.alerts++
		e.current[a.decision]++
		e.candidate[b.decision]++
		if a.rule != "" {
			r := e.rules[a.rule]
			r[0]++
			e.rules[a.rule] = r
		}
		if b.rule != "" {
			r := e.rules[b.rule]
			r[1]++
			e.rules[b.rule] = r
		}
		if a.decision == b.decision {
			continue
		}
		e.transitions[a.decision+" -> "+b.decision]++
		line := fmt.Sprintf("%s %s %s %s", w.source, w.alertID, w.machine.ID, b.rule)
		switch {
		case b.decision == "collect":
			e.newlyCollected = append(e.newlyCollected, line)
		case a.decision == "collect":
			e.spared = append(e.spared, line)
		}
	}
	sort.Strings(e.newlyCollected)
	sort.Strings(e.spared)
	return e
}

// check compares a report with the expectation.
func (e replayExpectation) check(t *testing.T, what string, r replayReport) {
	t.Helper()
	nonZero := func(m map[string]int) map[string]int {
		out := map[string]int{}
		for k, v := range m {
			if v != 0 {
				out[k] = v
			}
		}
		return out
	}
	if r.Alerts != e.alerts || r.UnknownAttributes != 0 || r.Undecided == nil || *r.Undecided != 0 {
		t.Errorf("%s: alerts %d, unknown_attributes %d, undecided %v; want %d, 0, 0", what, r.Alerts, r.UnknownAttributes, r.Undecided, e.alerts)
	}
	if got := nonZero(r.Decisions.Current); !maps.Equal(got, e.current) {
		t.Errorf("%s: current decisions %v, want %v", what, got, e.current)
	}
	if got := nonZero(r.Decisions.Candidate); !maps.Equal(got, e.candidate) {
		t.Errorf("%s: candidate decisions %v, want %v", what, got, e.candidate)
	}
	transitions := map[string]int{}
	for _, tr := range r.Transitions {
		transitions[tr.From+" -> "+tr.To] += tr.Count
	}
	if !maps.Equal(transitions, e.transitions) {
		t.Errorf("%s: transitions %v, want %v", what, transitions, e.transitions)
	}
	rules := map[string][2]int{}
	for _, h := range r.Rules {
		if h.Current != 0 || h.Candidate != 0 {
			rules[h.Name] = [2]int{h.Current, h.Candidate}
		}
	}
	if !maps.Equal(rules, e.rules) {
		t.Errorf("%s: rule hits (current, candidate) %v, want %v", what, rules, e.rules)
	}
	lines := func(cs []replayChange) []string {
		var out []string
		for _, c := range cs {
			out = append(out, fmt.Sprintf("%s %s %s %s", c.Source, c.AlertID, c.MachineID, c.Rule))
			if c.Reason == "" || (c.Rule != "" && c.Action != "collect_investigation_package") {
				t.Errorf("%s: %s on %s: action %q, reason %q", what, c.AlertID, c.MachineID, c.Action, c.Reason)
			}
		}
		sort.Strings(out)
		return out
	}
	if got := lines(r.NewlyCollected); !slices.Equal(got, e.newlyCollected) {
		t.Errorf("%s: newly collected\n%s\nwant\n%s", what, strings.Join(got, "\n"), strings.Join(e.newlyCollected, "\n"))
	}
	if got := lines(r.NewlySpared); !slices.Equal(got, e.spared) {
		t.Errorf("%s: newly spared\n%s\nwant\n%s", what, strings.Join(got, "\n"), strings.Join(e.spared, "\n"))
	}
}

// storeDigest fingerprints the store: the SQLite file and its write-ahead
// log (an absent log counts as an empty one), or every PostgreSQL table's
// rows.
func storeDigest(t *testing.T, driver, dsn string) string {
	t.Helper()
	if driver == "postgres" {
		return fmt.Sprint(testkit.PostgresDigest(t, dsn))
	}
	var parts []string
	for _, p := range []string{dsn, dsn + "-wal"} {
		b, err := os.ReadFile(p)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Fatal(err)
		}
		sum := sha256.Sum256(b)
		parts = append(parts, filepath.Base(p)+" "+hex.EncodeToString(sum[:]))
	}
	return strings.Join(parts, ", ")
}

func TestReplayEndToEnd(t *testing.T) {
	t.Parallel()
	t.Run("sqlite", func(t *testing.T) {
		t.Parallel()
		testReplayEndToEnd(t, "sqlite", "")
	})
	t.Run("postgres", func(t *testing.T) {
		t.Parallel()
		testReplayEndToEnd(t, "postgres", testkit.PostgresDSN(t))
	})
}

func testReplayEndToEnd(t *testing.T, driver, dsn string) {
	h := newReplayStack(t, driver, dsn)
	if dsn == "" {
		dsn = filepath.Join(h.dir, "responder.db")
	}
	steps := replayHistory()
	entries := h.play(t, steps)

	// The service decided as the history says (otherwise the expectations
	// below would be about another history), in its order, within the
	// circuit breaker's 10 minutes that they assume.
	var wants []replayWant
	for _, st := range steps {
		wants = append(wants, st.want...)
	}
	if len(entries) != len(wants) {
		t.Fatalf("%d audit entries, want %d", len(entries), len(wants))
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].ID < entries[j].ID })
	recorded := map[string]replayEntry{}
	for _, e := range entries {
		recorded[e.AlertID+" "+e.MachineID] = e
	}
	for _, w := range wants {
		e, ok := recorded[w.alertID+" "+w.machine.ID]
		if !ok || e.Decision != w.a.decision || e.Rule != w.a.rule || e.Source != w.source {
			t.Fatalf("%s on %s: recorded %+v, want %s by %q from %s", w.alertID, w.machine.ComputerDNSName, e, w.a.decision, w.a.rule, w.source)
		}
	}
	if span := entries[len(entries)-1].CreatedAt.Sub(entries[0].CreatedAt); span >= 10*time.Minute {
		t.Fatalf("the history took %s to decide; its expectations assume the circuit breaker's 10 minutes", span)
	}
	same := expect(wants, func(w replayWant) replayDecision { return w.a })
	changed := expect(wants, func(w replayWant) replayDecision { return w.b })

	// Replay works beside a running service.
	same.check(t, "replay of A while serve runs", h.replayJSON(t, "--rules", "rules-a.yaml", "--since", "1h"))
	h.stop(t)
	before := storeDigest(t, driver, dsn)

	same.check(t, "replay of A", h.replayJSON(t, "--rules", "rules-a.yaml", "--since", "1h"))
	b := h.replayJSON(t, "--rules", "rules-b.yaml", "--since", "1h")
	changed.check(t, "replay of B", b)
	// B's collections, all within the hour; the minute's peak is counted
	// over the recorded decision times.
	var times []time.Time
	for _, w := range wants {
		if w.b.decision == "collect" {
			times = append(times, recorded[w.alertID+" "+w.machine.ID].CreatedAt)
		}
	}
	peakMinute := 0
	for i, at := range times {
		n := 0
		for _, u := range times[:i+1] {
			if u.After(at.Add(-time.Minute)) {
				n++
			}
		}
		peakMinute = max(peakMinute, n)
	}
	if q := b.Quota; q.PeakPerHour != len(times) || q.PeakPerMinute != peakMinute || q.LateCollections != 0 {
		t.Errorf("replay of B: quota %+v, want peak_per_hour %d, peak_per_minute %d, late_collections 0", q, len(times), peakMinute)
	}
	for _, c := range b.NewlySpared {
		if c.AlertID == "e2e-12" && !strings.Contains(c.Reason, "max_machines_per_10m") {
			t.Errorf("replay of B: e2e-12 is spared by the circuit breaker's machines, the reason says %q", c.Reason)
		}
	}

	// The other formats name the same changes.
	for _, format := range []string{"table", "markdown"} {
		stdout, stderr, code := h.replay(t, "--rules", "rules-b.yaml", "--since", "1h", "--format", format)
		if code != 0 {
			t.Fatalf("replay --format %s: exit %d: %s", format, code, stderr)
		}
		for _, id := range []string{"e2e-04", "e2e-08", "e2e-11", "e2e-15", "e2e-03", "e2e-12"} {
			if !strings.Contains(stdout, id) {
				t.Errorf("replay --format %s does not name %s:\n%s", format, id, stdout)
			}
		}
	}
	if stdout, _, _ := h.replay(t, "--rules", "rules-b.yaml", "--since", "1h", "--format", "markdown"); !strings.Contains(stdout, "|") {
		t.Errorf("replay --format markdown has no table:\n%s", stdout)
	}

	checkReplayThresholds(t, h, len(changed.newlyCollected), changed)
	checkReplayBadInput(t, h)
	checkReplaySource(t, h, wants)
	checkReplayEnvSettings(t, h, same)

	if after := storeDigest(t, driver, dsn); after != before {
		t.Fatalf("the replays changed the store:\nbefore %s\nafter  %s", before, after)
	}
}

// checkReplayThresholds: over a --max-* threshold, exit 1 with the reason
// on stderr; at it, exit 0.
func checkReplayThresholds(t *testing.T, h *replayStack, newly int, e replayExpectation) {
	t.Helper()
	changed := 0
	for _, n := range e.transitions {
		changed += n
	}
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--max-new-collections", fmt.Sprint(newly - 1)}, 1, "max-new-collections"},
		{[]string{"--max-changed", fmt.Sprint(changed - 1)}, 1, "max-changed"},
		{[]string{"--max-new-collections", fmt.Sprint(newly), "--max-changed", fmt.Sprint(changed)}, 0, ""},
	}
	for _, tc := range cases {
		stdout, stderr, code := h.replay(t, append([]string{"--rules", "rules-b.yaml", "--since", "1h", "--format", "json"}, tc.args...)...)
		if code != tc.code {
			t.Errorf("replay %v: exit %d, want %d\nstderr: %s", tc.args, code, tc.code, stderr)
			continue
		}
		if tc.code == 1 && !strings.Contains(stderr, tc.want) {
			t.Errorf("replay %v: stderr %q does not give the reason (%s)", tc.args, stderr, tc.want)
		}
		if !json.Valid([]byte(stdout)) {
			t.Errorf("replay %v: the report is not on stdout: %q", tc.args, stdout)
		}
	}
}

// checkReplayBadInput: bad input exits 2 with one line on stderr; invalid
// rules are reported as check reports them (file:line:col).
func checkReplayBadInput(t *testing.T, h *replayStack) {
	t.Helper()
	bad := filepath.Join(h.dir, "rules-bad.yaml")
	writeTestFile(t, bad, "rules:\n  - name: typo\n    when: 'alert.severty == \"high\"'\n")
	checkOut, _ := exec.Command(binary, "check", bad).CombinedOutput()
	located := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(bad) + `:\d+:\d+: .*$`).FindString(string(checkOut))
	if located == "" {
		t.Fatalf("check of the bad rules gave no file:line:col line:\n%s", checkOut)
	}
	stdout, stderr, code := h.replay(t, "--rules", bad, "--since", "1h")
	if code != 2 || !strings.Contains(stderr, located) || stdout != "" {
		t.Errorf("replay of invalid rules: exit %d, stderr %q, stdout %q; want 2 and %q", code, stderr, stdout, located)
	}

	missing := filepath.Join(h.dir, "missing.yaml")
	writeTestFile(t, missing, fmt.Sprintf("store: {driver: sqlite, dsn: %q}\n", filepath.Join(h.dir, "no-such-dir", "responder.db")))
	now := time.Now().UTC()
	cases := []struct {
		name string
		args []string
	}{
		{"--from after --to", []string{"--from", now.Format(time.RFC3339), "--to", now.Add(-time.Hour).Format(time.RFC3339)}},
		{"an empty window", []string{"--from", "2001-01-01T00:00:00Z", "--to", "2001-01-02T00:00:00Z"}},
		{"a bad duration", []string{"--since", "yesterday"}},
		{"a store that does not exist", []string{"--config", missing, "--since", "1h"}},
	}
	for _, tc := range cases {
		stdout, stderr, code := h.replay(t, append([]string{"--rules", "rules-a.yaml"}, tc.args...)...)
		if line := strings.TrimRight(stderr, "\n"); code != 2 || line == "" || strings.Contains(line, "\n") || stdout != "" {
			t.Errorf("replay with %s: exit %d, stderr %q, stdout %q; want exit 2 and one line", tc.name, code, stderr, stdout)
		}
	}
}

// TestDemoReplayEndToEnd walks the README's "Change rules safely" session:
// serve --dev, the demo sender (examples/demo), check and test of the
// candidate, then replay. Replaying the example rules themselves changes
// nothing, even on a history the service decided with its workers in
// parallel; the candidate changes some decisions.
func TestDemoReplayEndToEnd(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	demo := filepath.Join(dir, "demo")
	if out, err := exec.Command("go", "build", "-o", demo, "./examples/demo").CombinedOutput(); err != nil {
		t.Fatalf("go build ./examples/demo: %v\n%s", err, out)
	}
	p := startResponder(t, []string{"RESPONDER_SERVER_LISTEN=127.0.0.1:0", "RESPONDER_SERVER_ADMIN_LISTEN=127.0.0.1:0"}, "serve", "--dev")
	var dsn, rulesCopied string
	waitUntil(t, "the dev help", func() bool {
		for _, l := range p.output() {
			if m := regexp.MustCompile(`RESPONDER_STORE_DSN=(\S+)`).FindStringSubmatch(l); m != nil {
				dsn = m[1]
			}
			if m := regexp.MustCompile(`cp (\S+) candidate\.yaml`).FindStringSubmatch(l); m != nil {
				rulesCopied = m[1]
			}
		}
		return dsn != "" && rulesCopied != ""
	})
	// The help's `cp RULES candidate.yaml` names the rules in force.
	if b, err := os.ReadFile(rulesCopied); err != nil || !bytes.Equal(b, examples.Rules) {
		t.Errorf("the dev help copies %s: %v, or not the example rules", rulesCopied, err)
	}

	out, err := exec.Command(demo, "-url", "http://"+p.addr("webhooks"), "-alerts", "120", "-duration", "0").CombinedOutput()
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`(?m)^total\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$`).FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("demo printed no total:\n%s", out)
	}
	var accepted, duplicates int
	fmt.Sscan(m[2], &accepted)
	fmt.Sscan(m[3], &duplicates)
	if accepted < 120 || duplicates == 0 {
		t.Fatalf("demo: %d accepted, %d duplicates; want at least 120 and some repeats:\n%s", accepted, duplicates, out)
	}
	sources := map[string]int{}
	waitUntil(t, "every alert of the demo to be decided", func() bool {
		resp, err := http.Get("http://" + p.addr("admin") + "/api/v1/actions?limit=10000")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var page struct{ Actions []replayEntry }
		if err := json.NewDecoder(resp.Body).Decode(&page); err != nil {
			t.Fatal(err)
		}
		clear(sources)
		for _, e := range page.Actions {
			sources[e.Source]++
		}
		return len(page.Actions) == accepted
	})
	if len(sources) != 4 {
		t.Fatalf("the demo's decisions come from %v, want the four sources", sources)
	}

	run := func(args ...string) (string, string, int) {
		cmd := exec.Command(binary, args...)
		cmd.Dir = dir // not examples/: its responder.yaml (a dry run) would be the default --config
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir, "RESPONDER_STORE_DSN=" + dsn}
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		code := exitCode(cmd.Run())
		return stdout.String(), stderr.String(), code
	}
	for _, args := range [][]string{{"check", mustAbs(t, "examples/rules-candidate.yaml")}, {"test", mustAbs(t, "examples/rules-candidate_test.yaml")}} {
		if stdout, stderr, code := run(args...); code != 0 {
			t.Fatalf("responder %v: exit %d\n%s%s", args, code, stdout, stderr)
		}
	}
	replayed := func(rules string) replayReport {
		stdout, stderr, code := run("replay", "--rules", rules, "--since", "1h", "--format", "json")
		var r replayReport
		if err := json.Unmarshal([]byte(stdout), &r); code != 0 || err != nil {
			t.Fatalf("replay --rules %s: exit %d, %v\n%s%s", rules, code, err, stdout, stderr)
		}
		if r.Alerts != accepted || *r.Undecided != 0 {
			t.Fatalf("replay --rules %s: %d alerts, %d undecided; want %d, 0", rules, r.Alerts, *r.Undecided, accepted)
		}
		return r
	}
	same := replayed(mustAbs(t, "examples/rules.yaml"))
	if len(same.Transitions) != 0 || !maps.Equal(same.Decisions.Current, same.Decisions.Candidate) {
		t.Fatalf("replaying the rules the service decided with changes decisions: %+v", same.Transitions)
	}
	if cand := replayed(mustAbs(t, "examples/rules-candidate.yaml")); len(cand.Transitions) == 0 {
		t.Fatalf("the candidate changes nothing on the demo's alerts: %+v", cand.Decisions)
	}
}

// checkReplaySource: --source replays the decisions of one source, but the
// cooldowns and the circuit breaker they meet are built by every source's
// alerts, as the service's were (a cooldown holds "whatever alert caused
// it", SPEC 6.3). Replaying A reproduces the graph alerts' decisions; B
// decides them as the whole replay of B does.
func checkReplaySource(t *testing.T, h *replayStack, wants []replayWant) {
	t.Helper()
	var graph []replayWant
	for _, w := range wants {
		if w.source == "graph" {
			graph = append(graph, w)
		}
	}
	args := []string{"--since", "1h", "--source", "graph"}
	expect(graph, func(w replayWant) replayDecision { return w.a }).check(t, "replay of A --source graph", h.replayJSON(t, append([]string{"--rules", "rules-a.yaml"}, args...)...))
	expect(graph, func(w replayWant) replayDecision { return w.b }).check(t, "replay of B --source graph", h.replayJSON(t, append([]string{"--rules", "rules-b.yaml"}, args...)...))
}

// checkReplayEnvSettings: without a config file, replay takes its
// settings from RESPONDER_* as serve does (SPEC 4: every key can be set by
// the environment), not only the store's: with the service's safety.*
// limits given that way, A reproduces every decision.
func checkReplayEnvSettings(t *testing.T, h *replayStack, same replayExpectation) {
	t.Helper()
	args := []string{"--rules", filepath.Join(h.dir, "rules-a.yaml"), "--since", "1h", "--format", "json"}
	stdout, stderr, code := h.replayIn(t, t.TempDir(), []string{
		"RESPONDER_STORE_DRIVER=" + h.driver,
		"RESPONDER_STORE_DSN=" + h.dsn,
		fmt.Sprintf("RESPONDER_SAFETY_MAX_COLLECTIONS_PER_HOUR=%d", replayPerHour),
		fmt.Sprintf("RESPONDER_SAFETY_MAX_MACHINES_PER_10M=%d", replayPer10mMax),
	}, args...)
	same.check(t, "replay of A with the settings in RESPONDER_*", decodeReport(t, args, stdout, stderr, code))
}
