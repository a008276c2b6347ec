package defendertest

import (
	"context"
	"net"
	"net/http"
	"sync"
	"time"
)

// TB is the part of testing.TB that NewServer uses; *testing.T and *testing.B satisfy it. The
// package takes this interface rather than testing.TB, and serves without net/http/httptest,
// because responder serve --dev links the simulator into the binary, which carries no test
// code (TestBinaryLinksNoTestCode in the root package checks it).
type TB interface {
	Helper()
	Cleanup(func())
	Fatalf(format string, args ...any)
}

// Server is a Simulator served on a loopback port by NewServer.
type Server struct {
	// URL is the base URL, "http://127.0.0.1:port", without a trailing slash.
	URL string

	srv  *http.Server
	done chan error
	once sync.Once
}

// serverShutdownTimeout bounds how long Close waits for requests in flight (a Fault's Delay)
// before it drops their connections.
const serverShutdownTimeout = 10 * time.Second

// NewServer serves a new Simulator on a loopback port, sets its URL and registers the server's
// Close with tb.Cleanup.
func NewServer(tb TB, opts Options) (*Simulator, *Server) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("defendertest: listen on a loopback port: %v", err)
		return nil, nil // only a TB whose Fatalf returns gets here
	}
	s := New(opts)
	srv := &Server{
		URL:  "http://" + ln.Addr().String(),
		srv:  &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second},
		done: make(chan error, 1),
	}
	s.SetURL(srv.URL)
	go func() { srv.done <- srv.srv.Serve(ln) }()
	tb.Cleanup(srv.Close)
	return s, srv
}

// Close stops the server: it stops accepting, waits for the requests in flight (at most
// serverShutdownTimeout, then drops them) and returns once Serve has returned. Like httptest's
// Close, it also closes http.DefaultTransport's idle connections, which tests use. Calling it
// again does nothing.
func (s *Server) Close() {
	s.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), serverShutdownTimeout)
		defer cancel()
		if err := s.srv.Shutdown(ctx); err != nil {
			_ = s.srv.Close()
		}
		<-s.done // Serve's error is http.ErrServerClosed, or what made it stop early
		if t, ok := http.DefaultTransport.(interface{ CloseIdleConnections() }); ok {
			t.CloseIdleConnections()
		}
	})
}
