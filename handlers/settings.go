package handlers

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/responder-dev/responder/internal/loopback"
)

// Defaults of Settings: the service's configuration starts from them
// (config.Default), so each is stated here only.
const (
	DefaultListen          = ":8080"
	DefaultAdminListen     = ":9090"
	DefaultMaxBodyBytes    = 1 << 20
	DefaultReadTimeout     = 10 * time.Second
	DefaultShutdownTimeout = 30 * time.Second
	// DefaultHMACHeader is where Grafana puts its body signature.
	DefaultHMACHeader = "X-Grafana-Alerting-Signature"
	DefaultMaxSkew    = 5 * time.Minute
)

// Settings are what the HTTP edge needs: its listeners and limits, TLS, who
// may use the admin API, and how webhooks authenticate. The service fills
// them from its configuration (config.Config.Handlers); Validate names each
// problem by the configuration key it comes from.
type Settings struct {
	Server   ServerSettings
	Admin    AdminSettings
	Webhooks WebhookSettings
}

// ServerSettings are the listeners (server.*).
type ServerSettings struct {
	// Listen serves the webhooks and the probes.
	Listen string
	// AdminListen serves /metrics, the admin API and pprof; "" serves them
	// on Listen (which then needs an admin token).
	AdminListen string
	// MaxBodyBytes caps a webhook or evaluate body; larger ones get 413.
	MaxBodyBytes int64
	// ReadTimeout bounds reading a whole request.
	ReadTimeout time.Duration
	// ShutdownTimeout bounds the graceful shutdown.
	ShutdownTimeout time.Duration
	// TLSCertFile and TLSKeyFile turn on HTTPS on both listeners;
	// TLSClientCAFile makes webhooks require a client certificate it signed.
	TLSCertFile, TLSKeyFile, TLSClientCAFile string
}

// AdminSettings say who may use the admin API and pprof (admin.*).
type AdminSettings struct {
	// Tokens are the credentials the admin API accepts; none serves it
	// without authentication, which AllowUnauthenticated must allow and
	// which is accepted only on a loopback-only admin listener of its own.
	Tokens               []AdminToken
	AllowUnauthenticated bool
	// AllowedHosts are the host names, besides IP literals, localhost and
	// the admin listener's own host, that the admin API answers in the
	// Host header (DNS rebinding protection).
	AllowedHosts []string
}

// AdminToken is one credential of the admin API: the token and the name that
// logs show as the "by" of whoever presented it.
type AdminToken struct {
	Name  string
	Token string
}

// WebhookSettings say how webhooks authenticate (webhooks.*; see
// WebhookAuth for how the checks combine).
type WebhookSettings struct {
	BearerToken     string
	BasicUser       string
	BasicPassword   string
	HMACSecret      string
	HMACHeader      string
	TimestampHeader string
	MaxSkew         time.Duration
	// AllowCIDRs are prefixes or single addresses (see ParseCIDR).
	AllowCIDRs []string
	// AllowUnauthenticated must be true to serve webhooks with no
	// authentication at all.
	AllowUnauthenticated bool
}

// DefaultSettings returns the settings with every default.
func DefaultSettings() Settings {
	return Settings{
		Server: ServerSettings{
			Listen: DefaultListen, AdminListen: DefaultAdminListen, MaxBodyBytes: DefaultMaxBodyBytes,
			ReadTimeout: DefaultReadTimeout, ShutdownTimeout: DefaultShutdownTimeout,
		},
		Webhooks: WebhookSettings{HMACHeader: DefaultHMACHeader, MaxSkew: DefaultMaxSkew},
	}
}

// AdminAddr is the address the admin API is served on: AdminListen, or
// Listen when it is "".
func (s Settings) AdminAddr() string {
	if s.Server.AdminListen == "" {
		return s.Server.Listen
	}
	return s.Server.AdminListen
}

// WebhookAuthConfigured reports whether any webhook authentication is set:
// a credential, the CIDR allow-list or client certificates.
func (s Settings) WebhookAuthConfigured() bool {
	w := s.Webhooks
	return w.BearerToken != "" || w.BasicUser != "" || w.HMACSecret != "" || len(w.AllowCIDRs) > 0 || s.Server.TLSClientCAFile != ""
}

// ErrNoWebhookAuth is the class of the problem of settings with no webhook
// authentication that do not allow it: errors.Is(err, ErrNoWebhookAuth).
var ErrNoWebhookAuth = errors.New("no webhook authentication is configured")

// ErrOpenAdminAPI is the class of the problems of an admin API without a
// token where that is not allowed: errors.Is(err, ErrOpenAdminAPI).
var ErrOpenAdminAPI = errors.New("the admin API needs an admin token, or admin.allow_unauthenticated with a loopback-only server.admin_listen")

// SettingError is one problem of the Settings. Key is the configuration key
// the setting comes from ("server.tls_key_file", "webhooks.allow_cidrs[1]",
// or a section such as "admin" for a problem of several keys); Msg says what
// is wrong, phrased to follow it.
type SettingError struct {
	Key string
	Msg string
	// class is ErrNoWebhookAuth, ErrOpenAdminAPI or nil.
	class error
}

// Error returns "key: message".
func (e *SettingError) Error() string { return e.Key + ": " + e.Msg }

// Unwrap returns the class of the problem (ErrNoWebhookAuth,
// ErrOpenAdminAPI), or nil.
func (e *SettingError) Unwrap() error { return e.class }

// ParseCIDR parses one entry of webhooks.allow_cidrs: a prefix
// ("10.0.0.0/8", "2001:db8::/32") or a single address ("192.0.2.7", which
// is its /32 or /128). The prefix is masked: 10.1.2.3/8 is 10.0.0.0/8.
func ParseCIDR(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		addr, err2 := netip.ParseAddr(s)
		if err2 != nil {
			return netip.Prefix{}, fmt.Errorf("invalid CIDR %q", s)
		}
		p = netip.PrefixFrom(addr, addr.BitLen())
	}
	return p.Masked(), nil
}

// CheckAllowedHost returns why h cannot be an entry of admin.allowed_hosts,
// or nil: it must be a DNS name (letters, digits, '-', '_' and dots) or an IP
// address, without scheme, port, path or wildcard.
func CheckAllowedHost(h string) error {
	if _, err := netip.ParseAddr(h); err == nil {
		return nil
	}
	bad := h == "" || len(h) > 253 || strings.HasPrefix(h, ".") || strings.Contains(h, "..")
	for _, r := range h {
		if !(r == '-' || r == '_' || r == '.' || '0' <= r && r <= '9' || 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z') {
			bad = true
		}
	}
	if bad {
		return fmt.Errorf("%q is not a host name (give the name alone: no scheme, port, path or wildcard)", h)
	}
	return nil
}

// Validate checks the settings as New uses them and returns every problem,
// in a stable order: the one implementation of these rules, which the
// service's `check` and `serve` run through config.Load and New runs again.
// It reads the TLS files.
func (s Settings) Validate() []*SettingError {
	_, ps := s.check()
	return ps
}

// settingErrors collects the problems of one check.
type settingErrors []*SettingError

func (ps *settingErrors) add(key, format string, args ...any) {
	*ps = append(*ps, &SettingError{Key: key, Msg: fmt.Sprintf(format, args...)})
}

// check validates the settings and loads the TLS configuration they name
// (nil without TLS or when it cannot be loaded).
func (s Settings) check() (*tls.Config, []*SettingError) {
	var ps settingErrors
	sv := s.Server
	if sv.Listen == "" {
		ps.add("server.listen", "must not be empty")
	}
	if sv.MaxBodyBytes <= 0 {
		ps.add("server.max_body_bytes", "must be positive, got %d", sv.MaxBodyBytes)
	}
	if sv.ReadTimeout <= 0 {
		ps.add("server.read_timeout", "must be positive, got %s", sv.ReadTimeout)
	}
	if sv.ShutdownTimeout <= 0 {
		ps.add("server.shutdown_timeout", "must be positive, got %s", sv.ShutdownTimeout)
	}
	tc := sv.checkTLS(&ps)
	s.Webhooks.check(&ps)
	if !s.WebhookAuthConfigured() && !s.Webhooks.AllowUnauthenticated {
		ps = append(ps, &SettingError{Key: "webhooks", class: ErrNoWebhookAuth,
			Msg: "no webhook authentication is configured (bearer_token_file, basic_auth, hmac, allow_cidrs or server.tls_client_ca_file); set webhooks.allow_unauthenticated: true to accept unauthenticated webhooks on purpose"})
	}
	for i, h := range s.Admin.AllowedHosts {
		if err := CheckAllowedHost(h); err != nil {
			ps.add(fmt.Sprintf("admin.allowed_hosts[%d]", i), "%v", err)
		}
	}
	if p := s.adminAccess(); p != nil {
		ps = append(ps, p)
	}
	return tc, ps
}

// checkTLS checks the TLS keys and loads them whole, so that a bad file is
// found by `check` and stops serve before it opens anything.
func (sv ServerSettings) checkTLS(ps *settingErrors) *tls.Config {
	if (sv.TLSCertFile == "") != (sv.TLSKeyFile == "") {
		ps.add("server.tls_cert_file", "tls_cert_file and tls_key_file must be set together")
	}
	if sv.TLSClientCAFile != "" && sv.TLSCertFile == "" {
		ps.add("server.tls_client_ca_file", "requires tls_cert_file and tls_key_file (mTLS needs TLS)")
	}
	for _, f := range []struct{ key, file string }{
		{"server.tls_cert_file", sv.TLSCertFile},
		{"server.tls_key_file", sv.TLSKeyFile},
		{"server.tls_client_ca_file", sv.TLSClientCAFile},
	} {
		if f.file == "" {
			continue
		}
		if _, err := os.Stat(f.file); err != nil {
			ps.add(f.key, "cannot read %q: %v", f.file, errors.Unwrap(err))
		}
	}
	var tc *tls.Config
	if sv.TLSCertFile != "" && sv.TLSKeyFile != "" {
		cert, err := tls.LoadX509KeyPair(sv.TLSCertFile, sv.TLSKeyFile)
		if err == nil {
			tc = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
		} else if !errors.Is(err, fs.ErrNotExist) { // a missing file is reported above
			ps.add("server.tls_key_file", "%q and %q are not a certificate and its key: %v", sv.TLSCertFile, sv.TLSKeyFile, err)
		}
	}
	if sv.TLSClientCAFile == "" {
		return tc
	}
	pem, err := os.ReadFile(sv.TLSClientCAFile)
	if err != nil {
		return nil // reported above
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		ps.add("server.tls_client_ca_file", "%q holds no PEM certificate", sv.TLSClientCAFile)
		return nil
	}
	if tc != nil {
		tc.ClientCAs = pool
		// A certificate that is presented must verify, but the handshake
		// does not demand one: the webhooks do (WebhookAuth), while the
		// probes, /metrics and the token-protected admin API stay reachable
		// by kubelet and Prometheus, which present none.
		tc.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return tc
}

// check checks the webhook credentials' settings and the CIDR allow-list.
func (w WebhookSettings) check(ps *settingErrors) {
	if w.BasicUser != "" && w.BasicPassword == "" {
		ps.add("webhooks.basic_auth.password_file", "basic_auth.username is set but no password (password_file or RESPONDER_WEBHOOKS_BASIC_AUTH_PASSWORD)")
	}
	if w.BasicUser == "" && w.BasicPassword != "" {
		ps.add("webhooks.basic_auth.username", "a basic auth password is set but no username")
	}
	if w.HMACSecret != "" && w.HMACHeader == "" {
		ps.add("webhooks.hmac.header", "must not be empty when an HMAC secret is set")
	}
	if w.MaxSkew <= 0 {
		ps.add("webhooks.hmac.max_skew", "must be positive, got %s", w.MaxSkew)
	}
	for i, c := range w.AllowCIDRs {
		if _, err := ParseCIDR(c); err != nil {
			ps.add(fmt.Sprintf("webhooks.allow_cidrs[%d]", i), "%v", err)
		}
	}
}

// adminAccess keeps the admin API closed by default: without an admin token
// it is served only on a loopback-only listener of its own, and only when
// admin.allow_unauthenticated says so.
func (s Settings) adminAccess() *SettingError {
	if len(s.Admin.Tokens) > 0 {
		return nil
	}
	const setToken = "set admin.bearer_token_file (or RESPONDER_ADMIN_BEARER_TOKEN)"
	admin := s.Server.AdminListen
	open := func(key, format string, args ...any) *SettingError {
		return &SettingError{Key: key, Msg: fmt.Sprintf(format, args...), class: ErrOpenAdminAPI}
	}
	switch {
	case admin == "":
		return open("server.admin_listen", `is "", which serves the admin API on the webhook listener: that needs an admin token; %s, or give the admin API a listener of its own`, setToken)
	case !loopback.Listen(admin) && s.Admin.AllowUnauthenticated:
		return open("admin.allow_unauthenticated", "is only accepted with a loopback-only server.admin_listen (an IP loopback address or localhost), not %q; %s", admin, setToken)
	case !loopback.Listen(admin):
		return open("server.admin_listen", "%q is not loopback-only and no admin token is set: %s to protect the admin API and pprof", admin, setToken)
	case !s.Admin.AllowUnauthenticated:
		return open("admin", "no admin token is set: %s, or set admin.allow_unauthenticated: true to serve the admin API on %q without one", setToken, admin)
	}
	return nil
}

// adminHosts returns the Host names the admin API answers besides IP
// literals: localhost, the admin listener's own host and AllowedHosts, in
// the form normalHost gives.
func (s Settings) adminHosts() map[string]bool {
	hosts := map[string]bool{"localhost": true}
	if host, _, err := net.SplitHostPort(s.AdminAddr()); err == nil && host != "" {
		hosts[normalHost(host)] = true
	}
	for _, h := range s.Admin.AllowedHosts {
		hosts[normalHost(h)] = true
	}
	return hosts
}
