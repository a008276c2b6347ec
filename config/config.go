// Package config defines the service configuration of SPEC section 4: its
// types and defaults, strict YAML loading with file:line:col errors,
// RESPONDER_* environment overrides for every key, secrets read from files or
// the environment, and validation that reports every problem at once.
package config

import (
	"time"

	"github.com/responder-dev/responder/defender"
)

// Config is the whole service configuration.
type Config struct {
	Server   Server   `yaml:"server"`
	Admin    Admin    `yaml:"admin"`
	Webhooks Webhooks `yaml:"webhooks"`
	Store    Store    `yaml:"store"`
	Rules    Rules    `yaml:"rules"`
	Defender Defender `yaml:"defender"`
	Safety   Safety   `yaml:"safety"`
	Log      Log      `yaml:"log"`

	// Secrets holds the secret values read from *_file keys or the
	// environment. It is never decoded from YAML and never printed.
	Secrets Secrets `yaml:"-"`
	// File is the path the configuration was read from ("" for none).
	File string `yaml:"-"`
}

// Server configures the listeners.
type Server struct {
	// Listen is the webhook listener address (also /healthz, /readyz). Default ":8080".
	Listen string `yaml:"listen"`
	// AdminListen serves /metrics, the admin API and pprof. Default ":9090";
	// "" serves them on Listen.
	AdminListen string `yaml:"admin_listen"`
	// MaxBodyBytes caps a webhook body; larger bodies get 413. Default 1 MiB.
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// ReadTimeout bounds reading a whole request. Default 10s.
	ReadTimeout time.Duration `yaml:"read_timeout"`
	// ShutdownTimeout bounds the graceful shutdown. Default 30s.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// TLSCertFile and TLSKeyFile turn on HTTPS for both listeners.
	TLSCertFile string `yaml:"tls_cert_file"`
	TLSKeyFile  string `yaml:"tls_key_file"`
	// TLSClientCAFile requires client certificates signed by this CA (mTLS).
	TLSClientCAFile string `yaml:"tls_client_ca_file"`
}

// Admin configures the admin API (/api/v1/*) and pprof.
type Admin struct {
	// BearerTokenFile protects /api/v1/* and pprof; /metrics, /healthz and
	// /readyz stay open. Env: RESPONDER_ADMIN_BEARER_TOKEN. serve refuses to
	// start without an admin token unless AllowUnauthenticated is set and
	// the admin listener is loopback-only.
	BearerTokenFile string `yaml:"bearer_token_file"`
	// AllowUnauthenticated serves the admin API without a token, which is
	// accepted only on a loopback-only server.admin_listen (an IP loopback
	// address or localhost). Default false. With a token it has no effect.
	AllowUnauthenticated bool `yaml:"allow_unauthenticated"`
	// AllowedHosts are the host names, besides IP literals, localhost and
	// the admin listener's own host, that the admin API answers in the Host
	// header (compared case-insensitively, port ignored): a name that
	// resolves to the responder but is not listed is refused, which defeats
	// DNS rebinding. Default none.
	AllowedHosts []string `yaml:"allowed_hosts"`
}

// Webhooks configures inbound authentication. AllowCIDRs, when set, is a
// gate every request must pass; then any one valid credential among those
// configured (bearer token, basic credentials, HMAC signature) admits it
// (handlers.WebhookAuth says why).
type Webhooks struct {
	// BearerTokenFile holds the token of "Authorization: Bearer <token>".
	// Env: RESPONDER_WEBHOOKS_BEARER_TOKEN.
	BearerTokenFile string    `yaml:"bearer_token_file"`
	BasicAuth       BasicAuth `yaml:"basic_auth"`
	HMAC            HMAC      `yaml:"hmac"`
	// AllowCIDRs restricts the socket peer address (X-Forwarded-For is not
	// trusted). Empty allows every peer.
	AllowCIDRs []string `yaml:"allow_cidrs"`
	// AllowUnauthenticated must be true to serve webhooks with no method set.
	AllowUnauthenticated bool `yaml:"allow_unauthenticated"`
}

// BasicAuth configures HTTP basic authentication of webhooks.
type BasicAuth struct {
	Username string `yaml:"username"`
	// PasswordFile holds the password. Env: RESPONDER_WEBHOOKS_BASIC_AUTH_PASSWORD.
	PasswordFile string `yaml:"password_file"`
}

// HMAC configures body signatures (Grafana style: hex HMAC-SHA256).
type HMAC struct {
	// SecretFile holds the shared secret. Env: RESPONDER_WEBHOOKS_HMAC_SECRET.
	SecretFile string `yaml:"secret_file"`
	// Header carries the hex signature. Default X-Grafana-Alerting-Signature.
	Header string `yaml:"header"`
	// TimestampHeader, when set, carries the unix time that was signed as
	// "<timestamp>:<body>"; requests older or newer than MaxSkew are refused.
	TimestampHeader string `yaml:"timestamp_header"`
	// MaxSkew bounds the timestamp's distance from now. Default 5m.
	MaxSkew time.Duration `yaml:"max_skew"`
}

// Store configures the durable store.
type Store struct {
	// Driver is sqlite (embedded default, one node) or postgres (several replicas).
	Driver string `yaml:"driver"`
	// DSN is a file path for sqlite, a postgres:// URL for postgres.
	DSN string `yaml:"dsn"`
	// Retention is how long alert payloads and finished audit entries are
	// kept; older ones are deleted by a background job (live entries and
	// cooldowns in force never are). Default 90d; at least MinRetention
	// and Defender.ActionTimeout; there is no "keep forever" (write a long
	// period such as 3650d).
	Retention time.Duration `yaml:"retention"`
}

// DefaultRetention is the default of store.retention (SPEC section 16).
const DefaultRetention = 90 * 24 * time.Hour

// MinRetention is the shortest store.retention accepted: a deleted alert
// row forgets its dedup key, and a finished entry may still get its package
// downloaded, so anything shorter than a day is most likely a unit typo
// (90s for 90d).
const MinRetention = 24 * time.Hour

// Rules configures the rule files.
type Rules struct {
	// Files are merged in order and watched. Default ["rules.yaml"].
	Files []string `yaml:"files"`
}

// Defender configures the Microsoft Defender for Endpoint API.
type Defender struct {
	// Cloud is commercial, gcc, gcc-high or dod; it sets the API and login hosts.
	Cloud string `yaml:"cloud"`
	// APIURL overrides the API base URL (e.g. a regional host).
	APIURL string `yaml:"api_url"`
	// TokenURL overrides the token endpoint.
	TokenURL string `yaml:"token_url"`
	TenantID string `yaml:"tenant_id"`
	ClientID string `yaml:"client_id"`
	// ClientSecretFile holds the client secret. Env: RESPONDER_DEFENDER_CLIENT_SECRET.
	ClientSecretFile string `yaml:"client_secret_file"`
	// CertificateFile holds a PEM certificate and key: a client-assertion JWT
	// is used instead of a secret.
	CertificateFile string `yaml:"certificate_file"`
	// FederatedTokenFile holds a workload identity token (Kubernetes); also
	// AZURE_FEDERATED_TOKEN_FILE.
	FederatedTokenFile string    `yaml:"federated_token_file"`
	RateLimit          RateLimit `yaml:"rate_limit"`
	// PollInterval is the machine action status polling period. Default 30s.
	PollInterval time.Duration `yaml:"poll_interval"`
	// ActionTimeout stops tracking an action after this long; it is also how
	// long an alert or a collection is retried through a Defender outage.
	// Default 72h.
	ActionTimeout time.Duration `yaml:"action_timeout"`
	// PostSettle is how long after an action request whose answer was lost
	// (a timeout, a crash) the responder only looks for the action it may
	// have created before it sends the request again. Default 5m; at least
	// DefenderRequestTimeout and a second.
	PostSettle time.Duration `yaml:"post_settle"`
	// DownloadDir, when set, receives each finished package.
	DownloadDir string `yaml:"download_dir"`
	// PackageHosts are the hosts a package download link and each of its
	// redirects may lead to: ".domain" matches any subdomain, any other
	// entry that exact host. Empty: the cloud's package storage hosts
	// (defender.DefaultPackageHosts). The API host is always allowed.
	PackageHosts []string `yaml:"package_hosts"`
	// MaxPackageBytes caps a package download, in bytes. Default 2 GiB.
	MaxPackageBytes int64 `yaml:"max_package_bytes"`
	// DryRun decides, logs, counts and audits but never calls a write endpoint.
	DryRun bool `yaml:"dry_run"`
}

// RateLimit is the MDE quota per tenant.
type RateLimit struct {
	PerMinute int `yaml:"per_minute"` // default 100
	PerHour   int `yaml:"per_hour"`   // default 1500
}

// Safety configures the circuit breaker and kill switch.
type Safety struct {
	// MaxCollectionsPerHour opens the circuit breaker over all machines. Default 200.
	MaxCollectionsPerHour int `yaml:"max_collections_per_hour"`
	// MaxMachinesPer10m opens it on distinct machines in 10 minutes. Default 50.
	MaxMachinesPer10m int `yaml:"max_machines_per_10m"`
	// Paused suppresses every action from the start (also POST /api/v1/pause).
	Paused bool `yaml:"paused"`
}

// Log configures logging.
type Log struct {
	Level  string `yaml:"level"`  // debug | info | warn | error; default info
	Format string `yaml:"format"` // json | console; default json
}

// Secrets are the secret values, from *_file keys or the environment.
type Secrets struct {
	AdminBearerToken     string
	WebhookBearerToken   string
	WebhookBasicPassword string
	WebhookHMACSecret    string
	DefenderClientSecret string
}

// DefenderRequestTimeout bounds each request to Defender (API and login).
const DefenderRequestTimeout = 15 * time.Second

// Default returns the configuration with every default of SPEC section 4.
// It is the single place where defaults are stated.
func Default() *Config {
	return &Config{
		Server: Server{
			Listen:          ":8080",
			AdminListen:     ":9090",
			MaxBodyBytes:    1 << 20,
			ReadTimeout:     10 * time.Second,
			ShutdownTimeout: 30 * time.Second,
		},
		Webhooks: Webhooks{
			HMAC: HMAC{Header: "X-Grafana-Alerting-Signature", MaxSkew: 5 * time.Minute},
		},
		Store: Store{Driver: "sqlite", DSN: "responder.db", Retention: DefaultRetention},
		Rules: Rules{Files: []string{"rules.yaml"}},
		Defender: Defender{
			Cloud:           "commercial",
			RateLimit:       RateLimit{PerMinute: 100, PerHour: 1500},
			PollInterval:    30 * time.Second,
			ActionTimeout:   72 * time.Hour,
			PostSettle:      5 * time.Minute,
			MaxPackageBytes: defender.DefaultMaxPackageBytes,
		},
		Safety: Safety{MaxCollectionsPerHour: 200, MaxMachinesPer10m: 50},
		Log:    Log{Level: "info", Format: "json"},
	}
}

// AdminTokenName is the name under which the admin token of
// admin.bearer_token_file (or RESPONDER_ADMIN_BEARER_TOKEN) is logged as the
// "by" of the state changes it makes.
const AdminTokenName = "admin"

// AdminToken is one credential of the admin API: the token and the name that
// logs show for whoever presented it.
type AdminToken struct {
	Name  string
	Token string
}

// AdminTokens returns the credentials that the admin API accepts; none means
// the API is served without authentication (allowed only on loopback, see
// admin.allow_unauthenticated). Named tokens with scopes (SPEC 14
// admin.tokens) would be added here.
func (c *Config) AdminTokens() []AdminToken {
	if c.Secrets.AdminBearerToken == "" {
		return nil
	}
	return []AdminToken{{Name: AdminTokenName, Token: c.Secrets.AdminBearerToken}}
}

// AdminUnauthenticatedAllowed reports whether the admin API may be served
// without a token: admin.allow_unauthenticated is set and the admin API has
// a loopback-only listener of its own.
func (c *Config) AdminUnauthenticatedAllowed() bool {
	return c.Admin.AllowUnauthenticated && c.Server.AdminListen != "" && LoopbackOnly(c.Server.AdminListen)
}

// AdminAddr is the address the admin API is served on: server.admin_listen,
// or server.listen when it is "".
func (c *Config) AdminAddr() string {
	if c.Server.AdminListen == "" {
		return c.Server.Listen
	}
	return c.Server.AdminListen
}

// WebhookAuthConfigured reports whether any webhook authentication method is set.
func (c *Config) WebhookAuthConfigured() bool {
	w := c.Webhooks
	return c.Secrets.WebhookBearerToken != "" || w.BasicAuth.Username != "" ||
		c.Secrets.WebhookHMACSecret != "" || len(w.AllowCIDRs) > 0 || c.Server.TLSClientCAFile != ""
}
