package alert

import (
	"fmt"
	"net/url"
	"strings"
	"unicode"
)

// severities maps every severity spelling the decoders accept, lower-cased
// and trimmed, to a severity of SPEC section 5.1. It is the one table for all
// sources: MDE v1 (UnSpecified, Informational, Low, Medium, High), Graph
// (unknown, informational, low, medium, high, unknownFutureValue) and the
// free-form severity label of Alertmanager and Grafana, where the common
// conventions are the syslog levels, warning/critical/page and P1 to P5
// priorities. Anything else is unknown.
var severities = map[string]string{
	"informational": SeverityInformational,
	"information":   SeverityInformational,
	"info":          SeverityInformational,
	"notice":        SeverityInformational,
	"debug":         SeverityInformational,
	"p5":            SeverityInformational,

	"low":   SeverityLow,
	"minor": SeverityLow,
	"p4":    SeverityLow,

	"medium":   SeverityMedium,
	"moderate": SeverityMedium,
	"warning":  SeverityMedium,
	"warn":     SeverityMedium,
	"p3":       SeverityMedium,

	"high":   SeverityHigh,
	"major":  SeverityHigh,
	"error":  SeverityHigh,
	"err":    SeverityHigh,
	"severe": SeverityHigh,
	"p2":     SeverityHigh,

	"critical":  SeverityCritical,
	"crit":      SeverityCritical,
	"fatal":     SeverityCritical,
	"alert":     SeverityCritical,
	"emergency": SeverityCritical,
	"emerg":     SeverityCritical,
	"page":      SeverityCritical,
	"disaster":  SeverityCritical,
	"p1":        SeverityCritical,

	"unknown":            SeverityUnknown,
	"unspecified":        SeverityUnknown,
	"unknownfuturevalue": SeverityUnknown,
	"none":               SeverityUnknown,
}

// normalSeverity maps a severity as a source spells it to SPEC 5.1.
func normalSeverity(s string) string {
	if sev, ok := severities[strings.ToLower(strings.TrimSpace(s))]; ok {
		return sev
	}
	return SeverityUnknown
}

// normalStatus lower-cases a status and keeps it when it is one of allowed;
// anything else, unknownFutureValue included, is "unknown".
func normalStatus(s string, allowed ...string) string {
	s = strings.ToLower(strings.TrimSpace(s))
	for _, a := range allowed {
		if s == a {
			return s
		}
	}
	return "unknown"
}

// maxIDLen bounds an alert id: it ends up in the comment sent to MDE, in
// log lines and in the dedup key. Real ids are under 100 bytes.
const maxIDLen = 256

// checkAlertID returns why id cannot be an alert id, or "" when it can.
// The caller has already dropped an empty id.
func checkAlertID(id string) string {
	if len(id) > maxIDLen {
		return fmt.Sprintf("alert id longer than %d bytes: %s", maxIDLen, quoteCapped(id))
	}
	for _, r := range id {
		if idControl(r) {
			return fmt.Sprintf("alert id contains a control character: %s", quoteCapped(id))
		}
	}
	return ""
}

// idControl reports a character no alert id has and that could forge or
// disguise a log line, an audit entry or the comment sent to Defender: C0
// and C1 controls and DEL, the Unicode line and paragraph separators, and
// the bidirectional overrides and isolates that reorder displayed text.
func idControl(r rune) bool {
	switch {
	case unicode.IsControl(r), r == '\u2028', r == '\u2029':
		return true
	case r >= '\u202a' && r <= '\u202e', r >= '\u2066' && r <= '\u2069':
		return true
	}
	return false
}

// normalMachineID validates an MDE machine id (surrounding white space is
// dropped) and returns it lower-cased, or the reason it is not one.
func normalMachineID(id string) (string, string) {
	id = strings.TrimSpace(id)
	if !ValidMachineID(id) {
		return "", "not a 40-character hexadecimal MDE machine id: " + quoteCapped(id)
	}
	return strings.ToLower(id), ""
}

// hostOf returns the host name of a host label value: "host", "host:9100",
// "[::1]:9100", "::1" or a URL such as a blackbox exporter target. It drops
// the port, the brackets of an IPv6 literal and a URL's scheme and path.
func hostOf(s string) string {
	s = strings.TrimSpace(s)
	if strings.Contains(s, "://") {
		u, err := url.Parse(s)
		if err != nil {
			return s
		}
		return u.Hostname()
	}
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end > 0 && (end == len(s)-1 || isPort(s[end+1:])) {
			return s[1:end]
		}
		return s
	}
	if i := strings.IndexByte(s, ':'); i >= 0 && i == strings.LastIndexByte(s, ':') && isPort(s[i:]) {
		return s[:i]
	}
	return s
}

// isPort reports whether s is ":" followed by a decimal port number.
func isPort(s string) bool {
	if len(s) < 2 || len(s) > 6 || s[0] != ':' {
		return false
	}
	for i := 1; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
