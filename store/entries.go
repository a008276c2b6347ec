package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/responder-dev/responder/audit"
)

const entryColumns = `id, alert_row_id, created_at, updated_at, source, alert_id, machine_id, machine_name, rule, action,
decision, reason, comment, dry_run, state, posted_at, outcome, action_id, action_status, action_created_at,
finished_at, package_path, package_sha256, package_size, error, posts, settle_until, machine`

type scanner interface{ Scan(dest ...any) error }

func scanEntry(row scanner) (*audit.Entry, error) {
	var e audit.Entry
	var created, updated, posted, actionCreated, finished, settle int64
	var dry int
	var snapshot string
	err := row.Scan(&e.ID, &e.AlertRowID, &created, &updated, &e.Source, &e.AlertID, &e.MachineID, &e.MachineName,
		&e.Rule, &e.Action, &e.Decision, &e.Reason, &e.Comment, &dry, &e.State, &posted, &e.Outcome, &e.ActionID,
		&e.ActionStatus, &actionCreated, &finished, &e.PackagePath, &e.PackageSHA256, &e.PackageSize, &e.Error, &e.Posts, &settle, &snapshot)
	if err != nil {
		return nil, err
	}
	if e.Machine, err = audit.UnmarshalSnapshot(snapshot); err != nil {
		return nil, fmt.Errorf("reading the machine snapshot of audit entry %d: %w", e.ID, err)
	}
	e.CreatedAt, e.UpdatedAt, e.PostedAt, e.SettleUntil = fromMS(created), fromMS(updated), fromMS(posted), fromMS(settle)
	e.ActionCreatedAt, e.FinishedAt = fromMS(actionCreated), fromMS(finished)
	e.DryRun = dry != 0
	return &e, nil
}

// ErrNoEntry is returned for an unknown audit id.
var ErrNoEntry = errors.New("no audit entry with that id")

// Entry returns one audit entry.
func (s *Store) Entry(ctx context.Context, id int64) (*audit.Entry, error) {
	e, err := scanEntry(s.DB.QueryRowContext(ctx, `SELECT `+entryColumns+` FROM responder_audit WHERE id = $1`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNoEntry
	}
	if err != nil {
		return nil, fmt.Errorf("reading audit entry %d: %w", id, err)
	}
	return e, nil
}

// Filter selects audit entries. Status matches the decision, the outcome,
// the action status or the work state, so that "cooldown", "created",
// "Succeeded" and "tracking" all work.
type Filter struct {
	MachineID string
	Status    string
	// Limit is the page size, from 1 to MaxLimit; anything else is 100.
	Limit int
	// BeforeID, when positive, keeps only the entries with a smaller id:
	// the page after one whose last entry had that id.
	BeforeID int64
}

// MaxLimit is the largest page of the audit trail.
const MaxLimit = 10000

// Page is one page of the audit trail, newest first, as the admin API
// answers it: More says that older entries match the filter too, and
// NextBeforeID (set only then) is the BeforeID of the next page, the id of
// the last entry of this one.
type Page struct {
	Actions      []*audit.Entry `json:"actions"`
	More         bool           `json:"more"`
	NextBeforeID int64          `json:"next_before_id,omitempty"`
}

// Entries lists audit entries, newest first.
func (s *Store) Entries(ctx context.Context, f Filter) ([]*audit.Entry, error) {
	p, err := s.EntriesPage(ctx, f)
	if err != nil {
		return nil, err
	}
	return p.Actions, nil
}

// EntriesPage lists one page of audit entries, newest first, and whether
// more exist: it reads one entry more than the page to know. Paging by id
// (a keyset, not an offset) stays correct while entries are added and
// costs the same on the last page as on the first.
func (s *Store) EntriesPage(ctx context.Context, f Filter) (*Page, error) {
	var where []string
	var args []any
	if f.MachineID != "" {
		args = append(args, strings.ToLower(f.MachineID))
		where = append(where, fmt.Sprintf("machine_id = $%d", len(args)))
	}
	if f.Status != "" {
		args = append(args, f.Status)
		n := len(args)
		where = append(where, fmt.Sprintf("(decision = $%d OR outcome = $%d OR action_status = $%d OR state = $%d)", n, n, n, n))
	}
	if f.BeforeID > 0 {
		args = append(args, f.BeforeID)
		where = append(where, fmt.Sprintf("id < $%d", len(args)))
	}
	q := `SELECT ` + entryColumns + ` FROM responder_audit`
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, " AND ")
	}
	limit := f.Limit
	if limit <= 0 || limit > MaxLimit {
		limit = 100
	}
	q += fmt.Sprintf(` ORDER BY id DESC LIMIT %d`, limit+1)
	rows, err := s.DB.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("listing the audit trail: %w", err)
	}
	defer rows.Close()
	page := &Page{Actions: []*audit.Entry{}}
	for rows.Next() {
		e, err := scanEntry(rows)
		if err != nil {
			return nil, fmt.Errorf("listing the audit trail: %w", err)
		}
		if len(page.Actions) == limit {
			page.More = true
			break
		}
		page.Actions = append(page.Actions, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing the audit trail: %w", err)
	}
	if page.More {
		page.NextBeforeID = page.Actions[len(page.Actions)-1].ID
	}
	return page, nil
}

// Execer runs a statement: the store's pool, or a transaction a caller
// holds to commit the change with work of its own (a queue job).
type Execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// Change sets the work fields of an audit entry; nil fields are kept.
type Change struct {
	State                         *audit.State
	Outcome                       *audit.Outcome
	ActionID, ActionStatus, Error *string
	ActionCreatedAt, FinishedAt   *time.Time
	SettleUntil                   *time.Time
	PackagePath, PackageSHA256    *string
	PackageSize                   *int64
}

// Ptr returns a pointer to v, for the fields of a Change.
func Ptr[T any](v T) *T { return &v }

// Transition applies change to entry id at now, only while the entry is in
// one of the states from (any state when from is empty); it reports
// whether the entry was changed. q is the pool (Store.Pool) or a
// transaction.
func (s *Store) Transition(ctx context.Context, q Execer, id int64, from []audit.State, c Change, now time.Time) (bool, error) {
	sets := []string{"updated_at = $1"}
	args := []any{ms(now)}
	add := func(col string, v any) {
		args = append(args, v)
		sets = append(sets, fmt.Sprintf("%s = $%d", col, len(args)))
	}
	if c.State != nil {
		add("state", string(*c.State))
	}
	if c.Outcome != nil {
		add("outcome", string(*c.Outcome))
	}
	if c.ActionID != nil {
		add("action_id", *c.ActionID)
	}
	if c.ActionStatus != nil {
		add("action_status", *c.ActionStatus)
	}
	if c.Error != nil {
		add("error", truncate(*c.Error, 2000))
	}
	if c.SettleUntil != nil {
		add("settle_until", ms(*c.SettleUntil))
	}
	if c.ActionCreatedAt != nil {
		add("action_created_at", ms(*c.ActionCreatedAt))
	}
	if c.FinishedAt != nil {
		add("finished_at", ms(*c.FinishedAt))
	}
	if c.PackagePath != nil {
		add("package_path", *c.PackagePath)
	}
	if c.PackageSHA256 != nil {
		add("package_sha256", *c.PackageSHA256)
	}
	if c.PackageSize != nil {
		add("package_size", *c.PackageSize)
	}
	args = append(args, id)
	where := fmt.Sprintf("id = $%d", len(args))
	if len(from) > 0 {
		marks := make([]string, len(from))
		for i, st := range from {
			args = append(args, string(st))
			marks[i] = fmt.Sprintf("$%d", len(args))
		}
		where += " AND state IN (" + strings.Join(marks, ", ") + ")"
	}
	res, err := q.ExecContext(ctx, fmt.Sprintf(`UPDATE responder_audit SET %s WHERE %s`, strings.Join(sets, ", "), where), args...)
	if err != nil {
		return false, fmt.Errorf("updating audit entry %d: %w", id, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("updating audit entry %d: %w", id, err)
	}
	return n > 0, nil
}

// ClaimPosting moves entry e from the state it was read in to posting, if
// nobody changed it since (its state and posted_at are compared), counting
// one more request, with the request's settle time; it reports whether
// this caller owns the request, and updates e when it does.
func (s *Store) ClaimPosting(ctx context.Context, e *audit.Entry, now, settle time.Time) (bool, error) {
	var posts int
	err := s.DB.QueryRowContext(ctx, `UPDATE responder_audit SET state = 'posting', posted_at = $1, updated_at = $1, posts = posts + 1, settle_until = $5
WHERE id = $2 AND state = $3 AND posted_at = $4 RETURNING posts`, ms(now), e.ID, string(e.State), ms(e.PostedAt), ms(settle)).Scan(&posts)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("claiming the collection: %w", err)
	}
	e.State, e.PostedAt, e.Posts, e.SettleUntil = audit.Posting, fromMS(ms(now)), posts, fromMS(ms(settle))
	return true, nil
}

// UnclaimPosting puts a posting entry back to queued: its request never
// reached Defender, or Defender refused it (a 429), so sending it again is
// safe. A refused request gives its count back (it used no attempt).
func (s *Store) UnclaimPosting(ctx context.Context, id int64, giveBack bool, now time.Time) error {
	back := 0
	if giveBack {
		back = 1
	}
	if _, err := s.DB.ExecContext(ctx, `UPDATE responder_audit SET state = 'queued', posts = posts - $1, updated_at = $2 WHERE id = $3 AND state = 'posting'`,
		back, ms(now), id); err != nil {
		return fmt.Errorf("requeueing collection %d: %w", id, err)
	}
	return nil
}

// ReleaseCooldown gives back the cooldown the entry auditID holds (its
// action collected nothing), so that the next alert for the machine may
// try again.
func (s *Store) ReleaseCooldown(ctx context.Context, q Execer, auditID int64) error {
	if _, err := q.ExecContext(ctx, `DELETE FROM responder_cooldown WHERE audit_id = $1`, auditID); err != nil {
		return fmt.Errorf("releasing the cooldown of audit entry %d: %w", auditID, err)
	}
	return nil
}

// Unfinished returns the entries left queued or posting since before
// before (a crash between a decision and its hand-over to the queue).
func (s *Store) Unfinished(ctx context.Context, before time.Time) ([]int64, error) {
	rows, err := s.DB.QueryContext(ctx, `SELECT id FROM responder_audit WHERE state IN ('queued', 'posting') AND updated_at <= $1`, ms(before))
	if err != nil {
		return nil, fmt.Errorf("finding unfinished collections: %w", err)
	}
	defer rows.Close()
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("finding unfinished collections: %w", err)
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
