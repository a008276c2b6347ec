// Package defender is the client of the Microsoft Defender for Endpoint (MDE)
// API (SPEC section 7): it fetches and caches Entra ID tokens (client secret,
// certificate assertion or federated token file), keeps every call within
// MDE's published quotas, sends the machine actions (collect investigation
// package, isolate, antivirus scan, restrict code execution and their
// reversals), reads machine actions and machines, fetches investigation
// packages, and, with write-back on (SPEC 13), comments on the alert an
// action came from: a Defender alert through the MDE API, a Graph alert
// through Microsoft Graph with a second token of the same application.
//
// Every failure is one *Error whose Outcome tells the caller what to do:
// retry later (retryable, rate_limited with RetryAfter), look up and track the
// action already pending (already_running), or give up (machine_not_found,
// forbidden, unauthorized, permanent). The client itself retries only once,
// with a new token, after a 401; the durable queue owns every other retry.
//
// Nothing this package returns or logs contains a client secret, a client
// assertion, an access token or a package download URL.
package defender

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/responder-dev/responder/metrics"
	"github.com/responder-dev/responder/quota"
)

// Operation names: a closed set, used as the operation metric label and the
// operation log field.
const (
	opToken              = "token"
	opCollect            = "collect_investigation_package"
	opIsolate            = "isolate"
	opUnisolate          = "unisolate"
	opScan               = "run_antivirus_scan"
	opRestrict           = "restrict_code_execution"
	opUnrestrict         = "unrestrict_code_execution"
	opGetMachineAction   = "get_machine_action"
	opListMachineActions = "list_machine_actions"
	opGetMachine         = "get_machine"
	opFindMachines       = "find_machines"
	opGetPackageURI      = "get_package_uri"
	opDownloadPackage    = "download_package"
	opUpdateAlert        = "update_alert"
	opAlertComment       = "alert_comment"
)

// operations lists every operation with the HTTP status of its success.
var operations = []struct{ name, success string }{
	{opToken, "200"},
	{opCollect, "201"},
	{opIsolate, "201"},
	{opUnisolate, "201"},
	{opScan, "201"},
	{opRestrict, "201"},
	{opUnrestrict, "201"},
	{opGetMachineAction, "200"},
	{opListMachineActions, "200"},
	{opGetMachine, "200"},
	{opFindMachines, "200"},
	{opGetPackageURI, "200"},
	{opDownloadPackage, "200"},
	{opUpdateAlert, "200"},
	{opAlertComment, "200"},
}

// Operations returns every operation name (the operation metric label).
func Operations() []string {
	out := make([]string, len(operations))
	for i, o := range operations {
		out[i] = o.name
	}
	return out
}

// API is what the pipeline needs from Defender. *Client implements it; tests
// and dry runs may substitute their own.
type API interface {
	// Act sends the machine action named name (MachineActions).
	Act(ctx context.Context, name, machineID, comment string) (MachineAction, error)
	CollectInvestigationPackage(ctx context.Context, machineID, comment string) (MachineAction, error)
	Isolate(ctx context.Context, machineID, comment, isolationType string) (MachineAction, error)
	Unisolate(ctx context.Context, machineID, comment string) (MachineAction, error)
	RunAntivirusScan(ctx context.Context, machineID, comment, scanType string) (MachineAction, error)
	RestrictCodeExecution(ctx context.Context, machineID, comment string) (MachineAction, error)
	UnrestrictCodeExecution(ctx context.Context, machineID, comment string) (MachineAction, error)
	GetMachineAction(ctx context.Context, actionID string) (MachineAction, error)
	ListMachineActions(ctx context.Context, f ActionFilter) ([]MachineAction, error)
	PendingAction(ctx context.Context, machineID, actionType string) (MachineAction, bool, error)
	GetMachine(ctx context.Context, machineID string) (Machine, error)
	FindMachineByName(ctx context.Context, dnsName string) (Machine, error)
	GetPackageURI(ctx context.Context, actionID string) (string, error)
	DownloadPackage(ctx context.Context, uri, destPath string) (size int64, sha256hex string, err error)
}

var _ API = (*Client)(nil)

// Option changes how New builds a Client.
type Option func(*options)

type options struct {
	clock        Clock
	limiters     map[Group]quota.Limiter
	fedCheck     time.Duration
	onRoles      func(roles []string)
	onGraphRoles func(roles []string)
}

// WithTokenRoles calls fn with the roles (application permissions) of each
// new access token, when the token says (a JWT with a roles claim), so that
// a missing permission is reported when the token is fetched rather than
// when the first collection is refused. fn must not block.
func WithTokenRoles(fn func(roles []string)) Option {
	return func(o *options) { o.onRoles = fn }
}

// WithGraphTokenRoles is WithTokenRoles for the Microsoft Graph token
// (Config.WriteBack): fn is called with the roles of each new Graph token,
// where PermissionSecurityAlertReadWrite shows. One application has
// different permissions on each resource, hence a hook of its own. fn must
// not block.
func WithGraphTokenRoles(fn func(roles []string)) Option {
	return func(o *options) { o.onGraphRoles = fn }
}

// WithClock sets the clock of the token cache, the default limiters and the
// federated token file checks (default: the real clock).
func WithClock(c Clock) Option {
	return func(o *options) { o.clock = c }
}

// WithLimiter replaces the quota limiter of one API group (default: a
// WindowLimiter with Config.RateLimit, or 2/min and 120/h for
// GroupPackageURI). A nil limiter lets that group's calls through unlimited.
func WithLimiter(g Group, l quota.Limiter) Option {
	return func(o *options) { o.limiters[g] = l }
}

// WithFederatedTokenCheck sets how often, at most, the federated token file
// is checked for a change (default DefaultFederatedTokenCheck).
func WithFederatedTokenCheck(d time.Duration) Option {
	return func(o *options) { o.fedCheck = d }
}

// Client calls the MDE API. It is safe for concurrent use.
type Client struct {
	cfg      *resolved
	m        *metrics.Metrics
	logger   *zap.Logger
	clock    Clock
	limiters map[Group]quota.Limiter
	tokens   *tokenSource
	// graphTokens fetches the Microsoft Graph tokens of write-back; nil
	// unless Config.WriteBack.
	graphTokens *tokenSource
	http        *http.Client // API calls: follows no redirect
	download    *http.Client // package downloads: every hop checked
}

// New validates cfg and returns a client. m receives the request, duration
// and quota-wait metrics (nil: metrics registered nowhere); logger receives
// the client's logs under the name "defender" (nil: none).
func New(cfg Config, m *metrics.Metrics, logger *zap.Logger, opts ...Option) (*Client, error) {
	r, err := resolve(cfg)
	if err != nil {
		return nil, err
	}
	o := options{limiters: map[Group]quota.Limiter{}, fedCheck: DefaultFederatedTokenCheck}
	for _, opt := range opts {
		opt(&o)
	}
	if o.clock == nil {
		o.clock = RealClock{}
	}
	if m == nil {
		m = metrics.New(nil)
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	c := &Client{
		cfg:      r,
		m:        m,
		logger:   logger.Named("defender"),
		clock:    o.clock,
		limiters: map[Group]quota.Limiter{},
	}
	// One clone of the caller's client per purpose, each with its own
	// redirect policy; the caller's client is left as it was. MDE does not
	// redirect: a 3xx is answered as an error, and the bearer token never
	// reaches its Location (Go forwards Authorization to another port of
	// the same host).
	api := *r.HTTPClient
	api.CheckRedirect = noRedirect
	c.http = &api
	dl := *r.HTTPClient
	dl.CheckRedirect = c.checkDownloadRedirect
	c.download = &dl
	for _, g := range Groups {
		if l, ok := o.limiters[g]; ok {
			if l != nil {
				c.limiters[g] = l
			}
			continue
		}
		if g == GroupPackageURI {
			c.limiters[g] = quota.NewWindowLimiter(PackageURIPerMinute, PackageURIPerHour, o.clock).WithSlack(r.LimiterSlack)
		} else {
			c.limiters[g] = quota.NewWindowLimiter(r.RateLimit.PerMinute, r.RateLimit.PerHour, o.clock).WithSlack(r.LimiterSlack)
		}
	}
	var cred credential
	switch {
	case r.ClientSecret != "":
		cred = secretCredential{secret: r.ClientSecret}
	case len(r.CertificatePEM) > 0:
		cc, err := newCertCredential(r.CertificatePEM, r.CertificateAlg, r.ClientID, r.tokenURL)
		if err != nil {
			return nil, fmt.Errorf("defender config: %w", err)
		}
		cred = cc
	default:
		cred = &fileCredential{path: r.FederatedTokenFile, every: o.fedCheck}
	}
	// The token client follows no redirect: it would post the client
	// secret or assertion again to wherever Location points.
	tokenHTTP := *r.HTTPClient
	tokenHTTP.CheckRedirect = noRedirect
	base := tokenHTTP.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	tokenHTTP.Transport = userAgentTransport{base: base, ua: r.UserAgent}
	newSource := func(scope string, onRoles func([]string)) *tokenSource {
		ts := &tokenSource{
			c:        c,
			clientID: r.ClientID,
			tokenURL: r.tokenURL,
			scope:    scope,
			cred:     cred,
			http:     &tokenHTTP,
			onRoles:  onRoles,
			lock:     make(chan struct{}, 1),
		}
		ts.remember(r.ClientSecret)
		return ts
	}
	c.tokens = newSource(r.scope, o.onRoles)
	if r.WriteBack {
		// The same application and credential, another resource: Entra ID
		// issues one token per audience.
		c.graphTokens = newSource(r.graphScope, o.onGraphRoles)
	}
	for _, op := range operations {
		m.InitDefenderOperation(op.name, op.success)
	}
	return c, nil
}

// CheckToken gets an access token (from the cache, or the login endpoint)
// without calling the API: at start it tells whether the credentials work
// and, through WithTokenRoles, what the application may do.
func (c *Client) CheckToken(ctx context.Context) error {
	_, err := c.tokens.token(ctx)
	return err
}

// CheckGraphToken is CheckToken for the Microsoft Graph token of
// write-back: at start it tells whether Entra ID issues it and, through
// WithGraphTokenRoles, whether PermissionSecurityAlertReadWrite is granted.
// Without Config.WriteBack it fails with ErrWriteBackDisabled.
func (c *Client) CheckGraphToken(ctx context.Context) error {
	if c.graphTokens == nil {
		return invalid(opToken, "write-back is off: no Graph token is fetched", ErrWriteBackDisabled)
	}
	_, err := c.graphTokens.token(ctx)
	return err
}

// Scope returns the token scope the client requests.
func (c *Client) Scope() string { return c.cfg.scope }

// GraphURL returns the Microsoft Graph base URL that comments on Graph
// alerts go to.
func (c *Client) GraphURL() string { return c.cfg.graphBase.String() }

// GraphScope returns the scope of the Graph token (the cloud's Graph host
// and "/.default"), requested only with Config.WriteBack.
func (c *Client) GraphScope() string { return c.cfg.graphScope }

// APIURL returns the API base URL the client calls.
func (c *Client) APIURL() string { return c.cfg.apiBase.String() }

// TokenURL returns the token endpoint the client calls.
func (c *Client) TokenURL() string { return c.cfg.tokenURL }

// noRedirect makes a client return a 3xx answer instead of following it.
func noRedirect(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// request is one API call.
type request struct {
	op        string
	kind      opKind
	group     Group
	method    string
	url       string
	body      []byte
	machineID string
	actionID  string
	alertID   string
	// limit caps a 2xx answer (0: maxObjectAnswer).
	limit int64
	// tokens is the token source of the call's resource (nil: the API's).
	tokens *tokenSource
	// ignoreAnswer: a 2xx status is all the call needs; its body is not
	// kept, and one cut short or too long does not fail the call.
	ignoreAnswer bool
}

// tokenSource returns the token source of r's resource.
func (c *Client) tokenSource(r *request) *tokenSource {
	if r.tokens != nil {
		return r.tokens
	}
	return c.tokens
}

// scrub removes every credential string either token source knows of.
func (c *Client) scrub(s string) string {
	s = c.tokens.scrub(s)
	if c.graphTokens != nil {
		s = c.graphTokens.scrub(s)
	}
	return s
}

// Answer size caps: MDE's single objects are a few KiB and a page of
// 10,000 machine actions a few MiB; anything larger is not MDE.
const (
	maxObjectAnswer = 1 << 20
	maxPageAnswer   = 16 << 20
)

// answerLimit is the cap of r's 2xx answer.
func (r *request) answerLimit() int64 {
	if r.limit > 0 {
		return r.limit
	}
	return maxObjectAnswer
}

func (r *request) fields(extra ...zap.Field) []zap.Field {
	f := make([]zap.Field, 0, 4+len(extra))
	f = append(f, zap.String("operation", r.op))
	if r.machineID != "" {
		f = append(f, zap.String("machine_id", r.machineID))
	}
	if r.actionID != "" {
		f = append(f, zap.String("action_id", r.actionID))
	}
	if r.alertID != "" {
		f = append(f, zap.String("alert_id", r.alertID))
	}
	return append(f, extra...)
}

// endpoint joins the API base URL and escaped path segments.
func (c *Client) endpoint(segments ...string) string {
	return joinPath(c.cfg.apiBase, segments)
}

// graphEndpoint joins the Graph base URL and escaped path segments.
func (c *Client) graphEndpoint(segments ...string) string {
	return joinPath(c.cfg.graphBase, segments)
}

func joinPath(base *url.URL, segments []string) string {
	var b strings.Builder
	b.WriteString(base.String())
	for _, s := range segments {
		b.WriteByte('/')
		b.WriteString(url.PathEscape(s))
	}
	return b.String()
}

// send performs r: it waits for the quota, attaches a token, and on a first
// 401 fetches a new token and sends once more. It returns the body of a 2xx
// answer, or an *Error.
func (c *Client) send(ctx context.Context, r request) ([]byte, error) {
	for attempt := 1; ; attempt++ {
		if err := c.wait(ctx, &r); err != nil {
			return nil, notSent(err)
		}
		tokens := c.tokenSource(&r)
		tok, err := tokens.token(ctx)
		if err != nil {
			c.logFailure(&r, err)
			return nil, notSent(err)
		}
		status, header, body, err := c.roundTrip(ctx, &r, tok)
		if err != nil {
			c.logFailure(&r, err)
			return nil, err
		}
		if status >= 200 && status < 300 {
			c.logger.Debug("defender request succeeded", r.fields(zap.Int("http_status", status))...)
			return body, nil
		}
		if status >= 300 && status < 400 {
			// Nothing of the answer is kept: Location may point anywhere.
			e := &Error{Op: r.op, Outcome: OutcomePermanent, StatusCode: status, Message: "unexpected redirect"}
			c.logFailure(&r, e)
			return nil, e
		}
		if status == http.StatusUnauthorized && attempt == 1 {
			tokens.invalidate(tok)
			c.logger.Info("defender refused the token, fetching a new one", r.fields(zap.Int("http_status", status))...)
			continue
		}
		// A server that echoes the request must not make the token appear:
		// scrub before the message is parsed and shortened.
		e := classify(r.op, r.kind, status, header, []byte(c.scrub(string(body))), c.clock.Now())
		e.Code, e.Message, e.Target = c.scrub(e.Code), c.scrub(e.Message), c.scrub(e.Target)
		if e.Outcome == OutcomeRateLimited {
			// Every call of the group would be refused until then.
			quota.Throttle(c.limiters[r.group], c.clock.Now().Add(e.RetryAfter))
		}
		c.logFailure(&r, e)
		return nil, e
	}
}

// notSent marks the error of a call that failed before its request was
// sent (the quota, the token).
func notSent(err error) error {
	var e *Error
	if errors.As(err, &e) {
		e.NotSent = true
	}
	return err
}

// wait waits for r's quota and records the wait.
func (c *Client) wait(ctx context.Context, r *request) error {
	l := c.limiters[r.group]
	if l == nil {
		return nil
	}
	waited, err := l.Wait(ctx)
	if err != nil {
		return &Error{Op: r.op, Outcome: OutcomeRetryable, Message: "waiting for the quota", Err: fmt.Errorf("%w: %w", ErrQuotaWait, err)}
	}
	c.m.RateLimitWait.Observe(waited.Seconds())
	if waited > 0 {
		c.logger.Debug("defender call waited for the quota", r.fields(zap.Duration("waited", waited))...)
	}
	return nil
}

// roundTrip sends r once with token tok and reads the answer.
func (c *Client) roundTrip(ctx context.Context, r *request, tok string) (int, http.Header, []byte, error) {
	rctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	var body io.Reader
	if r.body != nil {
		body = bytes.NewReader(r.body)
	}
	req, err := http.NewRequestWithContext(rctx, r.method, r.url, body)
	if err != nil {
		return 0, nil, nil, &Error{Op: r.op, Outcome: OutcomePermanent, Message: "cannot build request", Err: redactURL(err)}
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("User-Agent", c.cfg.UserAgent)
	req.Header.Set("Accept", "application/json")
	if r.body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	// Whether a connection was ever had tells a request that never left
	// from one whose answer was lost (see Error.NotSent).
	var connected atomic.Bool
	req = req.WithContext(httptrace.WithClientTrace(rctx, &httptrace.ClientTrace{
		GotConn: func(httptrace.GotConnInfo) { connected.Store(true) },
	}))
	begin := time.Now()
	resp, err := c.http.Do(req)
	if err != nil {
		c.observe(r.op, "error", begin)
		e := transportError(r.op, err)
		e.NotSent = !connected.Load()
		return 0, nil, nil, e
	}
	ok := resp.StatusCode >= 200 && resp.StatusCode < 300
	if ok && r.ignoreAnswer {
		// Read a little, so that the connection may be reused; a 2xx is
		// the whole answer.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxObjectAnswer))
		_ = resp.Body.Close()
		c.observe(r.op, strconv.Itoa(resp.StatusCode), begin)
		return resp.StatusCode, resp.Header, nil, nil
	}
	limit := r.answerLimit()
	if !ok {
		limit = maxErrorBody
	}
	var data []byte
	var rerr error
	over := ok && resp.ContentLength > limit // refused unread
	if !over {
		data, over, rerr = readCapped(resp.Body, limit, resp.ContentLength)
	}
	// Closing a body that was not read to its end drops the connection.
	_ = resp.Body.Close()
	c.observe(r.op, strconv.Itoa(resp.StatusCode), begin)
	if !ok {
		return resp.StatusCode, resp.Header, data, nil // an error body is only read in part
	}
	if over {
		e := &Error{Op: r.op, Outcome: OutcomePermanent, StatusCode: resp.StatusCode,
			Message: fmt.Sprintf("answer larger than %d bytes", limit)}
		if r.kind == kindAction {
			// MDE accepted the action, but its id is unreadable: look it
			// up as an action already running; never post again.
			e.Outcome = OutcomeAlreadyRunning
			e.Message += "; the action may exist: look it up"
		}
		return 0, nil, nil, e
	}
	if rerr != nil {
		// The answer was cut: for an action POST the action may exist.
		e := transportError(r.op, rerr)
		e.StatusCode = resp.StatusCode
		return 0, nil, nil, e
	}
	return resp.StatusCode, resp.Header, data, nil
}

// readCapped reads r to its end, but at most limit bytes; over reports
// that more followed. hint is the announced length (-1: unknown). The
// buffer grows by doubling up to limit, so an answer costs about twice its
// size, and one over the cap about twice the cap, whatever its length.
func readCapped(r io.Reader, limit, hint int64) (data []byte, over bool, err error) {
	size := int64(512)
	if hint >= 0 {
		size = hint
	}
	buf := make([]byte, 0, min(max(size, 1), limit))
	for {
		if len(buf) == cap(buf) {
			if int64(len(buf)) >= limit {
				var one [1]byte
				n, err := io.ReadFull(r, one[:])
				if n > 0 {
					return buf, true, nil
				}
				if errors.Is(err, io.EOF) {
					err = nil
				}
				return buf, false, err
			}
			grown := make([]byte, len(buf), min(max(2*int64(cap(buf)), 512), limit))
			copy(grown, buf)
			buf = grown
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = nil
			}
			return buf, false, err
		}
	}
}

// observe records one request's status code and duration.
func (c *Client) observe(op, code string, begin time.Time) {
	c.m.DefenderRequests.WithLabelValues(op, code).Inc()
	c.m.DefenderDuration.WithLabelValues(op).Observe(time.Since(begin).Seconds())
}

// permissions names the application permission an operation needs: a
// machine action's (MachineActions), or reading.
var permissions = func() map[string]string {
	m := map[string]string{
		opGetMachineAction:   PermissionReadAll,
		opListMachineActions: PermissionReadAll,
		opGetMachine:         PermissionReadAll,
		opFindMachines:       PermissionReadAll,
		opGetPackageURI:      PermissionReadAll,
		opUpdateAlert:        PermissionAlertReadWrite,
		opAlertComment:       PermissionSecurityAlertReadWrite,
	}
	for _, a := range MachineActions {
		m[a.Name] = a.Permission
	}
	return m
}()

// logFailure logs a failed call: loudly for a missing permission (an
// administrator must act), as a warning for an exceeded quota, else at debug
// level (the caller logs what it decides).
func (c *Client) logFailure(r *request, err error) {
	var e *Error
	if !errors.As(err, &e) {
		c.logger.Debug("defender request failed", r.fields(zap.Error(err))...)
		return
	}
	fields := r.fields(zap.String("outcome", string(e.Outcome)), zap.Error(e))
	if e.StatusCode != 0 {
		fields = append(fields, zap.Int("http_status", e.StatusCode))
	}
	if e.Code != "" {
		fields = append(fields, zap.String("code", e.Code))
	}
	if e.Target != "" {
		fields = append(fields, zap.String("target", e.Target))
	}
	switch {
	case e.Outcome == OutcomeForbidden && e.Op != opDownloadPackage:
		c.logger.Error("defender refused the call: the application permission is likely missing or the token audience is wrong",
			append(fields, zap.String("permission", permissions[r.op]), zap.String("scope", c.tokenSource(r).scope))...)
	case e.Outcome == OutcomeUnauthorized:
		c.logger.Error("defender refused the credentials", fields...)
	case e.Outcome == OutcomeRateLimited:
		c.logger.Warn("defender quota exceeded", append(fields, zap.Duration("retry_after", e.RetryAfter))...)
	default:
		c.logger.Debug("defender request failed", fields...)
	}
}

// getJSON sends r and decodes a 2xx answer into v.
func (c *Client) getJSON(ctx context.Context, r request, v any) error {
	body, err := c.send(ctx, r)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(body, v); err != nil {
		return &Error{Op: r.op, Outcome: OutcomeRetryable, StatusCode: http.StatusOK, Message: "unreadable answer", Err: err}
	}
	return nil
}

// odataString quotes s as an OData string literal.
func odataString(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// queryEscape escapes a query value with %20 for spaces (not '+').
func queryEscape(s string) string {
	return strings.ReplaceAll(url.QueryEscape(s), "+", "%20")
}

// page is an OData collection answer.
type page[T any] struct {
	Value    []T    `json:"value"`
	NextLink string `json:"@odata.nextLink"`
}

// maxPages bounds how many @odata.nextLink pages one listing follows.
const maxPages = 100

// list sends r and follows @odata.nextLink on the API host, up to max items
// (0: no limit).
func list[T any](ctx context.Context, c *Client, r request, max int) ([]T, error) {
	r.limit = maxPageAnswer
	var out []T
	for i := 0; ; i++ {
		var p page[T]
		if err := c.getJSON(ctx, r, &p); err != nil {
			return nil, err
		}
		out = append(out, p.Value...)
		if max > 0 && len(out) >= max {
			return out[:max], nil
		}
		if p.NextLink == "" {
			return out, nil
		}
		if i+1 >= maxPages {
			return nil, &Error{Op: r.op, Outcome: OutcomePermanent, Message: fmt.Sprintf("more than %d pages", maxPages)}
		}
		next, err := c.sameHost(r.url, p.NextLink)
		if err != nil {
			return nil, &Error{Op: r.op, Outcome: OutcomePermanent, Message: err.Error()}
		}
		r.url = next
	}
}

// sameHost resolves link against base and accepts it only on the API host.
func (c *Client) sameHost(base, link string) (string, error) {
	b, err := url.Parse(base)
	if err != nil {
		return "", errors.New("unreadable request URL")
	}
	l, err := url.Parse(link)
	if err != nil {
		return "", errors.New("unreadable @odata.nextLink")
	}
	u := b.ResolveReference(l)
	if u.Scheme != c.cfg.apiBase.Scheme || !strings.EqualFold(u.Host, c.cfg.apiBase.Host) || u.User != nil {
		return "", errors.New("@odata.nextLink leads to another host; not followed")
	}
	return u.String(), nil
}
