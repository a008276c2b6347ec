package pipeline

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
	"go.uber.org/zap"

	"github.com/responder-dev/responder/audit"
	"github.com/responder-dev/responder/defender"
	"github.com/responder-dev/responder/quota"
	"github.com/responder-dev/responder/rules"
	"github.com/responder-dev/responder/store"
)

// A collection is the life of the action of one collect decision, from
// its decision to its end; this file owns it. Its states are the audit
// entry's (audit.State), and every change of state is one of transitions:
//
//	queued   -> posting   the request is claimed, then sent
//	queued   -> done      nothing can be sent (no Defender client)
//	posting  -> posting   sent again, once an unanswered request settled
//	posting  -> queued    the request never left, or Defender refused it (429)
//	posting  -> tracking  the machine action is known (created, running, found)
//	posting  -> done      Defender refused it for good, or it was given up
//	tracking -> done      the action ended, or tracking gave up
//
// advance is the one entry point: the evaluator calls it right after the
// decision (inline), the collect job when the evaluator could not finish
// (and the sweep enqueues that job for entries a crash left), and the track
// job while the action runs.
var transitions = map[audit.State][]audit.State{
	audit.Queued:   {audit.Posting, audit.Done},
	audit.Posting:  {audit.Posting, audit.Queued, audit.Tracking, audit.Done},
	audit.Tracking: {audit.Done},
}

// from returns the states that may change to to (the entry's row is only
// changed while it is in one of them).
func from(to audit.State) []audit.State {
	var out []audit.State
	for _, s := range audit.States() {
		if slices.Contains(transitions[s], to) {
			out = append(out, s)
		}
	}
	return out
}

// transition moves entry e to state to with change c, through q (the
// store's pool or a transaction). It reports false when e had already left
// every state that leads to to (another worker moved it).
func (p *Pipeline) transition(ctx context.Context, q store.Execer, e *audit.Entry, to audit.State, c store.Change) (bool, error) {
	if !slices.Contains(transitions[e.State], to) {
		return false, fmt.Errorf("collection %d: no transition from %s to %s", e.ID, e.State, to)
	}
	c.State = &to
	return p.store.Transition(ctx, q, e.ID, from(to), c, p.cfg.Now())
}

// advance does what the state of a collection asks for now: send its
// request (queued, posting), or poll its machine action (tracking: only
// for the track job, track, which the move to tracking enqueued). It
// returns nil when the collection needs nothing more for now, else a queue
// error (a snooze, or one to retry with backoff).
func (p *Pipeline) advance(ctx context.Context, e *audit.Entry, quotaWait time.Duration, track *rivertype.JobRow) error {
	switch e.State {
	case audit.Queued, audit.Posting:
		return p.collect(ctx, e, quotaWait)
	case audit.Tracking:
		if track == nil {
			return nil // the track job polls it
		}
		return p.poll(ctx, e, track)
	}
	return nil // done earlier
}

type collectArgs struct {
	AuditID int64 `json:"audit_id" river:"unique"`
}

func (collectArgs) Kind() string { return "responder.collect" }

func (collectArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{MaxAttempts: collectJobMaxAttempts, UniqueOpts: river.UniqueOpts{ByArgs: true}}
}

type collectWorker struct {
	river.WorkerDefaults[collectArgs]
	p *Pipeline
}

// Work advances a collection the evaluator could not finish inline (quota
// spent, a transient failure, a crash).
func (w *collectWorker) Work(ctx context.Context, job *river.Job[collectArgs]) error {
	e, err := w.p.jobEntry(ctx, job.Args.AuditID)
	if err != nil {
		return err
	}
	return w.p.advance(ctx, e, w.p.cfg.QuotaWait, nil)
}

// jobEntry loads the audit entry a job works on; a job whose entry does not
// exist can never succeed and is cancelled.
func (p *Pipeline) jobEntry(ctx context.Context, id int64) (*audit.Entry, error) {
	e, err := p.store.Entry(ctx, id)
	if errors.Is(err, store.ErrNoEntry) {
		return nil, river.JobCancel(err)
	}
	return e, err
}

// collectMaxAttempts is the number of POSTs for one decision retried with
// the job's backoff, counted in the audit entry (posts) across the inline
// try, collect jobs and restarts (a 429 does not use one up). Past it the
// collection is retried slowly until RetryFor, then recorded failed.
const collectMaxAttempts = 8

// collectJobMaxAttempts bounds a collect job's runs, which include look-ups
// of earlier requests and failures before any POST; it is above the POST
// budget so that the budget, not the queue, decides when to give up. A job
// the queue still discards leaves its entry to the sweep, never lost.
const collectJobMaxAttempts = 25

// inlineQuotaWait is how long the evaluator waits for the quota before it
// hands the collection to the queue: it must not hold up evaluations.
const inlineQuotaWait = 50 * time.Millisecond

// collectInline advances a collection right after its decision is
// recorded, in the evaluator's goroutine: no queue round trip on the way to
// Defender. Whatever it cannot finish now (quota spent, a transient
// failure) goes to a durable collect job; a crash in between is caught by
// the sweep of entries left queued or posting.
func (p *Pipeline) collectInline(ctx context.Context, e *audit.Entry) {
	err := p.advance(ctx, e, inlineQuotaWait, nil)
	if err == nil {
		return
	}
	at := p.cfg.Now().Add(p.cfg.RetryBase)
	var snooze *rivertype.JobSnoozeError
	if errors.As(err, &snooze) {
		at = p.cfg.Now().Add(snooze.Duration)
	}
	if _, ierr := p.client.Insert(ctx, collectArgs{AuditID: e.ID}, &river.InsertOpts{ScheduledAt: at}); ierr != nil {
		p.log.Warn("handing the collection to the queue failed; the sweep will", zap.Int64("audit_id", e.ID), zap.Error(ierr))
	}
}

// sweepCollections enqueues a collect job for every entry left queued or
// posting for a while (a crash between a decision and its hand-over).
// Collect jobs are unique per entry, so one that exists is not doubled.
func (p *Pipeline) sweepCollections(ctx context.Context, age time.Duration) error {
	ids, err := p.store.Unfinished(ctx, p.cfg.Now().Add(-age))
	if err != nil {
		return err
	}
	for _, id := range ids {
		res, err := p.client.Insert(ctx, collectArgs{AuditID: id}, nil)
		if err != nil {
			return fmt.Errorf("re-enqueueing collection %d: %w", id, err)
		}
		if !res.UniqueSkippedAsDuplicate {
			p.log.Warn("unfinished collection re-enqueued", zap.Int64("audit_id", id))
		}
	}
	return nil
}

// sweepAge is how long an entry may stay queued or posting before the
// periodic sweep enqueues a job for it. On start every such entry is swept:
// whatever was collecting it died with the previous process.
const sweepAge = 30 * time.Second

// collect sends the request of a queued or posting collection, at most
// once per decision whenever Defender received it: the entry is claimed
// posting before the request, and whoever finds it so (a crash or a timeout
// hid Defender's answer) first looks for the action Defender may have
// made (lookForEarlier).
func (p *Pipeline) collect(ctx context.Context, e *audit.Entry, quotaWait time.Duration) error {
	log := p.log.With(zap.String("alert_id", e.AlertID), zap.String("machine_id", e.MachineID),
		zap.String("rule", e.Rule), zap.Int64("audit_id", e.ID))
	if p.api == nil {
		return p.finishCollect(ctx, e, audit.Failed, "", "no Defender client is configured", log)
	}
	if e.State == audit.Posting {
		if done, err := p.lookForEarlier(ctx, e, log); done || err != nil {
			return err
		}
	}
	if err := p.takeQuota(ctx, quotaWait); err != nil {
		return err
	}
	// Claim the request: only one of the evaluator and a collect job may
	// send it. Whoever loses finds the entry posting and waits for it to
	// settle.
	now := p.cfg.Now()
	claimed, err := p.store.ClaimPosting(ctx, e, now, now.Add(p.cfg.PostSettle))
	if err != nil {
		return err
	}
	if !claimed {
		return river.JobSnooze(p.cfg.RequestTimeout + time.Second)
	}
	log = log.With(zap.Int("attempt", e.Posts))
	a, err := p.send(ctx, e)
	if err == nil {
		log.Info("machine action created", zap.String("action_id", a.ID), zap.String("outcome", string(audit.Created)))
		return p.adopt(ctx, e, a, audit.Created, log)
	}
	return p.refused(ctx, e, err, log)
}

// lookForEarlier looks for the action an earlier request of a posting
// collection may have made, its answer lost (a timeout, a crash); done is
// true when the collection needs nothing more now (the action was found
// and is tracked, or it is looked for again later). Until the request has
// settled (Config.PostSettle, unless Defender answered it), not finding it
// does not prove it was not received, and sending it again could make a
// second action.
func (p *Pipeline) lookForEarlier(ctx context.Context, e *audit.Entry, log *zap.Logger) (done bool, err error) {
	now := p.cfg.Now()
	settle := p.settleUntil(e)
	// Not before the request has certainly timed out on our side: a late
	// action would go unseen.
	if first := e.PostedAt.Add(p.cfg.RequestTimeout + time.Second); now.Before(first) && now.Before(settle) {
		return true, river.JobSnooze(min(first.Sub(now), settle.Sub(now)))
	}
	a, found, err := p.findPosted(ctx, e, actionType(rules.Action(e.Action)))
	if err != nil {
		log.Warn("looking for an earlier request failed", zap.Error(err))
		return true, p.retryable(err)
	}
	if found {
		log.Info("earlier request found in Defender; tracking it instead of posting again", zap.String("action_id", a.ID))
		return true, p.adopt(ctx, e, a, audit.Created, log)
	}
	if now.Before(settle) {
		// Looked for at about 1, 2, 4, ... times the request's age, and
		// once more when it has settled.
		next := min(max(now.Sub(e.PostedAt), time.Second), settle.Sub(now))
		log.Info("earlier request not found in Defender yet; looking again before posting", zap.Duration("next_look", next))
		return true, river.JobSnooze(next)
	}
	log.Info("earlier request not found in Defender after it settled; posting again")
	return false, nil
}

// takeQuota waits up to quotaWait for the action quota; past it the job
// snoozes, freeing its worker, and keeps its place in the durable queue.
func (p *Pipeline) takeQuota(ctx context.Context, quotaWait time.Duration) error {
	if p.quota == nil {
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, quotaWait)
	waited, err := p.quota.Wait(wctx)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return river.JobSnooze(p.cfg.QuotaWait)
	}
	p.m.RateLimitWait.Observe(waited.Seconds())
	return nil
}

// refused handles a request Defender did not answer 201: a running action
// is tracked instead, a refusal ends the collection, a 429 waits as asked,
// and a transient failure is retried (looking first, see lookForEarlier).
func (p *Pipeline) refused(ctx context.Context, e *audit.Entry, err error, log *zap.Logger) error {
	var de *defender.Error
	if !errors.As(err, &de) {
		de = &defender.Error{Outcome: defender.OutcomeRetryable, Err: err}
	}
	switch de.Outcome {
	case defender.OutcomeAlreadyRunning:
		return p.trackRunning(ctx, e, log)
	case defender.OutcomeMachineNotFound:
		return p.finishCollect(ctx, e, audit.MachineNotFound, "", err.Error(), log)
	case defender.OutcomeForbidden:
		return p.finishCollect(ctx, e, audit.Forbidden, "", err.Error(), log)
	case defender.OutcomeUnauthorized, defender.OutcomePermanent:
		return p.finishCollect(ctx, e, audit.Failed, "", err.Error(), log)
	case defender.OutcomeRateLimited:
		// Defender refused it: nothing was created, so sending it again is
		// safe, and the refused request gives its attempt back. Every
		// request of the group would get the same answer until
		// Retry-After (Defender counts per application): the whole group
		// waits, on every replica through the store.
		if err := p.store.UnclaimPosting(ctx, e.ID, true, p.cfg.Now()); err != nil {
			return err
		}
		quota.Throttle(p.quota, p.cfg.Now().Add(de.RetryAfter))
		log.Warn("Defender rate limited the request; waiting as asked", zap.Duration("retry_after", de.RetryAfter))
		return river.JobSnooze(max(de.RetryAfter, time.Second))
	}
	return p.failedTransiently(ctx, e, de, log)
}

// trackRunning tracks the action Defender says is already running on the
// machine, instead of sending another.
func (p *Pipeline) trackRunning(ctx context.Context, e *audit.Entry, log *zap.Logger) error {
	pending, found, err := p.api.PendingAction(ctx, e.MachineID, actionType(rules.Action(e.Action)))
	if err != nil {
		log.Warn("an action is already running, and looking it up failed", zap.Error(err))
		return p.retryable(err)
	}
	if !found {
		// It ended between Defender's answer and our look-up: nothing to track.
		return p.finishCollect(ctx, e, audit.AlreadyRunning, "", "Defender reported an action already in progress; it had ended before it could be looked up", log)
	}
	log.Info("machine action already running; tracking it", zap.String("action_id", pending.ID), zap.String("outcome", string(audit.AlreadyRunning)))
	return p.adopt(ctx, e, pending, audit.AlreadyRunning, log)
}

// failedTransiently handles a request that may or may not have made the
// action. The entry stays posting, so the next attempt looks before
// sending again, and until the request has settled, only looks. When
// Defender did answer (a 5xx), nothing of the request is in flight: one
// look, then a new request. When the request never left (no connection),
// there is nothing to look for.
func (p *Pipeline) failedTransiently(ctx context.Context, e *audit.Entry, de *defender.Error, log *zap.Logger) error {
	switch now := p.cfg.Now(); {
	case de.NotSent:
		if err := p.store.UnclaimPosting(ctx, e.ID, false, now); err != nil {
			return err
		}
	case de.StatusCode != 0:
		if _, err := p.store.Transition(ctx, p.store.Pool(), e.ID, []audit.State{audit.Posting}, store.Change{SettleUntil: &now}, now); err != nil {
			return err
		}
	}
	if e.Posts >= collectMaxAttempts {
		// Past the quick retries: Defender is having an outage, not a
		// blip. Keep trying, at most every RetryCap and without using the
		// job's attempts, until the decision is RetryFor old.
		age := p.cfg.Now().Sub(e.CreatedAt)
		if age >= p.cfg.RetryFor {
			return p.finishCollect(ctx, e, audit.Failed, "", fmt.Sprintf("giving up after %d requests over %s: %v", e.Posts, age.Round(time.Second), de), log)
		}
		log.Warn("machine action request failed; Defender keeps failing, will retry", zap.Duration("waited", age.Round(time.Second)), zap.Error(de))
		return river.JobSnooze(p.outageDelay(age))
	}
	log.Warn("machine action request failed; will retry", zap.Error(de))
	return de
}

// actionType is Defender's machine action type of a rule action
// (defender.MachineActions), by which an earlier or running action of the
// decision is looked up.
func actionType(a rules.Action) string {
	spec, _ := defender.MachineActionByName(string(a))
	return spec.Type
}

// send sends the machine action of a decision.
func (p *Pipeline) send(ctx context.Context, e *audit.Entry) (defender.MachineAction, error) {
	return p.api.Act(ctx, e.Action, e.MachineID, e.Comment)
}

// settleUntil is until when the request of a posting entry may still show
// up in Defender (Config.PostSettle after it was sent, unless Defender
// answered it).
func (p *Pipeline) settleUntil(e *audit.Entry) time.Time {
	if !e.SettleUntil.IsZero() {
		return e.SettleUntil
	}
	return e.PostedAt.Add(p.cfg.PostSettle) // an entry from before settle_until existed
}

// findPosted looks for the action an earlier, unanswered request of this
// decision may have made: same machine and type, our comment, made after we
// started posting.
func (p *Pipeline) findPosted(ctx context.Context, e *audit.Entry, typ string) (defender.MachineAction, bool, error) {
	actions, err := p.api.ListMachineActions(ctx, defender.ActionFilter{MachineID: e.MachineID, Type: typ, Top: 50})
	if err != nil {
		return defender.MachineAction{}, false, err
	}
	since := e.PostedAt.Add(-2 * time.Minute) // clock skew between us and Defender
	for _, a := range actions {
		if a.RequestorComment == e.Comment && !a.CreationTime.Before(since) {
			return a, true, nil
		}
	}
	return defender.MachineAction{}, false, nil
}

// adopt records the machine action that answers the decision and starts
// tracking it, in one transaction.
func (p *Pipeline) adopt(ctx context.Context, e *audit.Entry, a defender.MachineAction, outcome audit.Outcome, log *zap.Logger) error {
	now := p.cfg.Now()
	created := a.CreationTime
	if created.IsZero() {
		created = now
	}
	// Not flushed at once (RedoableTx): lost with the power, the entry is
	// posting again, and the next attempt finds an action we made by its
	// comment (findPosted) and adopts it without sending again; one we did
	// not make is found again through ActiveRequestAlreadyExists.
	err := p.store.RedoableTx(ctx, func(tx *sql.Tx) error {
		if _, err := p.transition(ctx, tx, e, audit.Tracking, store.Change{Outcome: &outcome, ActionID: &a.ID,
			ActionStatus: &a.Status, ActionCreatedAt: &created, Error: store.Ptr("")}); err != nil {
			return err
		}
		_, err := p.client.InsertTx(ctx, tx, trackArgs{AuditID: e.ID}, &river.InsertOpts{ScheduledAt: now.Add(p.cfg.PollInterval)})
		return err
	})
	if err != nil {
		return fmt.Errorf("recording machine action %s: %w", a.ID, err)
	}
	p.m.Collections.WithLabelValues(string(outcome)).Inc()
	return nil
}

// finishCollect ends a collection whose action will not be tracked; one
// that collected nothing gives its cooldown back (audit.Outcome's
// ReleasesCooldown), so that the next alert may try.
func (p *Pipeline) finishCollect(ctx context.Context, e *audit.Entry, outcome audit.Outcome, actionID, reason string, log *zap.Logger) error {
	now := p.cfg.Now()
	err := p.store.InTx(ctx, func(tx *sql.Tx) error {
		if _, err := p.transition(ctx, tx, e, audit.Done, store.Change{Outcome: &outcome, ActionID: &actionID, Error: &reason, FinishedAt: &now}); err != nil {
			return err
		}
		if outcome.ReleasesCooldown() {
			if err := p.store.ReleaseCooldown(ctx, tx, e.ID); err != nil {
				return err
			}
		}
		if outcome == audit.AlreadyRunning {
			return nil // an action ran, not ours, and ended unseen: nothing to report
		}
		return p.raiseEnd(ctx, tx, e, collectionEnd{outcome: outcome, actionID: actionID, at: now, reason: reason})
	})
	if err != nil {
		return err
	}
	p.m.Collections.WithLabelValues(string(outcome)).Inc()
	switch outcome {
	case audit.Forbidden:
		log.Error("Defender refused the collection: the application lacks the Machine.CollectForensics permission (or the action's permission) or RBAC access to the device group",
			zap.String("outcome", string(outcome)), zap.String("error", reason))
	case audit.Failed:
		log.Error("collection failed", zap.String("outcome", string(outcome)), zap.String("error", reason))
	default:
		log.Warn("collection not possible", zap.String("outcome", string(outcome)), zap.String("error", reason))
	}
	return nil
}
