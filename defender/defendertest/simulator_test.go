package defendertest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/responder-dev/responder/defender/defendertest"
	"github.com/responder-dev/responder/internal/testkit"
)

// --- token endpoint ---------------------------------------------------------------------

func TestTokenV2Success(t *testing.T) {
	t.Parallel()
	b := setup(t)
	r := b.postForm(t, v2Path(), secretForm(apiScope))
	wantStatus(t, r, http.StatusOK)
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type = %q", ct)
	}
	if cc := r.header.Get("Cache-Control"); !strings.Contains(cc, "no-store") {
		t.Errorf("Cache-Control = %q, want no-store", cc)
	}
	m := r.json(t)
	if m["token_type"] != "Bearer" {
		t.Errorf("token_type = %v", m["token_type"])
	}
	// v2 answers integer numbers.
	if m["expires_in"] != float64(3599) || m["ext_expires_in"] != float64(3599) {
		t.Errorf("expires_in = %#v, ext_expires_in = %#v, want numbers 3599", m["expires_in"], m["ext_expires_in"])
	}
	tok, _ := m["access_token"].(string)
	if tok == "" {
		t.Fatal("no access_token")
	}
	wantStatus(t, b.api(t, tok, http.MethodGet, "/api/machines/"+machineWS, ""), http.StatusOK)
	if got := b.sim.TokenURL(); got != b.srv.URL+v2Path() {
		t.Errorf("TokenURL() = %q, want %q", got, b.srv.URL+v2Path())
	}
}

func TestTokenV1AnswersNumbersAsStrings(t *testing.T) {
	t.Parallel()
	b := setup(t)
	form := url.Values{
		"grant_type":    {"client_credentials"},
		"client_id":     {testClient},
		"client_secret": {testSecret},
		"resource":      {"https://api.securitycenter.microsoft.com"},
	}
	r := b.postForm(t, v1Path(), form)
	wantStatus(t, r, http.StatusOK)
	m := r.json(t)
	now := b.clock.Now().Unix()
	want := map[string]string{
		"token_type":     "Bearer",
		"expires_in":     "3599",
		"ext_expires_in": "3599",
		"expires_on":     strconv.FormatInt(now+3599, 10),
		"not_before":     strconv.FormatInt(now, 10),
		"resource":       "https://api.securitycenter.microsoft.com",
	}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s = %#v, want string %q", k, m[k], v)
		}
	}
	tok, _ := m["access_token"].(string)
	wantStatus(t, b.api(t, tok, http.MethodGet, "/api/machines/"+machineWS, ""), http.StatusOK)

	delete(form, "resource")
	wantTokenError(t, b.postForm(t, v1Path(), form), http.StatusBadRequest, "invalid_request", 900144)
	form.Set("resource", "https://unknown.example.com")
	wantTokenError(t, b.postForm(t, v1Path(), form), http.StatusBadRequest, "invalid_resource", 500011)
}

func TestTokenClientSecretBasic(t *testing.T) {
	t.Parallel()
	b := setup(t)
	form := url.Values{"grant_type": {"client_credentials"}, "scope": {apiScope}}
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, b.srv.URL+v2Path(), strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(url.QueryEscape(testClient), url.QueryEscape(testSecret))
	wantStatus(t, do(t, req), http.StatusOK)

	req2, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, b.srv.URL+v2Path(), strings.NewReader(form.Encode()))
	req2.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req2.SetBasicAuth(url.QueryEscape(testClient), "wrong")
	wantTokenError(t, do(t, req2), http.StatusUnauthorized, "invalid_client", 7000215)
}

func TestTokenAlternateScopes(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for _, scope := range []string{
		"https://securitycenter.onmicrosoft.com/windowsatpservice/.default",
		defendertest.WindowsDefenderATPAppID + "/.default",
		"https://api.securitycenter.microsoft.com//.default",
	} {
		tok := b.tokenFor(t, scope)
		wantStatus(t, b.api(t, tok, http.MethodGet, "/api/machines/"+machineWS, ""), http.StatusOK)
	}
}

func TestTokenErrors(t *testing.T) {
	t.Parallel()
	b := setup(t)
	with := func(k, v string) url.Values {
		f := secretForm(apiScope)
		if v == "" {
			f.Del(k)
		} else {
			f.Set(k, v)
		}
		return f
	}
	cases := []struct {
		name   string
		path   string
		form   url.Values
		status int
		err    string
		code   int
	}{
		{"bad secret", v2Path(), with("client_secret", "nope"), 401, "invalid_client", 7000215},
		{"unknown client id", v2Path(), with("client_id", "00000000-0000-0000-0000-000000000000"), 400, "unauthorized_client", 700016},
		{"no credential", v2Path(), with("client_secret", ""), 401, "invalid_client", 7000218},
		{"unknown resource scope", v2Path(), with("scope", "https://api-eu.securitycenter.microsoft.com/.default"), 400, "invalid_scope", 70011},
		{"scope without .default", v2Path(), with("scope", "https://api.securitycenter.microsoft.com/Machine.Read.All"), 400, "invalid_scope", 1002012},
		{"two scopes", v2Path(), with("scope", apiScope+" offline_access"), 400, "invalid_scope", 1002012},
		{"missing scope", v2Path(), with("scope", ""), 400, "invalid_request", 900144},
		{"unknown tenant", "/contoso.onmicrosoft.com/oauth2/v2.0/token", secretForm(apiScope), 400, "invalid_request", 90002},
		{"password grant", v2Path(), with("grant_type", "password"), 400, "unsupported_grant_type", 70003},
		{"missing grant", v2Path(), with("grant_type", ""), 400, "invalid_request", 900144},
		{"secret and assertion", v2Path(), with("client_assertion", "x"), 400, "invalid_request", 90014},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			wantTokenError(t, b.postForm(t, c.path, c.form), c.status, c.err, c.code)
		})
	}
	t.Run("json body", func(t *testing.T) {
		t.Parallel()
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, b.srv.URL+v2Path(), strings.NewReader(`{"grant_type":"client_credentials"}`))
		req.Header.Set("Content-Type", "application/json")
		wantTokenError(t, do(t, req), http.StatusBadRequest, "invalid_request", 900144)
	})
	t.Run("GET", func(t *testing.T) {
		t.Parallel()
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, b.srv.URL+v2Path()+"?"+secretForm(apiScope).Encode(), nil)
		wantTokenError(t, do(t, req), http.StatusBadRequest, "invalid_request", 900561)
	})
}

func TestClientAssertion(t *testing.T) {
	t.Parallel()
	ck := testCert()
	b := setup(t, func(o *defendertest.Options) {
		o.ClientSecret = ""
		o.Certificate = ck.cert
	})
	rs256 := map[string]string{"x5t": x5t(ck.cert)}
	ps256 := map[string]string{"x5t#S256": x5tS256(ck.cert)}
	claims := func(mod func(jwt.MapClaims)) jwt.MapClaims {
		c := b.assertionClaims()
		if mod != nil {
			mod(c)
		}
		return c
	}
	cases := []struct {
		name      string
		assertion string
		status    int
		err       string
		code      int
	}{
		{"RS256 x5t", sign(t, jwt.SigningMethodRS256, rs256, claims(nil), ck.key), 200, "", 0},
		{"PS256 x5t#S256", sign(t, jwt.SigningMethodPS256, ps256, claims(nil), ck.key), 200, "", 0},
		{"RS256 without x5t", sign(t, jwt.SigningMethodRS256, ps256, claims(nil), ck.key), 401, "invalid_client", 700027},
		{"PS256 without x5t#S256", sign(t, jwt.SigningMethodPS256, rs256, claims(nil), ck.key), 401, "invalid_client", 700027},
		{"wrong thumbprint", sign(t, jwt.SigningMethodRS256, map[string]string{"x5t": "AAAA"}, claims(nil), ck.key), 401, "invalid_client", 700027},
		{"bad signature", sign(t, jwt.SigningMethodRS256, rs256, claims(nil), ck.other), 401, "invalid_client", 700027},
		{"HS256", func() string {
			s, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, claims(nil)).SignedString([]byte("k"))
			return s
		}(), 401, "invalid_client", 700027},
		{"wrong aud", sign(t, jwt.SigningMethodRS256, rs256, claims(func(c jwt.MapClaims) {
			c["aud"] = "https://login.microsoftonline.com/" + testTenant + "/oauth2/v2.0/token"
		}), ck.key), 401, "invalid_client", 50027},
		{"wrong iss", sign(t, jwt.SigningMethodRS256, rs256, claims(func(c jwt.MapClaims) { c["iss"] = "someone" }), ck.key), 401, "invalid_client", 700021},
		{"wrong sub", sign(t, jwt.SigningMethodRS256, rs256, claims(func(c jwt.MapClaims) { c["sub"] = "someone" }), ck.key), 401, "invalid_client", 700021},
		{"no jti", sign(t, jwt.SigningMethodRS256, rs256, claims(func(c jwt.MapClaims) { delete(c, "jti") }), ck.key), 401, "invalid_client", 50027},
		{"no exp", sign(t, jwt.SigningMethodRS256, rs256, claims(func(c jwt.MapClaims) { delete(c, "exp") }), ck.key), 401, "invalid_client", 50027},
		{"expired", sign(t, jwt.SigningMethodRS256, rs256, claims(func(c jwt.MapClaims) {
			c["exp"] = b.clock.Now().Add(-6 * time.Minute).Unix()
		}), ck.key), 401, "invalid_client", 700024},
		{"not yet valid", sign(t, jwt.SigningMethodRS256, rs256, claims(func(c jwt.MapClaims) {
			c["nbf"] = b.clock.Now().Add(6 * time.Minute).Unix()
		}), ck.key), 401, "invalid_client", 700024},
		{"garbage", "not-a-jwt", 401, "invalid_client", 50027},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			r := b.postForm(t, v2Path(), assertionForm(c.assertion))
			if c.status == http.StatusOK {
				wantStatus(t, r, http.StatusOK)
				tok, _ := r.json(t)["access_token"].(string)
				wantStatus(t, b.api(t, tok, http.MethodGet, "/api/machines/"+machineWS, ""), http.StatusOK)
				return
			}
			wantTokenError(t, r, c.status, c.err, c.code)
		})
	}
	t.Run("replayed jti", func(t *testing.T) {
		t.Parallel()
		a := sign(t, jwt.SigningMethodPS256, ps256, claims(nil), ck.key)
		wantStatus(t, b.postForm(t, v2Path(), assertionForm(a)), http.StatusOK)
		wantTokenError(t, b.postForm(t, v2Path(), assertionForm(a)), http.StatusUnauthorized, "invalid_client", 50027)
	})
	t.Run("secret refused when the app has none", func(t *testing.T) {
		t.Parallel()
		wantTokenError(t, b.postForm(t, v2Path(), secretForm(apiScope)), http.StatusUnauthorized, "invalid_client", 7000215)
	})
	t.Run("wrong assertion type", func(t *testing.T) {
		t.Parallel()
		f := assertionForm(sign(t, jwt.SigningMethodRS256, rs256, claims(nil), ck.key))
		f.Set("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:saml2-bearer")
		wantTokenError(t, b.postForm(t, v2Path(), f), http.StatusBadRequest, "invalid_request", 900144)
	})
	t.Run("v1 endpoint accepts its own URL as aud", func(t *testing.T) {
		t.Parallel()
		c := claims(func(c jwt.MapClaims) { c["aud"] = b.srv.URL + v1Path() })
		f := assertionForm(sign(t, jwt.SigningMethodRS256, rs256, c, ck.key))
		f.Del("scope")
		f.Set("resource", "https://api.securitycenter.microsoft.com")
		wantStatus(t, b.postForm(t, v1Path(), f), http.StatusOK)
	})
}

func TestFederatedToken(t *testing.T) {
	t.Parallel()
	const kubeToken = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6c29jOnJlc3BvbmRlciJ9.c2ln"
	b := setup(t, func(o *defendertest.Options) {
		o.ClientSecret = ""
		o.FederatedToken = kubeToken
	})
	r := b.postForm(t, v2Path(), assertionForm(kubeToken))
	wantStatus(t, r, http.StatusOK)
	tok, _ := r.json(t)["access_token"].(string)
	wantStatus(t, b.api(t, tok, http.MethodGet, "/api/machines/"+machineWS, ""), http.StatusOK)
	// The same projected token may be presented again (kubelet rotates it, not the client).
	wantStatus(t, b.postForm(t, v2Path(), assertionForm(kubeToken)), http.StatusOK)
	wantTokenError(t, b.postForm(t, v2Path(), assertionForm(kubeToken+"x")), http.StatusUnauthorized, "invalid_client", 700211)
}

// --- API authentication ---------------------------------------------------------------------

func TestAPIAuth(t *testing.T) {
	t.Parallel()
	b := setup(t)
	path := "/api/machines/" + machineWS

	r := b.api(t, "", http.MethodGet, path, "")
	wantAPIError(t, r, http.StatusUnauthorized, "Unauthorized")
	if r.header.Get("WWW-Authenticate") == "" {
		t.Error("401 without WWW-Authenticate")
	}
	wantAPIError(t, b.api(t, "made-up-token", http.MethodGet, path, ""), http.StatusUnauthorized, "Unauthorized")

	tok := b.token(t)
	b.clock.Advance(time.Hour - time.Second)
	wantStatus(t, b.api(t, tok, http.MethodGet, path, ""), http.StatusOK)
	b.clock.Advance(time.Second)
	wantAPIError(t, b.api(t, tok, http.MethodGet, path, ""), http.StatusUnauthorized, "Unauthorized")

	// A token for another audience is valid but refused with 403 (M365#9246).
	graph := b.tokenFor(t, "https://graph.microsoft.com/.default")
	if msg := wantAPIError(t, b.api(t, graph, http.MethodGet, path, ""), http.StatusForbidden, "Forbidden"); !strings.Contains(msg, "audience") {
		t.Errorf("403 message %q does not name the audience", msg)
	}
	wantAPIError(t, b.collect(t, graph, machineWS, "x"), http.StatusForbidden, "Forbidden")
	other := b.tokenFor(t, "https://api.security.microsoft.com/.default")
	wantAPIError(t, b.api(t, other, http.MethodGet, path, ""), http.StatusForbidden, "Forbidden")
}

func TestErrorTargetsAreFresh(t *testing.T) {
	t.Parallel()
	b := setup(t)
	target := func() string {
		var env struct{ Error struct{ Target string } }
		_ = json.Unmarshal(b.api(t, "", http.MethodGet, "/api/machines", "").body, &env)
		return env.Error.Target
	}
	if a, c := target(), target(); a == c || a == "" {
		t.Errorf("targets %q and %q, want two different GUIDs", a, c)
	}
}

func TestGovAPIHost(t *testing.T) {
	t.Parallel()
	const gov = "https://api-gov.securitycenter.microsoft.us"
	b := setup(t, func(o *defendertest.Options) { o.APIHost = gov })
	tok := b.tokenFor(t, gov+"/.default")
	wantStatus(t, b.api(t, tok, http.MethodGet, "/api/machines/"+machineWS, ""), http.StatusOK)
	// The commercial audience is another resource there, and so is windowsatpservice.
	com := b.tokenFor(t, apiScope)
	if msg := wantAPIError(t, b.api(t, com, http.MethodGet, "/api/machines/"+machineWS, ""), http.StatusForbidden, "Forbidden"); !strings.Contains(msg, "audience") {
		t.Errorf("403 message %q does not name the audience", msg)
	}
	wantTokenError(t, b.postForm(t, v2Path(), secretForm(defendertest.CommercialAlternateResource+"/.default")),
		http.StatusBadRequest, "invalid_scope", 70011)
}

func TestPermissions(t *testing.T) {
	t.Parallel()
	t.Run("DenyCollect", func(t *testing.T) {
		t.Parallel()
		b := setup(t, func(o *defendertest.Options) { o.DenyCollect = true })
		tok := b.token(t)
		msg := wantAPIError(t, b.collect(t, tok, machineWS, "x"), http.StatusForbidden, "Forbidden")
		if !strings.Contains(msg, defendertest.RoleCollectForensics) {
			t.Errorf("message %q does not name %s", msg, defendertest.RoleCollectForensics)
		}
		wantStatus(t, b.api(t, tok, http.MethodGet, "/api/machines/"+machineWS, ""), http.StatusOK)
		if n := len(b.sim.Actions()); n != 0 {
			t.Errorf("%d actions created by a forbidden call", n)
		}
	})
	t.Run("SetRoles applies to new tokens", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		before := b.token(t)
		b.sim.SetRoles(defendertest.RoleReadAll)
		after := b.token(t)
		wantAPIError(t, b.collect(t, after, machineWS, "x"), http.StatusForbidden, "Forbidden")
		wantStatus(t, b.collect(t, before, machineWS, "x"), http.StatusCreated)
		b.sim.SetRoles()
		none := b.token(t)
		wantAPIError(t, b.api(t, none, http.MethodGet, "/api/machines/"+machineWS, ""), http.StatusForbidden, "Forbidden")
	})
}

// --- collect and the other actions ------------------------------------------------------------

func TestCollect(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tok := b.token(t)
	comment := "Collect forensics due to alert da637472900382838869_1364969609"

	r := b.collect(t, tok, machineWS, comment)
	wantStatus(t, r, http.StatusCreated)
	if ct := r.header.Get("Content-Type"); ct != defendertest.ODataContentType {
		t.Errorf("Content-Type = %q, want %q", ct, defendertest.ODataContentType)
	}
	if v := r.header.Get("OData-Version"); v != "4.0" {
		t.Errorf("OData-Version = %q", v)
	}
	wantPrefix := `{"@odata.context":"` + b.srv.URL + `/api/$metadata#MachineActions/$entity",`
	if !bytes.HasPrefix(r.body, []byte(wantPrefix)) {
		t.Errorf("body does not start with %s:\n%s", wantPrefix, r.body)
	}
	m := r.json(t)
	keys := []string{"@odata.context", "id", "type", "title", "requestor", "requestorComment", "status", "machineId",
		"computerDnsName", "creationDateTimeUtc", "lastUpdateDateTimeUtc", "cancellationRequestor", "cancellationComment",
		"cancellationDateTimeUtc", "errorHResult", "scope", "externalId", "requestSource", "relatedFileInfo", "commands",
		"troubleshootInfo"}
	for _, k := range keys {
		if _, ok := m[k]; !ok {
			t.Errorf("MachineAction lacks key %q", k)
		}
	}
	if len(m) != len(keys) {
		t.Errorf("MachineAction has %d keys, want %d: %v", len(m), len(keys), m)
	}
	want := map[string]any{
		"type": "CollectInvestigationPackage", "status": "Pending", "requestorComment": comment,
		"requestor": testClient, "requestSource": "PublicApi", "machineId": machineWS,
		"computerDnsName": "ws-0142.corp.example.com", "scope": nil, "title": nil, "errorHResult": float64(0),
		"cancellationDateTimeUtc": nil,
	}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s = %#v, want %#v", k, m[k], v)
		}
	}
	if id, _ := m["id"].(string); !guidRE.MatchString(id) {
		t.Errorf("id %q is not a GUID", m["id"])
	}
	for _, k := range []string{"creationDateTimeUtc", "lastUpdateDateTimeUtc"} {
		if s, _ := m[k].(string); !mdeTimeRE.MatchString(s) {
			t.Errorf("%s = %q, want 7 fractional digits and Z", k, m[k])
		}
	}
	if m["creationDateTimeUtc"] != "2025-03-04T10:00:00.0000000Z" {
		t.Errorf("creationDateTimeUtc = %v, want the simulator clock", m["creationDateTimeUtc"])
	}
	if c, ok := m["commands"].([]any); !ok || len(c) != 0 {
		t.Errorf("commands = %#v, want []", m["commands"])
	}

	// A collection already running: 400 ActiveRequestAlreadyExists, never a second action.
	msg := wantAPIError(t, b.collect(t, tok, machineWS, comment), http.StatusBadRequest, "ActiveRequestAlreadyExists")
	if msg != "Action is already in progress" {
		t.Errorf("message = %q", msg)
	}
	b.clock.Advance(3 * time.Second) // InProgress
	wantAPIError(t, b.collect(t, tok, machineWS, comment), http.StatusBadRequest, "ActiveRequestAlreadyExists")
	// Another machine is independent.
	wantStatus(t, b.collect(t, tok, machineSrv, comment), http.StatusCreated)
	b.clock.Advance(4 * time.Second) // Succeeded
	wantStatus(t, b.collect(t, tok, machineWS, comment), http.StatusCreated)
	if n := len(b.sim.Actions()); n != 3 {
		t.Errorf("Actions() has %d actions, want 3", n)
	}
}

func TestCollectBadRequests(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tok := b.token(t)
	path := "/api/machines/" + machineWS + "/collectInvestigationPackage"
	cases := []struct {
		name, body, contentType, code string
		status                        int
	}{
		{"lower-case comment", `{"comment":"x"}`, "application/json", "InvalidRequestBody", 400},
		{"upper-case COMMENT", `{"COMMENT":"x"}`, "application/json", "InvalidRequestBody", 400},
		{"missing Comment", `{}`, "application/json", "MissingRequiredParameter", 400},
		{"empty Comment", `{"Comment":""}`, "application/json", "InvalidRequestBody", 400},
		{"Comment not a string", `{"Comment":42}`, "application/json", "InvalidRequestBody", 400},
		{"not JSON", `Comment=x`, "application/json", "InvalidRequestBody", 400},
		{"JSON array", `[{"Comment":"x"}]`, "application/json", "InvalidRequestBody", 400},
		{"null", `null`, "application/json", "InvalidRequestBody", 400},
		{"no content type", `{"Comment":"x"}`, "", "InvalidRequestBody", 400},
		{"text/plain", `{"Comment":"x"}`, "text/plain", "InvalidRequestBody", 400},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, b.srv.URL+path, strings.NewReader(c.body))
			req.Header.Set("Authorization", "Bearer "+tok)
			if c.contentType != "" {
				req.Header.Set("Content-Type", c.contentType)
			}
			wantAPIError(t, do(t, req), c.status, c.code)
		})
	}
	t.Run("charset parameter is fine", func(t *testing.T) {
		t.Parallel()
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, b.srv.URL+"/api/machines/"+machineDC+"/collectInvestigationPackage", strings.NewReader(`{"Comment":"x"}`))
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
		wantStatus(t, do(t, req), http.StatusCreated)
	})
	t.Run("unknown machine", func(t *testing.T) {
		t.Parallel()
		const unknown = "ffffffffffffffffffffffffffffffffffffffff"
		msg := wantAPIError(t, b.collect(t, tok, unknown, "x"), http.StatusNotFound, "ResourceNotFound")
		if msg != "Machine "+unknown+" was not found" {
			t.Errorf("message = %q", msg)
		}
	})
	t.Run("GET on an action path", func(t *testing.T) {
		t.Parallel()
		wantAPIError(t, b.api(t, tok, http.MethodGet, path, ""), http.StatusMethodNotAllowed, "MethodNotAllowed")
	})
	t.Run("unknown API path", func(t *testing.T) {
		t.Parallel()
		wantAPIError(t, b.api(t, tok, http.MethodGet, "/api/alerts", ""), http.StatusNotFound, "NotFound")
	})
}

func TestStatusProgression(t *testing.T) {
	t.Parallel()
	for _, final := range []string{"Succeeded", "Failed", "TimeOut", "Cancelled"} {
		for _, how := range []string{"Machine.FinalStatus", "SetFinalStatus"} {
			t.Run(final+"/"+how, func(t *testing.T) {
				t.Parallel()
				b := setup(t, func(o *defendertest.Options) {
					if how == "Machine.FinalStatus" {
						o.Machines[1].FinalStatus = final
					}
				})
				if how == "SetFinalStatus" {
					b.sim.SetFinalStatus(machineWS, final)
				}
				tok := b.token(t)
				id := b.mustCollect(t, tok, machineWS)
				steps := []struct {
					advance time.Duration
					status  string
					updated time.Duration // lastUpdateDateTimeUtc - creation
				}{
					{0, "Pending", 0},
					{1999 * time.Millisecond, "Pending", 0},
					{time.Millisecond, "InProgress", 2 * time.Second},
					{4999 * time.Millisecond, "InProgress", 2 * time.Second},
					{time.Millisecond, final, 7 * time.Second},
					{30 * time.Minute, final, 7 * time.Second},
				}
				for _, st := range steps {
					b.clock.Advance(st.advance)
					r := b.api(t, tok, http.MethodGet, "/api/machineactions/"+id, "")
					wantStatus(t, r, http.StatusOK)
					var got defendertest.MachineAction
					if err := json.Unmarshal(r.body, &got); err != nil {
						t.Fatal(err)
					}
					if got.Status != st.status {
						t.Fatalf("at +%v: status %s, want %s", b.clock.Now().Sub(b.t0), got.Status, st.status)
					}
					if d := got.LastUpdateDateTimeUtc.Sub(got.CreationDateTimeUtc); d != st.updated {
						t.Errorf("at +%v: lastUpdate - creation = %v, want %v", b.clock.Now().Sub(b.t0), d, st.updated)
					}
				}
				acts := b.sim.Actions()
				if len(acts) != 1 || acts[0].Status != final || !defendertest.IsTerminal(acts[0].Status) {
					t.Errorf("Actions() = %+v", acts)
				}
				// A terminal action no longer blocks a new one.
				wantStatus(t, b.collect(t, tok, machineWS, "again"), http.StatusCreated)
			})
		}
	}
}

func TestSetFinalStatusAffectsOnlyNewActions(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tok := b.token(t)
	first := b.mustCollect(t, tok, machineWS)
	b.sim.SetFinalStatus(machineWS, "Failed")
	second := b.mustCollect(t, tok, machineSrv) // other machine: default
	b.clock.Advance(7 * time.Second)
	third := b.mustCollect(t, tok, machineWS)
	b.clock.Advance(7 * time.Second)
	got := map[string]string{}
	for _, a := range b.sim.Actions() {
		got[a.ID] = a.Status
	}
	if got[first] != "Succeeded" || got[second] != "Succeeded" || got[third] != "Failed" {
		t.Errorf("statuses = %v, want Succeeded, Succeeded, Failed", got)
	}
}

func TestOtherActions(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tok := b.token(t)
	post := func(machine, action, body string) response {
		return b.api(t, tok, http.MethodPost, "/api/machines/"+machine+"/"+action, body)
	}

	r := post(machineWS, "isolate", `{"Comment":"contain","IsolationType":"Full"}`)
	wantStatus(t, r, http.StatusCreated)
	if m := r.json(t); m["type"] != "Isolate" || m["scope"] != "Full" || m["status"] != "Pending" {
		t.Errorf("isolate answered %v", m)
	}
	wantAPIError(t, post(machineWS, "isolate", `{"Comment":"again","IsolationType":"Selective"}`), 400, "ActiveRequestAlreadyExists")
	wantAPIError(t, post(machineSrv, "isolate", `{"Comment":"x"}`), 400, "MissingRequiredParameter")
	wantAPIError(t, post(machineSrv, "isolate", `{"Comment":"x","isolationType":"Full"}`), 400, "InvalidRequestBody")
	wantAPIError(t, post(machineSrv, "isolate", `{"Comment":"x","IsolationType":"full"}`), 400, "InvalidRequestBody")
	wantStatus(t, post(machineSrv, "isolate", `{"Comment":"x","IsolationType":"Selective"}`), http.StatusCreated)
	wantStatus(t, post(machineDC, "isolate", `{"Comment":"x","IsolationType":"UnManagedDevice"}`), http.StatusCreated)

	// A different type on the same machine is not blocked.
	r = post(machineWS, "unisolate", `{"Comment":"release"}`)
	wantStatus(t, r, http.StatusCreated)
	if m := r.json(t); m["type"] != "Unisolate" || m["scope"] != nil {
		t.Errorf("unisolate answered %v", m)
	}
	wantAPIError(t, post(machineWS, "unisolate", `{"Comment":"release"}`), 400, "ActiveRequestAlreadyExists")

	wantAPIError(t, post(machineWS, "runAntiVirusScan", `{"Comment":"scan"}`), 400, "MissingRequiredParameter")
	wantAPIError(t, post(machineWS, "runAntiVirusScan", `{"ScanType":"Quick"}`), 400, "MissingRequiredParameter")
	wantAPIError(t, post(machineWS, "runAntiVirusScan", `{"Comment":"scan","ScanType":"Deep"}`), 400, "InvalidRequestBody")
	r = post(machineWS, "runAntiVirusScan", `{"Comment":"scan","ScanType":"Quick"}`)
	wantStatus(t, r, http.StatusCreated)
	if m := r.json(t); m["type"] != "RunAntiVirusScan" || m["scope"] != "Quick" {
		t.Errorf("scan answered %v", m)
	}
	wantAPIError(t, post(machineWS, "runAntiVirusScan", `{"Comment":"scan","ScanType":"Full"}`), 400, "ActiveRequestAlreadyExists")

	for _, a := range []struct{ path, typ string }{
		{"restrictCodeExecution", "RestrictCodeExecution"},
		{"unrestrictCodeExecution", "UnrestrictCodeExecution"},
	} {
		r = post(machineWS, a.path, `{"Comment":"apps"}`)
		wantStatus(t, r, http.StatusCreated)
		if m := r.json(t); m["type"] != a.typ {
			t.Errorf("%s answered type %v", a.path, m["type"])
		}
		wantAPIError(t, post(machineWS, a.path, `{"Comment":"apps"}`), 400, "ActiveRequestAlreadyExists")
		wantAPIError(t, post(machineWS, a.path, `{"comment":"apps"}`), 400, "InvalidRequestBody")
	}
	// Paths are spelled exactly as documented.
	wantAPIError(t, post(machineWS, "collectinvestigationpackage", `{"Comment":"x"}`), 404, "NotFound")

	b.clock.Advance(7 * time.Second)
	wantStatus(t, post(machineWS, "isolate", `{"Comment":"again","IsolationType":"Full"}`), http.StatusCreated)
}

func TestOtherActionsNeedTheirPermission(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *defendertest.Options) {
		o.Roles = []string{defendertest.RoleCollectForensics, defendertest.RoleReadAll}
	})
	tok := b.token(t)
	for action, body := range map[string]string{
		"isolate":               `{"Comment":"x","IsolationType":"Full"}`,
		"runAntiVirusScan":      `{"Comment":"x","ScanType":"Quick"}`,
		"restrictCodeExecution": `{"Comment":"x"}`,
	} {
		wantAPIError(t, b.api(t, tok, http.MethodPost, "/api/machines/"+machineWS+"/"+action, body), 403, "Forbidden")
	}
	wantStatus(t, b.collect(t, tok, machineWS, "x"), http.StatusCreated)
}

func TestCancel(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tok := b.token(t)
	id := b.mustCollect(t, tok, machineWS)
	path := "/api/machineactions/" + id + "/cancel"

	wantAPIError(t, b.api(t, tok, http.MethodPost, path, `{"comment":"x"}`), 400, "InvalidRequestBody")
	b.clock.Advance(time.Second)
	r := b.api(t, tok, http.MethodPost, path, `{"Comment":"false positive"}`)
	wantStatus(t, r, http.StatusOK)
	m := r.json(t)
	if m["status"] != "Cancelled" || m["cancellationComment"] != "false positive" || m["cancellationRequestor"] != testClient {
		t.Errorf("cancel answered %v", m)
	}
	if s, _ := m["cancellationDateTimeUtc"].(string); !mdeTimeRE.MatchString(s) || s != m["lastUpdateDateTimeUtc"] {
		t.Errorf("cancellationDateTimeUtc = %v, lastUpdateDateTimeUtc = %v", m["cancellationDateTimeUtc"], m["lastUpdateDateTimeUtc"])
	}
	b.clock.Advance(30 * time.Minute) // stays Cancelled
	if got := b.api(t, tok, http.MethodGet, "/api/machineactions/"+id, "").json(t)["status"]; got != "Cancelled" {
		t.Errorf("status after 30 minutes = %v", got)
	}
	wantAPIError(t, b.api(t, tok, http.MethodPost, path, `{"Comment":"again"}`), 400, "BadRequest")
	wantAPIError(t, b.api(t, tok, http.MethodPost, "/api/machineactions/"+"00000000-0000-4000-8000-000000000000/cancel", `{"Comment":"x"}`), 404, "ResourceNotFound")
	wantStatus(t, b.collect(t, tok, machineWS, "after cancel"), http.StatusCreated)
}

// --- machine actions list ---------------------------------------------------------------------

func TestListMachineActions(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *defendertest.Options) { o.Machines[2].FinalStatus = "Failed" })
	tok := b.token(t)
	id1 := b.mustCollect(t, tok, machineWS) // t0
	b.clock.Advance(time.Second)
	r := b.api(t, tok, http.MethodPost, "/api/machines/"+machineWS+"/isolate", `{"Comment":"x","IsolationType":"Full"}`)
	wantStatus(t, r, http.StatusCreated)
	id2 := r.json(t)["id"].(string) // t0+1s
	b.clock.Advance(time.Second)
	id3 := b.mustCollect(t, tok, machineSrv) // t0+2s
	b.clock.Advance(6 * time.Second)         // t0+8s: id1 and id2 Succeeded, id3 InProgress
	id4 := b.mustCollect(t, tok, machineWS)  // Pending

	list := func(query string) []string {
		t.Helper()
		r := b.api(t, tok, http.MethodGet, "/api/machineactions"+query, "")
		wantStatus(t, r, http.StatusOK)
		var body struct {
			Context string                       `json:"@odata.context"`
			Value   []defendertest.MachineAction `json:"value"`
		}
		if err := json.Unmarshal(r.body, &body); err != nil {
			t.Fatal(err)
		}
		if body.Context != b.srv.URL+"/api/$metadata#MachineActions" {
			t.Errorf("@odata.context = %q", body.Context)
		}
		if r.header.Get("OData-Version") != "4.0" {
			t.Errorf("OData-Version = %q", r.header.Get("OData-Version"))
		}
		ids := []string{}
		for _, a := range body.Value {
			ids = append(ids, a.ID)
		}
		return ids
	}
	q := func(filter string) string { return "?$filter=" + url.QueryEscape(filter) }
	cases := []struct {
		query string
		want  []string
	}{
		{"", []string{id4, id3, id2, id1}},
		{q("machineId eq '" + machineWS + "'"), []string{id4, id2, id1}},
		{q("machineId eq '" + machineWS + "' and type eq 'CollectInvestigationPackage'"), []string{id4, id1}},
		{q("status eq 'Succeeded'"), []string{id2, id1}},
		{q("(status eq 'Pending' or status eq 'InProgress')"), []string{id4, id3}},
		{q("machineId eq '" + machineWS + "' and (status eq 'Pending' or status eq 'InProgress')"), []string{id4}},
		{q("type eq 'CollectInvestigationPackage' and not (status eq 'Pending')"), []string{id3, id1}},
		{q("requestor eq '" + testClient + "'"), []string{id4, id3, id2, id1}},
		{q("requestor eq 'Analyst@contoso.com'"), []string{}},
		{q("type eq 'collectinvestigationpackage'"), []string{}},
		{q("id eq '" + id2 + "'"), []string{id2}},
		{q("creationDateTimeUtc gt 2025-03-04T10:00:01Z"), []string{id4, id3}},
		{q("creationDateTimeUtc ge 2025-03-04T10:00:01Z"), []string{id4, id3, id2}},
		{"?$top=2", []string{id4, id3}},
		{"?$top=2&$skip=1", []string{id3, id2}},
		{"?$filter=machineId%20eq%20%27" + machineWS + "%27&$top=2", []string{id4, id2}},
		{"?$filter=machineId+eq+'" + machineWS + "'+and+type+eq+'Isolate'", []string{id2}},
	}
	for _, c := range cases {
		if got := list(c.query); !slices.Equal(got, c.want) {
			t.Errorf("GET /api/machineactions%s = %v, want %v", c.query, got, c.want)
		}
	}

	for _, bad := range []string{
		q("lastUpdateDateTimeUtc gt 2025-01-01T00:00:00Z"),
		q("machineId eq"),
		q("machineId eq 'x' and"),
		q("machineId = 'x'"),
		q("status eq Pending"),
		q("(status eq 'Pending'"),
		q("machineId gt 'a'"),
		"?$orderby=creationDateTimeUtc",
		"?$top=10001",
		"?$top=-1",
		"?$top=two",
	} {
		wantAPIError(t, b.api(t, tok, http.MethodGet, "/api/machineactions"+bad, ""), http.StatusBadRequest, "ODataError")
	}

	wantAPIError(t, b.api(t, tok, http.MethodGet, "/api/machineactions/00000000-0000-4000-8000-000000000000", ""), 404, "ResourceNotFound")
	r = b.api(t, tok, http.MethodGet, "/api/machineactions/"+id1, "")
	wantStatus(t, r, http.StatusOK)
	if !bytes.HasPrefix(r.body, []byte(`{"@odata.context":"`+b.srv.URL+`/api/$metadata#MachineActions/$entity"`)) {
		t.Errorf("single action body: %s", r.body)
	}
}

func TestListPaging(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *defendertest.Options) { o.PageSize = 2 })
	tok := b.token(t)
	var ids []string
	for _, m := range []string{machineWS, machineWSOld, machineSrv} {
		ids = append(ids, b.mustCollect(t, tok, m))
		b.clock.Advance(time.Second)
	}
	r := b.api(t, tok, http.MethodGet, "/api/machineactions?$filter="+url.QueryEscape("type eq 'CollectInvestigationPackage'"), "")
	wantStatus(t, r, http.StatusOK)
	m := r.json(t)
	if n := len(m["value"].([]any)); n != 2 {
		t.Fatalf("first page has %d items, want 2", n)
	}
	next, _ := m["@odata.nextLink"].(string)
	if !strings.HasPrefix(next, b.srv.URL+"/api/machineactions?") {
		t.Fatalf("@odata.nextLink = %q", next)
	}
	r = b.api(t, tok, http.MethodGet, strings.TrimPrefix(next, b.srv.URL), "")
	wantStatus(t, r, http.StatusOK)
	m = r.json(t)
	page2 := m["value"].([]any)
	if len(page2) != 1 || page2[0].(map[string]any)["id"] != ids[0] || m["@odata.nextLink"] != nil {
		t.Errorf("second page = %s", r.body)
	}
}

func TestLegacyListTimeKey(t *testing.T) {
	t.Parallel()
	for _, legacy := range []bool{false, true} {
		t.Run(fmt.Sprint("legacy=", legacy), func(t *testing.T) {
			t.Parallel()
			b := setup(t, func(o *defendertest.Options) { o.LegacyListTimeKey = legacy })
			tok := b.token(t)
			id := b.mustCollect(t, tok, machineWS)
			var list struct{ Value []map[string]any }
			_ = json.Unmarshal(b.api(t, tok, http.MethodGet, "/api/machineactions", "").body, &list)
			item := list.Value[0]
			_, hasNew := item["lastUpdateDateTimeUtc"]
			old, hasOld := item["lastUpdateTimeUtc"]
			if hasNew == legacy || hasOld != legacy {
				t.Errorf("list item keys: lastUpdateDateTimeUtc %v, lastUpdateTimeUtc %v", hasNew, hasOld)
			}
			if legacy && !mdeTimeRE.MatchString(old.(string)) {
				t.Errorf("lastUpdateTimeUtc = %v", old)
			}
			single := b.api(t, tok, http.MethodGet, "/api/machineactions/"+id, "").json(t)
			if _, ok := single["lastUpdateDateTimeUtc"]; !ok {
				t.Error("single entity lacks lastUpdateDateTimeUtc")
			}
			if _, ok := single["lastUpdateTimeUtc"]; ok {
				t.Error("single entity has lastUpdateTimeUtc")
			}
		})
	}
}

// --- machines -----------------------------------------------------------------------------------

func TestGetMachine(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tok := b.token(t)
	r := b.api(t, tok, http.MethodGet, "/api/machines/"+machineWS, "")
	wantStatus(t, r, http.StatusOK)
	if ct := r.header.Get("Content-Type"); ct != defendertest.ODataContentType {
		t.Errorf("Content-Type = %q", ct)
	}
	m := r.json(t)
	for _, k := range []string{"@odata.context", "id", "computerDnsName", "firstSeen", "lastSeen", "osPlatform",
		"healthStatus", "riskScore", "exposureLevel", "deviceValue", "rbacGroupName", "rbacGroupId", "machineTags",
		"onboardingStatus", "aadDeviceId", "isAadJoined", "ipAddresses", "lastIpAddress", "osBuild", "version"} {
		if _, ok := m[k]; !ok {
			t.Errorf("machine lacks %q", k)
		}
	}
	if m["@odata.context"] != b.srv.URL+"/api/$metadata#Machines/$entity" {
		t.Errorf("@odata.context = %v", m["@odata.context"])
	}
	want := map[string]any{
		"id": machineWS, "computerDnsName": "ws-0142.corp.example.com", "osPlatform": "Windows11",
		"healthStatus": "Active", "riskScore": "Medium", "rbacGroupName": "Workstations", "rbacGroupId": float64(41),
		"onboardingStatus": "Onboarded", "aadDeviceId": nil, "isAadJoined": false,
	}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s = %#v, want %#v", k, m[k], v)
		}
	}
	if tags, _ := m["machineTags"].([]any); len(tags) != 1 || tags[0] != "workstation" {
		t.Errorf("machineTags = %v", m["machineTags"])
	}
	if s, _ := m["lastSeen"].(string); s != "2025-03-04T09:00:00.0000000Z" {
		t.Errorf("lastSeen = %v", m["lastSeen"])
	}

	dc := b.api(t, tok, http.MethodGet, "/api/machines/"+machineDC, "").json(t)
	if dc["rbacGroupName"] != nil || dc["rbacGroupId"] != float64(0) || dc["riskScore"] != "None" {
		t.Errorf("defaults: rbacGroupName %v, rbacGroupId %v, riskScore %v", dc["rbacGroupName"], dc["rbacGroupId"], dc["riskScore"])
	}

	// By computer name, case-insensitive, full or short: the most recently seen duplicate.
	for _, name := range []string{"ws-0142.corp.example.com", "WS-0142.Corp.Example.COM", "ws-0142", strings.ToUpper(machineWS)} {
		got := b.api(t, tok, http.MethodGet, "/api/machines/"+name, "").json(t)
		if got["id"] != machineWS {
			t.Errorf("GET /api/machines/%s = %v, want %s", name, got["id"], machineWS)
		}
	}
	msg := wantAPIError(t, b.api(t, tok, http.MethodGet, "/api/machines/nohost.corp.example.com", ""), 404, "ResourceNotFound")
	if msg != "Machine nohost.corp.example.com was not found" {
		t.Errorf("message = %q", msg)
	}
}

func TestListMachines(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tok := b.token(t)
	ids := func(filter string) []string {
		t.Helper()
		r := b.api(t, tok, http.MethodGet, "/api/machines?$filter="+url.QueryEscape(filter), "")
		wantStatus(t, r, http.StatusOK)
		var body struct {
			Context string `json:"@odata.context"`
			Value   []struct {
				ID string `json:"id"`
			} `json:"value"`
		}
		if err := json.Unmarshal(r.body, &body); err != nil {
			t.Fatal(err)
		}
		if body.Context != b.srv.URL+"/api/$metadata#Machines" {
			t.Errorf("@odata.context = %q", body.Context)
		}
		out := []string{}
		for _, v := range body.Value {
			out = append(out, v.ID)
		}
		slices.Sort(out)
		return out
	}
	sorted := func(s ...string) []string { slices.Sort(s); return s }
	cases := []struct {
		filter string
		want   []string
	}{
		{"computerDnsName eq 'ws-0142.corp.example.com'", sorted(machineWS, machineWSOld)}, // re-onboarded duplicates
		{"computerDnsName eq 'WS-0142.CORP.EXAMPLE.COM'", sorted(machineWS, machineWSOld)},
		{"computerDnsName eq 'nohost.corp.example.com'", []string{}},
		{"startswith(computerDnsName,'srv-')", []string{machineSrv}},
		{"startswith(computerDnsName, 'ws-')", sorted(machineWS, machineWSOld)},
		{"machineTags/any(tag: tag eq 'domain-controller')", []string{machineDC}},
		{"computerDnsName eq 'ws-0142.corp.example.com' and healthStatus eq 'Active'", []string{machineWS}},
		{"id eq '" + machineSrv + "'", []string{machineSrv}},
		{"rbacGroupId eq 42", []string{machineSrv}},
		{"lastSeen gt 2025-03-01T00:00:00Z", sorted(machineWS, machineSrv, machineDC)},
		{"deviceValue eq 'High' or osPlatform eq 'Windows11'", sorted(machineWS, machineWSOld, machineSrv, machineDC)},
	}
	for _, c := range cases {
		if got := ids(c.filter); !slices.Equal(got, c.want) {
			t.Errorf("$filter=%s: got %v, want %v", c.filter, got, c.want)
		}
	}
	if n := len(b.api(t, tok, http.MethodGet, "/api/machines", "").json(t)["value"].([]any)); n != 4 {
		t.Errorf("unfiltered list has %d machines", n)
	}
	for _, bad := range []string{"hostname eq 'x'", "machineTags eq 'x'", "startswith(rbacGroupId,'4')", "rbacGroupId eq '42'"} {
		wantAPIError(t, b.api(t, tok, http.MethodGet, "/api/machines?$filter="+url.QueryEscape(bad), ""), 400, "ODataError")
	}

	empty := setup(t, func(o *defendertest.Options) { o.Machines = nil })
	etok := empty.token(t)
	wantAPIError(t, empty.api(t, etok, http.MethodGet, "/api/machines", ""), 404, "ResourceNotFound")
	empty.sim.AddMachine(defendertest.Machine{ComputerDNSName: "new-host.corp.example.com"})
	r := empty.api(t, etok, http.MethodGet, "/api/machines", "")
	wantStatus(t, r, http.StatusOK)
	id := r.json(t)["value"].([]any)[0].(map[string]any)["id"].(string)
	if !machineIDR.MatchString(id) {
		t.Errorf("generated machine id %q is not 40 hex", id)
	}
}

// --- investigation package -------------------------------------------------------------------

func TestPackageURIAndDownload(t *testing.T) {
	t.Parallel()
	pkg := []byte("PK\x03\x04 not really a zip, but the bytes the test expects")
	b := setup(t, func(o *defendertest.Options) { o.PackageBytes = pkg })
	tok := b.token(t)
	id := b.mustCollect(t, tok, machineWS)
	path := "/api/machineactions/" + id + "/getPackageUri"

	wantAPIError(t, b.api(t, tok, http.MethodGet, path, ""), http.StatusNotFound, "ResourceNotFound") // call 1, Pending
	b.clock.Advance(7 * time.Second)                                                                  // Succeeded

	r := b.api(t, tok, http.MethodGet, path, "") // call 2
	wantStatus(t, r, http.StatusOK)
	if ct := r.header.Get("Content-Type"); ct != defendertest.ODataContentType {
		t.Errorf("Content-Type = %q", ct)
	}
	m := r.json(t)
	if m["@odata.context"] != b.srv.URL+"/api/$metadata#Edm.String" {
		t.Errorf("@odata.context = %v", m["@odata.context"])
	}
	value := m["value"].(string)
	if !strings.HasPrefix(value, `"`) || !strings.HasSuffix(value, `"`) {
		t.Fatalf("value %q lacks the embedded quotes of Microsoft's sample", value)
	}
	if !bytes.Contains(r.body, []byte(`"value":"\"http`)) {
		t.Errorf("raw body does not carry escaped quotes: %s", r.body)
	}
	link := strings.Trim(value, `"`)
	u, err := url.Parse(link)
	if err != nil || u.Path != "/safedownload/WDATP_Investigation_Package.zip" || u.Query().Get("token") == "" {
		t.Fatalf("package link %q", link)
	}

	// The download needs no bearer token: the URL's token is the credential.
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, link, nil)
	dl := do(t, req)
	wantStatus(t, dl, http.StatusOK)
	if !bytes.Equal(dl.body, pkg) {
		t.Errorf("downloaded %q, want %q", dl.body, pkg)
	}
	if ct := dl.header.Get("Content-Type"); ct != "application/zip" {
		t.Errorf("download Content-Type = %q", ct)
	}

	// 2 calls per minute: the third is refused until the first leaves the window.
	r = b.api(t, tok, http.MethodGet, path, "")
	wantAPIError(t, r, http.StatusTooManyRequests, "TooManyRequests")
	if ra := r.header.Get("Retry-After"); ra != "53" {
		t.Errorf("Retry-After = %q, want 53", ra)
	}

	bad := *u
	bad.RawQuery = "token=0000"
	req, _ = http.NewRequestWithContext(t.Context(), http.MethodGet, bad.String(), nil)
	wantAPIError(t, do(t, req), http.StatusForbidden, "Forbidden")

	b.clock.Advance(defendertest.PackageURLLifetime - time.Second)
	req, _ = http.NewRequestWithContext(t.Context(), http.MethodGet, link, nil)
	wantStatus(t, do(t, req), http.StatusOK)
	b.clock.Advance(time.Second)
	req, _ = http.NewRequestWithContext(t.Context(), http.MethodGet, link, nil)
	wantAPIError(t, do(t, req), http.StatusForbidden, "Forbidden")

	// After the window a new link can be fetched, and it downloads.
	r = b.api(t, tok, http.MethodGet, path, "")
	wantStatus(t, r, http.StatusOK)
	fresh := strings.Trim(r.json(t)["value"].(string), `"`)
	if fresh == link {
		t.Error("getPackageUri returned the same link twice")
	}
	req, _ = http.NewRequestWithContext(t.Context(), http.MethodGet, fresh, nil)
	wantStatus(t, do(t, req), http.StatusOK)
}

func TestPackageURIHourQuotaAndDefaultZip(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *defendertest.Options) { o.PackageURIPerMinute, o.PackageURIPerHour = 100, 3 })
	tok := b.token(t)
	id := b.mustCollect(t, tok, machineWS)
	b.clock.Advance(7 * time.Second)
	var link string
	for range 3 {
		r := b.api(t, tok, http.MethodGet, "/api/machineactions/"+id+"/getPackageUri", "")
		wantStatus(t, r, http.StatusOK)
		link = strings.Trim(r.json(t)["value"].(string), `"`)
	}
	r := b.api(t, tok, http.MethodGet, "/api/machineactions/"+id+"/getPackageUri", "")
	wantAPIError(t, r, http.StatusTooManyRequests, "TooManyRequests")
	if ra := r.header.Get("Retry-After"); ra != "3600" {
		t.Errorf("Retry-After = %q, want 3600", ra)
	}
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, link, nil)
	dl := do(t, req)
	wantStatus(t, dl, http.StatusOK)
	if !bytes.HasPrefix(dl.body, []byte("PK\x03\x04")) {
		t.Errorf("default package is not a zip: % x", dl.body[:min(8, len(dl.body))])
	}
}

func TestPackageURIOnlyForSucceededCollections(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *defendertest.Options) {
		o.Machines[2].FinalStatus = "Failed"
		o.PackageURIPerMinute = 100
	})
	tok := b.token(t)
	failed := b.mustCollect(t, tok, machineSrv)
	r := b.api(t, tok, http.MethodPost, "/api/machines/"+machineWS+"/isolate", `{"Comment":"x","IsolationType":"Full"}`)
	isolate := r.json(t)["id"].(string)
	b.clock.Advance(30 * time.Minute)
	for _, id := range []string{failed, isolate, "00000000-0000-4000-8000-000000000000"} {
		wantAPIError(t, b.api(t, tok, http.MethodGet, "/api/machineactions/"+id+"/getPackageUri", ""), 404, "ResourceNotFound")
	}
}

// --- quotas ---------------------------------------------------------------------------------------

func TestQuotaPerMinute(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tok := b.token(t)
	path := "/api/machines/" + machineWS
	for i := range 100 {
		if i == 1 {
			b.clock.Advance(10 * time.Second)
		}
		wantStatus(t, b.api(t, tok, http.MethodGet, path, ""), http.StatusOK)
	}
	r := b.api(t, tok, http.MethodGet, path, "")
	wantAPIError(t, r, http.StatusTooManyRequests, "TooManyRequests")
	if ra := r.header.Get("Retry-After"); ra != "50" {
		t.Errorf("Retry-After = %q, want 50 (the first call leaves the window at +60s, now is +10s)", ra)
	}
	// Other API groups have their own quota.
	wantStatus(t, b.api(t, tok, http.MethodGet, "/api/machineactions", ""), http.StatusOK)
	wantStatus(t, b.collect(t, tok, machineSrv, "x"), http.StatusCreated)
	// Refused calls do not count; the window slides.
	b.clock.Advance(49 * time.Second)
	r = b.api(t, tok, http.MethodGet, path, "")
	wantAPIError(t, r, http.StatusTooManyRequests, "TooManyRequests")
	if ra := r.header.Get("Retry-After"); ra != "1" {
		t.Errorf("Retry-After = %q, want 1", ra)
	}
	b.clock.Advance(time.Second)
	wantStatus(t, b.api(t, tok, http.MethodGet, path, ""), http.StatusOK)
	wantAPIError(t, b.api(t, tok, http.MethodGet, path, ""), http.StatusTooManyRequests, "TooManyRequests")
}

func TestQuotaPerHourAndActions(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *defendertest.Options) { o.QuotaPerMinute, o.QuotaPerHour = 5, 8 })
	tok := b.token(t)
	machines := []string{machineWS, machineWSOld, machineSrv, machineDC}
	// Action POSTs count whatever their answer: 201 or 400 ActiveRequestAlreadyExists.
	for i := range 5 {
		r := b.collect(t, tok, machines[i%4], "x")
		if r.status != http.StatusCreated && r.status != http.StatusBadRequest {
			t.Fatalf("call %d: %d %s", i, r.status, r.body)
		}
	}
	r := b.collect(t, tok, machineWS, "x")
	wantAPIError(t, r, http.StatusTooManyRequests, "TooManyRequests")
	if ra := r.header.Get("Retry-After"); ra != "60" {
		t.Errorf("Retry-After = %q, want 60", ra)
	}
	b.clock.Advance(time.Minute)
	for range 3 {
		if r := b.collect(t, tok, machineWS, "x"); r.status == http.StatusTooManyRequests {
			t.Fatalf("refused within quota: %s", r.body)
		}
	}
	r = b.collect(t, tok, machineWS, "x")
	wantAPIError(t, r, http.StatusTooManyRequests, "TooManyRequests")
	if ra := r.header.Get("Retry-After"); ra != "3540" {
		t.Errorf("Retry-After = %q, want 3540 (hour window)", ra)
	}
}

// --- faults ---------------------------------------------------------------------------------------

func TestFaultStatus(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tok := b.token(t)
	b.sim.InjectFault(defendertest.Fault{Method: "POST", PathPrefix: "/api/machines/", PathContains: "collect", Status: 503, RetryAfter: 7, Times: 1})
	b.sim.InjectFault(defendertest.Fault{PathPrefix: "/api/machineactions", Status: 500, Body: `{"error":{"code":"InternalServerError","message":"boom","target":"t"}}`, Times: 2})

	wantStatus(t, b.api(t, tok, http.MethodGet, "/api/machines/"+machineWS, ""), http.StatusOK) // method differs
	r := b.collect(t, tok, machineWS, "x")
	wantAPIError(t, r, http.StatusServiceUnavailable, "ServiceUnavailable")
	if r.header.Get("Retry-After") != "7" {
		t.Errorf("Retry-After = %q", r.header.Get("Retry-After"))
	}
	wantStatus(t, b.collect(t, tok, machineWS, "x"), http.StatusCreated) // Times: 1 used up

	for range 2 {
		r = b.api(t, tok, http.MethodGet, "/api/machineactions", "")
		wantStatus(t, r, http.StatusInternalServerError)
		if !strings.Contains(string(r.body), "boom") {
			t.Errorf("fault body = %s", r.body)
		}
	}
	wantStatus(t, b.api(t, tok, http.MethodGet, "/api/machineactions", ""), http.StatusOK)

	b.sim.InjectFault(defendertest.Fault{PathPrefix: "/" + testTenant + "/oauth2", Status: 503})
	wantTokenError(t, b.postForm(t, v2Path(), secretForm(apiScope)), 503, "temporarily_unavailable", 90033)
	b.sim.ClearFaults()
	wantStatus(t, b.postForm(t, v2Path(), secretForm(apiScope)), http.StatusOK)

	var faulted int
	for _, req := range b.sim.Requests() {
		if req.Status == 503 || req.Status == 500 {
			faulted++
		}
	}
	if faulted != 4 {
		t.Errorf("request log holds %d faulted requests, want 4", faulted)
	}
}

func TestFaultDelayHonoursContext(t *testing.T) {
	t.Parallel()
	t.Run("ServeHTTP returns when the request context ends", func(t *testing.T) {
		t.Parallel()
		sim := defendertest.New(defendertest.Options{TenantID: testTenant, ClientID: testClient, ClientSecret: testSecret})
		sim.InjectFault(defendertest.Fault{PathPrefix: "/api/", Delay: time.Hour})
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		rec := httptest.NewRecorder()
		done := make(chan struct{})
		go func() {
			defer close(done)
			sim.ServeHTTP(rec, httptest.NewRequestWithContext(ctx, http.MethodGet, "/api/machines", nil))
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("ServeHTTP still waits on a one-hour delay after its context ended")
		}
		if rec.Body.Len() != 0 {
			t.Errorf("answered %d %s after the context ended", rec.Code, rec.Body)
		}
		if reqs := sim.Requests(); len(reqs) != 1 || reqs[0].Status != 0 {
			t.Errorf("request log = %+v, want one unanswered request", reqs)
		}
	})
	t.Run("client timeout over HTTP", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		tok := b.token(t)
		// If the handler ignored the context, the server's Close in Cleanup would block for an hour.
		b.sim.InjectFault(defendertest.Fault{PathPrefix: "/api/machines/", Delay: time.Hour})
		ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, b.srv.URL+"/api/machines/"+machineWS, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		res, err := http.DefaultClient.Do(req)
		if err == nil {
			res.Body.Close()
			t.Fatalf("answered %d during a one-hour delay", res.StatusCode)
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("error = %v, want a deadline", err)
		}
	})
	t.Run("short delay then normal handling", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		tok := b.token(t)
		b.sim.InjectFault(defendertest.Fault{PathPrefix: "/api/", Delay: time.Millisecond, Times: 1})
		wantStatus(t, b.api(t, tok, http.MethodGet, "/api/machines/"+machineWS, ""), http.StatusOK)
	})
}

// TestFaultLate: a Late delay is processed after the client has given up,
// as a slow service does: the action exists though its answer was lost.
func TestFaultLate(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tok := b.token(t)
	b.sim.InjectFault(defendertest.Fault{Method: http.MethodPost, PathContains: "collectInvestigationPackage", Delay: 300 * time.Millisecond, Late: true, Times: 1})
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, b.srv.URL+"/api/machines/"+machineWS+"/collectInvestigationPackage",
		strings.NewReader(`{"Comment":"late"}`))
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	if res, err := http.DefaultClient.Do(req); err == nil {
		res.Body.Close()
		t.Fatalf("answered %d before the delay ended", res.StatusCode)
	}
	testkit.WaitUntil(t, 10*time.Second, "the late request to create its action", func() bool {
		for _, a := range b.sim.Actions() {
			if a.RequestorComment == "late" {
				return true
			}
		}
		return false
	})
}

func TestFaultDrop(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tok := b.token(t)
	b.sim.InjectFault(defendertest.Fault{PathContains: "collectInvestigationPackage", Drop: true})
	body := `{"Comment":"x"}`
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, b.srv.URL+"/api/machines/"+machineWS+"/collectInvestigationPackage", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	res, err := http.DefaultClient.Do(req)
	if err == nil {
		res.Body.Close()
		t.Fatalf("got %d, want a dropped connection", res.StatusCode)
	}
	var dropped int
	for _, r := range b.sim.Requests() {
		if r.Path == "/api/machines/"+machineWS+"/collectInvestigationPackage" && r.Status == 0 {
			dropped++
		}
	}
	if dropped == 0 {
		t.Error("the dropped request is not in the log")
	}
	if n := len(b.sim.Actions()); n != 0 {
		t.Errorf("a dropped request created %d actions", n)
	}
	b.sim.ClearFaults()
	wantStatus(t, b.collect(t, tok, machineWS, "x"), http.StatusCreated)
}

// --- request log ---------------------------------------------------------------------------------

func TestRequestLogKeepsNoSecrets(t *testing.T) {
	t.Parallel()
	ck := testCert()
	b := setup(t, func(o *defendertest.Options) { o.Certificate = ck.cert })
	tok := b.token(t)
	assertion := sign(t, jwt.SigningMethodRS256, map[string]string{"x5t": x5t(ck.cert)}, b.assertionClaims(), ck.key)
	wantStatus(t, b.postForm(t, v2Path(), assertionForm(assertion)), http.StatusOK)
	id := b.mustCollect(t, tok, machineWS)
	wantStatus(t, b.api(t, "", http.MethodGet, "/api/machines/"+machineWS, ""), http.StatusUnauthorized)
	b.clock.Advance(7 * time.Second)
	link := strings.Trim(b.api(t, tok, http.MethodGet, "/api/machineactions/"+id+"/getPackageUri", "").json(t)["value"].(string), `"`)
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, link, nil)
	wantStatus(t, do(t, req), http.StatusOK)
	dlToken, _ := url.Parse(link)

	reqs := b.sim.Requests()
	dump := fmt.Sprintf("%+v %s", reqs, func() string {
		var s strings.Builder
		for _, r := range reqs {
			s.Write(r.Body)
		}
		return s.String()
	}())
	for name, secret := range map[string]string{
		"access token": tok, "client secret": testSecret, "url-encoded secret": url.QueryEscape(testSecret),
		"assertion": assertion, "download token": dlToken.Query().Get("token"),
	} {
		if strings.Contains(dump, secret) {
			t.Errorf("request log contains the %s", name)
		}
	}

	var sawCollect bool
	for _, r := range reqs {
		if strings.HasSuffix(r.Path, "/collectInvestigationPackage") {
			sawCollect = true
			if !r.Authorized || r.Status != http.StatusCreated || r.UserAgent != "responder/test" ||
				r.ContentType != "application/json" || !strings.Contains(string(r.Body), "Collect forensics due to alert") {
				t.Errorf("collect log entry = %+v", r)
			}
			if !r.Time.Equal(b.t0) {
				t.Errorf("log time = %v, want the simulator clock %v", r.Time, b.t0)
			}
		}
		if r.Method == http.MethodGet && r.Path == "/api/machines/"+machineWS && (r.Authorized || r.Status != 401) {
			t.Errorf("unauthenticated log entry = %+v", r)
		}
		if strings.HasSuffix(r.Path, "/token") && !strings.Contains(string(r.Body), "grant_type=client_credentials") {
			t.Errorf("token request body lost its non-secret fields: %s", r.Body)
		}
	}
	if !sawCollect {
		t.Error("collect not logged")
	}
	b.sim.ClearRequests()
	if n := len(b.sim.Requests()); n != 0 {
		t.Errorf("%d requests after ClearRequests", n)
	}
}

// --- concurrency, standalone serving, dev mode ----------------------------------------------

func TestConcurrentCollectCreatesOneAction(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tok := b.token(t)
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		answers = map[int]int{}
	)
	for range 20 {
		wg.Go(func() {
			req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, b.srv.URL+"/api/machines/"+machineWS+"/collectInvestigationPackage", strings.NewReader(`{"Comment":"x"}`))
			req.Header.Set("Authorization", "Bearer "+tok)
			req.Header.Set("Content-Type", "application/json")
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			res.Body.Close()
			mu.Lock()
			answers[res.StatusCode]++
			mu.Unlock()
		})
		wg.Go(func() {
			_ = b.sim.Actions()
			_ = b.sim.Requests()
		})
	}
	wg.Wait()
	if answers[http.StatusCreated] != 1 || answers[http.StatusBadRequest] != 19 {
		t.Errorf("answers = %v, want one 201 and nineteen 400", answers)
	}
}

func TestServeStandalone(t *testing.T) {
	t.Parallel()
	sim := defendertest.New(defendertest.DevOptions())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- sim.Serve(ctx, ln) }()

	base := "http://" + ln.Addr().String()
	form := url.Values{
		"grant_type": {"client_credentials"}, "client_id": {defendertest.DevClientID},
		"client_secret": {defendertest.DevClientSecret}, "scope": {apiScope},
	}
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, base+"/"+defendertest.DevTenantID+"/oauth2/v2.0/token", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r := do(t, req)
	wantStatus(t, r, http.StatusOK)
	tok := r.json(t)["access_token"].(string)
	req, _ = http.NewRequestWithContext(t.Context(), http.MethodGet, base+"/api/machines?$filter="+url.QueryEscape("computerDnsName eq 'ws-0142.corp.example.com'"), nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	r = do(t, req)
	wantStatus(t, r, http.StatusOK)
	if n := len(r.json(t)["value"].([]any)); n != 2 {
		t.Errorf("dev ws-0142 has %d machines, want 2 (current and stale duplicate)", n)
	}
	// Serve set the URL before it served the first request.
	if got := sim.URL(); got != base {
		t.Errorf("URL() = %q, want %q", got, base)
	}
	if got := sim.TokenURL(); got != base+"/"+defendertest.DevTenantID+"/oauth2/v2.0/token" {
		t.Errorf("TokenURL() = %q", got)
	}

	cancel()
	if err := <-done; err != nil {
		t.Errorf("Serve returned %v after ctx ended, want nil", err)
	}
	if _, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		t.Error("listener still accepts after shutdown")
	}
}

func TestDevMachines(t *testing.T) {
	t.Parallel()
	ms := defendertest.DevMachines()
	if len(ms) < 3 || len(ms) > 4 {
		t.Fatalf("DevMachines() has %d machines, want 3-4", len(ms))
	}
	seen := map[string]bool{}
	tags := map[string]bool{}
	for _, m := range ms {
		if !machineIDR.MatchString(m.ID) || seen[m.ID] {
			t.Errorf("machine id %q is not a unique 40-hex id", m.ID)
		}
		seen[m.ID] = true
		if !strings.HasSuffix(m.ComputerDNSName, ".corp.example.com") {
			t.Errorf("machine name %q", m.ComputerDNSName)
		}
		for _, tag := range m.MachineTags {
			tags[tag] = true
		}
	}
	for _, want := range []string{"workstation", "domain-controller", "server"} {
		if !tags[want] {
			t.Errorf("no dev machine tagged %q", want)
		}
	}
	for _, id := range []string{defendertest.DevWorkstationID, defendertest.DevServerID, defendertest.DevDomainControllerID} {
		if !seen[id] {
			t.Errorf("DevMachines() lacks %s", id)
		}
	}
}

func TestAddMachineAndSetFinalStatusPanicOnBadStatus(t *testing.T) {
	t.Parallel()
	sim := defendertest.New(defendertest.Options{TenantID: testTenant, ClientID: testClient})
	for name, f := range map[string]func(){
		"SetFinalStatus": func() { sim.SetFinalStatus(machineWS, "Canceled") },
		"AddMachine":     func() { sim.AddMachine(defendertest.Machine{ID: machineWS, FinalStatus: "InProgress"}) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s accepted a non-terminal status", name)
				}
			}()
			f()
		}()
	}
}
