package defendertest_test

import (
	"cmp"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/responder-dev/responder/defender/defendertest"
)

const (
	graphScope   = "https://graph.microsoft.com/.default"
	testAlert    = "da637472900382838869_1364969609"
	testGraphID  = "da637472900382838869_1364969609-graph"
	otherAlertID = "da637551227677560813_-961444813"
)

// alertBundle is setup with two alerts: testAlert (Graph id testGraphID) on the workstation,
// and otherAlertID, whose Graph id is its MDE id.
func alertBundle(t *testing.T, mutate ...func(*defendertest.Options)) *bundle {
	t.Helper()
	return setup(t, append([]func(*defendertest.Options){func(o *defendertest.Options) {
		o.Alerts = []defendertest.Alert{
			{ID: testAlert, GraphID: testGraphID, MachineID: machineWS, Title: "Ransomware behavior detected", Severity: "High", Category: "Ransomware"},
			{ID: otherAlertID, MachineID: machineSrv},
		}
	}}, mutate...)...)
}

// graph posts body to a Graph path with a bearer token ("" sends none) and a JSON content type.
func (b *bundle) graph(t *testing.T, tok, method, path, body string) response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, b.srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	req.Header.Set("Content-Type", "application/json")
	return do(t, req)
}

func commentPath(graphID string) string { return "/v1.0/security/alerts_v2/" + graphID + "/comments" }

const graphCommentBody = `{"@odata.type":"microsoft.graph.security.alertComment","comment":"Investigation package collected"}`

// wantGraphError checks Graph's error shape and returns its message.
func wantGraphError(t *testing.T, r response, status int, code string) string {
	t.Helper()
	wantStatus(t, r, status)
	var env struct {
		Error struct {
			Code       string `json:"code"`
			Message    string `json:"message"`
			InnerError struct {
				Date            string `json:"date"`
				RequestID       string `json:"request-id"`
				ClientRequestID string `json:"client-request-id"`
			} `json:"innerError"`
		} `json:"error"`
	}
	if err := json.Unmarshal(r.body, &env); err != nil || env.Error.Code == "" {
		t.Fatalf("body is not Graph's error shape: %s", r.body)
	}
	if env.Error.Code != code {
		t.Errorf("error code = %s, want %s; body %s", env.Error.Code, code, r.body)
	}
	if !guidRE.MatchString(env.Error.InnerError.RequestID) || env.Error.InnerError.Date == "" || env.Error.InnerError.ClientRequestID == "" {
		t.Errorf("innerError lacks date, request-id or client-request-id: %s", r.body)
	}
	if r.header.Get("request-id") != env.Error.InnerError.RequestID {
		t.Errorf("request-id header %q differs from the body's", r.header.Get("request-id"))
	}
	if env.Error.Message == "" {
		t.Error("error message is empty")
	}
	return env.Error.Message
}

// roles reads the roles claim of an access token the simulator issued.
func roles(t *testing.T, tok string) []string {
	t.Helper()
	var claims struct {
		jwt.RegisteredClaims
		Roles []string `json:"roles"`
	}
	if _, _, err := jwt.NewParser().ParseUnverified(tok, &claims); err != nil {
		t.Fatalf("token is not a JWT: %v", err)
	}
	return claims.Roles
}

func TestAlertStore(t *testing.T) {
	t.Parallel()
	b := alertBundle(t)
	a, ok := b.sim.Alert(testAlert)
	if !ok {
		t.Fatal("seeded alert not found")
	}
	if a.GraphID != testGraphID || a.Status != "New" || a.Severity != "High" || a.ComputerDNSName != "ws-0142.corp.example.com" ||
		!a.CreationTime.Equal(b.t0) || len(a.Comments) != 0 {
		t.Errorf("alert = %+v", a)
	}
	other, _ := b.sim.Alert(otherAlertID)
	if other.GraphID != otherAlertID || other.Severity != "Medium" {
		t.Errorf("defaults: GraphID %q severity %q, want the id and Medium", other.GraphID, other.Severity)
	}
	if _, ok := b.sim.Alert(testGraphID); ok {
		t.Error("Alert found an alert by its Graph id; it takes the MDE id")
	}
	b.sim.AddAlert(defendertest.Alert{})
	b.sim.AddAlert(defendertest.Alert{ID: testAlert, Title: "replaced", Comments: []defendertest.Comment{{Comment: "old"}}})
	a, _ = b.sim.Alert(testAlert)
	if a.Title != "replaced" || a.GraphID != testAlert || len(a.Comments) != 1 {
		t.Errorf("replaced alert = %+v", a)
	}
	a.Comments[0].Comment = "changed by the caller"
	if again, _ := b.sim.Alert(testAlert); again.Comments[0].Comment != "old" {
		t.Error("Alert returned the store's comments, not a copy")
	}
}

func TestGetAlert(t *testing.T) {
	t.Parallel()
	b := alertBundle(t)
	r := b.api(t, b.token(t), http.MethodGet, "/api/alerts/"+testAlert, "")
	wantStatus(t, r, http.StatusOK)
	m := r.json(t)
	if m["@odata.context"] != b.srv.URL+"/api/$metadata#Alerts/$entity" || m["id"] != testAlert || m["machineId"] != machineWS ||
		m["aadTenantId"] != testTenant || m["status"] != "New" || m["severity"] != "High" {
		t.Errorf("alert = %s", r.body)
	}
	if c, ok := m["comments"].([]any); !ok || len(c) != 0 {
		t.Errorf("comments = %v, want []", m["comments"])
	}
	if ct := r.header.Get("Content-Type"); ct != defendertest.ODataContentType {
		t.Errorf("Content-Type = %q", ct)
	}
	if s, _ := m["alertCreationTime"].(string); !mdeTimeRE.MatchString(s) {
		t.Errorf("alertCreationTime = %q", s)
	}
	msg := wantAPIError(t, b.api(t, b.token(t), http.MethodGet, "/api/alerts/da0_0", ""), http.StatusNotFound, "ResourceNotFound")
	if msg != "Alert da0_0 was not found" {
		t.Errorf("message = %q", msg)
	}
	for _, role := range []string{defendertest.RoleAlertReadAll, defendertest.RoleAlertsReadWriteAll} {
		b.sim.SetRoles(role)
		wantStatus(t, b.api(t, b.token(t), http.MethodGet, "/api/alerts/"+testAlert, ""), http.StatusOK)
	}
	b.sim.SetRoles(defendertest.RoleReadAll, defendertest.RoleCollectForensics)
	wantAPIError(t, b.api(t, b.token(t), http.MethodGet, "/api/alerts/"+testAlert, ""), http.StatusForbidden, "Forbidden")
}

func TestUpdateAlert(t *testing.T) {
	t.Parallel()
	b := alertBundle(t)
	tok := b.token(t)
	path := "/api/alerts/" + testAlert
	r := b.api(t, tok, http.MethodPatch, path, `{"comment":"Investigation package collected"}`)
	wantStatus(t, r, http.StatusOK)
	m := r.json(t)
	comments, _ := m["comments"].([]any)
	if m["id"] != testAlert || len(comments) != 1 {
		t.Fatalf("answer = %s", r.body)
	}
	c := comments[0].(map[string]any)
	if c["comment"] != "Investigation package collected" || c["createdBy"] != testClient {
		t.Errorf("comment = %v, want the text and createdBy the client id", c)
	}
	if s, _ := c["createdTime"].(string); !mdeTimeRE.MatchString(s) {
		t.Errorf("createdTime = %q", s)
	}

	b.clock.Advance(time.Minute)
	wantStatus(t, b.api(t, tok, http.MethodPatch, path,
		`{"status":"InProgress","assignedTo":"secop2@contoso.com","classification":"TruePositive","determination":"Malware","comment":"second"}`), http.StatusOK)
	a, _ := b.sim.Alert(testAlert)
	if a.Status != "InProgress" || a.AssignedTo != "secop2@contoso.com" || a.Classification != "TruePositive" || a.Determination != "Malware" {
		t.Errorf("properties not updated: %+v", a)
	}
	if len(a.Comments) != 2 || a.Comments[0].Comment != "Investigation package collected" || a.Comments[1].Comment != "second" ||
		!a.Comments[1].CreatedTime.Equal(b.t0.Add(time.Minute)) || !a.LastUpdateTime.Equal(b.t0.Add(time.Minute)) {
		t.Errorf("comments = %+v, last update %v", a.Comments, a.LastUpdateTime)
	}
	// A status change without a comment adds none.
	wantStatus(t, b.api(t, tok, http.MethodPatch, path, `{"status":"Resolved"}`), http.StatusOK)
	if a, _ := b.sim.Alert(testAlert); len(a.Comments) != 2 || a.Status != "Resolved" {
		t.Errorf("after a status change: %+v", a)
	}
}

// TestUpdateAlertRefusals: every refusal of PATCH /api/alerts/{id} leaves the alert as it was.
func TestUpdateAlertRefusals(t *testing.T) {
	t.Parallel()
	const ok = `{"comment":"x"}`
	cases := []struct {
		name        string
		roles       []string // nil: the defaults
		scope       string   // "": the API's; "none": no token
		method      string   // "": PATCH
		alert       string   // "": testAlert
		body, ctype string   // ctype "": application/json
		status      int
		code        string
	}{
		{name: "Comment key (case trap)", body: `{"Comment":"x"}`, status: 400, code: "InvalidRequestBody"},
		{name: "COMMENT key", body: `{"COMMENT":"x"}`, status: 400, code: "InvalidRequestBody"},
		{name: "Status key", body: `{"Status":"Resolved"}`, status: 400, code: "InvalidRequestBody"},
		{name: "unknown key", body: `{"comment":"x","severity":"High"}`, status: 400, code: "InvalidRequestBody"},
		{name: "nothing to update", body: `{}`, status: 400, code: "MissingRequiredParameter"},
		{name: "comment not a string", body: `{"comment":42}`, status: 400, code: "InvalidRequestBody"},
		{name: "empty comment", body: `{"comment":""}`, status: 400, code: "InvalidRequestBody"},
		{name: "unknown status", body: `{"status":"Closed"}`, status: 400, code: "InvalidRequestBody"},
		{name: "unknown classification", body: `{"classification":"Benign"}`, status: 400, code: "InvalidRequestBody"},
		{name: "not JSON", body: `comment=x`, status: 400, code: "InvalidRequestBody"},
		{name: "JSON array", body: `[` + ok + `]`, status: 400, code: "InvalidRequestBody"},
		{name: "text/plain", body: ok, ctype: "text/plain", status: 400, code: "InvalidRequestBody"},
		{name: "unknown alert", alert: "da0_0", body: ok, status: 404, code: "ResourceNotFound"},
		{name: "Graph id is not an MDE id", alert: testGraphID, body: ok, status: 404, code: "ResourceNotFound"},
		{name: "no alert permission", roles: []string{defendertest.RoleReadAll, defendertest.RoleCollectForensics}, body: ok, status: 403, code: "Forbidden"},
		{name: "read permission only", roles: []string{defendertest.RoleAlertReadAll}, body: ok, status: 403, code: "Forbidden"},
		{name: "Graph token", scope: graphScope, body: ok, status: 403, code: "Forbidden"},
		{name: "no token", scope: "none", body: ok, status: 401, code: "Unauthorized"},
		{name: "PUT", method: http.MethodPut, body: ok, status: 405, code: "MethodNotAllowed"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			b := alertBundle(t, func(o *defendertest.Options) { o.Roles = c.roles })
			tok := ""
			switch c.scope {
			case "":
				tok = b.token(t)
			case "none":
			default:
				tok = b.tokenFor(t, c.scope)
			}
			method, id, ctype := cmp.Or(c.method, http.MethodPatch), cmp.Or(c.alert, testAlert), cmp.Or(c.ctype, "application/json")
			req, _ := http.NewRequestWithContext(t.Context(), method, b.srv.URL+"/api/alerts/"+id, strings.NewReader(c.body))
			if tok != "" {
				req.Header.Set("Authorization", "Bearer "+tok)
			}
			req.Header.Set("Content-Type", ctype)
			r := do(t, req)
			msg := wantAPIError(t, r, c.status, c.code)
			if c.name == "Comment key (case trap)" && !strings.Contains(msg, "'comment'") {
				t.Errorf("message %q does not name the right key", msg)
			}
			if c.status == 405 && r.header.Get("Allow") != "GET, PATCH" {
				t.Errorf("Allow = %q", r.header.Get("Allow"))
			}
			if a, _ := b.sim.Alert(testAlert); len(a.Comments) != 0 || a.Status != "New" {
				t.Errorf("a refused call changed the alert: %+v", a)
			}
		})
	}
	t.Run("Alerts.ReadWrite.All spelling is accepted", func(t *testing.T) {
		t.Parallel()
		b := alertBundle(t, func(o *defendertest.Options) { o.Roles = []string{defendertest.RoleAlertsReadWriteAll} })
		wantStatus(t, b.api(t, b.token(t), http.MethodPatch, "/api/alerts/"+testAlert, ok), http.StatusOK)
	})
}

// TestAlertQuota: GET and PATCH alerts share one quota, apart from the other groups.
func TestAlertQuota(t *testing.T) {
	t.Parallel()
	b := alertBundle(t, func(o *defendertest.Options) { o.QuotaPerMinute = 3 })
	tok := b.token(t)
	path := "/api/alerts/" + testAlert
	wantStatus(t, b.api(t, tok, http.MethodPatch, path, `{"comment":"1"}`), http.StatusOK)
	b.clock.Advance(15 * time.Second)
	wantStatus(t, b.api(t, tok, http.MethodGet, path, ""), http.StatusOK)
	wantStatus(t, b.api(t, tok, http.MethodPatch, path, `{"comment":"2"}`), http.StatusOK)
	r := b.api(t, tok, http.MethodPatch, path, `{"comment":"3"}`)
	wantAPIError(t, r, http.StatusTooManyRequests, "TooManyRequests")
	if ra := r.header.Get("Retry-After"); ra != "45" {
		t.Errorf("Retry-After = %q, want 45", ra)
	}
	wantStatus(t, b.api(t, tok, http.MethodGet, "/api/machines/"+machineWS, ""), http.StatusOK)
	wantStatus(t, b.graph(t, b.tokenFor(t, graphScope), http.MethodPost, commentPath(testGraphID), graphCommentBody), http.StatusOK)
	if a, _ := b.sim.Alert(testAlert); len(a.Comments) != 3 {
		t.Errorf("comments = %+v, want 1, 2 and the Graph one", a.Comments)
	}
}

func TestGraphComment(t *testing.T) {
	t.Parallel()
	b := alertBundle(t)
	tok := b.tokenFor(t, graphScope)
	if got := roles(t, tok); !slices.Equal(got, defendertest.DefaultGraphRoles) {
		t.Errorf("Graph token roles = %v, want %v", got, defendertest.DefaultGraphRoles)
	}
	if got := roles(t, b.token(t)); slices.Contains(got, defendertest.RoleSecurityAlertReadWriteAll) {
		t.Errorf("MDE token roles %v hold a Graph permission", got)
	}
	r := b.graph(t, tok, http.MethodPost, commentPath(testGraphID), graphCommentBody)
	wantStatus(t, r, http.StatusOK)
	if ct := r.header.Get("Content-Type"); ct != defendertest.GraphContentType {
		t.Errorf("Content-Type = %q", ct)
	}
	var answer struct {
		Context string `json:"@odata.context"`
		Value   []struct {
			Type        string `json:"@odata.type"`
			Comment     string `json:"comment"`
			CreatedBy   string `json:"createdByDisplayName"`
			CreatedTime string `json:"createdDateTime"`
		} `json:"value"`
	}
	if err := json.Unmarshal(r.body, &answer); err != nil {
		t.Fatal(err)
	}
	if answer.Context != b.srv.URL+"/v1.0/$metadata#security/alerts_v2('"+testGraphID+"')/comments" || len(answer.Value) != 1 {
		t.Fatalf("answer = %s", r.body)
	}
	if v := answer.Value[0]; v.Comment != "Investigation package collected" || v.CreatedBy != testClient ||
		v.Type != "#microsoft.graph.security.alertComment" || !mdeTimeRE.MatchString(v.CreatedTime) {
		t.Errorf("comment = %+v", v)
	}
	// The answer lists every comment; the one store shows it on the alert.
	b.clock.Advance(time.Second)
	r = b.graph(t, tok, http.MethodPost, commentPath(testGraphID), `{"@odata.type":"#microsoft.graph.security.alertComment","comment":"second"}`)
	wantStatus(t, r, http.StatusOK)
	if err := json.Unmarshal(r.body, &answer); err != nil || len(answer.Value) != 2 {
		t.Fatalf("second answer = %s", r.body)
	}
	a, _ := b.sim.Alert(testAlert)
	if len(a.Comments) != 2 || a.Comments[1].Comment != "second" || a.Comments[1].CreatedBy != testClient {
		t.Errorf("alert comments = %+v", a.Comments)
	}
	// Graph's app id names the same resource.
	wantStatus(t, b.graph(t, b.tokenFor(t, defendertest.GraphAppID+"/.default"), http.MethodPost, commentPath(otherAlertID), graphCommentBody), http.StatusOK)
	for _, req := range b.sim.Requests() {
		if strings.HasPrefix(req.Path, "/v1.0/") && !req.Authorized {
			t.Errorf("request log: %s not marked authorized", req.Path)
		}
	}
}

// TestGraphCommentRefusals: every refusal of the Graph comment endpoint, in Graph's error
// shape, leaves the alert without a comment.
func TestGraphCommentRefusals(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name       string
		graphRoles []string // nil: the defaults
		scope      string   // "": Graph's; "none": no token; "unknown": a made-up one
		method     string   // "": POST
		path       string   // "": the comment path of testGraphID
		body       string   // "": graphCommentBody
		ctype      string   // "": application/json
		expire     bool     // advance past the token's lifetime
		status     int
		code       string
		msgHas     string
	}{
		{name: "no token", scope: "none", status: 401, code: "InvalidAuthenticationToken"},
		{name: "unknown token", scope: "unknown", status: 401, code: "InvalidAuthenticationToken"},
		{name: "MDE token", scope: apiScope, status: 401, code: "InvalidAuthenticationToken", msgHas: "audience"},
		{name: "expired token", expire: true, status: 401, code: "InvalidAuthenticationToken", msgHas: "expired"},
		{name: "no Graph permission", graphRoles: []string{}, status: 403, code: "Forbidden", msgHas: defendertest.RoleSecurityAlertReadWriteAll},
		{name: "read permission only", graphRoles: []string{defendertest.RoleSecurityAlertReadAll}, status: 403, code: "Forbidden"},
		{name: "no @odata.type", body: `{"comment":"x"}`, status: 400, code: "BadRequest"},
		{name: "wrong @odata.type", body: `{"@odata.type":"microsoft.graph.security.incident","comment":"x"}`, status: 400, code: "BadRequest"},
		{name: "no comment", body: `{"@odata.type":"microsoft.graph.security.alertComment"}`, status: 400, code: "BadRequest"},
		{name: "Comment key (case trap)", body: `{"@odata.type":"microsoft.graph.security.alertComment","Comment":"x"}`, status: 400, code: "BadRequest", msgHas: "'Comment' does not exist"},
		{name: "extra property", body: `{"@odata.type":"microsoft.graph.security.alertComment","comment":"x","createdByDisplayName":"me"}`, status: 400, code: "BadRequest"},
		{name: "empty comment", body: `{"@odata.type":"microsoft.graph.security.alertComment","comment":""}`, status: 400, code: "BadRequest"},
		{name: "not JSON", body: `comment=x`, status: 400, code: "BadRequest"},
		{name: "text/plain", ctype: "text/plain", status: 400, code: "BadRequest"},
		{name: "unknown alert", path: commentPath("da0_0"), status: 404, code: "NotFound"},
		{name: "MDE id is not the Graph id", path: commentPath(testAlert), status: 404, code: "NotFound"},
		{name: "GET", method: http.MethodGet, status: 405, code: "BadRequest"},
		{name: "other Graph path", path: "/v1.0/security/alerts_v2/" + testGraphID, status: 404, code: "NotFound"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			b := alertBundle(t, func(o *defendertest.Options) { o.GraphRoles = c.graphRoles })
			tok := ""
			switch c.scope {
			case "":
				tok = b.tokenFor(t, graphScope)
			case "none":
			case "unknown":
				tok = "made-up-token"
			default:
				tok = b.tokenFor(t, c.scope)
			}
			if c.expire {
				b.clock.Advance(time.Hour)
			}
			req, _ := http.NewRequestWithContext(t.Context(), cmp.Or(c.method, http.MethodPost), b.srv.URL+cmp.Or(c.path, commentPath(testGraphID)),
				strings.NewReader(cmp.Or(c.body, graphCommentBody)))
			if tok != "" {
				req.Header.Set("Authorization", "Bearer "+tok)
			}
			req.Header.Set("Content-Type", cmp.Or(c.ctype, "application/json"))
			msg := wantGraphError(t, do(t, req), c.status, c.code)
			if !strings.Contains(msg, c.msgHas) {
				t.Errorf("message %q does not contain %q", msg, c.msgHas)
			}
			if a, _ := b.sim.Alert(testAlert); len(a.Comments) != 0 {
				t.Errorf("a refused call added a comment: %+v", a.Comments)
			}
		})
	}
}

func TestGraphRoles(t *testing.T) {
	t.Parallel()
	b := alertBundle(t)
	before := b.tokenFor(t, graphScope)
	b.sim.SetGraphRoles(defendertest.RoleSecurityAlertReadAll)
	after := b.tokenFor(t, graphScope)
	wantGraphError(t, b.graph(t, after, http.MethodPost, commentPath(testGraphID), graphCommentBody), http.StatusForbidden, "Forbidden")
	wantStatus(t, b.graph(t, before, http.MethodPost, commentPath(testGraphID), graphCommentBody), http.StatusOK)
	// The MDE roles are another matter: SetGraphRoles leaves them alone.
	if got := roles(t, b.token(t)); !slices.Equal(got, defendertest.DefaultRoles) {
		t.Errorf("MDE roles = %v", got)
	}
}

func TestGraphQuota(t *testing.T) {
	t.Parallel()
	b := alertBundle(t, func(o *defendertest.Options) { o.QuotaPerMinute = 2 })
	tok := b.tokenFor(t, graphScope)
	for range 2 {
		wantStatus(t, b.graph(t, tok, http.MethodPost, commentPath(testGraphID), graphCommentBody), http.StatusOK)
	}
	r := b.graph(t, tok, http.MethodPost, commentPath(testGraphID), graphCommentBody)
	wantGraphError(t, r, http.StatusTooManyRequests, "TooManyRequests")
	if ra := r.header.Get("Retry-After"); ra != "60" {
		t.Errorf("Retry-After = %q, want 60", ra)
	}
	// The MDE alert quota is another group.
	wantStatus(t, b.api(t, b.token(t), http.MethodPatch, "/api/alerts/"+testAlert, `{"comment":"x"}`), http.StatusOK)
}

// TestGovGraphHost: a simulator of the DoD cloud issues Graph tokens for its own Graph host
// only; a commercial Graph token is another audience there.
func TestGovGraphHost(t *testing.T) {
	t.Parallel()
	const dod = "https://dod-graph.microsoft.us"
	b := alertBundle(t, func(o *defendertest.Options) { o.GraphHost = dod })
	wantStatus(t, b.graph(t, b.tokenFor(t, dod+"/.default"), http.MethodPost, commentPath(testGraphID), graphCommentBody), http.StatusOK)
	msg := wantGraphError(t, b.graph(t, b.tokenFor(t, graphScope), http.MethodPost, commentPath(testGraphID), graphCommentBody),
		http.StatusUnauthorized, "InvalidAuthenticationToken")
	if !strings.Contains(msg, "audience") {
		t.Errorf("message %q does not name the audience", msg)
	}
	// The simulator's own URL is no resource Entra ID knows.
	wantTokenError(t, b.postForm(t, v2Path(), secretForm(b.srv.URL+"/.default")), http.StatusBadRequest, "invalid_scope", 70011)
}

func TestFaultsApplyToAlertEndpoints(t *testing.T) {
	t.Parallel()
	b := alertBundle(t)
	tok, gtok := b.token(t), b.tokenFor(t, graphScope)
	b.sim.InjectFault(defendertest.Fault{Method: http.MethodPatch, PathPrefix: "/api/alerts/", Status: 503, RetryAfter: 3, Times: 1})
	b.sim.InjectFault(defendertest.Fault{PathPrefix: "/v1.0/security/alerts_v2/", Status: 500, Times: 1})
	b.sim.InjectFault(defendertest.Fault{PathPrefix: "/v1.0/", PathContains: otherAlertID, Drop: true, Times: 1})

	r := b.api(t, tok, http.MethodPatch, "/api/alerts/"+testAlert, `{"comment":"x"}`)
	wantAPIError(t, r, http.StatusServiceUnavailable, "ServiceUnavailable")
	if r.header.Get("Retry-After") != "3" {
		t.Errorf("Retry-After = %q", r.header.Get("Retry-After"))
	}
	wantGraphError(t, b.graph(t, gtok, http.MethodPost, commentPath(testGraphID), graphCommentBody), http.StatusInternalServerError, "InternalServerError")
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, b.srv.URL+commentPath(otherAlertID), strings.NewReader(graphCommentBody))
	req.Header.Set("Authorization", "Bearer "+gtok)
	req.Header.Set("Content-Type", "application/json")
	if res, err := http.DefaultClient.Do(req); err == nil {
		_ = res.Body.Close()
		t.Fatalf("dropped request answered %d", res.StatusCode)
	}
	if a, _ := b.sim.Alert(testAlert); len(a.Comments) != 0 {
		t.Errorf("faulted calls added comments: %+v", a.Comments)
	}
	wantStatus(t, b.api(t, tok, http.MethodPatch, "/api/alerts/"+testAlert, `{"comment":"x"}`), http.StatusOK)
	wantStatus(t, b.graph(t, gtok, http.MethodPost, commentPath(testGraphID), graphCommentBody), http.StatusOK)
}
