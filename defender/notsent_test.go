package defender

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
)

// TestNotSent: an action request that never got a connection is NotSent
// (nothing can have reached Defender: posting again is safe); one whose
// connection broke after it was written is not (the action may exist).
func TestNotSent(t *testing.T) {
	t.Parallel()
	closed := httptest.NewServer(http.NotFoundHandler())
	closedURL := closed.URL
	closed.Close() // nothing listens there any more

	cases := []struct {
		name    string
		handler http.HandlerFunc
		apiURL  string
		notSent bool
	}{
		{"connection refused", nil, closedURL, true},
		{"connection dropped after the request", func(w http.ResponseWriter, r *http.Request) {
			if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
				_ = conn.Close()
			}
		}, "", false},
		{"answer 500", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(500) }, "", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, tc.handler, setupOpts{cfg: func(c *Config) {
				if tc.apiURL != "" {
					c.APIURL = tc.apiURL
				}
			}})
			_, err := b.client.CollectInvestigationPackage(context.Background(), testMachine, "c")
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error %v is not an *Error", err)
			}
			if e.NotSent != tc.notSent {
				t.Fatalf("NotSent = %v, want %v (%v)", e.NotSent, tc.notSent, err)
			}
		})
	}

	// A login that fails stops the call before its request: not sent.
	b := setup(t, func(w http.ResponseWriter, r *http.Request) { t.Error("the API was called without a token") },
		setupOpts{tokens: &tokenServer{answer: func(w http.ResponseWriter, _ int64) { w.WriteHeader(503) }}})
	_, err := b.client.CollectInvestigationPackage(context.Background(), testMachine, "c")
	var e *Error
	if !errors.As(err, &e) || !e.NotSent {
		t.Fatalf("login failure: %v (NotSent %v)", err, e != nil && e.NotSent)
	}
}
