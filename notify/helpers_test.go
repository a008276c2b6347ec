package notify

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// fixedNow is the clock of every test that needs one.
var fixedNow = time.Date(2025, 3, 14, 9, 26, 53, 0, time.UTC)

func fixedClock() time.Time { return fixedNow }

// testSecret signs the webhooks of the tests.
const testSecret = "0123456789abcdef-test-secret"

// captured is one request a receiver got.
type captured struct {
	method string
	path   string
	header http.Header
	body   []byte
}

// receiver is an httptest server that records every request and answers
// with a fixed status and body.
type receiver struct {
	srv  *httptest.Server
	reqs chan captured
}

// newReceiver starts a receiver answering status and answer; it is closed
// with the test.
func newReceiver(t *testing.T, status int, answer string) *receiver {
	t.Helper()
	r := &receiver{reqs: make(chan captured, 64)}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.reqs <- captured{method: req.Method, path: req.URL.Path, header: req.Header.Clone(), body: body}
		w.WriteHeader(status)
		_, _ = io.WriteString(w, answer)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

// next returns the request the receiver got; the send has returned, so it
// is there already, or never came.
func (r *receiver) next(t *testing.T) captured {
	t.Helper()
	select {
	case c := <-r.reqs:
		return c
	default:
		t.Fatal("the receiver got no request")
		return captured{}
	}
}

// none fails t if the receiver got a request.
func (r *receiver) none(t *testing.T) {
	t.Helper()
	select {
	case c := <-r.reqs:
		t.Fatalf("the receiver got a request: %s %s", c.method, c.path)
	default:
	}
}

// mustNew builds a notifier or fails t.
func mustNew(t *testing.T, s Settings, opts ...Option) Notifier {
	t.Helper()
	n, err := New(s, append([]Option{WithClock(fixedClock), WithUserAgent("responder/test")}, opts...)...)
	if err != nil {
		t.Fatalf("New(%+v): %v", s.Name, err)
	}
	return n
}

// send sends ev with a bounded context.
func send(t *testing.T, n Notifier, ev Event) (Answer, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return n.Send(ctx, ev)
}

// settingsFor returns the settings of a notifier of type typ posting to u.
func settingsFor(typ, u string) Settings {
	s := Settings{Name: "test-" + typ, Type: typ, URL: u}
	if typ == TypeWebhook {
		s.HMACSecret = testSecret
	}
	if typ == TypeLog {
		s.URL = ""
	}
	return s
}
