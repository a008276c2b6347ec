package notify

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestProblems: every key's problems are reported under that key, with the
// message the config package will show.
func TestProblems(t *testing.T) {
	t.Parallel()
	ok := Settings{Name: "soc-slack", Type: TypeSlack, URL: "https://hooks.slack.com/services/T0/B0/x"}
	for _, tc := range []struct {
		name   string
		change func(*Settings)
		want   []FieldProblem
	}{
		{"valid slack", func(*Settings) {}, nil},
		{"valid teams", func(s *Settings) { s.Type = TypeTeams }, nil},
		{"valid signed webhook", func(s *Settings) { s.Type, s.HMACSecret = TypeWebhook, testSecret }, nil},
		{"valid log", func(s *Settings) { s.Type, s.URL = TypeLog, "" }, nil},
		{"http to loopback", func(s *Settings) { s.URL = "http://127.0.0.1:8080/hook" }, nil},
		{"http to localhost", func(s *Settings) { s.URL = "http://localhost/hook" }, nil},
		{"http to ::1", func(s *Settings) { s.URL = "http://[::1]:9/hook" }, nil},
		{"filters", func(s *Settings) {
			s.Events, s.Rules = []Kind{Collected, Failed}, []string{"ransomware"}
		}, nil},
		{"timeout", func(s *Settings) { s.Timeout = 20 * time.Second }, nil},
		{"name missing", func(s *Settings) { s.Name = "" }, []FieldProblem{{"name", "required"}}},
		{"name upper case", func(s *Settings) { s.Name = "SOC" }, []FieldProblem{{"name", `"SOC": want lower-case letters and digits, separated by single - or _`}}},
		{"name double dash", func(s *Settings) { s.Name = "soc--slack" }, []FieldProblem{{"name", `"soc--slack": want lower-case letters and digits, separated by single - or _`}}},
		{"name trailing dash", func(s *Settings) { s.Name = "soc-" }, []FieldProblem{{"name", `"soc-": want lower-case letters and digits, separated by single - or _`}}},
		{"name too long", func(s *Settings) { s.Name = strings.Repeat("a", 65) }, []FieldProblem{{"name", "longer than 64 characters"}}},
		{"type missing", func(s *Settings) { s.Type = "" }, []FieldProblem{{"type", "required (one of slack, teams, webhook, log)"}}},
		{"type unknown", func(s *Settings) { s.Type = "pagerduty" }, []FieldProblem{{"type", `unknown type "pagerduty" (want one of slack, teams, webhook, log)`}}},
		{"url missing", func(s *Settings) { s.URL = "" }, []FieldProblem{{"url", "required for type slack"}}},
		{"url on log", func(s *Settings) { s.Type = TypeLog }, []FieldProblem{{"url", "not used by type log"}}},
		{"url http", func(s *Settings) { s.URL = "http://hooks.example.com/x" }, []FieldProblem{{"url", "must be https (http:// only to a loopback host)"}}},
		{"url http to a name like loopback", func(s *Settings) { s.URL = "http://localhost.example.com/x" }, []FieldProblem{{"url", "must be https (http:// only to a loopback host)"}}},
		{"url other scheme", func(s *Settings) { s.URL = "ftp://hooks.example.com/x" }, []FieldProblem{{"url", "must be https"}}},
		{"url relative", func(s *Settings) { s.URL = "hooks.example.com/x" }, []FieldProblem{{"url", "must be an absolute https:// URL"}}},
		{"url no host", func(s *Settings) { s.URL = "https:///x" }, []FieldProblem{{"url", "has no host"}}},
		{"url port only", func(s *Settings) { s.URL = "https://:443/x" }, []FieldProblem{{"url", "has no host"}}},
		{"url unparsable", func(s *Settings) { s.URL = "https://hooks.example.com/%zz" }, []FieldProblem{{"url", "is not a valid URL"}}},
		{"hmac on slack", func(s *Settings) { s.HMACSecret = testSecret }, []FieldProblem{{"hmac_secret", "only type webhook signs its messages"}}},
		{"hmac short", func(s *Settings) { s.Type, s.HMACSecret = TypeWebhook, "short" }, []FieldProblem{{"hmac_secret", "shorter than 16 bytes"}}},
		{"events unknown and twice", func(s *Settings) { s.Events = []Kind{Collected, "exploded", Collected} }, []FieldProblem{
			{"events[1]", `unknown event "exploded" (want one of decided, collected, failed, circuit_open, circuit_closed, permission_missing, approval_requested, approval_expired)`},
			{"events[2]", `event "collected" listed twice`},
		}},
		{"rules empty and twice", func(s *Settings) { s.Rules = []string{"a", " ", "a"} }, []FieldProblem{
			{"rules[1]", "empty rule name"},
			{"rules[2]", `rule "a" listed twice`},
		}},
		{"timeout negative", func(s *Settings) { s.Timeout = -time.Second }, []FieldProblem{{"timeout", "must not be negative, got -1s"}}},
		{"timeout too long", func(s *Settings) { s.Timeout = time.Hour }, []FieldProblem{{"timeout", "at most 25s, got 1h0m0s"}}},
		{"every key at once", func(s *Settings) {
			*s = Settings{Name: "A", Type: TypeSlack, HMACSecret: "x", Events: []Kind{"x"}, Rules: []string{""}, Timeout: -1}
		}, []FieldProblem{
			{"name", `"A": want lower-case letters and digits, separated by single - or _`},
			{"url", "required for type slack"},
			{"hmac_secret", "only type webhook signs its messages"},
			{"events[0]", `unknown event "x" (want one of decided, collected, failed, circuit_open, circuit_closed, permission_missing, approval_requested, approval_expired)`},
			{"rules[0]", "empty rule name"},
			{"timeout", "must not be negative, got -1ns"},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := ok
			tc.change(&s)
			got := s.Problems()
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Problems() =\n%v\nwant\n%v", got, tc.want)
			}
			_, err := New(s)
			if (err == nil) != (tc.want == nil) {
				t.Errorf("New: %v, want an error exactly when there are problems", err)
			}
			for _, p := range tc.want {
				if err != nil && !strings.Contains(err.Error(), p.Error()) {
					t.Errorf("New's error %q does not name %q", err, p.Error())
				}
			}
		})
	}
}

// TestKinds: the closed set of kinds, in a stable order, parsed back.
func TestKinds(t *testing.T) {
	t.Parallel()
	want := []Kind{"decided", "collected", "failed", "circuit_open", "circuit_closed", "permission_missing", "approval_requested", "approval_expired"}
	if got := Kinds(); !reflect.DeepEqual(got, want) {
		t.Errorf("Kinds() = %v", got)
	}
	for _, k := range want {
		if got, ok := ParseKind(string(k)); !ok || got != k {
			t.Errorf("ParseKind(%q) = %q, %v", k, got, ok)
		}
	}
	for _, s := range []string{"", "Collected", "collected ", "other"} {
		if _, ok := ParseKind(s); ok {
			t.Errorf("ParseKind(%q) accepted", s)
		}
	}
	Kinds()[0] = "changed" // a copy: the set cannot be changed from outside
	if Kinds()[0] != Decided {
		t.Error("Kinds returns the package's own slice")
	}
	if got := Types(); !reflect.DeepEqual(got, []string{"slack", "teams", "webhook", "log"}) {
		t.Errorf("Types() = %v", got)
	}
}

// TestWants: the events and rules filters; events about no rule pass any
// rules filter.
func TestWants(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		events []Kind
		rules  []string
		kind   Kind
		rule   string
		want   bool
	}{
		{"no filter", nil, nil, Failed, "r", true},
		{"no filter, no rule", nil, nil, CircuitOpen, "", true},
		{"event listed", []Kind{Collected, Failed}, nil, Failed, "r", true},
		{"event not listed", []Kind{Collected}, nil, Failed, "r", false},
		{"rule listed", nil, []string{"a", "b"}, Decided, "b", true},
		{"rule not listed", nil, []string{"a"}, Decided, "b", false},
		{"event about no rule passes a rules filter", nil, []string{"a"}, CircuitOpen, "", true},
		{"both listed", []Kind{Decided}, []string{"a"}, Decided, "a", true},
		{"rule listed, event not", []Kind{Collected}, []string{"a"}, Decided, "a", false},
		{"no rule, event not listed", []Kind{Collected}, []string{"a"}, PermissionMissing, "", false},
	} {
		for _, typ := range Types() {
			s := settingsFor(typ, "https://hooks.example.com/x")
			s.Events, s.Rules = tc.events, tc.rules
			n := mustNew(t, s)
			if got := n.Wants(tc.kind, tc.rule); got != tc.want {
				t.Errorf("%s/%s: Wants(%s, %q) = %v, want %v", tc.name, typ, tc.kind, tc.rule, got, tc.want)
			}
			if n.Name() != s.Name || n.Type() != typ {
				t.Errorf("Name/Type = %s/%s", n.Name(), n.Type())
			}
		}
	}
}
