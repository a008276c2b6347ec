package rules

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/responder-dev/responder/internal/yamlx"
)

// TestLoadInvalid checks the exact message of every invalid fixture: the
// position must point into the YAML file, inside the expression or template
// when the problem is there.
func TestLoadInvalid(t *testing.T) {
	t.Parallel()
	const actions = "(valid actions: collect_investigation_package, isolate, run_antivirus_scan, restrict_code_execution, ignore)"
	cases := []struct {
		files []string // loaded in order; the last one is the fixture under test
		want  string
	}{
		{[]string{"invalid-key-unknown.yaml"},
			`testdata/invalid-key-unknown.yaml:4:5: rules[0].actoin: unknown key (did you mean "action"?)`},
		{[]string{"good-base.yaml", "invalid-name-duplicate.yaml"},
			`testdata/invalid-name-duplicate.yaml:4:11: rules[1].name: duplicate rule name "ransomware" (first defined at testdata/good-base.yaml:3:11)`},
		{[]string{"invalid-action-unknown.yaml"},
			`testdata/invalid-action-unknown.yaml:4:13: rules[0].action: unknown action "collect" ` + actions},
		{[]string{"invalid-cooldown-duration.yaml"},
			`testdata/invalid-cooldown-duration.yaml:4:15: rules[0].cooldown: invalid duration "1 day" (use a number and a unit such as 90s, 5m, 24h, 90d or 2w, or several: 1d12h)`},
		{[]string{"invalid-cooldown-negative.yaml"},
			"testdata/invalid-cooldown-negative.yaml:2:13: defaults.cooldown: must not be negative\n" +
				"testdata/invalid-cooldown-negative.yaml:6:15: rules[0].cooldown: must not be negative"},
		{[]string{"invalid-when-empty.yaml"},
			"testdata/invalid-when-empty.yaml:3:11: rules[0].when: empty condition: a rule needs one, e.g. 'alert.severity == \"high\"'\n" +
				"testdata/invalid-when-empty.yaml:4:5: rules[1].when: missing: a rule needs a condition, e.g. 'alert.severity == \"high\"'"},
		{[]string{"invalid-when-misspelled-field.yaml"},
			"testdata/invalid-when-misspelled-field.yaml:3:17: rules[0].when: unknown field alert.severty (did you mean alert.severity?)\n" +
				"testdata/invalid-when-misspelled-field.yaml:5:51: rules[1].when: unknown field machine.tag (did you mean machine.tags?)"},
		{[]string{"invalid-when-bad-regex.yaml"},
			"testdata/invalid-when-bad-regex.yaml:3:24: rules[0].when: error parsing regexp: missing closing ): `(?i)ransom(`"},
		{[]string{"invalid-when-type-mismatch.yaml"},
			`testdata/invalid-when-type-mismatch.yaml:3:61: rules[0].when: invalid operation: > (mismatched types string and int)`},
		{[]string{"invalid-when-single-quoted.yaml"},
			`testdata/invalid-when-single-quoted.yaml:3:49: rules[0].when: invalid operation: == (mismatched types map[string]string and int)`},
		{[]string{"invalid-when-not-bool.yaml"},
			`testdata/invalid-when-not-bool.yaml:3:11: rules[0].when: the condition must be true or false (expected bool, but got string)`},
		{[]string{"invalid-when-block-scalar.yaml"},
			"testdata/invalid-when-block-scalar.yaml:5:18: rules[0].when: unknown field alert.catgory (did you mean alert.category?)\n" +
				"testdata/invalid-when-block-scalar.yaml:9:26: rules[1].when: invalid operation: == (mismatched types string and int)"},
		{[]string{"invalid-when-syntax.yaml"},
			"testdata/invalid-when-syntax.yaml:3:30: rules[0].when: unexpected token EOF\n" +
				"testdata/invalid-when-syntax.yaml:5:11: rules[1].when: unknown name Alert (did you mean alert?)"},
		{[]string{"invalid-comment-bad-field.yaml"},
			`testdata/invalid-comment-bad-field.yaml:4:55: rules[0].comment: template: .Alert.Id: alert.Alert has no field Id (did you mean ID?)`},
		{[]string{"invalid-comment-block.yaml"},
			`testdata/invalid-comment-block.yaml:6:21: rules[0].comment: template: .Machine.Hostname: alert.Machine has no field Hostname (it has: ID, Name, OSPlatform, HealthStatus, RiskScore, ExposureLevel, DeviceValue, Tags, Group, OnboardingStatus, LastSeen)`},
		{[]string{"invalid-comment-parse.yaml"},
			`testdata/invalid-comment-parse.yaml:4:5: defaults.comment: template: unexpected "}" in operand`},
		{[]string{"invalid-name-reserved.yaml"},
			`testdata/invalid-name-reserved.yaml:2:11: rules[0].name: rule name "none" is reserved (it labels the decisions no rule took)`},
		{[]string{"invalid-name-chars.yaml"},
			"testdata/invalid-name-chars.yaml:2:11: rules[0].name: invalid rule name \"high malware\" (use letters, digits, '_', '.' and '-', starting with a letter or digit)\n" +
				"testdata/invalid-name-chars.yaml:4:11: rules[1].name: invalid rule name \"-dash-first\" (use letters, digits, '_', '.' and '-', starting with a letter or digit)\n" +
				"testdata/invalid-name-chars.yaml:6:5: rules[2].name: a rule needs a name (letters, digits, '_', '.' and '-')"},
		{[]string{"invalid-syntax.yaml"},
			`testdata/invalid-syntax.yaml:3:11: syntax error: could not find end character of single-quoted text`},
		{[]string{"invalid-empty-list.yaml"},
			`testdata/invalid-empty-list.yaml:1:8: rules: expected a list, got a mapping`},
		{[]string{"invalid-many.yaml"}, strings.Join([]string{
			`testdata/invalid-many.yaml:2:11: defaults.action: unknown action "colect" ` + actions,
			`testdata/invalid-many.yaml:5:17: rules[0].when: unknown field alert.sevrity (did you mean alert.severity?)`,
			`testdata/invalid-many.yaml:6:15: rules[0].cooldown: invalid duration "soon" (use a number and a unit such as 90s, 5m, 24h, 90d or 2w, or several: 1d12h)`,
			`testdata/invalid-many.yaml:7:11: rules[1].name: duplicate rule name "one" (first defined at testdata/invalid-many.yaml:4:11)`,
			`testdata/invalid-many.yaml:9:14: rules[1].enabled: invalid boolean "maybe" (use true or false)`,
			`testdata/invalid-many.yaml:11:25: rules[2].when: invalid operation: == (mismatched types []string and string)`,
			`testdata/invalid-many.yaml:12:26: rules[2].comment: template: .Machine.Tag: alert.Machine has no field Tag (did you mean Tags?)`,
		}, "\n")},
	}
	covered := map[string]bool{}
	for _, tc := range cases {
		fixture := tc.files[len(tc.files)-1]
		covered[fixture] = true
		t.Run(strings.TrimSuffix(fixture, ".yaml"), func(t *testing.T) {
			t.Parallel()
			paths := make([]string, len(tc.files))
			for i, f := range tc.files {
				paths[i] = filepath.Join("testdata", f)
			}
			set, err := LoadFiles(paths...)
			if err == nil {
				t.Fatalf("loaded %d rules, want error\n%s", set.Len(), tc.want)
			}
			if err.Error() != tc.want {
				t.Fatalf("error\n got: %s\nwant: %s", err, tc.want)
			}
			var es yamlx.Errors
			if !errors.As(err, &es) || len(es) != strings.Count(tc.want, "\n")+1 {
				t.Fatalf("error is %T with %d problems, want yamlx.Errors with one per line", err, len(es))
			}
		})
	}
	t.Run("every fixture is covered", func(t *testing.T) {
		t.Parallel()
		files, err := filepath.Glob("testdata/invalid-*.yaml")
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			if !covered[filepath.Base(f)] {
				t.Errorf("%s has no case in TestLoadInvalid", f)
			}
		}
	})
}

func TestLoadGood(t *testing.T) {
	t.Parallel()
	set, err := LoadFiles("testdata/good-base.yaml", "testdata/good-empty.yaml", "testdata/good-full.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if set.Len() != 5 {
		t.Fatalf("Len = %d, want 5", set.Len())
	}
	got := set.Rules()
	want := []RuleInfo{
		{Name: "ransomware", File: "testdata/good-base.yaml", Line: 3, Action: ActionCollect, Cooldown: 24 * time.Hour, Enabled: true, When: `alert.category == "Ransomware"`},
		{Name: "never-domain-controllers", Description: "Domain controllers are handled by the identity team.", File: "testdata/good-full.yaml", Line: 6, Action: ActionIgnore, Cooldown: 12 * time.Hour, Enabled: true, When: `"domain-controller" in machine.tags`},
		{Name: "ransomware2", File: "testdata/good-full.yaml", Line: 10, Action: ActionCollect, Cooldown: time.Hour, Enabled: true},
		{Name: "title-regex", File: "testdata/good-full.yaml", Line: 19, Action: ActionCollect, Cooldown: 12 * time.Hour, DryRun: true, Enabled: false, When: `alert.title matches "(?i)ransom"`},
		{Name: "resolved.too_v2", File: "testdata/good-full.yaml", Line: 23, Action: ActionIsolate, Cooldown: 0, Enabled: true, OnResolved: true, When: `alert.labels["team"] == "security"`},
	}
	for i := range want {
		g := got[i]
		if i == 2 {
			// Checked apart: the folded when and the description.
			if g.Name != "ransomware-medium" || g.Cooldown != time.Hour || g.Line != 10 ||
				g.When != "alert.severity in [\"medium\", \"high\", \"critical\"] && alert.category == \"Ransomware\"" {
				t.Errorf("rule 2 = %+v", g)
			}
			continue
		}
		if g != want[i] {
			t.Errorf("rule %d\n got: %+v\nwant: %+v", i, g, want[i])
		}
	}
	files := set.Files()
	if len(files) != 3 || files[2].Path != "testdata/good-full.yaml" || len(files[2].SHA256) != 64 || files[2].LoadedAt.IsZero() {
		t.Fatalf("Files = %+v", files)
	}
	if !set.NeedsMachine() || !set.AcceptsResolved() {
		t.Fatalf("NeedsMachine = %v, AcceptsResolved = %v, want both true", set.NeedsMachine(), set.AcceptsResolved())
	}
}

func TestLoadFileProblems(t *testing.T) {
	t.Parallel()
	if _, err := LoadFiles(); err == nil || err.Error() != "no rule files given" {
		t.Fatalf("no files: err = %v", err)
	}
	_, err := LoadFiles("testdata/good-base.yaml", "testdata/does-not-exist.yaml")
	if want := "testdata/does-not-exist.yaml:1:1: cannot read the file: no such file or directory"; err == nil || err.Error() != want {
		t.Fatalf("missing file: err = %v, want %s", err, want)
	}
}

// TestProblemsOrderedByFile checks that problems of several files come in
// the order the files were given, not alphabetically.
func TestProblemsOrderedByFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	z := filepath.Join(dir, "z.yaml")
	a := filepath.Join(dir, "a.yaml")
	writeFile(t, z, "rules:\n  - name: x\n    when: alert.nope\n")
	writeFile(t, a, "rules:\n  - name: x\n    when: 'true'\n")
	_, err := LoadFiles(z, a)
	want := z + ":3:17: rules[0].when: unknown field alert.nope (alert has: id, source, title, description, severity, status, category, detection_source, service_source, threat_family, mitre_techniques, incident_id, tenant_id, created_at, labels, annotations, machine_id, machine_name)\n" +
		a + ":2:11: rules[0].name: duplicate rule name \"x\" (first defined at " + z + ":2:11)"
	if err == nil || err.Error() != want {
		t.Fatalf("err =\n%v\nwant\n%s", err, want)
	}
}

func TestNeedsMachine(t *testing.T) {
	t.Parallel()
	cases := []struct {
		when string
		want bool
	}{
		{`alert.severity == "high"`, false},
		{`"x" in machine.tags`, true},
		{`machine.risk_score == "High" || alert.severity == "high"`, true},
		{`any(alert.mitre_techniques, # startsWith "T1003")`, false},
		{`alert.title contains "machine"`, false},
		{`alert.machine_name == "pc1"`, false},
		{`$env.alert.severity == "high"`, false},
		{`$env.machine.group == "x"`, true},
		{`$env["machine"].group == "x"`, true},
		{`len($env) > 0`, true},
		{`let m = machine; m.group == "x"`, true},
	}
	for _, tc := range cases {
		t.Run(tc.when, func(t *testing.T) {
			t.Parallel()
			p, err := compileWhen(tc.when)
			if err != nil {
				t.Fatal(err)
			}
			if got := readsMachine(p.Node()); got != tc.want {
				t.Fatalf("readsMachine = %v, want %v", got, tc.want)
			}
		})
	}
	t.Run("disabled rules do not count", func(t *testing.T) {
		t.Parallel()
		set := mustSet(t, `
rules:
  - name: off
    when: '"x" in machine.tags'
    enabled: false
    on_resolved: true
  - name: on
    when: 'alert.severity == "high"'
`)
		if set.NeedsMachine() || set.AcceptsResolved() {
			t.Fatalf("NeedsMachine = %v, AcceptsResolved = %v, want false", set.NeedsMachine(), set.AcceptsResolved())
		}
	})
}

func TestScalarPositions(t *testing.T) {
	t.Parallel()
	// Each case: a YAML line holding `when: <scalar>` and the rune offset in
	// the decoded value of the character marked by col (1-based, in the file).
	cases := []struct {
		name, src  string
		offset     int
		line, col  int
		wantDecode string
	}{
		{"plain", "when: ab == cd\n", 6, 1, 13, "ab == cd"},
		{"single quoted", "when: 'a ''b'' c'\n", 6, 1, 16, "a 'b' c"},
		{"double quoted escapes", "when: \"\\\"x\\\" \\u00e9 y\"\n", 6, 1, 21, "\"x\" é y"},
		{"non-ASCII before", "when: 'é == x'\n", 5, 1, 13, "é == x"},
		{"literal", "when: |\n  a\n    b\n", 4, 3, 5, "a\n  b\n"},
		{"folded", "when: >-\n  a\n  bc\n", 3, 3, 4, "a bc"},
		{"plain multi-line", "when:\n  a ==\n  b\n", 5, 3, 3, "a == b"},
		{"end of value", "when: ab\n", 2, 1, 9, "ab"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var v struct {
				When string `yaml:"when"`
			}
			pos, err := yamlx.Decode("f.yaml", []byte(tc.src), &v)
			if err != nil {
				t.Fatal(err)
			}
			if v.When != tc.wantDecode {
				t.Fatalf("decoded %q, want %q", v.When, tc.wantDecode)
			}
			m := mapScalar(splitLines([]byte(tc.src)), pos["when"], v.When)
			if got := m.at(tc.offset); got.Line != tc.line || got.Col != tc.col {
				t.Fatalf("offset %d maps to %d:%d, want %d:%d", tc.offset, got.Line, got.Col, tc.line, tc.col)
			}
		})
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// mustSet compiles one rule file given as text.
func mustSet(t testing.TB, content string) *Set {
	t.Helper()
	set, err := compileSources([]source{newSource("rules.yaml", []byte(content))}, time.Unix(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	return set
}

func TestRuleInfoJSON(t *testing.T) {
	t.Parallel()
	set := mustSet(t, "rules:\n  - name: a\n    when: 'true'\n    cooldown: 90m\n")
	b, err := json.Marshal(set.Rules())
	if err != nil {
		t.Fatal(err)
	}
	want := `[{"name":"a","file":"rules.yaml","line":2,"action":"collect_investigation_package","dry_run":false,"enabled":true,"on_resolved":false,"when":"true","cooldown":"1h30m0s"}]`
	if string(b) != want {
		t.Fatalf("JSON\n got: %s\nwant: %s", b, want)
	}
}

// TestCooldownInDays: rule cooldowns go through the config's duration
// parser, so days and weeks work in defaults and rules alike.
func TestCooldownInDays(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "rules.yaml")
	src := "defaults:\n  cooldown: 2w\nrules:\n  - name: a\n    when: 'true'\n    cooldown: 1d12h\n  - name: b\n    when: 'true'\n"
	if err := os.WriteFile(p, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	set, err := LoadFiles(p)
	if err != nil {
		t.Fatal(err)
	}
	got := set.Rules()
	if got[0].Cooldown != 36*time.Hour || got[1].Cooldown != 14*24*time.Hour {
		t.Fatalf("cooldowns = %s, %s; want 36h and 336h", got[0].Cooldown, got[1].Cooldown)
	}
}
