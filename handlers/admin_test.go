package handlers

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/responder-dev/responder/alert"
	"github.com/responder-dev/responder/metrics"
)

// adminBundle is the admin listener's handler with a counting kill switch
// and the admin log lines.
type adminBundle struct {
	h       http.Handler
	pauses  atomic.Int32
	reloads atomic.Int32
	logs    *observer.ObservedLogs
	query   atomic.Pointer[ActionsQuery]

	// replay, when set, runs behind POST /api/v1/replay.
	replay func(ctx context.Context, body []byte, q ReplayQuery) (any, error)
}

func newAdminBundle(t *testing.T, cfg *Settings) *adminBundle {
	t.Helper()
	b := &adminBundle{}
	core, logs := observer.New(zap.DebugLevel)
	b.logs = logs
	m := metrics.New(nil)
	srv, err := New(Options{Settings: *cfg, Gatherer: prometheus.NewRegistry(), Logger: zap.New(core),
		Ready: func(context.Context) error { return nil },
		Admin: AdminAPI{
			Pause:  func(context.Context) error { b.pauses.Add(1); return nil },
			Resume: func(context.Context) error { return errors.New("paused by the configuration (safety.paused)") },
			Reload: func(context.Context) error { b.reloads.Add(1); return nil },
			Rules:  func() any { return map[string]int{"rules": 1} },
			Actions: func(_ context.Context, q ActionsQuery) (any, error) {
				b.query.Store(&q)
				return map[string]any{"actions": []any{}, "more": false}, nil
			},
			Evaluate: func(context.Context, alert.Format, []byte) (any, error) { return map[string]string{}, nil },
			Replay: func(ctx context.Context, body []byte, q ReplayQuery) (any, error) {
				if b.replay == nil {
					return map[string]int{"alerts": 0}, nil
				}
				return b.replay(ctx, body, q)
			},
		},
		Webhooks: &Webhooks{Auth: &WebhookAuth{}, Sink: &fakeSink{}, Metrics: m, Logger: zap.NewNop()}})
	if err != nil {
		t.Fatal(err)
	}
	for i, name := range srv.names {
		if name == "admin" {
			b.h = srv.servers[i].Handler
		}
	}
	if b.h == nil {
		b.h = srv.servers[0].Handler
	}
	return b
}

// do sends a request to the admin handler: host "" is 127.0.0.1:9090, the
// peer is 192.0.2.10:5555; headers are set in order, a "Host" one included.
func (b *adminBundle) do(method, path, body string, headers ...string) *httptest.ResponseRecorder {
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, "http://127.0.0.1:9090"+path, r)
	req.RemoteAddr = "192.0.2.10:5555"
	for i := 0; i+1 < len(headers); i += 2 {
		if headers[i] == "Host" {
			req.Host = headers[i+1]
			continue
		}
		req.Header.Set(headers[i], headers[i+1])
	}
	rec := httptest.NewRecorder()
	b.h.ServeHTTP(rec, req)
	return rec
}

func TestNewRefusesAnOpenAdminAPI(t *testing.T) {
	t.Parallel()
	for name, mutate := range map[string]func(*Settings){
		"not allowed":               func(c *Settings) { c.Admin.AllowUnauthenticated = false },
		"every interface":           func(c *Settings) { c.Server.AdminListen = ":0" },
		"on the webhook listener":   func(c *Settings) { c.Server.AdminListen = "" },
		"a name resolving anywhere": func(c *Settings) { c.Server.AdminListen = "responder.example.com:0" },
	} {
		cfg := testConfig()
		mutate(cfg)
		_, err := New(Options{Settings: *cfg, Gatherer: prometheus.NewRegistry(), Logger: zap.NewNop(),
			Webhooks: &Webhooks{Auth: &WebhookAuth{}, Sink: &fakeSink{}, Metrics: metrics.New(nil), Logger: zap.NewNop()}})
		if err == nil || !strings.Contains(err.Error(), "the admin API needs an admin token") {
			t.Errorf("%s: New = %v, want a refusal", name, err)
		}
	}
}

// TestAdminHost: the admin API and pprof answer only Host names that DNS
// rebinding cannot point at them; /metrics and the probes answer any.
func TestAdminHost(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.Server.AdminListen = "admin.internal:9090"
	cfg.Admin.AllowedHosts = []string{"Responder.Example.com", "ops"}
	cfg.Admin.Tokens = adminTokens("admin-token")
	b := newAdminBundle(t, cfg)
	cases := []struct {
		host string
		code int
	}{
		{"127.0.0.1:9090", 200},
		{"127.0.0.1", 200},
		{"[::1]:9090", 200},
		{"10.20.30.40:9090", 200}, // any IP literal: DNS cannot re-point it
		{"localhost:9090", 200},
		{"LOCALHOST", 200},
		{"admin.internal:9090", 200}, // the admin listener's own host
		{"responder.example.com:443", 200},
		{"RESPONDER.EXAMPLE.COM.", 200},
		{"ops", 200},
		{"evil.example:9090", 403},
		{"localhost.evil.example", 403},
		{"127.0.0.1.nip.io:9090", 403},
		{"responder.example.com.evil.example", 403},
		{"", 403},
	}
	for _, tc := range cases {
		for _, path := range []string{"/api/v1/rules", "/debug/pprof/cmdline"} {
			rec := b.do(http.MethodGet, path, "", "Host", tc.host, "Authorization", "Bearer admin-token")
			if rec.Code != tc.code {
				t.Errorf("GET %s with Host %q = %d %s, want %d", path, tc.host, rec.Code, rec.Body.String(), tc.code)
			}
			if tc.code == 403 && !strings.Contains(rec.Body.String(), "admin.allowed_hosts") && tc.host != "" {
				t.Errorf("refusal of Host %q does not name admin.allowed_hosts: %s", tc.host, rec.Body.String())
			}
		}
	}
	// Prometheus and the kubelet use whatever name they were given.
	for _, path := range []string{"/metrics", "/healthz", "/readyz"} {
		if rec := b.do(http.MethodGet, path, "", "Host", "evil.example:9090"); rec.Code != 200 {
			t.Errorf("GET %s with a foreign Host = %d, want 200", path, rec.Code)
		}
	}
	// A refused Host is checked before the token: no rebinding page gets
	// as far as guessing it, and the refusal is logged.
	if rec := b.do(http.MethodPost, "/api/v1/pause", "", "Host", "evil.example"); rec.Code != 403 || b.pauses.Load() != 0 {
		t.Fatalf("POST /pause with a foreign Host = %d, pauses %d", rec.Code, b.pauses.Load())
	}
	if n := b.logs.FilterMessage("admin request refused").FilterField(zap.Int("status", 403)).Len(); n == 0 {
		t.Error("no log line for the refused Host")
	}
}

// TestAdminCrossSite: a browser request sent on behalf of another site is
// refused (403) whatever its method, body or content type, so that a page
// cannot flip the kill switch even with a no-cors fetch without a body.
func TestAdminCrossSite(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		headers []string
		code    int
	}{
		{"fetch cross-site", []string{"Sec-Fetch-Site", "cross-site"}, 403},
		{"fetch same-site", []string{"Sec-Fetch-Site", "same-site"}, 403},
		{"fetch same-origin", []string{"Sec-Fetch-Site", "same-origin", "Origin", "http://127.0.0.1:9090"}, 200},
		{"fetch none (typed URL, bookmark)", []string{"Sec-Fetch-Site", "none"}, 200},
		{"foreign origin", []string{"Origin", "https://evil.example"}, 403},
		{"null origin (sandboxed frame)", []string{"Origin", "null"}, 403},
		{"origin on another port", []string{"Origin", "http://127.0.0.1:8080"}, 403},
		{"same origin", []string{"Origin", "http://127.0.0.1:9090"}, 200},
		{"same origin, default port", []string{"Host", "localhost", "Origin", "http://localhost"}, 200},
		{"curl (neither header)", nil, 200},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := newAdminBundle(t, testConfig())
			rec := b.do(http.MethodPost, "/api/v1/pause", "", tc.headers...)
			if rec.Code != tc.code {
				t.Fatalf("POST /pause = %d %s, want %d", rec.Code, rec.Body.String(), tc.code)
			}
			wantPauses := int32(0)
			if tc.code == 200 {
				wantPauses = 1
			}
			if b.pauses.Load() != wantPauses {
				t.Fatalf("pauses = %d, want %d", b.pauses.Load(), wantPauses)
			}
			if tc.code == 403 {
				if !strings.Contains(rec.Body.String(), "cross-site requests are refused") {
					t.Fatalf("answer %s", rec.Body.String())
				}
				// Reading is refused too.
				if rec := b.do(http.MethodGet, "/api/v1/actions", "", tc.headers...); rec.Code != 403 {
					t.Fatalf("GET /actions = %d, want 403", rec.Code)
				}
			}
		})
	}
}

// TestAdminContentType: POSTs take JSON, or no body at all; the types a
// cross-site form or simple request can send are 415 and change nothing.
func TestAdminContentType(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, contentType, body string
		code                    int
	}{
		{"curl -X POST: no body, no type", "", "", 200},
		{"json", "application/json", `{}`, 200},
		{"json with charset", "application/json; charset=utf-8", `{}`, 200},
		{"+json", "application/merge-patch+json", `{}`, 200},
		{"json type, empty body", "application/json", "", 200},
		{"text/plain (no-cors fetch, form enctype)", "text/plain", `{}`, 415},
		{"text/plain with charset", "text/plain;charset=UTF-8", `x`, 415},
		{"form", "application/x-www-form-urlencoded", `a=b`, 415},
		{"multipart form", "multipart/form-data; boundary=x", "--x--", 415},
		{"empty text/plain", "text/plain", "", 415},
		{"xml", "application/xml", `<a/>`, 415},
		{"yaml where json is read", "application/yaml", `a: b`, 415},
		{"body without a type", "", `{}`, 415},
		{"garbage type", "json", `{}`, 415},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := newAdminBundle(t, testConfig())
			var headers []string
			if tc.contentType != "" {
				headers = []string{"Content-Type", tc.contentType}
			}
			for _, path := range []string{"/api/v1/pause", "/api/v1/reload"} {
				rec := b.do(http.MethodPost, path, tc.body, headers...)
				if rec.Code != tc.code {
					t.Fatalf("POST %s = %d %s, want %d", path, rec.Code, rec.Body.String(), tc.code)
				}
				if tc.code == 415 && !strings.Contains(rec.Body.String(), "application/json") {
					t.Fatalf("415 answer does not say what to send: %s", rec.Body.String())
				}
			}
			want := int32(0)
			if tc.code == 200 {
				want = 1
			}
			if b.pauses.Load() != want || b.reloads.Load() != want {
				t.Fatalf("pauses %d, reloads %d, want %d", b.pauses.Load(), b.reloads.Load(), want)
			}
			// The evaluate endpoint reads JSON too.
			if tc.code == 415 {
				if rec := b.do(http.MethodPost, "/api/v1/evaluate", `{"id":"x"}`, headers...); rec.Code != 415 {
					t.Fatalf("POST /evaluate = %d, want 415", rec.Code)
				}
			}
		})
	}
}

// TestAdminAcceptsYAMLWhereAsked: the per-endpoint hook (for the replay
// endpoint's rules file) admits YAML and still refuses the form types.
func TestAdminAcceptsYAMLWhereAsked(t *testing.T) {
	t.Parallel()
	g := &adminGuard{log: zap.NewNop()}
	e := echo.New()
	e.POST("/yaml", func(c echo.Context) error { return c.NoContent(http.StatusNoContent) }, g.accepts(yamlBody, jsonBody))
	for ct, want := range map[string]int{
		"application/yaml": 204, "application/x-yaml": 204, "application/json": 204,
		"text/plain": 415, "application/x-www-form-urlencoded": 415, "multipart/form-data; boundary=x": 415,
	} {
		req := httptest.NewRequest(http.MethodPost, "/yaml", strings.NewReader("rules: []"))
		req.Header.Set("Content-Type", ct)
		rec := httptest.NewRecorder()
		e.ServeHTTP(rec, req)
		if rec.Code != want {
			t.Errorf("%s = %d, want %d", ct, rec.Code, want)
		}
		if want == 415 && !strings.Contains(rec.Body.String(), "application/yaml or application/json") {
			t.Errorf("%s answer %s", ct, rec.Body.String())
		}
	}
}

func TestAdminToken(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.Admin.Tokens = adminTokens("admin-token")
	b := newAdminBundle(t, cfg)
	for _, tc := range []struct {
		name, auth string
		code       int
	}{
		{"no header", "", 401},
		{"wrong token", "Bearer admin-tokem", 401},
		{"prefix of the token", "Bearer admin", 401},
		{"basic", "Basic YWRtaW46YWRtaW4tdG9rZW4=", 401},
		{"scheme only", "Bearer", 401},
		{"right token", "Bearer admin-token", 200},
		{"scheme in lower case", "bearer admin-token", 200},
	} {
		var headers []string
		if tc.auth != "" {
			headers = []string{"Authorization", tc.auth}
		}
		if rec := b.do(http.MethodGet, "/api/v1/rules", "", headers...); rec.Code != tc.code {
			t.Errorf("%s: GET /rules = %d, want %d", tc.name, rec.Code, tc.code)
		}
		if rec := b.do(http.MethodPost, "/api/v1/pause", "", headers...); rec.Code != tc.code {
			t.Errorf("%s: POST /pause = %d, want %d", tc.name, rec.Code, tc.code)
		}
	}
	if b.pauses.Load() != 2 {
		t.Fatalf("pauses = %d, want 2 (the right token only)", b.pauses.Load())
	}
	for _, l := range b.logs.All() {
		for _, f := range l.Context {
			if strings.Contains(f.String, "admin-tok") || strings.Contains(f.String, "YWRtaW4") {
				t.Fatalf("log line %q leaks a token: %v", l.Message, l.Context)
			}
		}
	}
}

// TestAdminActionsLogged: every state change through the admin API says
// what, by which token and from which peer.
func TestAdminActionsLogged(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, token, by string
	}{
		{"admin token", "admin-token", "admin"},
		{"no token on loopback", "", "unauthenticated"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := testConfig()
			cfg.Admin.Tokens = adminTokens(tc.token)
			b := newAdminBundle(t, cfg)
			auth := []string{"Authorization", "Bearer " + tc.token}
			for _, action := range []string{"pause", "reload", "resume"} {
				b.do(http.MethodPost, "/api/v1/"+action, "", auth...)
				lines := b.logs.FilterField(zap.String("action", action)).All()
				if len(lines) != 1 {
					t.Fatalf("%s: %d log lines, want 1", action, len(lines))
				}
				ctx := lines[0].ContextMap()
				if ctx["by"] != tc.by || ctx["remote_addr"] != "192.0.2.10:5555" {
					t.Fatalf("%s: log line %q %v, want by %q and remote_addr", action, lines[0].Message, ctx, tc.by)
				}
				if action == "resume" && (lines[0].Message != "admin action failed" || ctx["error"] == nil) {
					t.Fatalf("failed resume logged as %q %v", lines[0].Message, ctx)
				}
			}
		})
	}
}

func TestActionsQueryParameters(t *testing.T) {
	t.Parallel()
	b := newAdminBundle(t, testConfig())
	for _, tc := range []struct {
		query string
		code  int
		want  ActionsQuery
	}{
		{"", 200, ActionsQuery{Limit: 100}},
		{"?before_id=42&limit=10&machine=m&status=collect", 200, ActionsQuery{Machine: "m", Status: "collect", Limit: 10, BeforeID: 42}},
		{"?limit=10000", 200, ActionsQuery{Limit: 10000}},
		{"?limit=10001", 400, ActionsQuery{}},
		{"?limit=0", 400, ActionsQuery{}},
		{"?before_id=0", 400, ActionsQuery{}},
		{"?before_id=-5", 400, ActionsQuery{}},
		{"?before_id=abc", 400, ActionsQuery{}},
		{"?before_id=1.5", 400, ActionsQuery{}},
		{"?before_id=99999999999999999999", 400, ActionsQuery{}},
	} {
		b.query.Store(nil)
		rec := b.do(http.MethodGet, "/api/v1/actions"+tc.query, "")
		if rec.Code != tc.code {
			t.Errorf("GET /actions%s = %d %s, want %d", tc.query, rec.Code, rec.Body.String(), tc.code)
			continue
		}
		if tc.code == 400 {
			if b.query.Load() != nil {
				t.Errorf("GET /actions%s reached the store", tc.query)
			}
			if strings.Contains(tc.query, "before_id") && !strings.Contains(rec.Body.String(), "before_id must be a positive integer") {
				t.Errorf("GET /actions%s answer %s", tc.query, rec.Body.String())
			}
			continue
		}
		if got := b.query.Load(); got == nil || *got != tc.want {
			t.Errorf("GET /actions%s queried %+v, want %+v", tc.query, got, tc.want)
		}
	}
}

// TestOversizedContentLengthAnsweredAtOnce: a request announcing more than
// server.max_body_bytes gets its 413 at once, not after read_timeout while
// the server waits for a body it will refuse. A raw client sends the
// headers and one byte of a 10 GiB body, or of a body just over the cap
// (which net/http would read to its end before answering unless told to
// close the connection).
func TestOversizedContentLengthAnsweredAtOnce(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.Server.ReadTimeout = 30 * time.Second
	cfg.Server.MaxBodyBytes = 1024
	r := start(t, cfg, Options{Admin: AdminAPI{Evaluate: func(context.Context, alert.Format, []byte) (any, error) {
		return map[string]string{}, nil
	}}})
	for _, tc := range []struct{ addr, path, length string }{
		{r.addrs["webhooks"], "/webhooks/defender", "10737418240"},
		{r.addrs["webhooks"], "/webhooks/alertmanager", "10737418240"},
		{r.addrs["admin"], "/api/v1/evaluate", "10737418240"},
		{r.addrs["webhooks"], "/webhooks/defender", "2048"},
		{r.addrs["admin"], "/api/v1/evaluate", "2048"},
	} {
		t.Run(tc.path+" "+tc.length, func(t *testing.T) {
			t.Parallel()
			conn, err := net.Dial("tcp", tc.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			began := time.Now()
			head := "POST " + tc.path + " HTTP/1.1\r\nHost: " + tc.addr + "\r\nContent-Type: application/json\r\nContent-Length: " + tc.length + "\r\n\r\n{"
			if _, err := conn.Write([]byte(head)); err != nil {
				t.Fatal(err)
			}
			// Bounded well below read_timeout (30 s), not a benchmark.
			_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatalf("no answer within 5s (read_timeout is 30s): %v", err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(string(body), "server.max_body_bytes") {
				t.Fatalf("answer %d %s, want 413", resp.StatusCode, body)
			}
			if !resp.Close {
				t.Error("the connection is kept open for a body that was not read")
			}
			t.Logf("413 after %s", time.Since(began).Round(time.Millisecond))
		})
	}
}

// TestReplayOneAtATime: while a replay runs, a second request is answered
// 429 at once with a clear message, and the next one after it ends runs.
func TestReplayOneAtATime(t *testing.T) {
	t.Parallel()
	b := newAdminBundle(t, testConfig())
	started, release := make(chan ReplayQuery, 1), make(chan struct{})
	b.replay = func(ctx context.Context, body []byte, q ReplayQuery) (any, error) {
		if string(body) != "rules: []" {
			t.Errorf("body %q", body)
		}
		started <- q
		<-release
		return map[string]int{"alerts": 3}, nil
	}
	yaml := []string{"Content-Type", "application/yaml"}
	first := make(chan *httptest.ResponseRecorder)
	go func() { first <- b.do(http.MethodPost, "/api/v1/replay?since=36h&source=graph", "rules: []", yaml...) }()
	if q := <-started; q != (ReplayQuery{Since: "36h", Source: "graph"}) {
		t.Errorf("query %+v", q)
	}
	second := b.do(http.MethodPost, "/api/v1/replay?from=2026-12-01T00:00:00Z", "rules: []", yaml...)
	if second.Code != http.StatusTooManyRequests || !strings.Contains(second.Body.String(), "a replay is already running") || second.Header().Get("Retry-After") == "" {
		t.Errorf("second replay: %d %s %v, want 429 with a message and Retry-After", second.Code, second.Body.String(), second.Header())
	}
	close(release)
	if rec := <-first; rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), `"alerts":3`) {
		t.Errorf("first replay: %d %s", rec.Code, rec.Body.String())
	}
	b.replay = func(context.Context, []byte, ReplayQuery) (any, error) { return map[string]int{"alerts": 1}, nil }
	if rec := b.do(http.MethodPost, "/api/v1/replay", "rules: []", yaml...); rec.Code != http.StatusOK {
		t.Errorf("replay after the first ended: %d %s", rec.Code, rec.Body.String())
	}
}

// TestReplayAnswers: the request's faults are 400 with their problems,
// a replay over its time 503, JSON bodies are refused (the rules are YAML).
func TestReplayAnswers(t *testing.T) {
	t.Parallel()
	b := newAdminBundle(t, testConfig())
	yaml := []string{"Content-Type", "application/yaml"}
	b.replay = func(context.Context, []byte, ReplayQuery) (any, error) {
		return nil, &BadRequestError{Msg: "the candidate rules are not valid", Problems: []string{"request body:3:11: rules[0].when: unknown name"}}
	}
	rec := b.do(http.MethodPost, "/api/v1/replay", "rules: x", yaml...)
	if rec.Code != 400 || !strings.Contains(rec.Body.String(), `"problems":["request body:3:11: rules[0].when: unknown name"]`) {
		t.Errorf("bad rules: %d %s", rec.Code, rec.Body.String())
	}
	b.replay = func(context.Context, []byte, ReplayQuery) (any, error) {
		return nil, fmt.Errorf("replaying: %w", context.DeadlineExceeded)
	}
	if rec := b.do(http.MethodPost, "/api/v1/replay", "rules: []", yaml...); rec.Code != 503 || !strings.Contains(rec.Body.String(), "did not end within") {
		t.Errorf("replay over time: %d %s", rec.Code, rec.Body.String())
	}
	if rec := b.do(http.MethodPost, "/api/v1/replay", `{"rules": []}`, "Content-Type", "application/json"); rec.Code != http.StatusUnsupportedMediaType {
		t.Errorf("JSON body: %d %s, want 415", rec.Code, rec.Body.String())
	}
}
