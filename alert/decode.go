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

// ParseFormat checks a format name given by a user (CLI flag, query string).
func ParseFormat(s string) (Format, error) {
	switch f := Format(strings.ToLower(strings.TrimSpace(s))); f {
	case FormatDefender, FormatAlertmanager:
		return f, nil
	}
	return "", fmt.Errorf("unknown format %q (want defender or alertmanager)", s)
}

// Problem is one alert of a body that cannot be processed: it is counted
// invalid and dropped while the rest of the body goes on.
type Problem struct {
	Path   string // where in the body, e.g. "value[2].machineId" or "alerts[3]"
	Reason string // what is wrong, e.g. "not a 40-character hexadecimal MDE machine id"
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

// Decode decodes body in the given format.
func Decode(format Format, body []byte) (Batch, error) {
	switch format {
	case FormatDefender:
		return DecodeDefender(body)
	case FormatAlertmanager:
		return DecodeAlertmanager(body)
	}
	return Batch{}, fmt.Errorf("unknown format %q", format)
}
