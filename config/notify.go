package config

import (
	"fmt"
	"strings"
	"time"

	"github.com/responder-dev/responder/notify"
	"github.com/responder-dev/responder/pipeline"
)

// Notifier configures one notifier (SPEC 13): where the events go, and
// which. Its settings are checked by notify.Settings.Problems, the check
// notify.New runs.
type Notifier struct {
	// Name is unique, [a-z0-9] words joined by - or _: a metric label.
	Name string `yaml:"name"`
	// Type is one of notify.Types(): slack, teams, webhook, log.
	Type string `yaml:"type"`
	// URL is the receiver's address, for a webhook. A Slack or Teams URL
	// is a secret (whoever has it may post): give it in URLFile or the
	// environment (NotifierEnv(name, "URL")).
	URL     string `yaml:"url"`
	URLFile string `yaml:"url_file"`
	// HMACSecretFile holds the webhook's signing secret (or
	// NotifierEnv(name, "HMAC_SECRET")); unsigned without one.
	HMACSecretFile string `yaml:"hmac_secret_file"`
	// Events are the kinds of event sent (notify.Kinds); empty: all.
	Events []string `yaml:"events"`
	// Rules restricts the events about a rule's decisions to those rules;
	// empty: every rule.
	Rules []string `yaml:"rules"`
	// Timeout bounds one delivery request. Default notify.DefaultTimeout.
	Timeout time.Duration `yaml:"timeout"`
}

// NotifierSecrets are the secret values of one notifier.
type NotifierSecrets struct {
	URL        string
	HMACSecret string
}

// NotifierEnv is the environment variable of one secret of notifier name:
// RESPONDER_NOTIFY_<NAME>_<what>, the name in upper case with - as _.
func NotifierEnv(name, what string) string {
	return EnvPrefix + "NOTIFY_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_")) + "_" + what
}

// secretURL reports whether the URL of a notifier type is a credential.
func secretURL(typ string) bool { return typ == "slack" || typ == "teams" }

// readNotifierSecrets reads each notifier's URL and signing secret, from
// its *_file key or its environment variable (read), or, for a webhook's
// URL, the YAML.
func (l *loader) readNotifierSecrets(read func(filePath, fileKey, envName string, dst *string)) {
	c := l.cfg
	c.Secrets.Notify = map[string]NotifierSecrets{}
	for i, n := range c.Notify {
		key := fmt.Sprintf("notify[%d]", i)
		var s NotifierSecrets
		urlEnv := NotifierEnv(n.Name, "URL")
		read(n.URLFile, key+".url_file", urlEnv, &s.URL)
		if n.URL != "" {
			_, envSet := l.env(urlEnv)
			switch {
			case secretURL(n.Type):
				l.problem(key+".url", "a %s webhook URL is a secret (whoever has it may post): give it in url_file or %s, not in the YAML", n.Type, urlEnv)
				l.decodeFailed[key+".url"] = true
			case n.URLFile != "" || envSet:
				l.problem(key+".url", "set one of url, url_file and %s", urlEnv)
				l.decodeFailed[key+".url"] = true
			default:
				s.URL = n.URL
			}
		}
		read(n.HMACSecretFile, key+".hmac_secret_file", NotifierEnv(n.Name, "HMAC_SECRET"), &s.HMACSecret)
		if prev, dup := c.Secrets.Notify[n.Name]; !dup || prev == (NotifierSecrets{}) {
			c.Secrets.Notify[n.Name] = s
		}
	}
}

// Notifiers returns the settings of every configured notifier, with their
// secrets.
func (c *Config) Notifiers() []notify.Settings {
	out := make([]notify.Settings, 0, len(c.Notify))
	for _, n := range c.Notify {
		s := c.Secrets.Notify[n.Name]
		kinds := make([]notify.Kind, 0, len(n.Events))
		for _, e := range n.Events {
			kinds = append(kinds, notify.Kind(e))
		}
		out = append(out, notify.Settings{Name: n.Name, Type: n.Type, URL: s.URL, HMACSecret: s.HMACSecret,
			Events: kinds, Rules: n.Rules, Timeout: n.Timeout})
	}
	return out
}

// validateNotify reports the problems of the notify list (each notifier's
// by notify.Settings.Problems, at its key) and of the write-back.
func (l *loader) validateNotify() {
	c := l.cfg
	seen := map[string]int{}
	for i, s := range c.Notifiers() {
		key := fmt.Sprintf("notify[%d]", i)
		if prev, dup := seen[s.Name]; dup && s.Name != "" {
			l.problem(key+".name", "notifier %q is configured already (notify[%d])", s.Name, prev)
		}
		seen[s.Name] = i
		if s.Name == pipeline.WriteBackName {
			l.problem(key+".name", "%q is the name of the write-back (defender.write_back); choose another", s.Name)
		}
		noURL := s.URL == "" && (s.Type == notify.TypeSlack || s.Type == notify.TypeTeams || s.Type == notify.TypeWebhook)
		if noURL && !l.decodeFailed[key+".url"] && !l.decodeFailed[key+".url_file"] && s.Name != "" {
			how := "url_file or " + NotifierEnv(s.Name, "URL")
			if !secretURL(s.Type) {
				how = "url, " + how
			}
			l.problem(key+".url_file", "a %s notifier needs its URL: set %s", s.Type, how)
		}
		for _, p := range s.Problems() {
			path := key + "." + p.Key
			switch {
			case p.Key == "url" && noURL:
				continue // said above, with how to set it
			case p.Key == "url":
				if c.Notify[i].URLFile != "" {
					path = key + ".url_file"
				}
			case p.Key == "hmac_secret":
				path = key + ".hmac_secret_file"
			}
			l.problem(path, "%s", p.Msg)
		}
	}
	d := c.Defender
	if d.WriteBack {
		if _, client := c.DefenderClient(); !client {
			l.problem("defender.write_back", "needs a Defender client: set a credential, or turn write_back off in a dry run without one")
		}
	}
	if _, err := pipeline.ParseWriteBackComment(d.WriteBackComment); err != nil {
		l.problem("defender.write_back_comment", "%v", err)
	}
}
