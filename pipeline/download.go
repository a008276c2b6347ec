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
	"go.uber.org/zap"

	"github.com/responder-dev/responder/audit"
	"github.com/responder-dev/responder/defender"
	"github.com/responder-dev/responder/store"
)

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
		if defender.OutcomeOf(err) == defender.OutcomeRetryable && p.cfg.Now().Sub(e.FinishedAt) < downloadFor {
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
		if defender.OutcomeOf(err) == defender.OutcomeRetryable && job.Attempt < job.MaxAttempts {
			log.Warn("package download failed; will retry", zap.Int("attempt", job.Attempt), zap.Error(err))
			return err
		}
		return p.packageFailed(ctx, e, err, log)
	}
	now := p.cfg.Now()
	err = p.store.InTx(ctx, func(tx *sql.Tx) error {
		if _, err := p.store.Transition(ctx, tx, e.ID, nil, store.Change{PackagePath: &dest, PackageSHA256: &sum, PackageSize: &size}, now); err != nil {
			return err
		}
		return p.raiseEnd(ctx, tx, e, collectionEnd{status: e.ActionStatus, at: e.FinishedAt, size: size, sha256: sum})
	})
	if err != nil {
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
	err := p.store.InTx(ctx, func(tx *sql.Tx) error {
		if _, err := p.store.Transition(ctx, tx, e.ID, nil, store.Change{Error: &reason}, p.cfg.Now()); err != nil {
			return err
		}
		return p.raiseEnd(ctx, tx, e, collectionEnd{status: e.ActionStatus, at: e.FinishedAt, reason: reason})
	})
	if err != nil {
		return err
	}
	log.Error("investigation package not downloaded", zap.Error(cause))
	return river.JobCancel(cause)
}
