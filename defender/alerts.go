package defender

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/responder-dev/responder/alert"
)

// AlertRef names the alert a comment goes to (write-back, SPEC 13): a
// Defender alert (Source alert.SourceDefender, ID its MDE id) or a Graph
// alerts_v2 alert (alert.SourceGraph, ID its Graph id).
type AlertRef struct {
	Source alert.Source
	ID     string
}

// WriteBackRef returns the alert that a comment about a should go to, and
// false when a's source has no alert to comment on (Alertmanager, Grafana).
// A Graph alert is commented under its Graph id; an alert decoded before
// GraphID existed falls back to its ID.
func WriteBackRef(a *alert.Alert) (AlertRef, bool) {
	if a == nil {
		return AlertRef{}, false
	}
	switch a.Source {
	case alert.SourceDefender:
		return AlertRef{Source: alert.SourceDefender, ID: a.ID}, true
	case alert.SourceGraph:
		id := a.GraphID
		if id == "" {
			id = a.ID
		}
		return AlertRef{Source: alert.SourceGraph, ID: id}, true
	}
	return AlertRef{}, false
}

// AlertCommenter writes a comment on the alert an action came from.
// *Client implements it.
type AlertCommenter interface {
	CommentAlert(ctx context.Context, ref AlertRef, comment string) error
}

// AlertCommenterFunc adapts a function to AlertCommenter.
type AlertCommenterFunc func(ctx context.Context, ref AlertRef, comment string) error

// CommentAlert calls f.
func (f AlertCommenterFunc) CommentAlert(ctx context.Context, ref AlertRef, comment string) error {
	return f(ctx, ref, comment)
}

var _ AlertCommenter = (*Client)(nil)

// MaxCommentLength caps a comment, in characters (SPEC 6.1's cap of a
// rendered comment); CommentAlert cuts a longer one.
const MaxCommentLength = 1000

// maxAlertID bounds an alert id. MDE ids are about 30 characters
// (da637472900382838869_-880718168), Graph ids the same or a GUID.
const maxAlertID = 128

// The bodies of the two comment calls. MDE names the key "comment" in lower
// case (the update-alert page's example); Graph needs the @odata.type.
type (
	alertUpdateBody struct {
		Comment string `json:"comment"`
	}
	graphCommentBody struct {
		ODataType string `json:"@odata.type"`
		Comment   string `json:"comment"`
	}
)

// graphAlertCommentType is the @odata.type of a Graph alert comment.
const graphAlertCommentType = "microsoft.graph.security.alertComment"

// CommentAlert adds comment to the alert ref names (SPEC 13): for a
// Defender alert PATCH {api}/api/alerts/{id} {"comment": ...} (quota group
// GroupAlerts, permission PermissionAlertReadWrite); for a Graph alert POST
// {graph}/v1.0/security/alerts_v2/{id}/comments (GroupGraphAlerts, a Graph
// token, PermissionSecurityAlertReadWrite). A comment longer than
// MaxCommentLength characters is cut.
//
// The id is checked before any request (1 to 128 letters, digits, '_', '.'
// or '-'; ErrInvalidID). An unknown alert is a permanent error wrapping
// ErrAlertNotFound; other failures are classified like every call. A
// comment is not idempotent: after a retryable error whose NotSent is false
// it may have been added, and a retry adds it again. Without
// Config.WriteBack nothing is sent (ErrWriteBackDisabled).
func (c *Client) CommentAlert(ctx context.Context, ref AlertRef, comment string) error {
	var op string
	switch ref.Source {
	case alert.SourceDefender:
		op = opUpdateAlert
	case alert.SourceGraph:
		op = opAlertComment
	default:
		return invalid("comment_alert", fmt.Sprintf("alerts of source %q take no comment", clean(string(ref.Source))), ErrInvalidArgument)
	}
	if !c.cfg.WriteBack {
		return invalid(op, "write-back is off (defender.write_back)", ErrWriteBackDisabled)
	}
	if !validAlertID(ref.ID) {
		return invalid(op, fmt.Sprintf("alert id %s: want 1 to %d letters, digits, '_', '.' or '-'", quoteCapped(ref.ID), maxAlertID), ErrInvalidID)
	}
	if strings.TrimSpace(comment) == "" {
		return invalid(op, "comment is required", ErrInvalidArgument)
	}
	comment = capComment(comment)
	r := request{op: op, kind: kindAlert, alertID: ref.ID, ignoreAnswer: true}
	var body any
	if ref.Source == alert.SourceDefender {
		r.group, r.method, r.url = GroupAlerts, http.MethodPatch, c.endpoint("api", "alerts", ref.ID)
		body = alertUpdateBody{Comment: comment}
	} else {
		r.group, r.method, r.url = GroupGraphAlerts, http.MethodPost, c.graphEndpoint("v1.0", "security", "alerts_v2", ref.ID, "comments")
		r.tokens = c.graphTokens
		body = graphCommentBody{ODataType: graphAlertCommentType, Comment: comment}
	}
	data, err := marshalBody(body)
	if err != nil {
		return invalid(op, "cannot encode the body", err)
	}
	r.body = data
	if _, err := c.send(ctx, r); err != nil {
		return err
	}
	c.logger.Debug("defender alert commented", r.fields()...)
	return nil
}

// validAlertID accepts 1 to maxAlertID letters, digits, '_', '.' and '-',
// but not "." or "..": a dot segment would change the path it is put in.
func validAlertID(id string) bool {
	if id == "" || len(id) > maxAlertID || strings.Trim(id, ".") == "" {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || c == '_' || c == '.' || c == '-') {
			return false
		}
	}
	return true
}

// capComment cuts s to MaxCommentLength characters, on a character
// boundary.
func capComment(s string) string {
	if utf8.RuneCountInString(s) <= MaxCommentLength {
		return s
	}
	n := 0
	for i := range s {
		if n == MaxCommentLength {
			return s[:i]
		}
		n++
	}
	return s
}

// quoteCapped quotes s for an error message, cut to 64 bytes.
func quoteCapped(s string) string {
	const maxQuoted = 64
	if len(s) > maxQuoted {
		return fmt.Sprintf("%q…", s[:maxQuoted])
	}
	return fmt.Sprintf("%q", s)
}
