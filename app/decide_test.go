package app

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/responder-dev/responder/alert"
	"github.com/responder-dev/responder/audit"
	"github.com/responder-dev/responder/defender"
	"github.com/responder-dev/responder/defender/defendertest"
	"github.com/responder-dev/responder/internal/testkit"
	"github.com/responder-dev/responder/metrics"
	"github.com/responder-dev/responder/pipeline"
	"github.com/responder-dev/responder/replay"
	"github.com/responder-dev/responder/rules"
	"github.com/responder-dev/responder/store"
)

// Rule sets of TestOneDecisionEverywhere: machineRules read machine.tags,
// alertRules read only the alert.
const (
	machineRules = `
rules:
  - name: never-dc
    when: '"domain-controller" in machine.tags'
    action: ignore
  - name: medium-dry
    when: 'alert.severity == "medium"'
    dry_run: true
  - name: high
    when: 'alert.severity == "high"'
    cooldown: 1h
`
	alertRules = `
rules:
  - name: ignore-informational
    when: 'alert.severity == "informational"'
    action: ignore
  - name: high
    when: 'alert.severity == "high"'
`
)

// decisionCase is one row of the table every entry point must decide alike.
type decisionCase struct {
	name     string
	rules    string
	severity string
	tags     []string // the machine's tags (nil: none)
	// unavailable: Defender fails to give the machine's attributes.
	unavailable bool
	// The state: the kill switch, the global dry run, an earlier collection
	// on the machine (cooldown), or on another machine with the circuit
	// breaker's hourly limit at 1.
	paused, dryRun, cooldown, circuit bool
	want                              audit.Decision
	rule                              string
	// unpaused is the decision replay gives a paused case: it ignores the
	// pause history (SPEC 12); "" when it is want.
	unpaused audit.Decision
}

func decisionCases() []decisionCase {
	ws := []string{"workstation"}
	return []decisionCase{
		{name: "collect", rules: machineRules, severity: "High", tags: ws, want: audit.Collect, rule: "high"},
		{name: "ignore", rules: machineRules, severity: "High", tags: []string{"domain-controller"}, want: audit.Ignore, rule: "never-dc"},
		{name: "no match", rules: machineRules, severity: "Low", tags: ws, want: audit.NoMatch},
		{name: "attributes present but empty", rules: machineRules, severity: "High", want: audit.Collect, rule: "high"},
		{name: "attributes absent: the rules read none", rules: alertRules, severity: "High", unavailable: true, want: audit.Collect, rule: "high"},
		{name: "attributes unavailable: not evaluated", rules: machineRules, severity: "High", tags: []string{"domain-controller"}, unavailable: true, want: audit.NoMatch},
		{name: "rule dry run", rules: machineRules, severity: "Medium", tags: ws, want: audit.DryRun, rule: "medium-dry"},
		{name: "global dry run", rules: machineRules, severity: "High", tags: ws, dryRun: true, want: audit.DryRun, rule: "high"},
		{name: "cooldown", rules: machineRules, severity: "High", tags: ws, cooldown: true, want: audit.Cooldown, rule: "high"},
		{name: "paused", rules: machineRules, severity: "High", tags: ws, paused: true, want: audit.Paused, rule: "high", unpaused: audit.Collect},
		{name: "circuit open", rules: machineRules, severity: "High", tags: ws, circuit: true, want: audit.CircuitOpen, rule: "high"},
		{name: "paused beats the circuit", rules: machineRules, severity: "High", tags: ws, paused: true, circuit: true, want: audit.Paused, rule: "high", unpaused: audit.CircuitOpen},
		{name: "ignore is not held back", rules: machineRules, severity: "High", tags: []string{"domain-controller"}, paused: true, want: audit.Ignore, rule: "never-dc"},
		// Rules that read no machine attribute decide these at intake.
		{name: "intake: no match", rules: alertRules, severity: "Low", want: audit.NoMatch},
		{name: "intake: ignore", rules: alertRules, severity: "Informational", paused: true, want: audit.Ignore, rule: "ignore-informational"},
		{name: "intake: no match whatever the machine", rules: alertRules, severity: "Medium", unavailable: true, want: audit.NoMatch},
	}
}

// answer is what an entry point decided: the part every one must agree on.
type answer struct {
	Decision audit.Decision
	Rule     string
}

// TestOneDecisionEverywhere runs one table of cases through every entry
// point that decides (SPEC 11): the evaluate worker or intake (a real
// pipeline on SQLite and the Defender simulator, which decides at intake
// what no state or machine attribute can change), the evaluate API (Explain),
// `responder eval`, `responder test` and replay (of the worker's audit
// trail, with the same rules). Each must give the same decision and rule
// for each case; replay ignores the pause history, as SPEC 12 says.
func TestOneDecisionEverywhere(t *testing.T) {
	t.Parallel()
	for _, tc := range decisionCases() {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			rulesFile := filepath.Join(dir, "rules.yaml")
			writeTestFile(t, rulesFile, tc.rules)
			want := answer{tc.want, tc.rule}
			worker, api, replayed := decideInPipeline(t, tc, rulesFile)
			got := map[string]answer{
				"evaluate worker or intake": worker,
				"evaluate API":              api,
				"responder eval":            decideWithEval(t, tc, dir, rulesFile),
				"responder test":            decideWithTest(t, tc, dir, rulesFile),
			}
			for entry, a := range got {
				if a != want {
					t.Errorf("%s decided %+v, want %+v", entry, a, want)
				}
			}
			if tc.unpaused != "" {
				want.Decision = tc.unpaused
			}
			if replayed != want {
				t.Errorf("replay decided %+v, want %+v", replayed, want)
			}
		})
	}
}

const (
	caseMachine  = "00000000000000000000000000000000000000c1"
	otherMachine = "00000000000000000000000000000000000000c2"
)

func caseAlert(id, machine, severity string) string {
	return fmt.Sprintf(`{"id":%q,"machineId":%q,"severity":%q,"status":"New","category":"Malware","title":"t","alertCreationTime":"2026-12-01T10:00:00Z"}`,
		id, machine, severity)
}

func writeTestFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

// decideInPipeline sets the state up through the service itself (earlier
// alerts, the kill switch, the configuration), asks the evaluate API, then
// submits the alert and reads the worker's decision from the audit trail.
func decideInPipeline(t *testing.T, tc decisionCase, rulesFile string) (worker, api, replayed answer) {
	t.Helper()
	ctx := context.Background()
	o := defendertest.DevOptions()
	o.PendingFor, o.InProgressFor = time.Hour, time.Hour
	o.Machines = []defendertest.Machine{
		{ID: caseMachine, ComputerDNSName: "case.example.com", HealthStatus: "Active", MachineTags: tc.tags},
		{ID: otherMachine, ComputerDNSName: "other.example.com", HealthStatus: "Active", MachineTags: []string{"workstation"}},
	}
	sim, _ := defendertest.NewServer(t, o)
	if tc.unavailable {
		sim.InjectFault(defendertest.Fault{Method: "GET", PathPrefix: "/api/machines/" + caseMachine, Status: 503})
	}
	m := metrics.New(prometheus.NewRegistry())
	logger := zap.NewNop()
	st, err := store.Open(ctx, store.DriverSQLite, filepath.Join(t.TempDir(), "r.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	client, err := defender.New(defender.Config{APIURL: sim.URL(), TokenURL: sim.TokenURL(), TenantID: defendertest.DevTenantID,
		ClientID: defendertest.DevClientID, ClientSecret: defendertest.DevClientSecret, UserAgent: "responder/test"},
		m, logger, defender.WithLimiter(defender.GroupActions, nil))
	if err != nil {
		t.Fatal(err)
	}
	rm, err := rules.NewManager([]string{rulesFile}, m, logger)
	if err != nil {
		t.Fatal(err)
	}
	cfg := pipeline.Config{DryRun: tc.dryRun, PollInterval: time.Hour, MaxCollectionsPerHour: 100, MaxMachinesPer10m: 100,
		// Defender's failure is not waited out: decided at once, as the
		// worker does once RetryFor has passed.
		RetryFor: time.Millisecond, RetryBase: 10 * time.Millisecond, RetryCap: 100 * time.Millisecond}
	if tc.circuit {
		cfg.MaxCollectionsPerHour = 1
	}
	p, err := pipeline.New(st, client, nil, rm, m, logger, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = p.Stop(sctx)
	})
	entryOf := func(alertID string) *audit.Entry {
		t.Helper()
		var found *audit.Entry
		testkit.WaitUntil(t, 20*time.Second, "alert "+alertID+" decided", func() bool {
			es, err := st.Entries(ctx, store.Filter{Limit: 100})
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range es {
				if e.AlertID == alertID {
					found = e
					return true
				}
			}
			return false
		})
		return found
	}
	submit := func(body string) {
		t.Helper()
		batch, err := alert.Decode(alert.FormatDefender, []byte(body))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.Submit(ctx, batch.Alerts); err != nil {
			t.Fatal(err)
		}
	}
	switch {
	case tc.cooldown:
		submit(caseAlert("earlier", caseMachine, "High"))
	case tc.circuit:
		submit(caseAlert("earlier", otherMachine, "High"))
	}
	if tc.cooldown || tc.circuit {
		if e := entryOf("earlier"); e.Decision != audit.Collect {
			t.Fatalf("the earlier alert was not collected: %+v", e)
		}
	}
	if tc.paused {
		if err := p.Pause(ctx); err != nil {
			t.Fatal(err)
		}
	}
	body := caseAlert("case", caseMachine, tc.severity)
	ev, err := p.Explain(ctx, alert.FormatDefender, []byte(body))
	if err != nil {
		t.Fatal(err)
	}
	ex := ev.Decisions[0]
	api = answer{audit.Decision(ex.Decision), ex.Rule}
	if api.Rule == metrics.NoRule {
		api.Rule = ""
	}
	submit(body)
	e := entryOf("case")
	return answer{e.Decision, e.Rule}, api, decideWithReplay(t, st, cfg, rm.Current(), e.CreatedAt)
}

// decideWithReplay replays the audit trail up to the case's decision with
// the same rules and settings, and returns what it decides for the case.
func decideWithReplay(t *testing.T, st *store.Store, cfg pipeline.Config, set *rules.Set, decided time.Time) answer {
	t.Helper()
	var got *answer
	w := store.ReplayWindow{From: decided.Add(-time.Hour), To: decided.Add(time.Second)}
	_, err := replay.Run(context.Background(), st, replay.Options{Rules: set, Window: w, DryRun: cfg.DryRun,
		Limits: rules.CircuitLimits{PerHour: cfg.MaxCollectionsPerHour, MachinesPer10m: cfg.MaxMachinesPer10m},
		Each: func(d replay.Decided) {
			if d.AlertID == "case" {
				got = &answer{d.Candidate.Decision, d.Candidate.Rule}
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	if got == nil {
		t.Fatal("replay did not decide the case")
	}
	return *got
}

// givenFiles writes the machine and state files of a case for `eval` and
// `test`, in the YAML both read.
func givenMachine(tc decisionCase) string {
	if tc.unavailable {
		return "unavailable: true\n"
	}
	tags, _ := json.Marshal(tc.tags)
	if tc.tags == nil {
		tags = []byte("[]")
	}
	return fmt.Sprintf("tags: %s\n", tags)
}

func givenState(tc decisionCase) string {
	var b strings.Builder
	fmt.Fprintf(&b, "paused: %v\ndry_run: %v\ncircuit_open: %v\n", tc.paused, tc.dryRun, tc.circuit)
	if tc.cooldown {
		b.WriteString("last_actions: [{action: collect_investigation_package, ago: 1m}]\n")
	}
	return b.String()
}

func decideWithEval(t *testing.T, tc decisionCase, dir, rulesFile string) answer {
	t.Helper()
	machineFile, stateFile := filepath.Join(dir, "machine.yaml"), filepath.Join(dir, "state.yaml")
	writeTestFile(t, machineFile, givenMachine(tc))
	writeTestFile(t, stateFile, givenState(tc))
	var stdout, stderr bytes.Buffer
	code := cmdEval([]string{"--rules", rulesFile, "--machine", machineFile, "--state", stateFile},
		strings.NewReader(caseAlert("case", caseMachine, tc.severity)), &stdout, &stderr)
	if code != 0 {
		t.Fatalf("eval: exit %d: %s", code, stderr.String())
	}
	var res evalResult
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		t.Fatalf("eval output %q: %v", stdout.String(), err)
	}
	return answer{audit.Decision(res.Decision), res.Rule}
}

// decideWithTest writes a rule test whose expectation is the case's answer:
// `responder test` passes only if it decides so.
func decideWithTest(t *testing.T, tc decisionCase, dir, rulesFile string) answer {
	t.Helper()
	indent := func(s string) string {
		return "      " + strings.ReplaceAll(strings.TrimSuffix(s, "\n"), "\n", "\n      ")
	}
	expect := "[]"
	if tc.rule != "" {
		expect = fmt.Sprintf("[{machine_id: %s, rule: %s, decision: %s}]", caseMachine, tc.rule, tc.want)
	}
	test := fmt.Sprintf("rule_files: [%s]\ntests:\n  - name: case\n    payload: %s\n    machine:\n%s\n    state:\n%s\n    expect: %s\n",
		rulesFile, caseAlert("case", caseMachine, tc.severity), indent(givenMachine(tc)), indent(givenState(tc)), expect)
	path := filepath.Join(dir, "case_test.yaml")
	writeTestFile(t, path, test)
	var stdout, stderr bytes.Buffer
	if code := cmdTest([]string{path}, &stdout, &stderr); code != 0 {
		// Not the case's answer: say what it decided instead.
		t.Logf("responder test:\n%s%s", stdout.String(), stderr.String())
		return answer{Decision: "(other, see the log)"}
	}
	return answer{tc.want, tc.rule}
}
