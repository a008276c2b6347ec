package defender

import (
	"context"
	"crypto/sha1" //nolint:gosec // x5t is a SHA-1 thumbprint by definition.
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// okAPI answers every API call with an empty machine action list.
func okAPI(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, `{"value":[]}`) }

func list0(t *testing.T, b *bundle) error {
	t.Helper()
	_, err := b.client.ListMachineActions(context.Background(), ActionFilter{})
	return err
}

// TestTokenAnswerShapes: v2 answers expires_in as a number, v1 as a string;
// both give a token cached until 2 minutes before expiry.
func TestTokenAnswerShapes(t *testing.T) {
	t.Parallel()
	for name, write := range map[string]func(http.ResponseWriter, string){"v2": writeV2Token, "v1": writeV1Token} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ts := &tokenServer{}
			ts.answer = func(w http.ResponseWriter, n int64) { write(w, "tok-"+strconv.FormatInt(n, 10)) }
			var b *bundle
			b = setup(t, func(w http.ResponseWriter, r *http.Request) {
				b.record(r)
				okAPI(w, r)
			}, setupOpts{tokens: ts})
			if err := list0(t, b); err != nil {
				t.Fatal(err)
			}
			b.clock.Advance(3599*time.Second - 2*time.Minute - time.Second)
			if err := list0(t, b); err != nil {
				t.Fatal(err)
			}
			if n := ts.count(); n != 1 {
				t.Fatalf("token requests = %d; want 1 (cached)", n)
			}
			b.clock.Advance(time.Second)
			if err := list0(t, b); err != nil {
				t.Fatal(err)
			}
			if n := ts.count(); n != 2 {
				t.Fatalf("token requests = %d; want 2 (refreshed 2 minutes early)", n)
			}
			calls := b.apiCalls()
			if got := calls[2].Header.Get("Authorization"); got != "Bearer tok-2" {
				t.Errorf("Authorization %q", got)
			}
		})
	}
}

func TestTokenErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		status  int
		body    string
		outcome Outcome
		code    string
	}{
		{"invalid client", 401, `{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided. secret was ` + testSecret + `\r\nTrace ID: 1","error_codes":[7000215]}`, OutcomeUnauthorized, "invalid_client"},
		{"invalid scope", 400, `{"error":"invalid_scope","error_description":"AADSTS70011: The provided value for the input parameter 'scope' is not valid.","error_codes":[70011]}`, OutcomePermanent, "invalid_scope"},
		{"server error", 500, `{"error":"server_error","error_description":"AADSTS50000: There was an error issuing a token."}`, OutcomeRetryable, "server_error"},
		{"gateway html", 502, `<html>Bad Gateway</html>`, OutcomeRetryable, ""},
		{"throttled", 429, `{"error":"temporarily_unavailable"}`, OutcomeRateLimited, "temporarily_unavailable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ts := &tokenServer{answer: func(w http.ResponseWriter, _ int64) {
				w.Header().Set("Content-Type", "application/json; charset=utf-8")
				if strings.HasPrefix(tc.body, "<") {
					w.Header().Set("Content-Type", "text/html")
				}
				w.WriteHeader(tc.status)
				_, _ = w.Write([]byte(tc.body))
			}}
			var b *bundle
			b = setup(t, func(w http.ResponseWriter, r *http.Request) { b.record(r) }, setupOpts{tokens: ts})
			err := list0(t, b)
			e := asError(t, err)
			if e.Op != opToken || e.Outcome != tc.outcome || e.StatusCode != tc.status || e.Code != tc.code {
				t.Errorf("got %s %s %d %q; want token %s %d %q", e.Op, e.Outcome, e.StatusCode, e.Code, tc.outcome, tc.status, tc.code)
			}
			if strings.Contains(err.Error(), testSecret) || strings.Contains(err.Error(), "Trace ID") {
				t.Errorf("error text %q", err)
			}
			if n := len(b.apiCalls()); n != 0 {
				t.Errorf("API calls without a token: %d", n)
			}
			if got := testutil.ToFloat64(b.m.DefenderRequests.WithLabelValues(opToken, statusLabel(e))); got != 1 {
				t.Errorf("requests{token} = %v", got)
			}
		})
	}
}

// statusLabel is the code label of a request that ended in e.
func statusLabel(e *Error) string {
	if e.StatusCode == 0 {
		return "error"
	}
	return strconv.Itoa(e.StatusCode)
}

var guidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// TestCertificateAssertion verifies the client assertion JWT with the
// certificate's public key for both algorithms, with every header and claim.
func TestCertificateAssertion(t *testing.T) {
	t.Parallel()
	tc, err := makeTestCert()
	if err != nil {
		t.Fatal(err)
	}
	sum1 := sha1.Sum(tc.cert.Raw) //nolint:gosec // see import
	sum256 := sha256.Sum256(tc.cert.Raw)
	for _, c := range []struct {
		alg, thumbKey, thumb string
	}{
		{AlgRS256, "x5t", base64.RawURLEncoding.EncodeToString(sum1[:])},
		{AlgPS256, "x5t#S256", base64.RawURLEncoding.EncodeToString(sum256[:])},
		{"", "x5t#S256", base64.RawURLEncoding.EncodeToString(sum256[:])}, // default PS256
	} {
		name := c.alg
		if name == "" {
			name = "default"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, okAPI, setupOpts{cfg: func(cfg *Config) {
				cfg.ClientSecret = ""
				cfg.CertificatePEM = tc.pem
				cfg.CertificateAlg = c.alg
			}})
			if err := list0(t, b); err != nil {
				t.Fatal(err)
			}
			f := b.tokens.form(0)
			if f.Has("client_secret") {
				t.Error("client_secret sent with a certificate")
			}
			if f.Get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" ||
				f.Get("client_id") != testClientID || f.Get("scope") != "https://api.securitycenter.microsoft.com/.default" {
				t.Errorf("form %v", f)
			}
			now := b.clock.Now()
			wantAlg := c.alg
			if wantAlg == "" {
				wantAlg = AlgPS256
			}
			tokenURL := b.client.TokenURL()
			parsed, err := jwt.Parse(f.Get("client_assertion"), func(tok *jwt.Token) (any, error) {
				return &tc.key.PublicKey, nil
			}, jwt.WithValidMethods([]string{wantAlg}), jwt.WithTimeFunc(func() time.Time { return now }),
				jwt.WithAudience(tokenURL), jwt.WithIssuer(testClientID), jwt.WithSubject(testClientID),
				jwt.WithExpirationRequired(), jwt.WithIssuedAt())
			if err != nil {
				t.Fatalf("assertion does not verify: %v", err)
			}
			if parsed.Header["typ"] != "JWT" || parsed.Header[c.thumbKey] != c.thumb {
				t.Errorf("header %v; want %s=%s", parsed.Header, c.thumbKey, c.thumb)
			}
			other := map[string]string{"x5t": "x5t#S256", "x5t#S256": "x5t"}[c.thumbKey]
			if _, ok := parsed.Header[other]; ok {
				t.Errorf("header has %s too", other)
			}
			claims := parsed.Claims.(jwt.MapClaims)
			if aud, _ := claims["aud"].(string); aud != tokenURL {
				t.Errorf("aud %v; want the token URL as a string", claims["aud"])
			}
			if jti, _ := claims["jti"].(string); !guidRE.MatchString(jti) {
				t.Errorf("jti %v", claims["jti"])
			}
			for k, want := range map[string]int64{"nbf": now.Unix(), "iat": now.Unix(), "exp": now.Add(10 * time.Minute).Unix()} {
				if got, _ := claims[k].(float64); int64(got) != want {
					t.Errorf("%s = %v; want %d", k, claims[k], want)
				}
			}
			// A new token gets a new assertion (new jti).
			b.clock.Advance(time.Hour)
			if err := list0(t, b); err != nil {
				t.Fatal(err)
			}
			if b.tokens.form(1).Get("client_assertion") == f.Get("client_assertion") {
				t.Error("assertion reused")
			}
		})
	}
}

func TestCertificateRejectsMismatchedKey(t *testing.T) {
	t.Parallel()
	tc, err := makeTestCert()
	if err != nil {
		t.Fatal(err)
	}
	// Only the certificate, no key.
	certOnly := tc.pem[:strings.Index(string(tc.pem), "-----BEGIN PRIVATE KEY")]
	_, err = New(Config{TenantID: testTenant, ClientID: testClientID, CertificatePEM: certOnly}, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "no RSA private key") {
		t.Errorf("got %v", err)
	}
}

// TestFederatedTokenFile: the file is sent as client_assertion and re-read
// when kubelet rewrites it.
func TestFederatedTokenFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "azure-identity-token")
	if err := os.WriteFile(path, []byte("eyJfederated.first.token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	b := setup(t, okAPI, setupOpts{cfg: func(c *Config) {
		c.ClientSecret = ""
		c.FederatedTokenFile = path
	}})
	if err := list0(t, b); err != nil {
		t.Fatal(err)
	}
	f := b.tokens.form(0)
	if f.Get("client_assertion") != "eyJfederated.first.token" || f.Has("client_secret") ||
		f.Get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
		t.Errorf("form %v", f)
	}
	// kubelet rotates the token.
	if err := os.WriteFile(path, []byte("eyJfederated.second.token-longer"), 0o600); err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(path, later, later); err != nil {
		t.Fatal(err)
	}
	b.clock.Advance(time.Hour) // the access token expired
	if err := list0(t, b); err != nil {
		t.Fatal(err)
	}
	if got := b.tokens.form(1).Get("client_assertion"); got != "eyJfederated.second.token-longer" {
		t.Errorf("after rotation: assertion %q", got)
	}
}

// TestFederatedTokenFileAfter401: a refused token forces a re-read even
// within the check interval.
func TestFederatedTokenFileAfter401(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(path, []byte("first"), 0o600); err != nil {
		t.Fatal(err)
	}
	first := true
	var b *bundle
	b = setup(t, func(w http.ResponseWriter, r *http.Request) {
		b.record(r)
		if first {
			first = false
			// The file rotates while the request is on its way.
			_ = os.WriteFile(path, []byte("second-token"), 0o600)
			writeError(w, 401, "Unauthorized", "expired")
			return
		}
		okAPI(w, r)
	}, setupOpts{cfg: func(c *Config) { c.ClientSecret = ""; c.FederatedTokenFile = path }})
	if err := list0(t, b); err != nil {
		t.Fatal(err)
	}
	if got := b.tokens.form(1).Get("client_assertion"); got != "second-token" {
		t.Errorf("assertion after 401 %q", got)
	}
}
