package pipeline

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

// entryUpdate changes the work fields of an audit entry.
type entryUpdate struct {
	state, outcome, actionID, actionStatus, errText *string
	postedAt, actionCreatedAt, finishedAt, settle   *time.Time
	packagePath, packageSHA                         *string
	packageSize                                     *int64
}

func str(s string) *string { return &s }

func (s *Store) updateEntry(ctx context.Context, q interface {
	ExecContext(context.Context, string, ...any) (sql.Result, error)
}, id int64, u entryUpdate, now time.Time) error {
	sets := []string{"updated_at = $1"}
	args := []any{ms(now)}
	add := func(col string, v any) {
		args = append(args, v)
		sets = append(sets, fmt.Sprintf("%s = $%d", col, len(args)))
	}
	if u.state != nil {
		add("state", *u.state)
	}
	if u.outcome != nil {
		add("outcome", *u.outcome)
	}
	if u.actionID != nil {
		add("action_id", *u.actionID)
	}
	if u.actionStatus != nil {
		add("action_status", *u.actionStatus)
	}
	if u.errText != nil {
		add("error", truncate(*u.errText, 2000))
	}
	if u.postedAt != nil {
		add("posted_at", ms(*u.postedAt))
	}
	if u.settle != nil {
		add("settle_until", ms(*u.settle))
	}
	if u.actionCreatedAt != nil {
		add("action_created_at", ms(*u.actionCreatedAt))
	}
	if u.finishedAt != nil {
		add("finished_at", ms(*u.finishedAt))
	}
	if u.packagePath != nil {
		add("package_path", *u.packagePath)
	}
	if u.packageSHA != nil {
		add("package_sha256", *u.packageSHA)
	}
	if u.packageSize != nil {
		add("package_size", *u.packageSize)
	}
	args = append(args, id)
	_, err := q.ExecContext(ctx, fmt.Sprintf(`UPDATE responder_audit SET %s WHERE id = $%d`, strings.Join(sets, ", "), len(args)), args...)
	if err != nil {
		return fmt.Errorf("updating audit entry %d: %w", id, err)
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
