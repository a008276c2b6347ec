package defender

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap/zapcore"

	"github.com/responder-dev/responder/alert"
)

func TestEndpoints(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		cloud, api, login, scope string
	}{
		{"", "https://api.securitycenter.microsoft.com", "https://login.microsoftonline.com", "https://api.securitycenter.microsoft.com/.default"},
		{"commercial", "https://api.securitycenter.microsoft.com", "https://login.microsoftonline.com", "https://api.securitycenter.microsoft.com/.default"},
		{"gcc", "https://api-gcc.securitycenter.microsoft.us", "https://login.microsoftonline.com", "https://api-gcc.securitycenter.microsoft.us/.default"},
		{"gcc-high", "https://api-gov.securitycenter.microsoft.us", "https://login.microsoftonline.us", "https://api-gov.securitycenter.microsoft.us/.default"},
		{"dod", "https://api-gov.securitycenter.microsoft.us", "https://login.microsoftonline.us", "https://api-gov.securitycenter.microsoft.us/.default"},
	} {
		api, login, scope, err := Endpoints(tc.cloud)
		if err != nil || api != tc.api || login != tc.login || scope != tc.scope {
			t.Errorf("Endpoints(%q) = %q, %q, %q, %v; want %q, %q, %q", tc.cloud, api, login, scope, err, tc.api, tc.login, tc.scope)
		}
	}
	if _, _, _, err := Endpoints("china"); err == nil {
		t.Error("Endpoints(china): want an error")
	}
}

// TestCloudHostsAndScope checks each cloud's default hosts, and the scope
// sent in the token request while the URLs point at a test server.
func TestCloudHostsAndScope(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		cloud, apiURL, tokenURL, scope string
	}{
		{"commercial", "https://api.securitycenter.microsoft.com", "https://login.microsoftonline.com/" + testTenant + "/oauth2/v2.0/token", "https://api.securitycenter.microsoft.com/.default"},
		{"gcc", "https://api-gcc.securitycenter.microsoft.us", "https://login.microsoftonline.com/" + testTenant + "/oauth2/v2.0/token", "https://api-gcc.securitycenter.microsoft.us/.default"},
		{"gcc-high", "https://api-gov.securitycenter.microsoft.us", "https://login.microsoftonline.us/" + testTenant + "/oauth2/v2.0/token", "https://api-gov.securitycenter.microsoft.us/.default"},
		{"dod", "https://api-gov.securitycenter.microsoft.us", "https://login.microsoftonline.us/" + testTenant + "/oauth2/v2.0/token", "https://api-gov.securitycenter.microsoft.us/.default"},
	} {
		t.Run(tc.cloud, func(t *testing.T) {
			t.Parallel()
			// Default hosts, no override.
			c, err := New(Config{Cloud: tc.cloud, TenantID: testTenant, ClientID: testClientID, ClientSecret: testSecret}, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			if c.APIURL() != tc.apiURL || c.TokenURL() != tc.tokenURL || c.Scope() != tc.scope {
				t.Errorf("hosts = %s, %s, %s; want %s, %s, %s", c.APIURL(), c.TokenURL(), c.Scope(), tc.apiURL, tc.tokenURL, tc.scope)
			}
			// The scope reaches the token request.
			b := setup(t, func(w http.ResponseWriter, r *http.Request) {
				writeJSON(w, http.StatusOK, `{"value":[]}`)
			}, setupOpts{cfg: func(c *Config) { c.Cloud = tc.cloud }})
			if _, err := b.client.ListMachineActions(context.Background(), ActionFilter{}); err != nil {
				t.Fatal(err)
			}
			f := b.tokens.form(0)
			want := map[string]string{
				"grant_type": "client_credentials", "client_id": testClientID,
				"client_secret": testSecret, "scope": tc.scope,
			}
			for k, v := range want {
				if f.Get(k) != v {
					t.Errorf("token form %s = %q; want %q", k, f.Get(k), v)
				}
			}
			if b.tokens.agents[0] != testUA {
				t.Errorf("token request User-Agent = %q; want %q", b.tokens.agents[0], testUA)
			}
		})
	}
}

// TestRegionalHostKeepsScope: a regional API host does not change the audience.
func TestRegionalHostKeepsScope(t *testing.T) {
	t.Parallel()
	c, err := New(Config{APIURL: "https://eu.api.security.microsoft.com/", TenantID: testTenant, ClientID: testClientID, ClientSecret: testSecret}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.APIURL() != "https://eu.api.security.microsoft.com" || c.Scope() != "https://api.securitycenter.microsoft.com/.default" {
		t.Errorf("APIURL %q scope %q", c.APIURL(), c.Scope())
	}
}

// TestGraphEndpoints: each cloud's Graph host and scope; an override moves
// the calls, not the scope.
func TestGraphEndpoints(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ cloud, graph string }{
		{"", "https://graph.microsoft.com"},
		{"commercial", "https://graph.microsoft.com"},
		{"gcc", "https://graph.microsoft.com"},
		{"gcc-high", "https://graph.microsoft.us"},
		{"dod", "https://dod-graph.microsoft.us"},
	} {
		if got := DefaultGraphURL(tc.cloud); got != tc.graph {
			t.Errorf("DefaultGraphURL(%q) = %q; want %q", tc.cloud, got, tc.graph)
		}
		c, err := New(Config{Cloud: tc.cloud, WriteBack: true, TenantID: testTenant, ClientID: testClientID, ClientSecret: testSecret}, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if c.GraphURL() != tc.graph || c.GraphScope() != tc.graph+"/.default" {
			t.Errorf("%s: GraphURL %q GraphScope %q", tc.cloud, c.GraphURL(), c.GraphScope())
		}
		o, err := New(Config{Cloud: tc.cloud, GraphURL: "https://graph-proxy.example.com/", TenantID: testTenant, ClientID: testClientID, ClientSecret: testSecret}, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if o.GraphURL() != "https://graph-proxy.example.com" || o.GraphScope() != tc.graph+"/.default" {
			t.Errorf("%s override: GraphURL %q GraphScope %q", tc.cloud, o.GraphURL(), o.GraphScope())
		}
	}
	if DefaultGraphURL("china") != "" {
		t.Error("an unknown cloud has a Graph URL")
	}
}

// TestGraphErrorTarget: Graph's error shape gives its request-id as the
// target, the correlation id Microsoft support asks for.
func TestGraphErrorTarget(t *testing.T) {
	t.Parallel()
	code, msg, target := parseErrorBody([]byte(`{"error":{"code":"Forbidden","message":"Missing application roles.","innerError":{"date":"2026-03-02T09:00:00","request-id":"0b4e8d6c-1f2a-4b3c-9d8e-7f6a5b4c3d2e","client-request-id":"0b4e8d6c-1f2a-4b3c-9d8e-7f6a5b4c3d2e"}}}`))
	if code != "Forbidden" || msg != "Missing application roles." || target != "0b4e8d6c-1f2a-4b3c-9d8e-7f6a5b4c3d2e" {
		t.Errorf("parseErrorBody = %q, %q, %q", code, msg, target)
	}
	// MDE's target wins when both are there.
	if _, _, target := parseErrorBody([]byte(`{"error":{"code":"X","target":"t1","innerError":{"request-id":"r1"}}}`)); target != "t1" {
		t.Errorf("target = %q; want t1", target)
	}
}

func TestConfigValidation(t *testing.T) {
	t.Parallel()
	base := Config{TenantID: testTenant, ClientID: testClientID, ClientSecret: testSecret}
	for name, tc := range map[string]struct {
		mod  func(*Config)
		want string
	}{
		"no credential":    {func(c *Config) { c.ClientSecret = "" }, "a credential is required"},
		"two credentials":  {func(c *Config) { c.CertificatePEM = []byte("x") }, "set only one credential"},
		"no client id":     {func(c *Config) { c.ClientID = "" }, "client_id is required"},
		"no tenant":        {func(c *Config) { c.TenantID = "" }, "tenant_id is required"},
		"bad tenant":       {func(c *Config) { c.TenantID = "a/../b" }, "tenant_id"},
		"bad cloud":        {func(c *Config) { c.Cloud = "azure-china" }, "unknown defender cloud"},
		"http api":         {func(c *Config) { c.APIURL = "http://api.example.com" }, "http is allowed only to a loopback host"},
		"bad alg":          {func(c *Config) { c.CertificateAlg = "ES256" }, "certificate algorithm"},
		"negative rate":    {func(c *Config) { c.RateLimit.PerMinute = -1 }, "rate_limit"},
		"missing fed file": {func(c *Config) { c.ClientSecret = ""; c.FederatedTokenFile = "/nonexistent/token" }, "federated_token_file"},
		"bad pem":          {func(c *Config) { c.ClientSecret = ""; c.CertificatePEM = []byte("junk") }, "no PEM data"},
	} {
		cfg := base
		tc.mod(&cfg)
		_, err := New(cfg, nil, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v; want it to contain %q", name, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), testSecret) {
			t.Errorf("%s: error names the secret", name)
		}
	}
}

func TestMetricsInitialised(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	// 15 operations, each with its success code and 8 common codes.
	if n := testutil.CollectAndCount(b.m.DefenderRequests); n != 15*9 {
		t.Errorf("defender request series = %d; want %d", n, 15*9)
	}
	if n := testutil.CollectAndCount(b.m.DefenderDuration); n != 15 {
		t.Errorf("defender duration series = %d; want 15", n)
	}
	for _, op := range []string{"update_alert", "alert_comment"} {
		if !slices.Contains(Operations(), op) {
			t.Errorf("Operations() = %v; want it to hold %s", Operations(), op)
		}
	}
	if got := testutil.ToFloat64(b.m.DefenderRequests.WithLabelValues("collect_investigation_package", "201")); got != 0 {
		t.Errorf("initial count = %v", got)
	}
}

// TestCollect replays a real 201 answer with OData headers and checks the
// request byte for byte.
func TestCollect(t *testing.T) {
	t.Parallel()
	var b *bundle
	b = setup(t, func(w http.ResponseWriter, r *http.Request) {
		b.record(r)
		writeJSON(w, http.StatusCreated, actionJSON(testAction, "Pending"))
	})
	a, err := b.client.CollectInvestigationPackage(context.Background(), testMachine, "Collect forensics due to alert "+testAlertID)
	if err != nil {
		t.Fatal(err)
	}
	calls := b.apiCalls()
	if len(calls) != 1 {
		t.Fatalf("calls = %d", len(calls))
	}
	c := calls[0]
	if c.Method != http.MethodPost || c.Path != "/api/machines/"+testMachine+"/collectInvestigationPackage" {
		t.Errorf("request %s %s", c.Method, c.Path)
	}
	if want := `{"Comment":"Collect forensics due to alert da637472900382838869_1364969609"}`; c.Body != want {
		t.Errorf("body %s; want %s", c.Body, want)
	}
	for k, v := range map[string]string{
		"User-Agent": testUA, "Accept": "application/json", "Content-Type": "application/json",
		"Authorization": "Bearer access-token-1",
	} {
		if got := c.Header.Get(k); got != v {
			t.Errorf("header %s = %q; want %q", k, got, v)
		}
	}
	want := MachineAction{
		ID: testAction, Type: TypeCollectInvestigationPackage, Status: StatusPending, MachineID: testMachine,
		ComputerDNSName: "desktop-test.contoso.com", Requestor: "Customer App",
		RequestorComment: "Collect forensics due to alert " + testAlertID, RequestSource: "PublicApi",
		CreationTime:   time.Date(2026, 3, 2, 9, 0, 1, 340647300, time.UTC),
		LastUpdateTime: time.Date(2026, 3, 2, 9, 0, 1, 340647300, time.UTC),
	}
	if a != want {
		t.Errorf("action\n got %+v\nwant %+v", a, want)
	}
	if a.Terminal() {
		t.Error("Pending is not terminal")
	}
	if got := testutil.ToFloat64(b.m.DefenderRequests.WithLabelValues(opCollect, "201")); got != 1 {
		t.Errorf("requests{collect,201} = %v", got)
	}
	if got := testutil.ToFloat64(b.m.DefenderRequests.WithLabelValues(opToken, "200")); got != 1 {
		t.Errorf("requests{token,200} = %v", got)
	}
	// The token is cached: a second call fetches none.
	if _, err := b.client.CollectInvestigationPackage(context.Background(), testMachine, "again"); err != nil {
		t.Fatal(err)
	}
	if n := b.tokens.count(); n != 1 {
		t.Errorf("token requests = %d; want 1", n)
	}
}

func TestActionBodies(t *testing.T) {
	t.Parallel()
	var b *bundle
	b = setup(t, func(w http.ResponseWriter, r *http.Request) {
		b.record(r)
		writeJSON(w, http.StatusCreated, actionJSON(testAction, "Pending"))
	})
	ctx := context.Background()
	steps := []struct {
		call       func() (MachineAction, error)
		path, body string
	}{
		{func() (MachineAction, error) { return b.client.Isolate(ctx, testMachine, "iso", IsolationSelective) }, "isolate", `{"Comment":"iso","IsolationType":"Selective"}`},
		{func() (MachineAction, error) { return b.client.Isolate(ctx, testMachine, "iso", "") }, "isolate", `{"Comment":"iso"}`},
		{func() (MachineAction, error) { return b.client.Unisolate(ctx, testMachine, "free") }, "unisolate", `{"Comment":"free"}`},
		{func() (MachineAction, error) { return b.client.RunAntivirusScan(ctx, testMachine, "scan", ScanQuick) }, "runAntiVirusScan", `{"Comment":"scan","ScanType":"Quick"}`},
		{func() (MachineAction, error) { return b.client.RestrictCodeExecution(ctx, testMachine, "r <&> 'q'") }, "restrictCodeExecution", `{"Comment":"r <&> 'q'"}`},
		{func() (MachineAction, error) { return b.client.UnrestrictCodeExecution(ctx, testMachine, "u") }, "unrestrictCodeExecution", `{"Comment":"u"}`},
	}
	for i, s := range steps {
		if _, err := s.call(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		c := b.apiCalls()[i]
		if c.Path != "/api/machines/"+testMachine+"/"+s.path || c.Body != s.body {
			t.Errorf("step %d: %s %s; want %s %s", i, c.Path, c.Body, s.path, s.body)
		}
	}
	// Bad arguments never reach the server.
	if _, err := b.client.Isolate(ctx, testMachine, "x", "full"); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("isolation type full: %v", err)
	}
	if _, err := b.client.RunAntivirusScan(ctx, testMachine, "x", ""); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("empty scan type: %v", err)
	}
	if _, err := b.client.CollectInvestigationPackage(ctx, testMachine, " "); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("empty comment: %v", err)
	}
	if n := len(b.apiCalls()); n != len(steps) {
		t.Errorf("calls = %d; want %d", n, len(steps))
	}
}

// TestOutcomeMapping replays MDE's error answers to an action POST.
func TestOutcomeMapping(t *testing.T) {
	t.Parallel()
	httpDate := time.Date(2026, 3, 2, 9, 2, 0, 0, time.UTC).Format(http.TimeFormat) // fake now + 120 s
	for _, tc := range []struct {
		name       string
		answer     func(w http.ResponseWriter)
		outcome    Outcome
		status     int
		code       string
		retryAfter time.Duration
		metric     string
	}{
		{"active request", func(w http.ResponseWriter) {
			writeError(w, 400, "ActiveRequestAlreadyExists", "Action is already in progress")
		}, OutcomeAlreadyRunning, 400, "ActiveRequestAlreadyExists", 0, "400"},
		{"already in progress without code", func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(400)
			_, _ = w.Write([]byte(`{"error":{"message":"Action is already in progress","target":"43f4cb08-8fac-4b65-9db1-745c2ae65f3a"}}`))
		}, OutcomeAlreadyRunning, 400, "", 0, "400"},
		{"already in progress plain text", func(w http.ResponseWriter) {
			w.WriteHeader(400)
			_, _ = w.Write([]byte(`Action is ALREADY IN PROGRESS`))
		}, OutcomeAlreadyRunning, 400, "", 0, "400"},
		{"invalid body", func(w http.ResponseWriter) {
			writeError(w, 400, "InvalidRequestBody", "Request body is incorrect")
		}, OutcomePermanent, 400, "InvalidRequestBody", 0, "400"},
		{"forbidden", func(w http.ResponseWriter) {
			writeError(w, 403, "Forbidden", "The application does not have any of the required application permissions (Machine.CollectForensics)")
		}, OutcomeForbidden, 403, "Forbidden", 0, "403"},
		{"not found", func(w http.ResponseWriter) {
			writeError(w, 404, "ResourceNotFound", "Machine "+testMachine+" was not found")
		}, OutcomeMachineNotFound, 404, "ResourceNotFound", 0, "404"},
		{"429 seconds", func(w http.ResponseWriter) {
			w.Header().Set("Retry-After", "17")
			writeError(w, 429, "TooManyRequests", "API calls quota exceeded! Maximum allowed 100 per 00:01:00")
		}, OutcomeRateLimited, 429, "TooManyRequests", 17 * time.Second, "429"},
		{"429 http date", func(w http.ResponseWriter) {
			w.Header().Set("Retry-After", httpDate)
			writeError(w, 429, "TooManyRequests", "quota")
		}, OutcomeRateLimited, 429, "TooManyRequests", 120 * time.Second, "429"},
		{"429 no header", func(w http.ResponseWriter) {
			writeError(w, 429, "TooManyRequests", "quota")
		}, OutcomeRateLimited, 429, "TooManyRequests", 60 * time.Second, "429"},
		{"500", func(w http.ResponseWriter) {
			writeError(w, 500, "InternalServerError", "Internal error")
		}, OutcomeRetryable, 500, "InternalServerError", 0, "500"},
		{"503 html", func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(503)
			_, _ = w.Write([]byte("<html><body>Service Unavailable</body></html>"))
		}, OutcomeRetryable, 503, "", 0, "503"},
		{"201 unreadable", func(w http.ResponseWriter) {
			// Created, but the id is lost: look it up, never POST again.
			w.WriteHeader(201)
			_, _ = w.Write([]byte("<html>"))
		}, OutcomeAlreadyRunning, 201, "", 0, "201"},
		{"405", func(w http.ResponseWriter) {
			w.WriteHeader(405)
		}, OutcomePermanent, 405, "", 0, "405"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, func(w http.ResponseWriter, r *http.Request) { tc.answer(w) })
			_, err := b.client.CollectInvestigationPackage(context.Background(), testMachine, "c")
			e := asError(t, err)
			if e.Outcome != tc.outcome || e.StatusCode != tc.status || e.Code != tc.code || e.RetryAfter != tc.retryAfter {
				t.Errorf("got %s %d %q %s; want %s %d %q %s", e.Outcome, e.StatusCode, e.Code, e.RetryAfter, tc.outcome, tc.status, tc.code, tc.retryAfter)
			}
			if e.Op != opCollect {
				t.Errorf("op %q", e.Op)
			}
			if tc.code != "" && (e.Target != "43f4cb08-8fac-4b65-9db1-745c2ae65f3a" || !strings.Contains(e.Error(), e.Target)) {
				t.Errorf("target %q not in %q", e.Target, e.Error())
			}
			if got := testutil.ToFloat64(b.m.DefenderRequests.WithLabelValues(opCollect, tc.metric)); got != 1 {
				t.Errorf("requests{%s} = %v; want 1", tc.metric, got)
			}
			if OutcomeOf(err) != tc.outcome {
				t.Errorf("OutcomeOf = %s", OutcomeOf(err))
			}
		})
	}
}

func TestForbiddenLogsLoudly(t *testing.T) {
	t.Parallel()
	b := setup(t, func(w http.ResponseWriter, r *http.Request) { writeError(w, 403, "Forbidden", "no") })
	_, _ = b.client.CollectInvestigationPackage(context.Background(), testMachine, "c")
	entries := b.logs.FilterLevelExact(zapcore.ErrorLevel).All()
	if len(entries) != 1 {
		t.Fatalf("error logs = %d; want 1: %v", len(entries), logText(b.logs))
	}
	f := entries[0].ContextMap()
	if f["permission"] != "Machine.CollectForensics" || f["machine_id"] != testMachine || f["code"] != "Forbidden" || f["operation"] != opCollect {
		t.Errorf("fields %v", f)
	}
}

// TestForbiddenCommentLogsItsPermission: a refused write-back names the
// permission and the scope of its own resource.
func TestForbiddenCommentLogsItsPermission(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		ref               AlertRef
		permission, scope string
	}{
		{AlertRef{Source: alert.SourceDefender, ID: testAlertID}, "Alert.ReadWrite.All", "https://api.securitycenter.microsoft.com/.default"},
		{AlertRef{Source: alert.SourceGraph, ID: testAlertID}, "SecurityAlert.ReadWrite.All", "https://graph.microsoft.com/.default"},
	} {
		b := setup(t, func(w http.ResponseWriter, r *http.Request) { writeError(w, 403, "Forbidden", "no") },
			setupOpts{cfg: func(c *Config) { c.WriteBack, c.GraphURL = true, c.APIURL }})
		if err := b.client.CommentAlert(context.Background(), tc.ref, "c"); OutcomeOf(err) != OutcomeForbidden {
			t.Fatalf("%s: err = %v", tc.ref.Source, err)
		}
		entries := b.logs.FilterLevelExact(zapcore.ErrorLevel).All()
		if len(entries) != 1 {
			t.Fatalf("%s: error logs = %d; want 1: %v", tc.ref.Source, len(entries), logText(b.logs))
		}
		if f := entries[0].ContextMap(); f["permission"] != tc.permission || f["scope"] != tc.scope || f["alert_id"] != testAlertID {
			t.Errorf("%s: fields %v", tc.ref.Source, f)
		}
		if scope := b.tokens.form(0).Get("scope"); scope != tc.scope {
			t.Errorf("%s: token requested with scope %q", tc.ref.Source, scope)
		}
	}
}

// TestUnauthorizedRetriesOnce: a 401 invalidates the token and the request
// is sent once more with a new one; a second 401 is permanent.
func TestUnauthorizedRetriesOnce(t *testing.T) {
	t.Parallel()
	t.Run("twice", func(t *testing.T) {
		t.Parallel()
		var b *bundle
		b = setup(t, func(w http.ResponseWriter, r *http.Request) {
			b.record(r)
			writeError(w, 401, "Unauthorized", "Authorization has been denied for this request.")
		})
		_, err := b.client.CollectInvestigationPackage(context.Background(), testMachine, "c")
		e := asError(t, err)
		if e.Outcome != OutcomeUnauthorized || e.StatusCode != 401 {
			t.Errorf("got %s %d", e.Outcome, e.StatusCode)
		}
		calls := b.apiCalls()
		if len(calls) != 2 || b.tokens.count() != 2 {
			t.Fatalf("api calls %d, token requests %d; want 2 and 2", len(calls), b.tokens.count())
		}
		if calls[0].Header.Get("Authorization") == calls[1].Header.Get("Authorization") {
			t.Error("the retry used the refused token")
		}
	})
	t.Run("then ok", func(t *testing.T) {
		t.Parallel()
		var b *bundle
		b = setup(t, func(w http.ResponseWriter, r *http.Request) {
			if c := b.record(r); c.Header.Get("Authorization") == "Bearer access-token-1" {
				writeError(w, 401, "Unauthorized", "expired")
				return
			}
			writeJSON(w, http.StatusOK, actionJSON(testAction, "InProgress"))
		})
		a, err := b.client.GetMachineAction(context.Background(), testAction)
		if err != nil || a.Status != StatusInProgress {
			t.Fatalf("got %+v, %v", a, err)
		}
		if n := b.tokens.count(); n != 2 {
			t.Errorf("token requests = %d; want exactly 2", n)
		}
		if got := testutil.ToFloat64(b.m.DefenderRequests.WithLabelValues(opGetMachineAction, "401")); got != 1 {
			t.Errorf("requests{401} = %v", got)
		}
		// The new token is cached.
		if _, err := b.client.GetMachineAction(context.Background(), testAction); err != nil {
			t.Fatal(err)
		}
		if n := b.tokens.count(); n != 2 {
			t.Errorf("token requests = %d; want 2", n)
		}
	})
}

func TestDroppedConnection(t *testing.T) {
	t.Parallel()
	b := setup(t, func(w http.ResponseWriter, r *http.Request) {
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			_ = conn.Close()
		}
	})
	_, err := b.client.CollectInvestigationPackage(context.Background(), testMachine, "c")
	e := asError(t, err)
	if e.Outcome != OutcomeRetryable || e.StatusCode != 0 {
		t.Errorf("got %s %d: %v", e.Outcome, e.StatusCode, e)
	}
	if strings.Contains(e.Error(), b.srv.URL) {
		t.Errorf("error names the URL: %v", e)
	}
	if got := testutil.ToFloat64(b.m.DefenderRequests.WithLabelValues(opCollect, "error")); got != 1 {
		t.Errorf("requests{error} = %v", got)
	}
}

func TestHungServerTimesOut(t *testing.T) {
	t.Parallel()
	b := setup(t, func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
	}, setupOpts{cfg: func(c *Config) { c.Timeout = 50 * time.Millisecond }})
	_, err := b.client.GetMachine(context.Background(), testMachine)
	e := asError(t, err)
	if e.Outcome != OutcomeRetryable || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("got %s: %v", e.Outcome, err)
	}
}

func TestCanceledContext(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := b.client.GetMachine(ctx, testMachine)
	if !errors.Is(err, context.Canceled) || OutcomeOf(err) != OutcomeRetryable {
		t.Errorf("got %v (%s)", err, OutcomeOf(err))
	}
}

func TestLastUpdateFieldNames(t *testing.T) {
	t.Parallel()
	want := time.Date(2026, 3, 2, 9, 5, 7, 123456700, time.UTC)
	for name, body := range map[string]string{
		"entity": `{"id":"` + testAction + `","type":"CollectInvestigationPackage","status":"Succeeded","machineId":"` + testMachine +
			`","creationDateTimeUtc":"2026-03-02T09:00:01.3406473Z","lastUpdateDateTimeUtc":"2026-03-02T09:05:07.1234567Z"}`,
		"list example": `{"id":"` + testAction + `","type":"CollectInvestigationPackage","status":"Succeeded","machineId":"` + testMachine +
			`","creationDateTimeUtc":"2026-03-02T09:00:01.3406473Z","lastUpdateTimeUtc":"2026-03-02T09:05:07.1234567Z"}`,
		"no zone": `{"id":"` + testAction + `","type":"CollectInvestigationPackage","status":"Succeeded","machineId":"` + testMachine +
			`","creationDateTimeUtc":"2026-03-02T09:00:01.3406473","lastUpdateTimeUtc":"2026-03-02T09:05:07.1234567"}`,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, body) })
			a, err := b.client.GetMachineAction(context.Background(), testAction)
			if err != nil {
				t.Fatal(err)
			}
			if !a.LastUpdateTime.Equal(want) || !a.Terminal() {
				t.Errorf("lastUpdate %v terminal %v", a.LastUpdateTime, a.Terminal())
			}
		})
	}
}

func TestTerminal(t *testing.T) {
	t.Parallel()
	for s, want := range map[string]bool{
		"Succeeded": true, "Failed": true, "TimeOut": true, "Cancelled": true,
		"Canceled": false, "Pending": false, "InProgress": false, "": false,
	} {
		if got := (MachineAction{Status: s}).Terminal(); got != want {
			t.Errorf("Terminal(%q) = %v", s, got)
		}
	}
}

func TestGetMachineActionNotFound(t *testing.T) {
	t.Parallel()
	b := setup(t, func(w http.ResponseWriter, r *http.Request) {
		writeError(w, 404, "NotFound", "MachineAction was not found")
	})
	_, err := b.client.GetMachineAction(context.Background(), testAction)
	if e := asError(t, err); e.Outcome != OutcomePermanent || e.StatusCode != 404 {
		t.Errorf("got %s %d", e.Outcome, e.StatusCode)
	}
}

func TestListMachineActions(t *testing.T) {
	t.Parallel()
	var b *bundle
	b = setup(t, func(w http.ResponseWriter, r *http.Request) {
		c := b.record(r)
		if strings.Contains(c.RawQuery, "skip=1") {
			writeJSON(w, 200, `{"@odata.context":"x","value":[`+actionJSON("b0000000-0000-0000-0000-000000000002", "Succeeded")+`]}`)
			return
		}
		writeJSON(w, 200, `{"@odata.context":"x","value":[`+actionJSON("a0000000-0000-0000-0000-000000000001", "Pending")+
			`],"@odata.nextLink":"`+b.srv.URL+`/api/machineactions?$filter=x&$skip=1"}`)
	})
	got, err := b.client.ListMachineActions(context.Background(), ActionFilter{
		MachineID: testMachine, Type: TypeCollectInvestigationPackage, Statuses: []string{StatusPending, "In'Progress"}, Top: 50,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[1].ID != "b0000000-0000-0000-0000-000000000002" {
		t.Fatalf("got %+v", got)
	}
	first := b.apiCalls()[0]
	wantQuery := "$filter=machineId%20eq%20%27" + testMachine + "%27%20and%20type%20eq%20%27CollectInvestigationPackage%27" +
		"%20and%20%28status%20eq%20%27Pending%27%20or%20status%20eq%20%27In%27%27Progress%27%29&$top=50"
	if first.Path != "/api/machineactions" || first.RawQuery != wantQuery {
		t.Errorf("query\n got %s\nwant %s", first.RawQuery, wantQuery)
	}
}

func TestNextLinkToAnotherHostRefused(t *testing.T) {
	t.Parallel()
	b := setup(t, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, `{"value":[],"@odata.nextLink":"https://evil.example.com/api/machineactions?$skip=1"}`)
	})
	_, err := b.client.ListMachineActions(context.Background(), ActionFilter{})
	if e := asError(t, err); e.Outcome != OutcomePermanent || !strings.Contains(e.Message, "another host") {
		t.Errorf("got %v", err)
	}
}

func TestPendingAction(t *testing.T) {
	t.Parallel()
	older := strings.Replace(actionJSON("a0000000-0000-0000-0000-000000000001", "InProgress"), "2026-03-02T09:00:01", "2026-03-01T09:00:01", 1)
	newer := actionJSON("b0000000-0000-0000-0000-000000000002", "Pending")
	done := strings.Replace(actionJSON("c0000000-0000-0000-0000-000000000003", "Succeeded"), "2026-03-02T09:00:01", "2026-03-03T09:00:01", 1)
	var b *bundle
	b = setup(t, func(w http.ResponseWriter, r *http.Request) {
		b.record(r)
		writeJSON(w, 200, `{"value":[`+older+`,`+done+`,`+newer+`]}`)
	})
	a, ok, err := b.client.PendingAction(context.Background(), testMachine, TypeCollectInvestigationPackage)
	if err != nil || !ok || a.ID != "b0000000-0000-0000-0000-000000000002" {
		t.Fatalf("got %+v %v %v", a, ok, err)
	}
	want := "$filter=machineId%20eq%20%27" + testMachine + "%27%20and%20type%20eq%20%27CollectInvestigationPackage%27"
	if q := b.apiCalls()[0].RawQuery; q != want {
		t.Errorf("query %s", q)
	}

	b2 := setup(t, func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, `{"value":[`+done+`]}`) })
	if _, ok, err := b2.client.PendingAction(context.Background(), testMachine, TypeCollectInvestigationPackage); ok || err != nil {
		t.Errorf("no pending action: got %v %v", ok, err)
	}
}

func TestGetMachine(t *testing.T) {
	t.Parallel()
	var b *bundle
	b = setup(t, func(w http.ResponseWriter, r *http.Request) {
		b.record(r)
		writeJSON(w, 200, `{"@odata.context":"https://api.securitycenter.microsoft.com/api/$metadata#Machines/$entity",`+
			`"id":"`+testMachine+`","computerDnsName":"mymachine1.contoso.com","firstSeen":"2018-08-02T14:55:03.7791856Z",`+
			`"lastSeen":"2026-03-01T11:12:13.1234567Z","osPlatform":"Windows11","version":"22H2","osProcessor":"x64",`+
			`"lastIpAddress":"172.17.230.209","lastExternalIpAddress":"167.220.196.71","osBuild":22621,"healthStatus":"Active",`+
			`"rbacGroupId":0,"rbacGroupName":null,"riskScore":"Low","exposureLevel":"Medium","isAadJoined":true,`+
			`"aadDeviceId":"80fe8ff8-2624-418e-9591-41f0491218f9","machineTags":["test tag 1","workstation"],`+
			`"deviceValue":"Normal","onboardingStatus":"Onboarded","defenderAvStatus":"Updated","ipAddresses":[]}`)
	})
	m, err := b.client.GetMachine(context.Background(), testMachine)
	if err != nil {
		t.Fatal(err)
	}
	if m.ID != testMachine || m.ComputerDNSName != "mymachine1.contoso.com" || m.HealthStatus != "Active" ||
		m.RiskScore != "Low" || m.ExposureLevel != "Medium" || m.DeviceValue != "Normal" || m.OnboardingStatus != "Onboarded" ||
		m.OSPlatform != "Windows11" || len(m.MachineTags) != 2 || m.RBACGroupID != "0" ||
		!m.LastSeen.Equal(time.Date(2026, 3, 1, 11, 12, 13, 123456700, time.UTC)) {
		t.Errorf("machine %+v", m)
	}
	if am := m.Alert(); am.Name != m.ComputerDNSName || am.Tags[1] != "workstation" || am.ID != testMachine {
		t.Errorf("alert machine %+v", am)
	}
	if p := b.apiCalls()[0].Path; p != "/api/machines/"+testMachine {
		t.Errorf("path %s", p)
	}

	nf := setup(t, func(w http.ResponseWriter, r *http.Request) {
		writeError(w, 404, "ResourceNotFound", "Machine was not found")
	})
	_, err = nf.client.GetMachine(context.Background(), testMachine)
	if e := asError(t, err); e.Outcome != OutcomeMachineNotFound {
		t.Errorf("got %s", e.Outcome)
	}
}

func TestFindMachineByName(t *testing.T) {
	t.Parallel()
	machine := func(id, health, lastSeen string) string {
		return `{"id":"` + id + `","computerDnsName":"pc-o'brien.contoso.com","healthStatus":"` + health + `","lastSeen":"` + lastSeen + `"}`
	}
	idOld := strings.Repeat("a", 40)
	idActive := strings.Repeat("b", 40)
	idNewestInactive := strings.Repeat("c", 40)
	var b *bundle
	b = setup(t, func(w http.ResponseWriter, r *http.Request) {
		b.record(r)
		writeJSON(w, 200, `{"value":[`+machine(idOld, "Active", "2026-01-01T00:00:00.0000000Z")+`,`+
			machine(idActive, "Active", "2026-02-01T00:00:00.1234567Z")+`,`+
			machine(idNewestInactive, "Inactive", "2026-03-01T00:00:00Z")+`]}`)
	})
	m, err := b.client.FindMachineByName(context.Background(), "pc-o'brien.contoso.com")
	if err != nil || m.ID != idActive {
		t.Fatalf("got %s, %v; want the most recently seen active one", m.ID, err)
	}
	c := b.apiCalls()[0]
	if want := "$filter=computerDnsName%20eq%20%27pc-o%27%27brien.contoso.com%27"; c.Path != "/api/machines" || c.RawQuery != want {
		t.Errorf("request %s?%s", c.Path, c.RawQuery)
	}

	inactive := setup(t, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, `{"value":[`+machine(idOld, "Inactive", "2026-01-01T00:00:00Z")+`,`+
			machine(idNewestInactive, "NoSensorData", "2026-03-01T00:00:00Z")+`]}`)
	})
	if m, err := inactive.client.FindMachineByName(context.Background(), "pc"); err != nil || m.ID != idNewestInactive {
		t.Errorf("no active one: got %s, %v", m.ID, err)
	}

	none := setup(t, func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, `{"value":[]}`) })
	_, err = none.client.FindMachineByName(context.Background(), "nobody.contoso.com")
	if e := asError(t, err); e.Outcome != OutcomeMachineNotFound {
		t.Errorf("no match: %s", e.Outcome)
	}
	if _, err := none.client.FindMachineByName(context.Background(), "bad name"); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("name with a space: %v", err)
	}
}

func TestGetPackageURI(t *testing.T) {
	t.Parallel()
	var b *bundle
	b = setup(t, func(w http.ResponseWriter, r *http.Request) {
		b.record(r)
		writeJSON(w, 200, `{"@odata.context":"https://api.securitycenter.microsoft.com/api/$metadata#Edm.String",`+
			`"value":"\"https://userrequests-us.securitycenter.windows.com:443/safedownload/WDATP_Investigation_Package.zip?token=MGZkMjE0\""}`)
	})
	uri, err := b.client.GetPackageURI(context.Background(), testAction)
	if err != nil {
		t.Fatal(err)
	}
	if want := "https://userrequests-us.securitycenter.windows.com:443/safedownload/WDATP_Investigation_Package.zip?token=MGZkMjE0"; uri != want {
		t.Errorf("uri %s", uri)
	}
	if p := b.apiCalls()[0].Path; p != "/api/machineactions/"+testAction+"/getPackageUri" {
		t.Errorf("path %s", p)
	}
	for _, l := range logText(b.logs) {
		if strings.Contains(l, "MGZkMjE0") {
			t.Errorf("log names the package token: %s", l)
		}
	}

	notReady := setup(t, func(w http.ResponseWriter, r *http.Request) { writeError(w, 404, "NotFound", "Package not found") })
	_, err = notReady.client.GetPackageURI(context.Background(), testAction)
	if e := asError(t, err); e.Outcome != OutcomeRetryable || e.StatusCode != 404 {
		t.Errorf("not ready: %s %d", e.Outcome, e.StatusCode)
	}
}

// TestPackageURIQuota: getPackageUri has its own 2/min limiter.
func TestPackageURIQuota(t *testing.T) {
	t.Parallel()
	b := setup(t, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, `{"value":"https://userrequests-eu.securitycenter.windows.com/p.zip?sig=x"}`)
	})
	for range 2 {
		if _, err := b.client.GetPackageURI(context.Background(), testAction); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan error, 1)
	go func() {
		_, err := b.client.GetPackageURI(context.Background(), testAction)
		done <- err
	}()
	for b.clock.Waiters() == 0 {
		<-b.clock.Changed()
	}
	b.clock.Advance(time.Minute)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n, sum := histogram(t, b.m.RateLimitWait); n != 3 || sum != 60 {
		t.Errorf("wait histogram count %d sum %v; want 3 and 60", n, sum)
	}
}
