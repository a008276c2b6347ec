package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"

	"github.com/responder-dev/responder/alert"
	"github.com/responder-dev/responder/audit"
	"github.com/responder-dev/responder/config"
	"github.com/responder-dev/responder/defender"
	"github.com/responder-dev/responder/handlers"
	"github.com/responder-dev/responder/internal/logging"
	"github.com/responder-dev/responder/internal/loopback"
	"github.com/responder-dev/responder/metrics"
	"github.com/responder-dev/responder/pipeline"
	"github.com/responder-dev/responder/quota"
	"github.com/responder-dev/responder/rules"
	"github.com/responder-dev/responder/store"
)

// submitTimeout bounds how long a webhook waits for the store before 503.
const submitTimeout = 10 * time.Second

// requestTimeout bounds each Defender request; jobs must finish well within
// the queue's job timeout.
const requestTimeout = defender.DefaultTimeout

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
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	path := *configPath
	if path == "" && !*dev {
		path = defaultConfigPath()
	}
	var base *config.Config
	var devEnv *devEnvironment
	if *dev {
		var err error
		devEnv, err = startDev(ctx)
		if err != nil {
			fmt.Fprintf(stderr, "responder serve: --dev: %s\n", oneLine(err))
			return 1
		}
		defer devEnv.Close()
		base = devEnv.config()
	}
	cfg, err := config.Load(path, base, os.LookupEnv)
	if err != nil {
		fmt.Fprintf(stderr, "responder serve: invalid configuration: %s\n", oneLine(err))
		return 1
	}
	logger, err := logging.New(cfg.Log.Level, cfg.Log.Format, stdout)
	if err != nil {
		fmt.Fprintf(stderr, "responder serve: %v\n", err)
		return 1
	}
	defer func() { _ = logger.Sync() }()

	if err := serve(ctx, cfg, devEnv, logger, stdout); err != nil {
		logger.Error("responder stopped", zap.Error(err))
		fmt.Fprintf(stderr, "responder serve: %s\n", oneLine(err))
		return 1
	}
	logger.Info("responder stopped")
	return 0
}

// serve runs the service until ctx ends.
func serve(ctx context.Context, cfg *config.Config, dev *devEnvironment, logger *zap.Logger, stdout io.Writer) error {
	web := cfg.Handlers()
	if dev != nil && !loopback.Listen(web.Server.Listen) && !web.WebhookAuthConfigured() {
		return errors.New("--dev serves webhooks without authentication, so server.listen must be a loopback address (e.g. 127.0.0.1:8080)")
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := metrics.New(reg)
	m.SetBuildInfo(Version)

	rm, err := rules.NewManager(cfg.Rules.Files, m, logger)
	if err != nil {
		return fmt.Errorf("rules: %w", err)
	}
	st, err := store.Open(ctx, cfg.Store.Driver, cfg.Store.DSN)
	if err != nil {
		return err
	}
	defer st.Close()
	if st.Created && dev == nil {
		// Not an error on a first start, but after a wrong path it would
		// mean that every cooldown and dedup key is gone: say so.
		logger.Warn("new empty store created", zap.String("store", cfg.Store.Driver), zap.String("path", cfg.Store.DSN))
	}

	limiters, err := quotaLimiters(ctx, cfg, st, logger)
	if err != nil {
		return err
	}
	perms := &permissionCheck{log: logger.Named("defender"), current: rm.Current, dryRun: cfg.Defender.DryRun, writeBack: cfg.Defender.WriteBack}
	client, err := newDefender(cfg, limiters, m, logger, perms)
	if err != nil {
		return err
	}
	if client != nil {
		defer goOwned(ctx, func(ctx context.Context) {
			checkTokenAtStart(ctx, client, cfg.Defender.WriteBack, logger.Named("defender"))
		})()
	}
	// A nil *Client must become a nil interface, not a typed nil.
	var api defender.API
	var quota quota.Limiter
	if client != nil {
		api = client
		quota = limiters[defender.GroupActions]
	}
	p, err := pipeline.New(st, api, quota, rm, m, logger, pipeline.Config{
		DryRun:                cfg.Defender.DryRun,
		PollInterval:          cfg.Defender.PollInterval,
		ActionTimeout:         cfg.Defender.ActionTimeout,
		DownloadDir:           cfg.Defender.DownloadDir,
		MaxCollectionsPerHour: cfg.Safety.MaxCollectionsPerHour,
		MaxMachinesPer10m:     cfg.Safety.MaxMachinesPer10m,
		Paused:                cfg.Safety.Paused,
		RequestTimeout:        requestTimeout,
		PostSettle:            cfg.Defender.PostSettle,
		Retention:             cfg.Store.Retention,
	})
	if err != nil {
		return err
	}
	perms.raise(p.NotePermissions)
	notifiers := &notifierSet{path: cfg.File, dev: dev != nil, p: p, client: client, log: logger}
	if dev != nil {
		notifiers.base = dev.config()
	}
	if err := notifiers.apply(cfg); err != nil {
		return err
	}
	reload := func(by string, fields ...zap.Field) error {
		return errors.Join(rm.ReloadBy(by, fields...), notifiers.reload())
	}

	auth, err := handlers.NewWebhookAuth(web)
	if err != nil {
		return err
	}
	if !web.WebhookAuthConfigured() {
		logger.Warn("webhook authentication is off (webhooks.allow_unauthenticated)")
	}
	if len(web.Admin.Tokens) == 0 {
		logger.Warn("the admin API has no token (admin.allow_unauthenticated): any local user can pause, resume and reload", zap.String("admin_listen", cfg.Server.AdminListen))
	}
	if cfg.Defender.DryRun {
		logger.Warn("dry run: decisions are recorded, Defender is never asked to act (defender.dry_run)")
	}
	hooks := &handlers.Webhooks{
		Auth:           auth,
		Sink:           p,
		MaxBodyBytes:   web.Server.MaxBodyBytes,
		AcceptResolved: func() bool { return rm.Current().AcceptsResolved() },
		SubmitTimeout:  submitTimeout,
		Metrics:        m,
		Logger:         logger.Named("webhooks"),
	}
	srv, err := handlers.New(handlers.Options{
		Settings: web,
		Webhooks: hooks,
		Gatherer: reg,
		Ready: func(ctx context.Context) error {
			if rm.Current() == nil {
				return errors.New("rules not loaded")
			}
			return p.Ready(ctx)
		},
		Admin:  adminAPI(p, rm, cfg, reload),
		Logger: logger,
	})
	if err != nil {
		return err
	}
	if err := srv.Listen(); err != nil {
		return err
	}
	if err := p.Start(ctx); err != nil {
		return err
	}
	defer func() {
		stopCtx, cancel := context.WithTimeout(context.Background(), cfg.Server.ShutdownTimeout)
		defer cancel()
		if err := p.Stop(stopCtx); err != nil {
			logger.Warn("stopping the workers", zap.Error(err))
		}
	}()

	// The rule watcher and SIGHUP share the reload path of POST /api/v1/reload.
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		if err := rm.Run(ctx); err != nil {
			logger.Error("rule watcher stopped", zap.Error(err))
		}
	}()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				_ = reload(rules.BySignal) // logged by ReloadBy and the notifiers
			}
		}
	}()

	logger.Info("responder starting", zap.String("version", Version), zap.String("store", cfg.Store.Driver),
		zap.Int("rules", rm.Current().Len()), zap.Bool("dry_run", cfg.Defender.DryRun), zap.Bool("dev", dev != nil))
	if dev != nil {
		_ = logger.Sync() // the lines above first: the help is written beside the log, not through it
		printDevHelp(stdout, srv.Addrs(), cfg.Store.DSN)
	}
	err = srv.Serve(ctx)
	<-watchDone
	return err
}

// newDefender builds the Defender client, or returns nil in dry-run mode
// without a credential (decisions are then recorded, nothing is looked up).
// config.Load has checked the client's settings with the client's own rules.
func newDefender(cfg *config.Config, limiters map[defender.Group]quota.Limiter, m *metrics.Metrics, logger *zap.Logger, perms *permissionCheck) (*defender.Client, error) {
	dc, build := cfg.DefenderClient()
	if !build {
		return nil, nil
	}
	dc.UserAgent, dc.LimiterSlack = UserAgent(), quota.DefaultSlack
	// The pipeline takes the action quota itself, so that a job waiting for
	// it frees its worker.
	opts := []defender.Option{defender.WithLimiter(defender.GroupActions, nil), defender.WithTokenRoles(perms.roles),
		defender.WithGraphTokenRoles(perms.graphRoles)}
	for g, l := range limiters {
		if g != defender.GroupActions {
			opts = append(opts, defender.WithLimiter(g, l))
		}
	}
	c, err := defender.New(dc, m, logger, opts...)
	if err != nil {
		return nil, fmt.Errorf("defender: %w", err)
	}
	return c, nil
}

// goOwned runs fn in a goroutine on a child of ctx and returns the function
// that cancels it and waits for it to return, for the caller to defer.
func goOwned(ctx context.Context, fn func(context.Context)) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(ctx)
	}()
	return func() { cancel(); <-done }
}

// quotaLimiters returns the quota limiter of every API group. Both keep
// every call in the store before it is sent, so that a restart, even a
// crash loop, never grants a fresh quota: on PostgreSQL they are shared by
// the replicas; on SQLite (one node) they wait in process.
func quotaLimiters(ctx context.Context, cfg *config.Config, st *store.Store, logger *zap.Logger) (map[defender.Group]quota.Limiter, error) {
	rl := cfg.Defender.RateLimit
	windows := func(g defender.Group) quota.Windows {
		if g == defender.GroupPackageURI {
			return quota.Windows{PerMinute: defender.PackageURIPerMinute, PerHour: defender.PackageURIPerHour, Slack: quota.DefaultSlack}
		}
		return quota.Windows{PerMinute: rl.PerMinute, PerHour: rl.PerHour, Slack: quota.DefaultSlack}
	}
	limiters := map[defender.Group]quota.Limiter{}
	for _, g := range defender.Groups {
		if st.Driver == store.DriverPostgres {
			limiters[g] = quota.NewShared(st, string(g), windows(g))
			continue
		}
		l, err := quota.NewLocal(ctx, st, string(g), windows(g))
		if err != nil {
			return nil, err
		}
		limiters[g] = l
	}
	return limiters, nil
}

// adminAPI binds the admin endpoints to the pipeline and the rules.
func adminAPI(p *pipeline.Pipeline, rm *rules.Manager, cfg *config.Config, reload func(by string, fields ...zap.Field) error) handlers.AdminAPI {
	return handlers.AdminAPI{
		Rules: func() any {
			set := rm.Current()
			return map[string]any{"rules": set.Rules(), "files": set.Files()}
		},
		Reload: func(ctx context.Context) error {
			req, _ := handlers.RequesterFrom(ctx)
			return reload(req.By, zap.String("remote_addr", req.RemoteAddr))
		},
		Evaluate: func(ctx context.Context, format alert.Format, body []byte) (any, error) {
			return p.Explain(ctx, format, body)
		},
		Pause:  p.Pause,
		Resume: p.Resume,
		Paused: p.Paused,
		Actions: func(ctx context.Context, q handlers.ActionsQuery) (any, error) {
			return p.Store().EntriesPage(ctx, store.Filter{MachineID: q.Machine, Status: q.Status, Limit: q.Limit, BeforeID: q.BeforeID})
		},
		Action: func(ctx context.Context, id string) (any, error) {
			n, err := strconv.ParseInt(strings.TrimSpace(id), 10, 64)
			if err != nil {
				return nil, handlers.ErrNotFound
			}
			e, err := p.Store().Entry(ctx, n)
			if errors.Is(err, store.ErrNoEntry) {
				return nil, handlers.ErrNotFound
			}
			if err != nil {
				return nil, err
			}
			ns, err := p.Store().Notifications(ctx, n)
			if err != nil {
				return nil, err
			}
			return actionView{Entry: e, Notifications: notificationViews(ns)}, nil
		},
		Replay: func(ctx context.Context, rulesYAML []byte, q handlers.ReplayQuery) (any, error) {
			return replayAPI(ctx, cfg, rulesYAML, q)
		},
	}
}

// actionView is one audit entry as GET /api/v1/actions/{id} shows it: the
// entry and what became of the notifications it raised.
type actionView struct {
	*audit.Entry
	Notifications []notificationView `json:"notifications"`
}

// notificationView is one notification of an entry.
type notificationView struct {
	Notifier string     `json:"notifier"`
	Event    string     `json:"event"`
	ID       string     `json:"event_id"`
	State    string     `json:"state"`
	Attempts int        `json:"attempts"`
	SentAt   *time.Time `json:"sent_at,omitempty"`
	Answer   string     `json:"answer,omitempty"`
}

func notificationViews(ns []store.Notification) []notificationView {
	out := make([]notificationView, 0, len(ns))
	for _, n := range ns {
		v := notificationView{Notifier: n.Notifier, Event: n.Event, ID: n.EventID, State: n.State, Attempts: n.Attempts, Answer: n.Answer}
		if !n.SentAt.IsZero() {
			v.SentAt = &n.SentAt
		}
		out = append(out, v)
	}
	return out
}
