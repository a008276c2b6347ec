package defender

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1" //nolint:gosec // x5t is defined as a SHA-1 thumbprint; it is not used for security.
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/zap"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
)

// jwtBearer is the client_assertion_type of a JWT client assertion.
const jwtBearer = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

// Token cache timing.
const (
	// refreshEarly: a token is replaced this long before it expires.
	refreshEarly = 2 * time.Minute
	// unknownLifetime is assumed when the login endpoint gives no expires_in.
	unknownLifetime = 5 * time.Minute
	// assertionLifetime is the validity of a certificate assertion.
	assertionLifetime = 10 * time.Minute
)

// credential yields what a token request sends to prove the client's
// identity: a secret or a client assertion.
type credential interface {
	// params returns the client secret ("" if none) and extra form
	// parameters. fresh asks for a re-read of anything cached (after a 401).
	params(now time.Time, fresh bool) (secret string, extra map[string]string, err error)
}

// secretCredential is a client secret.
type secretCredential struct{ secret string }

func (s secretCredential) params(time.Time, bool) (string, map[string]string, error) {
	return s.secret, nil, nil
}

// certCredential signs a client-assertion JWT with a certificate's key.
type certCredential struct {
	clientID string
	aud      string
	method   jwt.SigningMethod
	thumbKey string // x5t or x5t#S256
	thumb    string
	key      *rsa.PrivateKey
}

// CheckCertificate validates the PEM of Config.CertificatePEM as New does:
// a certificate (the first CERTIFICATE block is the leaf), an unencrypted
// RSA private key (PKCS#1 or PKCS#8), and the key matching the certificate.
func CheckCertificate(pemData []byte) error {
	_, _, err := parseCertificate(pemData)
	return err
}

// parseCertificate reads the leaf certificate and its RSA key from PEM.
func parseCertificate(pemData []byte) (*x509.Certificate, *rsa.PrivateKey, error) {
	var cert *x509.Certificate
	var key *rsa.PrivateKey
	rest := pemData
	blocks := 0
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		blocks++
		switch block.Type {
		case "CERTIFICATE":
			if cert != nil {
				continue // the chain after the leaf is not needed
			}
			c, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return nil, nil, fmt.Errorf("certificate: %w", err)
			}
			cert = c
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
			if err != nil {
				return nil, nil, fmt.Errorf("certificate private key: %w", err)
			}
			rk, ok := k.(*rsa.PrivateKey)
			if !ok {
				return nil, nil, fmt.Errorf("certificate private key is %T; want RSA", k)
			}
			key = rk
		case "RSA PRIVATE KEY":
			k, err := x509.ParsePKCS1PrivateKey(block.Bytes)
			if err != nil {
				return nil, nil, fmt.Errorf("certificate private key: %w", err)
			}
			key = k
		case "ENCRYPTED PRIVATE KEY":
			return nil, nil, errors.New("certificate private key is encrypted; want an unencrypted key")
		case "EC PRIVATE KEY":
			return nil, nil, errors.New("certificate private key is EC; want RSA")
		}
	}
	if blocks == 0 {
		return nil, nil, errors.New("certificate: no PEM data (want a PEM certificate and its RSA private key)")
	}
	if cert == nil {
		return nil, nil, errors.New("certificate: no CERTIFICATE block in PEM")
	}
	if key == nil {
		return nil, nil, errors.New("certificate: no RSA private key in PEM")
	}
	pub, ok := cert.PublicKey.(*rsa.PublicKey)
	if !ok || !pub.Equal(&key.PublicKey) {
		return nil, nil, errors.New("certificate: private key does not match the certificate")
	}
	return cert, key, nil
}

func newCertCredential(pemData []byte, alg, clientID, aud string) (*certCredential, error) {
	cert, key, err := parseCertificate(pemData)
	if err != nil {
		return nil, err
	}
	c := &certCredential{clientID: clientID, aud: aud, key: key}
	if alg == AlgRS256 {
		sum := sha1.Sum(cert.Raw) //nolint:gosec // see import
		c.method, c.thumbKey, c.thumb = jwt.SigningMethodRS256, "x5t", base64.RawURLEncoding.EncodeToString(sum[:])
	} else {
		sum := sha256.Sum256(cert.Raw)
		c.method, c.thumbKey, c.thumb = jwt.SigningMethodPS256, "x5t#S256", base64.RawURLEncoding.EncodeToString(sum[:])
	}
	return c, nil
}

func (c *certCredential) params(now time.Time, _ bool) (string, map[string]string, error) {
	jti, err := newGUID()
	if err != nil {
		return "", nil, err
	}
	t := jwt.NewWithClaims(c.method, jwt.MapClaims{
		"aud": c.aud,
		"iss": c.clientID,
		"sub": c.clientID,
		"jti": jti,
		"nbf": now.Unix(),
		"iat": now.Unix(),
		"exp": now.Add(assertionLifetime).Unix(),
	})
	t.Header[c.thumbKey] = c.thumb
	signed, err := t.SignedString(c.key)
	if err != nil {
		return "", nil, fmt.Errorf("signing client assertion: %w", err)
	}
	return "", map[string]string{"client_assertion_type": jwtBearer, "client_assertion": signed}, nil
}

// newGUID returns a random (version 4) GUID.
func newGUID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32], nil
}

// fileCredential sends a federated token read from a file (workload
// identity). The file is checked for a change (modification time and size)
// at most every check interval, and always after a 401.
type fileCredential struct {
	path  string
	every time.Duration

	mu        sync.Mutex
	checked   time.Time
	modTime   time.Time
	size      int64
	assertion string
}

func (f *fileCredential) params(now time.Time, fresh bool) (string, map[string]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.assertion == "" || fresh || now.Sub(f.checked) >= f.every || now.Before(f.checked) {
		fi, err := os.Stat(f.path)
		if err != nil {
			return "", nil, fmt.Errorf("federated token file: %w", err)
		}
		if f.assertion == "" || !fi.ModTime().Equal(f.modTime) || fi.Size() != f.size {
			b, err := os.ReadFile(f.path)
			if err != nil {
				return "", nil, fmt.Errorf("federated token file: %w", err)
			}
			a := strings.TrimSpace(string(b))
			if a == "" {
				return "", nil, errors.New("federated token file is empty")
			}
			f.assertion, f.modTime, f.size = a, fi.ModTime(), fi.Size()
		}
		f.checked = now
	}
	return "", map[string]string{"client_assertion_type": jwtBearer, "client_assertion": f.assertion}, nil
}

// tokenSource fetches access tokens with the client-credentials grant and
// caches them until shortly before they expire.
type tokenSource struct {
	c        *Client
	clientID string
	tokenURL string
	scope    string
	cred     credential
	http     *http.Client
	// onRoles receives the roles of each new token (WithTokenRoles,
	// WithGraphTokenRoles); nil: none.
	onRoles func(roles []string)

	lock chan struct{} // one fetch at a time; a channel so waiting honours ctx

	mu      sync.Mutex
	access  string
	expires time.Time // when to stop using access (already early)
	fresh   bool      // the next fetch re-reads cached credential material

	// secrets holds every credential string sent or received, for scrubbing
	// errors.
	secretsMu sync.Mutex
	secrets   []string
}

// cached returns the cached token if it is still good.
func (ts *tokenSource) cached(now time.Time) (string, bool) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.access != "" && now.Before(ts.expires) {
		return ts.access, true
	}
	return "", false
}

// token returns a valid access token, fetching one if needed.
func (ts *tokenSource) token(ctx context.Context) (string, error) {
	if tok, ok := ts.cached(ts.c.clock.Now()); ok {
		return tok, nil
	}
	select {
	case ts.lock <- struct{}{}:
	case <-ctx.Done():
		return "", &Error{Op: opToken, Outcome: OutcomeRetryable, Err: ctx.Err()}
	}
	defer func() { <-ts.lock }()
	if tok, ok := ts.cached(ts.c.clock.Now()); ok {
		return tok, nil // fetched by another caller meanwhile
	}
	return ts.fetch(ctx)
}

// invalidate forgets tok if it is the cached token (a 401 answered it).
func (ts *tokenSource) invalidate(tok string) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.access == tok {
		ts.access = ""
		ts.expires = time.Time{}
		ts.fresh = true
	}
}

func (ts *tokenSource) remember(s string) {
	if s == "" {
		return
	}
	ts.secretsMu.Lock()
	defer ts.secretsMu.Unlock()
	for _, x := range ts.secrets {
		if x == s {
			return
		}
	}
	if len(ts.secrets) >= 16 {
		ts.secrets = ts.secrets[1:]
	}
	ts.secrets = append(ts.secrets, s)
}

// scrub removes every known credential string from s.
func (ts *tokenSource) scrub(s string) string {
	ts.secretsMu.Lock()
	defer ts.secretsMu.Unlock()
	for _, x := range ts.secrets {
		if len(x) >= 4 {
			s = strings.ReplaceAll(s, x, "<redacted>")
		}
	}
	return s
}

// fetch requests a new token. The caller holds ts.lock.
func (ts *tokenSource) fetch(ctx context.Context) (string, error) {
	ts.mu.Lock()
	fresh := ts.fresh
	ts.mu.Unlock()
	now := ts.c.clock.Now()
	secret, extra, err := ts.cred.params(now, fresh)
	if err != nil {
		// The file may be mid-rotation; a later try may read it.
		return "", &Error{Op: opToken, Outcome: OutcomeRetryable, Err: err}
	}
	ts.remember(secret)
	cc := &clientcredentials.Config{
		ClientID:     ts.clientID,
		ClientSecret: secret,
		TokenURL:     ts.tokenURL,
		Scopes:       []string{ts.scope},
		AuthStyle:    oauth2.AuthStyleInParams,
	}
	if len(extra) > 0 {
		cc.EndpointParams = make(map[string][]string, len(extra))
		for k, v := range extra {
			cc.EndpointParams[k] = []string{v}
			if k == "client_assertion" {
				ts.remember(v)
			}
		}
	}
	rctx, cancel := context.WithTimeout(ctx, ts.c.cfg.Timeout)
	defer cancel()
	rctx = context.WithValue(rctx, oauth2.HTTPClient, ts.http)
	begin := time.Now()
	tok, err := cc.Token(rctx)
	ts.c.m.DefenderDuration.WithLabelValues(opToken).Observe(time.Since(begin).Seconds())
	if err != nil {
		e := ts.classify(err, ctx)
		code := "error"
		if e.StatusCode != 0 {
			code = strconv.Itoa(e.StatusCode)
		}
		ts.c.m.DefenderRequests.WithLabelValues(opToken, code).Inc()
		return "", e
	}
	ts.c.m.DefenderRequests.WithLabelValues(opToken, "200").Inc()
	ts.remember(tok.AccessToken)
	if tt := tok.Type(); !strings.EqualFold(tt, "Bearer") {
		return "", &Error{Op: opToken, Outcome: OutcomePermanent, Message: "unexpected token type " + clean(tt)}
	}
	lifetime := tokenLifetime(tok)
	early := refreshEarly
	if lifetime < 2*early {
		early = lifetime / 2
	}
	ts.mu.Lock()
	ts.access = tok.AccessToken
	ts.expires = now.Add(lifetime - early)
	ts.fresh = false
	ts.mu.Unlock()
	ts.c.logger.Debug("defender token fetched", zap.String("operation", opToken),
		zap.String("scope", ts.scope), zap.Duration("lifetime", lifetime))
	if ts.onRoles != nil {
		if roles, ok := tokenRoles(tok.AccessToken); ok {
			ts.onRoles(roles)
		}
	}
	return tok.AccessToken, nil
}

// tokenLifetime reads expires_in from the answer, a number (v2 endpoint) or a
// string (v1 endpoint). clientcredentials computes Expiry from the wall clock
// and drops ExpiresIn, so the raw field is read to stay on the injected clock.
func tokenLifetime(tok *oauth2.Token) time.Duration {
	var secs int64
	switch v := tok.Extra("expires_in").(type) {
	case float64:
		secs = int64(v)
	case string:
		secs, _ = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	case json.Number:
		secs, _ = v.Int64()
	}
	if secs <= 0 && !tok.Expiry.IsZero() {
		secs = int64(time.Until(tok.Expiry) / time.Second)
	}
	if secs <= 0 {
		return unknownLifetime
	}
	return time.Duration(secs) * time.Second
}

// classify maps a token request failure to an *Error without any credential.
func (ts *tokenSource) classify(err error, parent context.Context) *Error {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		status := 0
		var header http.Header
		if re.Response != nil {
			status, header = re.Response.StatusCode, re.Response.Header
		}
		if status >= 300 && status < 400 {
			// The token client follows no redirect (it would post the
			// secret or assertion to Location): nothing of the answer is
			// copied, Location included.
			return &Error{Op: opToken, Outcome: OutcomePermanent, StatusCode: status,
				Message: fmt.Sprintf("login endpoint redirected (%d); redirects are not followed", status)}
		}
		e := &Error{Op: opToken, StatusCode: status, Code: clean(re.ErrorCode),
			Message: clean(ts.scrub(firstLine(re.ErrorDescription)))}
		if e.Code == "" {
			// No OAuth error body: perhaps a gateway page. Do not copy it.
			e.Code, e.Message, e.Target = parseErrorBody([]byte(ts.scrub(string(re.Body))))
			e.Message = ts.scrub(e.Message)
		}
		switch {
		case status == http.StatusTooManyRequests:
			e.Outcome = OutcomeRateLimited
			e.RetryAfter = retryAfter(header.Get("Retry-After"), ts.c.clock.Now())
		case status >= 500 || status == http.StatusRequestTimeout:
			e.Outcome = OutcomeRetryable
		case re.ErrorCode == "invalid_client" || re.ErrorCode == "unauthorized_client" ||
			re.ErrorCode == "invalid_grant" || status == http.StatusUnauthorized:
			e.Outcome = OutcomeUnauthorized
		case re.ErrorCode == "temporarily_unavailable":
			e.Outcome = OutcomeRetryable
		default:
			// invalid_scope, invalid_request, unsupported_grant_type, ...
			e.Outcome = OutcomePermanent
		}
		return e
	}
	if parent.Err() != nil {
		return &Error{Op: opToken, Outcome: OutcomeRetryable, Err: parent.Err()}
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return transportError(opToken, err)
	}
	// Other failures (an answer cut short or unreadable, no access_token):
	// the text comes from x/oauth2 and names no credential; scrub it anyway.
	return &Error{Op: opToken, Outcome: OutcomeRetryable, Err: errors.New(ts.scrub(err.Error()))}
}

func firstLine(s string) string {
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		return s[:i]
	}
	return s
}

// userAgentTransport sets the User-Agent of requests x/oauth2 sends.
type userAgentTransport struct {
	base http.RoundTripper
	ua   string
}

func (t userAgentTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r2 := r.Clone(r.Context())
	r2.Header.Set("User-Agent", t.ua)
	r2.Header.Set("Accept", "application/json")
	return t.base.RoundTrip(r2)
}
