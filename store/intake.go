package store

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/responder-dev/responder/alert"
	"github.com/responder-dev/responder/audit"
)

// Intake commits the alerts of webhook requests to the store, several
// requests per transaction (a group commit), and marks them undispatched:
// the dispatcher turns them into evaluation jobs (an outbox), so that the
// queue's cost is not on the webhook's path. An alert that its Door decides
// is recorded decided in that same commit and never becomes a job.
type Intake struct {
	store      *Store
	now        func() time.Time
	onCommit   func()
	door       Door
	submits    chan *submitRequest
	closing    chan struct{}
	done       chan struct{}
	closeOnce  sync.Once
	insertSQLs map[int]string // the committer's insert statements, by rows
	entrySQLs  map[int]string // its statements recording decisions, by rows
}

// Door decides an alert at intake, when nothing but the alert and the
// rules can change its decision (no machine attribute to read, no action
// for the state to hold back). It returns nil for an alert the queue must
// decide. It runs in the submitting request's goroutine, concurrently.
type Door func(a *alert.Alert) *DoorDecision

// DoorDecision is an alert decided at intake. Its Entry is recorded in the
// commit that stores the alert; once that commit is done, Report is called
// with the entry (its ID set), unless the alert was a duplicate and so
// not stored, nor decided.
type DoorDecision struct {
	Entry  *audit.Entry
	Report func(*audit.Entry)
}

// NewIntake starts the committer of s; onCommit (may be nil) is called
// after each commit that stored alerts for the queue; door (may be nil)
// decides alerts at intake. Close stops it.
func NewIntake(s *Store, now func() time.Time, onCommit func(), door Door) *Intake {
	if now == nil {
		now = time.Now
	}
	in := &Intake{store: s, now: now, onCommit: onCommit, door: door, submits: make(chan *submitRequest, 256),
		closing: make(chan struct{}), done: make(chan struct{}), insertSQLs: map[int]string{}, entrySQLs: map[int]string{}}
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
// moment. Nothing waits on a timer to fill a batch (the committer only
// yields to requests being served), so a lone request is not delayed.
func (in *Intake) Submit(ctx context.Context, alerts []alert.Alert) (alert.Receipt, error) {
	// Encode here, in the caller's goroutine: the committer is one
	// goroutine serving every request, and its time is the intake's limit.
	req := &submitRequest{ctx: ctx, alerts: alerts, keys: make([]string, len(alerts)), payloads: make([]string, len(alerts)), done: make(chan submitResult, 1)}
	if in.door != nil {
		req.decided = make([]*DoorDecision, len(alerts))
	}
	for i := range alerts {
		payload, err := encodePayload(&alerts[i])
		if err != nil {
			return alert.Receipt{}, fmt.Errorf("encoding alert: %w", err)
		}
		req.keys[i], req.payloads[i] = alerts[i].DedupKey(), payload
		if in.door != nil {
			req.decided[i] = in.door(&alerts[i])
		}
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
		req.report(res)
		return res.receipt, res.err
	case <-ctx.Done():
		if !req.handedOff.CompareAndSwap(false, true) {
			// Answered meanwhile: the decisions are ours to report.
			res := <-req.done
			req.report(res)
			return res.receipt, res.err
		}
		// The batch may still commit (and its committer then reports the
		// decisions); a retry by the sender is a duplicate, harmless.
		return alert.Receipt{}, ctx.Err()
	}
}

// payloadBuffers are the buffers alerts are encoded into before the copy
// that is stored: json.Marshal would copy its buffer once more.
var payloadBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// encodePayload returns the stored JSON of a, what json.Marshal returns.
func encodePayload(a *alert.Alert) (string, error) {
	buf := payloadBuffers.Get().(*bytes.Buffer)
	defer func() {
		if buf.Cap() <= 64<<10 { // one large alert is not kept
			payloadBuffers.Put(buf)
		}
	}()
	buf.Reset()
	if err := json.NewEncoder(buf).Encode(a); err != nil {
		return "", err
	}
	return string(bytes.TrimSuffix(buf.Bytes(), []byte{'\n'})), nil
}

// report reports the decisions taken at intake of the alerts res stored.
func (r *submitRequest) report(res submitResult) {
	if res.err != nil || r.decided == nil {
		return
	}
	for i, d := range r.decided {
		if d != nil && !res.receipt.Duplicate[i] {
			d.Report(d.Entry)
		}
	}
}

// ErrClosed is returned by Submit once the intake is closed.
var ErrClosed = errors.New("the store takes no more alerts: it is closing")

type submitRequest struct {
	ctx      context.Context
	alerts   []alert.Alert
	keys     []string        // dedup keys, by alert
	payloads []string        // stored JSON, by alert
	decided  []*DoorDecision // by alert: decided at intake, or nil
	done     chan submitResult
	// handedOff is set by whichever comes first: the committer answering
	// (the caller then reports the decisions, in its own goroutine), or
	// the caller leaving (the committer reports them).
	handedOff atomic.Bool
}

type submitResult struct {
	receipt alert.Receipt
	err     error
}

// maxYields bounds how many times the committer yields to the requests
// being served before it commits. Larger batches write fewer WAL frames and
// sync less per alert (a commit's appended pages and its fsync are shared):
// 16 to 25 alerts per commit in the sustained load scenario, the 1,000/s
// open loop still one per commit.
const maxYields = 16

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
		// Under load the requests being served are runnable goroutines
		// a moment away from submitting: yield to them, and take what
		// they submit, until a yield brings nothing more. A lone
		// request yields once to no one and is committed at once.
		for yields := 0; n < maxBatchAlerts; yields++ {
			took := 0
		fill:
			for n < maxBatchAlerts {
				select {
				case r := <-in.submits:
					batch = append(batch, r)
					n += len(r.alerts)
					took++
				default:
					break fill
				}
			}
			if (took == 0 && yields > 0) || yields == maxYields {
				break
			}
			runtime.Gosched()
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
	queued, err := in.insert(live, unique, receipts)
	if err == nil && queued > 0 && in.onCommit != nil {
		in.onCommit()
	}
	for ri, r := range live {
		res := submitResult{err: err}
		if err == nil {
			res.receipt = receipts[ri]
		}
		if r.handedOff.CompareAndSwap(false, true) {
			r.done <- res
			continue
		}
		r.report(res) // its caller is gone
	}
}

// intakeItem is one alert of a batch: its request, its place in it, its
// dedup key.
type intakeItem struct {
	req, idx int
	key      string
}

// insert stores the unique alerts of live in one transaction, with the
// decisions of those decided at intake, and marks in receipts those that
// were stored before. It returns how many were stored for the queue.
func (in *Intake) insert(live []*submitRequest, unique []intakeItem, receipts []alert.Receipt) (queued int, err error) {
	now := in.now()
	// The batch outlives any one request's context: it serves them all.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = in.store.RetryTx(ctx, func(tx *sql.Tx) error {
		queued = 0 // a retried transaction starts afresh
		var entries []entryRow
		// Many rows per statement: one round trip (PostgreSQL) and one
		// statement execution (SQLite) per chunk, not per alert.
		for start := 0; start < len(unique); start += insertChunk {
			chunk := unique[start:min(start+insertChunk, len(unique))]
			args := make([]any, 0, 8*len(chunk))
			for _, it := range chunk {
				r := live[it.req]
				a := &r.alerts[it.idx]
				dispatched := 0
				if r.decision(it.idx) != nil {
					dispatched = 1 // decided here: nothing for the dispatcher
				}
				args = append(args, it.key, string(a.Source), a.ID, a.MachineID, a.MachineName, r.payloads[it.idx], ms(now), dispatched)
			}
			stored, err := insertedKeys(ctx, tx, in.insertSQL(len(chunk)), args)
			if err != nil {
				return err
			}
			for _, it := range chunk {
				rowID, ok := stored[it.key]
				receipts[it.req].Duplicate[it.idx] = !ok
				switch d := live[it.req].decision(it.idx); {
				case !ok:
				case d == nil:
					queued++
				default:
					entries = append(entries, entryRow{rowID: rowID, rec: d.Entry})
				}
			}
		}
		return in.insertEntries(ctx, tx, now, entries)
	})
	return queued, err
}

// decision is alert i's decision at intake, nil when the queue decides it.
func (r *submitRequest) decision(i int) *DoorDecision {
	if r.decided == nil {
		return nil
	}
	return r.decided[i]
}

// insertedKeys runs an insert that returns the row id and dedup key of
// each alert it stored.
func insertedKeys(ctx context.Context, tx *sql.Tx, query string, args []any) (map[string]int64, error) {
	rows, err := tx.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("storing alerts: %w", err)
	}
	defer rows.Close()
	stored := map[string]int64{}
	for rows.Next() {
		var id int64
		var key string
		if err := rows.Scan(&id, &key); err != nil {
			return nil, fmt.Errorf("storing alerts: %w", err)
		}
		stored[key] = id
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("storing alerts: %w", err)
	}
	return stored, nil
}

// entryRow is a decision to record at intake, for its alert row.
type entryRow struct {
	rowID int64
	rec   *audit.Entry
}

// insertEntries records decisions taken at intake, many per statement,
// from the values every decision is recorded with (entryValues), and sets
// what the store gave each entry.
func (in *Intake) insertEntries(ctx context.Context, tx *sql.Tx, now time.Time, entries []entryRow) error {
	for start := 0; start < len(entries); start += insertChunk {
		chunk := entries[start:min(start+insertChunk, len(entries))]
		args := make([]any, 0, 15*len(chunk))
		for _, e := range chunk {
			v, err := entryValues(e.rowID, now, e.rec)
			if err != nil {
				return err
			}
			// created_at and updated_at: one value, two anonymous parameters.
			args = append(append(append(args, v[:2]...), v[1]), v[2:]...)
		}
		rows, err := tx.QueryContext(ctx, in.insertEntriesSQL(len(chunk)), args...)
		if err != nil {
			return fmt.Errorf("recording decisions: %w", err)
		}
		ids := make(map[int64]int64, len(chunk))
		for rows.Next() {
			var id, rowID int64
			if err := rows.Scan(&id, &rowID); err != nil {
				rows.Close()
				return fmt.Errorf("recording decisions: %w", err)
			}
			ids[rowID] = id
		}
		if err := errors.Join(rows.Err(), rows.Close()); err != nil {
			return fmt.Errorf("recording decisions: %w", err)
		}
		for _, e := range chunk {
			id, ok := ids[e.rowID]
			if !ok {
				return fmt.Errorf("recording decisions: no audit entry returned for alert row %d", e.rowID)
			}
			e.rec.ID = id
			recorded(e.rec, e.rowID, now)
		}
	}
	return nil
}

// insertChunk bounds the rows of one insert statement (8 or 15 parameters
// each, well inside both databases' parameter limits).
const insertChunk = 100

// insertSQL returns the insert statement for n alert rows; its text depends
// only on n, so both drivers' statement caches reuse it.
func (in *Intake) insertSQL(n int) string {
	if q, ok := in.insertSQLs[n]; ok {
		return q
	}
	var b strings.Builder
	b.WriteString(`INSERT INTO responder_alert (dedup_key, source, alert_id, machine_id, machine_name, payload, received_at, dispatched) VALUES `)
	in.store.writeValues(&b, n, 8)
	b.WriteString(` ON CONFLICT (dedup_key) DO NOTHING RETURNING id, dedup_key`)
	in.insertSQLs[n] = b.String()
	return in.insertSQLs[n]
}

// insertEntriesSQL returns the statement recording n decisions at intake:
// insertEntrySQL's columns, many rows.
func (in *Intake) insertEntriesSQL(n int) string {
	if q, ok := in.entrySQLs[n]; ok {
		return q
	}
	var b strings.Builder
	b.WriteString(`INSERT INTO responder_audit (alert_row_id, created_at, updated_at, source, alert_id, machine_id, machine_name,
rule, action, decision, reason, comment, dry_run, state, machine) VALUES `)
	in.store.writeValues(&b, n, 15)
	b.WriteString(` RETURNING id, alert_row_id`)
	in.entrySQLs[n] = b.String()
	return in.entrySQLs[n]
}

// writeValues writes the VALUES tuples of n rows of width parameters. SQLite
// gets anonymous parameters: the driver looks each numbered one up by name
// in a list as long as the statement's parameters (quadratic in the rows).
func (s *Store) writeValues(b *strings.Builder, n, width int) {
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteByte('(')
		for j := range width {
			if j > 0 {
				b.WriteString(", ")
			}
			if s.Driver == DriverSQLite {
				b.WriteByte('?')
				continue
			}
			fmt.Fprintf(b, "$%d", width*i+j+1)
		}
		b.WriteByte(')')
	}
}
