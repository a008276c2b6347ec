// Package pipeline works the alerts the store has taken through the queue
// (River on the store's database): the dispatcher turns stored alerts into
// evaluation jobs; the evaluate worker gathers what the decision needs to
// know of the machine (from Defender) and decides with rules.Decide; a
// collection then lives as a state machine (collection.go) from queued to
// done, sending the machine action and tracking it; the download worker
// fetches its package. Background loops keep the gauges, the circuit
// breaker's state, the sweep of unfinished collections, and retention. The
// store holds every SQL statement, rules every decision, defender every
// request to Defender.
package pipeline

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
	"go.uber.org/zap"

	"github.com/responder-dev/responder/alert"
	"github.com/responder-dev/responder/defender"
	"github.com/responder-dev/responder/internal/logsample"
	"github.com/responder-dev/responder/metrics"
	"github.com/responder-dev/responder/quota"
	"github.com/responder-dev/responder/rules"
	"github.com/responder-dev/responder/store"
)

// Config tunes the pipeline. Zero values take the defaults of SPEC section 4.
type Config struct {
	// DryRun decides and audits but never calls a Defender write endpoint.
	DryRun bool
	// PollInterval is the machine action polling period (default 30s).
	PollInterval time.Duration
	// ActionTimeout stops tracking an action after this long (default 72h).
	ActionTimeout time.Duration
	// DownloadDir, when set, receives each finished package.
	DownloadDir string
	// MaxCollectionsPerHour and MaxMachinesPer10m open the circuit breaker.
	MaxCollectionsPerHour int
	MaxMachinesPer10m     int
	// Paused is the kill switch of the config file (safety.paused); the
	// admin API pauses through the store, shared by every replica.
	Paused bool
	// Workers is the number of jobs run at once by this process in each of
	// its queues: evaluate, default (collect) and track (default 20).
	Workers int
	// RetryBase and RetryCap shape the retry backoff of transient failures
	// (defaults 1s and 60s: about 1s, 2s, 4s, ... capped).
	RetryBase, RetryCap time.Duration
	// RetryFor is how long an alert keeps being retried through transient
	// Defender failures (5xx, timeouts, resets) before it is decided
	// without Defender or its collection recorded failed: an outage must
	// not lose an accepted alert (default ActionTimeout).
	RetryFor time.Duration
	// QuotaWait bounds how long a job waits for the quota before it snoozes
	// and frees its worker (default 5s).
	QuotaWait time.Duration
	// RequestTimeout is the Defender client's request timeout (default
	// 15s): a POST whose answer was lost is looked for only once it has
	// certainly ended.
	RequestTimeout time.Duration
	// PostSettle is how long after a POST whose answer was lost the
	// decision only looks for the action it may have created, and never
	// posts again (default 5m): Defender may take a while to process a
	// request and list its action, and a second POST then would make a
	// second action for one decision.
	PostSettle time.Duration
	// Retention is how long finished audit entries and their alerts are
	// kept (store.retention, default 90d; see retention.go). It must exceed
	// RetryFor: an evaluate job names every alert of its batch, and those
	// decided early must outlive the job (the config enforces it).
	Retention time.Duration
	// RetentionInterval is how often a retention pass runs (default 10m);
	// the first runs a tenth of it after Start.
	RetentionInterval time.Duration
	// NotifyRetryBase and NotifyRetryCap shape the backoff of a failing
	// notification delivery (defaults DefaultNotifyRetryBase and
	// DefaultNotifyRetryCap); NotifyGiveUp is how long after its event a
	// delivery is given up (default DefaultNotifyGiveUp, a day).
	NotifyRetryBase, NotifyRetryCap, NotifyGiveUp time.Duration
	// QueueEveryDecision decides every alert in the evaluate queue, none at
	// intake (decideAtDoor): how every alert was decided before, kept so
	// that tests can show both ways decide alike.
	QueueEveryDecision bool
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Defaults of Config (and of the configuration keys that set it: SPEC 4).
const (
	DefaultPollInterval          = 30 * time.Second
	DefaultActionTimeout         = 72 * time.Hour
	DefaultPostSettle            = 5 * time.Minute
	DefaultMaxCollectionsPerHour = 200
	DefaultMaxMachinesPer10m     = 50
)

func (c Config) withDefaults() Config {
	if c.PollInterval <= 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.ActionTimeout <= 0 {
		c.ActionTimeout = DefaultActionTimeout
	}
	if c.MaxCollectionsPerHour <= 0 {
		c.MaxCollectionsPerHour = DefaultMaxCollectionsPerHour
	}
	if c.MaxMachinesPer10m <= 0 {
		c.MaxMachinesPer10m = DefaultMaxMachinesPer10m
	}
	if c.Workers <= 0 {
		c.Workers = 20
	}
	if c.RetryBase <= 0 {
		c.RetryBase = time.Second
	}
	if c.RetryCap <= 0 {
		c.RetryCap = time.Minute
	}
	if c.RetryFor <= 0 {
		c.RetryFor = c.ActionTimeout
	}
	if c.QuotaWait <= 0 {
		c.QuotaWait = 5 * time.Second
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = defender.DefaultTimeout
	}
	if c.PostSettle <= 0 {
		c.PostSettle = DefaultPostSettle
	}
	if c.Retention <= 0 {
		c.Retention = store.DefaultRetention
	}
	if c.RetentionInterval <= 0 {
		c.RetentionInterval = DefaultRetentionInterval
	}
	if c.NotifyRetryBase <= 0 {
		c.NotifyRetryBase = DefaultNotifyRetryBase
	}
	if c.NotifyRetryCap <= 0 {
		c.NotifyRetryCap = DefaultNotifyRetryCap
	}
	if c.NotifyGiveUp <= 0 {
		c.NotifyGiveUp = DefaultNotifyGiveUp
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// Job timing. A job must finish well inside jobTimeout; RescueStuckJobsAfter
// brings back the jobs of a dead replica (SQLite: see recoverSQLite).
const (
	jobTimeout      = 30 * time.Second
	rescueAfter     = 40 * time.Second
	downloadTimeout = 15 * time.Minute
)

// fetchPoll is how often idle evaluate workers look for jobs on
// PostgreSQL: River is not told of jobs inserted inside our own transactions
// (the dispatcher's), so evaluate workers find new work by polling, and
// 10 ms keeps dispatch fast.
//
// slowPoll is every other poll. On SQLite the dispatcher inserts evaluate
// jobs in the queue's own transaction, which wakes the workers at once; the
// other queues' jobs are retries, snoozes and polls scheduled seconds
// ahead, or inserted outside a transaction. A poll costs about 1 ms of CPU
// on SQLite (River's fetch statement is parsed anew each time): polling
// three queues every 10 ms would spend a third of a core.
const (
	fetchPoll = 10 * time.Millisecond
	slowPoll  = 250 * time.Millisecond
)

// evaluateCooldown is the least time between two fetches of evaluate jobs.
// A wake-up within it waits for the rest of it, and alerts arriving every
// 10 ms would each wait about half of a 10 ms cooldown; fetches are driven
// by the dispatcher's inserts, which it spaces itself under a burst.
const evaluateCooldown = 2 * time.Millisecond

func evaluatePoll(driver string) time.Duration {
	if driver == store.DriverPostgres {
		return fetchPoll
	}
	return slowPoll
}

// Pipeline accepts alerts durably and works them through evaluate, collect
// and track jobs on River.
type Pipeline struct {
	store    *store.Store
	intake   *store.Intake
	api      defender.API // nil when no Defender client exists (dry run without credentials)
	quota    quota.Limiter
	rules    *rules.Manager
	m        *metrics.Metrics
	log      *zap.Logger
	cfg      Config
	client   *river.Client[*sql.Tx]
	machines *machineCache
	lookups  chan struct{} // machine reads in flight

	circuitOpen atomic.Bool
	// circuitSynced is set once the store's record of the breaker has been
	// brought in line with what this process sees (after a start).
	circuitSynced atomic.Bool
	// permissions carries the permission findings of token renewals to the
	// background loop, which raises them (the token hook must not block).
	permissions chan []string
	notifierState
	stopOnce sync.Once
	// sample thins the lines an outage or a storm repeats (suppressed
	// decisions, failed dispatches): the audit trail and the metrics keep
	// every one.
	sample *logsample.Sampler

	dispatchNow   chan struct{}
	dispatchDone  chan struct{}
	bgCancel      context.CancelFunc
	bgDone        chan struct{}
	retentionDone chan struct{}
}

// New builds the pipeline on an open store. api may be nil in dry-run mode;
// quota is the action-POST limiter (nil: unlimited, for tests).
func New(st *store.Store, api defender.API, actionQuota quota.Limiter, rm *rules.Manager, m *metrics.Metrics, logger *zap.Logger, cfg Config) (*Pipeline, error) {
	cfg = cfg.withDefaults()
	if v := reflect.ValueOf(api); api != nil && v.Kind() == reflect.Pointer && v.IsNil() {
		api = nil // a typed nil client is no client
	}
	p := &Pipeline{
		store: st, api: api, quota: actionQuota, rules: rm, m: m,
		log: logger.Named("pipeline"), cfg: cfg,
		machines:    newMachineCache(10*time.Minute, cfg.Now),
		sample:      logsample.New(logSampleWindow, cfg.Now),
		lookups:     make(chan struct{}, maxLookups),
		permissions: make(chan []string, 4),
	}
	p.queues = map[string]bool{}
	workers := river.NewWorkers()
	if err := river.AddWorkerSafely(workers, &evaluateWorker{p: p}); err != nil {
		return nil, err
	}
	if err := river.AddWorkerSafely(workers, &collectWorker{p: p}); err != nil {
		return nil, err
	}
	if err := river.AddWorkerSafely(workers, &trackWorker{p: p}); err != nil {
		return nil, err
	}
	if err := river.AddWorkerSafely(workers, &downloadWorker{p: p}); err != nil {
		return nil, err
	}
	if err := river.AddWorkerSafely(workers, &notifyWorker{p: p}); err != nil {
		return nil, err
	}
	client, err := river.NewClient(st.RiverDriver(), &river.Config{
		Queues: map[string]river.QueueConfig{
			river.QueueDefault: {MaxWorkers: cfg.Workers},
			queueEvaluate:      {MaxWorkers: cfg.Workers, FetchPollInterval: evaluatePoll(st.Driver), FetchCooldown: evaluateCooldown},
			queueTrack:         {MaxWorkers: cfg.Workers},
		},
		Workers:              workers,
		JobTimeout:           jobTimeout,
		RescueStuckJobsAfter: rescueAfter,
		MaxAttempts:          10,
		FetchCooldown:        10 * time.Millisecond,
		FetchPollInterval:    slowPoll,
		RetryPolicy:          &backoff{base: cfg.RetryBase, cap: cfg.RetryCap},
		Logger:               riverLogger(logger),
		// The audit trail keeps the history; finished jobs need not stay.
		CompletedJobRetentionPeriod: time.Hour,
	})
	if err != nil {
		return nil, fmt.Errorf("creating the job queue client: %w", err)
	}
	p.client = client
	p.dispatchNow = make(chan struct{}, 1)
	var door store.Door
	if !cfg.QueueEveryDecision {
		door = p.decideAtDoor
	}
	p.intake = store.NewIntake(st, cfg.Now, p.wakeDispatcher, door)
	return p, nil
}

// Start recovers work left in flight by a crash and starts the workers and
// the background loops (queue gauges, circuit state, retention). Stop ends them, and
// the group committer that New started.
func (p *Pipeline) Start(ctx context.Context) error {
	if p.store.Driver == store.DriverSQLite {
		if err := p.recoverSQLite(ctx); err != nil {
			return err
		}
	}
	if err := p.client.Start(ctx); err != nil {
		return fmt.Errorf("starting the job queue: %w", err)
	}
	if err := p.sweepCollections(ctx, 0); err != nil {
		return err
	}
	bg, cancel := context.WithCancel(context.Background())
	p.bgCancel = cancel
	p.bgDone = make(chan struct{})
	p.dispatchDone = make(chan struct{})
	go func() {
		defer close(p.bgDone)
		p.backgroundLoop(bg)
	}()
	go func() {
		defer close(p.dispatchDone)
		p.dispatcher(bg)
	}()
	p.retentionDone = make(chan struct{})
	go func() {
		defer close(p.retentionDone)
		p.retentionLoop(bg)
	}()
	return nil
}

// Stop stops taking alerts, stops fetching new jobs, lets running jobs
// finish within ctx, and stops the background loops. Call it once the HTTP
// servers no longer take webhooks.
func (p *Pipeline) Stop(ctx context.Context) error {
	var err error
	p.stopOnce.Do(func() {
		p.intake.Close()
		if p.bgCancel != nil {
			p.bgCancel()
			<-p.bgDone
			<-p.dispatchDone
			<-p.retentionDone
		}
		err = p.client.Stop(ctx)
		if err != nil {
			// Jobs still running are cut short; they resume on restart.
			err = p.client.StopAndCancel(context.Background())
		}
	})
	return err
}

// recoverSQLite makes jobs that were running when the process died available
// again at once. On SQLite this process is the only node (the store holds an
// exclusive lock), so a job in state running belongs to a dead process. River's
// own rescuer would wait for RescueStuckJobsAfter plus its interval.
func (p *Pipeline) recoverSQLite(ctx context.Context) error {
	n, err := p.store.RecoverRunningJobs(ctx)
	if err != nil {
		return err
	}
	if n > 0 {
		p.log.Warn("resuming jobs left in flight by a previous process", zap.Int64("jobs", n))
	}
	return nil
}

// Ready reports whether the store answers.
func (p *Pipeline) Ready(ctx context.Context) error { return p.store.Ping(ctx) }

// Pause turns the kill switch on for every replica sharing the store.
func (p *Pipeline) Pause(ctx context.Context) error { return p.setPaused(ctx, true) }

// Resume turns the kill switch off. It cannot override safety.paused.
func (p *Pipeline) Resume(ctx context.Context) error {
	if p.cfg.Paused {
		return errors.New("paused by the configuration (safety.paused); change it and restart to resume")
	}
	return p.setPaused(ctx, false)
}

func (p *Pipeline) setPaused(ctx context.Context, on bool) error {
	// Logged by the admin API, which knows who asked and from where.
	return p.store.SetPaused(ctx, on, p.cfg.Now())
}

// Paused reports whether collections are suppressed.
func (p *Pipeline) Paused(ctx context.Context) (bool, error) {
	if p.cfg.Paused {
		return true, nil
	}
	return p.store.Paused(ctx)
}

// Store returns the pipeline's store.
func (p *Pipeline) Store() *store.Store { return p.store }

// Submit stores alerts (store.Intake): it implements alert.Sink and returns
// once they are committed; the dispatcher then hands them to the queue.
func (p *Pipeline) Submit(ctx context.Context, alerts []alert.Alert) (alert.Receipt, error) {
	return p.intake.Submit(ctx, alerts)
}

// backoff is the retry policy of transient failures: base * 2^(n-1), capped,
// with 10% jitter; not River's default attempt^4 seconds.
type backoff struct{ base, cap time.Duration }

func (b *backoff) NextRetry(job *rivertype.JobRow) time.Time {
	n := max(len(job.Errors), 1)
	d := b.base << min(n-1, 20)
	if d > b.cap || d <= 0 {
		d = b.cap
	}
	jitter := time.Duration(rand.Int64N(int64(d)/5+1)) - d/10
	return time.Now().Add(d + jitter)
}
