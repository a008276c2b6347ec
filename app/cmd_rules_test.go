package app

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func examplesDir(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("..", "examples"))
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestCmdTestExamples(t *testing.T) {
	t.Parallel()
	var stdout, stderr strings.Builder
	code := cmdTest([]string{filepath.Join(examplesDir(t), "rules_test.yaml")}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
	}
	if !strings.HasSuffix(stdout.String(), "ok: 11 passed\n") || strings.Contains(stdout.String(), "FAIL") {
		t.Fatalf("stdout:\n%s", stdout.String())
	}
}

// TestCmdTestWrongExpectation runs the example tests with one expectation
// changed: the run must fail and say what was expected and what came.
func TestCmdTestWrongExpectation(t *testing.T) {
	t.Parallel()
	ex := examplesDir(t)
	data, err := os.ReadFile(filepath.Join(ex, "rules_test.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	for old, repl := range map[string]string{
		"rule_files: [rules.yaml]":         "rule_files: [" + filepath.Join(ex, "rules.yaml") + "]",
		"payload_file: testdata/":          "payload_file: " + filepath.Join(ex, "testdata") + "/",
		"rule: high-malware-workstation\n": "rule: ransomware\n",
	} {
		if !strings.Contains(text, old) {
			t.Fatalf("rules_test.yaml no longer contains %q", old)
		}
		text = strings.Replace(text, old, repl, -1)
	}
	path := filepath.Join(t.TempDir(), "wrong_test.yaml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr strings.Builder
	if code := cmdTest([]string{path}, &stdout, &stderr); code != 1 {
		t.Fatalf("exit %d, want 1\nstdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
	}
	out := stdout.String()
	const id = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07"
	for _, want := range []string{
		"FAIL high malware on a workstation is collected (" + path + ":",
		"    - expected, not got: {machine_id: " + id + ", rule: ransomware, action: collect_investigation_package, comment: \"Collect forensics due to alert da637472900382838869_1364969609\"}\n",
		"    + got, not expected: {machine_id: " + id + ", rule: high-malware-workstation, action: collect_investigation_package, decision: collect, comment: \"Collect forensics due to alert da637472900382838869_1364969609\"}\n",
		"    why " + id + ": rule \"high-malware-workstation\" matched: ",
		"PASS high malware on a domain controller is ignored\n",
		"FAILED: 10 passed, 1 failed\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("output:\n%s", out)
	}
}

func TestCmdTestUsage(t *testing.T) {
	t.Parallel()
	var stdout, stderr strings.Builder
	if code := cmdTest(nil, &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), "usage: responder test FILE...") {
		t.Fatalf("no file: exit %d, stderr %q", code, stderr.String())
	}
	stderr.Reset()
	if code := cmdTest([]string{"--bogus"}, &stdout, &stderr); code != 2 {
		t.Fatalf("unknown flag: exit %d", code)
	}
	path := filepath.Join(t.TempDir(), "t.yaml")
	if err := os.WriteFile(path, []byte("rule_files: [x.yaml]\ntests: []\nbogus: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	stderr.Reset()
	code := cmdTest([]string{path}, &stdout, &stderr)
	if want := path + ":2:8: tests: no tests\n" + path + ":3:1: bogus: unknown key\n"; code != 1 || stderr.String() != want {
		t.Fatalf("invalid file: exit %d, stderr\n%s\nwant\n%s", code, stderr.String(), want)
	}
}

func TestCmdEval(t *testing.T) {
	t.Parallel()
	ex := examplesDir(t)
	rules := filepath.Join(ex, "rules.yaml")
	machine := filepath.Join(t.TempDir(), "machine.yaml")
	if err := os.WriteFile(machine, []byte("tags: [workstation]\nrisk_score: High\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(t *testing.T, stdinFile string, args ...string) (int, []map[string]any, string) {
		t.Helper()
		in, err := os.Open(filepath.Join(ex, "testdata", stdinFile))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { in.Close() })
		var stdout, stderr strings.Builder
		code := cmdEval(args, in, &stdout, &stderr)
		var results []map[string]any
		dec := json.NewDecoder(strings.NewReader(stdout.String()))
		for dec.More() {
			var r map[string]any
			if err := dec.Decode(&r); err != nil {
				t.Fatalf("stdout is not JSON lines: %v\n%s", err, stdout.String())
			}
			results = append(results, r)
		}
		return code, results, stderr.String()
	}

	t.Run("defender with machine", func(t *testing.T) {
		t.Parallel()
		code, res, stderr := run(t, "mde-high-malware.json", "--rules", rules, "--machine", machine)
		if code != 0 || len(res) != 1 || stderr != "" {
			t.Fatalf("exit %d, %d results, stderr %q", code, len(res), stderr)
		}
		want := map[string]any{
			"alert_id": "da637472900382838869_1364969609", "source": "defender",
			"machine_id": "1e5bc9d7e413ddd7902c2932e418702b84d0cc07", "machine_name": "fin-ws-0142.corp.contoso.com",
			"matched": true, "decision": "collect", "rule": "high-malware-workstation", "action": "collect_investigation_package",
			"comment": "Collect forensics due to alert da637472900382838869_1364969609", "cooldown": "24h0m0s", "dry_run": false,
		}
		for k, v := range want {
			if res[0][k] != v {
				t.Errorf("%s = %#v, want %#v", k, res[0][k], v)
			}
		}
		if r, _ := res[0]["reason"].(string); !strings.HasPrefix(r, `rule "high-malware-workstation" matched: alert.severity in ["high", "critical"] && `) {
			t.Errorf("reason = %q", r)
		}
	})
	t.Run("alertmanager without machine", func(t *testing.T) {
		t.Parallel()
		code, res, stderr := run(t, "alertmanager-critical.json", "--rules", rules, "--format", "alertmanager")
		if code != 0 || len(res) != 2 {
			t.Fatalf("exit %d, %d results", code, len(res))
		}
		if !strings.Contains(stderr, "the rules read machine.* but no --machine file was given") {
			t.Errorf("stderr = %q", stderr)
		}
		// The second alert names only a host, which eval cannot resolve
		// without a machine id given (--machine with id:).
		if res[0]["rule"] != "alertmanager-critical-security" || res[1]["matched"] != false || res[1]["decision"] != "no_match" ||
			res[1]["reason"] != `machine name "build-01.corp.contoso.com" cannot be resolved here: give the id it resolves to (machine: {id: ...})` || res[1]["cooldown"] != "" {
			t.Errorf("results = %v", res)
		}
	})
	t.Run("several rule files merge in order", func(t *testing.T) {
		t.Parallel()
		first := filepath.Join(t.TempDir(), "first.yaml")
		if err := os.WriteFile(first, []byte("rules:\n  - name: first\n    when: 'true'\n    dry_run: true\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		code, res, _ := run(t, "mde-high-malware.json", "--rules", first, "--rules", rules)
		if code != 0 || len(res) != 1 || res[0]["rule"] != "first" || res[0]["dry_run"] != true || res[0]["decision"] != "dry_run" {
			t.Fatalf("exit %d, results %v", code, res)
		}
	})
	t.Run("bad input", func(t *testing.T) {
		t.Parallel()
		code, _, stderr := run(t, "alertmanager-critical.json", "--rules", rules)
		if code != 1 || !strings.Contains(stderr, "the payload is not a valid defender alert") {
			t.Fatalf("wrong format: exit %d, stderr %q", code, stderr)
		}
		code, _, stderr = run(t, "mde-high-malware.json", "--rules", filepath.Join(ex, "nope.yaml"))
		if code != 1 || !strings.Contains(stderr, "nope.yaml:1:1: cannot read the file: no such file or directory") {
			t.Fatalf("missing rules: exit %d, stderr %q", code, stderr)
		}
		code, _, stderr = run(t, "mde-high-malware.json", "--rules", rules, "--machine", rules)
		if code != 1 || !strings.Contains(stderr, "--machine: ") || !strings.Contains(stderr, "unknown key") {
			t.Fatalf("bad machine file: exit %d, stderr %q", code, stderr)
		}
	})
	t.Run("usage", func(t *testing.T) {
		t.Parallel()
		for _, args := range [][]string{nil, {"--rules", rules, "extra"}, {"--rules", rules, "--format", "syslog"}, {"--nope"}} {
			if code, _, _ := run(t, "mde-high-malware.json", args...); code != 2 {
				t.Errorf("%q: exit %d, want 2", args, code)
			}
		}
	})
}
