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
			`testdata/invalid-bad-duration.yaml:2:17: server.read_timeout: invalid duration "10 seconds" (use Go syntax such as 90s, 5m or 24h)`,
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
			`testdata/invalid-many.yaml:8:10: defender.cloud: unknown cloud "azure-china" (want one of "commercial", "gcc", "gcc-high", "dod")`,
			`testdata/invalid-many.yaml:10:28: defender.rate_limit.per_minute: must be positive, got 0`,
			`testdata/invalid-many.yaml:12:10: log.level: unknown level "verbose" (want one of "debug", "info", "warn", "error")`,
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
		"RESPONDER_LOG_LEVEL":                      "debug",
	})
	cfg, err := Load("", nil, env)
	if err != nil {
		t.Fatal(err)
	}
	d := cfg.Defender
	if d.APIURL != "https://eu.api.security.microsoft.com" || d.PollInterval != 45*time.Second || d.RateLimit.PerMinute != 10 || d.RateLimit.PerHour != 1500 {
		t.Fatalf("defender = %+v", d)
	}
	if len(cfg.Webhooks.AllowCIDRs) != 2 || !cfg.Safety.Paused || cfg.Server.AdminListen != "" || cfg.Log.Level != "debug" {
		t.Fatalf("config = %+v", cfg)
	}
	if cfg.Secrets.WebhookBearerToken != "tok" || cfg.Secrets.DefenderClientSecret != "s" {
		t.Fatalf("secrets = %+v", cfg.Secrets)
	}
	if d.MaxPackageBytes != 2<<30 || d.PackageHosts != nil {
		t.Fatalf("package defaults: %d %v", d.MaxPackageBytes, d.PackageHosts)
	}
}

// TestDefenderKeysFromEnv: the Defender client's own rules apply to values
// from the environment too, named by their variable; loopback http passes.
func TestDefenderKeysFromEnv(t *testing.T) {
	t.Parallel()
	base := map[string]string{
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
	want := "env RESPONDER_SERVER_READ_TIMEOUT: server.read_timeout: invalid duration \"soon\" (use Go syntax such as 90s, 5m or 24h)\n" +
		"env RESPONDER_STORE_DRIVER: store.driver: unknown driver \"oracle\" (want one of \"sqlite\", \"postgres\")"
	if err == nil || err.Error() != want {
		t.Fatalf("error\n got: %v\nwant: %s", err, want)
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
