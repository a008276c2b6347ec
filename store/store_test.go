package store

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/responder-dev/responder/internal/testkit"
)

// TestSQLiteStoreDirectoryMustExist: the store file is created on first
// start, but a path whose directory does not exist (a typo in store.dsn) is
// refused rather than starting an empty store; Created tells a new store.
func TestSQLiteStoreDirectoryMustExist(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	missing := filepath.Join(dir, "no-such-dir", "responder.db")
	if s, err := Open(ctx, DriverSQLite, missing); err == nil {
		s.Close()
		t.Fatal("opened a store in a directory that does not exist")
	} else if !strings.Contains(err.Error(), "does not exist") || !strings.Contains(err.Error(), missing) {
		t.Fatalf("error %q should name the path and say that its directory does not exist", err)
	}
	if _, err := os.Stat(filepath.Dir(missing)); !os.IsNotExist(err) {
		t.Fatalf("the missing directory was created (stat: %v)", err)
	}

	path := filepath.Join(dir, "responder.db")
	s, err := Open(ctx, DriverSQLite, path)
	if err != nil {
		t.Fatal(err)
	}
	if !s.Created {
		t.Error("first open of a new file: Created = false")
	}
	s.Close()
	s, err = Open(ctx, DriverSQLite, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Created {
		t.Error("second open of the same file: Created = true")
	}
}

// TestRedoableTxRestoresFullSync checks that the connection is handed back
// flushing commits (synchronous=FULL, 2) after a redoable transaction,
// whether it committed or failed.
func TestRedoableTxRestoresFullSync(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, err := Open(ctx, DriverSQLite, filepath.Join(t.TempDir(), "r.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	syncLevel := func() int {
		var n int
		if err := s.DB.QueryRowContext(ctx, `PRAGMA synchronous`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := syncLevel(); n != 2 {
		t.Fatalf("synchronous = %d before, want 2 (FULL)", n)
	}
	var inside int
	if err := s.RedoableTx(ctx, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, `PRAGMA synchronous`).Scan(&inside)
	}); err != nil {
		t.Fatal(err)
	}
	if inside != 1 {
		t.Fatalf("synchronous = %d inside, want 1 (NORMAL)", inside)
	}
	if n := syncLevel(); n != 2 {
		t.Fatalf("synchronous = %d after a commit, want 2 (FULL)", n)
	}
	boom := errors.New("boom")
	if err := s.RedoableTx(ctx, func(*sql.Tx) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
	if n := syncLevel(); n != 2 {
		t.Fatalf("synchronous = %d after a rollback, want 2 (FULL)", n)
	}
}

// TestPostgresPoolKeepsItsConnections: connections released after a burst
// that used them all are kept for the next one, not closed and opened
// again (a PostgreSQL backend each).
func TestPostgresPoolKeepsItsConnections(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := openTestStore(t, DriverPostgres)
	for range 3 {
		var wg sync.WaitGroup
		conns := make([]*sql.Conn, postgresConns)
		for i := range conns {
			c, err := s.DB.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			conns[i] = c
		}
		for _, c := range conns {
			wg.Go(func() {
				if err := c.PingContext(ctx); err != nil {
					t.Error(err)
				}
				c.Close()
			})
		}
		wg.Wait()
	}
	if st := s.DB.Stats(); st.MaxIdleClosed != 0 || st.OpenConnections != postgresConns {
		t.Fatalf("after three bursts of %d connections: %d closed for the idle bound, %d open; want 0 closed, %d open",
			postgresConns, st.MaxIdleClosed, st.OpenConnections, postgresConns)
	}
}

// openTestStore opens a new store of driver (SQLite in a temporary
// directory; PostgreSQL in a database of its own, or the test is skipped),
// closed when the test ends.
func openTestStore(t testing.TB, driver string) *Store {
	t.Helper()
	dsn := filepath.Join(t.TempDir(), "responder.db")
	if driver == DriverPostgres {
		dsn = testkit.PostgresDSN(t)
	}
	st, err := Open(context.Background(), driver, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return st
}
