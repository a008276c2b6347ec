package pipeline

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
	"go.uber.org/zap"

	"github.com/responder-dev/responder/audit"
	"github.com/responder-dev/responder/defender"
	"github.com/responder-dev/responder/rules"
)

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

// actionType maps a rule action to MDE's machine action type.
func actionType(a rules.Action) string {
	switch a {
	case rules.ActionIsolate:
		return defender.TypeIsolate
	case rules.ActionAntivirusScan:
		return defender.TypeRunAntiVirusScan
	case rules.ActionRestrict:
		return defender.TypeRestrictCodeExecution
	}
	return defender.TypeCollectInvestigationPackage
}

// send performs the MDE POST of an action.
func (p *Pipeline) send(ctx context.Context, e *audit.Entry) (defender.MachineAction, error) {
	switch rules.Action(e.Action) {
	case rules.ActionIsolate:
		return p.api.Isolate(ctx, e.MachineID, e.Comment, defender.IsolationFull)
	case rules.ActionAntivirusScan:
		return p.api.RunAntivirusScan(ctx, e.MachineID, e.Comment, defender.ScanQuick)
	case rules.ActionRestrict:
		return p.api.RestrictCodeExecution(ctx, e.MachineID, e.Comment)
	}
	return p.api.CollectInvestigationPackage(ctx, e.MachineID, e.Comment)
}

// Work sends the action of one collect decision that was not completed
// inline by the evaluator (quota spent, a transient failure, a crash).
func (w *collectWorker) Work(ctx context.Context, job *river.Job[collectArgs]) error {
	p := w.p
	e, err := p.jobEntry(ctx, job.Args.AuditID)
	if err != nil {
		return err
	}
	return p.collect(ctx, e, p.cfg.QuotaWait)
}

// jobEntry loads the audit entry a job works on; a job whose entry does not
// exist can never succeed and is cancelled.
func (p *Pipeline) jobEntry(ctx context.Context, id int64) (*audit.Entry, error) {
	e, err := p.store.Entry(ctx, id)
	if errors.Is(err, ErrNoEntry) {
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

// collectInline sends the action of a collect decision right after it is
// recorded, in the evaluator's goroutine: no queue round trip on the way to
// Defender. Whatever it cannot finish now (quota spent, a transient failure)
// goes to a durable collect job; a crash in between is caught by the sweep
// of entries left queued or posting.
func (p *Pipeline) collectInline(ctx context.Context, e *audit.Entry) {
	err := p.collect(ctx, e, inlineQuotaWait)
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
	rows, err := p.store.DB.QueryContext(ctx, `SELECT id FROM responder_audit WHERE state IN ('queued', 'posting') AND updated_at <= $1`,
		ms(p.cfg.Now().Add(-age)))
	if err != nil {
		return fmt.Errorf("finding unfinished collections: %w", err)
	}
	var ids []int64
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

// collect sends the action of one collect decision, at most once per
// decision: the entry is claimed "posting" before the POST, and whoever
// finds it so (a crash or a timeout hid MDE's answer) first looks for the
// action MDE may already have created. It returns nil when the decision
// needs nothing more, else a River error (snooze, or one to retry).
func (p *Pipeline) collect(ctx context.Context, e *audit.Entry, quotaWait time.Duration) error {
	if e.State != audit.Queued && e.State != audit.Posting {
		return nil // done earlier
	}
	log := p.log.With(zap.String("alert_id", e.AlertID), zap.String("machine_id", e.MachineID),
		zap.String("rule", e.Rule), zap.Int64("audit_id", e.ID))
	if p.api == nil {
		return p.finishCollect(ctx, e, audit.Failed, "", "no Defender client is configured", log)
	}
	typ := actionType(rules.Action(e.Action))

	if e.State == audit.Posting {
		// An earlier POST may have reached Defender with its answer lost
		// (a timeout, a crash). Look for the action it made; until the
		// request has settled, not finding it does not prove it was not
		// received, and posting again could make a second action.
		now := p.cfg.Now()
		settle := p.settleUntil(e)
		// Not before the request has certainly timed out on our side: a
		// late action would go unseen.
		if first := e.PostedAt.Add(p.cfg.RequestTimeout + time.Second); now.Before(first) && now.Before(settle) {
			return river.JobSnooze(min(first.Sub(now), settle.Sub(now)))
		}
		a, found, err := p.findPosted(ctx, e, typ)
		if err != nil {
			log.Warn("looking for an earlier request failed", zap.Error(err))
			return p.retryable(err)
		}
		if found {
			log.Info("earlier request found in Defender; tracking it instead of posting again", zap.String("action_id", a.ID))
			return p.adopt(ctx, e, a, audit.Created, log)
		}
		if now.Before(settle) {
			// Looked for at about 1, 2, 4, ... times the request's age,
			// and once more when it has settled.
			next := min(max(now.Sub(e.PostedAt), time.Second), settle.Sub(now))
			log.Info("earlier request not found in Defender yet; looking again before posting", zap.Duration("next_look", next))
			return river.JobSnooze(next)
		}
		log.Info("earlier request not found in Defender after it settled; posting again")
	}

	if p.quota != nil {
		wctx, cancel := context.WithTimeout(ctx, quotaWait)
		waited, err := p.quota.Wait(wctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			// Free the worker; the job keeps its place in the durable queue.
			return river.JobSnooze(p.cfg.QuotaWait)
		}
		p.m.RateLimitWait.Observe(waited.Seconds())
	}

	// Claim the POST: only one of the evaluator and a collect job may send
	// it. Whoever loses finds the entry posting and waits for it to settle.
	now := p.cfg.Now()
	claimed, err := p.claimPosting(ctx, e, now)
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
	var de *defender.Error
	if !errors.As(err, &de) {
		de = &defender.Error{Outcome: defender.OutcomeRetryable, Err: err}
	}
	switch de.Outcome {
	case defender.OutcomeAlreadyRunning:
		pending, found, lerr := p.api.PendingAction(ctx, e.MachineID, typ)
		if lerr != nil {
			log.Warn("an action is already running, and looking it up failed", zap.Error(lerr))
			return p.retryable(lerr)
		}
		if !found {
			// It ended between MDE's answer and our look-up: nothing to track.
			return p.finishCollect(ctx, e, audit.AlreadyRunning, "", "Defender reported an action already in progress; it had ended before it could be looked up", log)
		}
		log.Info("machine action already running; tracking it", zap.String("action_id", pending.ID), zap.String("outcome", string(audit.AlreadyRunning)))
		return p.adopt(ctx, e, pending, audit.AlreadyRunning, log)
	case defender.OutcomeMachineNotFound:
		return p.finishCollect(ctx, e, audit.MachineNotFound, "", err.Error(), log)
	case defender.OutcomeForbidden:
		return p.finishCollect(ctx, e, audit.Forbidden, "", err.Error(), log)
	case defender.OutcomeUnauthorized, defender.OutcomePermanent:
		return p.finishCollect(ctx, e, audit.Failed, "", err.Error(), log)
	case defender.OutcomeRateLimited:
		// MDE refused it: nothing was created, so posting again is safe,
		// and the refused request does not use up an attempt.
		if _, err := p.store.DB.ExecContext(ctx, `UPDATE responder_audit SET state = 'queued', posts = posts - 1, updated_at = $1 WHERE id = $2`,
			ms(p.cfg.Now()), e.ID); err != nil {
			return fmt.Errorf("requeueing a rate-limited collection: %w", err)
		}
		// MDE counts per application: every POST would get the same
		// answer until Retry-After, so the whole group waits, not only
		// this decision (every replica, through the store).
		if t, ok := p.quota.(defender.Throttler); ok {
			t.Throttle(p.cfg.Now().Add(de.RetryAfter))
		}
		log.Warn("Defender rate limited the request; waiting as asked", zap.Duration("retry_after", de.RetryAfter))
		return river.JobSnooze(max(de.RetryAfter, time.Second))
	}
	// Transient: the POST may or may not have created the action. The entry
	// stays "posting", so the next attempt looks before posting again, and
	// until the request has settled, only looks. When MDE did answer (a
	// 5xx), nothing of the request is in flight: one look, then a POST.
	// When the request never left (no connection), there is nothing to
	// look for.
	switch now := p.cfg.Now(); {
	case de.NotSent:
		if _, err := p.store.DB.ExecContext(ctx, `UPDATE responder_audit SET state = 'queued', updated_at = $1 WHERE id = $2 AND state = 'posting'`,
			ms(now), e.ID); err != nil {
			return fmt.Errorf("requeueing a collection that was not sent: %w", err)
		}
	case de.StatusCode != 0:
		if err := p.store.updateEntry(ctx, p.store.DB, e.ID, entryUpdate{settle: &now}, now); err != nil {
			return err
		}
	}
	if e.Posts >= collectMaxAttempts {
		// Past the quick retries: Defender is having an outage, not a
		// blip. Keep trying, at most every RetryCap and without using the
		// job's attempts, until the decision is RetryFor old.
		age := p.cfg.Now().Sub(e.CreatedAt)
		if age >= p.cfg.RetryFor {
			return p.finishCollect(ctx, e, audit.Failed, "", fmt.Sprintf("giving up after %d requests over %s: %v", e.Posts, age.Round(time.Second), err), log)
		}
		log.Warn("machine action request failed; Defender keeps failing, will retry", zap.Duration("waited", age.Round(time.Second)), zap.Error(err))
		return river.JobSnooze(p.outageDelay(age))
	}
	log.Warn("machine action request failed; will retry", zap.Error(err))
	return err
}

// claimPosting moves the entry from the state it was read in to posting,
// if nobody changed it since; it reports whether this caller owns the POST.
func (p *Pipeline) claimPosting(ctx context.Context, e *audit.Entry, now time.Time) (bool, error) {
	var posts int
	settle := now.Add(p.cfg.PostSettle)
	err := p.store.DB.QueryRowContext(ctx, `UPDATE responder_audit SET state = 'posting', posted_at = $1, updated_at = $1, posts = posts + 1, settle_until = $5
WHERE id = $2 AND state = $3 AND posted_at = $4 RETURNING posts`, ms(now), e.ID, e.State, ms(e.PostedAt), ms(settle)).Scan(&posts)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("claiming the collection: %w", err)
	}
	e.State, e.PostedAt, e.Posts, e.SettleUntil = audit.Posting, time.UnixMilli(ms(now)).UTC(), posts, time.UnixMilli(ms(settle)).UTC()
	return true, nil
}

// settleUntil is until when the POST of a posting entry may still show up
// in Defender (Config.PostSettle after it was sent, unless Defender
// answered it).
func (p *Pipeline) settleUntil(e *audit.Entry) time.Time {
	if !e.SettleUntil.IsZero() {
		return e.SettleUntil
	}
	return e.PostedAt.Add(p.cfg.PostSettle) // an entry from before settle_until existed
}

// findPosted looks for the action an earlier, unanswered POST of this
// decision may have created: same machine and type, our comment, created
// after we started posting.
func (p *Pipeline) findPosted(ctx context.Context, e *audit.Entry, typ string) (defender.MachineAction, bool, error) {
	actions, err := p.api.ListMachineActions(ctx, defender.ActionFilter{MachineID: e.MachineID, Type: typ, Top: 50})
	if err != nil {
		return defender.MachineAction{}, false, err
	}
	since := e.PostedAt.Add(-2 * time.Minute) // clock skew between us and MDE
	for _, a := range actions {
		if a.RequestorComment == e.Comment && !a.CreationTime.Before(since) {
			return a, true, nil
		}
	}
	return defender.MachineAction{}, false, nil
}

// adopt records the action that now answers the decision and starts
// tracking it, in one transaction.
func (p *Pipeline) adopt(ctx context.Context, e *audit.Entry, a defender.MachineAction, outcome audit.Outcome, log *zap.Logger) error {
	now := p.cfg.Now()
	created := a.CreationTime
	if created.IsZero() {
		created = now
	}
	// Not flushed at once (redoableTx): lost with the power, the entry is
	// "posting" again, and the next attempt finds an action we created by
	// its comment (findPosted) and adopts it without posting again; one we
	// did not create is found again through ActiveRequestAlreadyExists.
	err := p.store.redoableTx(ctx, func(tx *sql.Tx) error {
		if err := p.store.updateEntry(ctx, tx, e.ID, entryUpdate{
			state: str(string(audit.Tracking)), outcome: str(string(outcome)), actionID: str(a.ID), actionStatus: str(a.Status),
			actionCreatedAt: &created, errText: str(""),
		}, now); err != nil {
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

// finishCollect records a collection that will not be tracked, releases the
// cooldown it held (nothing was collected, so the next alert may try), and
// ends the job.
func (p *Pipeline) finishCollect(ctx context.Context, e *audit.Entry, outcome audit.Outcome, actionID, reason string, log *zap.Logger) error {
	now := p.cfg.Now()
	err := p.store.inTx(ctx, func(tx *sql.Tx) error {
		if err := p.store.updateEntry(ctx, tx, e.ID, entryUpdate{state: str(string(audit.Done)), outcome: str(string(outcome)), actionID: str(actionID), errText: str(reason), finishedAt: &now}, now); err != nil {
			return err
		}
		if outcome != audit.AlreadyRunning {
			if _, err := tx.ExecContext(ctx, `DELETE FROM responder_cooldown WHERE audit_id = $1`, e.ID); err != nil {
				return fmt.Errorf("releasing the cooldown: %w", err)
			}
		}
		return nil
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

type trackArgs struct {
	AuditID int64 `json:"audit_id" river:"unique"`
}

func (trackArgs) Kind() string { return "responder.track" }

func (trackArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{MaxAttempts: 20, Queue: queueTrack, UniqueOpts: river.UniqueOpts{ByArgs: true}}
}

// queueTrack is the queue of track and download jobs, apart from the
// collections so that many actions polled under the read quota never hold
// up a collection.
const queueTrack = "track"

type trackWorker struct {
	river.WorkerDefaults[trackArgs]
	p *Pipeline
}

// Work polls the machine action once; it snoozes until the next poll while
// the action is live, and records its end.
func (w *trackWorker) Work(ctx context.Context, job *river.Job[trackArgs]) error {
	p := w.p
	e, err := p.jobEntry(ctx, job.Args.AuditID)
	if err != nil {
		return err
	}
	if e.State != audit.Tracking {
		return nil
	}
	log := p.log.With(zap.String("alert_id", e.AlertID), zap.String("machine_id", e.MachineID), zap.String("action_id", e.ActionID), zap.Int64("audit_id", e.ID))
	now := p.cfg.Now()
	if p.api == nil {
		return p.finishTrack(ctx, e, "Untracked", now, "no Defender client is configured", log)
	}
	a, err := p.api.GetMachineAction(ctx, e.ActionID)
	if err != nil {
		if errors.Is(err, defender.ErrQuotaWait) {
			// Many actions share the read quota: their polls stretch out,
			// which is not a failure of this one.
			return p.retryable(err)
		}
		switch outcomeOf(err) {
		case defender.OutcomeRateLimited, defender.OutcomeRetryable, "":
			if now.Sub(e.ActionCreatedAt) > p.cfg.ActionTimeout || job.Attempt >= job.MaxAttempts {
				return p.finishTrack(ctx, e, "Untracked", now, err.Error(), log)
			}
			log.Warn("polling the machine action failed; will retry", zap.Int("attempt", job.Attempt), zap.Error(err))
			return p.retryable(err)
		}
		return p.finishTrack(ctx, e, "Untracked", now, err.Error(), log)
	}
	if a.Terminal() {
		return p.finishTrack(ctx, e, a.Status, finishTime(a, now), "", log)
	}
	if now.Sub(e.ActionCreatedAt) > p.cfg.ActionTimeout {
		return p.finishTrack(ctx, e, "Untracked", now, fmt.Sprintf("still %s after defender.action_timeout (%s)", a.Status, p.cfg.ActionTimeout), log)
	}
	if a.Status != e.ActionStatus {
		if err := p.store.updateEntry(ctx, p.store.DB, e.ID, entryUpdate{actionStatus: str(a.Status)}, now); err != nil {
			return err
		}
		log.Info("machine action status changed", zap.String("status", a.Status))
	}
	return river.JobSnooze(p.cfg.PollInterval)
}

func finishTime(a defender.MachineAction, now time.Time) time.Time {
	if !a.LastUpdateTime.IsZero() {
		return a.LastUpdateTime
	}
	return now
}

// releasesCooldown reports whether an action that ended in status
// collected nothing in a way the next alert should be allowed to retry: it
// failed, or MDE gave up on an unreachable machine. A cancelled action
// keeps the cooldown (somebody chose to stop it), and so does one we
// stopped tracking (its outcome is unknown).
func releasesCooldown(status string) bool {
	return status == defender.StatusFailed || status == defender.StatusTimeOut
}

// finishTrack records the final status of a machine action; a failed one
// releases the cooldown it held.
func (p *Pipeline) finishTrack(ctx context.Context, e *audit.Entry, status string, at time.Time, reason string, log *zap.Logger) error {
	now := p.cfg.Now()
	download := status == defender.StatusSucceeded && p.cfg.DownloadDir != "" && rules.Action(e.Action) == rules.ActionCollect
	err := p.store.inTx(ctx, func(tx *sql.Tx) error {
		u := entryUpdate{state: str(string(audit.Done)), actionStatus: str(status), finishedAt: &at}
		if reason != "" {
			u.errText = str(reason)
		}
		if err := p.store.updateEntry(ctx, tx, e.ID, u, now); err != nil {
			return err
		}
		if releasesCooldown(status) {
			if _, err := tx.ExecContext(ctx, `DELETE FROM responder_cooldown WHERE audit_id = $1`, e.ID); err != nil {
				return fmt.Errorf("releasing the cooldown: %w", err)
			}
		}
		if download {
			if _, err := p.client.InsertTx(ctx, tx, downloadArgs{AuditID: e.ID}, nil); err != nil {
				return fmt.Errorf("enqueueing the package download: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	p.m.ActionsFinished.WithLabelValues(status).Inc()
	if !e.ActionCreatedAt.IsZero() {
		p.m.ActionDuration.WithLabelValues(status).Observe(max(at.Sub(e.ActionCreatedAt).Seconds(), 0))
	}
	switch {
	case status == defender.StatusSucceeded:
		log.Info("machine action finished", zap.String("status", status))
	case reason != "":
		log.Warn("machine action finished", zap.String("status", status), zap.String("error", reason))
	default:
		log.Warn("machine action finished", zap.String("status", status))
	}
	return nil
}

type downloadArgs struct {
	AuditID int64 `json:"audit_id" river:"unique"`
}

func (downloadArgs) Kind() string { return "responder.download" }

func (downloadArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{MaxAttempts: 10, Queue: queueTrack, UniqueOpts: river.UniqueOpts{ByArgs: true}}
}

type downloadWorker struct {
	river.WorkerDefaults[downloadArgs]
	p *Pipeline
}

func (w *downloadWorker) Timeout(*river.Job[downloadArgs]) time.Duration { return downloadTimeout }

// Work fetches a finished package: ask for its short-lived URI (its own
// 2/min quota; 404 until ready), download at once, record size and sha256.
func (w *downloadWorker) Work(ctx context.Context, job *river.Job[downloadArgs]) error {
	p := w.p
	e, err := p.jobEntry(ctx, job.Args.AuditID)
	if err != nil {
		return err
	}
	if e.PackageSHA256 != "" || p.api == nil {
		return nil
	}
	log := p.log.With(zap.String("machine_id", e.MachineID), zap.String("action_id", e.ActionID), zap.Int64("audit_id", e.ID))
	uri, err := p.api.GetPackageURI(ctx, e.ActionID)
	if err != nil {
		// A snooze uses no attempt: the link is asked for once a minute
		// (its quota is 2/min) until downloadFor after the action ended.
		if outcomeOf(err) == defender.OutcomeRetryable && p.cfg.Now().Sub(e.FinishedAt) < downloadFor {
			return river.JobSnooze(time.Minute) // not ready yet, or a transient failure
		}
		if errors.Is(err, defender.ErrQuotaWait) {
			return p.retryable(err)
		}
		return p.packageFailed(ctx, e, err, log)
	}
	dest := filepath.Join(p.cfg.DownloadDir, e.MachineID, e.ActionID+".zip")
	if err := os.MkdirAll(filepath.Dir(dest), 0o750); err != nil {
		return p.packageFailed(ctx, e, fmt.Errorf("creating the package directory: %w", err), log)
	}
	size, sum, err := p.api.DownloadPackage(ctx, uri, dest)
	if err != nil {
		if outcomeOf(err) == defender.OutcomeRetryable && job.Attempt < job.MaxAttempts {
			log.Warn("package download failed; will retry", zap.Int("attempt", job.Attempt), zap.Error(err))
			return err
		}
		return p.packageFailed(ctx, e, err, log)
	}
	now := p.cfg.Now()
	if err := p.store.updateEntry(ctx, p.store.DB, e.ID, entryUpdate{packagePath: &dest, packageSHA: &sum, packageSize: &size}, now); err != nil {
		return err
	}
	log.Info("investigation package downloaded", zap.String("path", dest), zap.Int64("size", size), zap.String("sha256", sum))
	return nil
}

// downloadFor is how long after an action ended its package is asked for.
const downloadFor = 6 * time.Hour

// packageFailed records in the audit entry why its package was not
// downloaded (too large, a refused link, given up after retries), logs it,
// and ends the job.
func (p *Pipeline) packageFailed(ctx context.Context, e *audit.Entry, cause error, log *zap.Logger) error {
	reason := "package not downloaded: " + cause.Error()
	if err := p.store.updateEntry(ctx, p.store.DB, e.ID, entryUpdate{errText: &reason}, p.cfg.Now()); err != nil {
		return err
	}
	log.Error("investigation package not downloaded", zap.Error(cause))
	return river.JobCancel(cause)
}
