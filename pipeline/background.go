package pipeline

import (
	"context"
	"time"

	"go.uber.org/zap"
)

// Job kinds and states exported as responder_queue_jobs.
var (
	jobKinds  = []string{evaluateArgs{}.Kind(), collectArgs{}.Kind(), trackArgs{}.Kind(), downloadArgs{}.Kind(), notifyArgs{}.Kind()}
	jobStates = []string{"available", "scheduled", "running", "retryable", "completed", "cancelled", "discarded", "pending"}
)

// backgroundInterval is how often the queue gauges and the circuit state are
// refreshed.
const backgroundInterval = 5 * time.Second

// backgroundLoop refreshes the queue gauges and re-arms the circuit breaker
// when its window clears, until ctx ends.
func (p *Pipeline) backgroundLoop(ctx context.Context) {
	for _, k := range jobKinds {
		for _, s := range jobStates {
			p.m.QueueJobs.WithLabelValues(k, s)
		}
	}
	t := time.NewTicker(backgroundInterval)
	defer t.Stop()
	tick := 0
	// The store's state is logged when it changes, not at every tick: the
	// loop's other reads fail with it, and say nothing more.
	var storeDown time.Time
	var lastMissing []string
	for {
		err := p.refreshQueueGauges(ctx)
		switch {
		case ctx.Err() != nil:
		case err != nil && storeDown.IsZero():
			storeDown = time.Now()
			p.log.Error("the store does not answer: webhooks get 503 and queued work waits until it does", zap.Error(err))
		case err == nil && !storeDown.IsZero():
			p.log.Warn("the store answers again", zap.Duration("unavailable_for", time.Since(storeDown).Round(time.Second)))
			storeDown = time.Time{}
		}
		if !storeDown.IsZero() {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				continue
			}
		}
		if err := p.refreshCircuit(ctx); err != nil && ctx.Err() == nil {
			p.log.Warn("reading the circuit state failed", zap.Error(err))
		}
		if tick++; tick%6 == 0 {
			if err := p.sweepCollections(ctx, sweepAge); err != nil && ctx.Err() == nil {
				p.log.Warn("sweeping unfinished collections failed", zap.Error(err))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case missing := <-p.permissions:
			p.notePermissions(ctx, missing, &lastMissing)
		}
	}
}

// notePermissions raises a permission finding of a token renewal; last
// is the set raised before, so that an hourly renewal finding the same
// gap raises it once.
func (p *Pipeline) notePermissions(ctx context.Context, missing []string, last *[]string) {
	if err := p.raisePermissions(ctx, missing, *last); err != nil {
		p.log.Warn("raising the permission_missing event failed", zap.Error(err))
		return
	}
	*last = missing
}

func (p *Pipeline) refreshQueueGauges(ctx context.Context) error {
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	seen, err := p.store.JobCounts(qctx)
	if err != nil {
		return err
	}
	for _, k := range jobKinds {
		for _, s := range jobStates {
			p.m.QueueJobs.WithLabelValues(k, s).Set(seen[[2]string{k, s}])
		}
	}
	return nil
}

// refreshCircuit recomputes whether a new collection would pass the safety
// limits, and logs the breaker re-arming.
func (p *Pipeline) refreshCircuit(ctx context.Context) error {
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	lastHour, machines, err := p.store.CircuitWindows(qctx, p.cfg.Now())
	if err != nil {
		return err
	}
	// The machine limit only bites for a new machine: the breaker counts as
	// open while the distinct machines are at the limit.
	why := p.limits().Why(lastHour, machines, false)
	open := why != ""
	was := p.circuitOpen.Swap(open)
	switch {
	case open && !was:
		p.m.CircuitOpen.Set(1)
		p.log.Error("circuit breaker opened: collections are suppressed until the window clears", zap.String("reason", why))
	case !open && was:
		p.m.CircuitOpen.Set(0)
		p.log.Warn("circuit breaker re-armed: collections resume")
	case p.circuitSynced.Load():
		return nil
	}
	// The store's record of the breaker follows (one replica raises the
	// change); after a start it is brought in line once, even unchanged,
	// so that a breaker left open by a stopped process is seen re-armed.
	if !open {
		why = "the circuit breaker's windows are back under the safety limits"
	}
	if err := p.circuitChanged(qctx, open, why); err != nil {
		return err
	}
	p.circuitSynced.Store(true)
	return nil
}
