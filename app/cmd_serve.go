package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"

	"github.com/responder-dev/responder/config"
	"github.com/responder-dev/responder/handlers"
	"github.com/responder-dev/responder/metrics"
)

// submitTimeout bounds how long a webhook waits for the store before 503.
const submitTimeout = 10 * time.Second

func cmdServe(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("serve", stderr)
	configPath := fs.String("config", "", "config file (default responder.yaml when present)")
	dev := fs.Bool("dev", false, "demo mode: temporary store, built-in Defender simulator, example rules, no webhook auth on loopback")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "responder serve: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	path := *configPath
	if path == "" && !*dev {
		path = defaultConfigPath()
	}
	var base *config.Config
	if *dev {
		base = devConfig()
	}
	cfg, err := config.Load(path, base, os.LookupEnv)
	if err != nil {
		fmt.Fprintf(stderr, "responder serve: invalid configuration: %s\n", oneLine(err))
		return 1
	}
	logger, err := newLogger(cfg.Log.Level, cfg.Log.Format, stdout)
	if err != nil {
		fmt.Fprintf(stderr, "responder serve: %v\n", err)
		return 1
	}
	defer func() { _ = logger.Sync() }()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := serve(ctx, cfg, *dev, logger, stdout); err != nil {
		logger.Error("responder stopped", zap.Error(err))
		fmt.Fprintf(stderr, "responder serve: %s\n", oneLine(err))
		return 1
	}
	logger.Info("responder stopped")
	return 0
}

// devConfig is the base configuration of serve --dev: loopback listeners
// without webhook auth. RESPONDER_* variables still apply on top.
func devConfig() *config.Config {
	c := config.Default()
	c.Server.Listen = "127.0.0.1:8080"
	c.Server.AdminListen = "127.0.0.1:9090"
	c.Webhooks.AllowUnauthenticated = true
	c.Defender.DryRun = true
	return c
}

// serve runs the service until ctx ends.
func serve(ctx context.Context, cfg *config.Config, dev bool, logger *zap.Logger, stdout io.Writer) error {
	if dev && !loopbackOnly(cfg.Server.Listen) {
		return errors.New("--dev serves webhooks without authentication, so server.listen must be a loopback address (e.g. 127.0.0.1:8080)")
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := metrics.New(reg)
	m.SetBuildInfo(Version)

	auth, err := handlers.NewWebhookAuth(cfg)
	if err != nil {
		return err
	}
	if !cfg.WebhookAuthConfigured() {
		logger.Warn("webhook authentication is off (webhooks.allow_unauthenticated)")
	}
	sink := newMemSink()
	hooks := &handlers.Webhooks{
		Auth:          auth,
		Sink:          sink,
		MaxBodyBytes:  cfg.Server.MaxBodyBytes,
		SubmitTimeout: submitTimeout,
		Metrics:       m,
		Logger:        logger.Named("webhooks"),
	}
	srv, err := handlers.New(handlers.Options{
		Config:   cfg,
		Webhooks: hooks,
		Gatherer: reg,
		Logger:   logger,
	})
	if err != nil {
		return err
	}
	if err := srv.Listen(); err != nil {
		return err
	}
	logger.Info("responder starting", zap.String("version", Version), zap.String("store", cfg.Store.Driver),
		zap.Bool("dry_run", cfg.Defender.DryRun), zap.Bool("dev", dev))
	if dev {
		printDevHelp(stdout, srv.Addrs())
	}
	return srv.Serve(ctx)
}
