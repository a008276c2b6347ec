package handlers

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
	"go.uber.org/zap"

	"github.com/responder-dev/responder/alert"
)

// AdminAPI holds the operations behind /api/v1/*. A nil function leaves its
// endpoint unmounted. The functions that change state (Reload, Pause,
// Resume) find who asked with RequesterFrom(ctx).
type AdminAPI struct {
	// Rules describes the rule set in force (GET /api/v1/rules).
	Rules func() any
	// Reload reloads the rule files (POST /api/v1/reload).
	Reload func(ctx context.Context) error
	// Evaluate decides a payload without side effects (POST /api/v1/evaluate).
	Evaluate func(ctx context.Context, format alert.Format, body []byte) (any, error)
	// Pause and Resume flip the kill switch (POST /api/v1/pause, /resume);
	// Paused reads it (GET /api/v1/pause).
	Pause  func(ctx context.Context) error
	Resume func(ctx context.Context) error
	Paused func(ctx context.Context) (bool, error)
	// Actions lists the audit trail (GET /api/v1/actions) with the query
	// parameters machine, status, limit and before_id; Action returns one
	// entry.
	Actions func(ctx context.Context, q ActionsQuery) (any, error)
	Action  func(ctx context.Context, id string) (any, error)
	// Replay decides the stored alerts of a window again with the candidate
	// rules of the request body (POST /api/v1/replay); a *BadRequestError
	// is the request's fault (400).
	Replay func(ctx context.Context, rulesYAML []byte, q ReplayQuery) (any, error)
}

// ReplayQuery is the query of POST /api/v1/replay: since, or from and to
// (RFC 3339), and source; the callee validates them.
type ReplayQuery struct {
	Since, From, To, Source string
}

// BadRequestError is an error of the request itself: its message, and the
// problems found (a rule file's, one per line as file:line:col).
type BadRequestError struct {
	Msg      string
	Problems []string
}

func (e *BadRequestError) Error() string { return e.Msg }

// MaxReplayTime bounds a replay through the API; a longer one is better
// run with `responder replay` beside the service.
const MaxReplayTime = 10 * time.Minute

// maxReplayBody bounds the candidate rules of a replay request.
const maxReplayBody = 4 << 20

// ActionsQuery is the query of GET /api/v1/actions.
type ActionsQuery struct {
	Machine string
	Status  string
	// Limit is from 1 to MaxActionsLimit (default 100).
	Limit int
	// BeforeID, when not 0, lists only the entries with a smaller id: the
	// next page after an answer whose last entry had that id.
	BeforeID int64
}

// MaxActionsLimit is the largest page of GET /api/v1/actions.
const MaxActionsLimit = 10000

// ErrNotFound is returned by AdminAPI.Action for an unknown id.
var ErrNotFound = errors.New("not found")

// ByUnauthenticated is the "by" of a request to an admin API that has no
// token (admin.allow_unauthenticated on a loopback listener).
const ByUnauthenticated = "unauthenticated"

// Requester is who made an admin API request: By is the name of the admin
// token presented (AdminToken.Name: "admin" for admin.bearer_token_file), or
// ByUnauthenticated; RemoteAddr is the socket peer, never a forwarded header.
type Requester struct {
	By         string
	RemoteAddr string
}

// Fields returns the log fields of the requester: by and remote_addr.
func (r Requester) Fields() []zap.Field {
	return []zap.Field{zap.String("by", r.By), zap.String("remote_addr", r.RemoteAddr)}
}

type requesterKey struct{}

// RequesterFrom returns who made the admin API request of ctx.
func RequesterFrom(ctx context.Context) (Requester, bool) {
	r, ok := ctx.Value(requesterKey{}).(Requester)
	return r, ok
}

// WithRequester returns a copy of ctx that carries r, as the admin API does
// for the operations it calls.
func WithRequester(ctx context.Context, r Requester) context.Context {
	return context.WithValue(ctx, requesterKey{}, r)
}

// adminGuard protects the admin API and pprof, in this order:
//   - DNS rebinding: the Host header must be an IP literal, localhost, the
//     admin listener's own host or one of admin.allowed_hosts (403), so that
//     a page whose name was re-pointed at the responder cannot read it;
//   - cross-site browser requests (Sec-Fetch-Site cross-site or same-site,
//     or an Origin whose host is not the Host) are refused (403): a page in
//     an operator's browser cannot pause the responder, even with no body;
//   - the admin token, when one is configured (401); the name of the token
//     presented is the requester's "by".
//
// POST endpoints also accept only the body types they read (see accepts).
// /metrics, /healthz and /readyz are not behind it: Prometheus and the
// kubelet reach them under whatever name they were given.
type adminGuard struct {
	tokens []AdminToken
	hosts  map[string]bool // lower case, no port, no trailing dot
	log    *zap.Logger
}

func newAdminGuard(s Settings, log *zap.Logger) *adminGuard {
	return &adminGuard{tokens: s.Admin.Tokens, hosts: s.adminHosts(), log: log}
}

// normalHost lower-cases a host name and drops a trailing dot.
func normalHost(h string) string {
	return strings.TrimSuffix(strings.ToLower(h), ".")
}

func (g *adminGuard) middleware(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		r := c.Request()
		if msg := g.checkHost(r.Host); msg != "" {
			return g.refuse(c, http.StatusForbidden, msg, msg)
		}
		if msg := crossSite(r); msg != "" {
			return g.refuse(c, http.StatusForbidden, msg, msg)
		}
		by, reason := g.authenticate(r)
		if reason != "" {
			// Like the webhooks, the client learns nothing of which check failed.
			return g.refuse(c, http.StatusUnauthorized, "unauthorized", reason)
		}
		c.SetRequest(r.WithContext(WithRequester(r.Context(), Requester{By: by, RemoteAddr: r.RemoteAddr})))
		return next(c)
	}
}

// refuse answers a refused admin request and logs one warn line with the
// peer, the status and why.
func (g *adminGuard) refuse(c echo.Context, status int, answer, reason string) error {
	r := c.Request()
	g.log.Warn("admin request refused", zap.String("remote_addr", r.RemoteAddr), zap.String("method", r.Method),
		zap.String("path", r.URL.Path), zap.Int("status", status), zap.String("error", reason))
	return c.JSON(status, ErrorAnswer{Error: answer})
}

// checkHost returns why the Host header may not reach the admin API, or "".
func (g *adminGuard) checkHost(hostport string) string {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if host == "" {
		return "the admin API needs a Host header"
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return "" // an IP literal cannot be re-pointed by DNS
	}
	if g.hosts[normalHost(host)] {
		return ""
	}
	return "Host " + quoteShort(hostport) + " is not allowed on the admin API (DNS rebinding protection): " +
		"use an IP address or localhost, or add the name to admin.allowed_hosts"
}

// crossSite returns why a request looks sent by a browser on behalf of
// another site, or "". Sec-Fetch-Site is set by every current browser and
// cannot be forged by a page; Origin covers older ones. Clients that are not
// browsers send neither.
func crossSite(r *http.Request) string {
	switch site := strings.ToLower(r.Header.Get("Sec-Fetch-Site")); site {
	case "cross-site", "same-site":
		return "cross-site requests are refused on the admin API (Sec-Fetch-Site: " + site + ")"
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return ""
	}
	if u, err := url.Parse(origin); err == nil && u.Host != "" && sameHost(u, r.Host) {
		return ""
	}
	return "cross-site requests are refused on the admin API (Origin " + quoteShort(origin) + " is not Host " + quoteShort(r.Host) + ")"
}

// sameHost reports whether the origin u names host (host[:port]), default
// ports included.
func sameHost(u *url.URL, host string) bool {
	withPort := func(h, scheme string) string {
		if _, _, err := net.SplitHostPort(h); err == nil {
			return strings.ToLower(h)
		}
		port := "80"
		if scheme == "https" {
			port = "443"
		}
		return net.JoinHostPort(strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")), port)
	}
	return withPort(u.Host, u.Scheme) == withPort(host, u.Scheme)
}

// authenticate returns the name of the admin token the request presents, or
// why it is refused. With no token configured, every request is
// ByUnauthenticated (config only allows that on a loopback listener). Every
// token is compared, in constant time, so that the time taken does not tell
// which one matched.
func (g *adminGuard) authenticate(r *http.Request) (by, reason string) {
	if len(g.tokens) == 0 {
		return ByUnauthenticated, ""
	}
	h := r.Header.Get("Authorization")
	scheme, got, ok := strings.Cut(h, " ")
	switch {
	case h == "":
		return "", "missing Authorization header"
	case !ok || !strings.EqualFold(scheme, "Bearer"):
		return "", "Authorization scheme is not Bearer"
	}
	presented := []byte(strings.TrimSpace(got))
	match := -1
	for i, t := range g.tokens {
		if subtle.ConstantTimeCompare(presented, []byte(t.Token)) == 1 && match < 0 {
			match = i
		}
	}
	if match < 0 {
		return "", "token does not match"
	}
	return g.tokens[match].Name, ""
}

// bodyType is a kind of request body an admin endpoint reads.
type bodyType struct {
	name  string
	match func(mediaType string) bool
}

var (
	// jsonBody is application/json and application/*+json.
	jsonBody = bodyType{"application/json", func(mt string) bool {
		return mt == "application/json" || strings.HasPrefix(mt, "application/") && strings.HasSuffix(mt, "+json")
	}}
	// yamlBody is for endpoints that take YAML (the replay endpoint's rules
	// file): application/yaml and its older spellings. None of them is a
	// type a form or a simple cross-site request can send.
	yamlBody = bodyType{"application/yaml", func(mt string) bool {
		return mt == "application/yaml" || mt == "application/x-yaml" || mt == "text/yaml" || mt == "text/x-yaml" ||
			strings.HasPrefix(mt, "application/") && strings.HasSuffix(mt, "+yaml")
	}}
)

// accepts admits a POST whose body is one of types, or a POST with no body
// and no Content-Type (curl -X POST). Every other content type is 415:
// text/plain, application/x-www-form-urlencoded and multipart/form-data are
// what a cross-site form or a simple request can send without a preflight.
func (g *adminGuard) accepts(types ...bodyType) echo.MiddlewareFunc {
	names := make([]string, len(types))
	for i, t := range types {
		names[i] = t.name
	}
	want := strings.Join(names, " or ")
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			r := c.Request()
			ct := r.Header.Get("Content-Type")
			if ct == "" && r.ContentLength == 0 {
				return next(c)
			}
			if ct == "" {
				return g.refuse(c, http.StatusUnsupportedMediaType, "a request body needs Content-Type: "+want, "body without a content type")
			}
			mt, _, err := mime.ParseMediaType(ct)
			if err == nil {
				for _, t := range types {
					if t.match(mt) {
						return next(c)
					}
				}
			}
			msg := "content type must be " + want + ", got " + quoteShort(ct) +
				" (the admin API refuses the types a cross-site form or simple request can send)"
			return g.refuse(c, http.StatusUnsupportedMediaType, msg, msg)
		}
	}
}

// quoteShort quotes a client-supplied value for an answer or a log line,
// capped at 100 bytes.
func quoteShort(s string) string {
	if len(s) > 100 {
		return strconv.Quote(s[:100]) + "..."
	}
	return strconv.Quote(s)
}

// logAction logs a state change asked through the admin API: what, by whom
// (the admin token's name) and from where (the socket peer).
func (g *adminGuard) logAction(ctx context.Context, action string, err error) {
	req, _ := RequesterFrom(ctx)
	fields := append([]zap.Field{zap.String("action", action)}, req.Fields()...)
	if err != nil {
		g.log.Warn("admin action failed", append(fields, zap.Error(err))...)
		return
	}
	if action == "pause" || action == "resume" {
		// The kill switch: this is its one log line.
		g.log.Warn("admin action", fields...)
		return
	}
	g.log.Info("admin action", fields...)
}

func (s *Server) mountPprof(e *echo.Echo, g *adminGuard) {
	p := e.Group("/debug/pprof", g.middleware)
	p.GET("/", echo.WrapHandler(http.HandlerFunc(pprof.Index)))
	p.GET("/cmdline", echo.WrapHandler(http.HandlerFunc(pprof.Cmdline)))
	p.GET("/profile", echo.WrapHandler(http.HandlerFunc(pprof.Profile)))
	p.GET("/symbol", echo.WrapHandler(http.HandlerFunc(pprof.Symbol)))
	p.GET("/trace", echo.WrapHandler(http.HandlerFunc(pprof.Trace)))
	p.GET("/:name", func(c echo.Context) error {
		pprof.Handler(c.Param("name")).ServeHTTP(c.Response(), c.Request())
		return nil
	})
}

func (s *Server) mountAdminAPI(e *echo.Echo, guard *adminGuard) {
	a := s.opts.Admin
	g := e.Group("/api/v1", guard.middleware)
	json := guard.accepts(jsonBody)
	if a.Rules != nil {
		g.GET("/rules", func(c echo.Context) error { return c.JSON(http.StatusOK, a.Rules()) })
	}
	if a.Reload != nil {
		g.POST("/reload", func(c echo.Context) error {
			ctx := c.Request().Context()
			err := a.Reload(ctx)
			guard.logAction(ctx, "reload", err)
			if err != nil {
				return c.JSON(http.StatusUnprocessableEntity, ErrorAnswer{Error: err.Error()})
			}
			return c.JSON(http.StatusOK, map[string]string{"status": "reloaded"})
		}, json)
	}
	for action, fn := range map[string]func(context.Context) error{"pause": a.Pause, "resume": a.Resume} {
		if fn == nil {
			continue
		}
		g.POST("/"+action, func(c echo.Context) error {
			ctx := c.Request().Context()
			err := fn(ctx)
			guard.logAction(ctx, action, err)
			if err != nil {
				return c.JSON(http.StatusServiceUnavailable, ErrorAnswer{Error: err.Error()})
			}
			return c.JSON(http.StatusOK, map[string]bool{"paused": action == "pause"})
		}, json)
	}
	if a.Paused != nil {
		g.GET("/pause", func(c echo.Context) error {
			on, err := a.Paused(c.Request().Context())
			if err != nil {
				return c.JSON(http.StatusServiceUnavailable, ErrorAnswer{Error: err.Error()})
			}
			return c.JSON(http.StatusOK, map[string]bool{"paused": on})
		})
	}
	if a.Evaluate != nil {
		maxBody := s.opts.Settings.Server.MaxBodyBytes
		g.POST("/evaluate", func(c echo.Context) error {
			var format alert.Format
			if q := c.QueryParam("format"); q != "" {
				f, err := alert.ParseFormat(q)
				if err != nil {
					return c.JSON(http.StatusBadRequest, ErrorAnswer{Error: err.Error()})
				}
				format = f
			}
			body, status, err := readBounded(c, maxBody)
			if err != nil {
				return c.JSON(status, ErrorAnswer{Error: err.Error()})
			}
			hint := ""
			if format == "" {
				format = detectFormat(body)
				hint = formatHints[format]
			}
			out, err := a.Evaluate(c.Request().Context(), format, body)
			if err != nil {
				var de *alert.DecodeError
				if errors.As(err, &de) {
					return c.JSON(http.StatusBadRequest, ErrorAnswer{Error: de.Error() + hint})
				}
				return c.JSON(http.StatusInternalServerError, ErrorAnswer{Error: err.Error()})
			}
			return c.JSON(http.StatusOK, out)
		}, json)
	}
	if a.Replay != nil {
		g.POST("/replay", replayHandler(a.Replay, guard), guard.accepts(yamlBody))
	}
	if a.Actions != nil {
		g.GET("/actions", func(c echo.Context) error {
			q := ActionsQuery{Machine: c.QueryParam("machine"), Status: c.QueryParam("status"), Limit: 100}
			if v := c.QueryParam("limit"); v != "" {
				n, err := strconv.Atoi(v)
				if err != nil || n <= 0 || n > MaxActionsLimit {
					return c.JSON(http.StatusBadRequest, ErrorAnswer{Error: "limit must be an integer from 1 to " + strconv.Itoa(MaxActionsLimit)})
				}
				q.Limit = n
			}
			if v := c.QueryParam("before_id"); v != "" {
				n, err := strconv.ParseInt(v, 10, 64)
				if err != nil || n <= 0 {
					return c.JSON(http.StatusBadRequest, ErrorAnswer{Error: "before_id must be a positive integer: the id of the last entry of the previous page (next_before_id)"})
				}
				q.BeforeID = n
			}
			out, err := a.Actions(c.Request().Context(), q)
			if err != nil {
				return c.JSON(http.StatusServiceUnavailable, ErrorAnswer{Error: err.Error()})
			}
			return c.JSON(http.StatusOK, out)
		})
	}
	if a.Action != nil {
		g.GET("/actions/:id", func(c echo.Context) error {
			out, err := a.Action(c.Request().Context(), c.Param("id"))
			if errors.Is(err, ErrNotFound) {
				return c.JSON(http.StatusNotFound, ErrorAnswer{Error: "no action with that id"})
			}
			if err != nil {
				return c.JSON(http.StatusServiceUnavailable, ErrorAnswer{Error: err.Error()})
			}
			return c.JSON(http.StatusOK, out)
		})
	}
}

// replayHandler runs one replay at a time: a second request while one runs
// is answered 429 at once, not queued behind it.
func replayHandler(run func(context.Context, []byte, ReplayQuery) (any, error), guard *adminGuard) echo.HandlerFunc {
	busy := make(chan struct{}, 1)
	return func(c echo.Context) error {
		select {
		case busy <- struct{}{}:
			defer func() { <-busy }()
		default:
			c.Response().Header().Set("Retry-After", "10")
			return c.JSON(http.StatusTooManyRequests, ErrorAnswer{Error: "a replay is already running; one runs at a time: try again when it has ended"})
		}
		body, status, err := readBounded(c, maxReplayBody)
		if err != nil {
			return c.JSON(status, ErrorAnswer{Error: err.Error()})
		}
		// The server's write timeout is made for short answers; a replay
		// may take up to MaxReplayTime.
		_ = http.NewResponseController(c.Response().Writer).SetWriteDeadline(time.Now().Add(MaxReplayTime + 10*time.Second))
		ctx, cancel := context.WithTimeout(c.Request().Context(), MaxReplayTime)
		defer cancel()
		q := ReplayQuery{Since: c.QueryParam("since"), From: c.QueryParam("from"), To: c.QueryParam("to"), Source: c.QueryParam("source")}
		out, err := run(ctx, body, q)
		guard.logAction(ctx, "replay", err)
		var bad *BadRequestError
		switch {
		case errors.As(err, &bad):
			return c.JSON(http.StatusBadRequest, replayProblem{Error: bad.Msg, Problems: bad.Problems})
		case errors.Is(err, context.DeadlineExceeded):
			return c.JSON(http.StatusServiceUnavailable, ErrorAnswer{Error: fmt.Sprintf("the replay did not end within %s: use a shorter window, or run responder replay beside the service", MaxReplayTime)})
		case err != nil:
			return c.JSON(http.StatusInternalServerError, ErrorAnswer{Error: err.Error()})
		}
		return c.JSON(http.StatusOK, out)
	}
}

// replayProblem is the answer to a bad replay request.
type replayProblem struct {
	Error    string   `json:"error"`
	Problems []string `json:"problems,omitempty"`
}

// readBounded reads a request body of at most limit bytes. A declared
// Content-Length over the limit is refused at once, before any byte is read:
// waiting for a body that will be refused anyway would hold the connection
// until server.read_timeout. The connection is then closed rather than
// drained. It returns the status to answer with its error.
func readBounded(c echo.Context, limit int64) ([]byte, int, error) {
	r := c.Request()
	if r.ContentLength > limit {
		c.Response().Header().Set(echo.HeaderConnection, "close")
		return nil, http.StatusRequestEntityTooLarge, tooLargeError(limit)
	}
	body, err := io.ReadAll(http.MaxBytesReader(c.Response(), r.Body, limit))
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		return nil, http.StatusRequestEntityTooLarge, tooLargeError(limit)
	case err != nil:
		return nil, http.StatusBadRequest, errors.New("reading body: " + err.Error())
	}
	return body, 0, nil
}

func tooLargeError(limit int64) error {
	return errors.New("body is larger than server.max_body_bytes (" + strconv.FormatInt(limit, 10) + " bytes)")
}
