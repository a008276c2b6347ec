package handlers

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/responder-dev/responder/config"
)

// WebhookAuth authenticates webhook requests (SPEC section 10). A request
// must pass every configured check:
//   - AllowCIDRs: the socket peer address (never X-Forwarded-For) is inside one
//     of the prefixes;
//   - BearerToken / Basic: the Authorization header carries the bearer token
//     or the basic credentials (either one, when both are configured, since a
//     request has a single Authorization header);
//   - HMACSecret: the body carries a valid hex HMAC-SHA256 signature.
//
// Every secret comparison is constant-time.
type WebhookAuth struct {
	BearerToken     string
	BasicUser       string
	BasicPassword   string
	HMACSecret      string
	HMACHeader      string
	TimestampHeader string
	MaxSkew         time.Duration
	AllowCIDRs      []netip.Prefix
	// Now is the clock for timestamp checks; time.Now when nil.
	Now func() time.Time
}

// NewWebhookAuth builds the checks from the configuration.
func NewWebhookAuth(c *config.Config) (*WebhookAuth, error) {
	a := &WebhookAuth{
		BearerToken:     c.Secrets.WebhookBearerToken,
		BasicUser:       c.Webhooks.BasicAuth.Username,
		BasicPassword:   c.Secrets.WebhookBasicPassword,
		HMACSecret:      c.Secrets.WebhookHMACSecret,
		HMACHeader:      c.Webhooks.HMAC.Header,
		TimestampHeader: c.Webhooks.HMAC.TimestampHeader,
		MaxSkew:         c.Webhooks.HMAC.MaxSkew,
	}
	for _, s := range c.Webhooks.AllowCIDRs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			addr, err2 := netip.ParseAddr(s)
			if err2 != nil {
				return nil, fmt.Errorf("webhooks.allow_cidrs: invalid CIDR %q", s)
			}
			p = netip.PrefixFrom(addr, addr.BitLen())
		}
		a.AllowCIDRs = append(a.AllowCIDRs, p.Masked())
	}
	return a, nil
}

// authError is a refused request: the reason is logged, never sent back, so
// that a prober learns nothing about which check failed.
type authError struct {
	status int
	reason string
}

func (e *authError) Error() string { return e.reason }

// checkPeer applies the CIDR allow-list to the socket peer.
func (a *WebhookAuth) checkPeer(r *http.Request) *authError {
	if len(a.AllowCIDRs) == 0 {
		return nil
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	addr, err := netip.ParseAddr(host)
	if err != nil {
		return &authError{http.StatusUnauthorized, "peer address not understood"}
	}
	addr = addr.Unmap()
	for _, p := range a.AllowCIDRs {
		if p.Contains(addr) {
			return nil
		}
	}
	return &authError{http.StatusUnauthorized, "peer address not in webhooks.allow_cidrs"}
}

// checkHeaders applies the bearer and basic checks.
func (a *WebhookAuth) checkHeaders(r *http.Request) *authError {
	if a.BearerToken == "" && a.BasicUser == "" {
		return nil
	}
	h := r.Header.Get("Authorization")
	if h == "" {
		return &authError{http.StatusUnauthorized, "missing Authorization header"}
	}
	if a.BearerToken != "" {
		if scheme, token, ok := strings.Cut(h, " "); ok && strings.EqualFold(scheme, "Bearer") {
			if subtle.ConstantTimeCompare([]byte(strings.TrimSpace(token)), []byte(a.BearerToken)) == 1 {
				return nil
			}
			return &authError{http.StatusUnauthorized, "bearer token does not match"}
		}
	}
	if a.BasicUser != "" {
		if user, pass, ok := r.BasicAuth(); ok {
			userOK := subtle.ConstantTimeCompare([]byte(user), []byte(a.BasicUser))
			passOK := subtle.ConstantTimeCompare([]byte(pass), []byte(a.BasicPassword))
			if userOK&passOK == 1 {
				return nil
			}
			return &authError{http.StatusUnauthorized, "basic credentials do not match"}
		}
	}
	return &authError{http.StatusUnauthorized, "unsupported Authorization scheme"}
}

// checkSignature verifies the HMAC of the raw body, Grafana style: hex of
// HMAC-SHA256(secret, body), or of "<timestamp>:<body>" when a timestamp
// header is configured.
func (a *WebhookAuth) checkSignature(r *http.Request, body []byte) *authError {
	if a.HMACSecret == "" {
		return nil
	}
	sig := strings.TrimSpace(r.Header.Get(a.HMACHeader))
	sig = strings.TrimPrefix(sig, "sha256=")
	if sig == "" {
		return &authError{http.StatusUnauthorized, "missing signature header"}
	}
	got, err := hex.DecodeString(sig)
	if err != nil {
		return &authError{http.StatusUnauthorized, "signature is not hex"}
	}
	mac := hmac.New(sha256.New, []byte(a.HMACSecret))
	if a.TimestampHeader != "" {
		ts := strings.TrimSpace(r.Header.Get(a.TimestampHeader))
		secs, err := strconv.ParseInt(ts, 10, 64)
		if err != nil {
			return &authError{http.StatusUnauthorized, "missing or invalid timestamp header"}
		}
		now := time.Now
		if a.Now != nil {
			now = a.Now
		}
		if skew := now().Sub(time.Unix(secs, 0)); skew > a.MaxSkew || skew < -a.MaxSkew {
			return &authError{http.StatusUnauthorized, "timestamp outside webhooks.hmac.max_skew"}
		}
		mac.Write([]byte(ts))
		mac.Write([]byte(":"))
	}
	mac.Write(body)
	if !hmac.Equal(got, mac.Sum(nil)) {
		return &authError{http.StatusUnauthorized, "signature does not match"}
	}
	return nil
}

// BearerGuard protects the admin API with a bearer token (constant-time).
// An empty token leaves the API open (its listener should then be private).
func BearerGuard(token string) func(r *http.Request) bool {
	return func(r *http.Request) bool {
		if token == "" {
			return true
		}
		scheme, got, ok := strings.Cut(r.Header.Get("Authorization"), " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") {
			return false
		}
		return subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), []byte(token)) == 1
	}
}
