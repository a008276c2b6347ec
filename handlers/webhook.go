package handlers

import (
	"context"
	"errors"
	"io"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/responder-dev/responder/alert"
	"github.com/responder-dev/responder/internal/logsample"
	"github.com/responder-dev/responder/metrics"
)

// maxProblemsShown caps the problems echoed in one answer; all are logged.
const maxProblemsShown = 10

// WebhookAnswer is the JSON body of a webhook answer (SPEC section 5).
// Counts are per alert and machine: a Graph alert naming two devices counts
// twice. received = accepted + duplicates + ignored + invalid.
type WebhookAnswer struct {
	Received   int      `json:"received"`
	Accepted   int      `json:"accepted"`
	Duplicates int      `json:"duplicates"`
	Ignored    int      `json:"ignored"`
	Invalid    int      `json:"invalid"`
	Problems   []string `json:"problems,omitempty"`
}

// ErrorAnswer is the JSON body of every error answer.
type ErrorAnswer struct {
	Error string `json:"error"`
}

// Webhooks serves the webhook endpoints: authenticate, bound, decode,
// normalise, and hand the alerts to the Sink. It never acts on an alert
// itself (STYLE C8: the handler enqueues, the worker acts).
type Webhooks struct {
	Auth         *WebhookAuth
	Sink         alert.Sink
	MaxBodyBytes int64
	// AcceptResolved reports whether resolved alerts are wanted (a loaded
	// rule sets on_resolved); when nil or false they are counted ignored.
	AcceptResolved func() bool
	// SubmitTimeout bounds the wait for the store; past it the answer is 503.
	SubmitTimeout time.Duration
	Metrics       *metrics.Metrics
	Logger        *zap.Logger

	// storeDown thins "store cannot take alerts": while the store is down
	// every request fails alike (each is counted under code 503).
	storeDownOnce sync.Once
	storeDown     *logsample.Sampler
}

// storeDownLog writes the line of a request the store refused, at most
// once per window, with the count of those not written.
func (h *Webhooks) storeDownLog(log *zap.Logger, fields ...zap.Field) {
	h.storeDownOnce.Do(func() { h.storeDown = logsample.New(10*time.Second, nil) })
	h.storeDown.Write(log, zapcore.ErrorLevel, "store", "store cannot take alerts", fields...)
}

// webhookMethods are the methods a webhook endpoint accepts. Grafana's
// webhook contact point can be set to PUT, and senders do not retry a 4xx,
// so a 405 would lose its alerts.
var webhookMethods = []string{http.MethodPost, http.MethodPut}

// mount registers the webhook endpoints on e. Every other method on their
// paths reaches the same handler, which answers 405 itself: Echo's own 405
// would be neither counted nor logged.
func (h *Webhooks) mount(e *echo.Echo) {
	for _, format := range []alert.Format{alert.FormatDefender, alert.FormatAlertmanager} {
		path := "/webhooks/" + string(format)
		handler := h.Handler(format)
		e.Match(webhookMethods, path, handler)
		// A path's own not-found handler takes precedence over Echo's 405.
		e.RouteNotFound(path, handler)
	}
}

// Handler returns the echo handler of one webhook format.
func (h *Webhooks) Handler(format alert.Format) echo.HandlerFunc {
	endpoint := string(format)
	// Built once per endpoint: With encodes the field, per request it
	// was a copy of the logger for every alert.
	log := h.Logger.With(zap.String("source", string(format)))
	accepted := h.Metrics.WebhookRequests.WithLabelValues(endpoint, strconv.Itoa(http.StatusAccepted))
	return func(c echo.Context) error {
		code, body := h.serve(c.Request(), format, log)
		if code == http.StatusMethodNotAllowed {
			c.Response().Header().Set(echo.HeaderAllow, strings.Join(webhookMethods, ", "))
		}
		if c.Request().ContentLength > h.MaxBodyBytes {
			// The body was not read: close the connection after the answer
			// rather than let net/http read what is left of it first.
			c.Response().Header().Set(echo.HeaderConnection, "close")
		}
		if code == http.StatusAccepted {
			accepted.Inc()
		} else {
			h.Metrics.WebhookRequests.WithLabelValues(endpoint, strconv.Itoa(code)).Inc()
		}
		return c.JSON(code, body)
	}
}

// serve answers one webhook request. The order of the checks makes a
// request without a valid credential learn nothing but 401 (or 413, when
// the body must be read to check its signature): peer allow-list, header
// credentials, body (bounded), signature, then content type and schema.
func (h *Webhooks) serve(r *http.Request, format alert.Format, log *zap.Logger) (int, any) {
	if !slices.Contains(webhookMethods, r.Method) {
		return reject(log, r, http.StatusMethodNotAllowed, "method "+strconv.Quote(r.Method)+" not allowed; use POST or PUT")
	}
	if err := h.Auth.checkPeer(r); err != nil {
		return refuse(log, r, err)
	}
	creds := h.Auth.checkHeaderCredentials(r)
	if !creds.ok && h.Auth.HMACSecret == "" {
		return refuse(log, r, creds.err())
	}
	tooLarge := "body is larger than server.max_body_bytes (" + strconv.FormatInt(h.MaxBodyBytes, 10) + " bytes)"
	if r.ContentLength > h.MaxBodyBytes {
		// Refused on the declared length, before reading a byte: a sender
		// announcing 10 GiB and trickling it would otherwise hold the
		// connection until server.read_timeout for a 413 known now.
		return reject(log, r, http.StatusRequestEntityTooLarge, tooLarge)
	}
	raw, err := readBody(r, h.MaxBodyBytes)
	if err == nil && int64(len(raw)) > h.MaxBodyBytes {
		drain(r.Body, h.MaxBodyBytes)
		return reject(log, r, http.StatusRequestEntityTooLarge, tooLarge)
	}
	if err != nil {
		return reject(log, r, http.StatusBadRequest, "reading body: "+err.Error())
	}
	if !creds.ok {
		h.Auth.checkSignature(r, raw, &creds)
		if !creds.ok {
			return refuse(log, r, creds.err())
		}
	}
	if !isJSON(r.Header.Get("Content-Type")) {
		return reject(log, r, http.StatusUnsupportedMediaType, "content type must be application/json, got "+strconv.Quote(r.Header.Get("Content-Type")))
	}

	batch, err := alert.Decode(format, raw)
	// Nothing decoded refers to the body: every string is a copy.
	recycleBody(raw)
	if err != nil {
		var de *alert.DecodeError
		if errors.As(err, &de) {
			return reject(log, r, http.StatusBadRequest, de.Error())
		}
		log.Error("webhook decoding failed", zap.Error(err))
		return http.StatusInternalServerError, ErrorAnswer{Error: "internal error"}
	}

	ans := WebhookAnswer{Received: len(batch.Alerts) + len(batch.Invalid), Invalid: len(batch.Invalid)}
	for _, p := range batch.Invalid {
		source := p.Source
		if source == "" {
			source = defaultSource(format)
		}
		h.Metrics.AlertsReceived.WithLabelValues(string(source), "invalid").Inc()
		fields := []zap.Field{zap.String("error", p.String())}
		if p.AlertID != "" {
			fields = append(fields, zap.String("alert_id", p.AlertID))
		}
		log.Warn("alert invalid", fields...)
		if len(ans.Problems) < maxProblemsShown {
			ans.Problems = append(ans.Problems, p.String())
		}
	}
	acceptResolved := h.AcceptResolved != nil && h.AcceptResolved()
	keep := make([]alert.Alert, 0, len(batch.Alerts))
	for _, a := range batch.Alerts {
		if reason := alert.IgnoreReason(&a, acceptResolved); reason != "" {
			ans.Ignored++
			h.Metrics.AlertsReceived.WithLabelValues(string(a.Source), "ignored").Inc()
			log.Info("alert ignored", zap.String("alert_id", a.ID), zap.String("reason", reason))
			continue
		}
		keep = append(keep, a)
	}
	if len(keep) == 0 && ans.Invalid > 0 && ans.Ignored == 0 {
		return reject(log, r, http.StatusBadRequest, strings.Join(ans.Problems, "; "))
	}
	if len(keep) > 0 {
		ctx, cancel := context.WithTimeout(r.Context(), h.SubmitTimeout)
		receipt, err := h.Sink.Submit(ctx, keep)
		cancel()
		if err != nil {
			h.storeDownLog(log, zap.Int("alerts", len(keep)), zap.Error(err))
			return http.StatusServiceUnavailable, ErrorAnswer{Error: "the store cannot take the alerts now; retry later"}
		}
		for i, a := range keep {
			outcome := "accepted"
			if i < len(receipt.Duplicate) && receipt.Duplicate[i] {
				outcome = "duplicate"
				ans.Duplicates++
			} else {
				ans.Accepted++
			}
			h.Metrics.AlertsReceived.WithLabelValues(string(a.Source), outcome).Inc()
			// One line per alert is too much in a storm; the request line
			// below names the alert when there is only one.
			if ce := log.Check(zap.DebugLevel, "alert received"); ce != nil {
				ce.Write(zap.String("alert_id", a.ID), zap.String("machine_id", a.MachineID),
					zap.String("machine_name", a.MachineName), zap.String("outcome", outcome))
			}
		}
	}
	if ce := log.Check(zap.InfoLevel, "webhook received"); ce != nil {
		fields := make([]zap.Field, 0, 7)
		fields = append(fields, zap.Int("received", ans.Received), zap.Int("accepted", ans.Accepted),
			zap.Int("duplicates", ans.Duplicates), zap.Int("ignored", ans.Ignored), zap.Int("invalid", ans.Invalid))
		if len(keep) == 1 {
			fields = append(fields, zap.String("alert_id", keep[0].ID), zap.String("machine_id", keep[0].MachineID))
		}
		ce.Write(fields...)
	}
	return http.StatusAccepted, ans
}

// reject answers a request refused for its method, size, content type or
// body, with one warn line of stable keys: peer, status, and error, the
// text the client gets.
func reject(log *zap.Logger, r *http.Request, status int, msg string) (int, any) {
	log.Warn("webhook rejected", zap.String("peer", r.RemoteAddr), zap.Int("status", status), zap.String("error", msg))
	return status, ErrorAnswer{Error: msg}
}

// refuse answers a request that failed authentication. The client learns
// only "unauthorized"; the log line says why each check failed.
func refuse(log *zap.Logger, r *http.Request, err *authError) (int, any) {
	log.Warn("webhook refused", zap.String("peer", r.RemoteAddr), zap.Int("status", err.status), zap.String("error", err.reason))
	return err.status, ErrorAnswer{Error: "unauthorized"}
}

func defaultSource(f alert.Format) alert.Source {
	if f == alert.FormatAlertmanager {
		return alert.SourceAlertmanager
	}
	return alert.SourceDefender
}

// readBody reads r's body, at most limit+1 bytes (one more than allowed
// says it is too large). A declared length sizes the buffer once: growing
// it from 512 bytes cost four allocations for a 1.5 KB alert.
func readBody(r *http.Request, limit int64) ([]byte, error) {
	body := io.LimitReader(r.Body, limit+1)
	if n := r.ContentLength; n > 0 && n <= limit {
		buf := bodyBuffer(int(n) + 1) // one more, to see the body end where declared
		m, err := io.ReadFull(body, buf)
		if int64(m) == n && errors.Is(err, io.ErrUnexpectedEOF) {
			err = nil // the declared length, then the end: the whole body
		}
		return buf[:m], err // shorter than declared: an error (a truncated body)
	}
	return io.ReadAll(body)
}

// bodyBuffers keeps the buffers of bodies up to maxRecycledBody bytes for
// the next requests: a body was a tenth of what serving an alert
// allocated.
var bodyBuffers sync.Pool

// maxRecycledBody bounds the buffers kept, so that one large body does not
// stay in memory.
const maxRecycledBody = 64 << 10

// bodyBuffer returns a buffer of n bytes, recycled when one is free.
func bodyBuffer(n int) []byte {
	if p, ok := bodyBuffers.Get().(*[]byte); ok && cap(*p) >= n {
		return (*p)[:n]
	}
	return make([]byte, n, max(n, 4<<10))
}

// recycleBody gives back a body's buffer once nothing refers to it.
func recycleBody(b []byte) {
	if c := cap(b); c > 0 && c <= maxRecycledBody {
		bodyBuffers.Put(&b)
	}
}

// drain reads and discards what is left of an oversized body, up to a few
// times the limit, so that a sender still writing gets the 413 rather than
// a connection reset; a larger body is cut off.
func drain(body io.Reader, limit int64) {
	_, _ = io.CopyN(io.Discard, body, 4*limit)
}

// isJSON accepts application/json and any application/*+json type.
func isJSON(contentType string) bool {
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		return false
	}
	return mt == "application/json" || (strings.HasPrefix(mt, "application/") && strings.HasSuffix(mt, "+json"))
}
