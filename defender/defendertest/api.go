package defendertest

import (
	"bytes"
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

// ODataContentType is the Content-Type of MDE success answers (reference section 2).
const ODataContentType = "application/json; odata.metadata=minimal; odata.streaming=true; charset=utf-8"

// API groups: each has its own quota per app and tenant (reference section 2).
const (
	groupActions        = "actions"        // action POSTs and cancel
	groupMachineActions = "machineactions" // GET machineactions, GET machineactions/{id}
	groupMachines       = "machines"       // GET machines, GET machines/{id}
	groupPackageURI     = "packageuri"     // getPackageUri: 2/min, 120/h
	// groupAlerts: GET and PATCH alerts/{id}. Microsoft lists each at 100/min, 1500/h without
	// saying whether they share a quota; sharing is the stricter reading.
	groupAlerts = "alerts"
)

// readRoles grant the read endpoints (any one is enough).
var readRoles = []string{RoleReadAll, RoleReadWriteAll}

// alertReadRoles grant GET alerts/{id}; alertWriteRoles PATCH alerts/{id} (either spelling).
var (
	alertReadRoles  = []string{RoleAlertReadAll, RoleAlertReadWriteAll, RoleAlertsReadWriteAll}
	alertWriteRoles = []string{RoleAlertReadWriteAll, RoleAlertsReadWriteAll}
)

// actionSpec describes one action endpoint under /api/machines/{id}/ (reference 1.1, 1.7).
type actionSpec struct {
	typ         string
	role        string
	scopeParam  string   // required body parameter that becomes the action's scope
	scopeValues []string // its allowed values (case-sensitive)
}

var actionSpecs = map[string]actionSpec{
	"collectInvestigationPackage": {typ: ActionCollectInvestigationPackage, role: RoleCollectForensics},
	"isolate":                     {typ: ActionIsolate, role: RoleIsolate, scopeParam: "IsolationType", scopeValues: []string{"Full", "Selective", "UnManagedDevice"}},
	"unisolate":                   {typ: ActionUnisolate, role: RoleIsolate},
	"runAntiVirusScan":            {typ: ActionRunAntiVirusScan, role: RoleScan, scopeParam: "ScanType", scopeValues: []string{"Quick", "Full"}},
	"restrictCodeExecution":       {typ: ActionRestrictCodeExecution, role: RoleRestrictExecution},
	"unrestrictCodeExecution":     {typ: ActionUnrestrictCodeExecution, role: RoleRestrictExecution},
}

// roleForType is the permission needed to cancel an action of a type (reference 1.6).
func roleForType(typ string) string {
	for _, spec := range actionSpecs {
		if spec.typ == typ {
			return spec.role
		}
	}
	return RoleReadWriteAll
}

// apiError is an MDE error answer.
type apiError struct {
	status int
	code   string
	msg    string
}

func (s *Simulator) serveAPI(w *recorder, r *http.Request, body []byte) {
	segs := strings.Split(strings.TrimPrefix(r.URL.Path, "/api/"), "/")
	var (
		method, group string
		allow         string // the Allow header of a 405, when not method
		roles         []string
		handle        func(tok *accessToken, now time.Time) *apiError
	)
	switch {
	case len(segs) == 1 && segs[0] == "machines":
		method, group, roles = http.MethodGet, groupMachines, readRoles
		handle = func(_ *accessToken, now time.Time) *apiError { return s.listMachines(w, r) }
	case len(segs) == 2 && segs[0] == "machines" && segs[1] != "":
		method, group, roles = http.MethodGet, groupMachines, readRoles
		handle = func(_ *accessToken, _ time.Time) *apiError { return s.getMachine(w, r, segs[1]) }
	case len(segs) == 3 && segs[0] == "machines" && segs[1] != "" && actionSpecs[segs[2]].typ != "":
		spec := actionSpecs[segs[2]]
		method, group, roles = http.MethodPost, groupActions, []string{spec.role}
		handle = func(tok *accessToken, now time.Time) *apiError {
			return s.createAction(w, r, body, tok, now, segs[1], spec)
		}
	case len(segs) == 1 && segs[0] == "machineactions":
		method, group, roles = http.MethodGet, groupMachineActions, readRoles
		handle = func(_ *accessToken, now time.Time) *apiError { return s.listActions(w, r, now) }
	case len(segs) == 2 && segs[0] == "machineactions" && segs[1] != "":
		method, group, roles = http.MethodGet, groupMachineActions, readRoles
		handle = func(_ *accessToken, now time.Time) *apiError { return s.getAction(w, r, segs[1], now) }
	case len(segs) == 3 && segs[0] == "machineactions" && segs[1] != "" && segs[2] == "getPackageUri":
		method, group, roles = http.MethodGet, groupPackageURI, readRoles
		handle = func(_ *accessToken, now time.Time) *apiError { return s.packageURI(w, r, segs[1], now) }
	case len(segs) == 2 && segs[0] == "alerts" && segs[1] != "" && r.Method == http.MethodPatch:
		method, group, roles = http.MethodPatch, groupAlerts, alertWriteRoles
		handle = func(tok *accessToken, now time.Time) *apiError { return s.updateAlert(w, r, body, tok, now, segs[1]) }
	case len(segs) == 2 && segs[0] == "alerts" && segs[1] != "":
		method, group, roles, allow = http.MethodGet, groupAlerts, alertReadRoles, "GET, PATCH"
		handle = func(_ *accessToken, _ time.Time) *apiError { return s.getAlert(w, r, segs[1]) }
	case len(segs) == 3 && segs[0] == "machineactions" && segs[1] != "" && segs[2] == "cancel":
		method, group = http.MethodPost, groupActions // the role depends on the action's type
		handle = func(tok *accessToken, now time.Time) *apiError {
			return s.cancelAction(w, r, body, tok, now, segs[1])
		}
	default:
		writeAPIError(w, http.StatusNotFound, "NotFound", fmt.Sprintf("No API matches the path '%s'.", r.URL.Path))
		return
	}
	if r.Method != method {
		if allow == "" {
			allow = method
		}
		w.Header().Set("Allow", allow)
		writeAPIError(w, http.StatusMethodNotAllowed, "MethodNotAllowed", fmt.Sprintf("The method '%s' is not allowed on '%s'.", r.Method, r.URL.Path))
		return
	}

	now := s.now()
	tok, aerr := s.authenticate(r, now)
	if aerr != nil {
		if aerr.status == http.StatusUnauthorized {
			w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		}
		writeAPIError(w, aerr.status, aerr.code, aerr.msg)
		return
	}
	w.authorized = true

	perMin, perHour := s.opts.QuotaPerMinute, s.opts.QuotaPerHour
	if group == groupPackageURI {
		perMin, perHour = s.opts.PackageURIPerMinute, s.opts.PackageURIPerHour
	}
	if retry, ok := s.takeQuota(tok.tenant+"|"+tok.appID+"|"+group, perMin, perHour, now); !ok {
		w.Header().Set("Retry-After", strconv.Itoa(retry))
		writeAPIError(w, http.StatusTooManyRequests, "TooManyRequests",
			fmt.Sprintf("API call quota exceeded (%d calls per minute, %d per hour for this application and tenant). Retry in %d seconds.", perMin, perHour, retry))
		return
	}
	if roles != nil && !hasAnyRole(tok.roles, roles) {
		writeAPIError(w, http.StatusForbidden, "Forbidden", missingRolesMessage(roles))
		return
	}
	if aerr := handle(tok, now); aerr != nil {
		writeAPIError(w, aerr.status, aerr.code, aerr.msg)
	}
}

func missingRolesMessage(roles []string) string {
	return fmt.Sprintf("The application does not have any of the required application permissions (%s) to access the resource.", strings.Join(roles, ", "))
}

func hasAnyRole(have, want []string) bool {
	for _, w := range want {
		if slices.Contains(have, w) {
			return true
		}
	}
	return false
}

// authenticate checks the bearer token: 401 when missing, unknown or expired; 403 when issued
// for another audience.
func (s *Simulator) authenticate(r *http.Request, now time.Time) (*accessToken, *apiError) {
	scheme, raw, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	raw = strings.TrimSpace(raw)
	if !ok || !strings.EqualFold(scheme, "Bearer") || raw == "" {
		return nil, &apiError{http.StatusUnauthorized, "Unauthorized", "Authorization header is missing or is not a Bearer token."}
	}
	s.mu.Lock()
	tok, known := s.tokens[raw]
	s.mu.Unlock()
	switch {
	case !known:
		return nil, &apiError{http.StatusUnauthorized, "Unauthorized", "The access token is invalid."}
	case !now.Before(tok.expires):
		return nil, &apiError{http.StatusUnauthorized, "Unauthorized", "The access token has expired."}
	case tok.audience != s.apiAudience:
		return nil, &apiError{http.StatusForbidden, "Forbidden",
			fmt.Sprintf("The access token audience '%s' is not valid for this API; request a token with scope '%s/.default'.", tok.audience, s.apiAudience)}
	}
	return tok, nil
}

// takeQuota counts one call against the sliding minute and hour windows of key. Over quota,
// it counts nothing and returns the seconds until enough calls leave the window.
func (s *Simulator) takeQuota(key string, perMin, perHour int, now time.Time) (int, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	calls := s.quotas[key]
	old := sort.Search(len(calls), func(i int) bool { return now.Sub(calls[i]) < time.Hour })
	calls = calls[old:]
	var wait time.Duration
	for _, q := range []struct {
		window time.Duration
		limit  int
	}{{time.Minute, perMin}, {time.Hour, perHour}} {
		first := sort.Search(len(calls), func(i int) bool { return now.Sub(calls[i]) < q.window })
		in := calls[first:]
		if len(in) >= q.limit {
			if d := in[len(in)-q.limit].Add(q.window).Sub(now); d > wait {
				wait = d
			}
		}
	}
	if wait > 0 {
		s.quotas[key] = calls
		secs := int((wait + time.Second - 1) / time.Second)
		return max(secs, 1), false
	}
	s.quotas[key] = append(calls, now)
	return 0, true
}

// createAction answers POST /api/machines/{id}/{action}.
func (s *Simulator) createAction(w http.ResponseWriter, r *http.Request, body []byte, tok *accessToken, now time.Time, machineID string, spec actionSpec) *apiError {
	params, aerr := parseActionBody(r, body, spec.scopeParam, spec.scopeValues)
	if aerr != nil {
		return aerr
	}
	requestor := s.opts.AppName
	if requestor == "" {
		requestor = tok.appID
	}
	s.mu.Lock()
	m := s.machineByIDLocked(machineID)
	if m == nil {
		s.mu.Unlock()
		return &apiError{http.StatusNotFound, "ResourceNotFound", fmt.Sprintf("Machine %s was not found", machineID)}
	}
	for _, a := range s.actions {
		if a.base.MachineID == m.ID && a.base.Type == spec.typ && !IsTerminal(a.view(now).Status) {
			s.mu.Unlock()
			return &apiError{http.StatusBadRequest, "ActiveRequestAlreadyExists", "Action is already in progress"}
		}
	}
	a := &action{
		base: MachineAction{
			ID:                    newGUID(),
			Type:                  spec.typ,
			Requestor:             requestor,
			RequestorComment:      params.comment,
			MachineID:             m.ID,
			ComputerDNSName:       m.ComputerDNSName,
			CreationDateTimeUtc:   now.UTC(),
			LastUpdateDateTimeUtc: now.UTC(),
			Scope:                 nullable(params.scope),
			RequestSource:         "PublicApi",
		},
		final:         s.finalStatusLocked(m),
		pendingFor:    s.opts.PendingFor,
		inProgressFor: s.opts.InProgressFor,
	}
	s.actions = append(s.actions, a)
	s.byID[a.base.ID] = a
	view := a.view(now)
	s.mu.Unlock()
	writeEntity(w, r, http.StatusCreated, "MachineActions/$entity", view)
	return nil
}

type actionParams struct{ comment, scope string }

// parseActionBody checks an action body: JSON, case-sensitive keys, Comment required, and
// the scope parameter (IsolationType, ScanType) when the action has one (reference 2).
func parseActionBody(r *http.Request, body []byte, scopeParam string, scopeValues []string) (actionParams, *apiError) {
	var p actionParams
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if mt != "application/json" {
		return p, &apiError{http.StatusBadRequest, "InvalidRequestBody", "The request body must be JSON sent with Content-Type: application/json."}
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil || fields == nil {
		return p, &apiError{http.StatusBadRequest, "InvalidRequestBody", "The request body is not a valid JSON object."}
	}
	var aerr *apiError
	if p.comment, aerr = requiredString(fields, "Comment"); aerr != nil {
		return p, aerr
	}
	if scopeParam != "" {
		if p.scope, aerr = requiredString(fields, scopeParam); aerr != nil {
			return p, aerr
		}
		if !slices.Contains(scopeValues, p.scope) {
			return p, &apiError{http.StatusBadRequest, "InvalidRequestBody",
				fmt.Sprintf("Invalid value '%s' for '%s'. Allowed values: %s.", p.scope, scopeParam, strings.Join(scopeValues, ", "))}
		}
	}
	return p, nil
}

func requiredString(fields map[string]json.RawMessage, key string) (string, *apiError) {
	raw, ok := fields[key]
	if !ok {
		for k := range fields {
			if strings.EqualFold(k, key) {
				return "", &apiError{http.StatusBadRequest, "InvalidRequestBody",
					fmt.Sprintf("Unknown parameter '%s'. Body parameters are case-sensitive: required parameter '%s' is missing.", k, key)}
			}
		}
		return "", &apiError{http.StatusBadRequest, "MissingRequiredParameter", fmt.Sprintf("Required parameter '%s' is missing.", key)}
	}
	var v string
	if err := json.Unmarshal(raw, &v); err != nil || v == "" {
		return "", &apiError{http.StatusBadRequest, "InvalidRequestBody", fmt.Sprintf("Parameter '%s' must be a non-empty string.", key)}
	}
	return v, nil
}

// cancelAction answers POST /api/machineactions/{id}/cancel (reference 1.6).
func (s *Simulator) cancelAction(w http.ResponseWriter, r *http.Request, body []byte, tok *accessToken, now time.Time, id string) *apiError {
	params, aerr := parseActionBody(r, body, "", nil)
	if aerr != nil {
		return aerr
	}
	requestor := s.opts.AppName
	if requestor == "" {
		requestor = tok.appID
	}
	s.mu.Lock()
	a := s.byID[strings.ToLower(id)]
	if a == nil {
		s.mu.Unlock()
		return &apiError{http.StatusNotFound, "ResourceNotFound", fmt.Sprintf("Machine action %s was not found", id)}
	}
	if role := roleForType(a.base.Type); !slices.Contains(tok.roles, role) {
		s.mu.Unlock()
		return &apiError{http.StatusForbidden, "Forbidden", missingRolesMessage([]string{role})}
	}
	if st := a.view(now).Status; IsTerminal(st) {
		s.mu.Unlock()
		return &apiError{http.StatusBadRequest, "BadRequest", fmt.Sprintf("Machine action %s is already in a final state (%s) and cannot be cancelled.", id, st)}
	}
	at := now.UTC()
	a.cancelled = true
	a.base.CancellationRequestor = &requestor
	a.base.CancellationComment = &params.comment
	a.base.CancellationDateTimeUtc = &at
	view := a.view(now)
	s.mu.Unlock()
	writeEntity(w, r, http.StatusOK, "MachineActions/$entity", view)
	return nil
}

// getAction answers GET /api/machineactions/{id}.
func (s *Simulator) getAction(w http.ResponseWriter, r *http.Request, id string, now time.Time) *apiError {
	s.mu.Lock()
	a := s.byID[strings.ToLower(id)]
	var view MachineAction
	if a != nil {
		view = a.view(now)
	}
	s.mu.Unlock()
	if a == nil {
		return &apiError{http.StatusNotFound, "ResourceNotFound", fmt.Sprintf("Machine action %s was not found", id)}
	}
	writeEntity(w, r, http.StatusOK, "MachineActions/$entity", view)
	return nil
}

// listActions answers GET /api/machineactions, newest first.
func (s *Simulator) listActions(w http.ResponseWriter, r *http.Request, now time.Time) *apiError {
	lq, aerr := parseListQuery(r, actionFields)
	if aerr != nil {
		return aerr
	}
	s.mu.Lock()
	var all []MachineAction
	for i := len(s.actions) - 1; i >= 0; i-- {
		v := s.actions[i].view(now)
		if lq.filter == nil || lq.filter(v.filterValues()) {
			all = append(all, v)
		}
	}
	s.mu.Unlock()
	sort.SliceStable(all, func(i, j int) bool { return all[i].CreationDateTimeUtc.After(all[j].CreationDateTimeUtc) })
	items, next := lq.page(len(all), s.opts.PageSize)
	var value any
	if s.opts.LegacyListTimeKey {
		list := make([]legacyActionWire, 0, len(items))
		for _, i := range items {
			list = append(list, legacyActionWire(all[i].wire()))
		}
		value = list
	} else {
		list := make([]actionWire, 0, len(items))
		for _, i := range items {
			list = append(list, all[i].wire())
		}
		value = list
	}
	writeList(w, r, "MachineActions", value, lq.nextLink(r, next))
	return nil
}

// getMachine answers GET /api/machines/{id}; id may be a computer name (reference 5).
func (s *Simulator) getMachine(w http.ResponseWriter, r *http.Request, key string) *apiError {
	s.mu.Lock()
	m := s.machineByIDOrNameLocked(key)
	var j machineJSON
	if m != nil {
		j = m.toJSON()
	}
	s.mu.Unlock()
	if m == nil {
		return &apiError{http.StatusNotFound, "ResourceNotFound", fmt.Sprintf("Machine %s was not found", key)}
	}
	writeEntity(w, r, http.StatusOK, "Machines/$entity", j)
	return nil
}

// listMachines answers GET /api/machines. Like MDE it answers 404 when the tenant has no
// machines at all (reference section 2).
func (s *Simulator) listMachines(w http.ResponseWriter, r *http.Request) *apiError {
	lq, aerr := parseListQuery(r, machineFields)
	if aerr != nil {
		return aerr
	}
	s.mu.Lock()
	empty := len(s.machines) == 0
	var all []machineJSON
	for _, m := range s.machines {
		if lq.filter == nil || lq.filter(m.filterValues()) {
			all = append(all, m.toJSON())
		}
	}
	s.mu.Unlock()
	if empty {
		return &apiError{http.StatusNotFound, "ResourceNotFound", "No machines found"}
	}
	items, next := lq.page(len(all), s.opts.PageSize)
	list := make([]machineJSON, 0, len(items))
	for _, i := range items {
		list = append(list, all[i])
	}
	writeList(w, r, "Machines", list, lq.nextLink(r, next))
	return nil
}

// packageURI answers GET /api/machineactions/{id}/getPackageUri: 404 until the collection
// Succeeded, then the download URL wrapped in literal quote characters, as Microsoft's sample
// shows (reference 1.5).
func (s *Simulator) packageURI(w http.ResponseWriter, r *http.Request, id string, now time.Time) *apiError {
	s.mu.Lock()
	a := s.byID[strings.ToLower(id)]
	if a == nil {
		s.mu.Unlock()
		return &apiError{http.StatusNotFound, "ResourceNotFound", fmt.Sprintf("Machine action %s was not found", id)}
	}
	if v := a.view(now); v.Type != ActionCollectInvestigationPackage || v.Status != StatusSucceeded {
		s.mu.Unlock()
		return &apiError{http.StatusNotFound, "ResourceNotFound", fmt.Sprintf("Investigation package for machine action %s was not found", id)}
	}
	for k, d := range s.downloads {
		if !now.Before(d.expires) {
			delete(s.downloads, k)
		}
	}
	tok := randomToken(24)
	s.downloads[tok] = download{actionID: a.base.ID, expires: now.Add(PackageURLLifetime)}
	s.mu.Unlock()
	link := requestBase(r) + "/safedownload/WDATP_Investigation_Package.zip?token=" + tok
	b := marshalNoEscape(struct {
		Context string `json:"@odata.context"`
		Value   string `json:"value"`
	}{requestBase(r) + "/api/$metadata#Edm.String", `"` + link + `"`})
	writeOData(w, http.StatusOK, b)
	return nil
}

// serveDownload answers GET /safedownload/...?token=: the token in the URL is the credential.
func (s *Simulator) serveDownload(w *recorder, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeAPIError(w, http.StatusMethodNotAllowed, "MethodNotAllowed", "Only GET is allowed.")
		return
	}
	now := s.now()
	tok := r.URL.Query().Get("token")
	s.mu.Lock()
	d, ok := s.downloads[tok]
	s.mu.Unlock()
	if tok == "" || !ok || !now.Before(d.expires) {
		writeAPIError(w, http.StatusForbidden, "Forbidden", "The download link is invalid or has expired.")
		return
	}
	w.Header().Set("Content-Type", "application/zip")
	w.Header().Set("Content-Disposition", `attachment; filename="WDATP_Investigation_Package.zip"`)
	http.ServeContent(w, r, "WDATP_Investigation_Package.zip", time.Time{}, bytes.NewReader(s.packageBytes))
}

// listQuery holds the OData options of a list request.
type listQuery struct {
	filter    predicate
	filterSrc string
	top, skip int
	hasTop    bool
}

func parseListQuery(r *http.Request, fields map[string]fieldKind) (listQuery, *apiError) {
	var lq listQuery
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return lq, &apiError{http.StatusBadRequest, "ODataError", "The query string is malformed."}
	}
	for k := range q {
		if strings.HasPrefix(k, "$") && k != "$filter" && k != "$top" && k != "$skip" {
			return lq, &apiError{http.StatusBadRequest, "ODataError", fmt.Sprintf("The query parameter '%s' is not supported.", k)}
		}
	}
	if f := q.Get("$filter"); f != "" {
		pred, err := parseFilter(f, fields)
		if err != nil {
			return lq, &apiError{http.StatusBadRequest, "ODataError", "Invalid $filter: " + err.Error()}
		}
		lq.filter, lq.filterSrc = pred, f
	}
	num := func(name string) (int, bool, *apiError) {
		v := q.Get(name)
		if v == "" {
			return 0, false, nil
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return 0, false, &apiError{http.StatusBadRequest, "ODataError", fmt.Sprintf("Invalid value '%s' for %s: a non-negative integer is required.", v, name)}
		}
		return n, true, nil
	}
	var aerr *apiError
	if lq.top, lq.hasTop, aerr = num("$top"); aerr != nil {
		return lq, aerr
	}
	if lq.hasTop && lq.top > DefaultPageSize {
		return lq, &apiError{http.StatusBadRequest, "ODataError",
			fmt.Sprintf("The limit of '%d' for Top query has been exceeded. The value from the incoming request is '%d'.", DefaultPageSize, lq.top)}
	}
	if lq.skip, _, aerr = num("$skip"); aerr != nil {
		return lq, aerr
	}
	return lq, nil
}

// page returns the indexes of the items to answer out of n, and the $skip of the next page
// (0 when there is none).
func (lq listQuery) page(n, pageSize int) ([]int, int) {
	start := min(lq.skip, n)
	end := min(start+pageSize, n)
	next := 0
	if lq.hasTop {
		end = min(start+lq.top, n)
	} else if end < n {
		next = end
	}
	idx := make([]int, 0, end-start)
	for i := start; i < end; i++ {
		idx = append(idx, i)
	}
	return idx, next
}

func (lq listQuery) nextLink(r *http.Request, next int) string {
	if next == 0 {
		return ""
	}
	link := requestBase(r) + r.URL.Path + "?"
	if lq.filterSrc != "" {
		link += "$filter=" + strings.ReplaceAll(url.QueryEscape(lq.filterSrc), "+", "%20") + "&"
	}
	return link + "$skip=" + strconv.Itoa(next)
}

// writeAPIError writes MDE's error envelope with a fresh target GUID (reference section 2).
func writeAPIError(w http.ResponseWriter, status int, code, msg string) {
	type inner struct {
		Code    string `json:"code"`
		Message string `json:"message"`
		Target  string `json:"target"`
	}
	b := marshalNoEscape(struct {
		Error inner `json:"error"`
	}{inner{code, msg, newGUID()}})
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// codeForStatus names the MDE error code of an injected fault status.
func codeForStatus(status int) string {
	switch status {
	case http.StatusBadRequest:
		return "BadRequest"
	case http.StatusUnauthorized:
		return "Unauthorized"
	case http.StatusForbidden:
		return "Forbidden"
	case http.StatusNotFound:
		return "NotFound"
	case http.StatusTooManyRequests:
		return "TooManyRequests"
	case http.StatusInternalServerError:
		return "InternalServerError"
	}
	return strings.ReplaceAll(http.StatusText(status), " ", "")
}

// writeEntity writes v as a single entity with its @odata.context first.
func writeEntity(w http.ResponseWriter, r *http.Request, status int, contextSuffix string, v any) {
	b := marshalNoEscape(v)
	ctx := marshalNoEscape(requestBase(r) + "/api/$metadata#" + contextSuffix)
	out := make([]byte, 0, len(b)+len(ctx)+20)
	out = append(out, `{"@odata.context":`...)
	out = append(out, ctx...)
	if len(b) > 2 {
		out = append(out, ',')
	}
	out = append(out, b[1:]...)
	writeOData(w, status, out)
}

func writeList(w http.ResponseWriter, r *http.Request, contextSuffix string, value any, nextLink string) {
	b := marshalNoEscape(struct {
		Context  string `json:"@odata.context"`
		Value    any    `json:"value"`
		NextLink string `json:"@odata.nextLink,omitempty"`
	}{requestBase(r) + "/api/$metadata#" + contextSuffix, value, nextLink})
	writeOData(w, http.StatusOK, b)
}

func writeOData(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", ODataContentType)
	w.Header().Set("OData-Version", "4.0")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// marshalNoEscape encodes v as JSON without HTML escaping, as .NET services answer.
func marshalNoEscape(v any) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		panic(fmt.Sprintf("defendertest: marshal %T: %v", v, err))
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}
