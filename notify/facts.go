package notify

import (
	"fmt"
	"net/url"
	"strings"
	"time"
)

// fact is one labelled value of a human message: a Slack field, a Teams
// fact. Values are raw; each format cleans, escapes and caps them.
type fact struct {
	label, value string
}

// maxFactRunes caps one raw fact value (an alert title can be long; a
// message is read at a glance).
const maxFactRunes = 300

// facts lists what a human message shows besides its summary, most
// important first; facts that do not apply are left out.
func (e Event) facts() []fact {
	var fs []fact
	add := func(label, value string) {
		if value = clip(value, maxFactRunes); value != "" {
			fs = append(fs, fact{label, value})
		}
	}
	if a := e.Alert; a != nil {
		add("Alert", a.ID+parenthesised(a.Severity, a.Source))
		add("Title", a.Title)
	}
	if m := e.Machine; m != nil {
		if m.Name != "" && m.ID != "" {
			add("Machine", m.Name+" ("+m.ID+")")
		} else {
			add("Machine", firstNonEmpty(m.Name, m.ID))
		}
	}
	add("Rule", e.Rule)
	if e.Action != "" {
		add("Action", actionVerb(e.Action))
	}
	decision := e.Decision
	if e.DryRun {
		decision = strings.TrimSpace(decision + " (dry run)")
	}
	add("Decision", decision)
	add("Status", e.Status)
	add("Outcome", e.Outcome)
	add("Duration", e.duration())
	add("Action id", e.ActionID)
	if p := e.Package; p != nil {
		add("Package", fmt.Sprintf("%s (%d bytes)", humanBytes(p.Bytes), p.Bytes))
		add("SHA-256", p.SHA256)
	}
	add("Missing permissions", strings.Join(e.MissingPermissions, ", "))
	add("Reason", e.Reason)
	if a := e.Approval; a != nil {
		add("Approval", a.ID)
		if !a.ExpiresAt.IsZero() {
			add("Expires", a.ExpiresAt.UTC().Format(time.RFC3339))
		}
		add("Answered by", a.By)
	}
	add("Tenant", e.Tenant)
	return fs
}

// parenthesised is " (a, b)" of the non-empty values, or "".
func parenthesised(values ...string) string {
	var parts []string
	for _, v := range values {
		if v != "" {
			parts = append(parts, v)
		}
	}
	if len(parts) == 0 {
		return ""
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

// maxLinkBytes caps a link a message carries (Slack's button url limit).
const maxLinkBytes = 3000

// approvalLink returns the approval page's URL when the event carries one
// that is safe to make a button of: http(s), with a host, one line, not
// too long. It is the approvers' credential, shown only to the channel
// that was configured to receive approval requests.
func (e Event) approvalLink() string {
	if e.Approval == nil || e.Approval.URL == "" || len(e.Approval.URL) > maxLinkBytes {
		return ""
	}
	u, err := url.Parse(e.Approval.URL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return ""
	}
	return u.String()
}

// footer is the small print of a message: when, who, which event.
func (e Event) footer() []string {
	parts := []string{}
	if !e.Time.IsZero() {
		parts = append(parts, e.Time.UTC().Format("2006-01-02 15:04:05 UTC"))
	}
	parts = append(parts, "responder", "event "+clip(e.ID, maxNameRunes))
	return parts
}
