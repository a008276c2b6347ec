package notify

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"
)

// Notifier delivers events to one receiver. It is safe for concurrent use.
type Notifier interface {
	// Name is the notifier's configured name (a metric label).
	Name() string
	// Type is slack, teams, webhook or log.
	Type() string
	// Wants reports whether this notifier takes events of kind k for rule
	// (rule "" = an event about no rule: circuit, permission), per the
	// Events and Rules settings.
	Wants(k Kind, rule string) bool
	// Send delivers ev once, within the notifier's timeout. Answer is the
	// receiver's status and the start of its body, also when the receiver
	// refused (then err is an *Error). Send does not retry.
	Send(ctx context.Context, ev Event) (Answer, error)
}

// Answer is what the receiver answered.
type Answer struct {
	// Status is the HTTP status (200 for the log notifier).
	Status int
	// Body is the start of the answer's body (at most MaxAnswerBytes, one
	// line, the notifier's URL and secret removed).
	Body string
}

// Bounds of a receiver's answer.
const (
	// maxReadBytes is how much of an answer is read; the rest is dropped.
	maxReadBytes = 64 << 10
	// MaxAnswerBytes is how much of an answer is kept in Answer and Error.
	MaxAnswerBytes = 512
)

// DefaultUserAgent is sent when WithUserAgent is not given.
const DefaultUserAgent = "responder"

// Option changes how New builds a notifier.
type Option func(*options)

type options struct {
	userAgent string
	client    *http.Client
	logger    *zap.Logger
	now       func() time.Time
}

// WithUserAgent sets the User-Agent of every request ("responder/<version>").
func WithUserAgent(ua string) Option { return func(o *options) { o.userAgent = ua } }

// WithHTTPClient sets the HTTP client (tests). Redirects are never
// followed, whatever the client's CheckRedirect; the notifier's timeout
// applies through the request's context.
func WithHTTPClient(c *http.Client) Option { return func(o *options) { o.client = c } }

// WithLogger sets the logger the log notifier writes to (default: none).
func WithLogger(l *zap.Logger) Option { return func(o *options) { o.logger = l } }

// WithClock sets the clock of the webhook's timestamp and of Retry-After
// dates.
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// New builds the notifier s describes. It checks s first (Problems) and
// refuses it with every problem.
func New(s Settings, opts ...Option) (Notifier, error) {
	if ps := s.Problems(); len(ps) > 0 {
		errs := make([]error, len(ps))
		for i, p := range ps {
			errs[i] = p
		}
		return nil, fmt.Errorf("notifier %q: %w", clean(s.Name), errors.Join(errs...))
	}
	s = s.withDefaults()
	o := options{userAgent: DefaultUserAgent, logger: zap.NewNop(), now: time.Now}
	for _, opt := range opts {
		opt(&o)
	}
	f := filter{name: s.Name, typ: s.Type, events: slices.Clone(s.Events), rules: slices.Clone(s.Rules)}
	if s.Type == TypeLog {
		return &logNotifier{filter: f, logger: o.logger}, nil
	}
	p := &poster{
		filter:    f,
		url:       s.URL,
		secret:    []byte(s.HMACSecret),
		timeout:   s.Timeout,
		userAgent: o.userAgent,
		now:       o.now,
		scrub:     newScrubber(s.URL, s.HMACSecret),
		client:    httpClient(o.client, s.Timeout),
	}
	switch s.Type {
	case TypeSlack:
		p.encode = encodeSlack
	case TypeTeams:
		p.encode = encodeTeams
	default:
		p.encode = p.encodeWebhook
	}
	return p, nil
}

// httpClient returns a copy of c (or a new client) that never follows a
// redirect: a notifier URL that redirects is misconfigured, and following
// it could carry a signed body elsewhere.
func httpClient(c *http.Client, timeout time.Duration) *http.Client {
	var out http.Client
	if c != nil {
		out = *c
	} else {
		out = http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone(), Timeout: timeout}
	}
	out.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &out
}

// filter is the part every notifier shares: its name, type and filters.
type filter struct {
	name, typ string
	events    []Kind
	rules     []string
}

func (f filter) Name() string { return f.name }
func (f filter) Type() string { return f.typ }

func (f filter) Wants(k Kind, rule string) bool {
	if len(f.events) > 0 && !slices.Contains(f.events, k) {
		return false
	}
	return rule == "" || len(f.rules) == 0 || slices.Contains(f.rules, rule)
}

// checkEvent refuses an event that cannot be sent as it is, and sets its
// version.
func (f filter) checkEvent(ev *Event) error {
	if _, ok := ParseKind(string(ev.Kind)); !ok {
		return &Error{Notifier: f.name, Class: Permanent, Err: fmt.Errorf("%w: unknown kind %q", ErrEvent, clip(string(ev.Kind), maxNameRunes))}
	}
	if !validID(ev.ID) {
		return &Error{Notifier: f.name, Class: Permanent, Err: fmt.Errorf("%w: %s event id must be 1 to %d printable ASCII characters without spaces", ErrEvent, ev.Kind, maxIDLen)}
	}
	if ev.Version == "" {
		ev.Version = Version
	}
	return nil
}

// maxIDLen bounds an event id (it travels in a header).
const maxIDLen = 256

// validID reports whether id can be a header value and a dedup key as it
// is: printable ASCII, no spaces.
func validID(id string) bool {
	if id == "" || len(id) > maxIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] <= ' ' || id[i] > '~' {
			return false
		}
	}
	return true
}

// encoder renders an event as a request body and its extra headers.
type encoder func(ev Event) (body []byte, header http.Header, err error)

// poster sends events by HTTP POST: slack, teams and webhook differ only
// in their encoder.
type poster struct {
	filter
	url       string
	secret    []byte
	timeout   time.Duration
	userAgent string
	now       func() time.Time
	scrub     secretScrubber
	client    *http.Client
	encode    encoder
}

// Send implements Notifier.
func (p *poster) Send(ctx context.Context, ev Event) (Answer, error) {
	if err := p.checkEvent(&ev); err != nil {
		return Answer{}, err
	}
	body, header, err := p.encode(ev)
	if err != nil {
		return Answer{}, &Error{Notifier: p.name, Class: Permanent, Err: fmt.Errorf("encode %s event: %w", ev.Kind, err)}
	}
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.url, bytes.NewReader(body))
	if err != nil {
		return Answer{}, &Error{Notifier: p.name, Class: Permanent, Err: fmt.Errorf("build request: %w", p.scrub.err(err))}
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", p.userAgent)
	resp, err := p.client.Do(req)
	if err != nil {
		// Timeouts, refused connections, resets, name lookups: all may pass.
		return Answer{}, &Error{Notifier: p.name, Class: Retryable, Err: p.scrub.err(err)}
	}
	// Only the start of an answer matters (closing an unread body drops
	// the connection). A body cut by a reset changes nothing: the status
	// decides, so a read error is not an error of the send.
	data, _ := io.ReadAll(io.LimitReader(resp.Body, maxReadBytes))
	_ = resp.Body.Close()
	ans := Answer{Status: resp.StatusCode, Body: p.answerText(data)}
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return ans, nil
	case resp.StatusCode >= 300 && resp.StatusCode < 400:
		// Nothing of the answer is kept: Location may point anywhere.
		return Answer{Status: resp.StatusCode}, &Error{Notifier: p.name, Class: Permanent, Status: resp.StatusCode, Err: ErrRedirect}
	}
	class, after := classifyStatus(resp.StatusCode, resp.Header, p.now())
	return ans, &Error{Notifier: p.name, Class: class, RetryAfter: after, Status: resp.StatusCode, Body: ans.Body}
}

// answerText keeps the start of an answer, on one line, without the
// notifier's secrets (a receiver may echo the request).
func (p *poster) answerText(data []byte) string {
	return clipBytes(p.scrub.text(clean(p.scrub.text(string(data)))), MaxAnswerBytes)
}

// clipBytes caps s at max bytes without cutting a rune.
func clipBytes(s string, max int) string {
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}
