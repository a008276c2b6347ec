// Package store is the responder's database, SQLite or PostgreSQL through
// database/sql: the schema and its migrations, the alerts intake commits,
// the audit trail, the state decisions read (cooldowns, the kill switch,
// the circuit breaker's windows), the quota log, and retention. Every SQL
// statement of the responder is here; the queue (River) shares the
// database and its transactions. No other package talks to the database.
package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
	"github.com/riverqueue/river/riverdriver"
	"github.com/riverqueue/river/riverdriver/riverdatabasesql"
	"github.com/riverqueue/river/riverdriver/riversqlite"
	"github.com/riverqueue/river/rivermigrate"
	_ "modernc.org/sqlite" // database/sql driver "sqlite"

	"github.com/responder-dev/responder/internal/sqlitecache"
)

// Driver names of store.driver.
const (
	DriverSQLite   = "sqlite"
	DriverPostgres = "postgres"
)

// Drivers lists the drivers Open accepts.
var Drivers = []string{DriverSQLite, DriverPostgres}

// Store is the database shared by the queue and the responder's own tables.
// Both drivers go through database/sql so that one code path serves both.
type Store struct {
	DB     *sql.DB
	Driver string
	river  riverdriver.Driver[*sql.Tx]
	lock   *os.File // SQLite: the exclusive lock of the one node
	// Created reports that the SQLite file did not exist before this open:
	// a new, empty store, which the operator should hear about.
	Created bool

	stopCheckpoints context.CancelFunc // SQLite: ends the checkpointer
	checkpointsDone chan struct{}
}

// Open connects to the store, takes the SQLite single-node lock, and
// runs River's and the responder's migrations (idempotent; safe to run from
// several replicas at once on PostgreSQL).
func Open(ctx context.Context, driver, dsn string) (*Store, error) {
	s := &Store{Driver: driver}
	switch driver {
	case DriverSQLite:
		if err := s.openSQLite(dsn); err != nil {
			return nil, err
		}
	case DriverPostgres:
		db, err := sql.Open("pgx", dsn)
		if err != nil {
			return nil, fmt.Errorf("opening postgres store: %w", redactDSN(err, dsn))
		}
		// As many kept idle as may be open: with fewer, every burst past
		// the idle bound closed connections on release and opened new ones
		// (a PostgreSQL backend each, forked and authenticated) on the next
		// acquire; 610 sessions opened in one 2-minute load run, 23 now.
		db.SetMaxOpenConns(postgresConns)
		db.SetMaxIdleConns(postgresConns)
		db.SetConnMaxIdleTime(5 * time.Minute)
		s.DB = db
		s.river = riverdatabasesql.New(db)
	default:
		return nil, fmt.Errorf("unknown store driver %q", driver)
	}
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := s.DB.PingContext(pingCtx); err != nil {
		s.Close()
		return nil, fmt.Errorf("store unreachable: %w", redactDSN(err, dsn))
	}
	if err := s.migrate(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// OpenReadOnly opens the store for reading the audit trail while a
// server may be running: no lock, no migrations, no writes.
func OpenReadOnly(ctx context.Context, driver, dsn string) (*Store, error) {
	s := &Store{Driver: driver}
	switch driver {
	case DriverSQLite:
		if _, err := os.Stat(dsn); err != nil {
			return nil, fmt.Errorf("sqlite store: %w", err)
		}
		q := url.Values{}
		q.Add("_pragma", "busy_timeout(10000)")
		q.Add("_pragma", "query_only(1)")
		db, err := sql.Open("sqlite", "file:"+dsn+"?"+q.Encode())
		if err != nil {
			return nil, fmt.Errorf("opening sqlite store: %w", err)
		}
		db.SetMaxOpenConns(1)
		s.DB = db
	case DriverPostgres:
		db, err := sql.Open("pgx", dsn)
		if err != nil {
			return nil, fmt.Errorf("opening postgres store: %w", redactDSN(err, dsn))
		}
		db.SetMaxOpenConns(2)
		s.DB = db
	default:
		return nil, fmt.Errorf("unknown store driver %q", driver)
	}
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := s.DB.PingContext(pingCtx); err != nil {
		s.Close()
		return nil, fmt.Errorf("store unreachable: %w", redactDSN(err, dsn))
	}
	return s, nil
}

func (s *Store) openSQLite(path string) error {
	if path == "" {
		return errors.New("sqlite store: empty path")
	}
	// The file is created on first start, but not its directory: a typo in
	// store.dsn must not start an empty store, which would forget every
	// cooldown and dedup key and collect from machines again.
	dir := filepath.Dir(path)
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return fmt.Errorf("sqlite store: directory %s of store.dsn %s does not exist (create it, or correct store.dsn)", dir, path)
	}
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		s.Created = true
	}
	// SQLite serves one node: a second process on the same file would
	// break the crash recovery, which assumes that no other process runs
	// jobs. An advisory lock makes that explicit.
	lock, err := os.OpenFile(path+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("opening the sqlite lock file: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = lock.Close()
		return fmt.Errorf("sqlite store %s is in use by another responder process (sqlite serves one node; use postgres for several replicas)", path)
	}
	s.lock = lock
	// WAL for concurrent readers, synchronous=FULL so that an acknowledged
	// alert survives a power loss, a busy timeout, and immediate write
	// transactions so that claims serialise instead of failing.
	q := url.Values{}
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(FULL)")
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "foreign_keys(1)")
	// Checkpoints run beside the writer (checkpointer); the connection's
	// own, which would stall a webhook's commit while it copies the WAL
	// into the database and syncs it, only as a backstop (40 MiB of WAL).
	q.Add("_pragma", "wal_autocheckpoint(10000)")
	// A statement that inserts many rows (the intake's) keeps a journal to
	// undo itself should it fail halfway: in memory, not a temporary file
	// written page by page with a system call each.
	q.Add("_pragma", "temp_store(MEMORY)")
	q.Set("_txlock", "immediate")
	// Statements are parsed once per connection and reused (sqlitecache):
	// River and the pipeline query with SQL text, and parsing it each time
	// cost more CPU than running it.
	db := sqlitecache.Open("file:"+path+"?"+q.Encode(), sqlitecache.DefaultSize)
	// One connection: SQLite allows one writer, and River's SQLite driver
	// requires it to avoid SQLITE_BUSY.
	db.SetMaxOpenConns(1)
	s.DB = db
	s.river = sqliteDriver{riversqlite.New(db)}
	return s.startCheckpointer(path)
}

// checkpointEvery is how often the checkpointer copies the WAL into the
// database file.
const checkpointEvery = 250 * time.Millisecond

// startCheckpointer runs passive WAL checkpoints on a connection of its
// own. A passive checkpoint waits for no one and blocks no one: the writer
// keeps committing meanwhile, and once the whole WAL is copied the next
// commit starts it over, so it stays small. Errors are ignored: a busy
// checkpoint is retried at the next tick, and the writer's own checkpoint
// remains as a backstop.
func (s *Store) startCheckpointer(path string) error {
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "synchronous(FULL)")
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return fmt.Errorf("opening the sqlite checkpointer: %w", err)
	}
	db.SetMaxOpenConns(1)
	ctx, cancel := context.WithCancel(context.Background())
	s.stopCheckpoints, s.checkpointsDone = cancel, make(chan struct{})
	go func() {
		defer close(s.checkpointsDone)
		defer db.Close()
		t := time.NewTicker(checkpointEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				_, _ = db.ExecContext(ctx, `PRAGMA wal_checkpoint(PASSIVE)`)
			}
		}
	}()
	return nil
}

// RiverDriver returns the queue's driver on this store's database.
func (s *Store) RiverDriver() riverdriver.Driver[*sql.Tx] { return s.river }

// Pool returns the store's connection pool as an Execer, for a change made
// outside a transaction.
func (s *Store) Pool() Execer { return s.DB }

// Close closes the database and releases the SQLite lock.
func (s *Store) Close() {
	if s.stopCheckpoints != nil {
		s.stopCheckpoints()
		<-s.checkpointsDone
		s.stopCheckpoints = nil
	}
	if s.DB != nil {
		_ = s.DB.Close()
	}
	if s.lock != nil {
		_ = syscall.Flock(int(s.lock.Fd()), syscall.LOCK_UN)
		_ = s.lock.Close()
		s.lock = nil
	}
}

// Ping checks that the store answers (readiness).
func (s *Store) Ping(ctx context.Context) error {
	var one int
	if err := s.DB.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil {
		return fmt.Errorf("store does not answer: %w", err)
	}
	return nil
}

// redactDSN removes a DSN (which may hold a password) from an error text.
func redactDSN(err error, dsn string) error {
	if dsn == "" || !strings.Contains(err.Error(), dsn) {
		return err
	}
	return errors.New(strings.ReplaceAll(err.Error(), dsn, "<dsn>"))
}

// postgresConns bounds a replica's connections to PostgreSQL: the intake's
// committer, the queue's producer and workers, the API and the background
// jobs share them.
const postgresConns = 20

// migration is one schema step of the responder's own tables, written in
// the SQL both drivers share (see forDriver).
type migration struct {
	version int
	sql     string
}

// migrations are applied in order, each once (responder_schema records the
// version). Times are unix milliseconds in BIGINT on both drivers, so that
// window arithmetic is the same SQL everywhere.
var migrations = []migration{{
	version: 1,
	sql: `
CREATE TABLE responder_alert (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  dedup_key TEXT NOT NULL UNIQUE,
  source TEXT NOT NULL,
  alert_id TEXT NOT NULL,
  machine_id TEXT NOT NULL DEFAULT '',
  machine_name TEXT NOT NULL DEFAULT '',
  payload TEXT NOT NULL,
  received_at BIGINT NOT NULL
);
CREATE TABLE responder_audit (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  alert_row_id BIGINT NOT NULL UNIQUE,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL,
  source TEXT NOT NULL,
  alert_id TEXT NOT NULL,
  machine_id TEXT NOT NULL DEFAULT '',
  machine_name TEXT NOT NULL DEFAULT '',
  rule TEXT NOT NULL DEFAULT '',
  action TEXT NOT NULL DEFAULT '',
  decision TEXT NOT NULL,
  reason TEXT NOT NULL DEFAULT '',
  comment TEXT NOT NULL DEFAULT '',
  dry_run INTEGER NOT NULL DEFAULT 0,
  state TEXT NOT NULL DEFAULT 'done',
  posted_at BIGINT NOT NULL DEFAULT 0,
  outcome TEXT NOT NULL DEFAULT '',
  action_id TEXT NOT NULL DEFAULT '',
  action_status TEXT NOT NULL DEFAULT '',
  action_created_at BIGINT NOT NULL DEFAULT 0,
  finished_at BIGINT NOT NULL DEFAULT 0,
  package_path TEXT NOT NULL DEFAULT '',
  package_sha256 TEXT NOT NULL DEFAULT '',
  package_size BIGINT NOT NULL DEFAULT 0,
  error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX responder_audit_machine ON responder_audit (machine_id, created_at);
CREATE INDEX responder_audit_decision ON responder_audit (decision, created_at);
CREATE TABLE responder_cooldown (
  machine_id TEXT NOT NULL,
  action TEXT NOT NULL,
  last_at BIGINT NOT NULL,
  audit_id BIGINT NOT NULL,
  PRIMARY KEY (machine_id, action)
);
CREATE TABLE responder_setting (
  name TEXT PRIMARY KEY,
  value TEXT NOT NULL,
  updated_at BIGINT NOT NULL
);
CREATE TABLE responder_quota (
  grp TEXT NOT NULL,
  at_ms BIGINT NOT NULL
);
CREATE INDEX responder_quota_grp_at ON responder_quota (grp, at_ms);
INSERT INTO responder_setting (name, value, updated_at) VALUES ('paused', 'false', 0), ('claim_lock', '', 0);
`,
}, {
	// Intake commits alert rows only; a dispatcher turns them into queue
	// jobs in large batches (an outbox), off the webhook's critical path.
	version: 2,
	sql: `
ALTER TABLE responder_alert ADD COLUMN dispatched INTEGER NOT NULL DEFAULT 1;
CREATE INDEX responder_alert_undispatched ON responder_alert (id) WHERE dispatched = 0;
`,
}, {
	// The circuit breaker counts the distinct machines collected in the
	// last 10 minutes for every decision transaction: with the machine in
	// the index the count reads the index alone. It replaces the index on
	// (decision, created_at), of which it is an extension.
	version: 3,
	sql: `
CREATE INDEX responder_audit_collected ON responder_audit (decision, created_at, machine_id);
DROP INDEX responder_audit_decision;
`,
}, {
	// The POSTs sent for a decision, counted where they are claimed: the
	// attempt budget spans the evaluator's inline try, every collect job
	// and restarts, and a 429 gives its attempt back.
	version: 4,
	sql: `
ALTER TABLE responder_audit ADD COLUMN posts INTEGER NOT NULL DEFAULT 0;
`,
}, {
	// Retention (retention.go) walks the finished entries in the order
	// they last changed, and skips those a cooldown still points at; the
	// id makes the walk's cursor unique on both drivers (SQLite would add
	// the rowid by itself).
	version: 5,
	sql: `
CREATE INDEX responder_audit_retention ON responder_audit (state, updated_at, id);
CREATE INDEX responder_cooldown_audit ON responder_cooldown (audit_id);
`,
}, {
	// Until when a POST whose answer was lost may still show up in
	// Defender: until then the decision only looks for it, never posts
	// again (see collect).
	version: 6,
	sql: `
ALTER TABLE responder_audit ADD COLUMN settle_until BIGINT NOT NULL DEFAULT 0;
`,
}, {
	// The machine attributes the rules read for a decision (JSON; '' when
	// they read none), so that a replay sees what the rules saw (SPEC 11).
	version: 7,
	sql: `
ALTER TABLE responder_audit ADD COLUMN machine TEXT NOT NULL DEFAULT '';
`,
}, {
	// Replay reads the decisions of a window of time in the order they
	// were taken; this finds the window's first and last without a scan.
	version: 8,
	sql: `
CREATE INDEX responder_audit_created ON responder_audit (created_at, id);
`,
}, {
	// Notifications (SPEC 13): one row per event and notifier, written in
	// the transaction of the change the event reports, with its delivery
	// job; the row says what became of it. The circuit breaker's state is
	// kept so that one replica, the one whose transaction flips it,
	// reports the change.
	version: 9,
	sql: `
CREATE TABLE responder_notification (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL,
  notifier TEXT NOT NULL,
  event TEXT NOT NULL,
  event_id TEXT NOT NULL,
  order_key TEXT NOT NULL DEFAULT '',
  audit_id BIGINT NOT NULL DEFAULT 0,
  body TEXT NOT NULL,
  state TEXT NOT NULL DEFAULT 'pending',
  attempts INTEGER NOT NULL DEFAULT 0,
  sent_at BIGINT NOT NULL DEFAULT 0,
  answer TEXT NOT NULL DEFAULT '',
  UNIQUE (notifier, event_id)
);
CREATE INDEX responder_notification_pending ON responder_notification (notifier, order_key, id) WHERE state = 'pending';
CREATE INDEX responder_notification_retention ON responder_notification (state, updated_at, id);
INSERT INTO responder_setting (name, value, updated_at) VALUES ('circuit', 'closed', 0);
`,
}}

// forDriver adapts a migration written for SQLite to the driver: the only
// difference the schema needs is the type of generated keys.
func forDriver(stmts, driver string) string {
	if driver == DriverPostgres {
		return strings.ReplaceAll(stmts, "INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY")
	}
	return stmts
}

// migrate runs River's migrations, then the responder's.
func (s *Store) migrate(ctx context.Context) error {
	migrator, err := rivermigrate.New(s.river, nil)
	if err != nil {
		return fmt.Errorf("preparing queue migrations: %w", err)
	}
	if s.Driver == DriverPostgres {
		// Replicas starting together must not migrate concurrently; River
		// does not serialise itself, so hold a session advisory lock.
		conn, err := s.DB.Conn(ctx)
		if err != nil {
			return fmt.Errorf("migrating: %w", err)
		}
		defer conn.Close()
		if _, err := conn.ExecContext(ctx, "SELECT pg_advisory_lock(7406211)"); err != nil {
			return fmt.Errorf("migrating: taking the migration lock: %w", err)
		}
		defer func() { _, _ = conn.ExecContext(context.Background(), "SELECT pg_advisory_unlock(7406211)") }()
	}
	if _, err := migrator.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return fmt.Errorf("migrating the queue tables: %w", err)
	}
	if _, err := s.DB.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS responder_schema (version INTEGER NOT NULL)`); err != nil {
		return fmt.Errorf("migrating: %w", err)
	}
	var current int
	if err := s.DB.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM responder_schema`).Scan(&current); err != nil {
		return fmt.Errorf("migrating: reading the schema version: %w", err)
	}
	for _, m := range migrations {
		if m.version <= current {
			continue
		}
		stmts := forDriver(m.sql, s.Driver)
		tx, err := s.DB.BeginTx(ctx, nil)
		if err != nil {
			return fmt.Errorf("migrating to version %d: %w", m.version, err)
		}
		for _, stmt := range strings.Split(stmts, ";\n") {
			if strings.TrimSpace(stmt) == "" {
				continue
			}
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				_ = tx.Rollback()
				return fmt.Errorf("migrating to version %d: %w", m.version, err)
			}
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO responder_schema (version) VALUES ($1)`, m.version); err != nil {
			_ = tx.Rollback()
			return fmt.Errorf("migrating to version %d: %w", m.version, err)
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("migrating to version %d: %w", m.version, err)
		}
	}
	return nil
}

// InTx runs fn in a transaction, committing on nil.
func (s *Store) InTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	return runTx(ctx, s.DB, fn)
}

// runTx begins a transaction on db (the pool, or one connection), runs fn
// and commits on nil.
func runTx(ctx context.Context, db interface {
	BeginTx(context.Context, *sql.TxOptions) (*sql.Tx, error)
}, fn func(tx *sql.Tx) error) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("beginning a transaction: %w", err)
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("committing: %w", err)
	}
	return nil
}

// RedoableTx is retryTx for work that is redone when its commit is lost:
// on SQLite the commit is not flushed to disk at once (synchronous=NORMAL
// for this transaction only). It stays atomic, and it becomes durable with
// the next flushed commit, since the WAL is replayed in order; a power loss
// before that forgets the transaction as a whole. The dispatcher uses it
// (rows it forgets are dispatched again) and so do decisions (see
// decideBatch).
func (s *Store) RedoableTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	if s.Driver != DriverSQLite {
		return s.RetryTx(ctx, fn)
	}
	conn, err := s.DB.Conn(ctx)
	if err != nil {
		return fmt.Errorf("taking the connection: %w", err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, `PRAGMA synchronous=NORMAL`); err != nil {
		return fmt.Errorf("relaxing synchronous: %w", err)
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, err := conn.ExecContext(rctx, `PRAGMA synchronous=FULL`); err != nil {
			// Never hand out a connection that does not flush commits:
			// discard it (a new one starts from the DSN's pragmas).
			_ = conn.Raw(func(any) error { return driver.ErrBadConn })
		}
	}()
	return runTx(ctx, conn, fn)
}

// RetryTx is inTx, retried a few times when PostgreSQL aborts the
// transaction for a deadlock or a serialisation failure: both are resolved
// by running it again.
func (s *Store) RetryTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	var err error
	for attempt := 0; attempt < 4; attempt++ {
		if err = s.InTx(ctx, fn); err == nil || !transient(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Duration(attempt+1) * 10 * time.Millisecond):
		}
	}
	return err
}

// transient reports a PostgreSQL deadlock (40P01) or serialisation failure
// (40001).
func transient(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "40P01" || pgErr.Code == "40001")
}

// lockClaims serialises decision claims across replicas (PostgreSQL row
// lock; SQLite write transactions are already serial).
func (s *Store) lockClaims(ctx context.Context, tx *sql.Tx) error {
	if s.Driver != DriverPostgres {
		return nil
	}
	_, err := tx.ExecContext(ctx, `SELECT value FROM responder_setting WHERE name = 'claim_lock' FOR UPDATE`)
	if err != nil {
		return fmt.Errorf("locking claims: %w", err)
	}
	return nil
}

// ms stores a time as unix milliseconds; the zero time is 0.
func ms(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

func fromMS(v int64) time.Time {
	if v == 0 {
		return time.Time{}
	}
	return time.UnixMilli(v).UTC()
}

// sqliteDriver is River's SQLite driver run in poll-only mode. Its emulated
// LISTEN polls a notification table every 50 ms (not configurable), so a
// job inserted on SQLite waited 25 ms on average before a worker saw it.
// In poll-only mode a job inserted outside a transaction wakes this
// process's workers at once (this process is the only node on SQLite), and
// no notification rows are written.
type sqliteDriver struct {
	*riversqlite.Driver
}

func (sqliteDriver) SupportsListener() bool     { return false }
func (sqliteDriver) SupportsListenNotify() bool { return false }
