package defender

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/responder-dev/responder/internal/loopback"
)

// cloud is one Defender cloud: its API and login hosts, the audience of
// its tokens, and where its package links lead (SPEC section 7). The
// government clouds' package hosts are an inference from their API host
// names (securitycenter.microsoft.us): Microsoft documents no sample.
// Microsoft's documented commercial sample link is
// https://userrequests-us.securitycenter.windows.com/safedownload/...;
// other regions use userrequests-eu, -uk, -au and so on.
type cloud struct {
	name, api, login, scope string
	packageHosts            []string
	// graph is the Microsoft Graph host of the cloud, for write-back to
	// Graph alerts; its tokens carry the audience graph (scope
	// graph+"/.default").
	graph string
}

// clouds is the one list of Defender clouds: Clouds, Endpoints,
// DefaultPackageHosts, DefaultGraphURL and the validation of defender.cloud
// read it. The scope does not follow a regional API host: commercial tokens
// always carry the audience https://api.securitycenter.microsoft.com. GCC
// uses the commercial Graph, GCC High and DoD their own (reference section 4).
var clouds = []cloud{
	{"commercial", "https://api.securitycenter.microsoft.com", "https://login.microsoftonline.com",
		"https://api.securitycenter.microsoft.com/.default", []string{".securitycenter.windows.com", ".securitycenter.microsoft.com"},
		"https://graph.microsoft.com"},
	{"gcc", "https://api-gcc.securitycenter.microsoft.us", "https://login.microsoftonline.com",
		"https://api-gcc.securitycenter.microsoft.us/.default", []string{".securitycenter.windows.com", ".securitycenter.microsoft.com"},
		"https://graph.microsoft.com"},
	{"gcc-high", "https://api-gov.securitycenter.microsoft.us", "https://login.microsoftonline.us",
		"https://api-gov.securitycenter.microsoft.us/.default", []string{".securitycenter.windows.us", ".securitycenter.microsoft.us"},
		"https://graph.microsoft.us"},
	{"dod", "https://api-gov.securitycenter.microsoft.us", "https://login.microsoftonline.us",
		"https://api-gov.securitycenter.microsoft.us/.default", []string{".securitycenter.windows.us", ".securitycenter.microsoft.us"},
		"https://dod-graph.microsoft.us"},
}

// Clouds are the names Config.Cloud accepts, in the order of clouds.
var Clouds = cloudNames()

func cloudNames() []string {
	names := make([]string, len(clouds))
	for i, c := range clouds {
		names[i] = c.name
	}
	return names
}

// lookupCloud finds a cloud by its exact name ("" is DefaultCloud).
func lookupCloud(name string) (cloud, bool) {
	if name == "" {
		name = DefaultCloud
	}
	for _, c := range clouds {
		if c.name == name {
			return c, true
		}
	}
	return cloud{}, false
}

// Defaults of Config: New applies them to the zero fields, and the
// service's configuration starts from them (config.Default).
const (
	DefaultCloud     = "commercial"
	DefaultPerMinute = 100
	DefaultPerHour   = 1500
	// DefaultTimeout bounds each request to the API and the login
	// endpoint. The pipeline waits this long, and a second, before it looks
	// for an action whose request lost its answer (defender.post_settle).
	DefaultTimeout         = 15 * time.Second
	DefaultDownloadTimeout = 30 * time.Minute
	DefaultUserAgent       = "responder"
	// DefaultMaxPackageBytes caps a package download: 2 GiB.
	DefaultMaxPackageBytes = 2 << 30
	// DefaultDownloadStallTimeout aborts a package download that receives
	// no byte for this long.
	DefaultDownloadStallTimeout = 60 * time.Second
	// DefaultFederatedTokenCheck is how often, at most, the federated token
	// file is checked for a change (kubelet rotates it).
	DefaultFederatedTokenCheck = 30 * time.Second
)

// Certificate assertion signing algorithms.
const (
	AlgPS256 = "PS256" // header x5t#S256 (SHA-256 thumbprint); the current Entra documentation
	AlgRS256 = "RS256" // header x5t (SHA-1 thumbprint); older Entra documentation and MSAL
)

// Config configures a Client. Exactly one credential must be set:
// ClientSecret, CertificatePEM or FederatedTokenFile. New applies
// DefaultConfig to the zero fields, then checks the result with Problems.
type Config struct {
	// Cloud is commercial, gcc, gcc-high or dod; it sets the API host, the
	// login host and the token scope (see Endpoints). Default commercial.
	Cloud string
	// APIURL overrides the API base URL, e.g. a regional host
	// https://eu.api.security.microsoft.com. The token scope stays the
	// cloud's. Must be https (http only for a loopback host, for tests and
	// the simulator).
	APIURL string
	// TokenURL overrides the token endpoint. Default
	// <login host>/<TenantID>/oauth2/v2.0/token.
	TokenURL string
	// TenantID is the Entra tenant (GUID or domain). Required unless
	// TokenURL is set.
	TenantID string
	// ClientID is the application (client) id. Required.
	ClientID string
	// ClientSecret is the client secret, already read from its file or the
	// environment.
	ClientSecret string
	// CertificatePEM holds a PEM certificate and its RSA private key
	// (PKCS#1 or PKCS#8, unencrypted): the client authenticates with a
	// signed client-assertion JWT instead of a secret.
	CertificatePEM []byte
	// CertificateAlg is PS256 (default; header x5t#S256) or RS256 (header
	// x5t, SHA-1 thumbprint).
	CertificateAlg string
	// FederatedTokenFile is a workload identity token file (Kubernetes
	// projected service account token) sent as client_assertion. It is
	// re-read when it changes.
	FederatedTokenFile string
	// RateLimit is the quota per API group. Zero fields take the defaults
	// DefaultPerMinute and DefaultPerHour.
	RateLimit RateLimit
	// LimiterSlack lengthens the quota windows of the default limiters (0:
	// exact windows; the service uses quota.DefaultSlack).
	LimiterSlack time.Duration
	// UserAgent is sent on every request: "responder/<version>". Default
	// "responder".
	UserAgent string
	// Timeout bounds every request to the API and the login endpoint,
	// reading the answer included. Default DefaultTimeout (15s).
	Timeout time.Duration
	// DownloadTimeout bounds a package download. Default 30m.
	DownloadTimeout time.Duration
	// DownloadStallTimeout aborts a package download (as retryable) when no
	// byte arrives for this long, headers included. Default 60s.
	DownloadStallTimeout time.Duration
	// MaxPackageBytes caps the size of a package download; a larger one is
	// refused (permanent). Default 2 GiB.
	MaxPackageBytes int64
	// PackageHosts are the hosts a package download link, and each redirect
	// of it, may lead to: an entry starting with "." matches any subdomain
	// of it, any other entry that exact host (case-insensitive). The API
	// host is always allowed. Default: DefaultPackageHosts(Cloud).
	PackageHosts []string
	// HTTPClient sends every request. Default: a client with its own
	// transport (a clone of http.DefaultTransport).
	HTTPClient *http.Client
	// WriteBack enables CommentAlert (SPEC 13): a comment on the alert an
	// action came from. It makes the client fetch a second token, for
	// Microsoft Graph, with the same credential. Default false.
	WriteBack bool
	// GraphURL overrides the Microsoft Graph base URL that comments on Graph
	// alerts go to. Default: the cloud's (DefaultGraphURL). The token scope
	// stays the cloud's Graph, as the API's stays with APIURL. Checked like
	// APIURL.
	GraphURL string
}

// RateLimit is a quota of calls: no 60 s window holds more than PerMinute
// calls and no 3600 s window more than PerHour.
type RateLimit struct {
	PerMinute int
	PerHour   int
}

// Endpoints returns the API base URL, the login base URL and the token scope
// of a cloud (SPEC section 7); "" is DefaultCloud.
func Endpoints(name string) (apiURL, loginHost, scope string, err error) {
	c, ok := lookupCloud(name)
	if !ok {
		return "", "", "", fmt.Errorf("unknown defender cloud %q (want one of %s)", name, quoteList(Clouds))
	}
	return c.api, c.login, c.scope, nil
}

// DefaultGraphURL returns the Microsoft Graph base URL of a cloud ("" is
// DefaultCloud; an unknown cloud has none): https://graph.microsoft.com for
// commercial and GCC, https://graph.microsoft.us for GCC High and
// https://dod-graph.microsoft.us for DoD.
func DefaultGraphURL(name string) string {
	c, _ := lookupCloud(name)
	return c.graph
}

// DefaultPackageHosts returns the package storage hosts of a cloud ("" is
// DefaultCloud; an unknown cloud has none).
func DefaultPackageHosts(name string) []string {
	c, _ := lookupCloud(name)
	return append([]string(nil), c.packageHosts...)
}

// DefaultConfig returns a Config with every default: the zero fields of the
// Config given to New take these values, and the service's configuration
// starts from them. PackageHosts stays empty: it defaults to the cloud's.
func DefaultConfig() Config {
	return Config{
		Cloud:                DefaultCloud,
		CertificateAlg:       AlgPS256,
		RateLimit:            RateLimit{PerMinute: DefaultPerMinute, PerHour: DefaultPerHour},
		UserAgent:            DefaultUserAgent,
		Timeout:              DefaultTimeout,
		DownloadTimeout:      DefaultDownloadTimeout,
		DownloadStallTimeout: DefaultDownloadStallTimeout,
		MaxPackageBytes:      DefaultMaxPackageBytes,
	}
}

// withDefaults returns cfg with DefaultConfig in its zero fields and the
// cloud's package hosts when it lists none.
func (cfg Config) withDefaults() Config {
	d := DefaultConfig()
	if cfg.Cloud == "" {
		cfg.Cloud = d.Cloud
	}
	if cfg.CertificateAlg == "" {
		cfg.CertificateAlg = d.CertificateAlg
	}
	if cfg.RateLimit.PerMinute == 0 {
		cfg.RateLimit.PerMinute = d.RateLimit.PerMinute
	}
	if cfg.RateLimit.PerHour == 0 {
		cfg.RateLimit.PerHour = d.RateLimit.PerHour
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = d.UserAgent
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = d.Timeout
	}
	if cfg.DownloadTimeout == 0 {
		cfg.DownloadTimeout = d.DownloadTimeout
	}
	if cfg.DownloadStallTimeout == 0 {
		cfg.DownloadStallTimeout = d.DownloadStallTimeout
	}
	if cfg.MaxPackageBytes == 0 {
		cfg.MaxPackageBytes = d.MaxPackageBytes
	}
	if len(cfg.PackageHosts) == 0 {
		cfg.PackageHosts = DefaultPackageHosts(cfg.Cloud)
	}
	return cfg
}

// ErrRequired is the class of a FieldError for a required field left empty
// (tenant_id, client_id): errors.Is(err, ErrRequired).
var ErrRequired = errors.New("is required")

// ErrNoCredential is the class of the FieldError of a Config with none of
// the three credentials: errors.Is(err, ErrNoCredential).
var ErrNoCredential = errors.New("a credential is required: client secret, certificate or federated token file")

// FieldError is one problem of a Config. Field names the setting as the
// service's configuration names it under "defender." ("api_url",
// "package_hosts[1]", "rate_limit.per_minute"); Msg says what is wrong,
// phrased to follow that name ("defender.cloud: unknown cloud ...").
type FieldError struct {
	Field string
	Msg   string
	// class is ErrRequired, ErrNoCredential or nil.
	class error
	// sentence, when set, is Error's text: the problem said on its own,
	// without a key in front.
	sentence string
}

// Error says the problem on its own, for the error of New.
func (e *FieldError) Error() string {
	if e.sentence != "" {
		return e.sentence
	}
	return e.Field + ": " + e.Msg
}

// Unwrap returns the class of the problem (ErrRequired, ErrNoCredential),
// or nil.
func (e *FieldError) Unwrap() error { return e.class }

// HasCredential reports whether any of the three credentials is set: the
// service builds no client in dry-run mode without one.
func (cfg Config) HasCredential() bool {
	return cfg.credentials() > 0
}

func (cfg Config) credentials() int {
	n := 0
	for _, set := range []bool{cfg.ClientSecret != "", len(cfg.CertificatePEM) > 0, cfg.FederatedTokenFile != ""} {
		if set {
			n++
		}
	}
	return n
}

// Problems checks cfg as given, with no default applied (New applies
// DefaultConfig first): it returns every problem, in a stable order. It is
// the one implementation of the Defender client's rules; the service's
// `check` and `serve` both run it (through config.Load) before New does.
func (cfg Config) Problems() []*FieldError {
	var ps []*FieldError
	add := func(field, format string, args ...any) {
		ps = append(ps, &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)})
	}
	addErr := func(field string, err error) {
		if err != nil {
			ps = append(ps, &FieldError{Field: field, Msg: err.Error()})
		}
	}
	required := func(field string) {
		ps = append(ps, &FieldError{Field: field, Msg: "required", class: ErrRequired, sentence: field + " is required"})
	}
	if _, ok := lookupCloud(cfg.Cloud); !ok || cfg.Cloud == "" {
		ps = append(ps, &FieldError{Field: "cloud", Msg: fmt.Sprintf("unknown cloud %q (want one of %s)", cfg.Cloud, quoteList(Clouds)),
			sentence: fmt.Sprintf("unknown defender cloud %q (want one of %s)", cfg.Cloud, quoteList(Clouds))})
	}
	if cfg.APIURL != "" {
		addErr("api_url", CheckAPIURL(cfg.APIURL))
	}
	if cfg.GraphURL != "" {
		addErr("graph_url", CheckAPIURL(cfg.GraphURL))
	}
	switch {
	case cfg.TokenURL != "":
		addErr("token_url", CheckURL(cfg.TokenURL))
	case cfg.TenantID == "":
		required("tenant_id")
	default:
		addErr("tenant_id", CheckTenantID(cfg.TenantID))
	}
	if len(cfg.CertificatePEM) > 0 {
		addErr("certificate_file", CheckCertificate(cfg.CertificatePEM))
	}
	for i, h := range cfg.PackageHosts {
		addErr(fmt.Sprintf("package_hosts[%d]", i), CheckPackageHost(h))
	}
	if cfg.MaxPackageBytes <= 0 {
		add("max_package_bytes", "must be positive, got %d", cfg.MaxPackageBytes)
	}
	if cfg.ClientID == "" {
		required("client_id")
	}
	switch cfg.credentials() {
	case 0:
		ps = append(ps, &FieldError{Field: "client_secret_file", Msg: ErrNoCredential.Error(), class: ErrNoCredential, sentence: ErrNoCredential.Error()})
	case 1:
	default:
		msg := "set only one credential: client secret, certificate or federated token file"
		ps = append(ps, &FieldError{Field: "client_secret_file", Msg: msg, sentence: msg})
	}
	if f := cfg.FederatedTokenFile; f != "" {
		if fi, err := os.Stat(f); err != nil {
			add("federated_token_file", "cannot read %q: %v", f, errors.Unwrap(err))
		} else if fi.IsDir() {
			add("federated_token_file", "%q is a directory", f)
		}
	}
	switch cfg.CertificateAlg {
	case AlgPS256, AlgRS256:
	default:
		add("certificate_alg", "certificate algorithm %q: want PS256 or RS256", cfg.CertificateAlg)
	}
	if cfg.RateLimit.PerMinute <= 0 {
		add("rate_limit.per_minute", "must be positive, got %d", cfg.RateLimit.PerMinute)
	}
	if cfg.RateLimit.PerHour <= 0 {
		add("rate_limit.per_hour", "must be positive, got %d", cfg.RateLimit.PerHour)
	}
	for _, t := range []struct {
		field string
		d     time.Duration
	}{{"timeout", cfg.Timeout}, {"download_timeout", cfg.DownloadTimeout}, {"download_stall_timeout", cfg.DownloadStallTimeout}} {
		if t.d <= 0 {
			add(t.field, "must be positive, got %s", t.d)
		}
	}
	if cfg.UserAgent == "" || strings.ContainsAny(cfg.UserAgent, "\r\n") {
		add("user_agent", "must be one line, not empty")
	}
	return ps
}

// resolved is a validated Config with defaults applied.
type resolved struct {
	Config
	apiBase      *url.URL
	tokenURL     string
	scope        string
	packageHosts []string // lower case
	graphBase    *url.URL
	graphScope   string
}

// resolve applies defaults and validates cfg; every problem is reported.
func resolve(cfg Config) (*resolved, error) {
	cfg = cfg.withDefaults()
	if ps := cfg.Problems(); len(ps) > 0 {
		errs := make([]error, len(ps))
		for i, p := range ps {
			errs[i] = p
		}
		return nil, fmt.Errorf("defender config: %w", errors.Join(errs...))
	}
	c, _ := lookupCloud(cfg.Cloud)
	r := &resolved{Config: cfg, scope: c.scope, tokenURL: cfg.TokenURL}
	apiURL := c.api
	if cfg.APIURL != "" {
		apiURL = cfg.APIURL
	}
	u, err := checkAPIURL(apiURL)
	if err != nil {
		return nil, fmt.Errorf("defender config: api_url: %w", err)
	}
	r.apiBase = u
	graphURL := c.graph
	if cfg.GraphURL != "" {
		graphURL = cfg.GraphURL
	}
	if r.graphBase, err = checkAPIURL(graphURL); err != nil {
		return nil, fmt.Errorf("defender config: graph_url: %w", err)
	}
	r.graphScope = c.graph + "/.default"
	if r.tokenURL == "" {
		r.tokenURL = c.login + "/" + cfg.TenantID + "/oauth2/v2.0/token"
	}
	r.PackageHosts = append([]string(nil), cfg.PackageHosts...)
	for _, h := range cfg.PackageHosts {
		r.packageHosts = append(r.packageHosts, strings.ToLower(h))
	}
	if r.HTTPClient == nil {
		r.HTTPClient = &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	}
	return r, nil
}

func quoteList(set []string) string {
	q := make([]string, len(set))
	for i, s := range set {
		q[i] = fmt.Sprintf("%q", s)
	}
	return strings.Join(q, ", ")
}

// CheckURL validates a Defender API or token endpoint URL as the client
// does: an absolute URL without user info that is https, or http to a
// loopback host (for tests and the simulator). The host is compared parsed,
// not by prefix: http://localhost.evil.example is not loopback.
func CheckURL(raw string) error {
	_, err := checkURL(raw)
	return err
}

// CheckAPIURL validates an API base URL: CheckURL, and no query or
// fragment (paths are appended to it).
func CheckAPIURL(raw string) error {
	_, err := checkAPIURL(raw)
	return err
}

func checkAPIURL(raw string) (*url.URL, error) {
	u, err := checkURL(raw)
	if err != nil {
		return nil, err
	}
	if u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
		return nil, fmt.Errorf("%q: must have no query or fragment", raw)
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = ""
	return u, nil
}

// checkURL parses an absolute URL that is https, or http to a loopback host.
func checkURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%q is not a URL", raw)
	}
	if u.Host == "" || u.User != nil {
		return nil, fmt.Errorf("%q: want an absolute URL without user info", raw)
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !loopback.Host(u.Hostname()) {
			return nil, fmt.Errorf("%q: http is allowed only to a loopback host; use https", raw)
		}
	default:
		return nil, fmt.Errorf("%q: want https", raw)
	}
	return u, nil
}

// CheckTenantID validates an Entra tenant id: a GUID or a domain name
// (letters, digits, '.', '-'), since it becomes a path segment of the token
// endpoint.
func CheckTenantID(t string) error {
	if !validTenant(t) {
		return fmt.Errorf("%q: want a GUID or a domain name", t)
	}
	return nil
}

// validTenant accepts a GUID or a domain name: letters, digits, '.', '-'.
func validTenant(t string) bool {
	if t == "" || len(t) > 253 {
		return false
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || c == '.' || c == '-') {
			return false
		}
	}
	return true
}

// CheckPackageHost validates one entry of Config.PackageHosts: a host name
// or IP address, or "." and a domain name (any subdomain of it); no scheme,
// port, path or wildcard.
func CheckPackageHost(entry string) error {
	name := strings.TrimPrefix(entry, ".")
	if name == "" {
		return fmt.Errorf("%q: want a host name, or .domain for its subdomains", entry)
	}
	if name == entry {
		if _, err := netip.ParseAddr(name); err == nil {
			return nil
		}
	}
	if len(name) > 253 || strings.HasPrefix(name, ".") || strings.HasSuffix(name, ".") || strings.Contains(name, "..") {
		return fmt.Errorf("%q: not a host name (want e.g. .securitycenter.windows.com or storage.example.com, no scheme or port)", entry)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || c == '.' || c == '-') {
			return fmt.Errorf("%q: not a host name (want e.g. .securitycenter.windows.com or storage.example.com, no scheme or port)", entry)
		}
	}
	return nil
}

// hostAllowed reports whether host (without port) matches an allow-list
// entry: ".domain" matches any subdomain of domain, any other entry the
// exact host; case-insensitive, one trailing dot of host ignored.
func hostAllowed(host string, allow []string) bool {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	if host == "" {
		return false
	}
	for _, a := range allow {
		if strings.HasPrefix(a, ".") {
			if len(host) > len(a) && strings.HasSuffix(host, a) {
				return true
			}
		} else if host == a {
			return true
		}
	}
	return false
}
