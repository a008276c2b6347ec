package pipeline

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"text/template"
	"time"

	"github.com/responder-dev/responder/alert"
	"github.com/responder-dev/responder/defender"
	"github.com/responder-dev/responder/notify"
)

// The write-back (SPEC 13, defender.write_back): when the machine action
// of a Defender or Graph alert ends, a comment on that alert says how. It
// is delivered as a notifier of its own (WriteBackName), so it is durable,
// retried, ordered and counted like every notification, and never holds up
// a collection; the Defender client puts it under its own quota group.

// WriteBackName is the notifier name of the write-back (a metric label);
// no configured notifier may take it.
const WriteBackName = "write-back"

// DefaultWriteBackComment is the default of defender.write_back_comment: a
// text/template over the event (notify.Event).
const DefaultWriteBackComment = `responder: investigation package collection {{.Status}} (machine action {{.ActionID}})` +
	`{{with .Package}}, package sha256 {{.SHA256}}{{end}}{{with .Reason}}: {{.}}{{end}}`

// ParseWriteBackComment compiles a write-back comment template and tries it
// on sample events, so that a bad template is refused at load, not at the
// end of an action.
func ParseWriteBackComment(text string) (*template.Template, error) {
	t, err := template.New("write_back_comment").Option("missingkey=error").Parse(text)
	if err != nil {
		return nil, err
	}
	for _, k := range []notify.Kind{notify.Collected, notify.Failed} {
		var b strings.Builder
		if err := t.Execute(&b, notify.Sample(k, time.Unix(1767225600, 0).UTC())); err != nil {
			return nil, fmt.Errorf("on a sample %s event: %w", k, err)
		}
	}
	return t, nil
}

type writeBack struct {
	p    *Pipeline
	api  defender.AlertCommenter
	tmpl *template.Template
}

// WriteBack returns the write-back notifier, to be put in force with the
// others (SetNotifiers).
func (p *Pipeline) WriteBack(api defender.AlertCommenter, tmpl *template.Template) notify.Notifier {
	return &writeBack{p: p, api: api, tmpl: tmpl}
}

func (w *writeBack) Name() string { return WriteBackName }
func (w *writeBack) Type() string { return "write_back" }

func (w *writeBack) Wants(k notify.Kind, _ string) bool {
	return k == notify.Collected || k == notify.Failed
}

// Takes an action's end on an alert Defender or Graph can comment;
// Alertmanager and Grafana alerts have no write-back.
func (w *writeBack) Takes(ev notify.Event) bool {
	if !w.Wants(ev.Kind, ev.Rule) || ev.ActionID == "" || ev.Alert == nil {
		return false
	}
	s := alert.Source(ev.Alert.Source)
	return s == alert.SourceDefender || s == alert.SourceGraph
}

// Send comments the alert of ev.
func (w *writeBack) Send(ctx context.Context, ev notify.Event) (notify.Answer, error) {
	ref, err := w.ref(ctx, ev)
	if err != nil {
		return notify.Answer{}, &notify.Error{Class: notify.Retryable, Err: err}
	}
	var b strings.Builder
	if err := w.tmpl.Execute(&b, ev); err != nil {
		return notify.Answer{}, &notify.Error{Class: notify.Permanent, Err: fmt.Errorf("rendering the comment: %w", err)}
	}
	if err := w.api.CommentAlert(ctx, ref, b.String()); err != nil {
		return notify.Answer{}, classifyDefender(err)
	}
	return notify.Answer{Status: 200, Body: "commented " + string(ref.Source) + " alert " + ref.ID}, nil
}

// ref names the alert to comment: a Graph alert by its Graph id, which
// the normalised id (the MDE id, when Graph gives one) is not.
func (w *writeBack) ref(ctx context.Context, ev notify.Event) (defender.AlertRef, error) {
	ref := defender.AlertRef{Source: alert.Source(ev.Alert.Source), ID: ev.Alert.ID}
	if ref.Source != alert.SourceGraph {
		return ref, nil
	}
	e, err := w.p.store.Entry(ctx, ev.AuditID)
	if err != nil {
		return ref, err
	}
	a, _, err := w.p.store.Alert(ctx, e.AlertRowID)
	if err != nil {
		return ref, err
	}
	if r, ok := defender.WriteBackRef(a); ok {
		return r, nil
	}
	return ref, nil
}

// classifyDefender turns a Defender error into the delivery's: a 429 waits
// as asked, a transient failure or a spent quota is retried, the rest
// (forbidden, alert not found, refused) is final.
func classifyDefender(err error) error {
	if errors.Is(err, defender.ErrQuotaWait) {
		return &notify.Error{Class: notify.Retryable, Err: err}
	}
	var de *defender.Error
	if errors.As(err, &de) {
		switch de.Outcome {
		case defender.OutcomeRateLimited:
			return &notify.Error{Class: notify.RateLimited, RetryAfter: de.RetryAfter, Status: de.StatusCode, Err: err}
		case defender.OutcomeRetryable:
			return &notify.Error{Class: notify.Retryable, Status: de.StatusCode, Err: err}
		}
		return &notify.Error{Class: notify.Permanent, Status: de.StatusCode, Err: err}
	}
	return &notify.Error{Class: notify.Retryable, Err: err}
}
