package rules

import (
	"fmt"
	"strings"
	"testing"

	"github.com/expr-lang/expr/vm"

	"github.com/responder-dev/responder/alert"
	"github.com/responder-dev/responder/internal/testkit"
)

// benchRules generates n rules mixing equality, `in`, regular expressions
// and tag membership, of which only the last matches benchAlert.
func benchRules(n int) string {
	var b strings.Builder
	b.WriteString("rules:\n")
	for i := range n - 1 {
		fmt.Fprintf(&b, "  - name: rule-%d\n    when: '%s'\n", i, testkit.GeneratedRule(i))
	}
	b.WriteString(`  - name: last
    when: 'alert.category == "Malware" && "workstation" in machine.tags && alert.title matches "(?i)emotet"'
`)
	return b.String()
}

func benchAlert() (*alert.Alert, *alert.Machine) {
	a := testAlert()
	a.Category = "Malware"
	a.Title = "'Emotet' malware was detected during a scheduled scan of the file system"
	a.DetectionSource = "WindowsDefenderAv"
	m := &alert.Machine{
		ID:   testMachineID,
		Name: "fin-ws-0142.corp.contoso.com",
		Tags: []string{"finance", "emea", "windows11", "vip-floor-3", "workstation"},
	}
	return a, m
}

func BenchmarkEvaluate(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			set := mustSet(b, benchRules(n))
			a, m := benchAlert()
			if d := set.Evaluate(a, m); d.Rule != "last" || len(d.Errors) != 0 {
				b.Fatalf("decision %+v, want rule last", d)
			}
			b.ReportAllocs()
			for b.Loop() {
				set.Evaluate(a, m)
			}
		})
	}
}

// TestBenchRulesOnlyLastMatches keeps the benchmark honest: every rule is
// evaluated, and only the last one is true.
func TestBenchRulesOnlyLastMatches(t *testing.T) {
	t.Parallel()
	set := mustSet(t, benchRules(100))
	a, m := benchAlert()
	e := &env{Alert: *a, Machine: *m}
	for i, r := range set.active {
		out, err := vm.Run(r.program, e)
		if err != nil || out != (i == len(set.active)-1) {
			t.Fatalf("rule %s gives %v, %v", r.name, out, err)
		}
	}
}
