package pipeline

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/riverqueue/river"
	"go.uber.org/zap"
)

// dispatchBatch bounds the alert rows one dispatcher transaction takes.
const dispatchBatch = 1000

// dispatchFallback is how often the dispatcher looks for rows without being
// woken (rows committed by another replica, or left by a crash).
const dispatchFallback = time.Second

// dispatchGather is how long the dispatcher lets commits gather once woken.
// Under a burst (the last dispatch took dispatchBusyRows or more) it waits
// longer: a dispatch costs about the same for 10 rows as for 100 (the
// queue's insert statement is parsed anew each time), its transaction holds
// SQLite's one connection while webhooks wait to commit, and during a burst
// no alert's evaluation hinges on 20 ms.
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
// large batches and not on each webhook's critical path; a row is marked
// dispatched in the same transaction that inserts its job, so none is lost
// or enqueued twice by a crash.
func (p *Pipeline) dispatcher(ctx context.Context) {
	t := time.NewTicker(dispatchFallback)
	defer t.Stop()
	gather := dispatchGather
	for {
		for {
			n, err := p.dispatchOnce(ctx)
			if err != nil {
				if ctx.Err() == nil {
					p.log.Warn("dispatching alerts to the queue failed; will retry", zap.Error(err))
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
			// far less than many small ones, and evaluation is not the
			// step that needs milliseconds.
			select {
			case <-ctx.Done():
				return
			case <-time.After(gather):
			}
		case <-t.C:
		}
	}
}

// dispatchOnce enqueues the evaluation of up to dispatchBatch undispatched
// alert rows and returns how many it took.
func (p *Pipeline) dispatchOnce(ctx context.Context) (int, error) {
	q := `UPDATE responder_alert SET dispatched = 1 WHERE id IN (
SELECT id FROM responder_alert WHERE dispatched = 0 ORDER BY id LIMIT %d) RETURNING id`
	if p.store.Driver == DriverPostgres {
		// Replicas dispatch side by side without taking the same rows.
		q = `UPDATE responder_alert SET dispatched = 1 WHERE id IN (
SELECT id FROM responder_alert WHERE dispatched = 0 ORDER BY id LIMIT %d FOR UPDATE SKIP LOCKED) RETURNING id`
	}
	var ids []int64
	err := p.store.redoableTx(ctx, func(tx *sql.Tx) error {
		ids = ids[:0]
		rows, err := tx.QueryContext(ctx, fmt.Sprintf(q, dispatchBatch))
		if err != nil {
			return fmt.Errorf("taking alerts to dispatch: %w", err)
		}
		for rows.Next() {
			var id int64
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return err
			}
			ids = append(ids, id)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if len(ids) == 0 {
			return nil
		}
		var jobs []river.InsertManyParams
		for start := 0; start < len(ids); start += maxEvaluateBatch {
			jobs = append(jobs, river.InsertManyParams{Args: evaluateArgs{AlertRowIDs: ids[start:min(start+maxEvaluateBatch, len(ids))]}})
		}
		if _, err := p.client.InsertManyTx(ctx, tx, jobs); err != nil {
			return fmt.Errorf("enqueueing evaluations: %w", err)
		}
		return nil
	})
	return len(ids), err
}
