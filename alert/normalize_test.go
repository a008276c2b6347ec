package alert

import (
	"slices"
	"strings"
	"testing"
)

func TestNormalSeverity(t *testing.T) {
	t.Parallel()
	tests := map[string]string{
		// MDE v1.
		"UnSpecified": SeverityUnknown, "Informational": SeverityInformational, "Low": SeverityLow,
		"Medium": SeverityMedium, "High": SeverityHigh,
		// Graph.
		"unknown": SeverityUnknown, "unknownFutureValue": SeverityUnknown, "informational": SeverityInformational,
		// Alertmanager and Grafana labels.
		"info": SeverityInformational, " INFO ": SeverityInformational, "notice": SeverityInformational,
		"warning": SeverityMedium, "warn": SeverityMedium, "error": SeverityHigh, "major": SeverityHigh,
		"critical": SeverityCritical, "crit": SeverityCritical, "page": SeverityCritical, "P1": SeverityCritical,
		"p5": SeverityInformational, "none": SeverityUnknown, "": SeverityUnknown, "sev0": SeverityUnknown,
		"ticket": SeverityUnknown,
	}
	for in, want := range tests {
		if got := normalSeverity(in); got != want {
			t.Errorf("normalSeverity(%q) = %q, want %q", in, got, want)
		}
	}
	// Every value of the table must be a severity of SPEC 5.1.
	for in, sev := range severities {
		switch sev {
		case SeverityInformational, SeverityLow, SeverityMedium, SeverityHigh, SeverityCritical, SeverityUnknown:
		default:
			t.Errorf("severities[%q] = %q, not a SPEC 5.1 severity", in, sev)
		}
		if in != strings.ToLower(strings.TrimSpace(in)) {
			t.Errorf("severities key %q is not lower-case and trimmed, so it never matches", in)
		}
	}
}

func TestNormalStatus(t *testing.T) {
	t.Parallel()
	mde := []string{StatusNew, StatusInProgress, StatusResolved}
	am := []string{StatusFiring, StatusResolved}
	tests := []struct {
		in      string
		allowed []string
		want    string
	}{
		{"New", mde, "new"},
		{"InProgress", mde, "inprogress"},
		{"inProgress", mde, "inprogress"},
		{"Resolved", mde, "resolved"},
		{"Unknown", mde, "unknown"},
		{"unknownFutureValue", mde, "unknown"},
		{"firing", mde, "unknown"},
		{"", mde, "unknown"},
		{"firing", am, "firing"},
		{"Resolved", am, "resolved"},
		{"pending", am, "unknown"},
	}
	for _, tt := range tests {
		if got := normalStatus(tt.in, tt.allowed...); got != tt.want {
			t.Errorf("normalStatus(%q, %q) = %q, want %q", tt.in, tt.allowed, got, tt.want)
		}
	}
}

func TestHostOf(t *testing.T) {
	t.Parallel()
	tests := map[string]string{
		"host.example.com":                   "host.example.com",
		"host.example.com:9100":              "host.example.com",
		" host.example.com:9100 ":            "host.example.com",
		"10.0.0.7:9100":                      "10.0.0.7",
		"[::1]:9100":                         "::1",
		"[2001:db8::15]":                     "2001:db8::15",
		"[fe80::1%eth0]:9182":                "fe80::1%eth0",
		"::1":                                "::1",
		"2001:db8::15":                       "2001:db8::15",
		"host:port":                          "host:port",
		"host:1234567":                       "host:1234567",
		"[::1":                               "[::1",
		":9100":                              "",
		"https://intranet.example.com/login": "intranet.example.com",
		"http://[2001:db8::15]:8080/":        "2001:db8::15",
	}
	for in, want := range tests {
		if got := hostOf(in); got != want {
			t.Errorf("hostOf(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestQuoteCapped(t *testing.T) {
	t.Parallel()
	tests := map[string]string{
		"abc":                         `"abc"`,
		"a\nb":                        `"a\nb"`,
		strings.Repeat("x", 64):       `"` + strings.Repeat("x", 64) + `"`,
		strings.Repeat("x", 65):       `"` + strings.Repeat("x", 64) + `"... (65 bytes)`,
		strings.Repeat("x", 63) + "é": `"` + strings.Repeat("x", 63) + `"... (65 bytes)`,
	}
	for in, want := range tests {
		if got := quoteCapped(in); got != want {
			t.Errorf("quoteCapped(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestDeviceIndexMerge(t *testing.T) {
	t.Parallel()
	const (
		idA = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07"
		idB = "04c99d46599f078f1c3da3783cf5b95f01ac61bb"
	)
	tests := []struct {
		name string
		in   []device
		want []device
	}{
		{"SameIDTwice", []device{{idA, ""}, {idA, "pc1"}}, []device{{idA, "pc1"}}},
		{"NameThenID", []device{{"", "PC1.contoso.com"}, {idA, "pc1.contoso.com"}}, []device{{idA, "PC1.contoso.com"}}},
		{"IDThenName", []device{{idA, "pc1"}, {"", "PC1"}}, []device{{idA, "pc1"}}},
		{"NameTwice", []device{{"", "pc1"}, {"", "pc1"}}, []device{{"", "pc1"}}},
		{"SameNameOtherIDs", []device{{idA, "pc1"}, {idB, "pc1"}}, []device{{idA, "pc1"}, {idB, "pc1"}}},
		{"Distinct", []device{{idA, "pc1"}, {"", "pc2"}, {idB, ""}}, []device{{idA, "pc1"}, {"", "pc2"}, {idB, ""}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var x deviceIndex
			var got []device
			for _, d := range tt.in {
				got = x.merge(got, d)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("merge %v: got %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

func TestCheckAlertID(t *testing.T) {
	for _, c := range []struct {
		id string
		ok bool
	}{
		{"da637472900382838869_1364969609", true},
		{"1f7c4b4e-0e5b-4a3f-9a35-2f0f0f6c0b6e", true},
		{"café-é", true},
		{"a\nINFO forged", false},
		{"a\x7f", false},
		{"a\u0085b", false},         // C1 next line
		{"a\u2028b", false},         // line separator
		{"da1\u202egnp.exe", false}, // right-to-left override
		{"da1\u2066x\u2069", false}, // isolates
	} {
		got := checkAlertID(c.id)
		if (got == "") != c.ok {
			t.Errorf("checkAlertID(%q) = %q, want ok %v", c.id, got, c.ok)
		}
		if !c.ok && !strings.Contains(got, "control character") {
			t.Errorf("checkAlertID(%q) = %q, want a control character message", c.id, got)
		}
	}
}
