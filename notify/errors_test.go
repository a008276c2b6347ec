package notify

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestClassify: each answer a receiver may give maps to its class (SPEC 13:
// retry 5xx and timeouts, honour Retry-After on 429, 4xx is permanent), and
// the receiver's answer comes back in Answer and Error.
func TestClassify(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		status     int
		header     map[string]string
		body       string
		class      Class // "" = success
		retryAfter time.Duration
	}{
		{name: "200 ok", status: 200, body: "ok"},
		{name: "202 accepted", status: 202},
		{name: "204 no content", status: 204},
		{name: "400 invalid_blocks", status: 400, body: "invalid_blocks", class: Permanent},
		{name: "403 action_prohibited", status: 403, body: "action_prohibited", class: Permanent},
		{name: "404 no_service", status: 404, body: "no_service", class: Permanent},
		{name: "410 channel_is_archived", status: 410, body: "channel_is_archived", class: Permanent},
		{name: "413 too large", status: 413, class: Permanent},
		{name: "408 request timeout", status: 408, class: Retryable},
		{name: "429 retry-after seconds", status: 429, header: map[string]string{"Retry-After": "7"}, body: "rate_limited", class: RateLimited, retryAfter: 7 * time.Second},
		{name: "429 retry-after date", status: 429, header: map[string]string{"Retry-After": fixedNow.Add(90 * time.Second).Format(http.TimeFormat)}, class: RateLimited, retryAfter: 90 * time.Second},
		{name: "429 retry-after in the past", status: 429, header: map[string]string{"Retry-After": fixedNow.Add(-time.Hour).Format(http.TimeFormat)}, class: RateLimited},
		{name: "429 retry-after unreadable", status: 429, header: map[string]string{"Retry-After": "soon"}, class: RateLimited},
		{name: "429 retry-after huge", status: 429, header: map[string]string{"Retry-After": "999999"}, class: RateLimited, retryAfter: MaxRetryAfter},
		{name: "429 without retry-after", status: 429, class: RateLimited},
		{name: "500", status: 500, body: "internal error", class: Retryable},
		{name: "502", status: 502, class: Retryable},
		{name: "503", status: 503, header: map[string]string{"Retry-After": "30"}, class: Retryable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				for k, v := range tc.header {
					w.Header().Set(k, v)
				}
				w.WriteHeader(tc.status)
				_, _ = io.WriteString(w, tc.body)
			}))
			t.Cleanup(srv.Close)
			for _, typ := range []string{TypeSlack, TypeTeams, TypeWebhook} {
				ans, err := send(t, mustNew(t, settingsFor(typ, srv.URL)), Sample(Failed, fixedNow))
				if ans.Status != tc.status || ans.Body != tc.body {
					t.Errorf("%s: answer %+v, want {%d %q}", typ, ans, tc.status, tc.body)
				}
				if got := ClassOf(err); got != tc.class {
					t.Fatalf("%s: class %q, want %q (err %v)", typ, got, tc.class, err)
				}
				if tc.class == "" {
					continue
				}
				var e *Error
				if !errors.As(err, &e) {
					t.Fatalf("%s: %T is not an *Error", typ, err)
				}
				if e.Status != tc.status || e.Body != tc.body || e.RetryAfter != tc.retryAfter || e.Notifier != "test-"+typ {
					t.Errorf("%s: error %+v, want status %d body %q retry after %s", typ, e, tc.status, tc.body, tc.retryAfter)
				}
				if tc.body != "" && !strings.Contains(err.Error(), tc.body) {
					t.Errorf("%s: %q does not show the receiver's answer %q", typ, err, tc.body)
				}
			}
		})
	}
}

// TestClassifyTimeout: a receiver that does not answer within the timeout
// is retryable, and the error says it was a deadline.
func TestClassifyTimeout(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	s := settingsFor(TypeSlack, srv.URL)
	s.Timeout = 100 * time.Millisecond
	_, err := send(t, mustNew(t, s), Sample(Collected, fixedNow))
	if ClassOf(err) != Retryable || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v (class %q), want a retryable deadline", err, ClassOf(err))
	}
}

// TestClassifyConnectionRefused: nobody listening is retryable.
func TestClassifyConnectionRefused(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	_, err = send(t, mustNew(t, settingsFor(TypeWebhook, "http://"+addr+"/hook")), Sample(Collected, fixedNow))
	var e *Error
	if !errors.As(err, &e) || e.Class != Retryable || e.Status != 0 {
		t.Fatalf("err %v, want a retryable *Error with no status", err)
	}
}

// TestClassifyRedirect: a redirect is not followed (the body would go
// elsewhere) and is permanent; the Location is not echoed.
func TestClassifyRedirect(t *testing.T) {
	t.Parallel()
	elsewhere := newReceiver(t, http.StatusOK, "ok")
	for _, status := range []int{http.StatusMovedPermanently, http.StatusFound, http.StatusTemporaryRedirect, http.StatusPermanentRedirect} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, elsewhere.srv.URL+"/stolen", status)
			}))
			t.Cleanup(srv.Close)
			// Even a client that follows redirects does not, through New.
			ans, err := send(t, mustNew(t, settingsFor(TypeWebhook, srv.URL), WithHTTPClient(&http.Client{})), Sample(Collected, fixedNow))
			if ClassOf(err) != Permanent || !errors.Is(err, ErrRedirect) || ans.Status != status {
				t.Fatalf("answer %+v err %v, want a permanent redirect", ans, err)
			}
			if strings.Contains(err.Error(), "stolen") || strings.Contains(ans.Body, "stolen") {
				t.Errorf("the Location is echoed: %v / %q", err, ans.Body)
			}
			elsewhere.none(t)
		})
	}
}

// TestAnswerCapped: an endless answer is read up to a bound, and at most
// MaxAnswerBytes of it are kept, on one line.
func TestAnswerCapped(t *testing.T) {
	t.Parallel()
	done := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer close(done)
		w.WriteHeader(http.StatusInternalServerError)
		line := []byte(strings.Repeat("é", 100) + "\n")
		for r.Context().Err() == nil {
			if _, err := w.Write(line); err != nil {
				return
			}
		}
	}))
	t.Cleanup(srv.Close)
	s := settingsFor(TypeSlack, srv.URL)
	s.Timeout = MaxTimeout
	start := time.Now()
	ans, err := send(t, mustNew(t, s), Sample(Collected, fixedNow))
	if elapsed := time.Since(start); elapsed > s.Timeout/2 {
		t.Errorf("Send took %s: the answer was not read with a bound", elapsed)
	}
	if ClassOf(err) != Retryable || ans.Status != 500 {
		t.Fatalf("answer %+v err %v", ans.Status, err)
	}
	if len(ans.Body) > MaxAnswerBytes || strings.ContainsAny(ans.Body, "\n\r") || !strings.HasPrefix(ans.Body, "éé") {
		t.Errorf("kept %d bytes: %q", len(ans.Body), ans.Body)
	}
	<-done // the handler saw the connection close
}

// TestClassOf: ClassOf reads an *Error in a chain, a context error, and
// anything else.
func TestClassOf(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err  error
		want Class
	}{
		{nil, ""},
		{&Error{Class: RateLimited}, RateLimited},
		{fmt.Errorf("deliver: %w", &Error{Class: Retryable}), Retryable},
		{context.DeadlineExceeded, Retryable},
		{fmt.Errorf("wait: %w", context.Canceled), Retryable},
		{errors.New("boom"), Permanent},
	} {
		if got := ClassOf(tc.err); got != tc.want {
			t.Errorf("ClassOf(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
	if got := Classes(); len(got) != 3 {
		t.Errorf("Classes() = %v", got)
	}
}

// TestInvalidEvent: an event without an id or with an unknown kind is not
// sent: a permanent ErrEvent, for every type.
func TestInvalidEvent(t *testing.T) {
	t.Parallel()
	rcv := newReceiver(t, http.StatusOK, "ok")
	noID := Sample(Collected, fixedNow)
	noID.ID = ""
	badID := Sample(Collected, fixedNow)
	badID.ID = "a\r\nX-Injected: 1"
	unknown := Sample(Collected, fixedNow)
	unknown.Kind = "exploded"
	for _, typ := range Types() {
		n := mustNew(t, settingsFor(typ, rcv.srv.URL))
		for _, ev := range []Event{noID, badID, unknown} {
			_, err := send(t, n, ev)
			if ClassOf(err) != Permanent || !errors.Is(err, ErrEvent) {
				t.Errorf("%s: Send(kind %q id %q) = %v, want a permanent ErrEvent", typ, ev.Kind, ev.ID, err)
			}
		}
	}
	rcv.none(t)
}
