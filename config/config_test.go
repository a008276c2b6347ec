package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func noEnv(string) (string, bool) { return "", false }

func envMap(m map[string]string) LookupEnv {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestLoadInvalid(t *testing.T) {
	t.Parallel()
	cases := []struct {
		file string
		want []string
	}{
		{"invalid-unknown-key-deep.yaml", []string{
			`testdata/invalid-unknown-key-deep.yaml:5:5: webhooks.basic_auth.pasword_file: unknown key (did you mean "password_file"?)`,
			`testdata/invalid-unknown-key-deep.yaml:3:3: webhooks.basic_auth.password_file: basic_auth.username is set but no password (password_file or RESPONDER_WEBHOOKS_BASIC_AUTH_PASSWORD)`,
		}},
		{"invalid-bad-duration.yaml", []string{
			`testdata/invalid-bad-duration.yaml:2:17: server.read_timeout: invalid duration "10 seconds" (use a number and a unit such as 90s, 5m, 24h, 90d or 2w, or several: 1d12h)`,
		}},
		{"invalid-store-driver.yaml", []string{
			`testdata/invalid-store-driver.yaml:4:11: store.driver: unknown driver "mysql" (want one of "sqlite", "postgres")`,
		}},
		{"invalid-missing-tenant.yaml", []string{
			`testdata/invalid-missing-tenant.yaml:3:1: defender.tenant_id: required unless defender.dry_run is true`,
		}},
		{"invalid-no-webhook-auth.yaml", []string{
			`testdata/invalid-no-webhook-auth.yaml:1:1: webhooks: no webhook authentication is configured (bearer_token_file, basic_auth, hmac, allow_cidrs or server.tls_client_ca_file); set webhooks.allow_unauthenticated: true to accept unauthenticated webhooks on purpose`,
		}},
		{"invalid-many.yaml", []string{
			`testdata/invalid-many.yaml:2:19: server.max_body_bytes: must be positive, got -1`,
			`testdata/invalid-many.yaml:3:23: server.tls_client_ca_file: requires tls_cert_file and tls_key_file (mTLS needs TLS)`,
			`testdata/invalid-many.yaml:3:23: server.tls_client_ca_file: cannot read "testdata/ca.pem": no such file or directory`,
			`testdata/invalid-many.yaml:6:17: webhooks.allow_cidrs[0]: invalid CIDR "10.0.0.0/33"`,
			`testdata/invalid-many.yaml:8:26: admin.allow_unauthenticated: is only accepted with a loopback-only server.admin_listen (an IP loopback address or localhost), not ":9090"; set admin.bearer_token_file (or RESPONDER_ADMIN_BEARER_TOKEN)`,
			`testdata/invalid-many.yaml:10:10: defender.cloud: unknown cloud "azure-china" (want one of "commercial", "gcc", "gcc-high", "dod")`,
			`testdata/invalid-many.yaml:12:28: defender.rate_limit.per_minute: must be positive, got 0`,
			`testdata/invalid-many.yaml:14:10: log.level: unknown level "verbose" (want one of "debug", "info", "warn", "error")`,
		}},
		// The admin API is closed by default (SPEC 10): without a token it is
		// served only on a loopback-only listener of its own, on purpose.
		{"invalid-admin-no-token.yaml", []string{
			`testdata/invalid-admin-no-token.yaml:1:1: admin: no admin token is set: set admin.bearer_token_file (or RESPONDER_ADMIN_BEARER_TOKEN), or set admin.allow_unauthenticated: true to serve the admin API on "127.0.0.1:9090" without one`,
		}},
		{"invalid-admin-webhook-listener.yaml", []string{
			`testdata/invalid-admin-webhook-listener.yaml:2:17: server.admin_listen: is "", which serves the admin API on the webhook listener: that needs an admin token; set admin.bearer_token_file (or RESPONDER_ADMIN_BEARER_TOKEN), or give the admin API a listener of its own`,
		}},
		{"invalid-admin-not-loopback.yaml", []string{
			`testdata/invalid-admin-not-loopback.yaml:7:44: admin.allowed_hosts[1]: "https://responder.example.com" is not a host name (give the name alone: no scheme, port, path or wildcard)`,
			`testdata/invalid-admin-not-loopback.yaml:7:77: admin.allowed_hosts[2]: "responder:9090" is not a host name (give the name alone: no scheme, port, path or wildcard)`,
			`testdata/invalid-admin-not-loopback.yaml:7:95: admin.allowed_hosts[3]: "*.example.com" is not a host name (give the name alone: no scheme, port, path or wildcard)`,
			`testdata/invalid-admin-not-loopback.yaml:6:26: admin.allow_unauthenticated: is only accepted with a loopback-only server.admin_listen (an IP loopback address or localhost), not "127.0.0.1.nip.io:9090"; set admin.bearer_token_file (or RESPONDER_ADMIN_BEARER_TOKEN)`,
		}},
		{"invalid-wrong-type.yaml", []string{
			`testdata/invalid-wrong-type.yaml:2:26: webhooks.allow_unauthenticated: invalid boolean "yes please" (use true or false)`,
			`testdata/invalid-wrong-type.yaml:3:16: webhooks.allow_cidrs: expected a list, got a scalar`,
			`testdata/invalid-wrong-type.yaml:1:1: webhooks: no webhook authentication is configured (bearer_token_file, basic_auth, hmac, allow_cidrs or server.tls_client_ca_file); set webhooks.allow_unauthenticated: true to accept unauthenticated webhooks on purpose`,
		}},
		{"invalid-tls.yaml", []string{
			`testdata/invalid-tls.yaml:3:17: server.tls_key_file: "testdata/not-a-cert.pem" and "testdata/not-a-cert.pem" are not a certificate and its key: tls: failed to find any PEM data in certificate input`,
			`testdata/invalid-tls.yaml:4:23: server.tls_client_ca_file: "testdata/not-a-cert.pem" holds no PEM certificate`,
		}},
		// check refuses what the Defender client refuses: the host is
		// parsed, not matched by prefix.
		{"invalid-defender-urls.yaml", []string{
			`testdata/invalid-defender-urls.yaml:4:12: defender.api_url: "http://localhost.evil.example": http is allowed only to a loopback host; use https`,
			`testdata/invalid-defender-urls.yaml:5:14: defender.token_url: "http://127.0.0.1.nip.io/tenant/oauth2/v2.0/token": http is allowed only to a loopback host; use https`,
		}},
		{"invalid-defender-userinfo.yaml", []string{
			`testdata/invalid-defender-userinfo.yaml:4:12: defender.api_url: "http://127.0.0.1@evil.example": want an absolute URL without user info`,
			`testdata/invalid-defender-userinfo.yaml:5:14: defender.tenant_id: "contoso.onmicrosoft.com/../evil": want a GUID or a domain name`,
			`testdata/invalid-defender-userinfo.yaml:8:50: defender.package_hosts[1]: "https://storage.example.com": not a host name (want e.g. .securitycenter.windows.com or storage.example.com, no scheme or port)`,
			`testdata/invalid-defender-userinfo.yaml:8:81: defender.package_hosts[2]: "storage.example.com:443": not a host name (want e.g. .securitycenter.windows.com or storage.example.com, no scheme or port)`,
			`testdata/invalid-defender-userinfo.yaml:9:22: defender.max_package_bytes: must be positive, got 0`,
		}},
		// The certificate is loaded as the client loads it.
		{"invalid-defender-cert-not-pem.yaml", []string{
			`testdata/invalid-defender-cert-not-pem.yaml:6:21: defender.certificate_file: "testdata/not-a-cert.pem": certificate: no PEM data (want a PEM certificate and its RSA private key)`,
		}},
		{"invalid-defender-cert-no-key.yaml", []string{
			`testdata/invalid-defender-cert-no-key.yaml:6:21: defender.certificate_file: "testdata/cert-no-key.pem": certificate: no RSA private key in PEM`,
		}},
		{"invalid-defender-cert-wrong-key.yaml", []string{
			`testdata/invalid-defender-cert-wrong-key.yaml:6:21: defender.certificate_file: "testdata/cert-wrong-key.pem": certificate: private key does not match the certificate`,
		}},
		// Notifiers: each problem at its key; a Slack URL is never read from the YAML.
		{"invalid-notify.yaml", []string{
			`testdata/invalid-notify.yaml:8:10: notify[0].url: a slack webhook URL is a secret (whoever has it may post): give it in url_file or RESPONDER_NOTIFY_SOC_SLACK_URL, not in the YAML`,
			`testdata/invalid-notify.yaml:9:11: notify[1].name: notifier "soc-slack" is configured already (notify[0])`,
			`testdata/invalid-notify.yaml:9:9: notify[1].url_file: a webhook notifier needs its URL: set url, url_file or RESPONDER_NOTIFY_SOC_SLACK_URL`,
			`testdata/invalid-notify.yaml:11:11: notify[2].name: "Bad Name": want lower-case letters and digits, separated by single - or _`,
			`testdata/invalid-notify.yaml:12:11: notify[2].type: unknown type "pager" (want one of slack, teams, webhook, log)`,
			`testdata/invalid-notify.yaml:13:25: notify[2].events[1]: unknown event "exploded" (want one of decided, collected, failed, circuit_open, circuit_closed, permission_missing, approval_requested, approval_expired)`,
			`testdata/invalid-notify.yaml:14:11: notify[3].name: "write-back" is the name of the write-back (defender.write_back); choose another`,
			`testdata/invalid-notify.yaml:18:10: notify[4].url: must be https (http:// only to a loopback host)`,
			`testdata/invalid-notify.yaml:4:39: defender.write_back: needs a Defender client: set a credential, or turn write_back off in a dry run without one`,
			`testdata/invalid-notify.yaml:4:65: defender.write_back_comment: on a sample collected event: template: write_back_comment:1:3: executing "write_back_comment" at <.Nope>: can't evaluate field Nope in type notify.Event`,
		}},
		{"invalid-syntax.yaml", []string{
			`testdata/invalid-syntax.yaml:2:11: syntax error: could not find end character of double-quoted text`,
		}},
	}
	for _, tc := range cases {
		t.Run(tc.file, func(t *testing.T) {
			t.Parallel()
			_, err := Load(filepath.Join("testdata", tc.file), nil, noEnv)
			var ps Problems
			if !errors.As(err, &ps) {
				t.Fatalf("error = %v, want Problems", err)
			}
			got := strings.Split(ps.Error(), "\n")
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Fatalf("problems\n got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

func TestLoadGoodFull(t *testing.T) {
	t.Parallel()
	cfg, err := Load("testdata/good-full.yaml", nil, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Server.ReadTimeout != 15*time.Second || cfg.Server.AdminListen != "127.0.0.1:9090" || cfg.Server.MaxBodyBytes != 2<<20 {
		t.Fatalf("server = %+v", cfg.Server)
	}
	if cfg.Store.Driver != "postgres" || cfg.Defender.Cloud != "gcc-high" || cfg.Defender.RateLimit.PerHour != 1000 || !cfg.Safety.Paused {
		t.Fatalf("config = %+v", cfg)
	}
	// Secrets are read from files relative to the config and trimmed.
	if cfg.Secrets.WebhookBearerToken != "s3cr3t-webhook-token" || cfg.Secrets.DefenderClientSecret != "s3cr3t-client-secret" ||
		cfg.Secrets.WebhookHMACSecret != "s3cr3t-hmac-secret" || cfg.Secrets.WebhookBasicPassword != "s3cr3t-basic-password" || cfg.Secrets.AdminBearerToken != "s3cr3t-admin-token" {
		t.Fatalf("secrets = %+v", cfg.Secrets)
	}
	if cfg.Rules.Files[0] != filepath.Join("testdata", "rules.yaml") || cfg.Rules.Files[1] != "/etc/responder/extra.yaml" {
		t.Fatalf("rules files = %v", cfg.Rules.Files)
	}
	if cfg.Store.Retention != 10*24*time.Hour+12*time.Hour || cfg.Defender.ActionTimeout != 24*time.Hour {
		t.Fatalf("durations with days: retention %s, action_timeout %s", cfg.Store.Retention, cfg.Defender.ActionTimeout)
	}
	// Notifiers: secrets from files, a webhook URL from the YAML.
	ns := cfg.Notifiers()
	if len(ns) != 2 || ns[0].URL != "https://hooks.slack.example/services/T000/B000/XXXX" || len(ns[0].Events) != 3 ||
		ns[1].URL != "https://siem.example/hooks/responder" || ns[1].HMACSecret != "s3cr3t-siem-hmac" || ns[1].Timeout != 5*time.Second ||
		len(ns[1].Rules) != 1 {
		t.Fatalf("notifiers = %+v", ns)
	}
	if !cfg.Defender.WriteBack || cfg.Defender.GraphURL != "https://graph.microsoft.us" {
		t.Fatalf("write-back = %v %q", cfg.Defender.WriteBack, cfg.Defender.GraphURL)
	}
	// Unset keys keep their defaults.
	if cfg.Webhooks.HMAC.MaxSkew != 2*time.Minute || cfg.Defender.PollInterval != time.Minute {
		t.Fatalf("defaults lost: %+v", cfg.Defender)
	}
}

func TestDefaultsWithEnvOnly(t *testing.T) {
	t.Parallel()
	env := envMap(map[string]string{
		"RESPONDER_WEBHOOKS_BEARER_TOKEN":          "tok",
		"RESPONDER_DEFENDER_TENANT_ID":             "t",
		"RESPONDER_DEFENDER_CLIENT_ID":             "c",
		"RESPONDER_DEFENDER_CLIENT_SECRET":         "s",
		"RESPONDER_DEFENDER_API_URL":               "https://eu.api.security.microsoft.com",
		"RESPONDER_DEFENDER_POLL_INTERVAL":         "45s",
		"RESPONDER_DEFENDER_RATE_LIMIT_PER_MINUTE": "10",
		"RESPONDER_WEBHOOKS_ALLOW_CIDRS":           "10.0.0.0/8, 127.0.0.1",
		"RESPONDER_SAFETY_PAUSED":                  "true",
		"RESPONDER_SERVER_ADMIN_LISTEN":            "",
		"RESPONDER_ADMIN_BEARER_TOKEN":             " adm ",
		"RESPONDER_ADMIN_ALLOWED_HOSTS":            "responder.example.com, Responder",
		"RESPONDER_LOG_LEVEL":                      "debug",
	})
	cfg, err := Load("", nil, env)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Store.Retention != DefaultRetention || DefaultRetention != 90*24*time.Hour {
		t.Fatalf("store.retention = %s, want the default 90d", cfg.Store.Retention)
	}
	d := cfg.Defender
	if d.APIURL != "https://eu.api.security.microsoft.com" || d.PollInterval != 45*time.Second || d.RateLimit.PerMinute != 10 || d.RateLimit.PerHour != 1500 {
		t.Fatalf("defender = %+v", d)
	}
	if len(cfg.Webhooks.AllowCIDRs) != 2 || !cfg.Safety.Paused || cfg.Server.AdminListen != "" || cfg.Log.Level != "debug" {
		t.Fatalf("config = %+v", cfg)
	}
	if cfg.Secrets.WebhookBearerToken != "tok" || cfg.Secrets.DefenderClientSecret != "s" || cfg.Secrets.AdminBearerToken != "adm" {
		t.Fatalf("secrets = %+v", cfg.Secrets)
	}
	if tokens := cfg.AdminTokens(); len(tokens) != 1 || tokens[0] != (AdminToken{Name: "admin", Token: "adm"}) {
		t.Fatalf("admin tokens = %+v", tokens)
	}
	if len(cfg.Admin.AllowedHosts) != 2 || cfg.Admin.AllowedHosts[1] != "Responder" {
		t.Fatalf("admin.allowed_hosts = %q", cfg.Admin.AllowedHosts)
	}
	if d.MaxPackageBytes != 2<<30 || d.PackageHosts != nil {
		t.Fatalf("package defaults: %d %v", d.MaxPackageBytes, d.PackageHosts)
	}
}

// TestAdminAccess: the admin API needs a token unless it has a loopback-only
// listener of its own and admin.allow_unauthenticated says so; the problem
// names the variable that set the value.
func TestAdminAccess(t *testing.T) {
	t.Parallel()
	base := map[string]string{"RESPONDER_WEBHOOKS_ALLOW_UNAUTHENTICATED": "true", "RESPONDER_DEFENDER_DRY_RUN": "true"}
	const setToken = "set admin.bearer_token_file (or RESPONDER_ADMIN_BEARER_TOKEN)"
	cases := []struct {
		name string
		env  map[string]string
		want string // the only problem, "" for none
	}{
		{"default listener, no token", nil,
			`config: server.admin_listen: ":9090" is not loopback-only and no admin token is set: ` + setToken + ` to protect the admin API and pprof`},
		{"default listener, token", map[string]string{"RESPONDER_ADMIN_BEARER_TOKEN": "t"}, ""},
		{"every interface, allow_unauthenticated", map[string]string{"RESPONDER_SERVER_ADMIN_LISTEN": "0.0.0.0:9090", "RESPONDER_ADMIN_ALLOW_UNAUTHENTICATED": "true"},
			`env RESPONDER_ADMIN_ALLOW_UNAUTHENTICATED: admin.allow_unauthenticated: is only accepted with a loopback-only server.admin_listen (an IP loopback address or localhost), not "0.0.0.0:9090"; ` + setToken},
		{"a name that only looks like loopback", map[string]string{"RESPONDER_SERVER_ADMIN_LISTEN": "localhost.example.com:9090", "RESPONDER_ADMIN_ALLOW_UNAUTHENTICATED": "true"},
			`env RESPONDER_ADMIN_ALLOW_UNAUTHENTICATED: admin.allow_unauthenticated: is only accepted with a loopback-only server.admin_listen (an IP loopback address or localhost), not "localhost.example.com:9090"; ` + setToken},
		{"every interface, token and allow_unauthenticated", map[string]string{"RESPONDER_SERVER_ADMIN_LISTEN": "0.0.0.0:9090", "RESPONDER_ADMIN_ALLOW_UNAUTHENTICATED": "true", "RESPONDER_ADMIN_BEARER_TOKEN": "t"}, ""},
		{"loopback, not allowed", map[string]string{"RESPONDER_SERVER_ADMIN_LISTEN": "127.0.0.1:9090"},
			`config: admin: no admin token is set: ` + setToken + `, or set admin.allow_unauthenticated: true to serve the admin API on "127.0.0.1:9090" without one`},
		{"127.0.0.1, allowed", map[string]string{"RESPONDER_SERVER_ADMIN_LISTEN": "127.0.0.1:9090", "RESPONDER_ADMIN_ALLOW_UNAUTHENTICATED": "true"}, ""},
		{"127.0.0.2, allowed", map[string]string{"RESPONDER_SERVER_ADMIN_LISTEN": "127.0.0.2:0", "RESPONDER_ADMIN_ALLOW_UNAUTHENTICATED": "true"}, ""},
		{"::1, allowed", map[string]string{"RESPONDER_SERVER_ADMIN_LISTEN": "[::1]:9090", "RESPONDER_ADMIN_ALLOW_UNAUTHENTICATED": "true"}, ""},
		{"localhost, allowed", map[string]string{"RESPONDER_SERVER_ADMIN_LISTEN": "localhost:9090", "RESPONDER_ADMIN_ALLOW_UNAUTHENTICATED": "true"}, ""},
		{"webhook listener, no token", map[string]string{"RESPONDER_SERVER_LISTEN": "127.0.0.1:8080", "RESPONDER_SERVER_ADMIN_LISTEN": "", "RESPONDER_ADMIN_ALLOW_UNAUTHENTICATED": "true"},
			`env RESPONDER_SERVER_ADMIN_LISTEN: server.admin_listen: is "", which serves the admin API on the webhook listener: that needs an admin token; ` + setToken + `, or give the admin API a listener of its own`},
		{"webhook listener, token", map[string]string{"RESPONDER_SERVER_ADMIN_LISTEN": "", "RESPONDER_ADMIN_BEARER_TOKEN": "t"}, ""},
		// A token of blanks is a mistake to report, not "no token".
		{"blank admin token", map[string]string{"RESPONDER_ADMIN_BEARER_TOKEN": " \t "},
			`env RESPONDER_ADMIN_BEARER_TOKEN: is set but empty or blank; give the secret a value (or admin.bearer_token_file) or unset the variable`},
		{"empty admin token on loopback with allow_unauthenticated", map[string]string{"RESPONDER_ADMIN_BEARER_TOKEN": "", "RESPONDER_SERVER_ADMIN_LISTEN": "127.0.0.1:9090", "RESPONDER_ADMIN_ALLOW_UNAUTHENTICATED": "true"},
			`env RESPONDER_ADMIN_BEARER_TOKEN: is set but empty or blank; give the secret a value (or admin.bearer_token_file) or unset the variable`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := map[string]string{}
			for k, v := range base {
				env[k] = v
			}
			for k, v := range tc.env {
				env[k] = v
			}
			_, err := Load("", nil, envMap(env))
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tc.want {
				t.Fatalf("problems\n got: %s\nwant: %s", got, tc.want)
			}
		})
	}
}

// TestBlankSecretFromEnv: every secret variable set to blanks is a problem
// naming it (and only that problem: not also "no authentication").
func TestBlankSecretFromEnv(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ env, key string }{
		{"RESPONDER_ADMIN_BEARER_TOKEN", "admin.bearer_token_file"},
		{"RESPONDER_WEBHOOKS_BEARER_TOKEN", "webhooks.bearer_token_file"},
		{"RESPONDER_WEBHOOKS_BASIC_AUTH_PASSWORD", "webhooks.basic_auth.password_file"},
		{"RESPONDER_WEBHOOKS_HMAC_SECRET", "webhooks.hmac.secret_file"},
		{"RESPONDER_DEFENDER_CLIENT_SECRET", "defender.client_secret_file"},
	} {
		t.Run(tc.env, func(t *testing.T) {
			t.Parallel()
			env := map[string]string{
				"RESPONDER_ADMIN_BEARER_TOKEN":           "a",
				"RESPONDER_WEBHOOKS_BEARER_TOKEN":        "w",
				"RESPONDER_WEBHOOKS_BASIC_AUTH_USERNAME": "am",
				"RESPONDER_WEBHOOKS_BASIC_AUTH_PASSWORD": "p",
				"RESPONDER_WEBHOOKS_HMAC_SECRET":         "h",
				"RESPONDER_DEFENDER_TENANT_ID":           "t",
				"RESPONDER_DEFENDER_CLIENT_ID":           "c",
				"RESPONDER_DEFENDER_CLIENT_SECRET":       "s",
			}
			if tc.env != "RESPONDER_WEBHOOKS_BEARER_TOKEN" {
				// Leave the blank one the only webhook credential when it is one.
				delete(env, "RESPONDER_WEBHOOKS_BEARER_TOKEN")
			}
			env[tc.env] = "   "
			if tc.env == "RESPONDER_WEBHOOKS_BEARER_TOKEN" {
				delete(env, "RESPONDER_WEBHOOKS_BASIC_AUTH_USERNAME")
				delete(env, "RESPONDER_WEBHOOKS_BASIC_AUTH_PASSWORD")
				delete(env, "RESPONDER_WEBHOOKS_HMAC_SECRET")
			}
			_, err := Load("", nil, envMap(env))
			want := "env " + tc.env + ": is set but empty or blank; give the secret a value (or " + tc.key + ") or unset the variable"
			if err == nil || err.Error() != want {
				t.Fatalf("error\n got: %v\nwant: %s", err, want)
			}
		})
	}
}

func TestGoodAdminLoopback(t *testing.T) {
	t.Parallel()
	cfg, err := Load("testdata/good-admin-loopback.yaml", nil, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Admin.AllowUnauthenticated || len(cfg.AdminTokens()) != 0 || cfg.AdminAddr() != "[::1]:9090" {
		t.Fatalf("admin = %+v, tokens %v", cfg.Admin, cfg.AdminTokens())
	}
}

func TestLoopbackOnly(t *testing.T) {
	t.Parallel()
	for listen, want := range map[string]bool{
		"127.0.0.1:9090": true, "127.9.9.9:1": true, "[::1]:9090": true, "localhost:9090": true, "LocalHost:0": true,
		":9090": false, "0.0.0.0:9090": false, "[::]:9090": false, "10.0.0.1:9090": false, "responder:9090": false,
		"localhost.example.com:9090": false, "127.0.0.1.nip.io:9090": false, "127.0.0.1": false, "": false,
	} {
		if got := LoopbackOnly(listen); got != want {
			t.Errorf("LoopbackOnly(%q) = %v, want %v", listen, got, want)
		}
	}
}

// TestDefenderKeysFromEnv: the Defender client's own rules apply to values
// from the environment too, named by their variable; loopback http passes.
func TestDefenderKeysFromEnv(t *testing.T) {
	t.Parallel()
	base := map[string]string{
		"RESPONDER_ADMIN_BEARER_TOKEN":     "adm",
		"RESPONDER_WEBHOOKS_BEARER_TOKEN":  "tok",
		"RESPONDER_DEFENDER_TENANT_ID":     "contoso.onmicrosoft.com",
		"RESPONDER_DEFENDER_CLIENT_ID":     "c",
		"RESPONDER_DEFENDER_CLIENT_SECRET": "s",
	}
	with := func(kv ...string) LookupEnv {
		m := map[string]string{}
		for k, v := range base {
			m[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return envMap(m)
	}
	for _, ok := range [][]string{
		{"RESPONDER_DEFENDER_API_URL", "http://127.0.0.1:8080", "RESPONDER_DEFENDER_TOKEN_URL", "http://localhost:9/t/oauth2/v2.0/token"},
		{"RESPONDER_DEFENDER_API_URL", "http://[::1]:8080/", "RESPONDER_DEFENDER_TOKEN_URL", "https://login.example.com/t?x=1"},
		{"RESPONDER_DEFENDER_API_URL", "https://eu.api.security.microsoft.com"},
		{"RESPONDER_DEFENDER_PACKAGE_HOSTS", ".securitycenter.windows.com, storage.example.com", "RESPONDER_DEFENDER_MAX_PACKAGE_BYTES", "1048576"},
	} {
		if _, err := Load("", nil, with(ok...)); err != nil {
			t.Errorf("%v: %v", ok, err)
		}
	}
	cases := []struct {
		kv   []string
		want string
	}{
		{[]string{"RESPONDER_DEFENDER_API_URL", "http://localhost.evil.example"},
			`env RESPONDER_DEFENDER_API_URL: defender.api_url: "http://localhost.evil.example": http is allowed only to a loopback host; use https`},
		{[]string{"RESPONDER_DEFENDER_API_URL", "https://api.example.com/?x=1"},
			`env RESPONDER_DEFENDER_API_URL: defender.api_url: "https://api.example.com/?x=1": must have no query or fragment`},
		{[]string{"RESPONDER_DEFENDER_TOKEN_URL", "http://127.0.0.1@evil.example/token"},
			`env RESPONDER_DEFENDER_TOKEN_URL: defender.token_url: "http://127.0.0.1@evil.example/token": want an absolute URL without user info`},
		{[]string{"RESPONDER_DEFENDER_TOKEN_URL", "ftp://127.0.0.1/token"},
			`env RESPONDER_DEFENDER_TOKEN_URL: defender.token_url: "ftp://127.0.0.1/token": want https`},
		{[]string{"RESPONDER_DEFENDER_PACKAGE_HOSTS", "*.securitycenter.windows.com"},
			`env RESPONDER_DEFENDER_PACKAGE_HOSTS: defender.package_hosts[0]: "*.securitycenter.windows.com": not a host name (want e.g. .securitycenter.windows.com or storage.example.com, no scheme or port)`},
		{[]string{"RESPONDER_DEFENDER_MAX_PACKAGE_BYTES", "-1"},
			`env RESPONDER_DEFENDER_MAX_PACKAGE_BYTES: defender.max_package_bytes: must be positive, got -1`},
	}
	for _, tc := range cases {
		_, err := Load("", nil, with(tc.kv...))
		if err == nil || err.Error() != tc.want {
			t.Errorf("%v:\n got: %v\nwant: %s", tc.kv, err, tc.want)
		}
	}
}

func TestEnvOverridesFileAndNamesVariableInErrors(t *testing.T) {
	t.Parallel()
	env := envMap(map[string]string{"RESPONDER_STORE_DRIVER": "oracle", "RESPONDER_SERVER_READ_TIMEOUT": "soon"})
	_, err := Load("testdata/good-full.yaml", nil, env)
	want := "env RESPONDER_SERVER_READ_TIMEOUT: server.read_timeout: invalid duration \"soon\" (use a number and a unit such as 90s, 5m, 24h, 90d or 2w, or several: 1d12h)\n" +
		"env RESPONDER_STORE_DRIVER: store.driver: unknown driver \"oracle\" (want one of \"sqlite\", \"postgres\")"
	if err == nil || err.Error() != want {
		t.Fatalf("error\n got: %v\nwant: %s", err, want)
	}
}

// TestStoreRetention: store.retention takes days and weeks, must be at
// least a day, and a bad value is reported at its position, from the file
// or from the environment.
func TestStoreRetention(t *testing.T) {
	t.Parallel()
	const base = "webhooks:\n  allow_unauthenticated: true\ndefender:\n  dry_run: true\nstore:\n  retention: "
	const days = 24 * time.Hour
	cases := []struct {
		value  string // in the file ("" leaves the key out)
		env    string // RESPONDER_STORE_RETENTION, when set
		action string // defender.action_timeout, when set
		want   time.Duration
		err    string // the problem, after "<file>:"
	}{
		{value: "", want: 90 * days},
		{value: "90d", want: 90 * days},
		{value: "30d", env: "2w", want: 14 * days},
		{value: "1d12h", action: "1d", want: 36 * time.Hour},
		{value: "1d", action: "1d", want: days},
		{value: "2160h", want: 90 * days},
		{value: "3650d", want: 3650 * days},
		{value: "0", err: `6:14: store.retention: must be positive, got 0s (there is no "keep forever": write a long period such as 3650d)`},
		{value: "-1d", err: `6:14: store.retention: must be positive, got -24h0m0s (there is no "keep forever": write a long period such as 3650d)`},
		{value: "90s", err: `6:14: store.retention: must be at least 1d, got 1m30s`},
		{value: "23h59m", err: `6:14: store.retention: must be at least 1d, got 23h59m0s`},
		{value: "2d", err: `6:14: store.retention: must be at least defender.action_timeout (72h0m0s): an alert may wait that long for its decision, got 48h0m0s`},
		{value: "3d", want: 3 * days},
		{value: "90 days", err: `6:14: store.retention: invalid duration "90 days" (use a number and a unit such as 90s, 5m, 24h, 90d or 2w, or several: 1d12h)`},
		{value: "90", err: `6:14: store.retention: invalid duration "90" (use a number and a unit such as 90s, 5m, 24h, 90d or 2w, or several: 1d12h)`},
		{value: "90d", env: "12h", err: `store.retention: must be at least 1d, got 12h0m0s`},
		{value: "90d", env: "forever", err: `store.retention: invalid duration "forever" (use a number and a unit such as 90s, 5m, 24h, 90d or 2w, or several: 1d12h)`},
	}
	for _, tc := range cases {
		t.Run(tc.value+"/"+tc.env, func(t *testing.T) {
			t.Parallel()
			src := base + tc.value + "\n"
			if tc.value == "" {
				src = base + "90d\n"
				src = strings.Replace(src, "store:\n  retention: 90d\n", "", 1)
			}
			p := filepath.Join(t.TempDir(), "c.yaml")
			if err := os.WriteFile(p, []byte(src), 0o600); err != nil {
				t.Fatal(err)
			}
			env := map[string]string{"RESPONDER_ADMIN_BEARER_TOKEN": "adm"}
			if tc.env != "" {
				env["RESPONDER_STORE_RETENTION"] = tc.env
			}
			if tc.action != "" {
				env["RESPONDER_DEFENDER_ACTION_TIMEOUT"] = tc.action
			}
			cfg, err := Load(p, nil, envMap(env))
			if tc.err != "" {
				want := p + ":" + tc.err
				if tc.env != "" {
					want = "env RESPONDER_STORE_RETENTION: " + tc.err
				}
				if err == nil || err.Error() != want {
					t.Fatalf("error\n got: %v\nwant: %s", err, want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Store.Retention != tc.want {
				t.Fatalf("retention = %s, want %s", cfg.Store.Retention, tc.want)
			}
		})
	}
}

func TestSecretFileAndEnvBothSet(t *testing.T) {
	t.Parallel()
	_, err := Load("testdata/good-full.yaml", nil, envMap(map[string]string{"RESPONDER_DEFENDER_CLIENT_SECRET": "x"}))
	if err == nil || !strings.Contains(err.Error(), "defender.client_secret_file: set either defender.client_secret_file or RESPONDER_DEFENDER_CLIENT_SECRET, not both") {
		t.Fatalf("error = %v", err)
	}
	if strings.Contains(err.Error(), "s3cr3t") {
		t.Fatalf("error leaks a secret: %v", err)
	}
}

func TestEveryKeyHasAnEnvironmentOverride(t *testing.T) {
	t.Parallel()
	// Each key path maps to exactly one variable, and setting it changes the value.
	samples := map[string]string{}
	for _, k := range Keys() {
		samples[EnvName(k)] = ""
	}
	if len(samples) != len(Keys()) {
		t.Fatalf("two keys share an environment variable")
	}
	for _, k := range []string{"server.listen", "webhooks.hmac.timestamp_header", "defender.rate_limit.per_hour", "safety.max_machines_per_10m"} {
		if _, ok := samples[EnvName(k)]; !ok {
			t.Fatalf("key %s missing from Keys()", k)
		}
	}
	if EnvName("defender.api_url") != "RESPONDER_DEFENDER_API_URL" {
		t.Fatalf("EnvName = %s", EnvName("defender.api_url"))
	}
}

func TestExampleConfigIsValid(t *testing.T) {
	t.Parallel()
	if _, err := os.Stat("../examples/responder.yaml"); err != nil {
		t.Fatal(err)
	}
	if _, err := Load("../examples/responder.yaml", nil, noEnv); err != nil {
		t.Fatalf("example config: %v", err)
	}
}

func FuzzLoad(f *testing.F) {
	for _, name := range []string{"good-full.yaml", "invalid-many.yaml", "invalid-unknown-key-deep.yaml"} {
		data, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(t.TempDir(), "c.yaml")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		_, _ = Load(p, nil, noEnv)
	})
}

// TestNotifierSecretsFromEnv: a notifier's URL and signing secret come from
// RESPONDER_NOTIFY_<NAME>_URL and _HMAC_SECRET; a file and a variable both
// set is a problem, and no problem echoes the secret.
func TestNotifierSecretsFromEnv(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "c.yaml")
	yaml := "webhooks: {allow_unauthenticated: true}\nserver: {admin_listen: \"127.0.0.1:9090\"}\nadmin: {allow_unauthenticated: true}\n" +
		"defender: {dry_run: true}\nnotify:\n  - name: soc-teams\n    type: teams\n  - name: siem\n    type: webhook\n    url: https://siem.example/h\n"
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(path, nil, envMap(map[string]string{
		"RESPONDER_NOTIFY_SOC_TEAMS_URL":    "https://prod.workflows.example/hook?sig=s3cr3t-sig",
		"RESPONDER_NOTIFY_SIEM_HMAC_SECRET": "0123456789abcdef-secret",
	}))
	if err != nil {
		t.Fatal(err)
	}
	ns := cfg.Notifiers()
	if ns[0].URL != "https://prod.workflows.example/hook?sig=s3cr3t-sig" || ns[1].HMACSecret != "0123456789abcdef-secret" {
		t.Fatalf("notifiers = %+v", ns)
	}
	_, err = Load(path, nil, envMap(map[string]string{
		"RESPONDER_NOTIFY_SOC_TEAMS_URL": "https://prod.workflows.example/hook?sig=s3cr3t-sig",
		"RESPONDER_NOTIFY_SIEM_URL":      "https://other.example/s3cr3t",
	}))
	if err == nil || !strings.Contains(err.Error(), "notify[1].url: set one of url, url_file and RESPONDER_NOTIFY_SIEM_URL") {
		t.Fatalf("error = %v", err)
	}
	if strings.Contains(err.Error(), "s3cr3t") {
		t.Fatalf("a problem echoes a secret: %v", err)
	}
}
