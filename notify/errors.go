package notify

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Class classifies a failed send: a closed set, and a metric label.
type Class string

// The classes of a failed send.
const (
	// Permanent: sending again will not help (4xx other than 408 and 429,
	// a redirect, an event or payload that cannot be sent).
	Permanent Class = "permanent"
	// Retryable: a transient failure (5xx, 408, a timeout, a connection
	// error); retry with backoff.
	Retryable Class = "retryable"
	// RateLimited: the receiver answered 429; retry after Error.RetryAfter
	// (0: the header was absent, use the backoff).
	RateLimited Class = "rate_limited"
)

// Classes returns every class in a stable order (a metric label set).
func Classes() []Class { return []Class{Permanent, Retryable, RateLimited} }

// MaxRetryAfter caps Error.RetryAfter: a receiver cannot park a delivery
// for longer.
const MaxRetryAfter = time.Hour

// Error is the one error type of Send; read it with errors.As. Its text
// names the notifier, the class, the HTTP status and the receiver's answer
// (truncated), and never the notifier's URL.
type Error struct {
	// Notifier is the notifier's name.
	Notifier string
	Class    Class
	// RetryAfter is the delay a 429 asked for (Retry-After, seconds or an
	// HTTP date, at most MaxRetryAfter); 0 when absent or unreadable.
	RetryAfter time.Duration
	// Status is the HTTP status answered, 0 when no answer came.
	Status int
	// Body is the start of the receiver's answer (at most 512 bytes, one
	// line), e.g. Slack's "invalid_blocks".
	Body string
	// Err is the underlying error, if any, with the URL removed.
	Err error
}

// Error implements error.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("notify")
	if e.Notifier != "" {
		b.WriteString(" " + e.Notifier)
	}
	b.WriteString(": " + string(e.Class))
	if e.Status != 0 {
		fmt.Fprintf(&b, ": HTTP %d", e.Status)
	}
	if e.Body != "" {
		fmt.Fprintf(&b, ": %q", e.Body)
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

// ClassOf returns the class of err: "" for nil, the Class of an *Error in
// its chain, Retryable for a context error (the caller's deadline), else
// Permanent.
func ClassOf(err error) Class {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Class
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return Retryable
	}
	return Permanent
}

// ErrEvent is wrapped by the error of an event that cannot be sent as it
// is (no id, an unknown kind): a Permanent failure of the caller.
var ErrEvent = errors.New("invalid event")

// ErrRedirect is wrapped by the error of an answer that redirected: a
// notifier URL that redirects is misconfigured (and following it could
// carry the body elsewhere).
var ErrRedirect = errors.New("unexpected redirect")

// classifyStatus maps an answer that is not 2xx to its class (and the
// Retry-After of a 429).
func classifyStatus(status int, header http.Header, now time.Time) (Class, time.Duration) {
	switch {
	case status == http.StatusTooManyRequests:
		return RateLimited, retryAfter(header.Get("Retry-After"), now)
	case status >= 500, status == http.StatusRequestTimeout:
		return Retryable, 0
	default:
		return Permanent, 0
	}
}

// retryAfter reads a Retry-After header: delay-seconds or an HTTP date.
// Absent, unreadable or past: 0. At most MaxRetryAfter.
func retryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	var d time.Duration
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs <= 0 {
			return 0
		}
		if secs > int64(MaxRetryAfter/time.Second) {
			return MaxRetryAfter
		}
		d = time.Duration(secs) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now).Round(time.Second)
	} else {
		return 0
	}
	if d < 0 {
		return 0
	}
	return min(d, MaxRetryAfter)
}

// secretScrubber removes a notifier's URL, and the parts of it that are the
// credential, from text that came back from the network or the transport.
type secretScrubber struct {
	secrets []string // longest first
}

// redacted stands for a removed secret.
const redacted = "<redacted>"

// minSecretPart is the shortest URL part scrubbed on its own: shorter
// paths ("/", "/hook") are not credentials, and removing them would maul
// any text.
const minSecretPart = 8

func newScrubber(rawURL, hmacSecret string) secretScrubber {
	var ss []string
	add := func(s string) {
		if len(s) >= minSecretPart {
			ss = append(ss, s)
		}
	}
	add(rawURL)
	add(hmacSecret)
	if u, err := url.Parse(rawURL); err == nil {
		add(u.EscapedPath())
		add(u.Path)
		add(u.RawQuery)
		if q, err := url.QueryUnescape(u.RawQuery); err == nil {
			add(q)
		}
		for _, vs := range u.Query() {
			for _, v := range vs {
				add(v)
			}
		}
		if p, ok := u.User.Password(); ok {
			add(p)
		}
	}
	// Longest first, so that the whole URL goes before its parts.
	for i := 1; i < len(ss); i++ {
		for j := i; j > 0 && len(ss[j]) > len(ss[j-1]); j-- {
			ss[j], ss[j-1] = ss[j-1], ss[j]
		}
	}
	return secretScrubber{secrets: ss}
}

func (s secretScrubber) text(t string) string {
	for _, secret := range s.secrets {
		t = strings.ReplaceAll(t, secret, redacted)
	}
	return t
}

// err returns err with the URL of a *url.Error replaced (Go's transport
// errors quote the whole URL: `Post "https://hooks.slack.com/services/…":
// …`), and, if a secret still shows in its text, an error whose text is
// scrubbed and which still unwraps to the original (errors.Is works).
func (s secretScrubber) err(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = &url.Error{Op: ue.Op, URL: redacted, Err: ue.Err}
	}
	if text := err.Error(); s.text(text) != text {
		return &scrubbedError{text: s.text(text), err: err}
	}
	return err
}

// scrubbedError shows a scrubbed text and unwraps to the original error.
type scrubbedError struct {
	text string
	err  error
}

func (e *scrubbedError) Error() string { return e.text }
func (e *scrubbedError) Unwrap() error { return e.err }
