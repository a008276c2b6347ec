package pipeline

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/responder-dev/responder/store"
	"github.com/riverqueue/river"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// dispatchBatch bounds the alert rows one dispatcher transaction takes.
const dispatchBatch = 1000

// dispatchFallback is how often the dispatcher looks for rows without being
// woken (rows committed by another replica, or left by a crash).
const dispatchFallback = time.Second

// dispatchGather is the least time between two dispatches, so that commits
// arriving faster than that gather into one: a woken dispatcher that last
// ran longer ago than that runs at once, so a lone alert is not delayed.
// Under a burst (the last dispatch took dispatchBusyRows or more) the spacing
// is longer: a dispatch costs about the same for 10 rows as for 100, its
// transactions hold SQLite's one connection while webhooks wait to commit,
// and during a burst no alert's evaluation hinges on 20 ms.
const (
	dispatchGather     = 5 * time.Millisecond
	dispatchGatherBusy = 25 * time.Millisecond
	dispatchBusyRows   = 20
)

// wakeDispatcher tells the dispatcher that alert rows were committed.
func (p *Pipeline) wakeDispatcher() {
	select {
	case p.dispatchNow <- struct{}{}:
	default: // already woken
	}
}

// dispatcher turns committed alert rows into evaluate jobs until ctx ends.
// Intake commits only the rows, so the queue's insert cost is paid here in
// large batches and not on each webhook's critical path. A row is marked
// dispatched only once its job is committed, so none is lost by a crash.
func (p *Pipeline) dispatcher(ctx context.Context) {
	t := time.NewTicker(dispatchFallback)
	defer t.Stop()
	gather := dispatchGather
	var last time.Time
	for {
		for {
			last = time.Now()
			n, err := p.dispatchOnce(ctx)
			if err != nil {
				if ctx.Err() == nil {
					p.sample.Write(p.log, zapcore.WarnLevel, "dispatch", "dispatching alerts to the queue failed; will retry", zap.Error(err))
				}
				break
			}
			gather = dispatchGather
			if n >= dispatchBusyRows {
				gather = dispatchGatherBusy
			}
			if n < dispatchBatch {
				break
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-p.dispatchNow:
			// Let a burst of commits gather: one large queue insert costs
			// far less than many small ones.
			if wait := gather - time.Since(last); wait > 0 {
				select {
				case <-ctx.Done():
					return
				case <-time.After(wait):
				}
			}
		case <-t.C:
		}
	}
}

// dispatchOnce enqueues the evaluation of up to dispatchBatch undispatched
// alert rows and returns how many it took.
func (p *Pipeline) dispatchOnce(ctx context.Context) (int, error) {
	if p.store.Driver == store.DriverSQLite {
		return p.dispatchSQLite(ctx)
	}
	// Replicas dispatch side by side without taking the same rows; a row is
	// marked in the transaction that enqueues its job.
	return p.store.TakeUndispatched(ctx, dispatchBatch, func(tx *sql.Tx, ids []int64) error {
		if _, err := p.client.InsertManyTx(ctx, tx, evaluateJobs(ids)); err != nil {
			return fmt.Errorf("enqueueing evaluations: %w", err)
		}
		return nil
	})
}

// dispatchSQLite enqueues the jobs first, in the queue's own transaction,
// and marks the rows after. The queue then wakes its workers at once, which
// it does not for jobs inserted in a transaction of ours, so they need not
// poll every few milliseconds. A crash between the two commits leaves rows
// to dispatch again: their second evaluation finds them decided (or decides
// them once, whichever job comes first). The single node is the only
// dispatcher, so no other one takes the same rows meanwhile.
func (p *Pipeline) dispatchSQLite(ctx context.Context) (int, error) {
	ids, err := p.store.Undispatched(ctx, dispatchBatch)
	if err != nil || len(ids) == 0 {
		return 0, err
	}
	if _, err := p.client.InsertMany(ctx, evaluateJobs(ids)); err != nil {
		return 0, fmt.Errorf("enqueueing evaluations: %w", err)
	}
	return len(ids), p.store.MarkDispatched(ctx, ids)
}

// evaluateJobs splits ids into evaluate jobs.
func evaluateJobs(ids []int64) []river.InsertManyParams {
	var jobs []river.InsertManyParams
	for start := 0; start < len(ids); start += maxEvaluateBatch {
		jobs = append(jobs, river.InsertManyParams{Args: evaluateArgs{AlertRowIDs: ids[start:min(start+maxEvaluateBatch, len(ids))]}})
	}
	return jobs
}
