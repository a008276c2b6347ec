package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Notification is one event for one notifier (SPEC 13), from the change
// that raised it to its delivery: a row written in the transaction of that
// change, so that an event is neither lost nor raised twice, and delivered
// by a queue job of its own.
type Notification struct {
	ID        int64
	CreatedAt time.Time
	UpdatedAt time.Time
	Notifier  string
	Event     string
	// EventID is the event's id (the webhook document's "id"): one event
	// raised twice (a decision redone after a lost commit) is stored once
	// per notifier.
	EventID string
	// OrderKey groups the events delivered in order (those of one alert,
	// or the circuit breaker's); "" for none.
	OrderKey string
	AuditID  int64
	// Body is the event's document (JSON).
	Body     []byte
	State    string
	Attempts int
	SentAt   time.Time
	// Answer is the receiver's last answer or the last error, truncated.
	Answer string
}

// The states of a notification. Pending is the only live one.
const (
	NotificationPending = "pending"
	NotificationSent    = "sent"
	// NotificationFailed: the receiver refused it for good (a 4xx other
	// than 429).
	NotificationFailed = "failed"
	// NotificationGaveUp: still failing when it was too old to send.
	NotificationGaveUp = "gave_up"
	// NotificationDropped: its notifier was removed from the configuration.
	NotificationDropped = "dropped"
)

// ErrNoNotification is returned for an unknown notification id.
var ErrNoNotification = errors.New("no notification with that id")

// AddNotification stores n through q (the transaction of the change it
// reports) and returns its id, or 0 when the notifier already has that
// event (raised again by a redone transaction).
func (s *Store) AddNotification(ctx context.Context, q Querier, n Notification) (int64, error) {
	var id int64
	err := q.QueryRowContext(ctx, `INSERT INTO responder_notification (created_at, updated_at, notifier, event, event_id, order_key, audit_id, body)
VALUES ($1, $1, $2, $3, $4, $5, $6, $7) ON CONFLICT (notifier, event_id) DO NOTHING RETURNING id`,
		ms(n.CreatedAt), n.Notifier, n.Event, n.EventID, n.OrderKey, n.AuditID, string(n.Body)).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("storing the %s notification for %s: %w", n.Event, n.Notifier, err)
	}
	return id, nil
}

// Querier runs a query returning one row: the pool or a transaction.
type Querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

const notificationColumns = `id, created_at, updated_at, notifier, event, event_id, order_key, audit_id, body, state, attempts, sent_at, answer`

// Notification returns one notification.
func (s *Store) Notification(ctx context.Context, id int64) (*Notification, error) {
	var n Notification
	var created, updated, sent int64
	var body string
	err := s.DB.QueryRowContext(ctx, `SELECT `+notificationColumns+` FROM responder_notification WHERE id = $1`, id).Scan(
		&n.ID, &created, &updated, &n.Notifier, &n.Event, &n.EventID, &n.OrderKey, &n.AuditID, &body, &n.State, &n.Attempts, &sent, &n.Answer)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNoNotification
	}
	if err != nil {
		return nil, fmt.Errorf("reading notification %d: %w", id, err)
	}
	n.CreatedAt, n.UpdatedAt, n.SentAt, n.Body = fromMS(created), fromMS(updated), fromMS(sent), []byte(body)
	return &n, nil
}

// EarlierPending reports whether a notification raised before n for the
// same notifier and order key is still pending: n waits for it, so that a
// receiver gets the events of one alert in order.
func (s *Store) EarlierPending(ctx context.Context, n *Notification) (bool, error) {
	if n.OrderKey == "" {
		return false, nil
	}
	var one int
	err := s.DB.QueryRowContext(ctx, `SELECT 1 FROM responder_notification
WHERE notifier = $1 AND order_key = $2 AND id < $3 AND state = 'pending' LIMIT 1`, n.Notifier, n.OrderKey, n.ID).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("reading the notifications before %d: %w", n.ID, err)
	}
	return true, nil
}

// NotificationAttempt records one more failed attempt of a pending
// notification, with the receiver's answer or the error.
func (s *Store) NotificationAttempt(ctx context.Context, id int64, answer string, now time.Time) error {
	if _, err := s.DB.ExecContext(ctx, `UPDATE responder_notification SET attempts = attempts + 1, answer = $1, updated_at = $2
WHERE id = $3 AND state = 'pending'`, truncate(answer, 1000), ms(now), id); err != nil {
		return fmt.Errorf("recording an attempt of notification %d: %w", id, err)
	}
	return nil
}

// FinishNotification ends a pending notification in state (sent, failed,
// gave_up, dropped), counting the attempt that ended it when attempted; it
// reports false when it was no longer pending.
func (s *Store) FinishNotification(ctx context.Context, id int64, state string, attempted bool, answer string, now time.Time) (bool, error) {
	add, sent := 0, int64(0)
	if attempted {
		add = 1
	}
	if state == NotificationSent {
		sent = ms(now)
	}
	res, err := s.DB.ExecContext(ctx, `UPDATE responder_notification SET state = $1, attempts = attempts + $2, answer = $3, sent_at = $4, updated_at = $5
WHERE id = $6 AND state = 'pending'`, state, add, truncate(answer, 1000), sent, ms(now), id)
	if err != nil {
		return false, fmt.Errorf("recording notification %d %s: %w", id, state, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("recording notification %d %s: %w", id, state, err)
	}
	return n > 0, nil
}

// Notifications returns the notifications of one audit entry, oldest
// first (the admin API and `responder actions` show them).
func (s *Store) Notifications(ctx context.Context, auditID int64) ([]Notification, error) {
	rows, err := s.DB.QueryContext(ctx, `SELECT `+notificationColumns+` FROM responder_notification WHERE audit_id = $1 ORDER BY id`, auditID)
	if err != nil {
		return nil, fmt.Errorf("reading the notifications of audit entry %d: %w", auditID, err)
	}
	defer rows.Close()
	var out []Notification
	for rows.Next() {
		var n Notification
		var created, updated, sent int64
		var body string
		if err := rows.Scan(&n.ID, &created, &updated, &n.Notifier, &n.Event, &n.EventID, &n.OrderKey, &n.AuditID, &body,
			&n.State, &n.Attempts, &sent, &n.Answer); err != nil {
			return nil, fmt.Errorf("reading the notifications of audit entry %d: %w", auditID, err)
		}
		n.CreatedAt, n.UpdatedAt, n.SentAt, n.Body = fromMS(created), fromMS(updated), fromMS(sent), []byte(body)
		out = append(out, n)
	}
	return out, rows.Err()
}

// SetCircuit records the circuit breaker's state through q, and reports
// whether this call changed it: of replicas that see the breaker open (or
// re-arm) at once, one reports it.
func (s *Store) SetCircuit(ctx context.Context, q Execer, open bool, now time.Time) (bool, error) {
	v := "closed"
	if open {
		v = "open"
	}
	res, err := q.ExecContext(ctx, `UPDATE responder_setting SET value = $1, updated_at = $2 WHERE name = 'circuit' AND value <> $1`, v, ms(now))
	if err != nil {
		return false, fmt.Errorf("recording the circuit breaker %s: %w", v, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("recording the circuit breaker %s: %w", v, err)
	}
	return n > 0, nil
}
