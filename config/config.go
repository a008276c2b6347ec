// Package config defines the service configuration of SPEC section 4: its
// types and defaults, strict YAML loading with file:line:col errors,
// RESPONDER_* environment overrides for every key, secrets read from files or
// the environment, and validation that reports every problem at once.
package config

import (
	"time"

	"github.com/responder-dev/responder/defender"
	"github.com/responder-dev/responder/handlers"
	"github.com/responder-dev/responder/internal/logging"
	"github.com/responder-dev/responder/pipeline"
	"github.com/responder-dev/responder/store"
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
	// Notify lists the notifiers (SPEC 13). A list has no one environment
	// variable: each notifier's secrets have their own (NotifierEnv).
	Notify []Notifier `yaml:"notify" env:"-"`

	// Secrets holds the secret values read from *_file keys or the
	// environment. It is never decoded from YAML and never printed.
	Secrets Secrets `yaml:"-"`
	// File is the path the configuration was read from ("" for none).
	File string `yaml:"-"`
}

// Server configures the listeners (handlers.ServerSettings; the defaults
// are handlers.Default*).
type Server struct {
	// Listen is the webhook listener address (also /healthz, /readyz). Default ":8080".
	Listen string `yaml:"listen"`
	// AdminListen serves /metrics, the admin API and pprof. Default ":9090";
	// "" serves them on Listen, which then needs an admin token.
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

// Webhooks configures inbound authentication (handlers.WebhookAuth): when
// AllowCIDRs is set, the socket peer must be inside it (a gate every request
// passes first); then any ONE valid credential among those configured (the
// bearer token, basic credentials, the HMAC signature) is enough, since
// Alertmanager cannot sign what Grafana, on the same endpoint, does.
// server.tls_client_ca_file adds a client certificate requirement.
type Webhooks struct {
	// BearerTokenFile holds the token of "Authorization: Bearer <token>".
	// Env: RESPONDER_WEBHOOKS_BEARER_TOKEN.
	BearerTokenFile string    `yaml:"bearer_token_file"`
	BasicAuth       BasicAuth `yaml:"basic_auth"`
	HMAC            HMAC      `yaml:"hmac"`
	// AllowCIDRs restricts the socket peer address (X-Forwarded-For is not
	// trusted): prefixes or single addresses (handlers.ParseCIDR). Empty
	// allows every peer.
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
	// Header carries the hex signature. Default
	// handlers.DefaultHMACHeader (X-Grafana-Alerting-Signature).
	Header string `yaml:"header"`
	// TimestampHeader, when set, carries the unix time that was signed as
	// "<timestamp>:<body>"; requests older or newer than MaxSkew are refused.
	TimestampHeader string `yaml:"timestamp_header"`
	// MaxSkew bounds the timestamp's distance from now. Default
	// handlers.DefaultMaxSkew (5m).
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
const DefaultRetention = store.DefaultRetention

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
	// Cloud is one of defender.Clouds (commercial, gcc, gcc-high, dod); it
	// sets the API and login hosts. Default defender.DefaultCloud.
	Cloud string `yaml:"cloud"`
	// APIURL overrides the API base URL (e.g. a regional host).
	APIURL string `yaml:"api_url"`
	// TokenURL overrides the token endpoint.
	TokenURL string `yaml:"token_url"`
	// TenantID is required, unless TokenURL is set, whenever a Defender
	// client is built: always, except in dry-run mode without a credential.
	TenantID string `yaml:"tenant_id"`
	// ClientID is required whenever a Defender client is built.
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
	// defender.DefaultTimeout (the request timeout) and a second.
	PostSettle time.Duration `yaml:"post_settle"`
	// DownloadDir, when set, receives each finished package.
	DownloadDir string `yaml:"download_dir"`
	// PackageHosts are the hosts a package download link and each of its
	// redirects may lead to: ".domain" matches any subdomain, any other
	// entry that exact host. Empty: the cloud's package storage hosts
	// (defender.DefaultPackageHosts). The API host is always allowed.
	PackageHosts []string `yaml:"package_hosts"`
	// MaxPackageBytes caps a package download, in bytes. Default
	// defender.DefaultMaxPackageBytes (2 GiB).
	MaxPackageBytes int64 `yaml:"max_package_bytes"`
	// DryRun decides, logs, counts and audits but never calls a write endpoint.
	DryRun bool `yaml:"dry_run"`
	// WriteBack comments the originating Defender or Graph alert when its
	// machine action ends (SPEC 13). Default false.
	WriteBack bool `yaml:"write_back"`
	// WriteBackComment is the comment's text/template over the event
	// (notify.Event: .Status, .ActionID, .Package.SHA256, .Alert.ID, ...).
	// Default pipeline.DefaultWriteBackComment.
	WriteBackComment string `yaml:"write_back_comment"`
	// GraphURL is Microsoft Graph's base URL, for the comments on Graph
	// alerts. Default: the cloud's (defender.DefaultConfig).
	GraphURL string `yaml:"graph_url"`
}

// RateLimit is the MDE quota per tenant.
type RateLimit struct {
	PerMinute int `yaml:"per_minute"` // default defender.DefaultPerMinute (100)
	PerHour   int `yaml:"per_hour"`   // default defender.DefaultPerHour (1500)
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
	Level  string `yaml:"level"`  // one of logging.Levels; default logging.DefaultLevel (info)
	Format string `yaml:"format"` // one of logging.Formats; default logging.DefaultFormat (json)
}

// Secrets are the secret values, from *_file keys or the environment.
type Secrets struct {
	AdminBearerToken     string
	WebhookBearerToken   string
	WebhookBasicPassword string
	WebhookHMACSecret    string
	DefenderClientSecret string
	// DefenderCertificatePEM is the content of defender.certificate_file
	// (a certificate and its private key), read once at load.
	DefenderCertificatePEM []byte
	// Notify holds each notifier's URL and signing secret, by name.
	Notify map[string]NotifierSecrets
}

// Defaults of the store, rules and pipeline keys, taken from their owners
// where they have one (store.*, pipeline.Default*); every other default is
// its owner's constant too: handlers.Default*, defender.Default*,
// logging.Default*.
const (
	DefaultStoreDriver           = store.DriverSQLite
	DefaultStoreDSN              = "responder.db"
	DefaultRulesFile             = "rules.yaml"
	DefaultPollInterval          = pipeline.DefaultPollInterval
	DefaultActionTimeout         = pipeline.DefaultActionTimeout
	DefaultPostSettle            = pipeline.DefaultPostSettle
	DefaultMaxCollectionsPerHour = pipeline.DefaultMaxCollectionsPerHour
	DefaultMaxMachinesPer10m     = pipeline.DefaultMaxMachinesPer10m
)

// Default returns the configuration with every default of SPEC section 4,
// each taken from its owner's constant (see the constants above).
func Default() *Config {
	h := handlers.DefaultSettings()
	d := defender.DefaultConfig()
	return &Config{
		Server: Server{
			Listen:          h.Server.Listen,
			AdminListen:     h.Server.AdminListen,
			MaxBodyBytes:    h.Server.MaxBodyBytes,
			ReadTimeout:     h.Server.ReadTimeout,
			ShutdownTimeout: h.Server.ShutdownTimeout,
		},
		Webhooks: Webhooks{
			HMAC: HMAC{Header: h.Webhooks.HMACHeader, MaxSkew: h.Webhooks.MaxSkew},
		},
		Store: Store{Driver: DefaultStoreDriver, DSN: DefaultStoreDSN, Retention: DefaultRetention},
		Rules: Rules{Files: []string{DefaultRulesFile}},
		Defender: Defender{
			Cloud:            d.Cloud,
			RateLimit:        RateLimit{PerMinute: d.RateLimit.PerMinute, PerHour: d.RateLimit.PerHour},
			PollInterval:     DefaultPollInterval,
			ActionTimeout:    DefaultActionTimeout,
			PostSettle:       DefaultPostSettle,
			MaxPackageBytes:  d.MaxPackageBytes,
			WriteBackComment: pipeline.DefaultWriteBackComment,
		},
		Safety: Safety{MaxCollectionsPerHour: DefaultMaxCollectionsPerHour, MaxMachinesPer10m: DefaultMaxMachinesPer10m},
		Log:    Log{Level: logging.DefaultLevel, Format: logging.DefaultFormat},
	}
}

// AdminTokenName is the name under which the admin token of
// admin.bearer_token_file (or RESPONDER_ADMIN_BEARER_TOKEN) is logged as the
// "by" of the state changes it makes.
const AdminTokenName = "admin"

// AdminToken is one credential of the admin API (handlers owns the type).
type AdminToken = handlers.AdminToken

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

// AdminAddr is the address the admin API is served on: server.admin_listen,
// or server.listen when it is "".
func (c *Config) AdminAddr() string {
	return c.Handlers().AdminAddr()
}

// Handlers returns the settings of the HTTP edge: the server.*, admin.*
// and webhooks.* keys with their secrets. Load validates them with
// handlers.Settings.Validate, the check handlers.New runs.
func (c *Config) Handlers() handlers.Settings {
	return handlers.Settings{
		Server: handlers.ServerSettings{
			Listen: c.Server.Listen, AdminListen: c.Server.AdminListen, MaxBodyBytes: c.Server.MaxBodyBytes,
			ReadTimeout: c.Server.ReadTimeout, ShutdownTimeout: c.Server.ShutdownTimeout,
			TLSCertFile: c.Server.TLSCertFile, TLSKeyFile: c.Server.TLSKeyFile, TLSClientCAFile: c.Server.TLSClientCAFile,
		},
		Admin: handlers.AdminSettings{
			Tokens:               c.AdminTokens(),
			AllowUnauthenticated: c.Admin.AllowUnauthenticated,
			AllowedHosts:         c.Admin.AllowedHosts,
		},
		Webhooks: handlers.WebhookSettings{
			BearerToken:          c.Secrets.WebhookBearerToken,
			BasicUser:            c.Webhooks.BasicAuth.Username,
			BasicPassword:        c.Secrets.WebhookBasicPassword,
			HMACSecret:           c.Secrets.WebhookHMACSecret,
			HMACHeader:           c.Webhooks.HMAC.Header,
			TimestampHeader:      c.Webhooks.HMAC.TimestampHeader,
			MaxSkew:              c.Webhooks.HMAC.MaxSkew,
			AllowCIDRs:           c.Webhooks.AllowCIDRs,
			AllowUnauthenticated: c.Webhooks.AllowUnauthenticated,
		},
	}
}

// DefenderClient returns the configuration of the Defender client, from
// defender.DefaultConfig with the defender.* keys and secrets on top, and
// whether serve builds a client at all: always, except in dry-run mode
// without a credential (decisions are then recorded and nothing is looked
// up). Load validates it with defender.Config.Problems, the check
// defender.New runs. The caller adds what is not configuration (user agent,
// limiter slack, HTTP client).
func (c *Config) DefenderClient() (defender.Config, bool) {
	d := c.Defender
	dc := defender.DefaultConfig()
	dc.Cloud, dc.APIURL, dc.TokenURL, dc.TenantID, dc.ClientID = d.Cloud, d.APIURL, d.TokenURL, d.TenantID, d.ClientID
	dc.ClientSecret = c.Secrets.DefenderClientSecret
	dc.CertificatePEM = c.Secrets.DefenderCertificatePEM
	dc.FederatedTokenFile = d.FederatedTokenFile
	dc.RateLimit = defender.RateLimit{PerMinute: d.RateLimit.PerMinute, PerHour: d.RateLimit.PerHour}
	dc.PackageHosts = d.PackageHosts
	dc.MaxPackageBytes = d.MaxPackageBytes
	dc.WriteBack, dc.GraphURL = d.WriteBack, d.GraphURL
	return dc, !d.DryRun || dc.HasCredential()
}
