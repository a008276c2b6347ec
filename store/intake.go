package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/responder-dev/responder/alert"
)

// Intake commits the alerts of webhook requests to the store, several
// requests per transaction (a group commit), and marks them undispatched:
// the dispatcher turns them into evaluation jobs (an outbox), so that the
// queue's cost is not on the webhook's path.
type Intake struct {
	store      *Store
	now        func() time.Time
	onCommit   func()
	submits    chan *submitRequest
	closing    chan struct{}
	done       chan struct{}
	closeOnce  sync.Once
	insertSQLs map[int]string // the committer's insert statements, by rows
}

// NewIntake starts the committer of s; onCommit (may be nil) is called
// after each commit that stored alerts. Close stops it.
func NewIntake(s *Store, now func() time.Time, onCommit func()) *Intake {
	if now == nil {
		now = time.Now
	}
	in := &Intake{store: s, now: now, onCommit: onCommit, submits: make(chan *submitRequest, 256),
		closing: make(chan struct{}), done: make(chan struct{}), insertSQLs: map[int]string{}}
	go in.committer()
	return in
}

// Close stops taking alerts and waits for the committer: a request being
// committed is answered first.
func (in *Intake) Close() {
	in.closeOnce.Do(func() { close(in.closing) })
	<-in.done
}

// Submit stores alerts, which the dispatcher then hands to the queue; it
// implements alert.Sink and returns once they are committed. A duplicate (same
// DedupKey as a stored alert) is reported, not stored.
//
// Concurrent submissions are committed together (group commit): one
// transaction, so one fsync, serves every webhook request waiting at that
// moment. Nothing waits to fill a batch, so a lone request is not delayed.
func (in *Intake) Submit(ctx context.Context, alerts []alert.Alert) (alert.Receipt, error) {
	// Encode here, in the caller's goroutine: the committer is one
	// goroutine serving every request, and its time is the intake's limit.
	req := &submitRequest{ctx: ctx, alerts: alerts, keys: make([]string, len(alerts)), payloads: make([]string, len(alerts)), done: make(chan submitResult, 1)}
	for i := range alerts {
		payload, err := json.Marshal(&alerts[i])
		if err != nil {
			return alert.Receipt{}, fmt.Errorf("encoding alert: %w", err)
		}
		req.keys[i], req.payloads[i] = alerts[i].DedupKey(), string(payload)
	}
	select {
	case in.submits <- req:
	case <-ctx.Done():
		return alert.Receipt{}, ctx.Err()
	case <-in.closing:
		return alert.Receipt{}, ErrClosed
	}
	select {
	case res := <-req.done:
		return res.receipt, res.err
	case <-ctx.Done():
		// The batch may still commit; a retry by the sender is then a
		// duplicate, which is harmless.
		return alert.Receipt{}, ctx.Err()
	}
}

// ErrClosed is returned by Submit once the intake is closed.
var ErrClosed = errors.New("the store takes no more alerts: it is closing")

type submitRequest struct {
	ctx      context.Context
	alerts   []alert.Alert
	keys     []string // dedup keys, by alert
	payloads []string // stored JSON, by alert
	done     chan submitResult
}

type submitResult struct {
	receipt alert.Receipt
	err     error
}

// maxBatchAlerts bounds one group commit.
const maxBatchAlerts = 2000

// committer runs group commits until closing is closed.
func (in *Intake) committer() {
	defer close(in.done)
	for {
		var first *submitRequest
		select {
		case first = <-in.submits:
		case <-in.closing:
			return
		}
		batch, n := []*submitRequest{first}, len(first.alerts)
	fill:
		for n < maxBatchAlerts {
			select {
			case r := <-in.submits:
				batch = append(batch, r)
				n += len(r.alerts)
			default:
				break fill
			}
		}
		in.commitBatch(batch)
	}
}

// commitBatch stores the alerts of every live request in one transaction
// and answers each request.
func (in *Intake) commitBatch(batch []*submitRequest) {
	live := batch[:0]
	for _, r := range batch {
		if err := r.ctx.Err(); err != nil {
			r.done <- submitResult{err: err}
			continue
		}
		live = append(live, r)
	}
	if len(live) == 0 {
		return
	}
	receipts := make([]alert.Receipt, len(live))
	// Insert in dedup-key order: concurrent batches on PostgreSQL (other
	// replicas) then take the unique-index locks in one global order and
	// cannot deadlock on each other.
	var items []intakeItem
	for ri, r := range live {
		receipts[ri] = alert.Receipt{Duplicate: make([]bool, len(r.alerts))}
		for i := range r.alerts {
			items = append(items, intakeItem{ri, i, r.keys[i]})
		}
	}
	slices.SortFunc(items, func(a, b intakeItem) int { return strings.Compare(a.key, b.key) })
	// A key that occurs twice in the batch is stored once: its first
	// occurrence (the sorted order is stable) decides, the others are
	// duplicates of it.
	var unique []intakeItem
	for i, it := range items {
		if i > 0 && it.key == items[i-1].key {
			receipts[it.req].Duplicate[it.idx] = true
			continue
		}
		unique = append(unique, it)
	}
	err := in.insert(live, unique, receipts)
	if err == nil && in.onCommit != nil {
		in.onCommit()
	}
	for ri, r := range live {
		if err != nil {
			r.done <- submitResult{err: err}
			continue
		}
		r.done <- submitResult{receipt: receipts[ri]}
	}
}

// intakeItem is one alert of a batch: its request, its place in it, its
// dedup key.
type intakeItem struct {
	req, idx int
	key      string
}

// insert stores the unique alerts of live in one transaction and marks in
// receipts those that were stored before.
func (in *Intake) insert(live []*submitRequest, unique []intakeItem, receipts []alert.Receipt) error {
	now := in.now()
	// The batch outlives any one request's context: it serves them all.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return in.store.RetryTx(ctx, func(tx *sql.Tx) error {
		// Many rows per statement: one round trip (PostgreSQL) and one
		// statement execution (SQLite) per chunk, not per alert.
		for start := 0; start < len(unique); start += insertChunk {
			chunk := unique[start:min(start+insertChunk, len(unique))]
			args := make([]any, 0, 7*len(chunk))
			for _, it := range chunk {
				r := live[it.req]
				a := &r.alerts[it.idx]
				args = append(args, it.key, string(a.Source), a.ID, a.MachineID, a.MachineName, r.payloads[it.idx], ms(now))
			}
			stored, err := insertedKeys(ctx, tx, in.insertSQL(len(chunk)), args)
			if err != nil {
				return err
			}
			for _, it := range chunk {
				receipts[it.req].Duplicate[it.idx] = !stored[it.key]
			}
		}
		return nil
	})
}

// insertedKeys runs an insert that returns the dedup keys it stored.
func insertedKeys(ctx context.Context, tx *sql.Tx, query string, args []any) (map[string]bool, error) {
	rows, err := tx.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("storing alerts: %w", err)
	}
	defer rows.Close()
	stored := map[string]bool{}
	for rows.Next() {
		var key string
		if err := rows.Scan(&key); err != nil {
			return nil, fmt.Errorf("storing alerts: %w", err)
		}
		stored[key] = true
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("storing alerts: %w", err)
	}
	return stored, nil
}

// insertChunk bounds the rows of one insert statement (7 parameters each,
// well inside both databases' parameter limits).
const insertChunk = 100

// insertSQL returns the insert statement for n alert rows; its text depends
// only on n, so both drivers' statement caches reuse it. SQLite gets
// anonymous parameters: the driver looks each numbered one up by name in a
// list as long as the statement's parameters (quadratic in the rows).
func (in *Intake) insertSQL(n int) string {
	if q, ok := in.insertSQLs[n]; ok {
		return q
	}
	var b strings.Builder
	b.WriteString(`INSERT INTO responder_alert (dedup_key, source, alert_id, machine_id, machine_name, payload, received_at, dispatched) VALUES `)
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		if in.store.Driver == DriverSQLite {
			b.WriteString("(?, ?, ?, ?, ?, ?, ?, 0)")
			continue
		}
		fmt.Fprintf(&b, "($%d, $%d, $%d, $%d, $%d, $%d, $%d, 0)", 7*i+1, 7*i+2, 7*i+3, 7*i+4, 7*i+5, 7*i+6, 7*i+7)
	}
	b.WriteString(` ON CONFLICT (dedup_key) DO NOTHING RETURNING dedup_key`)
	in.insertSQLs[n] = b.String()
	return in.insertSQLs[n]
}
