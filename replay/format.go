package replay

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/responder-dev/responder/audit"
)

// ListLimit is how many newly collected and newly spared alerts the table
// and markdown forms list; the JSON form lists all.
const ListLimit = 50

// WriteTable writes the report for a terminal.
func (r *Report) WriteTable(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "Replayed %d decided alerts from %s to %s (%s).\n", r.Alerts, stamp(r.Window.From), stamp(r.Window.To), r.sourceText())
	r.notes(&b, "")
	fmt.Fprintf(&b, "%d alerts change decision.\n\n", r.Changed)
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DECISION\tCURRENT\tCANDIDATE\tCHANGE")
	for _, d := range audit.Decisions() {
		cur, cand := r.Decisions.Current[d], r.Decisions.Candidate[d]
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\n", d, cur, cand, delta(cur, cand))
	}
	_ = tw.Flush()
	if len(r.Transitions) > 0 {
		b.WriteString("\n")
		tw = tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "FROM\tTO\tALERTS")
		for _, t := range r.Transitions {
			fmt.Fprintf(tw, "%s\t%s\t%d\n", t.From, t.To, t.Count)
		}
		_ = tw.Flush()
	}
	b.WriteString("\n")
	tw = tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RULE\tCURRENT\tCANDIDATE\tCHANGE")
	for _, h := range r.Rules {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\n", h.Name, h.Current, h.Candidate, delta(h.Current, h.Candidate))
	}
	_ = tw.Flush()
	changesTable(&b, "Newly collected", r.NewlyCollected)
	changesTable(&b, "Newly spared", r.NewlySpared)
	fmt.Fprintf(&b, "\n%s\n", r.quotaText())
	_, err := io.WriteString(w, b.String())
	return err
}

func changesTable(b *strings.Builder, title string, changes []Change) {
	if len(changes) == 0 {
		return
	}
	fmt.Fprintf(b, "\n%s: %d%s\n", title, len(changes), more(len(changes)))
	tw := tabwriter.NewWriter(b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DECIDED AT\tSOURCE\tALERT\tMACHINE\tWAS\tNOW\tRULE\tREASON")
	for _, c := range changes[:min(len(changes), ListLimit)] {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", stamp(c.DecidedAt), c.Source, c.AlertID, machineText(c),
			c.CurrentDecision, c.Decision, dash(c.Rule), c.Reason)
	}
	_ = tw.Flush()
}

// WriteMarkdown writes the report for a pull request comment.
func (r *Report) WriteMarkdown(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "### responder replay: %d of %d alerts change decision\n\n", r.Changed, r.Alerts)
	fmt.Fprintf(&b, "Decisions taken from %s to %s (%s), decided again with the candidate rules.\n", stamp(r.Window.From), stamp(r.Window.To), r.sourceText())
	r.notes(&b, "> ")
	b.WriteString("\n| Decision | Current | Candidate | Change |\n|---|---:|---:|---:|\n")
	for _, d := range audit.Decisions() {
		cur, cand := r.Decisions.Current[d], r.Decisions.Candidate[d]
		fmt.Fprintf(&b, "| `%s` | %d | %d | %s |\n", d, cur, cand, delta(cur, cand))
	}
	if len(r.Transitions) > 0 {
		b.WriteString("\n| From | To | Alerts |\n|---|---|---:|\n")
		for _, t := range r.Transitions {
			fmt.Fprintf(&b, "| `%s` | `%s` | %d |\n", t.From, t.To, t.Count)
		}
	}
	b.WriteString("\n| Rule | Current | Candidate | Change |\n|---|---:|---:|---:|\n")
	for _, h := range r.Rules {
		fmt.Fprintf(&b, "| %s | %d | %d | %s |\n", cell(h.Name), h.Current, h.Candidate, delta(h.Current, h.Candidate))
	}
	changesMarkdown(&b, "Newly collected", r.NewlyCollected)
	changesMarkdown(&b, "Newly spared", r.NewlySpared)
	fmt.Fprintf(&b, "\n%s\n", r.quotaText())
	_, err := io.WriteString(w, b.String())
	return err
}

func changesMarkdown(b *strings.Builder, title string, changes []Change) {
	if len(changes) == 0 {
		return
	}
	fmt.Fprintf(b, "\n<details><summary>%s: %d%s</summary>\n\n", title, len(changes), more(len(changes)))
	b.WriteString("| Decided at | Source | Alert | Machine | Was | Now | Rule | Reason |\n|---|---|---|---|---|---|---|---|\n")
	for _, c := range changes[:min(len(changes), ListLimit)] {
		fmt.Fprintf(b, "| %s | %s | %s | %s | `%s` | `%s` | %s | %s |\n", stamp(c.DecidedAt), c.Source, cell(c.AlertID), cell(machineText(c)),
			c.CurrentDecision, c.Decision, cell(dash(c.Rule)), cell(c.Reason))
	}
	b.WriteString("\n</details>\n")
}

// notes says what was not replayed as recorded, one line each.
func (r *Report) notes(b *strings.Builder, prefix string) {
	if r.Undecided > 0 {
		fmt.Fprintf(b, "%s%d alerts received in the window have no decision yet (still queued) and are not replayed.\n", prefix, r.Undecided)
	}
	if r.UnknownAttributes > 0 {
		fmt.Fprintf(b, "%s%d alerts could not be evaluated by the candidate: its rules read machine.* and no machine snapshot was kept with their decision (they are no_match, not evaluated).\n", prefix, r.UnknownAttributes)
	}
}

func (r *Report) quotaText() string {
	q := r.Quota
	s := fmt.Sprintf("MDE quota of collection requests: peak %d per minute (quota %d), %d per hour (quota %d)", q.PeakPerMinute, q.PerMinute, q.PeakPerHour, q.PerHour)
	if q.LateCollections == 0 {
		return s + "; no collection would have waited for the quota."
	}
	return s + fmt.Sprintf("; %d collections would have waited for the quota, up to %s.", q.LateCollections, (time.Duration(q.MaxDelaySeconds*float64(time.Second))).Round(time.Second))
}

func (r *Report) sourceText() string {
	if r.Source == "" {
		return "all sources"
	}
	return "source " + r.Source
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

func delta(cur, cand int) string {
	switch d := cand - cur; {
	case d > 0:
		return fmt.Sprintf("+%d", d)
	case d < 0:
		return fmt.Sprintf("%d", d)
	}
	return "0"
}

func more(n int) string {
	if n > ListLimit {
		return fmt.Sprintf(" (the first %d; --format json lists all)", ListLimit)
	}
	return ""
}

func machineText(c Change) string {
	if c.MachineName != "" && c.MachineName != c.MachineID {
		return c.MachineName + " (" + c.MachineID + ")"
	}
	return c.MachineID
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// cell escapes a markdown table cell.
func cell(s string) string {
	return strings.NewReplacer("|", `\|`, "\n", " ", "\r", " ").Replace(s)
}
