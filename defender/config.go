package defender

import (
	"errors"
	"fmt"
	"net"
	"net/http"
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
	// exact windows; the service uses DefaultLimiterSlack).
	LimiterSlack time.Duration
	// UserAgent is sent on every request: "responder/<version>". Default
	// "responder".
	UserAgent string
	// Timeout bounds every request to the API and the login endpoint,
	// reading the answer included. Default 30s.
	Timeout time.Duration
	// DownloadTimeout bounds a package download. Default 30m.
	DownloadTimeout time.Duration
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

// resolved is a validated Config with defaults applied.
type resolved struct {
	Config
	apiBase  *url.URL
	tokenURL string
	scope    string
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
		u, err := checkURL(apiURL)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("api_url: %w", err))
		case u.RawQuery != "" || u.Fragment != "":
			errs = append(errs, fmt.Errorf("api_url %q: must have no query or fragment", apiURL))
		default:
			u.Path = strings.TrimRight(u.Path, "/")
			u.RawPath = ""
			r.apiBase = u
		}
	}
	if cfg.TokenURL != "" {
		if _, err := checkURL(cfg.TokenURL); err != nil {
			errs = append(errs, fmt.Errorf("token_url: %w", err))
		}
		r.tokenURL = cfg.TokenURL
	} else if login != "" {
		if cfg.TenantID == "" {
			errs = append(errs, errors.New("tenant_id is required"))
		} else if !validTenant(cfg.TenantID) {
			errs = append(errs, fmt.Errorf("tenant_id %q: want a GUID or a domain name", cfg.TenantID))
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
	if cfg.Timeout < 0 || cfg.DownloadTimeout < 0 {
		errs = append(errs, errors.New("timeouts must not be negative"))
	}
	if r.Timeout == 0 {
		r.Timeout = DefaultTimeout
	}
	if r.DownloadTimeout == 0 {
		r.DownloadTimeout = DefaultDownloadTimeout
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

func loopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// validTenant accepts a GUID or a domain name: letters, digits, '.', '-'.
func validTenant(t string) bool {
	if len(t) > 253 {
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
