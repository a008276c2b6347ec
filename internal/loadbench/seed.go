package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/responder-dev/responder/audit"
	"github.com/responder-dev/responder/store"
)

// seeded is a store holding the seeded alerts.
type seeded struct {
	driver, dsn string
	// end is the end of the seeded window: every alert was received
	// before it.
	end time.Time
	// took is how long seeding took (that run's, when reused).
	took   time.Duration
	reused bool
	// remove deletes the store (nil when it is kept).
	remove func()
}

// The marker a complete seed ends with: a kept store is reused only when
// its marker says the same version and number of alerts. The table is the
// benchmark's, beside the product's; the product never reads it.
const (
	markerTable = `CREATE TABLE IF NOT EXISTS loadbench_seed (version INTEGER NOT NULL, alerts BIGINT NOT NULL, end_ms BIGINT NOT NULL, seconds DOUBLE PRECISION NOT NULL)`
	markerRead  = `SELECT end_ms, seconds FROM loadbench_seed WHERE version = $1 AND alerts = $2`
	markerWrite = `INSERT INTO loadbench_seed (version, alerts, end_ms, seconds) VALUES ($1, $2, $3, $4)`
)

// readMarker returns the end of a complete seed of n alerts in db.
func readMarker(ctx context.Context, db *sql.DB, n int) (end time.Time, took time.Duration, ok bool) {
	var endMS int64
	var secs float64
	if err := db.QueryRowContext(ctx, markerRead, seedVersion, n).Scan(&endMS, &secs); err != nil {
		return time.Time{}, 0, false
	}
	return time.UnixMilli(endMS).UTC(), time.Duration(secs * float64(time.Second)), true
}

// migrate creates the product's schema through store.Open, so that the
// seeded store has the product's tables, indexes and migrations.
func migrate(ctx context.Context, driver, dsn string) error {
	s, err := store.Open(ctx, driver, dsn)
	if err != nil {
		return fmt.Errorf("creating the store: %w", err)
	}
	s.Close()
	return nil
}

// generate runs gen in a goroutine and hands out its rows in batches of
// size; the channel closes after the last batch, or an error.
func generate(ctx context.Context, gen *seedGen, size int) <-chan seedBatch {
	out := make(chan seedBatch, 64)
	go func() {
		defer close(out)
		for !gen.done() {
			b := seedBatch{rows: make([]seedRow, 0, size)}
			for len(b.rows) < size && !gen.done() {
				r, err := gen.row()
				if err != nil {
					b.err = err
					break
				}
				b.rows = append(b.rows, r)
			}
			select {
			case out <- b:
			case <-ctx.Done():
				return
			}
			if b.err != nil {
				return
			}
		}
	}()
	return out
}

type seedBatch struct {
	rows []seedRow
	err  error
}

// sqlitePaths are the files of a SQLite store.
func sqlitePaths(path string) []string {
	return []string{path, path + "-wal", path + "-shm", path + ".lock"}
}

func removeSQLite(path string) {
	for _, p := range sqlitePaths(path) {
		_ = os.Remove(p)
	}
}

// seedSQLite seeds the SQLite store at path, or reuses it when keep is set
// and it holds a complete seed of the same spec.
func seedSQLite(ctx context.Context, path string, spec seedSpec, keep bool, currentPath string) (*seeded, error) {
	s := &seeded{driver: store.DriverSQLite, dsn: path}
	if !keep {
		s.remove = func() { removeSQLite(path) }
	}
	if keep {
		if _, err := os.Stat(path); err == nil {
			db, err := sql.Open("sqlite", "file:"+path+"?_pragma=query_only(1)")
			if err == nil {
				end, took, ok := readMarker(ctx, db, spec.alerts)
				_ = db.Close()
				if ok {
					s.end, s.took, s.reused = end, took, true
					// The product's newer migrations, if any.
					return s, migrate(ctx, s.driver, s.dsn)
				}
			}
		}
	}
	removeSQLite(path)
	if err := migrate(ctx, s.driver, s.dsn); err != nil {
		return nil, err
	}
	// Seeding is not the product's write path: no fsync, a large cache.
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=synchronous(OFF)&_pragma=busy_timeout(10000)&_pragma=cache_size(-524288)&_pragma=journal_mode(WAL)")
	if err != nil {
		return nil, fmt.Errorf("opening the seed store: %w", err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	start := time.Now()
	gen, err := newSeedGen(spec, currentPath)
	if err != nil {
		return nil, err
	}
	if err := insertSQLite(ctx, db, gen); err != nil {
		return nil, err
	}
	s.took, s.end = time.Since(start), spec.end
	if err := finishSeed(ctx, db, gen, spec, s.took); err != nil {
		return nil, err
	}
	if _, err := db.ExecContext(ctx, `PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
		return nil, fmt.Errorf("checkpointing the seed store: %w", err)
	}
	report(gen, s.took, path)
	return s, nil
}

// sqliteRows is the rows of one multi-row insert statement on SQLite.
const sqliteRows = 100

// insertSQLite inserts gen's rows in transactions of 50,000 alerts, with
// multi-row statements prepared once per transaction.
func insertSQLite(ctx context.Context, db *sql.DB, gen *seedGen) error {
	batches := generate(ctx, gen, sqliteRows)
	var tx *sql.Tx
	var alerts, audits *sql.Stmt
	inTx := 0
	commit := func() error {
		if tx == nil {
			return nil
		}
		_ = alerts.Close()
		_ = audits.Close()
		err := tx.Commit()
		tx = nil
		return err
	}
	defer func() {
		if tx != nil {
			_ = tx.Rollback()
		}
	}()
	for b := range batches {
		if b.err != nil {
			return b.err
		}
		if tx == nil {
			var err error
			if tx, err = db.BeginTx(ctx, nil); err != nil {
				return fmt.Errorf("seeding: %w", err)
			}
			if alerts, err = tx.PrepareContext(ctx, insertSQL("responder_alert", alertColumns, sqliteRows)); err != nil {
				return fmt.Errorf("seeding: %w", err)
			}
			if audits, err = tx.PrepareContext(ctx, insertSQL("responder_audit", auditColumns, sqliteRows)); err != nil {
				return fmt.Errorf("seeding: %w", err)
			}
		}
		if err := insertRows(ctx, tx, alerts, b.rows, "responder_alert", alertColumns, (*seedRow).alertValues); err != nil {
			return err
		}
		if err := insertRows(ctx, tx, audits, b.rows, "responder_audit", auditColumns, (*seedRow).auditValues); err != nil {
			return err
		}
		if inTx += len(b.rows); inTx >= 50_000 {
			if err := commit(); err != nil {
				return fmt.Errorf("seeding: %w", err)
			}
			inTx = 0
		}
	}
	if err := commit(); err != nil {
		return fmt.Errorf("seeding: %w", err)
	}
	return nil
}

// insertRows inserts rows with st when they are a full statement's worth,
// else with a statement of their own (the last batch).
func insertRows(ctx context.Context, tx *sql.Tx, st *sql.Stmt, rows []seedRow, table string, columns []string, values func(*seedRow) []any) error {
	args := make([]any, 0, len(rows)*len(columns))
	for i := range rows {
		args = append(args, values(&rows[i])...)
	}
	var err error
	if len(rows) == sqliteRows {
		_, err = st.ExecContext(ctx, args...)
	} else {
		_, err = tx.ExecContext(ctx, insertSQL(table, columns, len(rows)), args...)
	}
	if err != nil {
		return fmt.Errorf("seeding %s: %w", table, err)
	}
	return nil
}

// insertSQL is a SQLite insert of n rows with anonymous parameters.
func insertSQL(table string, columns []string, n int) string {
	row := "(" + strings.TrimSuffix(strings.Repeat("?, ", len(columns)), ", ") + ")"
	return "INSERT INTO " + table + " (" + strings.Join(columns, ", ") + ") VALUES " + strings.TrimSuffix(strings.Repeat(row+", ", n), ", ")
}

// finishSeed writes the cooldowns the decisions hold, then the marker.
func finishSeed(ctx context.Context, db *sql.DB, gen *seedGen, spec seedSpec, took time.Duration) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("seeding cooldowns: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	st, err := tx.PrepareContext(ctx, `INSERT INTO responder_cooldown (machine_id, action, last_at, audit_id) VALUES ($1, $2, $3, $4)`)
	if err != nil {
		return fmt.Errorf("seeding cooldowns: %w", err)
	}
	defer st.Close()
	for _, c := range gen.cooldowns() {
		if _, err := st.ExecContext(ctx, c.machineID, c.key, c.lastAt, c.id); err != nil {
			return fmt.Errorf("seeding cooldowns: %w", err)
		}
	}
	if _, err := tx.ExecContext(ctx, markerTable); err != nil {
		return fmt.Errorf("marking the seed: %w", err)
	}
	if _, err := tx.ExecContext(ctx, markerWrite, seedVersion, spec.alerts, spec.end.UnixMilli(), took.Seconds()); err != nil {
		return fmt.Errorf("marking the seed: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("seeding cooldowns: %w", err)
	}
	return nil
}

// report prints what was seeded.
func report(gen *seedGen, took time.Duration, where string) {
	n := gen.next
	var parts []string
	for _, d := range audit.Decisions() {
		if c := gen.stats.decisions[d]; c > 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", d, c))
		}
	}
	fmt.Printf("seeded %d alerts in %s (%.0f alerts/s) into %s; payload %.0f bytes on average; decisions %s; %d without a machine snapshot; %d cooldowns held\n",
		n, took.Round(100*time.Millisecond), float64(n)/took.Seconds(), where, float64(gen.stats.payloadBytes)/float64(max(n, 1)),
		strings.Join(parts, " "), gen.stats.noSnapshot, len(gen.held))
}

// seedPostgres seeds a database on the server of base (named after the
// number of alerts when kept, so that the next run finds it), or reuses
// it when keep is set and it holds a complete seed of the same spec.
func seedPostgres(ctx context.Context, base string, spec seedSpec, keep bool, currentPath string) (*seeded, error) {
	name := fmt.Sprintf("responder_replay_seed_%d", spec.alerts)
	if !keep {
		name = fmt.Sprintf("responder_replay_seed_%d", time.Now().UnixNano())
	}
	dsn, err := withDatabase(base, name)
	if err != nil {
		return nil, err
	}
	s := &seeded{driver: store.DriverPostgres, dsn: dsn}
	if keep {
		if db, err := sql.Open("pgx", dsn); err == nil {
			end, took, ok := readMarker(ctx, db, spec.alerts)
			_ = db.Close()
			if ok {
				s.end, s.took, s.reused = end, took, true
				return s, migrate(ctx, s.driver, s.dsn)
			}
		}
	}
	if err := recreateDatabase(ctx, base, name, ""); err != nil {
		return nil, err
	}
	if !keep {
		s.remove = func() { _ = dropDatabase(base, name) }
	}
	if err := migrate(ctx, s.driver, s.dsn); err != nil {
		return nil, err
	}
	start := time.Now()
	gen, err := newSeedGen(spec, currentPath)
	if err != nil {
		return nil, err
	}
	if err := copyPostgres(ctx, dsn, gen); err != nil {
		return nil, err
	}
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		return nil, fmt.Errorf("opening the seed database: %w", err)
	}
	defer db.Close()
	// The ids were given, not drawn: move the sequences past them, or the
	// serving responder's next insert would collide.
	for _, t := range []string{"responder_alert", "responder_audit"} {
		if _, err := db.ExecContext(ctx, fmt.Sprintf(`SELECT setval(pg_get_serial_sequence('%s', 'id'), (SELECT MAX(id) FROM %s))`, t, t)); err != nil {
			return nil, fmt.Errorf("moving the sequence of %s: %w", t, err)
		}
	}
	// What autovacuum would do shortly after such a load.
	if _, err := db.ExecContext(ctx, `ANALYZE`); err != nil {
		return nil, fmt.Errorf("analysing the seed database: %w", err)
	}
	s.took, s.end = time.Since(start), spec.end
	if err := finishSeed(ctx, db, gen, spec, s.took); err != nil {
		return nil, err
	}
	report(gen, s.took, "PostgreSQL database "+name)
	return s, nil
}

// copyPostgres loads gen's rows with COPY, alerts and audit entries on two
// connections at once.
func copyPostgres(ctx context.Context, dsn string, gen *seedGen) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	feeds := [2]chan []seedRow{make(chan []seedRow, 16), make(chan []seedRow, 16)}
	tables := [2]string{"responder_alert", "responder_audit"}
	columns := [2][]string{alertColumns, auditColumns}
	values := [2]func(*seedRow) []any{(*seedRow).alertValues, (*seedRow).auditValues}
	errs := make(chan error, 3)
	for i := range feeds {
		go func() {
			conn, err := pgx.Connect(ctx, dsn)
			if err != nil {
				errs <- fmt.Errorf("seeding %s: %w", tables[i], err)
				cancel()
				return
			}
			defer conn.Close(context.Background())
			_, err = conn.CopyFrom(ctx, pgx.Identifier{tables[i]}, columns[i], &feedSource{feed: feeds[i], values: values[i]})
			if err != nil {
				err = fmt.Errorf("seeding %s: %w", tables[i], err)
				cancel()
			}
			errs <- err
		}()
	}
	go func() {
		defer close(feeds[0])
		defer close(feeds[1])
		for b := range generate(ctx, gen, 1000) {
			if b.err != nil {
				errs <- b.err
				cancel()
				return
			}
			for _, f := range feeds {
				select {
				case f <- b.rows:
				case <-ctx.Done():
					errs <- ctx.Err() // the copy that failed says why
					return
				}
			}
		}
		errs <- nil
	}()
	// The cause, not the cancellation it caused elsewhere.
	var first error
	for range 3 {
		err := <-errs
		if err != nil && (first == nil || errors.Is(first, context.Canceled)) {
			first = err
		}
	}
	return first
}

// feedSource is a pgx.CopyFromSource over batches of rows.
type feedSource struct {
	feed   <-chan []seedRow
	rows   []seedRow
	i      int
	values func(*seedRow) []any
}

func (f *feedSource) Next() bool {
	f.i++
	for f.i >= len(f.rows) {
		rows, ok := <-f.feed
		if !ok {
			return false
		}
		f.rows, f.i = rows, 0
	}
	return true
}

func (f *feedSource) Values() ([]any, error) { return f.values(&f.rows[f.i]), nil }

func (f *feedSource) Err() error { return nil }

// withDatabase returns base with its database replaced by name.
func withDatabase(base, name string) (string, error) {
	u, err := url.Parse(base)
	if err != nil {
		return "", fmt.Errorf("parsing the PostgreSQL DSN: %w", err)
	}
	u.Path = "/" + name
	return u.String(), nil
}

// recreateDatabase drops the database name on the server of base and
// creates it again, empty or as a copy of template.
func recreateDatabase(ctx context.Context, base, name, template string) error {
	if err := dropDatabase(base, name); err != nil {
		return err
	}
	admin, err := sql.Open("pgx", base)
	if err != nil {
		return fmt.Errorf("connecting to PostgreSQL: %w", err)
	}
	defer admin.Close()
	q := "CREATE DATABASE " + name
	if template != "" {
		q += " TEMPLATE " + template
	}
	if _, err := admin.ExecContext(ctx, q); err != nil {
		return fmt.Errorf("creating database %s: %w", name, err)
	}
	return nil
}

func dropDatabase(base, name string) error {
	admin, err := sql.Open("pgx", base)
	if err != nil {
		return fmt.Errorf("connecting to PostgreSQL: %w", err)
	}
	defer admin.Close()
	if _, err := admin.Exec("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)"); err != nil {
		return fmt.Errorf("dropping database %s: %w", name, err)
	}
	return nil
}

// copyFile copies a SQLite store (with no writer: its WAL is checkpointed)
// to dst, and syncs the copy.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		_ = out.Close()
		return err
	}
	// On disk before the measurement starts: the kernel writing back
	// gigabytes of the copy would slow the service's own fsyncs.
	if err := out.Sync(); err != nil {
		_ = out.Close()
		return err
	}
	return out.Close()
}

// checkpoint runs a PostgreSQL checkpoint on the server of base.
func checkpoint(ctx context.Context, base string) error {
	admin, err := sql.Open("pgx", base)
	if err != nil {
		return fmt.Errorf("connecting to PostgreSQL: %w", err)
	}
	defer admin.Close()
	if _, err := admin.ExecContext(ctx, "CHECKPOINT"); err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	return nil
}
