package defender

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Outcome classifies the result of a Defender call (SPEC section 7). It is a
// closed set and doubles as a metric label.
type Outcome string

// The outcomes of a Defender call.
const (
	// OutcomeCreated: the action POST was accepted (201). Never carried by
	// an *Error; the pipeline uses it as a label.
	OutcomeCreated Outcome = "created"
	// OutcomeAlreadyRunning: MDE refused the action because one of the same
	// kind is already pending on the machine (400 ActiveRequestAlreadyExists
	// or "already in progress"). Look it up with PendingAction and track it;
	// never re-send the POST.
	OutcomeAlreadyRunning Outcome = "already_running"
	// OutcomeMachineNotFound: MDE does not know the machine (404, or no
	// machine matched a name).
	OutcomeMachineNotFound Outcome = "machine_not_found"
	// OutcomeForbidden: the token is valid but lacks the permission (403).
	// Permanent until an administrator grants it.
	OutcomeForbidden Outcome = "forbidden"
	// OutcomeUnauthorized: the credentials were refused (401 after one token
	// refresh, or the login endpoint refused the client). Permanent.
	OutcomeUnauthorized Outcome = "unauthorized"
	// OutcomeRateLimited: MDE answered 429; retry after Error.RetryAfter.
	// It should not use up a retry attempt.
	OutcomeRateLimited Outcome = "rate_limited"
	// OutcomeRetryable: a transient failure (5xx, timeout, reset, EOF, a
	// package URI that is not ready yet); retry with backoff.
	OutcomeRetryable Outcome = "retryable"
	// OutcomePermanent: any other failure; retrying will not help.
	OutcomePermanent Outcome = "permanent"
)

// Outcomes lists every outcome, for metric label initialisation.
var Outcomes = []Outcome{
	OutcomeCreated, OutcomeAlreadyRunning, OutcomeMachineNotFound, OutcomeForbidden,
	OutcomeUnauthorized, OutcomeRateLimited, OutcomeRetryable, OutcomePermanent,
}

// ErrInvalidID is wrapped by the errors of calls refused before any request
// because a machine id, action id or other argument is malformed.
var ErrInvalidID = errors.New("invalid id")

// ErrQuotaWait is wrapped by the error of a call that gave up waiting for
// the quota (its context ended first): nothing was sent, and retrying later
// is the answer, without counting it as a failed attempt.
var ErrQuotaWait = errors.New("gave up waiting for the quota")

// ErrWriteBackDisabled is wrapped by the error of CommentAlert and
// CheckGraphToken on a client built without Config.WriteBack: nothing was
// sent.
var ErrWriteBackDisabled = errors.New("write-back is disabled")

// ErrAlertNotFound is wrapped by the permanent error of a comment on an
// alert that Defender or Graph does not know (404).
var ErrAlertNotFound = errors.New("alert not found")

// ErrInvalidArgument is wrapped by the errors of calls refused before any
// request because an argument other than an id is invalid.
var ErrInvalidArgument = errors.New("invalid argument")

// Error is the one error type of this package; read it with errors.As. Its
// text names the operation, the HTTP status, MDE's error code and target (the
// correlation id Microsoft support asks for), and never a token, secret or
// signed URL.
type Error struct {
	// Op is the operation (a metric label, e.g. collect_investigation_package).
	Op string
	// Outcome classifies the failure.
	Outcome Outcome
	// StatusCode is the HTTP status answered, 0 when no answer came.
	StatusCode int
	// Code, Message and Target come from MDE's error envelope
	// {"error":{"code","message","target"}}, Graph's
	// {"error":{"code","message","innerError":{"request-id"}}} (Target is
	// the request-id) or the login endpoint's {"error","error_description"};
	// empty when the body had none.
	Code, Message, Target string
	// RetryAfter is the delay asked by a 429 (Retry-After), else 0.
	RetryAfter time.Duration
	// NotSent reports that the request certainly never reached Defender:
	// no connection was made (a refused dial, a failed name lookup or TLS
	// handshake). A request that failed later may have been received and
	// acted on, its answer lost.
	NotSent bool
	// Err is the underlying error, if any (transport errors have their URL
	// redacted).
	Err error
}

// Error implements error.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("defender ")
	b.WriteString(e.Op)
	b.WriteString(": ")
	b.WriteString(string(e.Outcome))
	if e.StatusCode != 0 {
		fmt.Fprintf(&b, ": HTTP %d", e.StatusCode)
	}
	if e.Code != "" {
		fmt.Fprintf(&b, " %s", e.Code)
	}
	if e.Message != "" {
		fmt.Fprintf(&b, ": %s", e.Message)
	}
	if e.Target != "" {
		fmt.Fprintf(&b, " (target %s)", e.Target)
	}
	if e.RetryAfter > 0 {
		fmt.Fprintf(&b, " (retry after %s)", e.RetryAfter)
	}
	if e.Err != nil {
		fmt.Fprintf(&b, ": %v", e.Err)
	}
	return b.String()
}

// Unwrap returns the underlying error.
func (e *Error) Unwrap() error { return e.Err }

// Retryable reports whether the call may succeed later: rate_limited or
// retryable.
func (e *Error) Retryable() bool {
	return e.Outcome == OutcomeRetryable || e.Outcome == OutcomeRateLimited
}

// OutcomeOf returns the outcome of err: "" for nil, the Outcome of an *Error
// in its chain, retryable for a context error, else permanent.
func OutcomeOf(err error) Outcome {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Outcome
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return OutcomeRetryable
	}
	return OutcomePermanent
}

// maxErrorBody caps how much of an error answer is read.
const maxErrorBody = 64 << 10

// maxMessage caps the length of a message copied from a remote answer.
const maxMessage = 300

// envelope is MDE's error body, and Graph's, whose correlation id is the
// request-id of innerError.
type envelope struct {
	Error struct {
		Code       string `json:"code"`
		Message    string `json:"message"`
		Target     string `json:"target"`
		InnerError struct {
			RequestID string `json:"request-id"`
		} `json:"innerError"`
	} `json:"error"`
}

// parseErrorBody reads MDE's or Graph's error envelope tolerantly: a body
// that is not the envelope leaves code, message and target empty. A body
// that is a bare JSON string (seen from some gateways) becomes the message.
func parseErrorBody(body []byte) (code, message, target string) {
	var env envelope
	if err := json.Unmarshal(body, &env); err == nil {
		target := env.Error.Target
		if target == "" {
			target = env.Error.InnerError.RequestID
		}
		return clean(env.Error.Code), clean(env.Error.Message), clean(target)
	}
	var s string
	if err := json.Unmarshal(body, &s); err == nil {
		return "", clean(s), ""
	}
	return "", "", ""
}

// clean makes a remote string safe to print on one line: control characters
// become spaces, invalid UTF-8 is dropped, and the length is capped.
func clean(s string) string {
	s = strings.TrimSpace(s)
	if s == "" {
		return ""
	}
	var b strings.Builder
	n := 0
	for _, r := range s {
		if r == utf8.RuneError {
			continue
		}
		if r < 0x20 || r == 0x7f {
			r = ' '
		}
		if n >= maxMessage {
			b.WriteString("…")
			break
		}
		b.WriteRune(r)
		n++
	}
	return b.String()
}

// opKind tells classify how an operation reads a 404 and a 400.
type opKind int

const (
	kindAction        opKind = iota // action POSTs: 404 machine_not_found, 400 may be already_running
	kindMachine                     // machine GETs: 404 machine_not_found
	kindActionGet                   // GET machineactions/{id}, list: 404 permanent
	kindPackageURI                  // getPackageUri: 404 not ready yet, retryable
	kindDownload                    // package download: an expired link (401/403/404/410) is retryable
	kindMachineSearch               // GET machines?$filter: 404 means no machine
	kindAlert                       // comment on an alert: 404 permanent, ErrAlertNotFound
)

// classify maps an HTTP answer that is not 2xx to an *Error (SPEC 7).
func classify(op string, kind opKind, status int, header http.Header, body []byte, now time.Time) *Error {
	e := &Error{Op: op, StatusCode: status}
	if kind != kindDownload {
		// A storage error body may describe the signed request: never copy it.
		e.Code, e.Message, e.Target = parseErrorBody(body)
	}
	switch {
	case status == http.StatusTooManyRequests:
		e.Outcome = OutcomeRateLimited
		e.RetryAfter = retryAfter(header.Get("Retry-After"), now)
	case status >= 500:
		e.Outcome = OutcomeRetryable
	case kind == kindDownload:
		switch status {
		case http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound, http.StatusGone:
			// The short-lived link expired: fetch a new one and retry.
			e.Outcome = OutcomeRetryable
		case http.StatusRequestTimeout:
			e.Outcome = OutcomeRetryable
		default:
			e.Outcome = OutcomePermanent
		}
	case status == http.StatusBadRequest && kind == kindAction && alreadyRunning(e.Code, e.Message, body):
		e.Outcome = OutcomeAlreadyRunning
	case status == http.StatusUnauthorized:
		e.Outcome = OutcomeUnauthorized
	case status == http.StatusForbidden:
		e.Outcome = OutcomeForbidden
	case status == http.StatusNotFound:
		switch kind {
		case kindAction, kindMachine, kindMachineSearch:
			e.Outcome = OutcomeMachineNotFound
		case kindPackageURI:
			e.Outcome = OutcomeRetryable
			if e.Message == "" {
				e.Message = "package not ready yet"
			}
		case kindAlert:
			e.Outcome = OutcomePermanent
			e.Err = ErrAlertNotFound
		default:
			e.Outcome = OutcomePermanent
			if e.Message == "" {
				e.Message = "not found"
			}
		}
	case status == http.StatusRequestTimeout:
		e.Outcome = OutcomeRetryable
	default:
		e.Outcome = OutcomePermanent
	}
	return e
}

// alreadyRunning reports whether a 400 answer says an action of the same kind
// is already pending on the machine.
func alreadyRunning(code, message string, body []byte) bool {
	if strings.EqualFold(code, "ActiveRequestAlreadyExists") {
		return true
	}
	if containsFold(message, "already in progress") {
		return true
	}
	if code == "" && message == "" {
		// A body that is not the envelope: look at its text.
		b := body
		if len(b) > 4096 {
			b = b[:4096]
		}
		return containsFold(string(b), "already in progress") ||
			containsFold(string(b), "ActiveRequestAlreadyExists")
	}
	return false
}

func containsFold(s, sub string) bool {
	return strings.Contains(strings.ToLower(s), strings.ToLower(sub))
}

// Retry-After bounds.
const (
	defaultRetryAfter = 60 * time.Second
	maxRetryAfter     = time.Hour
)

// retryAfter reads a Retry-After header: delay-seconds or an HTTP-date.
// Absent or unreadable: 60 s. The result is at least 1 s and at most 1 h.
func retryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return defaultRetryAfter
	}
	var d time.Duration
	if secs, err := strconv.ParseFloat(v, 64); err == nil {
		if secs < 0 || secs != secs {
			return defaultRetryAfter
		}
		if secs > maxRetryAfter.Seconds() {
			return maxRetryAfter
		}
		d = time.Duration(secs * float64(time.Second))
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now)
	} else {
		return defaultRetryAfter
	}
	if d < time.Second {
		d = time.Second
	}
	if d > maxRetryAfter {
		d = maxRetryAfter
	}
	return d
}

// transportError classifies an error that came with no HTTP answer. The URL
// of a *url.Error is redacted (it may carry a signed token), as
// alertmanager's notify.RedactURL does.
func transportError(op string, err error) *Error {
	err = redactURL(err)
	e := &Error{Op: op, Outcome: OutcomeRetryable, Err: err}
	var cv *tls.CertificateVerificationError
	var ua x509.UnknownAuthorityError
	var hn x509.HostnameError
	var ci x509.CertificateInvalidError
	if errors.As(err, &cv) || errors.As(err, &ua) || errors.As(err, &hn) || errors.As(err, &ci) {
		// A certificate problem will not fix itself.
		e.Outcome = OutcomePermanent
	}
	return e
}

// redactURL replaces the URL of a *url.Error by "<redacted>".
func redactURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return &url.Error{Op: ue.Op, URL: "<redacted>", Err: ue.Err}
	}
	return err
}

// invalid builds the error of a call refused before any request.
func invalid(op, what string, sentinel error) *Error {
	return &Error{Op: op, Outcome: OutcomePermanent, Message: what, Err: sentinel}
}
