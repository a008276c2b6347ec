package testkit

import "fmt"

// GeneratedRule is the condition of rule i of the generated rule sets the
// benchmarks and the guard tests decide with (rules, replay, loadbench):
// equality, `in`, a case-insensitive regular expression and a machine tag,
// in turn. Rule i matches only an alert made for it (category
// "Category<i>", detection source "Source<i>", a title with
// "campaign-<i>", or the machine tag "tag-<i>"), so that most alerts run
// through every rule.
func GeneratedRule(i int) string {
	switch i % 4 {
	case 0:
		return fmt.Sprintf(`alert.category == "Category%d" && alert.severity == "high"`, i)
	case 1:
		return fmt.Sprintf(`alert.severity in ["critical", "high"] && alert.detection_source in ["Source%d", "Other%d"]`, i, i)
	case 2:
		return fmt.Sprintf(`alert.title matches "(?i)campaign-%d\\b"`, i)
	default:
		return fmt.Sprintf(`"tag-%d" in machine.tags && alert.severity != "informational"`, i)
	}
}
