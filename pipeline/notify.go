package pipeline

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/responder-dev/responder/notify"
	"github.com/responder-dev/responder/store"
)

// Notifications (SPEC 13). An event (a decision to collect, the end of a
// collection, the circuit breaker, a missing permission) is stored once
// per notifier that takes it, in the transaction of the change it reports,
// with a delivery job: an event is never lost with a crash, and never
// raised twice by one change. Each notifier has a queue of its own, so a
// slow or dead receiver holds up neither a collection nor another
// notifier. A delivery is retried with backoff through 5xx answers and
// timeouts, waits as asked on a 429, and is given up a day after the event;
// a crash between a send and its record repeats that one message (the
// document's id lets the receiver drop it).

// Delivery defaults (Config.NotifyRetryBase, NotifyRetryCap, NotifyGiveUp).
const (
	DefaultNotifyRetryBase = 2 * time.Second
	DefaultNotifyRetryCap  = time.Minute
	DefaultNotifyGiveUp    = 24 * time.Hour
)

// notifyWorkers is the number of deliveries one process runs at once per
// notifier: enough for a burst, few enough not to hammer a receiver.
const notifyWorkers = 2

// notifyJobMaxAttempts is past what a day of retries at the backoff's cap
// takes: the age of the event, not the queue, decides when to give up.
const notifyJobMaxAttempts = 10000

// notifyQueue is the queue of one notifier's deliveries.
func notifyQueue(name string) string { return "notify_" + name }

type notifyArgs struct {
	ID int64 `json:"id"`
}

func (notifyArgs) Kind() string { return "responder.notify" }

type notifyWorker struct {
	river.WorkerDefaults[notifyArgs]
	p *Pipeline
}

// notifiers is the set of notifiers in force; reloads swap it whole.
type notifiers struct {
	list   []notify.Notifier
	byName map[string]notify.Notifier
}

func (s *notifiers) get(name string) notify.Notifier {
	if s == nil {
		return nil
	}
	return s.byName[name]
}

// taker is a notifier that chooses its events by more than kind and rule
// (the write-back takes only events of an action on a Defender alert).
type taker interface {
	Takes(ev notify.Event) bool
}

func takes(n notify.Notifier, ev notify.Event) bool {
	if t, ok := n.(taker); ok {
		return t.Takes(ev)
	}
	return n.Wants(ev.Kind, ev.Rule)
}

// SetNotifiers puts list in force: events raised from now on go to those
// that take them; deliveries pending for a notifier no longer in list are
// dropped when their turn comes. Names must be unique.
func (p *Pipeline) SetNotifiers(list []notify.Notifier) error {
	set := &notifiers{list: list, byName: make(map[string]notify.Notifier, len(list))}
	names := make([]string, 0, len(list))
	for _, n := range list {
		if _, dup := set.byName[n.Name()]; dup {
			return fmt.Errorf("notifier %q is configured twice", n.Name())
		}
		set.byName[n.Name()] = n
		names = append(names, n.Name())
	}
	p.queuesMu.Lock()
	defer p.queuesMu.Unlock()
	for _, name := range names {
		if p.queues[name] {
			continue
		}
		err := p.client.Queues().Add(notifyQueue(name), river.QueueConfig{MaxWorkers: notifyWorkers})
		var dup *river.QueueAlreadyAddedError
		if err != nil && !errors.As(err, &dup) {
			return fmt.Errorf("adding the delivery queue of notifier %q: %w", name, err)
		}
		p.queues[name] = true
	}
	p.m.InitNotifiers(names, notifyKinds())
	p.notifiers.Store(set)
	return nil
}

func notifyKinds() []string {
	kinds := notify.Kinds()
	out := make([]string, len(kinds))
	for i, k := range kinds {
		out[i] = string(k)
	}
	return out
}

// raise stores ev for every notifier in force that takes it, each with its
// delivery job, through tx: they commit with the change ev reports.
// orderKey names the events delivered in order ("" for none).
func (p *Pipeline) raise(ctx context.Context, tx *sql.Tx, ev notify.Event, orderKey string) error {
	set := p.notifiers.Load()
	if set == nil || len(set.list) == 0 {
		return nil
	}
	var body []byte
	var jobs []river.InsertManyParams
	for _, n := range set.list {
		if !takes(n, ev) {
			continue
		}
		if body == nil {
			var err error
			if body, err = json.Marshal(ev); err != nil {
				return fmt.Errorf("encoding the %s event: %w", ev.Kind, err)
			}
		}
		id, err := p.store.AddNotification(ctx, tx, store.Notification{CreatedAt: ev.Time, Notifier: n.Name(), Event: string(ev.Kind),
			EventID: ev.ID, OrderKey: orderKey, AuditID: ev.AuditID, Body: body})
		if err != nil {
			return err
		}
		if id == 0 {
			continue // raised before, by a transaction that was redone
		}
		opts := &river.InsertOpts{Queue: notifyQueue(n.Name()), MaxAttempts: notifyJobMaxAttempts}
		if wait := p.failing.wait(n.Name(), ev.Time); wait > 0 {
			// The receiver is failing: the delivery waits, parked, for the
			// probe to find it back rather than being fetched to learn so.
			opts.ScheduledAt = time.Now().Add(p.parkFor(wait)) // the queue's clock, not the pipeline's
		}
		jobs = append(jobs, river.InsertManyParams{Args: notifyArgs{ID: id}, InsertOpts: opts})
	}
	if len(jobs) == 0 {
		return nil
	}
	if _, err := p.client.InsertManyTx(ctx, tx, jobs); err != nil {
		return fmt.Errorf("enqueueing the deliveries of the %s event: %w", ev.Kind, err)
	}
	return nil
}

// wantsAny reports whether a notifier in force takes events of kind k for
// rule: the cheap test before an event is built.
func (p *Pipeline) wantsAny(k notify.Kind, rule string) bool {
	set := p.notifiers.Load()
	if set == nil {
		return false
	}
	for _, n := range set.list {
		if n.Wants(k, rule) {
			return true
		}
	}
	return false
}

// Timeout bounds one delivery job: the notifier's own request timeout
// (notify.MaxTimeout at most) is shorter, and the job ends before the queue
// would take it for stuck (rescueAfter) and run it again.
func (w *notifyWorker) Timeout(*river.Job[notifyArgs]) time.Duration { return jobTimeout }

// NextRetry spaces the retries of a delivery job that erred before it
// could send (a store error); a failed send snoozes until the notifier's
// hold ends instead. base * 2^(n-1),
// capped, with 10% jitter.
func (w *notifyWorker) NextRetry(job *river.Job[notifyArgs]) time.Time {
	return time.Now().Add(w.p.notifyBackoff(len(job.Errors) + 1))
}

func (p *Pipeline) notifyBackoff(attempt int) time.Duration {
	d := p.cfg.NotifyRetryBase << min(max(attempt-1, 0), 20)
	if d > p.cfg.NotifyRetryCap || d <= 0 {
		d = p.cfg.NotifyRetryCap
	}
	return d + time.Duration(rand.Int64N(int64(d)/5+1)) - d/10
}

// Work delivers one notification.
func (w *notifyWorker) Work(ctx context.Context, job *river.Job[notifyArgs]) error {
	p := w.p
	n, err := p.store.Notification(ctx, job.Args.ID)
	if errors.Is(err, store.ErrNoNotification) {
		return river.JobCancel(err)
	}
	if err != nil {
		return err
	}
	if n.State != store.NotificationPending {
		return nil // recorded by an earlier run, which the queue did not see finish
	}
	log := p.log.With(zap.String("notifier", n.Notifier), zap.String("event", n.Event), zap.String("event_id", n.EventID))
	target := p.notifiers.Load().get(n.Notifier)
	now := p.cfg.Now()
	switch {
	case target == nil:
		return p.endNotification(ctx, n, store.NotificationDropped, false, "the notifier is no longer configured", log)
	case now.Sub(n.CreatedAt) > p.cfg.NotifyGiveUp:
		return p.endNotification(ctx, n, store.NotificationGaveUp, false,
			fmt.Sprintf("not delivered within %s of the event; last answer: %s", p.cfg.NotifyGiveUp, n.Answer), log)
	}
	if wait := p.failing.wait(n.Notifier, now); wait > 0 {
		if p.failing.probing(n.Notifier, n.ID) {
			return river.JobSnooze(wait) // the delivery that finds out when the receiver is back
		}
		return river.JobSnooze(p.parkFor(wait)) // woken when the probe gets through
	}
	if earlier, err := p.store.EarlierPending(ctx, n); err != nil || earlier {
		if err != nil {
			return err
		}
		return river.JobSnooze(time.Second) // the alert's earlier events go first
	}
	return p.deliver(ctx, n, target, log)
}

// deliver sends a notification once and records what came of it.
func (p *Pipeline) deliver(ctx context.Context, n *store.Notification, target notify.Notifier, log *zap.Logger) error {
	var ev notify.Event
	if err := json.Unmarshal(n.Body, &ev); err != nil {
		return p.endNotification(ctx, n, store.NotificationFailed, false, "the stored event does not decode: "+err.Error(), log)
	}
	answer, err := target.Send(ctx, ev)
	now := p.cfg.Now()
	if err == nil {
		back := p.failing.ok(n.Notifier)
		if _, err := p.store.FinishNotification(ctx, n.ID, store.NotificationSent, true, answerText(answer, nil), now); err != nil {
			return err
		}
		if back {
			p.wakeParked(ctx, n.Notifier, log)
		}
		p.m.Notifications.WithLabelValues(n.Notifier, n.Event, "sent").Inc()
		p.m.NotificationDelay.WithLabelValues(n.Notifier).Observe(max(now.Sub(n.CreatedAt).Seconds(), 0))
		log.Debug("notification sent", zap.Int("status", answer.Status))
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err() // stopping: tried again on restart
	}
	text := answerText(answer, err)
	var ne *notify.Error
	errors.As(err, &ne)
	switch notify.ClassOf(err) {
	case notify.Permanent:
		return p.endNotification(ctx, n, store.NotificationFailed, true, text, log)
	case notify.RateLimited:
		var asked time.Duration
		if ne != nil {
			asked = ne.RetryAfter
		}
		wait := p.failing.fail(n.Notifier, n.ID, now, p.notifyBackoff, asked)
		if err := p.retried(ctx, n, text, now); err != nil {
			return err
		}
		p.sample.Write(log, zapcore.WarnLevel, "notify-429:"+n.Notifier, "notifier rate limited the delivery; waiting as asked", zap.Duration("retry_after", wait))
		return river.JobSnooze(wait)
	}
	hold := p.failing.fail(n.Notifier, n.ID, now, p.notifyBackoff, 0)
	if err := p.retried(ctx, n, text, now); err != nil {
		return err
	}
	p.sample.Write(log, zapcore.WarnLevel, "notify-fail:"+n.Notifier, "notification delivery failed; will retry",
		zap.Int("attempt", n.Attempts+1), zap.Duration("retry_in", hold), zap.Error(err))
	// Tried again when the notifier's hold ends (not by the job's own
	// attempts): this delivery is the probe the parked ones wait on.
	return river.JobSnooze(hold)
}

// parkFor is how long a delivery to a failing notifier waits when it is
// not the probe: the probe wakes it when the receiver answers again (or,
// after a restart, the first delivery that gets through), so the wait is
// only a backstop, long enough that parked deliveries cost nothing while
// the receiver stays down (parkSpans holds at the backoff's cap).
func (p *Pipeline) parkFor(hold time.Duration) time.Duration {
	d := max(hold, parkSpans*p.cfg.NotifyRetryCap)
	return d + time.Duration(rand.Int64N(int64(d)/10+1))
}

// parkSpans is the park of a delivery, in holds at the backoff's cap: 10
// minutes by default, so a day's give-up is seen within 10 minutes.
const parkSpans = 10

// wakeParked makes the parked deliveries of notifier name due now: its
// receiver answered again. A delivery this misses (listed as it was
// being parked) wakes at the end of its park.
func (p *Pipeline) wakeParked(ctx context.Context, name string, log *zap.Logger) {
	params := river.NewJobListParams().Queues(notifyQueue(name)).Kinds(notifyArgs{}.Kind()).
		States(rivertype.JobStateScheduled, rivertype.JobStateAvailable, rivertype.JobStateRetryable).First(500)
	woken := 0
	for {
		res, err := p.client.JobList(ctx, params)
		if err != nil {
			log.Warn("listing the parked deliveries failed; they wake when their park ends", zap.Error(err))
			return
		}
		for _, j := range res.Jobs {
			if j.ScheduledAt.After(time.Now()) {
				if _, err := p.client.JobRetry(ctx, j.ID); err != nil && !errors.Is(err, river.ErrNotFound) {
					log.Warn("waking a parked delivery failed; it wakes when its park ends", zap.Int64("job_id", j.ID), zap.Error(err))
					return
				}
				woken++
			}
		}
		if len(res.Jobs) < 500 {
			break
		}
		params = params.After(res.LastCursor)
	}
	if woken > 0 {
		log.Info("notifier answers again; parked deliveries woken", zap.Int("deliveries", woken))
	}
}

// retried records a failed attempt that is tried again.
func (p *Pipeline) retried(ctx context.Context, n *store.Notification, text string, now time.Time) error {
	if err := p.store.NotificationAttempt(ctx, n.ID, text, now); err != nil {
		return err
	}
	p.m.Notifications.WithLabelValues(n.Notifier, n.Event, "retried").Inc()
	return nil
}

// endNotification records a notification that will not be delivered, and
// says why, loudly.
func (p *Pipeline) endNotification(ctx context.Context, n *store.Notification, state string, attempted bool, why string, log *zap.Logger) error {
	if _, err := p.store.FinishNotification(ctx, n.ID, state, attempted, why, p.cfg.Now()); err != nil {
		return err
	}
	p.m.Notifications.WithLabelValues(n.Notifier, n.Event, state).Inc()
	switch state {
	case store.NotificationDropped:
		log.Warn("notification dropped: its notifier was removed from the configuration")
	case store.NotificationGaveUp:
		log.Error("notification given up: the receiver kept failing", zap.String("error", why))
	default:
		log.Error("notification refused by the receiver; not retried", zap.String("error", why))
	}
	return nil
}

// answerText is what is kept of a receiver's answer: its status and body,
// or the error.
func answerText(a notify.Answer, err error) string {
	switch {
	case err != nil:
		return err.Error()
	case a.Body != "":
		return fmt.Sprintf("%d %s", a.Status, a.Body)
	}
	return fmt.Sprint(a.Status)
}

// failingNotifiers remembers, per notifier, until when it is known to
// fail and which delivery failed last (the probe): that one is tried
// again when the hold ends, the others are parked until it gets through,
// so that a dead receiver costs one request and one wake-up per backoff
// period whatever the number of pending messages, and an alert's later
// events never overtake its first.
type failingNotifiers struct {
	mu    sync.Mutex
	until map[string]time.Time
	probe map[string]int64
	// failures counts each notifier's failures in a row: the hold grows
	// with them, not with the attempts of whichever delivery probed (with
	// many pending, that is nearly always a first attempt).
	failures map[string]int
	// delivered holds the notifiers that had a delivery since the start.
	delivered map[string]bool
}

func (f *failingNotifiers) wait(name string, now time.Time) time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	if u, ok := f.until[name]; ok && now.Before(u) {
		// Spread the waiting deliveries over a second past the hold.
		return u.Sub(now) + time.Duration(rand.Int64N(int64(time.Second)))
	}
	return 0
}

// fail records one more failure of notifier name at now and returns the
// hold it sets: backoff of its failures in a row, or what the receiver
// asked (Retry-After) when longer.
// probing reports whether notification id is notifier name's probe.
func (f *failingNotifiers) probing(name string, id int64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.probe[name] == id
}

func (f *failingNotifiers) fail(name string, id int64, now time.Time, backoff func(failures int) time.Duration, asked time.Duration) time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.until == nil {
		f.until, f.failures, f.probe = map[string]time.Time{}, map[string]int{}, map[string]int64{}
	}
	f.failures[name]++
	f.probe[name] = id
	hold := max(backoff(f.failures[name]), asked)
	if until := now.Add(hold); until.After(f.until[name]) {
		f.until[name] = until
	}
	return hold
}

// ok records a delivery to notifier name, and reports whether deliveries
// may be parked: it was failing until then, or this is its first delivery
// since the start (a restart forgets what was failing, not the parked).
func (f *failingNotifiers) ok(name string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, was := f.failures[name]
	if !f.delivered[name] {
		if f.delivered == nil {
			f.delivered = map[string]bool{}
		}
		f.delivered[name], was = true, true
	}
	delete(f.until, name)
	delete(f.failures, name)
	delete(f.probe, name)
	return was
}

// notifierState holds what the pipeline keeps of notifiers.
type notifierState struct {
	notifiers atomic.Pointer[notifiers]
	failing   failingNotifiers
	queuesMu  sync.Mutex
	queues    map[string]bool // delivery queues added to the client
}
