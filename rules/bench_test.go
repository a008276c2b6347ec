package rules

import (
	"fmt"
	"strings"
	"testing"

	"github.com/expr-lang/expr/vm"

	"github.com/responder-dev/responder/alert"
)

// benchRules generates n rules mixing equality, `in`, regular expressions
// and tag membership, of which only the last matches benchAlert.
func benchRules(n int) string {
	var b strings.Builder
	b.WriteString("rules:\n")
	for i := range n - 1 {
		var when string
		switch i % 4 {
		case 0:
			when = fmt.Sprintf(`alert.category == "Category%d" && alert.severity == "high"`, i)
		case 1:
			when = fmt.Sprintf(`alert.severity in ["critical", "high"] && alert.detection_source in ["Source%d", "Other%d"]`, i, i)
		case 2:
			when = fmt.Sprintf(`alert.title matches "(?i)campaign-%d\\b"`, i)
		case 3:
			when = fmt.Sprintf(`"tag-%d" in machine.tags && alert.severity != "informational"`, i)
		}
		fmt.Fprintf(&b, "  - name: rule-%d\n    when: '%s'\n", i, when)
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
