package rules

import (
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/responder-dev/responder/alert"
)

const (
	testAlertID   = "da637472900382838869_1364969609"
	testMachineID = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07"
)

func testAlert() *alert.Alert {
	return &alert.Alert{
		ID:              testAlertID,
		Source:          alert.SourceDefender,
		Title:           "Ransomware behavior detected in the file system",
		Severity:        alert.SeverityHigh,
		Status:          alert.StatusNew,
		Category:        "Ransomware",
		MitreTechniques: []string{"T1486"},
		MachineID:       testMachineID,
		MachineName:     "fin-ws-0142.corp.contoso.com",
	}
}

func TestEvaluate(t *testing.T) {
	t.Parallel()
	type want struct {
		matched  bool
		rule     string
		action   Action
		comment  string
		cooldown time.Duration
		dryRun   bool
		reason   string // must be contained in Reason
	}
	cases := []struct {
		name    string
		rules   string
		alert   func(a *alert.Alert)
		machine *alert.Machine
		want    want
	}{
		{
			name: "first match wins, default comment and cooldown",
			rules: `
rules:
  - name: high
    when: alert.severity == "high"
  - name: all
    when: 'true'
`,
			want: want{true, "high", ActionCollect, "Collect forensics due to alert " + testAlertID, 24 * time.Hour, false,
				`rule "high" matched: alert.severity == "high"`},
		},
		{
			name: "ignore stops evaluation",
			rules: `
rules:
  - name: never-dc
    when: '"domain-controller" in machine.tags'
    action: ignore
  - name: all
    when: 'true'
`,
			machine: &alert.Machine{ID: testMachineID, Tags: []string{"domain-controller"}},
			want: want{true, "never-dc", ActionIgnore, "", 24 * time.Hour, false,
				`rule "never-dc" matched (ignore: no action): "domain-controller" in machine.tags`},
		},
		{
			name: "disabled rule is skipped",
			rules: `
rules:
  - name: off
    when: 'true'
    enabled: false
  - name: on
    when: 'true'
    enabled: true
`,
			want: want{true, "on", ActionCollect, "Collect forensics due to alert " + testAlertID, 24 * time.Hour, false, `rule "on" matched`},
		},
		{
			name: "no match",
			rules: `
rules:
  - name: low
    when: alert.severity == "low"
`,
			want: want{reason: "no enabled rule matched"},
		},
		{
			name: "resolved alert skips rules without on_resolved",
			rules: `
rules:
  - name: all
    when: 'true'
  - name: ignore-all
    when: 'true'
    action: ignore
`,
			alert: func(a *alert.Alert) { a.Status = alert.StatusResolved },
			want:  want{reason: "no enabled rule matched (the alert is resolved: 2 rules without on_resolved: true did not consider it)"},
		},
		{
			name: "resolved alert matches a rule with on_resolved",
			rules: `
rules:
  - name: firing-only
    when: 'true'
  - name: resolved-too
    when: 'true'
    on_resolved: true
    action: run_antivirus_scan
`,
			alert: func(a *alert.Alert) { a.Status = alert.StatusResolved },
			want:  want{true, "resolved-too", ActionAntivirusScan, "Collect forensics due to alert " + testAlertID, 24 * time.Hour, false, `rule "resolved-too" matched`},
		},
		{
			name: "dry run, cooldown and templates from the file defaults and the rule",
			rules: `
defaults:
  cooldown: 2h
  comment: 'default of the file for {{ .Alert.ID }}'
rules:
  - name: ransomware
    description: Ransomware anywhere
    when: alert.category == "Ransomware"
    dry_run: true
    cooldown: 30m
    comment: |
      {{ .Rule.Name }} ({{ .Rule.Description }}) on {{ .Machine.Name }}
      {{ index .Alert.MitreTechniques 0 }} {{ .Alert.Source }}
`,
			machine: &alert.Machine{ID: testMachineID, Name: "fin-ws-0142"},
			want: want{true, "ransomware", ActionCollect, "ransomware (Ransomware anywhere) on fin-ws-0142\nT1486 defender", 30 * time.Minute, true,
				`rule "ransomware" matched (dry run): alert.category == "Ransomware"`},
		},
		{
			name: "file defaults apply when the rule sets nothing",
			rules: `
defaults:
  action: isolate
  cooldown: 0s
  comment: 'isolate {{ .Alert.MachineName }}'
rules:
  - name: all
    when: 'true'
`,
			want: want{true, "all", ActionIsolate, "isolate fin-ws-0142.corp.contoso.com", 0, false, `rule "all" matched`},
		},
		{
			name: "nil machine reads zero values",
			rules: `
rules:
  - name: no-tags
    when: len(machine.tags) == 0 && machine.id == ""
    comment: '[{{ .Machine.Name }}]'
`,
			want: want{true, "no-tags", ActionCollect, "[]", 24 * time.Hour, false, `rule "no-tags" matched`},
		},
		{
			name: "named string fields compare as strings",
			rules: `
rules:
  - name: by-source
    when: alert.source in ["graph", "defender"] && alert.source != "grafana" && alert.source matches "^def"
`,
			want: want{true, "by-source", ActionCollect, "Collect forensics due to alert " + testAlertID, 24 * time.Hour, false, `rule "by-source" matched`},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			set := mustSet(t, tc.rules)
			a := testAlert()
			if tc.alert != nil {
				tc.alert(a)
			}
			d := set.Evaluate(a, tc.machine)
			w := tc.want
			if d.Matched != w.matched || d.Rule != w.rule || d.Action != w.action || d.Comment != w.comment ||
				d.Cooldown != w.cooldown || d.DryRun != w.dryRun || !strings.Contains(d.Reason, w.reason) || len(d.Errors) != 0 {
				t.Fatalf("decision\n got: %+v\nwant: %+v", d, w)
			}
		})
	}
}

func TestEvaluateRuntimeError(t *testing.T) {
	t.Parallel()
	set := mustSet(t, `
rules:
  - name: count
    when: int(alert.labels["count"]) > 3
  - name: fallback
    when: 'true'
    comment: 'team {{ .Alert.Labels.team }}'
`)
	a := testAlert()
	a.Labels = map[string]string{"count": "many"}
	d := set.Evaluate(a, nil)
	if !d.Matched || d.Rule != "fallback" {
		t.Fatalf("decision = %+v, want rule fallback", d)
	}
	// The label is missing: the comment falls back to the default text.
	if d.Comment != "Collect forensics due to alert "+testAlertID {
		t.Fatalf("comment = %q", d.Comment)
	}
	if len(d.Errors) != 2 || d.Errors[0].Rule != "count" || d.Errors[1].Rule != "fallback" {
		t.Fatalf("errors = %v", d.Errors)
	}
	if got, want := d.Errors[0].Error(), `rule "count": condition failed, counted as not matching: invalid operation: int(many)`; got != want {
		t.Fatalf("error 0 = %q, want %q", got, want)
	}
	if got, want := d.Errors[1].Error(), `rule "fallback": comment: template: .Alert.Labels.team: map has no entry for key "team"; the default comment was used`; got != want {
		t.Fatalf("error 1 = %q, want %q", got, want)
	}
	if !strings.Contains(d.Reason, `rule "fallback" matched: true; rule "count": condition failed`) {
		t.Fatalf("reason = %q", d.Reason)
	}

	// With no other rule, the failing rule is a no match that says why.
	set = mustSet(t, "rules:\n  - name: count\n    when: int(alert.labels[\"count\"]) > 3\n")
	d = set.Evaluate(a, nil)
	if d.Matched || !strings.HasPrefix(d.Reason, `no enabled rule matched; rule "count": condition failed`) {
		t.Fatalf("decision = %+v", d)
	}
}

func TestCommentCap(t *testing.T) {
	t.Parallel()
	set := mustSet(t, `
rules:
  - name: long
    when: 'true'
    comment: '{{ .Alert.Title }}'
`)
	a := testAlert()
	a.Title = strings.Repeat("é", 999) + "漢字x"
	d := set.Evaluate(a, nil)
	if n := utf8.RuneCountInString(d.Comment); n != MaxCommentLength || !utf8.ValidString(d.Comment) {
		t.Fatalf("comment has %d runes (valid UTF-8: %v), want %d", n, utf8.ValidString(d.Comment), MaxCommentLength)
	}
	if !strings.HasSuffix(d.Comment, "é漢") {
		t.Fatalf("comment ends with %q", d.Comment[len(d.Comment)-10:])
	}
	a.Title = strings.Repeat("x", MaxCommentLength)
	if d := set.Evaluate(a, nil); d.Comment != a.Title {
		t.Fatal("a comment of exactly the cap was changed")
	}
}

func TestActions(t *testing.T) {
	t.Parallel()
	for _, a := range Actions {
		if a.SendsComment() == (a == ActionIgnore) {
			t.Errorf("%s.SendsComment() = %v", a, a.SendsComment())
		}
	}
	if Action("bogus").SendsComment() {
		t.Error("an unknown action sends a comment")
	}
}

// TestEvaluateConcurrent runs one set from many goroutines (run with -race).
func TestEvaluateConcurrent(t *testing.T) {
	t.Parallel()
	set := mustSet(t, `
rules:
  - name: dc
    when: '"domain-controller" in machine.tags'
    action: ignore
  - name: high
    when: alert.severity == "high"
    comment: '{{ .Alert.ID }} {{ .Machine.Name }}'
`)
	done := make(chan struct{})
	for g := range 4 {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := range 200 {
				a := testAlert()
				m := &alert.Machine{Name: "m"}
				if (g+i)%2 == 0 {
					m.Tags = []string{"domain-controller"}
				}
				d := set.Evaluate(a, m)
				if (g+i)%2 == 0 && d.Rule != "dc" || (g+i)%2 == 1 && d.Comment != testAlertID+" m" {
					t.Errorf("decision %+v", d)
					return
				}
			}
		}()
	}
	for range 4 {
		<-done
	}
}
