package defender

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"time"
)

// Clouds are the Defender clouds Config.Cloud accepts.
var Clouds = []string{"commercial", "gcc", "gcc-high", "dod"}

// Defaults of Config.
const (
	DefaultCloud           = "commercial"
	DefaultPerMinute       = 100
	DefaultPerHour         = 1500
	DefaultTimeout         = 30 * time.Second
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
// ClientSecret, CertificatePEM or FederatedTokenFile.
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
	// 100/min and 1500/h.
	RateLimit RateLimit
	// LimiterSlack lengthens the quota windows of the default limiters (0:
	// exact windows; the service uses quota.DefaultSlack).
	LimiterSlack time.Duration
	// UserAgent is sent on every request: "responder/<version>". Default
	// "responder".
	UserAgent string
	// Timeout bounds every request to the API and the login endpoint,
	// reading the answer included. Default 30s.
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
}

// RateLimit is a quota of calls: no 60 s window holds more than PerMinute
// calls and no 3600 s window more than PerHour.
type RateLimit struct {
	PerMinute int
	PerHour   int
}

// Endpoints returns the API base URL, the login base URL and the token scope
// of a cloud (SPEC section 7). The scope does not follow a regional API host:
// commercial tokens always carry the audience
// https://api.securitycenter.microsoft.com.
func Endpoints(cloud string) (apiURL, loginHost, scope string, err error) {
	switch strings.ToLower(strings.TrimSpace(cloud)) {
	case "", "commercial":
		return "https://api.securitycenter.microsoft.com", "https://login.microsoftonline.com",
			"https://api.securitycenter.microsoft.com/.default", nil
	case "gcc":
		return "https://api-gcc.securitycenter.microsoft.us", "https://login.microsoftonline.com",
			"https://api-gcc.securitycenter.microsoft.us/.default", nil
	case "gcc-high", "dod":
		return "https://api-gov.securitycenter.microsoft.us", "https://login.microsoftonline.us",
			"https://api-gov.securitycenter.microsoft.us/.default", nil
	default:
		return "", "", "", fmt.Errorf("unknown defender cloud %q (want one of %s)", cloud, strings.Join(Clouds, ", "))
	}
}

// DefaultPackageHosts returns the package storage hosts of a cloud.
// Microsoft's documented sample link is
// https://userrequests-us.securitycenter.windows.com/safedownload/...;
// other regions use userrequests-eu, -uk, -au and so on. The government
// clouds' hosts are an inference from their API host names
// (securitycenter.microsoft.us): Microsoft documents no sample.
func DefaultPackageHosts(cloud string) []string {
	switch strings.ToLower(strings.TrimSpace(cloud)) {
	case "gcc-high", "dod":
		return []string{".securitycenter.windows.us", ".securitycenter.microsoft.us"}
	default:
		return []string{".securitycenter.windows.com", ".securitycenter.microsoft.com"}
	}
}

// resolved is a validated Config with defaults applied.
type resolved struct {
	Config
	apiBase      *url.URL
	tokenURL     string
	scope        string
	packageHosts []string // lower case
}

// resolve applies defaults and validates cfg; every problem is reported.
func resolve(cfg Config) (*resolved, error) {
	var errs []error
	r := &resolved{Config: cfg}
	apiURL, login, scope, err := Endpoints(cfg.Cloud)
	if err != nil {
		errs = append(errs, err)
	}
	r.scope = scope
	if cfg.APIURL != "" {
		apiURL = cfg.APIURL
	}
	if apiURL != "" {
		if u, err := checkAPIURL(apiURL); err != nil {
			errs = append(errs, fmt.Errorf("api_url: %w", err))
		} else {
			r.apiBase = u
		}
	}
	if cfg.TokenURL != "" {
		if err := CheckURL(cfg.TokenURL); err != nil {
			errs = append(errs, fmt.Errorf("token_url: %w", err))
		}
		r.tokenURL = cfg.TokenURL
	} else if login != "" {
		if cfg.TenantID == "" {
			errs = append(errs, errors.New("tenant_id is required"))
		} else if err := CheckTenantID(cfg.TenantID); err != nil {
			errs = append(errs, fmt.Errorf("tenant_id: %w", err))
		} else {
			r.tokenURL = login + "/" + cfg.TenantID + "/oauth2/v2.0/token"
		}
	}
	if cfg.ClientID == "" {
		errs = append(errs, errors.New("client_id is required"))
	}
	n := 0
	if cfg.ClientSecret != "" {
		n++
	}
	if len(cfg.CertificatePEM) > 0 {
		n++
	}
	if cfg.FederatedTokenFile != "" {
		n++
		if fi, err := os.Stat(cfg.FederatedTokenFile); err != nil {
			errs = append(errs, fmt.Errorf("federated_token_file: %w", err))
		} else if fi.IsDir() {
			errs = append(errs, fmt.Errorf("federated_token_file %q is a directory", cfg.FederatedTokenFile))
		}
	}
	switch n {
	case 0:
		errs = append(errs, errors.New("a credential is required: client secret, certificate or federated token file"))
	case 1:
	default:
		errs = append(errs, errors.New("set only one credential: client secret, certificate or federated token file"))
	}
	switch cfg.CertificateAlg {
	case "":
		r.CertificateAlg = AlgPS256
	case AlgPS256, AlgRS256:
	default:
		errs = append(errs, fmt.Errorf("certificate algorithm %q: want PS256 or RS256", cfg.CertificateAlg))
	}
	if cfg.RateLimit.PerMinute < 0 || cfg.RateLimit.PerHour < 0 {
		errs = append(errs, errors.New("rate_limit: per_minute and per_hour must not be negative"))
	}
	if r.RateLimit.PerMinute == 0 {
		r.RateLimit.PerMinute = DefaultPerMinute
	}
	if r.RateLimit.PerHour == 0 {
		r.RateLimit.PerHour = DefaultPerHour
	}
	if cfg.Timeout < 0 || cfg.DownloadTimeout < 0 || cfg.DownloadStallTimeout < 0 {
		errs = append(errs, errors.New("timeouts must not be negative"))
	}
	if r.Timeout == 0 {
		r.Timeout = DefaultTimeout
	}
	if r.DownloadTimeout == 0 {
		r.DownloadTimeout = DefaultDownloadTimeout
	}
	if r.DownloadStallTimeout == 0 {
		r.DownloadStallTimeout = DefaultDownloadStallTimeout
	}
	switch {
	case cfg.MaxPackageBytes < 0:
		errs = append(errs, fmt.Errorf("max_package_bytes must be positive, got %d", cfg.MaxPackageBytes))
	case cfg.MaxPackageBytes == 0:
		r.MaxPackageBytes = DefaultMaxPackageBytes
	}
	hosts := cfg.PackageHosts
	if len(hosts) == 0 {
		hosts = DefaultPackageHosts(cfg.Cloud)
	}
	r.PackageHosts = append([]string(nil), hosts...)
	for i, h := range hosts {
		if err := CheckPackageHost(h); err != nil {
			errs = append(errs, fmt.Errorf("package_hosts[%d]: %w", i, err))
			continue
		}
		r.packageHosts = append(r.packageHosts, strings.ToLower(h))
	}
	if r.UserAgent == "" {
		r.UserAgent = DefaultUserAgent
	}
	if strings.ContainsAny(r.UserAgent, "\r\n") {
		errs = append(errs, errors.New("user agent must be one line"))
	}
	if r.HTTPClient == nil {
		r.HTTPClient = &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("defender config: %w", errors.Join(errs...))
	}
	return r, nil
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
		if !loopback(u.Hostname()) {
			return nil, fmt.Errorf("%q: http is allowed only to a loopback host; use https", raw)
		}
	default:
		return nil, fmt.Errorf("%q: want https", raw)
	}
	return u, nil
}

// loopback reports whether host (without port) is localhost or a loopback
// IP address.
func loopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
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
