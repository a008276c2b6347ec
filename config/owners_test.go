package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/responder-dev/responder/defender"
	"github.com/responder-dev/responder/handlers"
	"github.com/responder-dev/responder/internal/logging"
	"github.com/responder-dev/responder/metrics"
)

// writeConfig writes a config file in a temporary directory.
func writeConfig(t *testing.T, src string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "responder.yaml")
	if err := os.WriteFile(p, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// newServer runs the constructor serve runs on the HTTP settings.
func newServer(s handlers.Settings) error {
	auth, err := handlers.NewWebhookAuth(s)
	if err != nil {
		return err
	}
	_, err = handlers.New(handlers.Options{Settings: s, Gatherer: prometheus.NewRegistry(), Logger: zap.NewNop(),
		Webhooks: &handlers.Webhooks{Auth: auth, Metrics: metrics.New(nil), Logger: zap.NewNop()}})
	return err
}

// TestAllowCIDRsAreTheHandlersRule: each webhooks.allow_cidrs entry that
// handlers.ParseCIDR (what the webhook listener runs) refuses is refused by
// Load at its file:line:col with ParseCIDR's words, and the server refuses
// the same list; the entries it takes pass both.
func TestAllowCIDRsAreTheHandlersRule(t *testing.T) {
	t.Parallel()
	entries := []string{"10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "10.1.2.3/8", "::1", "fe80::1%eth0",
		"10.0.0.0/33", "10.0.0.0/8 ", "10.0.0.0/-1", "not-an-ip", "", "10.0.0", "::ffff:10.0.0.1/104"}
	src := "admin:\n  allow_unauthenticated: true\nserver:\n  admin_listen: 127.0.0.1:9090\ndefender:\n  dry_run: true\nwebhooks:\n  allow_cidrs:\n"
	const firstLine = 9
	for _, e := range entries {
		src += fmt.Sprintf("    - %q\n", e)
	}
	p := writeConfig(t, src)
	cfg, err := Load(p, nil, noEnv)
	var got []string
	if err != nil {
		got = strings.Split(err.Error(), "\n")
	}
	var want []string
	for i, e := range entries {
		if _, perr := handlers.ParseCIDR(e); perr != nil {
			want = append(want, fmt.Sprintf("%s:%d:7: webhooks.allow_cidrs[%d]: %v", p, firstLine+i, i, perr))
		}
	}
	if len(want) < 5 || len(want) == len(entries) {
		t.Fatalf("the table should hold good and bad entries: %d bad of %d", len(want), len(entries))
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("Load:\n got: %s\nwant: %s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if err := newServer(cfg.Handlers()); err == nil || !strings.Contains(err.Error(), `invalid CIDR "10.0.0.0/33"`) {
		t.Fatalf("the server takes what check refuses: %v", err)
	}
	// The good entries alone pass both.
	cfg.Webhooks.AllowCIDRs = nil
	for _, e := range entries {
		if _, err := handlers.ParseCIDR(e); err == nil {
			cfg.Webhooks.AllowCIDRs = append(cfg.Webhooks.AllowCIDRs, e)
		}
	}
	if err := newServer(cfg.Handlers()); err != nil {
		t.Fatalf("the server refuses what check takes: %v", err)
	}
}

// TestHTTPProblemsAreTheHandlersProblems: for the server.*, admin.* and
// webhooks.* keys, Load reports exactly what handlers.Settings.Validate
// (run again by handlers.New) finds, and the server refuses exactly the
// settings Load refuses.
func TestHTTPProblemsAreTheHandlersProblems(t *testing.T) {
	t.Parallel()
	base := map[string]string{"RESPONDER_DEFENDER_DRY_RUN": "true"}
	for _, env := range []map[string]string{
		{},
		{"RESPONDER_WEBHOOKS_ALLOW_UNAUTHENTICATED": "true"},
		{"RESPONDER_WEBHOOKS_ALLOW_UNAUTHENTICATED": "true", "RESPONDER_ADMIN_BEARER_TOKEN": "t"},
		{"RESPONDER_WEBHOOKS_BEARER_TOKEN": "w", "RESPONDER_SERVER_ADMIN_LISTEN": "[::ffff:127.0.0.1]:9090", "RESPONDER_ADMIN_ALLOW_UNAUTHENTICATED": "true"},
		{"RESPONDER_WEBHOOKS_BEARER_TOKEN": "w", "RESPONDER_SERVER_ADMIN_LISTEN": "localhost.example.com:9090", "RESPONDER_ADMIN_ALLOW_UNAUTHENTICATED": "true"},
		{"RESPONDER_WEBHOOKS_BASIC_AUTH_USERNAME": "am", "RESPONDER_ADMIN_BEARER_TOKEN": "t", "RESPONDER_ADMIN_ALLOWED_HOSTS": "ok.example.com,*.example.com"},
		{"RESPONDER_WEBHOOKS_HMAC_SECRET": "h", "RESPONDER_WEBHOOKS_HMAC_HEADER": "", "RESPONDER_WEBHOOKS_HMAC_MAX_SKEW": "0s", "RESPONDER_ADMIN_BEARER_TOKEN": "t"},
		{"RESPONDER_WEBHOOKS_ALLOW_CIDRS": "10.0.0.0/8", "RESPONDER_SERVER_MAX_BODY_BYTES": "0", "RESPONDER_SERVER_LISTEN": "", "RESPONDER_ADMIN_BEARER_TOKEN": "t"},
		{"RESPONDER_WEBHOOKS_ALLOW_UNAUTHENTICATED": "true", "RESPONDER_ADMIN_BEARER_TOKEN": "t", "RESPONDER_SERVER_TLS_CLIENT_CA_FILE": "/nonexistent/ca.pem"},
	} {
		e := map[string]string{}
		for k, v := range base {
			e[k] = v
		}
		for k, v := range env {
			e[k] = v
		}
		cfg, err := Load("", nil, envMap(e))
		var got []string
		var ps Problems
		if errors.As(err, &ps) {
			for _, p := range ps {
				got = append(got, p.Path+": "+p.Msg)
			}
		} else if err != nil {
			t.Fatal(err)
		}
		var want []string
		for _, p := range cfg.Handlers().Validate() {
			want = append(want, p.Error())
		}
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("%v:\nLoad:     %q\nValidate: %q", env, got, want)
		}
		if serr := newServer(cfg.Handlers()); (serr == nil) != (err == nil) {
			t.Errorf("%v: Load: %v\nbut the server: %v", env, err, serr)
		}
	}
}

// TestDefenderProblemsAreTheClientsRule: check (Load) reports at the
// defender.* keys exactly what defender.Config.Problems finds, and refuses a
// Defender setting exactly when the client serve builds refuses it. The
// first four cases were disagreements: check took what New refused (a
// credential in dry-run mode without a tenant; a missing federated token
// file) or refused what New took (a token_url without tenant_id; an
// upper-case cloud). Only a zero value differs on purpose: New reads it as
// "the default" for a Go caller, while a configuration that writes 0 or ""
// over its stated default is refused.
func TestDefenderProblemsAreTheClientsRule(t *testing.T) {
	t.Parallel()
	missing := filepath.Join(t.TempDir(), "no-such-token")
	base := map[string]string{
		"RESPONDER_WEBHOOKS_ALLOW_UNAUTHENTICATED": "true", "RESPONDER_ADMIN_BEARER_TOKEN": "t",
		"RESPONDER_DEFENDER_TENANT_ID": "contoso.onmicrosoft.com", "RESPONDER_DEFENDER_CLIENT_ID": "c",
		"RESPONDER_DEFENDER_CLIENT_SECRET": "s",
	}
	cases := []struct {
		name string
		env  map[string]string // "" deletes the variable
		key  string            // the key of the problem, "" for none
		zero bool              // a zero value, which New takes as its default
	}{
		{"credential in dry run, no tenant", map[string]string{"RESPONDER_DEFENDER_DRY_RUN": "true", "RESPONDER_DEFENDER_TENANT_ID": ""}, "defender.tenant_id", false},
		{"missing federated token file", map[string]string{"RESPONDER_DEFENDER_CLIENT_SECRET": "", "RESPONDER_DEFENDER_FEDERATED_TOKEN_FILE": missing}, "defender.federated_token_file", false},
		{"token_url without tenant", map[string]string{"RESPONDER_DEFENDER_TENANT_ID": "", "RESPONDER_DEFENDER_TOKEN_URL": "https://login.example.com/t/oauth2/v2.0/token"}, "", false},
		{"upper-case cloud", map[string]string{"RESPONDER_DEFENDER_CLOUD": "GCC"}, "defender.cloud", false},
		{"good", nil, "", false},
		{"every cloud", map[string]string{"RESPONDER_DEFENDER_CLOUD": "dod"}, "", false},
		{"unknown cloud", map[string]string{"RESPONDER_DEFENDER_CLOUD": "azure-china"}, "defender.cloud", false},
		{"empty cloud", map[string]string{"RESPONDER_DEFENDER_CLOUD": ""}, "defender.cloud", true},
		{"no client id", map[string]string{"RESPONDER_DEFENDER_CLIENT_ID": ""}, "defender.client_id", false},
		{"no credential", map[string]string{"RESPONDER_DEFENDER_CLIENT_SECRET": ""}, "defender.client_secret_file", false},
		{"two credentials", map[string]string{"RESPONDER_DEFENDER_FEDERATED_TOKEN_FILE": "responder.yaml"}, "defender.client_secret_file", false},
		{"http api", map[string]string{"RESPONDER_DEFENDER_API_URL": "http://api.example.com"}, "defender.api_url", false},
		{"http api on ipv4-mapped loopback", map[string]string{"RESPONDER_DEFENDER_API_URL": "http://[::ffff:127.0.0.1]:8080"}, "", false},
		{"bad tenant", map[string]string{"RESPONDER_DEFENDER_TENANT_ID": "a/../b"}, "defender.tenant_id", false},
		{"zero rate", map[string]string{"RESPONDER_DEFENDER_RATE_LIMIT_PER_HOUR": "0"}, "defender.rate_limit.per_hour", true},
		{"bad package host", map[string]string{"RESPONDER_DEFENDER_PACKAGE_HOSTS": "https://x.example.com"}, "defender.package_hosts[0]", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := map[string]string{}
			for k, v := range base {
				e[k] = v
			}
			for k, v := range tc.env {
				if v == "" && !strings.HasSuffix(k, "_CLOUD") {
					delete(e, k)
				} else {
					e[k] = v
				}
			}
			dir := t.TempDir()
			if tc.name == "two credentials" {
				e["RESPONDER_DEFENDER_FEDERATED_TOKEN_FILE"] = filepath.Join(dir, "token")
				if err := os.WriteFile(e["RESPONDER_DEFENDER_FEDERATED_TOKEN_FILE"], []byte("jwt"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			cfg, err := Load("", nil, envMap(e))
			var keys []string
			var ps Problems
			if errors.As(err, &ps) {
				for _, p := range ps {
					keys = append(keys, p.Path)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(keys, ","); got != tc.key {
				t.Fatalf("Load: problems at %q, want %q: %v", got, tc.key, err)
			}
			dc, build := cfg.DefenderClient()
			if !build {
				t.Fatal("no client would be built")
			}
			var fields []string
			for _, p := range dc.Problems() {
				fields = append(fields, "defender."+p.Field)
			}
			if got := strings.Join(fields, ","); got != tc.key {
				t.Fatalf("Problems at %q, want %q", got, tc.key)
			}
			_, nerr := defender.New(dc, nil, nil)
			if (nerr == nil) != (tc.key == "" || tc.zero) {
				t.Fatalf("Load: %v\nbut defender.New: %v", err, nerr)
			}
		})
	}
}

// TestDryRunWithoutCredentialBuildsNoClient: in dry-run mode without a
// credential no client is built, so nothing is required; the formats of
// what is given are still checked.
func TestDryRunWithoutCredentialBuildsNoClient(t *testing.T) {
	t.Parallel()
	env := map[string]string{"RESPONDER_WEBHOOKS_ALLOW_UNAUTHENTICATED": "true", "RESPONDER_ADMIN_BEARER_TOKEN": "t", "RESPONDER_DEFENDER_DRY_RUN": "true"}
	cfg, err := Load("", nil, envMap(env))
	if err != nil {
		t.Fatal(err)
	}
	if _, build := cfg.DefenderClient(); build {
		t.Fatal("a client would be built in dry-run mode without a credential")
	}
	env["RESPONDER_DEFENDER_API_URL"] = "http://api.example.com"
	_, err = Load("", nil, envMap(env))
	if err == nil || err.Error() != `env RESPONDER_DEFENDER_API_URL: defender.api_url: "http://api.example.com": http is allowed only to a loopback host; use https` {
		t.Fatalf("Load = %v", err)
	}
}

// TestDefaultsAreTheOwners: config.Default() states no default of its own
// for the keys of the HTTP edge, the Defender client and logging: it is
// their owners' defaults.
func TestDefaultsAreTheOwners(t *testing.T) {
	t.Parallel()
	d := Default()
	if got, want := d.Handlers(), handlers.DefaultSettings(); !reflect.DeepEqual(got, want) {
		t.Errorf("Default().Handlers() = %+v\nwant handlers.DefaultSettings() = %+v", got, want)
	}
	if got, _ := d.DefenderClient(); !reflect.DeepEqual(got, defender.DefaultConfig()) {
		t.Errorf("Default().DefenderClient() = %+v\nwant defender.DefaultConfig() = %+v", got, defender.DefaultConfig())
	}
	if d.Log.Level != logging.DefaultLevel || d.Log.Format != logging.DefaultFormat {
		t.Errorf("log = %+v", d.Log)
	}
}

// TestFederatedTokenFileRelativeToConfig: like every *_file key, a relative
// defender.federated_token_file is read next to the config file.
func TestFederatedTokenFileRelativeToConfig(t *testing.T) {
	t.Parallel()
	p := writeConfig(t, "webhooks:\n  allow_unauthenticated: true\nadmin:\n  bearer_token_file: admin\ndefender:\n  tenant_id: t\n  client_id: c\n  federated_token_file: token\n")
	for name, content := range map[string]string{"admin": "a", "token": "jwt"} {
		if err := os.WriteFile(filepath.Join(filepath.Dir(p), name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := Load(p, nil, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(filepath.Dir(p), "token"); cfg.Defender.FederatedTokenFile != want {
		t.Fatalf("federated_token_file = %q, want %q", cfg.Defender.FederatedTokenFile, want)
	}
}
