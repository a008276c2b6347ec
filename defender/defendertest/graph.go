package defendertest

import (
	"encoding/json"
	"fmt"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Microsoft Graph, as far as write-back needs it: POST /v1.0/security/alerts_v2/{id}/comments
// (Graph documentation, "Create comment for alert").
const (
	// DefaultGraphHost is the audience of commercial (and GCC) Microsoft Graph tokens; GCC High
	// uses https://graph.microsoft.us and DoD https://dod-graph.microsoft.us.
	DefaultGraphHost = "https://graph.microsoft.com"
	// GraphAppID is the application id of Microsoft Graph; "<id>/.default" is accepted as a
	// scope like "<GraphHost>/.default".
	GraphAppID = "00000003-0000-0000-c000-000000000000"
	// GraphContentType is the Content-Type of Graph success answers.
	GraphContentType = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"
	// GraphAlertCommentType is the @odata.type a comment body must carry.
	GraphAlertCommentType = "microsoft.graph.security.alertComment"
)

// Graph application permissions (app roles of Microsoft Graph).
const (
	RoleSecurityAlertReadAll      = "SecurityAlert.Read.All"
	RoleSecurityAlertReadWriteAll = "SecurityAlert.ReadWrite.All"
)

// DefaultGraphRoles are the Graph application permissions granted when Options.GraphRoles is
// nil.
var DefaultGraphRoles = []string{RoleSecurityAlertReadWriteAll}

// groupGraphAlerts is the quota group of the Graph comment endpoint.
const groupGraphAlerts = "graphalerts"

// SetGraphRoles replaces the Graph application permissions of the app: one application has
// different permissions on each resource. Like SetRoles, the change applies to tokens issued
// afterwards.
func (s *Simulator) SetGraphRoles(roles ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.graphRoles = slices.Clone(roles)
}

// serveGraph answers the Graph paths (/v1.0/...): only the alert comment endpoint exists.
func (s *Simulator) serveGraph(w *recorder, r *http.Request, body []byte) {
	w.Header().Set("request-id", newGUID())
	segs := strings.Split(strings.TrimPrefix(r.URL.Path, "/v1.0/"), "/")
	if len(segs) != 4 || segs[0] != "security" || segs[1] != "alerts_v2" || segs[2] == "" || segs[3] != "comments" {
		s.writeGraphError(w, r, http.StatusNotFound, "NotFound", fmt.Sprintf("Resource not found for the segment '%s'.", r.URL.Path))
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		s.writeGraphError(w, r, http.StatusMethodNotAllowed, "BadRequest", fmt.Sprintf("The method '%s' is not allowed on '%s'.", r.Method, r.URL.Path))
		return
	}
	now := s.now()
	tok, msg := s.graphAuthenticate(r, now)
	if tok == nil {
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		s.writeGraphError(w, r, http.StatusUnauthorized, "InvalidAuthenticationToken", msg)
		return
	}
	w.authorized = true
	perMin, perHour := s.opts.QuotaPerMinute, s.opts.QuotaPerHour
	if retry, ok := s.takeQuota(tok.tenant+"|"+tok.appID+"|"+groupGraphAlerts, perMin, perHour, now); !ok {
		w.Header().Set("Retry-After", strconv.Itoa(retry))
		s.writeGraphError(w, r, http.StatusTooManyRequests, "TooManyRequests",
			fmt.Sprintf("Too many requests (%d per minute, %d per hour for this application and tenant). Retry in %d seconds.", perMin, perHour, retry))
		return
	}
	if !slices.Contains(tok.roles, RoleSecurityAlertReadWriteAll) {
		s.writeGraphError(w, r, http.StatusForbidden, "Forbidden",
			fmt.Sprintf("Missing application roles. API required roles: %s. Application roles: %s.", RoleSecurityAlertReadWriteAll, strings.Join(tok.roles, ",")))
		return
	}
	s.addGraphComment(w, r, body, tok, now, segs[2])
}

// graphAuthenticate checks the bearer token of a Graph request: a known, unexpired token whose
// audience is Graph. Graph answers every failure, a token for MDE's audience included, with
// 401 InvalidAuthenticationToken; the message is returned with a nil token.
func (s *Simulator) graphAuthenticate(r *http.Request, now time.Time) (*accessToken, string) {
	scheme, raw, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	raw = strings.TrimSpace(raw)
	if !ok || !strings.EqualFold(scheme, "Bearer") || raw == "" {
		return nil, "Access token is empty."
	}
	s.mu.Lock()
	tok, known := s.tokens[raw]
	s.mu.Unlock()
	switch {
	case !known:
		return nil, "Access token validation failure. Invalid token."
	case !now.Before(tok.expires):
		return nil, "Lifetime validation failed, the token is expired."
	case tok.audience != s.graphAudience:
		return nil, "Access token validation failure. Invalid audience."
	}
	return tok, ""
}

// addGraphComment checks the body of a comment, appends it to the alert whose Graph id is id,
// and answers 200 with every comment of the alert.
func (s *Simulator) addGraphComment(w *recorder, r *http.Request, body []byte, tok *accessToken, now time.Time, id string) {
	comment, msg := parseGraphComment(r, body)
	if msg != "" {
		s.writeGraphError(w, r, http.StatusBadRequest, "BadRequest", msg)
		return
	}
	s.mu.Lock()
	a := s.alertLocked(func(a *Alert) bool { return a.GraphID == id })
	if a == nil {
		s.mu.Unlock()
		s.writeGraphError(w, r, http.StatusNotFound, "NotFound", fmt.Sprintf("Alert with id '%s' was not found.", id))
		return
	}
	a.Comments = append(a.Comments, Comment{Comment: comment, CreatedBy: tok.appID, CreatedTime: now.UTC()})
	a.LastUpdateTime = now.UTC()
	type commentWire struct {
		ODataType   string `json:"@odata.type"`
		Comment     string `json:"comment"`
		CreatedBy   string `json:"createdByDisplayName"`
		CreatedTime string `json:"createdDateTime"`
	}
	value := make([]commentWire, 0, len(a.Comments))
	for _, c := range a.Comments {
		value = append(value, commentWire{"#" + GraphAlertCommentType, c.Comment, c.CreatedBy, formatTime(c.CreatedTime)})
	}
	s.mu.Unlock()
	b := marshalNoEscape(struct {
		Context string        `json:"@odata.context"`
		Value   []commentWire `json:"value"`
	}{requestBase(r) + "/v1.0/$metadata#security/alerts_v2('" + url.PathEscape(id) + "')/comments", value})
	w.Header().Set("Content-Type", GraphContentType)
	w.Header().Set("OData-Version", "4.0")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
}

// parseGraphComment checks a comment body: JSON, @odata.type microsoft.graph.security.
// alertComment (with or without "#"), a non-empty string comment, and no other property
// (OData refuses a property its type does not define, and property names are
// case-sensitive). It returns the comment, or the message of a 400.
func parseGraphComment(r *http.Request, body []byte) (string, string) {
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if mt != "application/json" {
		return "", "The request body must be JSON sent with Content-Type: application/json."
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil || fields == nil {
		return "", "Invalid request body: the body is not a JSON object."
	}
	keys := make([]string, 0, len(fields))
	for k := range fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if k != "@odata.type" && k != "comment" {
			return "", fmt.Sprintf("The property '%s' does not exist on type '%s'. Make sure to only use property names that are defined by the type.", k, GraphAlertCommentType)
		}
	}
	var typ, comment string
	if raw, ok := fields["@odata.type"]; !ok || json.Unmarshal(raw, &typ) != nil || strings.TrimPrefix(typ, "#") != GraphAlertCommentType {
		return "", fmt.Sprintf("The body must carry \"@odata.type\": \"%s\".", GraphAlertCommentType)
	}
	if raw, ok := fields["comment"]; !ok || json.Unmarshal(raw, &comment) != nil || comment == "" {
		return "", "The property 'comment' is required and must be a non-empty string."
	}
	return comment, ""
}

// graphError is Graph's error shape.
type graphError struct {
	Error graphErrorDetail `json:"error"`
}

type graphErrorDetail struct {
	Code       string          `json:"code"`
	Message    string          `json:"message"`
	InnerError graphInnerError `json:"innerError"`
}

type graphInnerError struct {
	Date            string `json:"date"`
	RequestID       string `json:"request-id"`
	ClientRequestID string `json:"client-request-id"`
}

// writeGraphError writes Graph's error shape: {"error":{"code","message","innerError":{"date",
// "request-id","client-request-id"}}}. The request-id is the answer's request-id header.
func (s *Simulator) writeGraphError(w http.ResponseWriter, r *http.Request, status int, code, msg string) {
	reqID := w.Header().Get("request-id")
	if reqID == "" {
		reqID = newGUID()
		w.Header().Set("request-id", reqID)
	}
	clientReqID := r.Header.Get("client-request-id")
	if clientReqID == "" {
		clientReqID = reqID
	}
	b := marshalNoEscape(graphError{graphErrorDetail{code, msg,
		graphInnerError{s.now().UTC().Format("2006-01-02T15:04:05"), reqID, clientReqID}}})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}
