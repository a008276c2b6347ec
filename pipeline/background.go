package pipeline

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"
)

// Job kinds and states exported as responder_queue_jobs.
var (
	jobKinds  = []string{evaluateArgs{}.Kind(), collectArgs{}.Kind(), trackArgs{}.Kind(), downloadArgs{}.Kind()}
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
		}
	}
}

func (p *Pipeline) refreshQueueGauges(ctx context.Context) error {
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	rows, err := p.store.DB.QueryContext(qctx, `SELECT kind, state, COUNT(*) FROM river_job GROUP BY kind, state`)
	if err != nil {
		return fmt.Errorf("counting jobs: %w", err)
	}
	defer rows.Close()
	seen := map[[2]string]float64{}
	for rows.Next() {
		var kind, state string
		var n float64
		if err := rows.Scan(&kind, &state, &n); err != nil {
			return fmt.Errorf("counting jobs: %w", err)
		}
		seen[[2]string{kind, state}] = n
	}
	if err := rows.Err(); err != nil {
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
	open, why, err := p.circuitCheck(qctx, p.store.DB, "", p.cfg.Now())
	if err != nil {
		return err
	}
	if !open {
		// The machine limit only bites for a new machine: count as open
		// while the distinct machine count is at the limit.
		var machines int
		if err := p.store.DB.QueryRowContext(qctx, `SELECT COUNT(DISTINCT machine_id) FROM responder_audit WHERE decision = 'collect' AND created_at > $1`,
			ms(p.cfg.Now().Add(-10*time.Minute))).Scan(&machines); err != nil {
			return fmt.Errorf("counting recent machines: %w", err)
		}
		if machines >= p.cfg.MaxMachinesPer10m {
			open, why = true, fmt.Sprintf("%d distinct machines in the last 10 minutes", machines)
		}
	}
	was := p.circuitOpen.Swap(open)
	switch {
	case open && !was:
		p.m.CircuitOpen.Set(1)
		p.log.Error("circuit breaker opened: collections are suppressed until the window clears", zap.String("reason", why))
	case !open && was:
		p.m.CircuitOpen.Set(0)
		p.log.Warn("circuit breaker re-armed: collections resume")
	}
	return nil
}
