package rules

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/responder-dev/responder/alert"
)

func TestRunTests(t *testing.T) {
	t.Parallel()
	var out strings.Builder
	failed, err := RunTests(&out, "testdata/ruletests/cases_test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if failed != 3 {
		t.Errorf("failed = %d, want 3", failed)
	}
	const machine = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07"
	want := `PASS collected
PASS ignored, comment not compared
FAIL wrong rule and comment (testdata/ruletests/cases_test.yaml:15:11)
    - expected, not got: {machine_id: ` + machine + `, rule: high, comment: "alert x"}
    + got, not expected: {machine_id: ` + machine + `, rule: never-dc, action: ignore, decision: ignore}
    why ` + machine + `: rule "never-dc" matched (ignore: no action): "domain-controller" in machine.tags
FAIL expected nothing (testdata/ruletests/cases_test.yaml:20:11)
    + got, not expected: {machine_id: ` + machine + `, rule: high, action: collect_investigation_package, decision: collect, comment: "alert da1 on  ()"}
    expected: no rule matches (expect: [])
    why ` + machine + `: rule "high" matched: alert.severity == "high"
FAIL payload that does not decode (testdata/ruletests/cases_test.yaml:24:11)
    the payload does not decode as alertmanager: alerts: expected array, got number
FAILED: 2 passed, 3 failed
`
	if out.String() != want {
		t.Fatalf("output\n%s\nwant\n%s", out.String(), want)
	}
}

func TestRunTestsInvalidFiles(t *testing.T) {
	t.Parallel()
	var out strings.Builder
	failed, err := RunTests(&out, "testdata/ruletests/invalid_test.yaml", "testdata/ruletests/badrules_test.yaml", "testdata/ruletests/missing_test.yaml")
	if failed != 0 || err == nil {
		t.Fatalf("RunTests = %d, %v; want 0 and an error", failed, err)
	}
	const f = "testdata/ruletests/invalid_test.yaml"
	want := strings.Join([]string{
		f + ":5:14: tests[0].payload: give either payload or payload_file, not both",
		f + ":8:19: tests[1].payload_file: cannot read the payload file: no such file or directory",
		f + `:9:13: tests[1].format: unknown format "prometheus" (want defender, graph, alertmanager or grafana)`,
		f + ":11:5: tests[2].expect: missing: list the expected decisions, or expect: [] when no rule may match",
		f + `:11:11: tests[2].name: duplicate test name "both payloads" (first at ` + f + `:3:11)`,
		f + ":13:5: tests[3].name: a test needs a name",
		f + ":15:66: tests[3].expect[0].comment: action ignore sends no comment",
		f + ":16:9: tests[3].expect[1].machine_id: missing: the machine id from the payload (its host name when the alert names no id)",
		f + `:16:30: tests[3].expect[1].action: unknown action "colect" (valid actions: collect_investigation_package, isolate, run_antivirus_scan, restrict_code_execution, ignore)`,
		f + `:17:5: tests[3].mchine: unknown key (did you mean "machine"?)`,
		"testdata/ruletests/badrules_test.yaml:1:13: rule_files: the rule files do not load:",
		`testdata/invalid-name-reserved.yaml:2:11: rules[0].name: rule name "none" is reserved (it labels the decisions no rule took)`,
		"reading test file: open testdata/ruletests/missing_test.yaml: no such file or directory",
	}, "\n")
	if err.Error() != want {
		t.Fatalf("error\n%s\nwant\n%s", err, want)
	}
	if got := out.String(); got != "0 passed, 0 failed, 3 of 3 test files invalid\n" {
		t.Fatalf("output %q", got)
	}
}

func TestMachineConfig(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "machine.json")
	writeFile(t, path, `{"name": "pc1", "tags": ["a"], "risk_score": "High", "os_platform": "Windows11", "health_status": "Active",
		"exposure_level": "Low", "device_value": "High", "group": "Finance", "onboarding_status": "Onboarded",
		"last_seen": "2024-05-01T10:00:00Z"}`)
	mc, err := LoadMachineFile(path)
	if err != nil {
		t.Fatal(err)
	}
	a := &alert.Alert{MachineID: testMachineID, MachineName: "from-alert"}
	got := mc.Machine(a)
	want := alert.Machine{ID: testMachineID, Name: "pc1", OSPlatform: "Windows11", HealthStatus: "Active", RiskScore: "High",
		ExposureLevel: "Low", DeviceValue: "High", Tags: []string{"a"}, Group: "Finance", OnboardingStatus: "Onboarded",
		LastSeen: time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC)}
	if got.ID != want.ID || got.Name != want.Name || got.Group != want.Group || !got.LastSeen.Equal(want.LastSeen) ||
		len(got.Tags) != 1 || got.RiskScore != want.RiskScore || got.OnboardingStatus != want.OnboardingStatus {
		t.Fatalf("machine\n got: %+v\nwant: %+v", got, want)
	}
	var none *MachineConfig
	if m := none.Machine(a); m.ID != testMachineID || m.Name != "from-alert" {
		t.Fatalf("machine of a nil config = %+v", m)
	}
	// An id is what an alert naming only a host resolves to: a machine id.
	writeFile(t, path, "tags: [a]\nid: x\n")
	if _, err := LoadMachineFile(path); err == nil || !strings.HasSuffix(err.Error(), `:2:5: id: "x" is not a machine id (40 hexadecimal characters)`) {
		t.Fatalf("machine file with a bad id: err = %v", err)
	}
	named := &alert.Alert{ID: "a1", MachineName: "pc1.example.com"}
	if in := (&MachineConfig{}).Input(named); in.Unavailable == "" || named.MachineID != "" {
		t.Fatalf("a host without a given id was decided on: %+v", in)
	}
	if in := (&MachineConfig{ID: strings.ToUpper(testMachineID)}).Input(named); in.Attributes == nil || named.MachineID != testMachineID {
		t.Fatalf("a host with a given id: %+v, alert machine %q", in, named.MachineID)
	}
}
