package pipeline

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/responder-dev/responder/alert"
	"github.com/responder-dev/responder/audit"
	"github.com/responder-dev/responder/notify"
)

// The events of SPEC 13, built from the audit entry of the change they
// report, and raised (raise) in that change's transaction.

// entryEvent is the event of kind k about audit entry e of alert a (nil:
// what the entry knows of it). Its id is the entry's and the kind's: the
// same event raised again (a transaction redone) has the same id.
func entryEvent(k notify.Kind, e *audit.Entry, a *alert.Alert, now time.Time) notify.Event {
	ev := notify.Event{
		Version: "1", Kind: k, ID: fmt.Sprintf("audit-%d-%s", e.ID, k), Time: now, AuditID: e.ID,
		Alert: &notify.Alert{Source: e.Source, ID: e.AlertID},
		Rule:  e.Rule, Action: e.Action, Decision: string(e.Decision), DryRun: e.DryRun,
		Outcome: string(e.Outcome), ActionID: e.ActionID, Status: e.ActionStatus,
	}
	if a != nil {
		ev.Alert.Title, ev.Alert.Severity = a.Title, a.Severity
	}
	if e.MachineID != "" || e.MachineName != "" {
		ev.Machine = &notify.Machine{ID: e.MachineID, Name: e.MachineName}
	}
	return ev
}

// orderKey is the key under which the events of one alert are delivered
// in order.
func orderKey(e *audit.Entry) string { return "alert:" + e.Source + ":" + e.AlertID }

// circuitOrder orders the circuit breaker's events.
const circuitOrder = "circuit"

// raiseDecided raises the decided event of a collect or dry-run decision,
// in the decision's transaction.
func (p *Pipeline) raiseDecided(ctx context.Context, tx *sql.Tx, rec *audit.Entry, a *alert.Alert, now time.Time) error {
	if !rec.Decision.ClaimsCooldown() || !p.wantsAny(notify.Decided, rec.Rule) {
		return nil
	}
	ev := entryEvent(notify.Decided, rec, a, now)
	ev.Reason = rec.Reason
	return p.raise(ctx, tx, ev, orderKey(rec))
}

// raiseEnd raises the end of a collection, in the transaction that records
// it: collected (its action succeeded; with the package when one was
// downloaded) or failed (every other end, with why). e is the entry as it
// was before that transaction; end sets what the transaction changed.
func (p *Pipeline) raiseEnd(ctx context.Context, tx *sql.Tx, e *audit.Entry, end collectionEnd) error {
	k := notify.Failed
	if end.status == string(audit.Succeeded) {
		k = notify.Collected
	}
	if !p.wantsAny(k, e.Rule) && !p.writesBack() {
		return nil
	}
	ev := entryEvent(k, e, p.eventAlert(ctx, tx, e), p.cfg.Now())
	if end.outcome != "" {
		ev.Outcome = string(end.outcome)
	}
	if end.actionID != "" {
		ev.ActionID = end.actionID
	}
	ev.Status, ev.Reason = end.status, end.reason
	if !e.ActionCreatedAt.IsZero() && !end.at.IsZero() {
		ev.DurationSeconds = max(end.at.Sub(e.ActionCreatedAt).Round(time.Second).Seconds(), 0)
	}
	if end.sha256 != "" {
		ev.Package = &notify.Package{Bytes: end.size, SHA256: end.sha256}
	}
	return p.raise(ctx, tx, ev, orderKey(e))
}

// collectionEnd is how a collection ended.
type collectionEnd struct {
	outcome  audit.Outcome // set when the request was refused (no action)
	actionID string
	status   string // the action's final status; "" when there was none
	at       time.Time
	reason   string
	size     int64
	sha256   string
}

// eventAlert reads the alert of entry e for its title and severity,
// through tx; an alert deleted by retention (an action tracked for longer
// than it) is named by what the entry knows.
func (p *Pipeline) eventAlert(ctx context.Context, tx *sql.Tx, e *audit.Entry) *alert.Alert {
	a, _, err := p.store.AlertIn(ctx, tx, e.AlertRowID)
	if err != nil {
		p.log.Debug("the alert of a finished collection could not be read; its event names it by id", zap.Int64("audit_id", e.ID), zap.Error(err))
		return nil
	}
	return a
}

// writesBack reports whether a write-back is configured, which takes the
// ends of actions whatever the notifiers.
func (p *Pipeline) writesBack() bool {
	return p.notifiers.Load().get(WriteBackName) != nil
}

// circuitChanged records the breaker's new state in the store and, when
// this call changed it (one replica does), raises circuit_open or
// circuit_closed, in one transaction.
func (p *Pipeline) circuitChanged(ctx context.Context, open bool, why string) error {
	now := p.cfg.Now()
	return p.store.InTx(ctx, func(tx *sql.Tx) error {
		changed, err := p.store.SetCircuit(ctx, tx, open, now)
		if err != nil || !changed {
			return err
		}
		k := notify.CircuitClosed
		if open {
			k = notify.CircuitOpen
		}
		ev := notify.Event{Version: "1", Kind: k, ID: fmt.Sprintf("%s-%d", k, now.UnixMilli()), Time: now, Reason: why}
		return p.raise(ctx, tx, ev, circuitOrder)
	})
}

// circuitOpened records the breaker opened by a decision (the background
// loop sees it later); on failure the loop records it on its next round.
func (p *Pipeline) circuitOpened(why string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.circuitChanged(ctx, true, why); err != nil {
		p.circuitSynced.Store(false)
		p.log.Warn("recording the circuit breaker's opening failed; retried by the background loop", zap.Error(err))
	}
}

// NotePermissions hands the permissions a renewed token lacks (none: all
// granted) to the background loop, which raises permission_missing when
// they change. It never blocks (the token hook calls it).
func (p *Pipeline) NotePermissions(missing []string) {
	select {
	case p.permissions <- missing:
	default: // a finding is still waiting; the next renewal brings this one again
	}
}

// raisePermissions raises permission_missing for a new set of missing
// permissions; last is the set raised before (by this process).
func (p *Pipeline) raisePermissions(ctx context.Context, missing, last []string) error {
	if len(missing) == 0 || fmt.Sprint(missing) == fmt.Sprint(last) {
		return nil
	}
	now := p.cfg.Now()
	ev := notify.Event{Version: "1", Kind: notify.PermissionMissing, ID: fmt.Sprintf("permission_missing-%d-%s", now.UnixMilli(), strings.Join(missing, "+")), Time: now,
		MissingPermissions: missing,
		Reason:             "the Defender application lacks permissions the configuration needs; grant them in Entra ID with admin consent"}
	return p.store.InTx(ctx, func(tx *sql.Tx) error { return p.raise(ctx, tx, ev, "") })
}
