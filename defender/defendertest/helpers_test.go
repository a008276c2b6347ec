package defendertest_test

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1" //nolint:gosec // x5t is a SHA-1 thumbprint by definition.
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/responder-dev/responder/defender/defendertest"
	"github.com/responder-dev/responder/internal/testkit"
)

const (
	testTenant = "72f988bf-86f1-41af-91ab-2d7cd011db47"
	testClient = "5b0c1e5e-3a7d-4d7e-9b0e-2f1c1d9a7e11"
	testSecret = "Qx~8Q~s3cr3t.value-for-tests"
	apiScope   = "https://api.securitycenter.microsoft.com/.default"

	machineWS    = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07" // ws-0142, current
	machineWSOld = "4a0d3e2b1c9f8e7d6c5b4a39281706f5e4d3c2b1" // ws-0142, stale duplicate
	machineSrv   = "9c8b7a6f5e4d3c2b1a09f8e7d6c5b4a392817061" // srv-app-07
	machineDC    = "d0d0cafe0123456789abcdef0123456789abcdef" // dc-01
)

var (
	guidRE     = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	mdeTimeRE  = regexp.MustCompile(`^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{7}Z$`)
	machineIDR = regexp.MustCompile(`^[0-9a-f]{40}$`)
)

// bundle is what setup returns: the simulator, its server and its clock.
type bundle struct {
	sim   *defendertest.Simulator
	srv   *defendertest.Server
	clock *testkit.FakeClock
	t0    time.Time
}

// testMachines returns the registry of most tests. Index 0 is the stale duplicate of
// ws-0142 (listed first so that "first match" and "most recently seen" differ), 1 the current
// ws-0142, 2 the server, 3 the domain controller.
func testMachines(now time.Time) []defendertest.Machine {
	return []defendertest.Machine{
		{
			ID: machineWSOld, ComputerDNSName: "ws-0142.corp.example.com", OSPlatform: "Windows11",
			HealthStatus: "Inactive", MachineTags: []string{"workstation"},
			LastSeen: now.Add(-20 * 24 * time.Hour), IsPotentialDuplication: true,
		},
		{
			ID: machineWS, ComputerDNSName: "ws-0142.corp.example.com", OSPlatform: "Windows11",
			HealthStatus: "Active", RiskScore: "Medium", ExposureLevel: "Medium", DeviceValue: "Normal",
			RBACGroupName: "Workstations", RBACGroupID: 41, MachineTags: []string{"workstation"},
			LastSeen: now.Add(-time.Hour), LastIPAddress: "10.20.14.42",
		},
		{
			ID: machineSrv, ComputerDNSName: "srv-app-07.corp.example.com", OSPlatform: "WindowsServer2022",
			DeviceValue: "High", RBACGroupName: "Servers", RBACGroupID: 42, MachineTags: []string{"server"},
			LastSeen: now.Add(-2 * time.Hour),
		},
		{
			ID: machineDC, ComputerDNSName: "dc-01.corp.example.com", OSPlatform: "WindowsServer2019",
			DeviceValue: "High", MachineTags: []string{"domain-controller"}, LastSeen: now.Add(-3 * time.Hour),
		},
	}
}

func setup(t *testing.T, mutate ...func(*defendertest.Options)) *bundle {
	t.Helper()
	clock := testkit.NewFakeClock(time.Date(2025, 3, 4, 10, 0, 0, 0, time.UTC))
	opts := defendertest.Options{
		TenantID:     testTenant,
		ClientID:     testClient,
		ClientSecret: testSecret,
		Now:          clock.Now,
		Machines:     testMachines(clock.Now()),
	}
	for _, m := range mutate {
		m(&opts)
	}
	sim, srv := defendertest.NewServer(t, opts)
	return &bundle{sim: sim, srv: srv, clock: clock, t0: clock.Now()}
}

// response is a fully read HTTP answer.
type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("body is not a JSON object: %v\n%s", err, r.body)
	}
	return m
}

func do(t *testing.T, req *http.Request) response {
	t.Helper()
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return response{status: res.StatusCode, header: res.Header, body: b}
}

func (b *bundle) postForm(t *testing.T, path string, form url.Values) response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, b.srv.URL+path, strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return do(t, req)
}

func v2Path() string { return "/" + testTenant + "/oauth2/v2.0/token" }
func v1Path() string { return "/" + testTenant + "/oauth2/token" }

func secretForm(scope string) url.Values {
	return url.Values{
		"grant_type":    {"client_credentials"},
		"client_id":     {testClient},
		"client_secret": {testSecret},
		"scope":         {scope},
	}
}

// tokenFor gets a v2 token for scope with the client secret.
func (b *bundle) tokenFor(t *testing.T, scope string) string {
	t.Helper()
	r := b.postForm(t, v2Path(), secretForm(scope))
	if r.status != http.StatusOK {
		t.Fatalf("token: status %d: %s", r.status, r.body)
	}
	tok, _ := r.json(t)["access_token"].(string)
	if tok == "" {
		t.Fatalf("token: no access_token in %s", r.body)
	}
	return tok
}

func (b *bundle) token(t *testing.T) string { t.Helper(); return b.tokenFor(t, apiScope) }

// api calls the API with a bearer token ("" sends none) and, when body is not "", a JSON body.
func (b *bundle) api(t *testing.T, tok, method, path, body string) response {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, b.srv.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("User-Agent", "responder/test")
	return do(t, req)
}

func (b *bundle) collect(t *testing.T, tok, machine, comment string) response {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"Comment": comment})
	return b.api(t, tok, http.MethodPost, "/api/machines/"+machine+"/collectInvestigationPackage", string(body))
}

// mustCollect collects and returns the new action id.
func (b *bundle) mustCollect(t *testing.T, tok, machine string) string {
	t.Helper()
	r := b.collect(t, tok, machine, "Collect forensics due to alert da637472900382838869_1364969609")
	if r.status != http.StatusCreated {
		t.Fatalf("collect %s: status %d: %s", machine, r.status, r.body)
	}
	return r.json(t)["id"].(string)
}

// wantStatus fails unless r has the status.
func wantStatus(t *testing.T, r response, status int) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status = %d, want %d; body: %s", r.status, status, r.body)
	}
}

// wantAPIError checks an MDE error envelope and returns its message.
func wantAPIError(t *testing.T, r response, status int, code string) string {
	t.Helper()
	wantStatus(t, r, status)
	var env map[string]map[string]any
	if err := json.Unmarshal(r.body, &env); err != nil || len(env) != 1 || env["error"] == nil {
		t.Fatalf("body is not an MDE error envelope: %s", r.body)
	}
	e := env["error"]
	if len(e) != 3 {
		t.Errorf("envelope has keys %v, want code, message, target", e)
	}
	if e["code"] != code {
		t.Errorf("error code = %v, want %s; body %s", e["code"], code, r.body)
	}
	if target, _ := e["target"].(string); !guidRE.MatchString(target) {
		t.Errorf("error target %q is not a GUID", e["target"])
	}
	msg, _ := e["message"].(string)
	if msg == "" {
		t.Errorf("error message is empty")
	}
	return msg
}

// wantTokenError checks an Entra ID error answer.
func wantTokenError(t *testing.T, r response, status int, name string, code int) {
	t.Helper()
	wantStatus(t, r, status)
	m := r.json(t)
	if m["error"] != name {
		t.Errorf("error = %v, want %s; body %s", m["error"], name, r.body)
	}
	codes, _ := m["error_codes"].([]any)
	if len(codes) != 1 || codes[0] != float64(code) {
		t.Errorf("error_codes = %v, want [%d]", m["error_codes"], code)
	}
	if d, _ := m["error_description"].(string); !strings.HasPrefix(d, "AADSTS") {
		t.Errorf("error_description = %q, want AADSTS prefix", d)
	}
	for _, k := range []string{"timestamp", "trace_id", "correlation_id"} {
		if m[k] == nil {
			t.Errorf("token error lacks %s", k)
		}
	}
}

// certificate material, generated once for the package.
type certKeys struct {
	cert  *x509.Certificate
	key   *rsa.PrivateKey
	other *rsa.PrivateKey // a key that does not belong to cert
}

var testCert = sync.OnceValue(func() certKeys {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(42),
		Subject:      pkix.Name{CommonName: "responder-test"},
		NotBefore:    time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:     time.Date(2034, 1, 1, 0, 0, 0, 0, time.UTC),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		panic(err)
	}
	return certKeys{cert: cert, key: key, other: other}
})

func x5t(cert *x509.Certificate) string {
	sum := sha1.Sum(cert.Raw) //nolint:gosec // thumbprint.
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

func x5tS256(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

func randomJTI() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// assertionClaims returns valid claims for the bundle's v2 token endpoint.
func (b *bundle) assertionClaims() jwt.MapClaims {
	now := b.clock.Now()
	return jwt.MapClaims{
		"aud": b.srv.URL + v2Path(),
		"iss": testClient,
		"sub": testClient,
		"jti": randomJTI(),
		"nbf": now.Unix(),
		"iat": now.Unix(),
		"exp": now.Add(10 * time.Minute).Unix(),
	}
}

// sign builds a client assertion with alg (RS256 or PS256), the given thumbprint headers and key.
func sign(t *testing.T, method jwt.SigningMethod, headers map[string]string, claims jwt.MapClaims, key *rsa.PrivateKey) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, claims)
	for k, v := range headers {
		tok.Header[k] = v
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func assertionForm(assertion string) url.Values {
	return url.Values{
		"grant_type":            {"client_credentials"},
		"client_id":             {testClient},
		"client_assertion_type": {defendertest.JWTBearerAssertionType},
		"client_assertion":      {assertion},
		"scope":                 {apiScope},
	}
}
