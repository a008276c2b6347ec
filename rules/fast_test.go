package rules

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/expr-lang/expr/vm"

	"github.com/responder-dev/responder/alert"
)

// fastCorpus holds conditions that exercise every rewrite of accelerate and
// the cases where it must stand aside.
var fastCorpus = []string{
	`alert.severity == "high"`,
	`alert.severity != "high" && alert.category == "Malware"`,
	`alert.severity in ["high", "critical"]`,
	`alert.severity not in ["high", "critical"]`,
	`alert.severity in ["high", 1]`,
	`alert.severity in machine.tags`,
	`"workstation" in machine.tags`,
	`"workstation" not in machine.tags`,
	`"T1003" in alert.mitre_techniques || any(alert.mitre_techniques, # startsWith "T1003.")`,
	`alert.title matches "(?i)emotet"`,
	`alert.title matches "Emotet"`,
	`alert.title matches "(?i)^'emotet' malware"`,
	`alert.title matches "(?i)kelvin"`,
	`alert.title matches "(?i)(ransom|crypt)"`,
	`alert.title matches "(?i)é+t"`,
	`alert.title matches "x{2,}y"`,
	`alert.title matches "(?i)(emo)+tet\\b"`,
	`alert.machine_name matches "(?i)^fin-"`,
	`alert.title contains "Emotet" && alert.title startsWith "'"`,
	`len(alert.title) > 10 && len(machine.tags) >= 2`,
	`alert.labels["team"] == "security"`,
	`alert.labels.team == "security"`,
	`"team" in alert.labels`,
	`alert.source == "defender" && alert.source in ["defender", "graph"]`,
	`alert.source matches "^def"`,
	`alert.created_at > now() - duration("24h")`,
	`alert.created_at.Year() == 2021`,
	`upper(alert.severity) == "HIGH"`,
	`alert.severity + "!" == "high!"`,
	`alert.severity < "m"`,
	`alert.severity[0:1] == "h"`,
	`(machine.risk_score ?? "none") == "High"`,
	`$env.alert.severity == "high"`,
	`$env["machine"].group == "Finance"`,
	`let s = alert.severity; s == "high" || s == "critical"`,
	`let tags = machine.tags; "vip" in tags`,
	`int(alert.labels["count"]) > 3`,
	`alert.labels["count"] matches "^[0-9]+$"`,
	`filter(machine.tags, # matches "(?i)^WORK") != []`,
	`alert.status == "resolved" ? machine.group == "Finance" : alert.severity == "high"`,
	`// a comment
	alert.severity == "high" /* another */`,
}

func fastAlerts() []struct {
	a *alert.Alert
	m *alert.Machine
} {
	base := func() (*alert.Alert, *alert.Machine) {
		a, m := benchAlert()
		a.CreatedAt = time.Date(2021, 1, 26, 20, 33, 57, 0, time.UTC)
		m.Group = "Finance"
		return a, m
	}
	var out []struct {
		a *alert.Alert
		m *alert.Machine
	}
	add := func(f func(a *alert.Alert, m *alert.Machine)) {
		a, m := base()
		f(a, m)
		out = append(out, struct {
			a *alert.Alert
			m *alert.Machine
		}{a, m})
	}
	add(func(*alert.Alert, *alert.Machine) {})
	add(func(a *alert.Alert, m *alert.Machine) { a.Severity, a.Category = "low", "Ransomware"; m.Tags = nil })
	add(func(a *alert.Alert, m *alert.Machine) { a.Title = "\u212Aelvin is watching" }) // Kelvin sign folds onto k
	add(func(a *alert.Alert, m *alert.Machine) {
		a.Title = "ÉÉT and crypt0"
		a.Labels = map[string]string{"team": "security", "count": "7"}
	})
	add(func(a *alert.Alert, m *alert.Machine) {
		a.Labels = map[string]string{"count": "many"}
		a.Source = alert.SourceGraph
	})
	add(func(a *alert.Alert, m *alert.Machine) {
		a.Title = "xxxy EMOEMOTET!"
		a.MitreTechniques = []string{"T1003.001"}
	})
	add(func(a *alert.Alert, m *alert.Machine) {
		*a = alert.Alert{Status: alert.StatusResolved}
		*m = alert.Machine{}
	})
	add(func(a *alert.Alert, m *alert.Machine) {
		a.Severity = "critical"
		m.Tags = []string{"vip", "WORKSTATION"}
		m.RiskScore = "High"
	})
	return out
}

func runProgram(p *vm.Program, e any) (bool, error) {
	out, err := vm.Run(p, e)
	if err != nil {
		return false, err
	}
	b, ok := out.(bool)
	if !ok {
		return false, fmt.Errorf("result %T", out)
	}
	return b, nil
}

// TestFastEquivalence checks that the accelerated per-rule programs and the
// chunk programs decide exactly like the programs compiled as written.
func TestFastEquivalence(t *testing.T) {
	t.Parallel()
	var b strings.Builder
	b.WriteString("rules:\n")
	for i, w := range fastCorpus {
		fmt.Fprintf(&b, "  - name: r%d\n    on_resolved: true\n    when: |\n", i)
		for _, line := range strings.Split(w, "\n") {
			fmt.Fprintf(&b, "      %s\n", strings.TrimSpace(line))
		}
	}
	set := mustSet(t, b.String())
	if len(set.activeChunks) != 1 || set.activeChunks[0].program == nil {
		t.Fatal("the corpus did not compile into one chunk")
	}
	for ai, c := range fastAlerts() {
		ref := &env{Alert: *c.a, Machine: *c.m}
		e := &env{Alert: *c.a, Machine: *c.m}
		first, firstErrs := -1, []string(nil)
		for i, r := range set.active {
			if r.program == r.reference {
				t.Errorf("rule %q: no accelerated program", r.when)
			}
			want, wantErr := runProgram(r.reference, ref)
			got, gotErr := runProgram(r.program, e)
			if want != got || (wantErr == nil) != (gotErr == nil) {
				t.Errorf("alert %d, %q: reference %v, %v; accelerated %v, %v", ai, r.when, want, wantErr, got, gotErr)
			}
			// A failing guard skips the rule: only right when the rule is
			// false, and without an error to report.
			if !r.guard.pass(e) && (want || wantErr != nil) {
				t.Errorf("alert %d, %q: the guard fails, the reference gives %v, %v", ai, r.when, want, wantErr)
			}
			if wantErr != nil && first < 0 {
				firstErrs = append(firstErrs, r.name)
			}
			if want && first < 0 {
				first = i
			}
		}
		d := set.Evaluate(c.a, c.m)
		wantRule := ""
		if first >= 0 {
			wantRule = set.active[first].name
		}
		var gotErrs []string
		for _, e := range d.Errors {
			gotErrs = append(gotErrs, e.Rule)
		}
		if d.Rule != wantRule || fmt.Sprint(gotErrs) != fmt.Sprint(firstErrs) {
			t.Errorf("alert %d: decided by %q with errors %v, want %q with errors %v", ai, d.Rule, gotErrs, wantRule, firstErrs)
		}
	}
}

func TestRegexpPrefilter(t *testing.T) {
	t.Parallel()
	cases := []struct {
		pattern, literal string
		fold             bool
	}{
		{`(?i)campaign-2\b`, "campaign-2", true},
		{`Emotet`, "Emotet", false},
		{`^a(bc)+d`, "bc", false},
		{`(?i)é+`, "", false},
		{`a|b`, "", false},
		{`(?i)x{2,}yz`, "yz", true},
	}
	for _, tc := range cases {
		f, err := newFastRegexp(tc.pattern)
		if err != nil {
			t.Fatal(err)
		}
		if f.literal != tc.literal || f.fold != tc.fold {
			t.Errorf("%s: literal %q fold %v, want %q %v", tc.pattern, f.literal, f.fold, tc.literal, tc.fold)
		}
	}
	f, _ := newFastRegexp(`(?i)kelvin`)
	for s, want := range map[string]bool{"KELVIN": true, "a kElViN b": true, "kelvi": false, "\u212Aelvin": true, "": false} {
		e := &env{Alert: alert.Alert{Title: s}}
		folded := e.foldedField(cachedFieldIndex["alert.title"])
		if got := matchesFunc(s, f); got != want || matchesFoldedFunc(folded, f) != want || f.re.MatchString(s) != want {
			t.Errorf("%q: %v, want %v", s, got, want)
		}
	}
}

// TestGuards: the leading terms of four cheap forms become the guard, and
// nothing after a term of another form (it could fail at run time, and the
// error must still be reported).
func TestGuards(t *testing.T) {
	t.Parallel()
	cases := []struct {
		when  string
		terms int
	}{
		{`alert.severity == "high"`, 1},
		{`"high" == alert.severity`, 1},
		{`alert.category == "Malware" && alert.severity in ["high", "critical"] && "vip" in machine.tags`, 3},
		{`alert.category == "Malware" and alert.title matches "(?i)emotet"`, 2},
		{`alert.title matches "(?i)(ransom|crypt)"`, 0}, // no required literal
		{`alert.severity == "high" && int(alert.labels["count"]) > 3 && alert.category == "Malware"`, 1},
		{`int(alert.labels["count"]) > 3 && alert.severity == "high"`, 0},
		{`alert.severity == "high" || alert.category == "Malware"`, 0},
		{`alert.severity in ["high", 1]`, 0},
		{`alert.severity in machine.tags`, 0},
		{`"workstation" not in machine.tags`, 0},
		{`alert.labels["team"] == "security"`, 0},
		{`$env.alert.severity == "high"`, 0},
		{`let alert = machine; alert.name == "x"`, 0},
		{`(alert.source == "defender" && alert.severity == "high") && machine.group == "Finance"`, 3},
	}
	for _, tc := range cases {
		if got := len(compileGuard(tc.when)); got != tc.terms {
			t.Errorf("%q: %d guard terms, want %d", tc.when, got, tc.terms)
		}
	}
}

// TestGuardIndexEquivalence: over a set of many guarded rules (so that
// whole chunks are skipped), Evaluate decides exactly as the reference
// programs run one by one in order.
func TestGuardIndexEquivalence(t *testing.T) {
	t.Parallel()
	set := mustSet(t, benchRules(400))
	variants := []func(a *alert.Alert, m *alert.Machine){
		func(a *alert.Alert, m *alert.Machine) {},
		func(a *alert.Alert, m *alert.Machine) { a.Category, a.Severity = "Category8", "high" },
		func(a *alert.Alert, m *alert.Machine) { a.Category, a.Severity = "Category8", "low" },
		func(a *alert.Alert, m *alert.Machine) { a.DetectionSource, a.Severity = "Other9", "critical" },
		func(a *alert.Alert, m *alert.Machine) { a.DetectionSource, a.Severity = "Source301", "high" },
		func(a *alert.Alert, m *alert.Machine) { a.Title = "part of CAMPAIGN-10, again" },
		func(a *alert.Alert, m *alert.Machine) { a.Title = "campaign-10x is not a word boundary" },
		func(a *alert.Alert, m *alert.Machine) { a.Title = "\u212Aampaign-398 (a Kelvin sign)" },
		func(a *alert.Alert, m *alert.Machine) { m.Tags = []string{"tag-11"}; a.Severity = "low" },
		func(a *alert.Alert, m *alert.Machine) {
			m.Tags = []string{"tag-11", "tag-399"}
			a.Severity = "informational"
		},
		func(a *alert.Alert, m *alert.Machine) { m.Tags = nil; a.Category = "Malware" },
		func(a *alert.Alert, m *alert.Machine) {
			*a = alert.Alert{Status: alert.StatusResolved}
			*m = alert.Machine{}
		},
	}
	skipped := 0
	for vi, vary := range variants {
		a, m := benchAlert()
		vary(a, m)
		ref := &env{Alert: *a, Machine: *m}
		want := ""
		for _, r := range set.active {
			if r.onResolved || a.Status != alert.StatusResolved {
				if ok, err := runProgram(r.reference, ref); err == nil && ok {
					want = r.name
					break
				}
			}
		}
		if got := set.Evaluate(a, m); got.Rule != want {
			t.Errorf("variant %d: decided by %q, want %q", vi, got.Rule, want)
		}
		e := &env{Alert: *a, Machine: *m}
		bits := make([]uint64, (len(set.activeIndex.rules)+63)/64)
		set.activeIndex.passing(e, bits)
		for i := range set.activeChunks {
			if !set.activeChunks[i].mayMatch(bits) {
				skipped++
			}
		}
	}
	if skipped == 0 {
		t.Fatal("no chunk was ever skipped: the test does not exercise the guards")
	}
}
