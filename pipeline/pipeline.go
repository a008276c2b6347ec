package pipeline

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strconv"
	"strings"
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
	"github.com/responder-dev/responder/rules"
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
	// Now is the clock (default time.Now).
	Now func() time.Time
}

func (c Config) withDefaults() Config {
	if c.PollInterval <= 0 {
		c.PollInterval = 30 * time.Second
	}
	if c.ActionTimeout <= 0 {
		c.ActionTimeout = 72 * time.Hour
	}
	if c.MaxCollectionsPerHour <= 0 {
		c.MaxCollectionsPerHour = 200
	}
	if c.MaxMachinesPer10m <= 0 {
		c.MaxMachinesPer10m = 50
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
		c.RequestTimeout = 15 * time.Second
	}
	if c.PostSettle <= 0 {
		c.PostSettle = 5 * time.Minute
	}
	if c.Retention <= 0 {
		c.Retention = DefaultRetention
	}
	if c.RetentionInterval <= 0 {
		c.RetentionInterval = DefaultRetentionInterval
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
	if driver == DriverPostgres {
		return fetchPoll
	}
	return slowPoll
}

// Pipeline accepts alerts durably and works them through evaluate, collect
// and track jobs on River.
type Pipeline struct {
	store    *Store
	api      defender.API // nil when no Defender client exists (dry run without credentials)
	quota    defender.Limiter
	rules    *rules.Manager
	m        *metrics.Metrics
	log      *zap.Logger
	cfg      Config
	client   *river.Client[*sql.Tx]
	machines *machineCache
	lookups  chan struct{} // machine reads in flight

	circuitOpen atomic.Bool
	stopOnce    sync.Once
	// sample thins the lines an outage or a storm repeats (suppressed
	// decisions, failed dispatches): the audit trail and the metrics keep
	// every one.
	sample *logsample.Sampler

	dispatchNow   chan struct{}
	dispatchDone  chan struct{}
	submits       chan *submitRequest
	closing       chan struct{}
	committerDone chan struct{}
	insertSQLs    map[int]string // the committer's insert statements, by rows
	bgCancel      context.CancelFunc
	bgDone        chan struct{}
	retentionDone chan struct{}
}

// New builds the pipeline on an open store. api may be nil in dry-run mode;
// quota is the action-POST limiter (nil: unlimited, for tests).
func New(store *Store, api defender.API, quota defender.Limiter, rm *rules.Manager, m *metrics.Metrics, logger *zap.Logger, cfg Config) (*Pipeline, error) {
	cfg = cfg.withDefaults()
	if v := reflect.ValueOf(api); api != nil && v.Kind() == reflect.Pointer && v.IsNil() {
		api = nil // a typed nil client is no client
	}
	p := &Pipeline{
		store: store, api: api, quota: quota, rules: rm, m: m,
		log: logger.Named("pipeline"), cfg: cfg,
		machines: newMachineCache(10*time.Minute, cfg.Now),
		sample:   logsample.New(logSampleWindow, cfg.Now),
		lookups:  make(chan struct{}, maxLookups),
	}
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
	client, err := river.NewClient(store.river, &river.Config{
		Queues: map[string]river.QueueConfig{
			river.QueueDefault: {MaxWorkers: cfg.Workers},
			queueEvaluate:      {MaxWorkers: cfg.Workers, FetchPollInterval: evaluatePoll(store.Driver), FetchCooldown: evaluateCooldown},
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
	p.submits = make(chan *submitRequest, 256)
	p.dispatchNow = make(chan struct{}, 1)
	p.closing = make(chan struct{})
	p.committerDone = make(chan struct{})
	p.insertSQLs = map[int]string{}
	go p.committer()
	return p, nil
}

// Start recovers work left in flight by a crash and starts the workers and
// the background loops (queue gauges, circuit state, retention). Stop ends them, and
// the group committer that New started.
func (p *Pipeline) Start(ctx context.Context) error {
	if p.store.Driver == DriverSQLite {
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
		close(p.closing)
		<-p.committerDone
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
	res, err := p.store.DB.ExecContext(ctx,
		`UPDATE river_job SET state = 'available', scheduled_at = datetime('now', 'subsec') WHERE state = 'running'`)
	if err != nil {
		return fmt.Errorf("recovering in-flight jobs: %w", err)
	}
	if n, _ := res.RowsAffected(); n > 0 {
		p.log.Warn("resuming jobs left in flight by a previous process", zap.Int64("jobs", n))
	}
	return nil
}

// Submit stores alerts and enqueues their evaluation; it implements
// alert.Sink and returns once they are committed. A duplicate (same
// DedupKey as a stored alert) is reported, not stored.
//
// Concurrent submissions are committed together (group commit): one
// transaction, so one fsync, serves every webhook request waiting at that
// moment. Nothing waits to fill a batch, so a lone request is not delayed.
func (p *Pipeline) Submit(ctx context.Context, alerts []alert.Alert) (alert.Receipt, error) {
	// Encode here, in the caller's goroutine: the committer is one
	// goroutine serving every request, and its time is the intake's limit.
	req := &submitRequest{ctx: ctx, alerts: alerts, keys: make([]string, len(alerts)), payloads: make([]string, len(alerts)), done: make(chan submitResult, 1)}
	for i := range alerts {
		payload, err := json.Marshal(&alerts[i])
		if err != nil {
			return alert.Receipt{}, fmt.Errorf("encoding alert: %w", err)
		}
		req.keys[i], req.payloads[i] = alerts[i].DedupKey(), string(payload)
	}
	select {
	case p.submits <- req:
	case <-ctx.Done():
		return alert.Receipt{}, ctx.Err()
	case <-p.closing:
		return alert.Receipt{}, errClosed
	}
	select {
	case res := <-req.done:
		return res.receipt, res.err
	case <-ctx.Done():
		// The batch may still commit; a retry by the sender is then a
		// duplicate, which is harmless.
		return alert.Receipt{}, ctx.Err()
	}
}

var errClosed = errors.New("the pipeline is stopped")

type submitRequest struct {
	ctx      context.Context
	alerts   []alert.Alert
	keys     []string // dedup keys, by alert
	payloads []string // stored JSON, by alert
	done     chan submitResult
}

type submitResult struct {
	receipt alert.Receipt
	err     error
}

// maxBatchAlerts bounds one group commit.
const maxBatchAlerts = 2000

// committer runs group commits until closing is closed.
func (p *Pipeline) committer() {
	defer close(p.committerDone)
	for {
		var first *submitRequest
		select {
		case first = <-p.submits:
		case <-p.closing:
			return
		}
		batch, n := []*submitRequest{first}, len(first.alerts)
	fill:
		for n < maxBatchAlerts {
			select {
			case r := <-p.submits:
				batch = append(batch, r)
				n += len(r.alerts)
			default:
				break fill
			}
		}
		p.commitBatch(batch)
	}
}

// commitBatch stores the alerts of every live request in one transaction
// and answers each request.
func (p *Pipeline) commitBatch(batch []*submitRequest) {
	live := batch[:0]
	for _, r := range batch {
		if err := r.ctx.Err(); err != nil {
			r.done <- submitResult{err: err}
			continue
		}
		live = append(live, r)
	}
	if len(live) == 0 {
		return
	}
	receipts := make([]alert.Receipt, len(live))
	// Insert in dedup-key order: concurrent batches on PostgreSQL (other
	// replicas) then take the unique-index locks in one global order and
	// cannot deadlock on each other.
	type item struct {
		req, idx int
		key      string
	}
	var items []item
	for ri, r := range live {
		receipts[ri] = alert.Receipt{Duplicate: make([]bool, len(r.alerts))}
		for i := range r.alerts {
			items = append(items, item{ri, i, r.keys[i]})
		}
	}
	slices.SortFunc(items, func(a, b item) int { return strings.Compare(a.key, b.key) })
	now := p.cfg.Now()
	// The batch outlives any one request's context: it serves them all.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// A key that occurs twice in the batch is stored once: its first
	// occurrence (the sorted order is stable) decides, the others are
	// duplicates of it.
	var unique []item
	for i, it := range items {
		if i > 0 && it.key == items[i-1].key {
			receipts[it.req].Duplicate[it.idx] = true
			continue
		}
		unique = append(unique, it)
	}
	err := p.store.retryTx(ctx, func(tx *sql.Tx) error {
		// Many rows per statement: one round trip (PostgreSQL) and one
		// statement execution (SQLite) per chunk, not per alert.
		for start := 0; start < len(unique); start += insertChunk {
			chunk := unique[start:min(start+insertChunk, len(unique))]
			args := make([]any, 0, 7*len(chunk))
			for _, it := range chunk {
				r := live[it.req]
				a := &r.alerts[it.idx]
				args = append(args, it.key, string(a.Source), a.ID, a.MachineID, a.MachineName, r.payloads[it.idx], ms(now))
			}
			rows, err := tx.QueryContext(ctx, p.insertSQL(len(chunk)), args...)
			if err != nil {
				return fmt.Errorf("storing alerts: %w", err)
			}
			stored := make(map[string]bool, len(chunk))
			for rows.Next() {
				var key string
				if err := rows.Scan(&key); err != nil {
					rows.Close()
					return fmt.Errorf("storing alerts: %w", err)
				}
				stored[key] = true
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return fmt.Errorf("storing alerts: %w", err)
			}
			for _, it := range chunk {
				receipts[it.req].Duplicate[it.idx] = !stored[it.key]
			}
		}
		return nil
	})
	if err == nil {
		p.wakeDispatcher()
	}
	for ri, r := range live {
		if err != nil {
			r.done <- submitResult{err: err}
			continue
		}
		r.done <- submitResult{receipt: receipts[ri]}
	}
}

// insertChunk bounds the rows of one insert statement (7 parameters each,
// well inside both databases' parameter limits).
const insertChunk = 100

// insertSQL returns the insert statement for n alert rows; its text depends
// only on n, so both drivers' statement caches reuse it. SQLite gets
// anonymous parameters: the driver looks each numbered one up by name in a
// list as long as the statement's parameters (quadratic in the rows).
func (p *Pipeline) insertSQL(n int) string {
	if q, ok := p.insertSQLs[n]; ok {
		return q
	}
	var b strings.Builder
	b.WriteString(`INSERT INTO responder_alert (dedup_key, source, alert_id, machine_id, machine_name, payload, received_at, dispatched) VALUES `)
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		if p.store.Driver == DriverSQLite {
			b.WriteString("(?, ?, ?, ?, ?, ?, ?, 0)")
			continue
		}
		fmt.Fprintf(&b, "($%d, $%d, $%d, $%d, $%d, $%d, $%d, 0)", 7*i+1, 7*i+2, 7*i+3, 7*i+4, 7*i+5, 7*i+6, 7*i+7)
	}
	b.WriteString(` ON CONFLICT (dedup_key) DO NOTHING RETURNING dedup_key`)
	p.insertSQLs[n] = b.String()
	return p.insertSQLs[n]
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
	_, err := p.store.DB.ExecContext(ctx, `UPDATE responder_setting SET value = $1, updated_at = $2 WHERE name = 'paused'`,
		strconv.FormatBool(on), ms(p.cfg.Now()))
	if err != nil {
		return fmt.Errorf("setting the kill switch: %w", err)
	}
	// Logged by the admin API, which knows who asked and from where.
	return nil
}

// Paused reports whether collections are suppressed.
func (p *Pipeline) Paused(ctx context.Context) (bool, error) {
	if p.cfg.Paused {
		return true, nil
	}
	return pausedIn(ctx, p.store.DB)
}

func pausedIn(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}) (bool, error) {
	var v string
	if err := q.QueryRowContext(ctx, `SELECT value FROM responder_setting WHERE name = 'paused'`).Scan(&v); err != nil {
		return false, fmt.Errorf("reading the kill switch: %w", err)
	}
	return v == "true", nil
}

// Store returns the pipeline's store.
func (p *Pipeline) Store() *Store { return p.store }

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
