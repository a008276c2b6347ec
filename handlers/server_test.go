package handlers

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/responder-dev/responder/alert"
	"github.com/responder-dev/responder/internal/testkit"
	"github.com/responder-dev/responder/metrics"
)

type running struct {
	srv    *Server
	cancel context.CancelFunc
	done   chan error
	addrs  map[string]string
}

func start(t *testing.T, cfg *Settings, opts Options) *running {
	t.Helper()
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	opts.Settings = *cfg
	if opts.Webhooks == nil {
		auth, err := NewWebhookAuth(*cfg)
		if err != nil {
			t.Fatal(err)
		}
		opts.Webhooks = &Webhooks{Auth: auth, Sink: &fakeSink{}, MaxBodyBytes: cfg.Server.MaxBodyBytes, SubmitTimeout: time.Second, Metrics: m, Logger: zap.NewNop()}
	}
	opts.Gatherer = reg
	opts.Logger = zap.NewNop()
	srv, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{srv: srv, cancel: cancel, done: make(chan error, 1), addrs: srv.Addrs()}
	go func() { r.done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-r.done
	})
	return r
}

func testConfig() *Settings {
	c := DefaultSettings()
	c.Server.Listen = "127.0.0.1:0"
	c.Server.AdminListen = "127.0.0.1:0"
	c.Server.ShutdownTimeout = 5 * time.Second
	// The admin API of these tests is on loopback without a token, as
	// config allows only on purpose; tests of the token set one.
	c.Admin.AllowUnauthenticated = true
	// Webhook tests that need authentication build their WebhookAuth.
	c.Webhooks.AllowUnauthenticated = true
	return &c
}

// adminTokens is the admin token list config builds from
// admin.bearer_token_file: none for "", else one named "admin".
func adminTokens(token string) []AdminToken {
	if token == "" {
		return nil
	}
	return []AdminToken{{Name: "admin", Token: token}}
}

func get(t *testing.T, client *http.Client, url, token string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func TestListenersAndProbes(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.Admin.Tokens = adminTokens("admin-token")
	ready := errors.New("store: connection refused")
	r := start(t, cfg, Options{
		Ready: func(context.Context) error { return ready },
		Admin: AdminAPI{Rules: func() any { return map[string]int{"rules": 3} }},
	})
	c := http.DefaultClient
	pub, adm := "http://"+r.addrs["webhooks"], "http://"+r.addrs["admin"]

	if code, _ := get(t, c, pub+"/healthz", ""); code != 200 {
		t.Fatalf("healthz = %d", code)
	}
	if code, body := get(t, c, pub+"/readyz", ""); code != 503 || !strings.Contains(body, "connection refused") {
		t.Fatalf("readyz = %d %s", code, body)
	}
	// /metrics and the admin API live only on the admin listener.
	if code, _ := get(t, c, pub+"/metrics", ""); code != 404 {
		t.Fatalf("metrics on the public listener = %d", code)
	}
	if code, body := get(t, c, adm+"/metrics", ""); code != 200 || !strings.Contains(body, "responder_webhook_requests_total") {
		t.Fatalf("metrics = %d", code)
	}
	if code, _ := get(t, c, adm+"/api/v1/rules", ""); code != 401 {
		t.Fatalf("admin API without token = %d", code)
	}
	if code, body := get(t, c, adm+"/api/v1/rules", "admin-token"); code != 200 || !strings.Contains(body, `"rules":3`) {
		t.Fatalf("admin API = %d %s", code, body)
	}
	if code, _ := get(t, c, adm+"/debug/pprof/", ""); code != 401 {
		t.Fatalf("pprof without token = %d", code)
	}
	if code, _ := get(t, c, adm+"/debug/pprof/goroutine?debug=1", "admin-token"); code != 200 {
		t.Fatalf("pprof = %d", code)
	}
}

func TestSingleListenerWhenAdminListenEmpty(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.Server.AdminListen = ""
	cfg.Admin.Tokens = adminTokens("admin-token") // required with the admin API on the webhook listener
	r := start(t, cfg, Options{Admin: AdminAPI{Rules: func() any { return map[string]int{"rules": 3} }}})
	if len(r.addrs) != 1 {
		t.Fatalf("listeners = %v", r.addrs)
	}
	if code, _ := get(t, http.DefaultClient, "http://"+r.addrs["webhooks"]+"/metrics", ""); code != 200 {
		t.Fatalf("metrics = %d", code)
	}
	if code, _ := get(t, http.DefaultClient, "http://"+r.addrs["webhooks"]+"/api/v1/rules", ""); code != 401 {
		t.Fatalf("admin API without token on the webhook listener = %d, want 401", code)
	}
	if code, _ := get(t, http.DefaultClient, "http://"+r.addrs["webhooks"]+"/api/v1/rules", "admin-token"); code != 200 {
		t.Fatalf("admin API on the webhook listener = %d", code)
	}
}

func TestPortInUseFailsAtListen(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg := testConfig()
	cfg.Server.Listen = ln.Addr().String()
	m := metrics.New(nil)
	srv, err := New(Options{Settings: *cfg, Gatherer: prometheus.NewRegistry(), Logger: zap.NewNop(),
		Webhooks: &Webhooks{Auth: &WebhookAuth{}, Sink: &fakeSink{}, Metrics: m, Logger: zap.NewNop()}})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err == nil || !strings.Contains(err.Error(), "listening for webhooks on "+ln.Addr().String()) {
		t.Fatalf("err = %v", err)
	}
}

// Not parallel: it recognises its request by the handler's goroutine, and
// no other test may be serving a webhook meanwhile.
func TestGracefulShutdownFinishesInFlightRequest(t *testing.T) {
	cfg := testConfig()
	r := start(t, cfg, Options{})
	conn, err := net.Dial("tcp", r.addrs["webhooks"])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	body := `{"version":"4","status":"firing","alerts":[]}`
	// Send the headers and half of the body, then ask the server to stop.
	head := "POST /webhooks/alertmanager HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
		strconv.Itoa(len(body)) + "\r\n\r\n" + body[:10]
	if _, err := conn.Write([]byte(head)); err != nil {
		t.Fatal(err)
	}
	// Stop only once the handler is reading our body: its goroutine shows
	// in this process's stacks.
	buf := make([]byte, 1<<20)
	testkit.WaitUntil(t, 10*time.Second, "the request to reach the handler", func() bool {
		return bytes.Contains(buf[:runtime.Stack(buf, true)], []byte("handlers.(*Webhooks).serve"))
	})
	r.cancel()
	if _, err := conn.Write([]byte(body[10:])); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := io.ReadAll(conn)
	if err != nil && !isTimeout(err) {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(resp), "HTTP/1.1 202") {
		t.Fatalf("in-flight request answer = %q", resp)
	}
	if err := <-r.done; err != nil {
		t.Fatalf("Serve returned %v", err)
	}
	r.done <- nil // for the cleanup
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestMutualTLS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	caCert, caKey := newCert(t, nil, nil, "test-ca", true)
	srvCert, srvKey := newCert(t, caCert, caKey, "127.0.0.1", false)
	cliCert, cliKey := newCert(t, caCert, caKey, "alertmanager", false)
	write := func(name string, blocks ...*pem.Block) string {
		p := filepath.Join(dir, name)
		var out []byte
		for _, b := range blocks {
			out = append(out, pem.EncodeToMemory(b)...)
		}
		if err := os.WriteFile(p, out, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cfg := testConfig()
	cfg.Server.TLSCertFile = write("srv.pem", &pem.Block{Type: "CERTIFICATE", Bytes: srvCert.Raw})
	cfg.Server.TLSKeyFile = write("srv.key", keyBlock(t, srvKey))
	cfg.Server.TLSClientCAFile = write("ca.pem", &pem.Block{Type: "CERTIFICATE", Bytes: caCert.Raw})
	r := start(t, cfg, Options{})

	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	noCert := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	withCert := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{{
		Certificate: [][]byte{cliCert.Raw}, PrivateKey: cliKey,
	}}}}}
	otherCA, otherKey := newCert(t, nil, nil, "other-ca", true)
	foreign, foreignKey := newCert(t, otherCA, otherKey, "intruder", false)
	// Sent whatever CAs the server names (a client picking from
	// Certificates would send none).
	foreignCert := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return &tls.Certificate{Certificate: [][]byte{foreign.Raw}, PrivateKey: foreignKey}, nil
		}}}}
	post := func(c *http.Client) int {
		t.Helper()
		resp, err := c.Post("https://"+r.addrs["webhooks"]+"/webhooks/defender", "application/json",
			strings.NewReader(`{"id":"da1","machineId":"1e5bc9d7e413ddd7902c2932e418702b84d0cc07"}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	// Webhooks need a client certificate signed by the CA.
	if code := post(noCert); code != http.StatusUnauthorized {
		t.Fatalf("webhook without a client certificate = %d, want 401", code)
	}
	if code := post(withCert); code != http.StatusAccepted {
		t.Fatalf("webhook with a client certificate = %d, want 202", code)
	}
	// A certificate from another CA fails the handshake itself.
	if _, err := foreignCert.Get("https://" + r.addrs["webhooks"] + "/healthz"); err == nil {
		t.Fatal("a client certificate from another CA was accepted")
	}
	// Probes and /metrics stay reachable without one (kubelet, Prometheus).
	for _, u := range []string{r.addrs["webhooks"] + "/healthz", r.addrs["webhooks"] + "/readyz", r.addrs["admin"] + "/metrics"} {
		if code, _ := get(t, noCert, "https://"+u, ""); code != 200 {
			t.Fatalf("GET %s without a client certificate = %d, want 200", u, code)
		}
	}
}

func keyBlock(t *testing.T, k *ecdsa.PrivateKey) *pem.Block {
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return &pem.Block{Type: "EC PRIVATE KEY", Bytes: der}
}

func newCert(t *testing.T, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, cn string, isCA bool) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IsCA:         isCA, BasicConstraintsValid: true,
	}
	if ip := net.ParseIP(cn); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	}
	signer, signKey := tmpl, key
	if parent != nil {
		signer, signKey = parent, parentKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// adminHandler builds the servers without listening and returns the admin
// listener's handler.
func adminHandler(t *testing.T, cfg *Settings, admin AdminAPI) http.Handler {
	t.Helper()
	m := metrics.New(nil)
	srv, err := New(Options{Settings: *cfg, Gatherer: prometheus.NewRegistry(), Logger: zap.NewNop(), Admin: admin,
		Webhooks: &Webhooks{Auth: &WebhookAuth{}, Sink: &fakeSink{}, Metrics: m, Logger: zap.NewNop()}})
	if err != nil {
		t.Fatal(err)
	}
	for i, name := range srv.names {
		if name == "admin" {
			return srv.servers[i].Handler
		}
	}
	t.Fatal("no admin listener")
	return nil
}

func TestGetPause(t *testing.T) {
	t.Parallel()
	errLocked := errors.New("reading the kill switch: database is locked")
	cases := []struct {
		name   string
		paused func(context.Context) (bool, error)
		token  string
		code   int
		body   string
	}{
		{"paused", func(context.Context) (bool, error) { return true, nil }, "admin-token", 200, `{"paused":true}`},
		{"running", func(context.Context) (bool, error) { return false, nil }, "admin-token", 200, `{"paused":false}`},
		{"store error", func(context.Context) (bool, error) { return false, errLocked }, "admin-token", 503, `{"error":"reading the kill switch: database is locked"}`},
		{"no token", func(context.Context) (bool, error) { return true, nil }, "", 401, `{"error":"unauthorized"}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := testConfig()
			cfg.Admin.Tokens = adminTokens("admin-token")
			h := adminHandler(t, cfg, AdminAPI{Paused: tc.paused})
			req := httptest.NewRequest(http.MethodGet, "http://127.0.0.1:9090/api/v1/pause", nil)
			if tc.token != "" {
				req.Header.Set("Authorization", "Bearer "+tc.token)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != tc.code || strings.TrimSpace(rec.Body.String()) != tc.body {
				t.Fatalf("GET /api/v1/pause = %d %s, want %d %s", rec.Code, rec.Body.String(), tc.code, tc.body)
			}
		})
	}
}

func TestEvaluateFormat(t *testing.T) {
	t.Parallel()
	const amBody = `{"version":"4","status":"firing","alerts":[]}`
	const mdeBody = `{"id":"da0123456789","machineId":"` + machineA + `"}`
	cases := []struct {
		name, query, body string
		code              int
		want              string // the format decoded, or the error answered
	}{
		{"alertmanager detected", "", amBody, 200, "alertmanager"},
		{"alerts after other members", "", `{"receiver":"r","groupLabels":{"a":["x",{"alerts":1}]},"alerts":[]}`, 200, "alertmanager"},
		{"alerts only nested", "", `{"value":[{"alerts":[]}]}`, 200, "defender"},
		{"defender object", "", mdeBody, 200, "defender"},
		{"defender array", "", `[` + mdeBody + `]`, 200, "defender"},
		{"explicit format honoured", "?format=defender", amBody, 200, "defender"},
		{"explicit alertmanager", "?format=alertmanager", mdeBody, 200, "alertmanager"},
		{"unknown format", "?format=splunk", mdeBody, 400, `unknown format "splunk"`},
		{"detected defender fails", "", `{"fail":true}`, 400,
			"bad body (decoded as defender; pass ?format=alertmanager for Alertmanager or Grafana)"},
		{"detected alertmanager fails", "", `{"alerts":[],"fail":true}`, 400,
			"bad body (decoded as alertmanager; pass ?format=defender for Defender or Graph)"},
		{"not json", "", `{"id":`, 400, "bad body (decoded as defender; pass ?format=alertmanager for Alertmanager or Grafana)"},
		{"explicit format fails without hint", "?format=defender", `{"fail":true}`, 400, "bad body"},
	}
	evaluate := func(_ context.Context, f alert.Format, body []byte) (any, error) {
		if bytes.Contains(body, []byte(`"fail"`)) || !json.Valid(body) {
			return nil, &alert.DecodeError{Msg: "bad body"}
		}
		return map[string]string{"format": string(f)}, nil
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := adminHandler(t, testConfig(), AdminAPI{Evaluate: evaluate})
			req := httptest.NewRequest(http.MethodPost, "http://127.0.0.1:9090/api/v1/evaluate"+tc.query, strings.NewReader(tc.body))
			req.Header.Set("Content-Type", "application/json")
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			var out map[string]string
			if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
				t.Fatalf("answer %q: %v", rec.Body.String(), err)
			}
			got := out["format"]
			if tc.code != 200 {
				got = out["error"]
			}
			// alert.ParseFormat's message may list more formats: a prefix will do.
			if rec.Code != tc.code || got != tc.want && !(tc.query == "?format=splunk" && strings.HasPrefix(got, tc.want)) {
				t.Fatalf("answer = %d %v, want %d %q", rec.Code, out, tc.code, tc.want)
			}
		})
	}
}
