package app

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/responder-dev/responder/audit"
	"github.com/responder-dev/responder/defender"
	"github.com/responder-dev/responder/rules"
)

// The closed sets are typed once (audit's decisions, outcomes, states and
// final statuses; rules.Actions; defender.MachineActions); the metric label
// sets are derived from them. These tests hold the rest to them: the
// machine action table and the README's tables and lists.

func names[T ~string](set []T) []string {
	out := make([]string, len(set))
	for i, v := range set {
		out[i] = string(v)
	}
	return out
}

// TestRuleActionsAreMachineActions: every action a rule may ask for, but
// ignore, is a machine action the client knows how to send.
func TestRuleActionsAreMachineActions(t *testing.T) {
	t.Parallel()
	for _, a := range rules.Actions {
		spec, ok := defender.MachineActionByName(string(a))
		switch {
		case a == rules.ActionIgnore && ok:
			t.Errorf("ignore is a machine action")
		case a != rules.ActionIgnore && !ok:
			t.Errorf("rule action %s has no machine action in defender.MachineActions", a)
		case ok && (spec.Type == "" || spec.Path == "" || spec.Permission == ""):
			t.Errorf("machine action %s is incomplete: %+v", a, spec)
		}
	}
}

func readme(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestReadmeListsTheClosedSets: the README's metric table, glossary and
// rule actions name exactly the values of each closed set, in order.
func TestReadmeListsTheClosedSets(t *testing.T) {
	t.Parallel()
	text := readme(t)
	metricLabel := func(metric, label string) []string {
		t.Helper()
		re := regexp.MustCompile("(?m)^\\| `" + regexp.QuoteMeta(metric) + "` \\|.*`" + label + "` \\(([^)]*)\\)")
		m := re.FindStringSubmatch(text)
		if m == nil {
			t.Fatalf("README: no %s row with the %s values", metric, label)
		}
		return strings.Split(m[1], ", ")
	}
	backticked := func(s string) []string {
		var out []string
		for _, m := range regexp.MustCompile("`([a-z_A-Z]+)`").FindAllStringSubmatch(s, -1) {
			out = append(out, m[1])
		}
		return out
	}
	between := func(from, to string) string {
		t.Helper()
		i := strings.Index(text, from)
		j := strings.Index(text[i+1:], to)
		if i < 0 || j < 0 {
			t.Fatalf("README: %q ... %q not found", from, to)
		}
		return text[i : i+1+j]
	}
	for _, c := range []struct {
		what string
		got  []string
		want []string
	}{
		{"decisions_total decisions", metricLabel("responder_decisions_total", "decision"), names(audit.Decisions())},
		{"collections_total outcomes", metricLabel("responder_collections_total", "outcome"), names(audit.Outcomes())},
		{"machine_actions_finished_total statuses", metricLabel("responder_machine_actions_finished_total", "status"), names(audit.Finals())},
		{"the glossary's decisions", backticked(between("- **decision**:", "with the reason")), names(audit.Decisions())},
		{"the glossary's action statuses", backticked(between("- **machine action**:", "\n\n")), names(audit.Finals()[:4])},
		{"the rule actions", backticked(between("Actions: `collect_investigation_package`", "Rule files are watched")), names(rules.Actions)},
	} {
		if !slices.Equal(c.got, c.want) {
			t.Errorf("README %s: %v, want %v", c.what, c.got, c.want)
		}
	}
}
