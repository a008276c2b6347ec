// Package replay answers "what would these rules have done to the alerts
// we already received?" (SPEC 12). It reads the decisions of a window of
// time from the store, in the order the service took them, and decides
// each alert again with candidate rules through the one decision function
// (rules.Prepare and Settle, which rules.Decide is made of), on a virtual
// clock: each decision is taken at the instant the recorded one was, with
// the candidate's own cooldowns, circuit breaker and dry run, and the MDE
// quota of collection requests. It calls nothing and writes nothing.
//
// The rules of many alerts are evaluated in parallel (that is where the
// time goes); the state is settled in order, alone. Memory does not grow
// with the window: pages are read, decided and dropped, and only the
// state (one entry per machine and action) and the report are kept.
package replay

import (
	"container/heap"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/responder-dev/responder/alert"
	"github.com/responder-dev/responder/audit"
	"github.com/responder-dev/responder/quota"
	"github.com/responder-dev/responder/rules"
	"github.com/responder-dev/responder/store"
)

// Reader is what replay reads of the store (*store.Store).
type Reader interface {
	ReplayRange(ctx context.Context, w store.ReplayWindow) (after, last int64, ok bool, err error)
	ReplayPage(ctx context.Context, w store.ReplayWindow, after, last int64, limit int) ([]store.ReplayRow, error)
	ReplayPrior(ctx context.Context, from time.Time, lookback time.Duration) ([]store.ReplayRow, error)
	ReplayCounts(ctx context.Context, w store.ReplayWindow) (decided, undecided int, err error)
	DecisionSpan(ctx context.Context) (oldest, newest time.Time, ok bool, err error)
}

var _ Reader = (*store.Store)(nil)

// Options are a replay's candidate and the settings it decides with.
type Options struct {
	// Rules is the candidate rule set.
	Rules *rules.Set
	// Window is the decisions replayed.
	Window store.ReplayWindow
	// DryRun is the global dry run (defender.dry_run).
	DryRun bool
	// Limits are the circuit breaker's (safety.*).
	Limits rules.CircuitLimits
	// Quota is the quota of the actions API group (defender.rate_limit).
	Quota quota.Windows
	// Progress, when set, is called after each page with the decisions
	// replayed so far and the window's total.
	Progress func(done, total int)
	// Each, when set, is called with every decision replayed and counted
	// (of Window.Source), in order.
	Each func(Decided)
	// PageSize is the decisions read per query (default 1000).
	PageSize int
	// Workers evaluate rules in parallel (default GOMAXPROCS).
	Workers int
	// Duty, between 0 and 1, makes the replay run on one goroutine and
	// pause after each page, so that it is busy at most this share of the
	// time (the API's replay, inside the service); 0 runs it flat out.
	Duty float64
}

// Decided is one alert's recorded decision and the candidate's.
type Decided struct {
	AuditID   int64
	AlertID   string
	MachineID string
	Current   audit.Decision
	// CurrentRule is the recorded decision's rule ("" for none).
	CurrentRule string
	Candidate   rules.Decision
}

// ErrEmptyWindow is returned (wrapped in a *WindowError that says why) when
// the window holds no decision.
var ErrEmptyWindow = errors.New("no decided alert in the window")

// DefaultPageSize is the decisions read per query: small enough that a page
// is read in milliseconds beside a running service.
const DefaultPageSize = 1000

// Run replays the window of opts and reports the differences.
func Run(ctx context.Context, r Reader, opts Options) (*Report, error) {
	if opts.PageSize <= 0 {
		opts.PageSize = DefaultPageSize
	}
	if opts.Workers <= 0 {
		opts.Workers = runtime.GOMAXPROCS(0)
	}
	w := opts.Window
	counted, undecided, err := r.ReplayCounts(ctx, w)
	if err != nil {
		return nil, err
	}
	after, last, ok, err := r.ReplayRange(ctx, w)
	if err != nil {
		return nil, err
	}
	if !ok || counted == 0 {
		return nil, emptyWindow(ctx, r, w)
	}
	// Every source's decisions are replayed (they make the state); the
	// progress counts them all.
	total := counted
	if w.Source != "" {
		all := w
		all.Source = ""
		if total, _, err = r.ReplayCounts(ctx, all); err != nil {
			return nil, err
		}
	}
	s := newSimulation(opts, undecided)
	prior, err := r.ReplayPrior(ctx, w.From, lookback(opts.Rules))
	if err != nil {
		return nil, err
	}
	s.prime(prior, w.From)
	progress := func() {
		if opts.Progress != nil {
			opts.Progress(s.replayed, total)
		}
	}
	if opts.Duty > 0 && opts.Duty < 1 {
		err = runPaced(ctx, r, opts, s, after, last, progress)
	} else {
		err = runParallel(ctx, r, opts, s, after, last, progress)
	}
	if err != nil {
		return nil, err
	}
	return s.finish(), nil
}

// runParallel reads pages, evaluates their rules on opts.Workers
// goroutines and settles them in order: as fast as the machine allows.
func runParallel(ctx context.Context, r Reader, opts Options, s *simulation, after, last int64, progress func()) error {
	g, ctx := errgroup.WithContext(ctx)
	work := make(chan *page, opts.Workers)
	ordered := make(chan *page, 2*opts.Workers)
	g.Go(func() error {
		defer close(work)
		defer close(ordered)
		return readPages(ctx, r, opts, after, last, work, ordered)
	})
	for range opts.Workers {
		g.Go(func() error {
			for p := range work {
				p.prepare(opts)
			}
			return nil
		})
	}
	g.Go(func() error {
		for p := range ordered {
			select {
			case <-p.done:
			case <-ctx.Done():
				return ctx.Err()
			}
			if err := s.settle(p); err != nil {
				return err
			}
			progress()
		}
		return nil
	})
	return g.Wait()
}

// runPaced does each page's work on one goroutine, then pauses so that it
// is busy at most opts.Duty of the time: a replay inside the service (the
// API) leaves the CPU to intake and the workers.
func runPaced(ctx context.Context, r Reader, opts Options, s *simulation, after, last int64, progress func()) error {
	for {
		start := time.Now()
		rows, err := r.ReplayPage(ctx, opts.Window, after, last, opts.PageSize)
		if err != nil || len(rows) == 0 {
			return err
		}
		after = rows[len(rows)-1].AuditID
		p := &page{rows: rows, done: make(chan struct{})}
		p.prepare(opts)
		if err := s.settle(p); err != nil {
			return err
		}
		progress()
		if len(rows) < opts.PageSize {
			return nil
		}
		busy := time.Since(start)
		pause := time.NewTimer(time.Duration(float64(busy) * (1 - opts.Duty) / opts.Duty))
		select {
		case <-pause.C:
		case <-ctx.Done():
			pause.Stop()
			return ctx.Err()
		}
	}
}

// emptyWindow says why w holds no decision, in one line.
func emptyWindow(ctx context.Context, r Reader, w store.ReplayWindow) error {
	oldest, newest, ok, err := r.DecisionSpan(ctx)
	if err != nil {
		return err
	}
	from, to := stamp(w.From), stamp(w.To)
	var msg string
	switch {
	case !ok:
		msg = "the store holds no decided alert yet"
	case !w.To.After(oldest):
		msg = fmt.Sprintf("the window %s to %s ends before the store's oldest decision (%s): retention has deleted what came before, or nothing was received then", from, to, stamp(oldest))
	case w.From.After(newest):
		msg = fmt.Sprintf("the window %s to %s starts after the store's newest decision (%s)", from, to, stamp(newest))
	case w.Source != "":
		msg = fmt.Sprintf("no alert of source %s was decided from %s to %s", w.Source, from, to)
	default:
		msg = fmt.Sprintf("no alert was decided from %s to %s", from, to)
	}
	return &WindowError{Msg: msg, err: ErrEmptyWindow}
}

// lookback is how far before the window the state a replay starts from
// reaches: the longest cooldown of the candidate, and the circuit
// breaker's hour.
func lookback(set *rules.Set) time.Duration {
	d := time.Hour
	for _, r := range set.Rules() {
		d = max(d, r.Cooldown)
	}
	return d
}

// page is one read of decisions, prepared by a worker and settled in order.
type page struct {
	rows  []store.ReplayRow
	items []item
	done  chan struct{}
}

// item is one decision of a page, its rules evaluated.
type item struct {
	alert     *alert.Alert
	prepared  rules.Prepared
	machineID string
	// unknown: the candidate reads machine.* and no snapshot was kept.
	unknown bool
	err     error
}

// readPages reads the window's decisions page by page, and hands each page
// to a worker and, in order, to the settling loop.
func readPages(ctx context.Context, r Reader, opts Options, after, last int64, work, ordered chan<- *page) error {
	for {
		rows, err := r.ReplayPage(ctx, opts.Window, after, last, opts.PageSize)
		if err != nil {
			return err
		}
		if len(rows) == 0 {
			return nil
		}
		after = rows[len(rows)-1].AuditID
		p := &page{rows: rows, done: make(chan struct{})}
		for _, ch := range []chan<- *page{work, ordered} {
			select {
			case ch <- p:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if len(rows) < opts.PageSize {
			return nil
		}
	}
}

// unknownAttributes is the reason an alert cannot be evaluated by rules
// that read machine.*: its decision kept no machine snapshot.
const unknownAttributes = "attributes unknown: no machine snapshot was kept with this alert's decision"

// prepare decodes the alerts of p and evaluates the candidate's rules.
func (p *page) prepare(opts Options) {
	defer close(p.done)
	p.items = make([]item, len(p.rows))
	for i := range p.rows {
		p.items[i] = prepareRow(&p.rows[i], opts)
	}
}

func prepareRow(row *store.ReplayRow, opts Options) item {
	var a alert.Alert
	if err := json.Unmarshal(row.Payload, &a); err != nil {
		return item{err: fmt.Errorf("decoding the alert of audit entry %d: %w", row.AuditID, err)}
	}
	row.Payload = nil // decoded; let the page's memory go with it
	if a.MachineID == "" {
		a.MachineID = row.MachineID // the host name the service resolved
	}
	it := item{alert: &a, machineID: a.MachineID}
	var m rules.Machine
	if row.Snapshot != "" {
		attrs, err := audit.UnmarshalSnapshot(row.Snapshot)
		if err != nil {
			return item{err: fmt.Errorf("decoding the machine snapshot of audit entry %d: %w", row.AuditID, err)}
		}
		m.Attributes = attrs
	} else if opts.Rules.NeedsMachine() && a.MachineID != "" {
		m.Unavailable = unknownAttributes
		it.unknown = true
	}
	it.prepared = rules.Prepare(rules.Input{Alert: &a, Machine: m, Rules: opts.Rules, DryRun: opts.DryRun})
	return it
}

// release is a recorded collection giving its cooldown back at at.
type release struct {
	at        time.Time
	machineID string
	key       string
	auditID   int64
}

// releases is a min-heap of releases by time.
type releases []release

func (h releases) Len() int           { return len(h) }
func (h releases) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h releases) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *releases) Push(x any)        { *h = append(*h, x.(release)) }
func (h *releases) Pop() any {
	old := *h
	r := old[len(old)-1]
	*h = old[:len(old)-1]
	return r
}

// due applies to state the releases up to now.
func (h *releases) due(state *rules.Memory, now time.Time) {
	for h.Len() > 0 && !(*h)[0].at.After(now) {
		r := heap.Pop(h).(release)
		state.Release(r.machineID, r.key, r.auditID)
	}
}
