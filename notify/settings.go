package notify

import (
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/responder-dev/responder/internal/loopback"
)

// The notifier types.
const (
	TypeSlack   = "slack"
	TypeTeams   = "teams"
	TypeWebhook = "webhook"
	TypeLog     = "log"
)

var types = []string{TypeSlack, TypeTeams, TypeWebhook, TypeLog}

// Types returns every notifier type in a stable order.
func Types() []string { return append([]string(nil), types...) }

// Defaults and bounds of Settings.
const (
	// DefaultTimeout bounds one request when Settings.Timeout is 0.
	DefaultTimeout = 10 * time.Second
	// MaxTimeout bounds Settings.Timeout: a delivery is a queue job, which
	// must end well before the queue takes it for stuck (40 s) and runs it
	// again; a receiver slower than this is down.
	MaxTimeout = 25 * time.Second
	// MinHMACSecretBytes is the shortest webhook signing secret accepted.
	MinHMACSecretBytes = 16
	// maxNameLen bounds a notifier's name (a metric label and a queue name).
	maxNameLen = 64
)

// Settings are one notifier's settings, after the config package has read
// its secrets.
type Settings struct {
	// Name is unique, ^[a-z0-9]+([_-][a-z0-9]+)*$, at most 64 characters:
	// a metric label and a queue name.
	Name string
	// Type is slack, teams, webhook or log.
	Type string
	// URL is where to POST; required for every type but log, which takes
	// none. A secret for slack and teams (the URL is the credential). https
	// only, but http:// to a loopback host (tests).
	URL string
	// HMACSecret signs webhook bodies; webhook only, optional (unsigned
	// when empty), at least MinHMACSecretBytes.
	HMACSecret string
	// Events filters the kinds sent; empty means every kind.
	Events []Kind
	// Rules filters the events that name a rule; empty means every rule.
	// Events about no rule (circuit, permission) always pass.
	Rules []string
	// Timeout bounds one request; 0 means DefaultTimeout.
	Timeout time.Duration
}

// FieldProblem is one problem of a Settings value: Key is the settings key
// it is about ("name", "url", "events[2]", ...), spelled as in YAML, so
// that the config package can point at file:line:col.
type FieldProblem struct {
	Key string
	Msg string
}

// Error implements error: "key: msg".
func (p FieldProblem) Error() string { return p.Key + ": " + p.Msg }

var nameRE = regexp.MustCompile(`^[a-z0-9]+([_-][a-z0-9]+)*$`)

// Problems lists every problem of s, in a stable order, each with the key
// it is about. s is checked as given (a zero Timeout is the default). An
// invalid URL is never echoed: it is a secret for Slack and Teams.
func (s Settings) Problems() []FieldProblem {
	var ps []FieldProblem
	add := func(key, format string, args ...any) {
		ps = append(ps, FieldProblem{Key: key, Msg: fmt.Sprintf(format, args...)})
	}
	switch {
	case s.Name == "":
		add("name", "required")
	case len(s.Name) > maxNameLen:
		add("name", "longer than %d characters", maxNameLen)
	case !nameRE.MatchString(s.Name):
		add("name", "%q: want lower-case letters and digits, separated by single - or _", clean(s.Name))
	}
	known := false
	for _, t := range types {
		known = known || s.Type == t
	}
	switch {
	case s.Type == "":
		add("type", "required (one of %s)", strings.Join(types, ", "))
	case !known:
		add("type", "unknown type %q (want one of %s)", clip(s.Type, maxNameRunes), strings.Join(types, ", "))
	}
	switch {
	case s.Type == TypeLog && s.URL != "":
		add("url", "not used by type log")
	case s.Type == TypeLog || !known:
	case s.URL == "":
		add("url", "required for type %s", s.Type)
	default:
		if msg := urlProblem(s.URL); msg != "" {
			add("url", "%s", msg)
		}
	}
	switch {
	case s.HMACSecret == "":
	case s.Type != TypeWebhook:
		add("hmac_secret", "only type webhook signs its messages")
	case len(s.HMACSecret) < MinHMACSecretBytes:
		add("hmac_secret", "shorter than %d bytes", MinHMACSecretBytes)
	}
	seenKinds := map[Kind]bool{}
	for i, k := range s.Events {
		key := fmt.Sprintf("events[%d]", i)
		if _, ok := ParseKind(string(k)); !ok {
			add(key, "unknown event %q (want one of %s)", clip(string(k), maxNameRunes), kindList())
		} else if seenKinds[k] {
			add(key, "event %q listed twice", k)
		}
		seenKinds[k] = true
	}
	seenRules := map[string]bool{}
	for i, r := range s.Rules {
		key := fmt.Sprintf("rules[%d]", i)
		if strings.TrimSpace(r) == "" {
			add(key, "empty rule name")
		} else if seenRules[r] {
			add(key, "rule %q listed twice", clip(r, maxNameRunes))
		}
		seenRules[r] = true
	}
	switch {
	case s.Timeout < 0:
		add("timeout", "must not be negative, got %s", s.Timeout)
	case s.Timeout > MaxTimeout:
		add("timeout", "at most %s, got %s", MaxTimeout, s.Timeout)
	}
	return ps
}

// urlProblem says what is wrong with a notifier URL without echoing it (it
// may hold a token), or returns "".
func urlProblem(raw string) string {
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		// url.Parse's error quotes the URL: say only that it failed.
		return "is not a valid URL"
	case u.Scheme == "":
		return "must be an absolute https:// URL"
	case u.Scheme != "https" && u.Scheme != "http":
		return "must be https"
	case u.Host == "" || u.Hostname() == "":
		return "has no host"
	case u.Scheme == "http" && !loopback.Host(u.Hostname()):
		return "must be https (http:// only to a loopback host)"
	}
	return ""
}

func kindList() string {
	names := make([]string, len(kinds))
	for i, k := range kinds {
		names[i] = string(k)
	}
	return strings.Join(names, ", ")
}

// withDefaults returns s with Timeout set.
func (s Settings) withDefaults() Settings {
	if s.Timeout == 0 {
		s.Timeout = DefaultTimeout
	}
	return s
}
