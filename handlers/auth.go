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
)

// WebhookAuth authenticates webhook requests (SPEC section 10) in two steps:
//   - AllowCIDRs, when set, is a network gate that every request must pass,
//     checked first: the socket peer address (never X-Forwarded-For) is
//     inside one of the prefixes;
//   - then the request must carry at least one valid credential among those
//     configured: the bearer token or the basic credentials in the
//     Authorization header, or a valid hex HMAC-SHA256 signature of the body
//     (with its timestamp within MaxSkew when TimestampHeader is set).
//
// Each credential is sufficient on its own because Alertmanager and Grafana
// share /webhooks/alertmanager and Alertmanager cannot sign: requiring every
// configured credential would lock it out as soon as the HMAC is set for
// Grafana. With no credential configured, the allow-list alone decides.
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
	// RequireClientCert (server.tls_client_ca_file) admits only requests
	// whose TLS client certificate verified against the configured CA.
	RequireClientCert bool
	// Now is the clock for timestamp checks; time.Now when nil.
	Now func() time.Time
}

// NewWebhookAuth builds the checks from the webhook settings, and the
// client certificate requirement from server.tls_client_ca_file. It fails
// on an allow_cidrs entry that ParseCIDR refuses (Settings.Validate reports
// it first, with its index).
func NewWebhookAuth(s Settings) (*WebhookAuth, error) {
	w := s.Webhooks
	a := &WebhookAuth{
		BearerToken:       w.BearerToken,
		BasicUser:         w.BasicUser,
		BasicPassword:     w.BasicPassword,
		HMACSecret:        w.HMACSecret,
		HMACHeader:        w.HMACHeader,
		TimestampHeader:   w.TimestampHeader,
		MaxSkew:           w.MaxSkew,
		RequireClientCert: s.Server.TLSClientCAFile != "",
	}
	for _, c := range w.AllowCIDRs {
		p, err := ParseCIDR(c)
		if err != nil {
			return nil, fmt.Errorf("webhooks.allow_cidrs: %w", err)
		}
		a.AllowCIDRs = append(a.AllowCIDRs, p)
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

// checkPeer applies the client certificate requirement and the CIDR
// allow-list to the socket peer.
func (a *WebhookAuth) checkPeer(r *http.Request) *authError {
	if a.RequireClientCert && (r.TLS == nil || len(r.TLS.VerifiedChains) == 0) {
		return &authError{http.StatusUnauthorized, "no verified client certificate (server.tls_client_ca_file)"}
	}
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

// credentialCheck holds the outcome of the credential checks of one request:
// whether one credential verified, and otherwise why each configured one
// failed, in the order bearer, basic, hmac.
type credentialCheck struct {
	ok       bool
	failures []string
}

// err is the refusal of a request whose credentials all failed.
func (c *credentialCheck) err() *authError {
	return &authError{http.StatusUnauthorized, "no valid credential: " + strings.Join(c.failures, "; ")}
}

func (c *credentialCheck) fail(credential, reason string) {
	c.failures = append(c.failures, credential+": "+reason)
}

// checkHeaderCredentials applies the bearer and basic checks. The result is
// ok when either verifies, or when no credential at all is configured; when
// it is not ok and an HMAC secret is configured, checkSignature may still
// find a valid credential once the body is read.
func (a *WebhookAuth) checkHeaderCredentials(r *http.Request) (c credentialCheck) {
	if a.BearerToken == "" && a.BasicUser == "" && a.HMACSecret == "" {
		return credentialCheck{ok: true}
	}
	h := r.Header.Get("Authorization")
	scheme, rest, _ := strings.Cut(h, " ")
	if a.BearerToken != "" {
		switch {
		case h == "":
			c.fail("bearer", "missing Authorization header")
		case !strings.EqualFold(scheme, "Bearer"):
			c.fail("bearer", "Authorization scheme is not Bearer")
		case subtle.ConstantTimeCompare([]byte(strings.TrimSpace(rest)), []byte(a.BearerToken)) != 1:
			c.fail("bearer", "token does not match")
		default:
			return credentialCheck{ok: true}
		}
	}
	if a.BasicUser != "" {
		user, pass, ok := r.BasicAuth()
		switch {
		case h == "":
			c.fail("basic", "missing Authorization header")
		case !ok:
			c.fail("basic", "Authorization is not valid Basic credentials")
		case subtle.ConstantTimeCompare([]byte(user), []byte(a.BasicUser))&
			subtle.ConstantTimeCompare([]byte(pass), []byte(a.BasicPassword)) != 1:
			c.fail("basic", "credentials do not match")
		default:
			return credentialCheck{ok: true}
		}
	}
	return c
}

// checkSignature verifies the HMAC of the raw body, Grafana style: hex of
// HMAC-SHA256(secret, body), or of "<timestamp>:<body>" when a timestamp
// header is configured. It records why the signature failed in c.
func (a *WebhookAuth) checkSignature(r *http.Request, body []byte, c *credentialCheck) {
	if reason := a.signatureFailure(r, body); reason != "" {
		c.fail("hmac", reason)
		return
	}
	c.ok = true
}

func (a *WebhookAuth) signatureFailure(r *http.Request, body []byte) string {
	sig := strings.TrimSpace(r.Header.Get(a.HMACHeader))
	sig = strings.TrimPrefix(sig, "sha256=")
	if sig == "" {
		return "missing signature header"
	}
	got, err := hex.DecodeString(sig)
	if err != nil {
		return "signature is not hex"
	}
	mac := hmac.New(sha256.New, []byte(a.HMACSecret))
	if a.TimestampHeader != "" {
		ts := strings.TrimSpace(r.Header.Get(a.TimestampHeader))
		secs, err := strconv.ParseInt(ts, 10, 64)
		if err != nil {
			return "missing or invalid timestamp header"
		}
		now := time.Now
		if a.Now != nil {
			now = a.Now
		}
		if skew := now().Sub(time.Unix(secs, 0)); skew > a.MaxSkew || skew < -a.MaxSkew {
			return "timestamp outside webhooks.hmac.max_skew"
		}
		mac.Write([]byte(ts))
		mac.Write([]byte(":"))
	}
	mac.Write(body)
	if !hmac.Equal(got, mac.Sum(nil)) {
		return "signature does not match"
	}
	return ""
}
