// Package handlers is the HTTP edge of the responder: the webhook endpoints
// with their authentication and limits, the health probes, /metrics and the
// admin API, on one or two listeners with optional TLS and mTLS and a
// graceful shutdown. Handlers only validate and enqueue; workers act.
package handlers

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/responder-dev/responder/alert"
)

// Options configures the HTTP servers.
type Options struct {
	// Settings are the listeners, limits, TLS and admin access; New
	// refuses settings that Settings.Validate refuses.
	Settings Settings
	Webhooks *Webhooks
	Gatherer prometheus.Gatherer
	// Ready reports whether the service can take alerts (store answers,
	// rules loaded); its error text is the reason shown by /readyz.
	Ready  func(ctx context.Context) error
	Admin  AdminAPI
	Logger *zap.Logger
}

// Server runs the public (webhook) listener and the admin listener.
type Server struct {
	opts      Options
	servers   []*http.Server
	listeners []net.Listener
	names     []string
	tls       *tls.Config
}

// New builds the servers; Listen binds them and Serve runs them. It refuses
// what Settings.Validate refuses (config.Load does too): a caller that
// built its own settings must not open the admin API by mistake. An error
// about admin access wraps ErrOpenAdminAPI.
func New(opts Options) (*Server, error) {
	st := opts.Settings
	tc, problems := st.check()
	if len(problems) > 0 {
		errs := make([]error, len(problems))
		for i, p := range problems {
			errs[i] = p
		}
		err := errors.Join(errs...)
		if errors.Is(err, ErrOpenAdminAPI) {
			return nil, fmt.Errorf("%w: %w", ErrOpenAdminAPI, err)
		}
		return nil, fmt.Errorf("invalid HTTP settings: %w", err)
	}
	s := &Server{opts: opts, tls: tc}
	public := newEcho(opts.Logger)
	public.GET("/healthz", func(c echo.Context) error {
		return c.JSON(http.StatusOK, map[string]string{"status": "ok"})
	})
	public.GET("/readyz", s.readyz)
	opts.Webhooks.mount(public)

	admin := public
	if st.Server.AdminListen != "" {
		admin = newEcho(opts.Logger)
		admin.GET("/healthz", func(c echo.Context) error {
			return c.JSON(http.StatusOK, map[string]string{"status": "ok"})
		})
		admin.GET("/readyz", s.readyz)
	}
	admin.GET("/metrics", echo.WrapHandler(promhttp.HandlerFor(opts.Gatherer, promhttp.HandlerOpts{})))
	guard := newAdminGuard(st, opts.Logger.Named("admin"))
	s.mountAdminAPI(admin, guard)
	s.mountPprof(admin, guard)

	s.add("webhooks", st.Server.Listen, public)
	if st.Server.AdminListen != "" {
		s.add("admin", st.Server.AdminListen, admin)
	}
	return s, nil
}

func (s *Server) add(name, addr string, h http.Handler) {
	read := s.opts.Settings.Server.ReadTimeout
	s.names = append(s.names, name)
	s.servers = append(s.servers, &http.Server{
		Addr:              addr,
		Handler:           h,
		ReadHeaderTimeout: min(read, 5*time.Second),
		ReadTimeout:       read,
		// Writing the answer waits for the store (bounded by the submit
		// timeout), so it gets more time than reading.
		WriteTimeout:   read + 20*time.Second,
		IdleTimeout:    2 * time.Minute,
		MaxHeaderBytes: 64 << 10,
		TLSConfig:      s.tls,
		ErrorLog:       zap.NewStdLog(s.opts.Logger.Named("http")),
	})
}

// Listen binds every listener, so that a taken port fails the start at once.
func (s *Server) Listen() error {
	for i, srv := range s.servers {
		ln, err := net.Listen("tcp", srv.Addr)
		if err != nil {
			s.closeListeners()
			return fmt.Errorf("listening for %s on %s: %w", s.names[i], srv.Addr, err)
		}
		s.listeners = append(s.listeners, ln)
	}
	// Logged once every socket is bound (connections queue until Serve),
	// so that whoever waits for the next log line knows every address.
	scheme := "http"
	if s.tls != nil {
		scheme = "https"
	}
	for i, ln := range s.listeners {
		s.opts.Logger.Info("listening", zap.String("listener", s.names[i]), zap.String("addr", ln.Addr().String()), zap.String("scheme", scheme))
	}
	return nil
}

func (s *Server) closeListeners() {
	for _, ln := range s.listeners {
		_ = ln.Close()
	}
	s.listeners = nil
}

// Addrs returns the bound address of each listener by name ("webhooks",
// "admin"), after Listen.
func (s *Server) Addrs() map[string]string {
	out := map[string]string{}
	for i, ln := range s.listeners {
		out[s.names[i]] = ln.Addr().String()
	}
	return out
}

// Serve serves until ctx ends, then shuts down gracefully: it stops
// accepting, lets in-flight requests finish within server.shutdown_timeout,
// and returns. It returns early with an error if a listener fails.
func (s *Server) Serve(ctx context.Context) error {
	if s.listeners == nil {
		if err := s.Listen(); err != nil {
			return err
		}
	}
	errc := make(chan error, len(s.servers))
	var wg sync.WaitGroup
	for i, srv := range s.servers {
		ln := s.listeners[i]
		if s.tls != nil {
			ln = tls.NewListener(ln, s.tls)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("serving %s: %w", srv.Addr, err)
			}
		}()
	}
	var serveErr error
	select {
	case <-ctx.Done():
		s.opts.Logger.Info("shutting down: no new connections; requests in flight finish", zap.Duration("shutdown_timeout", s.opts.Settings.Server.ShutdownTimeout))
	case serveErr = <-errc:
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), s.opts.Settings.Server.ShutdownTimeout)
	defer cancel()
	var errs []error
	for _, srv := range s.servers {
		if err := srv.Shutdown(shutdownCtx); err != nil {
			errs = append(errs, fmt.Errorf("shutting down %s: %w", srv.Addr, err))
			_ = srv.Close()
		}
	}
	wg.Wait()
	if serveErr != nil {
		return serveErr
	}
	return errors.Join(errs...)
}

func (s *Server) readyz(c echo.Context) error {
	if s.opts.Ready != nil {
		ctx, cancel := context.WithTimeout(c.Request().Context(), 2*time.Second)
		defer cancel()
		if err := s.opts.Ready(ctx); err != nil {
			return c.JSON(http.StatusServiceUnavailable, map[string]string{"status": "not ready", "reason": err.Error()})
		}
	}
	return c.JSON(http.StatusOK, map[string]string{"status": "ready"})
}

// formatHints end the decoding error of an evaluate body whose format was
// detected, naming the format to ask for instead.
var formatHints = map[alert.Format]string{
	alert.FormatDefender:     " (decoded as defender; pass ?format=alertmanager for Alertmanager or Grafana)",
	alert.FormatAlertmanager: " (decoded as alertmanager; pass ?format=defender for Defender or Graph)",
}

// detectFormat chooses the format of an evaluate body sent without
// ?format=: a top-level JSON object with an "alerts" member is Alertmanager
// (or Grafana); anything else is Defender. The members are scanned in order,
// so a body broken after its "alerts" key is still taken for Alertmanager.
func detectFormat(body []byte) alert.Format {
	dec := json.NewDecoder(bytes.NewReader(body))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return alert.FormatDefender
	}
	for dec.More() {
		key, err := dec.Token()
		if err != nil {
			break
		}
		if key == "alerts" {
			return alert.FormatAlertmanager
		}
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			break
		}
	}
	return alert.FormatDefender
}

// newEcho builds an Echo instance that answers errors as JSON, recovers from
// panics (logging them) and prints nothing of its own.
func newEcho(logger *zap.Logger) *echo.Echo {
	e := echo.New()
	e.HideBanner = true
	e.HidePort = true
	e.HTTPErrorHandler = func(err error, c echo.Context) {
		if c.Response().Committed {
			return
		}
		code := http.StatusInternalServerError
		msg := "internal error"
		var he *echo.HTTPError
		if errors.As(err, &he) {
			code = he.Code
			msg = http.StatusText(code)
		} else {
			logger.Error("request failed", zap.String("path", c.Path()), zap.Error(err))
		}
		_ = c.JSON(code, ErrorAnswer{Error: msg})
	}
	e.Use(func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) (err error) {
			defer func() {
				if r := recover(); r != nil {
					logger.Error("panic serving request", zap.String("path", c.Path()), zap.Any("panic", r), zap.Stack("stack"))
					err = c.JSON(http.StatusInternalServerError, ErrorAnswer{Error: "internal error"})
				}
			}()
			return next(c)
		}
	})
	return e
}
