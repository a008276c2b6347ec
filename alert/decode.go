package alert

import (
	"fmt"
	"strings"
)

// Format names a webhook body format: the endpoint it arrives on.
type Format string

// The supported formats. FormatDefender covers MDE API v1 alerts and Graph
// alerts_v2; FormatAlertmanager covers Alertmanager v4 and Grafana v1.
const (
	FormatDefender     Format = "defender"
	FormatAlertmanager Format = "alertmanager"
)

// formatNames lists every name ParseFormat accepts, in the order its error
// message gives them: each format's own name, and the name of each sender
// whose bodies it decodes.
var formatNames = []struct {
	name   string
	format Format
}{
	{string(FormatDefender), FormatDefender},
	{string(SourceGraph), FormatDefender},
	{string(FormatAlertmanager), FormatAlertmanager},
	{string(SourceGrafana), FormatAlertmanager},
}

// wantFormat ends the message of ParseFormat for an unknown name:
// "(want defender, graph, alertmanager or grafana)".
var wantFormat = func() string {
	names := make([]string, len(formatNames))
	for i, n := range formatNames {
		names[i] = n.name
	}
	last := len(names) - 1
	return "(want " + strings.Join(names[:last], ", ") + " or " + names[last] + ")"
}()

// ParseFormat checks a format name given by a user (CLI flag, query string),
// ignoring case and surrounding space. Besides the formats themselves it
// takes the name of a sender: "graph" is FormatDefender and "grafana" is
// FormatAlertmanager.
func ParseFormat(s string) (Format, error) {
	name := strings.ToLower(strings.TrimSpace(s))
	for _, n := range formatNames {
		if n.name == name {
			return n.format, nil
		}
	}
	return "", fmt.Errorf("unknown format %q %s", s, wantFormat)
}

// Problem is one alert of a body that cannot be processed: it is counted
// invalid and dropped while the rest of the body goes on.
type Problem struct {
	Path   string // where in the body, e.g. "value[2].machineId" or "alerts[3]"
	Reason string // what is wrong, e.g. "not a 40-character hexadecimal MDE machine id"
	// Source is the kind of the alert, empty when the decoder could not
	// tell it before finding the problem.
	Source Source
	// AlertID is the id of the alert, when it has one that is valid: empty
	// when the id itself is missing or is the problem (a malformed id is
	// not repeated outside Reason, where it is quoted and capped).
	AlertID string
}

// String formats the problem as "path: reason".
func (p Problem) String() string { return p.Path + ": " + p.Reason }

// Batch is what one webhook body decodes to.
type Batch struct {
	// Alerts holds one entry per alert and machine. An entry with neither
	// MachineID nor MachineName names no machine and cannot be acted upon.
	Alerts []Alert
	// Invalid lists the alerts that were dropped, with the reason.
	Invalid []Problem
}

// DecodeError says why a whole body was rejected: not JSON, not a supported
// schema, or a value of the wrong type. Its message says what and where.
type DecodeError struct {
	Path string // empty for the body as a whole
	Msg  string
}

// Error formats the problem as "path: message".
func (e *DecodeError) Error() string {
	if e.Path == "" {
		return e.Msg
	}
	return e.Path + ": " + e.Msg
}

// Decode decodes body in the given format. The batch holds copies of what
// it takes from body, never body's own bytes, so that the caller may reuse
// body at once (TestDecodeGolden spoils it before reading the batch).
func Decode(format Format, body []byte) (Batch, error) {
	switch format {
	case FormatDefender:
		return DecodeDefender(body)
	case FormatAlertmanager:
		return DecodeAlertmanager(body)
	}
	return Batch{}, fmt.Errorf("unknown format %q", format)
}
