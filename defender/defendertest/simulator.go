package defendertest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"
)

// Defaults used when the matching Options field is zero.
const (
	// DefaultAPIHost is the token audience of the commercial MDE API. Regional and
	// api.security.microsoft.com hosts use the same audience (reference section 4).
	DefaultAPIHost = "https://api.securitycenter.microsoft.com"
	// DefaultTokenLifetime is the lifetime of an access token ("one hour", reference section 3).
	DefaultTokenLifetime = time.Hour
	// DefaultQuotaPerMinute is the per-minute quota of each API group (reference section 2).
	DefaultQuotaPerMinute = 100
	// DefaultQuotaPerHour is the per-hour quota of each API group (reference section 2).
	DefaultQuotaPerHour = 1500
	// DefaultPackageURIPerMinute is the per-minute quota of getPackageUri (reference section 1.5).
	DefaultPackageURIPerMinute = 2
	// DefaultPackageURIPerHour is the per-hour quota of getPackageUri (reference section 1.5).
	DefaultPackageURIPerHour = 120
	// DefaultPendingFor is how long a new action stays Pending.
	DefaultPendingFor = 2 * time.Second
	// DefaultInProgressFor is how long an action stays InProgress before its final status.
	DefaultInProgressFor = 5 * time.Second
	// DefaultPageSize is the largest page a list answers (MDE's maximum, reference 1.4 and 5).
	DefaultPageSize = 10000
	// PackageURLLifetime is how long a getPackageUri link can be downloaded, on the simulator
	// clock. Microsoft documents only "valid for a short time"; five minutes is our choice.
	PackageURLLifetime = 5 * time.Minute
	// AssertionClockSkew is the tolerance applied to nbf and exp of client assertions.
	AssertionClockSkew = 5 * time.Minute
	// WindowsDefenderATPAppID is the application id of the MDE resource app; "<id>/.default"
	// is accepted as a scope like "<APIHost>/.default" (reference section 3).
	WindowsDefenderATPAppID = "fc780465-2017-40d4-a0c5-307022471b92"
	// CommercialAlternateResource is the second identifier URI of the commercial MDE app,
	// used by the curl sample of Microsoft's documentation (reference section 3).
	CommercialAlternateResource = "https://securitycenter.onmicrosoft.com/windowsatpservice"
)

// Machine action types, spelled as MDE spells them.
const (
	ActionCollectInvestigationPackage = "CollectInvestigationPackage"
	ActionIsolate                     = "Isolate"
	ActionUnisolate                   = "Unisolate"
	ActionRunAntiVirusScan            = "RunAntiVirusScan"
	ActionRestrictCodeExecution       = "RestrictCodeExecution"
	ActionUnrestrictCodeExecution     = "UnrestrictCodeExecution"
)

// Machine action statuses. The terminal ones are Succeeded, Failed, TimeOut and Cancelled
// (two Ls).
const (
	StatusPending    = "Pending"
	StatusInProgress = "InProgress"
	StatusSucceeded  = "Succeeded"
	StatusFailed     = "Failed"
	StatusTimeOut    = "TimeOut"
	StatusCancelled  = "Cancelled"
)

// Application permissions (app roles of the WindowsDefenderATP app) the simulator checks.
const (
	RoleCollectForensics  = "Machine.CollectForensics"
	RoleIsolate           = "Machine.Isolate"
	RoleRestrictExecution = "Machine.RestrictExecution"
	RoleScan              = "Machine.Scan"
	RoleReadAll           = "Machine.Read.All"
	RoleReadWriteAll      = "Machine.ReadWrite.All"
	RoleAlertReadAll      = "Alert.Read.All"
	RoleAlertReadWriteAll = "Alert.ReadWrite.All"
	// RoleAlertsReadWriteAll is how the update-alert page spells RoleAlertReadWriteAll; the
	// simulator accepts either.
	RoleAlertsReadWriteAll = "Alerts.ReadWrite.All"
)

// DefaultRoles are the application permissions granted when Options.Roles is nil.
var DefaultRoles = []string{RoleCollectForensics, RoleIsolate, RoleRestrictExecution, RoleScan, RoleReadAll, RoleAlertReadWriteAll}

// IsTerminal reports whether status is one of the four terminal machine action statuses.
func IsTerminal(status string) bool {
	switch status {
	case StatusSucceeded, StatusFailed, StatusTimeOut, StatusCancelled:
		return true
	}
	return false
}

// Options configures a Simulator. The zero value of each field selects its default.
type Options struct {
	// TenantID is the only tenant the token endpoint knows (compared case-insensitively).
	TenantID string
	// ClientID is the application (client) id the token endpoint accepts.
	ClientID string
	// ClientSecret is the accepted client secret; "" means the app has no secret.
	ClientSecret string
	// Certificate, when set, makes the token endpoint accept client-assertion JWTs signed by
	// its key: RS256 with header x5t (base64url SHA-1 thumbprint) or PS256 with x5t#S256
	// (base64url SHA-256 thumbprint).
	Certificate *x509.Certificate
	// FederatedToken, when set, is accepted as the exact client_assertion value (workload
	// identity federation).
	FederatedToken string
	// APIHost is the audience the API requires; default DefaultAPIHost. For the commercial
	// host, CommercialAlternateResource is accepted as a scope too.
	APIHost string
	// AppName, when set, is written as the requestor of actions (real responses show the
	// app's display name there); default: the client id.
	AppName string
	// Roles are the application permissions consented for the app, written into each token
	// when issued. nil means DefaultRoles; an empty non-nil slice grants none.
	Roles []string
	// GraphHost is the audience the Graph endpoints require; default DefaultGraphHost. Like
	// APIHost it does not depend on the URL the simulator is served at: a client points its
	// Graph URL at the simulator and still requests the real Graph scope.
	GraphHost string
	// GraphRoles are the Microsoft Graph application permissions of the app, written into
	// Graph tokens. nil means DefaultGraphRoles; an empty non-nil slice grants none.
	GraphRoles []string
	// Alerts is the initial alert store.
	Alerts []Alert
	// DenyCollect removes Machine.CollectForensics from Roles, so collect answers 403.
	DenyCollect bool
	// TokenLifetime is the access token lifetime on the simulator clock; default 1h.
	TokenLifetime time.Duration
	// Now is the simulator clock; default time.Now.
	Now func() time.Time
	// QuotaPerMinute and QuotaPerHour are the sliding-window quotas per app+tenant, counted
	// separately for each API group (action POSTs; GET machineactions; GET machines; GET and
	// PATCH alerts; Graph alert comments);
	// defaults 100 and 1500.
	QuotaPerMinute, QuotaPerHour int
	// PackageURIPerMinute and PackageURIPerHour are the quotas of getPackageUri; defaults 2
	// and 120.
	PackageURIPerMinute, PackageURIPerHour int
	// PendingFor is how long an action stays Pending; default 2s.
	PendingFor time.Duration
	// InProgressFor is how long it then stays InProgress before its final status; default 5s.
	InProgressFor time.Duration
	// Machines is the initial machine registry.
	Machines []Machine
	// PackageBytes is the content served for package downloads; default a small valid zip.
	PackageBytes []byte
	// LegacyListTimeKey makes list responses (GET /api/machineactions) use the key
	// lastUpdateTimeUtc instead of lastUpdateDateTimeUtc, as the list examples of Microsoft's
	// documentation do (reference section 1.2). Single-entity responses keep
	// lastUpdateDateTimeUtc.
	LegacyListTimeKey bool
	// PageSize is the largest page a list answers before it adds @odata.nextLink; default
	// DefaultPageSize.
	PageSize int
}

// Request is one request received by the simulator, as kept in the request log. The
// Authorization header is never stored; client_secret, client_assertion and download token
// values are replaced by "REDACTED".
type Request struct {
	// Time is the simulator clock when the request arrived.
	Time time.Time
	// Method, Path and RawQuery describe the request line.
	Method, Path, RawQuery string
	// Body is the request body (secrets redacted).
	Body []byte
	// ContentType is the Content-Type header.
	ContentType string
	// UserAgent is the User-Agent header.
	UserAgent string
	// Status is the answered HTTP status; 0 when the connection was dropped or the client
	// went away before an answer.
	Status int
	// Authorized reports whether the request passed authentication: a known, unexpired
	// bearer token issued for the audience of the endpoint (the API's, or Graph's on /v1.0/).
	// Token requests and downloads are never Authorized.
	Authorized bool
}

// Fault is an injected failure. It applies before normal handling to requests that match
// Method, PathPrefix and PathContains.
type Fault struct {
	// Method matches the request method; "" matches any.
	Method string
	// PathPrefix matches the start of the path, e.g. "/api/machines/" or "/<tenant>/oauth2".
	PathPrefix string
	// PathContains matches a substring of the path.
	PathContains string
	// Status, when set, is answered instead of normal handling.
	Status int
	// Body is the answer body; "" gives the service's error envelope for Status.
	Body string
	// RetryAfter, when set, is sent as the Retry-After header (seconds).
	RetryAfter int
	// Delay is waited (real time) before answering; the wait ends early when the request
	// context ends. A fault with only a Delay then handles the request normally.
	Delay time.Duration
	// Late makes Delay run to its end even when the client has gone away, and the request
	// then be handled normally: the service processed a request whose answer was lost (the
	// client timed out). An action POST creates its action at the end of the Delay.
	Late bool
	// Drop hijacks the connection and closes it without answering. Where hijacking is not
	// possible (HTTP/2, a ResponseRecorder) the handler panics with http.ErrAbortHandler,
	// which net/http turns into a reset stream.
	Drop bool
	// Times is how many requests the fault applies to; 0 means forever.
	Times int
}

// Simulator simulates the Microsoft Entra token endpoint, the MDE API and Graph's alert comment
// endpoint. It implements http.Handler for all three; all methods are safe for concurrent use.
type Simulator struct {
	opts          Options
	now           func() time.Time
	apiAudience   string
	graphAudience string
	packageBytes  []byte
	tokenKey      []byte // signs the access tokens it issues

	mu         sync.Mutex
	url        string
	roles      []string
	graphRoles []string
	machines   []*Machine
	alerts     []*Alert
	final      map[string]string // lower-case machine id -> final status set by SetFinalStatus
	actions    []*action
	byID       map[string]*action
	tokens     map[string]*accessToken
	jtis       map[string]time.Time // client|jti -> forget after
	quotas     map[string][]time.Time
	downloads  map[string]download
	faults     []*Fault
	requests   []Request
}

type accessToken struct {
	audience string
	appID    string
	tenant   string
	roles    []string
	expires  time.Time
}

type download struct {
	actionID string
	expires  time.Time
}

// New returns a Simulator configured by opts. It panics on an invalid Machine.FinalStatus.
func New(opts Options) *Simulator {
	if opts.APIHost == "" {
		opts.APIHost = DefaultAPIHost
	}
	if opts.GraphHost == "" {
		opts.GraphHost = DefaultGraphHost
	}
	graphRoles := opts.GraphRoles
	if graphRoles == nil {
		graphRoles = DefaultGraphRoles
	}
	if opts.TokenLifetime <= 0 {
		opts.TokenLifetime = DefaultTokenLifetime
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.QuotaPerMinute <= 0 {
		opts.QuotaPerMinute = DefaultQuotaPerMinute
	}
	if opts.QuotaPerHour <= 0 {
		opts.QuotaPerHour = DefaultQuotaPerHour
	}
	if opts.PackageURIPerMinute <= 0 {
		opts.PackageURIPerMinute = DefaultPackageURIPerMinute
	}
	if opts.PackageURIPerHour <= 0 {
		opts.PackageURIPerHour = DefaultPackageURIPerHour
	}
	if opts.PendingFor <= 0 {
		opts.PendingFor = DefaultPendingFor
	}
	if opts.InProgressFor <= 0 {
		opts.InProgressFor = DefaultInProgressFor
	}
	if opts.PageSize <= 0 {
		opts.PageSize = DefaultPageSize
	}
	roles := opts.Roles
	if roles == nil {
		roles = DefaultRoles
	}
	roles = slices.Clone(roles)
	if opts.DenyCollect {
		roles = slices.DeleteFunc(roles, func(r string) bool { return r == RoleCollectForensics })
	}
	pkg := opts.PackageBytes
	if pkg == nil {
		pkg = defaultPackage()
	}
	s := &Simulator{
		opts:          opts,
		now:           opts.Now,
		apiAudience:   strings.TrimSuffix(opts.APIHost, "/"),
		graphAudience: strings.TrimSuffix(opts.GraphHost, "/"),
		packageBytes:  bytes.Clone(pkg),
		roles:         roles,
		graphRoles:    slices.Clone(graphRoles),
		final:         map[string]string{},
		byID:          map[string]*action{},
		tokens:        map[string]*accessToken{},
		tokenKey:      []byte(randomToken(32)),
		jtis:          map[string]time.Time{},
		quotas:        map[string][]time.Time{},
		downloads:     map[string]download{},
	}
	for _, m := range opts.Machines {
		s.AddMachine(m)
	}
	for _, a := range opts.Alerts {
		s.AddAlert(a)
	}
	return s
}

// URL returns the base URL set by NewServer, Serve or SetURL ("" before).
func (s *Simulator) URL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.url
}

// SetURL sets the base URL the simulator is served at, e.g. "http://127.0.0.1:8089".
func (s *Simulator) SetURL(u string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.url = strings.TrimSuffix(u, "/")
}

// TokenURL returns the v2 token endpoint: URL()+"/"+TenantID+"/oauth2/v2.0/token".
func (s *Simulator) TokenURL() string {
	return s.URL() + "/" + s.opts.TenantID + "/oauth2/v2.0/token"
}

// APIURL returns the base URL of the API; it is URL(), since one handler serves both.
func (s *Simulator) APIURL() string { return s.URL() }

// SetRoles replaces the application permissions of the app. Like Entra ID, which writes the
// roles into the token, the change applies to tokens issued afterwards.
func (s *Simulator) SetRoles(roles ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.roles = slices.Clone(roles)
}

// Serve serves the simulator on ln until ctx ends, then shuts down gracefully (waiting at
// most 5 seconds for requests in flight). It sets URL from ln when none is set. It returns
// nil after a clean shutdown.
func (s *Simulator) Serve(ctx context.Context, ln net.Listener) error {
	if s.URL() == "" {
		s.SetURL("http://" + ln.Addr().String())
	}
	srv := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("defendertest: serve: %w", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	err := srv.Shutdown(shutdownCtx)
	if serveErr := <-errc; serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) && err == nil {
		err = serveErr
	}
	if err != nil {
		return fmt.Errorf("defendertest: shutdown: %w", err)
	}
	return nil
}

// InjectFault adds a fault. Faults are tried in the order they were added; the first match
// applies.
func (s *Simulator) InjectFault(f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, &f)
}

// ClearFaults removes every injected fault.
func (s *Simulator) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = nil
}

// Requests returns a copy of the request log, in arrival order.
func (s *Simulator) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Request, len(s.requests))
	for i, r := range s.requests {
		r.Body = bytes.Clone(r.Body)
		out[i] = r
	}
	return out
}

// ClearRequests empties the request log.
func (s *Simulator) ClearRequests() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests = nil
}

// maxBody caps the bytes read from a request body.
const maxBody = 4 << 20

// ServeHTTP answers the token endpoints (/{tenant}/oauth2/v2.0/token, /{tenant}/oauth2/token),
// the API (/api/...), package downloads (/safedownload/...) and Microsoft Graph (/v1.0/...).
func (s *Simulator) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody))
	r.Body = io.NopCloser(bytes.NewReader(body))
	rw := &recorder{ResponseWriter: w}
	idx := s.logStart(r, body)
	defer func() { s.logFinish(idx, rw.status, rw.authorized) }()
	if err != nil {
		http.Error(rw, "cannot read request body", http.StatusBadRequest)
		return
	}
	if f, ok := s.takeFault(r); ok {
		if done := s.applyFault(rw, r, f); done {
			return
		}
	}
	s.route(rw, r, body)
}

func (s *Simulator) route(w *recorder, r *http.Request, body []byte) {
	p := r.URL.Path
	switch {
	case strings.HasPrefix(p, "/api/"):
		s.serveAPI(w, r, body)
		return
	case strings.HasPrefix(p, "/safedownload/"):
		s.serveDownload(w, r)
		return
	case strings.HasPrefix(p, "/v1.0/"):
		s.serveGraph(w, r, body)
		return
	}
	parts := strings.Split(strings.TrimPrefix(p, "/"), "/")
	switch {
	case len(parts) == 4 && parts[0] != "" && parts[1] == "oauth2" && parts[2] == "v2.0" && parts[3] == "token":
		s.serveToken(w, r, parts[0], false)
	case len(parts) == 3 && parts[0] != "" && parts[1] == "oauth2" && parts[2] == "token":
		s.serveToken(w, r, parts[0], true)
	default:
		http.NotFound(w, r)
	}
}

// recorder remembers the status written and whether the request was authorized.
type recorder struct {
	http.ResponseWriter
	status     int
	authorized bool
}

func (w *recorder) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *recorder) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the underlying writer (Hijack, Flush).
func (w *recorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (s *Simulator) logStart(r *http.Request, body []byte) int {
	req := Request{
		Time:        s.now(),
		Method:      r.Method,
		Path:        r.URL.Path,
		RawQuery:    redactQuery(r.URL.RawQuery),
		Body:        redactBody(r.Header.Get("Content-Type"), body),
		ContentType: r.Header.Get("Content-Type"),
		UserAgent:   r.UserAgent(),
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests = append(s.requests, req)
	return len(s.requests) - 1
}

func (s *Simulator) logFinish(idx, status int, authorized bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if idx < len(s.requests) { // ClearRequests may have run meanwhile.
		s.requests[idx].Status = status
		s.requests[idx].Authorized = authorized
	}
}

// secretParams are the form and query parameters whose values never enter the request log.
var secretParams = map[string]bool{"client_secret": true, "client_assertion": true, "token": true, "access_token": true}

func redactQuery(raw string) string {
	if raw == "" {
		return raw
	}
	pairs := strings.Split(raw, "&")
	for i, p := range pairs {
		k, _, ok := strings.Cut(p, "=")
		if key, err := url.QueryUnescape(k); err == nil && ok && secretParams[key] {
			pairs[i] = k + "=REDACTED"
		}
	}
	return strings.Join(pairs, "&")
}

func redactBody(contentType string, body []byte) []byte {
	if strings.HasPrefix(strings.ToLower(contentType), "application/x-www-form-urlencoded") {
		return []byte(redactQuery(string(body)))
	}
	return bytes.Clone(body)
}

func (s *Simulator) takeFault(r *http.Request) (Fault, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, f := range s.faults {
		if f.Method != "" && !strings.EqualFold(f.Method, r.Method) {
			continue
		}
		if !strings.HasPrefix(r.URL.Path, f.PathPrefix) || !strings.Contains(r.URL.Path, f.PathContains) {
			continue
		}
		matched := *f
		if f.Times > 0 {
			f.Times--
			if f.Times == 0 {
				s.faults = slices.Delete(s.faults, i, i+1)
			}
		}
		return matched, true
	}
	return Fault{}, false
}

// applyFault applies f and reports whether the request is finished.
func (s *Simulator) applyFault(w *recorder, r *http.Request, f Fault) bool {
	if f.Delay > 0 {
		done := r.Context().Done()
		if f.Late {
			done = nil // processed whether the client waits or not
		}
		t := time.NewTimer(f.Delay)
		select {
		case <-done:
			t.Stop()
			return true
		case <-t.C:
		}
	}
	if f.Drop {
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			// HTTP/2 or a recorder: abort the response, which resets the stream.
			panic(http.ErrAbortHandler)
		}
		_ = conn.Close()
		return true
	}
	if f.Status == 0 {
		return false
	}
	if f.RetryAfter > 0 {
		w.Header().Set("Retry-After", fmt.Sprint(f.RetryAfter))
	}
	if f.Body != "" {
		ct := "text/plain; charset=utf-8"
		if b := strings.TrimSpace(f.Body); strings.HasPrefix(b, "{") || strings.HasPrefix(b, "[") {
			ct = "application/json; charset=utf-8"
		}
		w.Header().Set("Content-Type", ct)
		w.WriteHeader(f.Status)
		_, _ = io.WriteString(w, f.Body)
		return true
	}
	if strings.Contains(r.URL.Path, "/oauth2/") {
		code, name := 90033, "temporarily_unavailable"
		if f.Status < 500 && f.Status != http.StatusTooManyRequests {
			code, name = 90014, "invalid_request"
		}
		writeTokenError(w, f.Status, tokenError{name: name, code: code, msg: "Injected fault."}, s.now())
		return true
	}
	if strings.HasPrefix(r.URL.Path, "/v1.0/") {
		s.writeGraphError(w, r, f.Status, codeForStatus(f.Status), "Injected fault.")
		return true
	}
	writeAPIError(w, f.Status, codeForStatus(f.Status), "Injected fault.")
	return true
}

// newGUID returns a random version 4 GUID in its usual lower-case text form.
func newGUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// randomToken returns n random bytes, hex encoded.
func randomToken(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
