package defender

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/responder-dev/responder/internal/testkit"
	"github.com/responder-dev/responder/metrics"
)

// Fixtures shared by the tests.
const (
	testTenant   = "72f988bf-86f1-41af-91ab-2d7cd011db47"
	testClientID = "5f1d3e2c-0b6a-4e0f-9c1d-2a3b4c5d6e7f"
	testSecret   = "s3cr3t~Client.Secret_value-0123456789"
	testMachine  = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07"
	testAction   = "5382f7ea-7557-4ab7-9782-d50480024a4e"
	testAlertID  = "da637472900382838869_1364969609"
	testUA       = "responder/1.2.3"
	odataCT      = "application/json; odata.metadata=minimal; odata.streaming=true; charset=utf-8"
)

// newFakeClock returns the fake clock of the tests, at a fixed time.
func newFakeClock() *testkit.FakeClock {
	return testkit.NewFakeClock(time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC))
}

// tokenServer answers token requests and records their forms.
type tokenServer struct {
	mu     sync.Mutex
	forms  []url.Values
	paths  []string
	agents []string
	n      atomic.Int64
	// answer, if set, writes the answer to the n-th request (from 1).
	answer func(w http.ResponseWriter, n int64)
}

func (ts *tokenServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form", http.StatusBadRequest)
		return
	}
	n := ts.n.Add(1)
	ts.mu.Lock()
	ts.forms = append(ts.forms, r.PostForm)
	ts.paths = append(ts.paths, r.URL.Path)
	ts.agents = append(ts.agents, r.UserAgent())
	ts.mu.Unlock()
	if ts.answer != nil {
		ts.answer(w, n)
		return
	}
	writeV2Token(w, fmt.Sprintf("access-token-%d", n))
}

func (ts *tokenServer) form(i int) url.Values {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.forms[i]
}

func (ts *tokenServer) count() int { return int(ts.n.Load()) }

// writeV2Token answers like the v2 endpoint: expires_in is a number.
func writeV2Token(w http.ResponseWriter, access string) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	fmt.Fprintf(w, `{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":%q}`, access)
}

// writeV1Token answers like the v1 endpoint: numbers are strings.
func writeV1Token(w http.ResponseWriter, access string) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	fmt.Fprintf(w, `{"token_type":"Bearer","expires_in":"3599","ext_expires_in":"3599","expires_on":"1772445599","not_before":"1772441699","resource":"https://api.securitycenter.microsoft.com","access_token":%q}`, access)
}

// apiCall is one request the API server saw.
type apiCall struct {
	Method, Path, RawQuery, Body string
	Header                       http.Header
	At                           time.Time // fake clock time, when a clock is set
}

// bundle is the system under test and its observers.
type bundle struct {
	client *Client
	srv    *httptest.Server
	tokens *tokenServer
	reg    *prometheus.Registry
	m      *metrics.Metrics
	logs   *observer.ObservedLogs
	clock  *testkit.FakeClock

	mu    sync.Mutex
	calls []apiCall
}

func (b *bundle) record(r *http.Request) apiCall {
	body, _ := io.ReadAll(r.Body)
	c := apiCall{Method: r.Method, Path: r.URL.Path, RawQuery: r.URL.RawQuery, Body: string(body), Header: r.Header.Clone()}
	if b.clock != nil {
		c.At = b.clock.Now()
	}
	b.mu.Lock()
	b.calls = append(b.calls, c)
	b.mu.Unlock()
	return c
}

func (b *bundle) apiCalls() []apiCall {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]apiCall(nil), b.calls...)
}

// setupOpts tunes setup.
type setupOpts struct {
	cfg    func(*Config)
	opts   []Option
	tokens *tokenServer
}

// setup starts an httptest server whose /token path is the login endpoint
// and every other path goes to api, and a client configured against it with
// a fake clock, a fresh registry and an observed logger.
func setup(t *testing.T, api http.HandlerFunc, so ...setupOpts) *bundle {
	t.Helper()
	var o setupOpts
	if len(so) > 0 {
		o = so[0]
	}
	b := &bundle{tokens: o.tokens, clock: newFakeClock(), reg: prometheus.NewRegistry()}
	if b.tokens == nil {
		b.tokens = &tokenServer{}
	}
	mux := http.NewServeMux()
	mux.Handle("/"+testTenant+"/oauth2/v2.0/token", b.tokens)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if api == nil {
			http.NotFound(w, r)
			return
		}
		api(w, r)
	})
	b.srv = httptest.NewServer(mux)
	t.Cleanup(b.srv.Close)
	b.m = metrics.New(b.reg)
	core, logs := observer.New(zapcore.DebugLevel)
	b.logs = logs
	cfg := Config{
		APIURL:       b.srv.URL,
		TokenURL:     b.srv.URL + "/" + testTenant + "/oauth2/v2.0/token",
		TenantID:     testTenant,
		ClientID:     testClientID,
		ClientSecret: testSecret,
		UserAgent:    testUA,
		HTTPClient:   b.srv.Client(),
	}
	if o.cfg != nil {
		o.cfg(&cfg)
	}
	opts := append([]Option{WithClock(b.clock)}, o.opts...)
	c, err := New(cfg, b.m, zap.New(core), opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	b.client = c
	return b
}

// writeJSON answers with MDE's OData headers.
func writeJSON(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", odataCT)
	w.Header().Set("OData-Version", "4.0")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, body)
}

// writeError answers with MDE's error envelope.
func writeError(w http.ResponseWriter, status int, code, message string) {
	b, _ := json.Marshal(map[string]any{"error": map[string]string{
		"code": code, "message": message, "target": "43f4cb08-8fac-4b65-9db1-745c2ae65f3a",
	}})
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// actionJSON is a real-shaped 201 answer of collectInvestigationPackage.
func actionJSON(id, status string) string {
	return `{"@odata.context":"https://api.securitycenter.microsoft.com/api/$metadata#MachineActions/$entity",` +
		`"id":"` + id + `","type":"CollectInvestigationPackage","title":null,"requestor":"Customer App",` +
		`"requestorComment":"Collect forensics due to alert ` + testAlertID + `","status":"` + status + `",` +
		`"machineId":"` + testMachine + `","computerDnsName":"desktop-test.contoso.com",` +
		`"creationDateTimeUtc":"2026-03-02T09:00:01.3406473Z","lastUpdateDateTimeUtc":"2026-03-02T09:00:01.3406473Z",` +
		`"cancellationRequestor":null,"cancellationComment":null,"cancellationDateTimeUtc":null,"errorHResult":0,` +
		`"scope":null,"externalId":null,"requestSource":"PublicApi","relatedFileInfo":null,"commands":[],"troubleshootInfo":null}`
}

// testCert is an RSA key and its self-signed certificate as PEM.
type testCert struct {
	key  *rsa.PrivateKey
	cert *x509.Certificate
	pem  []byte
}

var makeTestCert = sync.OnceValues(func() (*testCert, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(42),
		Subject:      pkix.Name{CommonName: "responder-test"},
		NotBefore:    time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:     time.Date(2035, 1, 1, 0, 0, 0, 0, time.UTC),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	var b strings.Builder
	_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	_ = pem.Encode(&b, &pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8})
	return &testCert{key: key, cert: cert, pem: []byte(b.String())}, nil
})

// logText renders every observed log entry with its fields.
func logText(logs *observer.ObservedLogs) []string {
	var out []string
	for _, e := range logs.All() {
		out = append(out, fmt.Sprintf("%s %s %v", e.Level, e.Message, e.ContextMap()))
	}
	return out
}

func sortedTimes(ts []time.Time) []time.Time {
	out := append([]time.Time(nil), ts...)
	sort.Slice(out, func(i, j int) bool { return out[i].Before(out[j]) })
	return out
}

// asError returns err as an *Error or fails the test.
func asError(t *testing.T, err error) *Error {
	t.Helper()
	if err == nil {
		t.Fatal("want an error, got nil")
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("want *Error, got %T: %v", err, err)
	}
	return e
}

// histogram returns the sample count and sum of h.
func histogram(t *testing.T, h prometheus.Histogram) (uint64, float64) {
	t.Helper()
	var m dto.Metric
	if err := h.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum()
}
