package handlers

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/responder-dev/responder/alert"
	"github.com/responder-dev/responder/metrics"
)

const (
	machineA  = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07"
	machineB  = "b52f1a0c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a"
	testToken = "s3cr3t-bearer-token-value"
)

// fakeSink records submissions; err makes it fail like an unavailable store.
type fakeSink struct {
	mu   sync.Mutex
	seen map[string]bool
	got  []alert.Alert
	err  error
}

func (s *fakeSink) Submit(_ context.Context, alerts []alert.Alert) (alert.Receipt, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return alert.Receipt{}, s.err
	}
	if s.seen == nil {
		s.seen = map[string]bool{}
	}
	r := alert.Receipt{Duplicate: make([]bool, len(alerts))}
	for i, a := range alerts {
		if s.seen[a.DedupKey()] {
			r.Duplicate[i] = true
			continue
		}
		s.seen[a.DedupKey()] = true
		s.got = append(s.got, a)
	}
	return r, nil
}

type bundle struct {
	hooks *Webhooks
	sink  *fakeSink
	m     *metrics.Metrics
	logs  *observer.ObservedLogs
}

func setup(t *testing.T, auth *WebhookAuth) *bundle {
	t.Helper()
	core, logs := observer.New(zap.DebugLevel)
	m := metrics.New(prometheus.NewRegistry())
	sink := &fakeSink{}
	if auth == nil {
		auth = &WebhookAuth{}
	}
	return &bundle{
		hooks: &Webhooks{Auth: auth, Sink: sink, MaxBodyBytes: 4096, SubmitTimeout: time.Second, Metrics: m, Logger: zap.New(core)},
		sink:  sink, m: m, logs: logs,
	}
}

func (b *bundle) do(t *testing.T, format alert.Format, body string, mutate func(*http.Request)) (int, map[string]any) {
	t.Helper()
	rec, out := b.doRec(t, format, body, mutate)
	return rec.Code, out
}

// doRec sends a POST (mutate may change the method) through the routes New
// mounts, and returns the recorder with the decoded answer.
func (b *bundle) doRec(t *testing.T, format alert.Format, body string, mutate func(*http.Request)) (*httptest.ResponseRecorder, map[string]any) {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, "/webhooks/"+string(format), strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.RemoteAddr = "10.1.2.3:40000"
	if mutate != nil {
		mutate(req)
	}
	rec := httptest.NewRecorder()
	e := newEcho(zap.NewNop())
	b.hooks.mount(e)
	e.ServeHTTP(rec, req)
	var out map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatalf("answer is not JSON: %q", rec.Body.String())
	}
	return rec, out
}

func method(m string) func(*http.Request) { return func(r *http.Request) { r.Method = m } }

// warnLine returns the context of the only warn line with msg, failing the
// test unless there is exactly one.
func (b *bundle) warnLine(t *testing.T, msg string) map[string]any {
	t.Helper()
	lines := b.logs.FilterMessage(msg).FilterLevelExact(zap.WarnLevel).All()
	if len(lines) != 1 {
		t.Fatalf("%d %q warn lines, want 1 (all: %v)", len(lines), msg, b.logs.All())
	}
	return lines[0].ContextMap()
}

func amBody(alerts ...string) string {
	return `{"version":"4","groupKey":"{}:{}","status":"firing","receiver":"responder","alerts":[` + strings.Join(alerts, ",") + `]}`
}

func amAlert(status, labels string) string {
	return `{"status":"` + status + `","labels":{` + labels + `},"annotations":{},"startsAt":"2026-11-26T10:00:00Z","endsAt":"0001-01-01T00:00:00Z","fingerprint":"c0ffee0123456789"}`
}

func TestWebhookAnswers(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	body := amBody(
		amAlert("firing", `"alertname":"A","alert_id":"a1","machine_id":"`+machineA+`"`),
		amAlert("firing", `"alertname":"B","alert_id":"a2","instance":"host.example.com:9100"`),
		amAlert("resolved", `"alertname":"C","alert_id":"a3","machine_id":"`+machineB+`"`),
		amAlert("firing", `"alertname":"D","alert_id":"a4"`),
		amAlert("firing", `"alertname":"E","alert_id":"a5","machine_id":"not-a-machine"`),
	)
	code, out := b.do(t, alert.FormatAlertmanager, body, nil)
	if code != http.StatusAccepted {
		t.Fatalf("code = %d, body %v", code, out)
	}
	want := map[string]float64{"received": 5, "accepted": 2, "duplicates": 0, "ignored": 2, "invalid": 1}
	for k, v := range want {
		if out[k] != v {
			t.Errorf("%s = %v, want %v (answer %v)", k, out[k], v, out)
		}
	}
	// The invalid alert's line names it.
	if line := b.warnLine(t, "alert invalid"); line["alert_id"] != "a5" || !strings.Contains(line["error"].(string), "alerts[4]") {
		t.Fatalf("alert invalid line = %v", line)
	}
	// The same body again: both accepted alerts are duplicates now.
	_, out = b.do(t, alert.FormatAlertmanager, body, nil)
	if out["accepted"] != 0.0 || out["duplicates"] != 2.0 {
		t.Fatalf("second delivery: %v", out)
	}
	if got := testutil.ToFloat64(b.m.AlertsReceived.WithLabelValues("alertmanager", "duplicate")); got != 2 {
		t.Fatalf("duplicate counter = %v", got)
	}
	if got := testutil.ToFloat64(b.m.AlertsReceived.WithLabelValues("alertmanager", "invalid")); got != 2 {
		t.Fatalf("invalid counter = %v", got)
	}
	if got := testutil.ToFloat64(b.m.WebhookRequests.WithLabelValues("alertmanager", "202")); got != 2 {
		t.Fatalf("requests counter = %v", got)
	}
	// Resolved alerts are taken once a rule wants them.
	b.hooks.AcceptResolved = func() bool { return true }
	_, out = b.do(t, alert.FormatAlertmanager, body, nil)
	if out["accepted"] != 1.0 || out["ignored"] != 1.0 {
		t.Fatalf("with on_resolved: %v", out)
	}
}

func TestWebhookErrors(t *testing.T) {
	t.Parallel()
	big := `{"version":"4","alerts":[],"pad":"` + strings.Repeat("x", 5000) + `"}`
	cases := []struct {
		name   string
		format alert.Format
		body   string
		mutate func(*http.Request)
		code   int
		errSub string
	}{
		{"not json", alert.FormatDefender, `{"id":`, nil, 400, "JSON"},
		{"wrong content type", alert.FormatDefender, `{}`, func(r *http.Request) { r.Header.Set("Content-Type", "text/plain") }, 415, `content type must be application/json, got "text/plain"`},
		{"missing content type", alert.FormatDefender, `{}`, func(r *http.Request) { r.Header.Del("Content-Type") }, 415, "content type"},
		{"too large by length", alert.FormatAlertmanager, big, nil, 413, "server.max_body_bytes (4096 bytes)"},
		{"too large chunked", alert.FormatAlertmanager, big, func(r *http.Request) { r.ContentLength = -1 }, 413, "server.max_body_bytes"},
		{"wrong types", alert.FormatAlertmanager, `{"version":"4","alerts":[{"status":"firing","labels":"x"}]}`, nil, 400, "alerts[0].labels"},
		{"all invalid", alert.FormatAlertmanager, amBody(amAlert("firing", `"alert_id":"a","machine_id":"123"`)), nil, 400, "alerts[0]"},
		{"json content type with charset", alert.FormatAlertmanager, amBody(), func(r *http.Request) { r.Header.Set("Content-Type", "application/json; charset=utf-8") }, 202, ""},
		{"get", alert.FormatAlertmanager, amBody(), method(http.MethodGet), 405, `method "GET" not allowed; use POST or PUT`},
		{"delete", alert.FormatDefender, `{}`, method(http.MethodDelete), 405, `method "DELETE" not allowed`},
		{"method echo does not know", alert.FormatDefender, `{}`, method("BREW"), 405, `method "BREW" not allowed`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, nil)
			rec, out := b.doRec(t, tc.format, tc.body, tc.mutate)
			if rec.Code != tc.code {
				t.Fatalf("code = %d, want %d (answer %v)", rec.Code, tc.code, out)
			}
			if got := testutil.ToFloat64(b.m.WebhookRequests.WithLabelValues(string(tc.format), strconv.Itoa(tc.code))); got != 1 {
				t.Fatalf("webhook_requests_total{code=%d} = %v", tc.code, got)
			}
			if tc.code == http.StatusAccepted {
				return
			}
			msg, _ := out["error"].(string)
			if !strings.Contains(msg, tc.errSub) {
				t.Fatalf("error = %q, want it to contain %q", msg, tc.errSub)
			}
			if tc.code == http.StatusMethodNotAllowed && rec.Header().Get("Allow") != "POST, PUT" {
				t.Fatalf("Allow = %q", rec.Header().Get("Allow"))
			}
			// One warn line with stable keys, its error the client's text.
			line := b.warnLine(t, "webhook rejected")
			want := map[string]any{"source": string(tc.format), "peer": "10.1.2.3:40000", "status": int64(tc.code), "error": msg}
			for k, v := range want {
				if line[k] != v {
					t.Errorf("log %s = %#v, want %#v (line %v)", k, line[k], v, line)
				}
			}
		})
	}
}

func TestWebhookMethods(t *testing.T) {
	t.Parallel()
	bodies := map[alert.Format]string{
		alert.FormatAlertmanager: amBody(amAlert("firing", `"alert_id":"m1","machine_id":"`+machineA+`"`)),
		alert.FormatDefender:     `{"id":"da0123456789","machineId":"` + machineB + `","severity":"High","status":"New","title":"t"}`,
	}
	for _, format := range []alert.Format{alert.FormatDefender, alert.FormatAlertmanager} {
		for _, m := range []string{http.MethodPost, http.MethodPut} {
			t.Run(string(format)+"/"+m, func(t *testing.T) {
				t.Parallel()
				b := setup(t, nil)
				code, out := b.do(t, format, bodies[format], method(m))
				if code != http.StatusAccepted || out["accepted"] != 1.0 {
					t.Fatalf("code = %d, answer %v", code, out)
				}
				if got := testutil.ToFloat64(b.m.WebhookRequests.WithLabelValues(string(format), "202")); got != 1 {
					t.Fatalf("webhook_requests_total{code=202} = %v", got)
				}
			})
		}
	}
}

func TestStoreUnavailableAnswers503(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.sink.err = errors.New("database is locked")
	code, out := b.do(t, alert.FormatAlertmanager, amBody(amAlert("firing", `"alert_id":"a","machine_id":"`+machineA+`"`)), nil)
	if code != http.StatusServiceUnavailable {
		t.Fatalf("code = %d (%v)", code, out)
	}
	if strings.Contains(out["error"].(string), "locked") {
		t.Fatalf("internal error text leaked: %v", out)
	}
}

func TestWebhookAuth(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_800_000_000, 0)
	hmacSecret := "grafana-hmac-secret"
	sign := func(prefix, body string) string {
		mac := hmac.New(sha256.New, []byte(hmacSecret))
		mac.Write([]byte(prefix + body))
		return hex.EncodeToString(mac.Sum(nil))
	}
	body := amBody()
	basic := func(u, p string) string { return "Basic " + base64.StdEncoding.EncodeToString([]byte(u+":"+p)) }
	ts := strconv.FormatInt(now.Unix(), 10)
	cases := []struct {
		name   string
		auth   WebhookAuth
		mutate func(*http.Request)
		code   int
	}{
		{"bearer ok", WebhookAuth{BearerToken: testToken}, func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+testToken) }, 202},
		{"bearer scheme case", WebhookAuth{BearerToken: testToken}, func(r *http.Request) { r.Header.Set("Authorization", "bearer "+testToken) }, 202},
		{"bearer wrong", WebhookAuth{BearerToken: testToken}, func(r *http.Request) { r.Header.Set("Authorization", "Bearer nope") }, 401},
		{"bearer missing", WebhookAuth{BearerToken: testToken}, nil, 401},
		{"basic ok", WebhookAuth{BasicUser: "am", BasicPassword: "pw"}, func(r *http.Request) { r.Header.Set("Authorization", basic("am", "pw")) }, 202},
		{"basic wrong password", WebhookAuth{BasicUser: "am", BasicPassword: "pw"}, func(r *http.Request) { r.Header.Set("Authorization", basic("am", "px")) }, 401},
		{"basic or bearer: basic", WebhookAuth{BearerToken: testToken, BasicUser: "am", BasicPassword: "pw"}, func(r *http.Request) { r.Header.Set("Authorization", basic("am", "pw")) }, 202},
		{"hmac ok", WebhookAuth{HMACSecret: hmacSecret, HMACHeader: "X-Grafana-Alerting-Signature"}, func(r *http.Request) { r.Header.Set("X-Grafana-Alerting-Signature", sign("", body)) }, 202},
		{"hmac wrong", WebhookAuth{HMACSecret: hmacSecret, HMACHeader: "X-Grafana-Alerting-Signature"}, func(r *http.Request) { r.Header.Set("X-Grafana-Alerting-Signature", sign("", body+" ")) }, 401},
		{"hmac missing", WebhookAuth{HMACSecret: hmacSecret, HMACHeader: "X-Grafana-Alerting-Signature"}, nil, 401},
		{"hmac timestamp ok", WebhookAuth{HMACSecret: hmacSecret, HMACHeader: "X-Sig", TimestampHeader: "X-Ts", MaxSkew: time.Minute, Now: func() time.Time { return now.Add(30 * time.Second) }},
			func(r *http.Request) { r.Header.Set("X-Ts", ts); r.Header.Set("X-Sig", sign(ts+":", body)) }, 202},
		{"hmac timestamp too old", WebhookAuth{HMACSecret: hmacSecret, HMACHeader: "X-Sig", TimestampHeader: "X-Ts", MaxSkew: time.Minute, Now: func() time.Time { return now.Add(2 * time.Minute) }},
			func(r *http.Request) { r.Header.Set("X-Ts", ts); r.Header.Set("X-Sig", sign(ts+":", body)) }, 401},
		{"hmac timestamp not signed", WebhookAuth{HMACSecret: hmacSecret, HMACHeader: "X-Sig", TimestampHeader: "X-Ts", MaxSkew: time.Minute, Now: func() time.Time { return now }},
			func(r *http.Request) { r.Header.Set("X-Ts", ts); r.Header.Set("X-Sig", sign("", body)) }, 401},
		{"cidr ok", WebhookAuth{AllowCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}, nil, 202},
		{"cidr refused despite forwarded header", WebhookAuth{AllowCIDRs: []netip.Prefix{netip.MustParsePrefix("192.168.0.0/16")}},
			func(r *http.Request) { r.Header.Set("X-Forwarded-For", "192.168.1.1") }, 401},
		{"cidr is a gate, then a credential is required", WebhookAuth{BearerToken: testToken, AllowCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}, nil, 401},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			auth := tc.auth
			b := setup(t, &auth)
			code, out := b.do(t, alert.FormatAlertmanager, body, tc.mutate)
			if code != tc.code {
				t.Fatalf("code = %d, want %d (%v)", code, tc.code, out)
			}
			if code == 401 && out["error"] != "unauthorized" {
				t.Fatalf("401 answer = %v", out)
			}
			for _, e := range b.logs.All() {
				line, _ := json.Marshal(e.ContextMap())
				if strings.Contains(e.Message+string(line), testToken) || strings.Contains(string(line), hmacSecret) {
					t.Fatalf("log line leaks a secret: %s %s", e.Message, line)
				}
			}
		})
	}
}

// TestWebhookAuthAnyCredential: the allow-list is a gate, then any one
// configured credential is enough (Alertmanager and Grafana share an
// endpoint, and only Grafana signs).
func TestWebhookAuthAnyCredential(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_800_000_000, 0)
	const secret = "grafana-hmac-secret"
	body := amBody()
	ts := strconv.FormatInt(now.Unix(), 10)
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(ts + ":" + body))
	sig := hex.EncodeToString(mac.Sum(nil))
	both := WebhookAuth{BearerToken: testToken, HMACSecret: secret, HMACHeader: "X-Sig", TimestampHeader: "X-Ts", MaxSkew: time.Minute,
		Now: func() time.Time { return now.Add(10 * time.Second) }}
	gated := both
	gated.AllowCIDRs = []netip.Prefix{netip.MustParsePrefix("192.168.0.0/16")}
	stale := both
	stale.Now = func() time.Time { return now.Add(time.Hour) }
	bearer := func(tok string) func(*http.Request) {
		return func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+tok) }
	}
	signed := func(r *http.Request) { r.Header.Set("X-Ts", ts); r.Header.Set("X-Sig", sig) }
	cases := []struct {
		name   string
		auth   WebhookAuth
		mutate func(*http.Request)
		code   int
		logErr string // the "webhook refused" error field
	}{
		{"bearer only", both, bearer(testToken), 202, ""},
		{"hmac only", both, signed, 202, ""},
		{"wrong bearer and valid hmac", both, func(r *http.Request) { bearer("nope")(r); signed(r) }, 202, ""},
		{"neither", both, nil, 401, "no valid credential: bearer: missing Authorization header; hmac: missing signature header"},
		{"wrong bearer, no signature", both, bearer("nope"), 401, "no valid credential: bearer: token does not match; hmac: missing signature header"},
		{"stale timestamp alone", stale, signed, 401, "no valid credential: bearer: missing Authorization header; hmac: timestamp outside webhooks.hmac.max_skew"},
		{"valid bearer outside allow_cidrs", gated, bearer(testToken), 401, "peer address not in webhooks.allow_cidrs"},
		{"valid hmac outside allow_cidrs", gated, signed, 401, "peer address not in webhooks.allow_cidrs"},
		{"basic or hmac: basic wrong", WebhookAuth{BasicUser: "am", BasicPassword: "pw", HMACSecret: secret, HMACHeader: "X-Sig"},
			func(r *http.Request) { r.SetBasicAuth("am", "px") }, 401, "no valid credential: basic: credentials do not match; hmac: missing signature header"},
		{"bearer, basic and hmac: basic", WebhookAuth{BearerToken: testToken, BasicUser: "am", BasicPassword: "pw", HMACSecret: secret, HMACHeader: "X-Sig"},
			func(r *http.Request) { r.SetBasicAuth("am", "pw") }, 202, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			auth := tc.auth
			b := setup(t, &auth)
			code, out := b.do(t, alert.FormatAlertmanager, body, tc.mutate)
			if code != tc.code {
				t.Fatalf("code = %d, want %d (%v)", code, tc.code, out)
			}
			if got := testutil.ToFloat64(b.m.WebhookRequests.WithLabelValues("alertmanager", strconv.Itoa(tc.code))); got != 1 {
				t.Fatalf("webhook_requests_total{code=%d} = %v", tc.code, got)
			}
			if code != http.StatusUnauthorized {
				return
			}
			if len(out) != 1 || out["error"] != "unauthorized" {
				t.Fatalf("401 answer = %v", out)
			}
			line := b.warnLine(t, "webhook refused")
			if line["error"] != tc.logErr || line["peer"] != "10.1.2.3:40000" || line["status"] != int64(401) {
				t.Fatalf("log line = %v, want error %q", line, tc.logErr)
			}
		})
	}
}

func TestNewWebhookAuthFromConfig(t *testing.T) {
	t.Parallel()
	c := DefaultSettings()
	c.Webhooks.AllowCIDRs = []string{"10.0.0.0/8", "192.0.2.7"}
	a, err := NewWebhookAuth(c)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.AllowCIDRs) != 2 || a.AllowCIDRs[1].Bits() != 32 {
		t.Fatalf("prefixes = %v", a.AllowCIDRs)
	}
}

// TestInvalidAlertCountedUnderItsSource: an invalid alert is counted under
// the source the decoder recognised (a Graph alert on /webhooks/defender is
// "graph"), not the endpoint's default.
func TestInvalidAlertCountedUnderItsSource(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	body := `{"value":[{"@odata.type":"#microsoft.graph.security.alert","id":"da1","providerAlertId":"da1","severity":"high",
"evidence":[{"@odata.type":"#microsoft.graph.security.deviceEvidence","mdeDeviceId":"` + machineA + `"},
{"@odata.type":"#microsoft.graph.security.deviceEvidence","mdeDeviceId":"not-a-machine-id"}]}]}`
	code, out := b.do(t, alert.FormatDefender, body, nil)
	if code != http.StatusAccepted || out["invalid"] != 1.0 || out["accepted"] != 1.0 {
		t.Fatalf("code %d, answer %v", code, out)
	}
	if got := testutil.ToFloat64(b.m.AlertsReceived.WithLabelValues("graph", "invalid")); got != 1 {
		t.Fatalf(`alerts_received_total{source="graph",outcome="invalid"} = %v, want 1`, got)
	}
	if got := testutil.ToFloat64(b.m.AlertsReceived.WithLabelValues("defender", "invalid")); got != 0 {
		t.Fatalf(`alerts_received_total{source="defender",outcome="invalid"} = %v, want 0`, got)
	}
}

// TestInvalidUTF8Ids: an id that is not valid UTF-8 makes its alert
// invalid, named by its field; a body of only such alerts is a 400, and two
// raw ids that would decode alike are not taken for duplicates.
func TestInvalidUTF8Ids(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	one := func(id string) string {
		return `{"id":"` + id + `","machineId":"` + machineA + `","severity":"High"}`
	}
	code, out := b.do(t, alert.FormatDefender, "["+one("da1\xff")+"]", nil)
	if code != http.StatusBadRequest || !strings.Contains(out["error"].(string), "[0].id: alert id is not valid UTF-8") {
		t.Fatalf("all invalid: %d %v", code, out)
	}
	code, out = b.do(t, alert.FormatDefender, "["+one("da1\xfe")+","+one("da2")+","+one(`da1\udc00`)+"]", nil)
	if code != http.StatusAccepted || out["accepted"] != 1.0 || out["invalid"] != 2.0 || out["duplicates"] != 0.0 {
		t.Fatalf("mixed: %d %v", code, out)
	}
	if p := out["problems"].([]any); len(p) != 2 || !strings.HasPrefix(p[0].(string), "[0].id: ") || !strings.HasPrefix(p[1].(string), "[2].id: ") {
		t.Fatalf("problems %v", p)
	}
	am := `{"version":"4","alerts":[{"status":"firing","labels":{"alert_id":"a1","hostname":"web-` + "\xff" + `.corp"}}]}`
	code, out = b.do(t, alert.FormatAlertmanager, am, nil)
	if code != http.StatusBadRequest || !strings.Contains(out["error"].(string), "alerts[0].labels.hostname: machine name is not valid UTF-8") {
		t.Fatalf("alertmanager: %d %v", code, out)
	}
	if got := testutil.ToFloat64(b.m.AlertsReceived.WithLabelValues("defender", "invalid")); got != 3 {
		t.Fatalf(`alerts_received_total{source="defender",outcome="invalid"} = %v, want 3`, got)
	}
}

// TestReadBody: the body is read whole whether its length is declared or
// not, and one byte past the limit is read to tell that it is too large.
func TestReadBody(t *testing.T) {
	t.Parallel()
	const limit = 1024
	for name, tc := range map[string]struct {
		size     int
		declared bool
		wantLen  int
	}{
		"declared, small":          {size: 10, declared: true, wantLen: 10},
		"declared, at the limit":   {size: limit, declared: true, wantLen: limit},
		"chunked, at the limit":    {size: limit, wantLen: limit},
		"chunked, past the limit":  {size: 5 * limit, wantLen: limit + 1},
		"declared, empty":          {size: 0, declared: true, wantLen: 0},
		"declared, past the limit": {size: limit + 1, declared: true, wantLen: limit + 1},
	} {
		t.Run(name, func(t *testing.T) {
			body := bytes.Repeat([]byte("a"), tc.size)
			r := httptest.NewRequest(http.MethodPost, "/webhooks/defender", io.MultiReader(bytes.NewReader(body)))
			r.ContentLength = -1
			if tc.declared {
				r.ContentLength = int64(tc.size)
			}
			got, err := readBody(r, limit)
			if err != nil {
				t.Fatal(err)
			}
			if tc.declared && tc.size > 0 {
				// Declared one byte longer than it is: the body was cut.
				r := httptest.NewRequest(http.MethodPost, "/webhooks/defender", io.MultiReader(bytes.NewReader(body)))
				r.ContentLength = int64(tc.size) + 1
				if got, err := readBody(r, 8*limit); err == nil {
					t.Fatalf("a body shorter than its declared length read as %d bytes, without an error", len(got))
				}
			}
			if len(got) != tc.wantLen || !bytes.Equal(got, body[:tc.wantLen]) {
				t.Fatalf("read %d bytes, want the first %d of the body", len(got), tc.wantLen)
			}
		})
	}
}
