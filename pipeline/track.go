package pipeline

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
	"go.uber.org/zap"

	"github.com/responder-dev/responder/audit"
	"github.com/responder-dev/responder/defender"
	"github.com/responder-dev/responder/rules"
	"github.com/responder-dev/responder/store"
)

type trackArgs struct {
	AuditID int64 `json:"audit_id" river:"unique"`
}

func (trackArgs) Kind() string { return "responder.track" }

func (trackArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{MaxAttempts: 20, Queue: queueTrack, UniqueOpts: river.UniqueOpts{ByArgs: true}}
}

// queueTrack is the queue of track and download jobs, apart from the
// collections (the default queue) so that many actions polled under the
// read quota never hold up a collection.
const queueTrack = "track"

type trackWorker struct {
	river.WorkerDefaults[trackArgs]
	p *Pipeline
}

// Work advances a tracked collection: one poll of its machine action.
func (w *trackWorker) Work(ctx context.Context, job *river.Job[trackArgs]) error {
	e, err := w.p.jobEntry(ctx, job.Args.AuditID)
	if err != nil {
		return err
	}
	return w.p.advance(ctx, e, w.p.cfg.QuotaWait, job.JobRow)
}

// untracked is the final status of an action whose tracking gave up.
const untracked = string(audit.Untracked)

// poll reads the machine action of a tracking collection once; it snoozes
// until the next poll while the action is live, and records its end.
func (p *Pipeline) poll(ctx context.Context, e *audit.Entry, job *rivertype.JobRow) error {
	log := p.log.With(zap.String("alert_id", e.AlertID), zap.String("machine_id", e.MachineID), zap.String("action_id", e.ActionID), zap.Int64("audit_id", e.ID))
	now := p.cfg.Now()
	if p.api == nil {
		return p.finishTrack(ctx, e, untracked, now, "no Defender client is configured", log)
	}
	a, err := p.api.GetMachineAction(ctx, e.ActionID)
	if err != nil {
		return p.pollFailed(ctx, e, job, err, log)
	}
	if a.Terminal() {
		return p.finishTrack(ctx, e, a.Status, finishTime(a, now), "", log)
	}
	if now.Sub(e.ActionCreatedAt) > p.cfg.ActionTimeout {
		return p.finishTrack(ctx, e, untracked, now, fmt.Sprintf("still %s after defender.action_timeout (%s)", a.Status, p.cfg.ActionTimeout), log)
	}
	if a.Status != e.ActionStatus {
		if _, err := p.store.Transition(ctx, p.store.Pool(), e.ID, []audit.State{audit.Tracking}, store.Change{ActionStatus: &a.Status}, now); err != nil {
			return err
		}
		log.Info("machine action status changed", zap.String("status", a.Status))
	}
	return river.JobSnooze(p.cfg.PollInterval)
}

// pollFailed handles a poll that failed: retried while Defender fails
// transiently, within action_timeout and the job's attempts; else the
// action is no longer tracked.
func (p *Pipeline) pollFailed(ctx context.Context, e *audit.Entry, job *rivertype.JobRow, err error, log *zap.Logger) error {
	now := p.cfg.Now()
	if errors.Is(err, defender.ErrQuotaWait) {
		// Many actions share the read quota: their polls stretch out,
		// which is not a failure of this one.
		return p.retryable(err)
	}
	switch defender.OutcomeOf(err) {
	case defender.OutcomeRateLimited, defender.OutcomeRetryable:
		if now.Sub(e.ActionCreatedAt) > p.cfg.ActionTimeout || job.Attempt >= job.MaxAttempts {
			return p.finishTrack(ctx, e, untracked, now, err.Error(), log)
		}
		log.Warn("polling the machine action failed; will retry", zap.Int("attempt", job.Attempt), zap.Error(err))
		return p.retryable(err)
	}
	return p.finishTrack(ctx, e, untracked, now, err.Error(), log)
}

func finishTime(a defender.MachineAction, now time.Time) time.Time {
	if !a.LastUpdateTime.IsZero() {
		return a.LastUpdateTime
	}
	return now
}

// finishTrack records the final status of a machine action, at at: one
// that collected nothing gives its cooldown back (audit.Final's
// ReleasesCooldown), and a collected package is enqueued for download.
func (p *Pipeline) finishTrack(ctx context.Context, e *audit.Entry, status string, at time.Time, reason string, log *zap.Logger) error {
	download := status == string(audit.Succeeded) && p.cfg.DownloadDir != "" && rules.Action(e.Action) == rules.ActionCollect
	err := p.store.InTx(ctx, func(tx *sql.Tx) error {
		c := store.Change{ActionStatus: &status, FinishedAt: &at}
		if reason != "" {
			c.Error = &reason
		}
		if _, err := p.transition(ctx, tx, e, audit.Done, c); err != nil {
			return err
		}
		if audit.Final(status).ReleasesCooldown() {
			if err := p.store.ReleaseCooldown(ctx, tx, e.ID); err != nil {
				return err
			}
		}
		if download {
			// The download raises the collected event, with the package.
			if _, err := p.client.InsertTx(ctx, tx, downloadArgs{AuditID: e.ID}, nil); err != nil {
				return fmt.Errorf("enqueueing the package download: %w", err)
			}
			return nil
		}
		return p.raiseEnd(ctx, tx, e, collectionEnd{status: status, at: at, reason: reason})
	})
	if err != nil {
		return err
	}
	p.m.ActionsFinished.WithLabelValues(status).Inc()
	if !e.ActionCreatedAt.IsZero() {
		p.m.ActionDuration.WithLabelValues(status).Observe(max(at.Sub(e.ActionCreatedAt).Seconds(), 0))
	}
	switch {
	case status == string(audit.Succeeded):
		log.Info("machine action finished", zap.String("status", status))
	case reason != "":
		log.Warn("machine action finished", zap.String("status", status), zap.String("error", reason))
	default:
		log.Warn("machine action finished", zap.String("status", status))
	}
	return nil
}
