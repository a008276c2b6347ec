package sqlitecache

import (
	"context"
	"database/sql"
	"path/filepath"
	"strings"
	"testing"
)

func open(t *testing.T, size int) (*sql.DB, *sql.Conn, *Conn) {
	t.Helper()
	db := Open("file:"+filepath.Join(t.TempDir(), "t.db")+"?_pragma=journal_mode(WAL)", size)
	t.Cleanup(func() { _ = db.Close() })
	db.SetMaxOpenConns(1)
	conn, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	var raw *Conn
	if err := conn.Raw(func(c any) error { raw = c.(*Conn); return nil }); err != nil {
		t.Fatal(err)
	}
	return db, conn, raw
}

func TestStatementsAreReused(t *testing.T) {
	ctx := context.Background()
	_, conn, raw := open(t, 8)
	// A script is run as such and not cached.
	if _, err := conn.ExecContext(ctx, `CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); CREATE INDEX t_v ON t (v);`); err != nil {
		t.Fatal(err)
	}
	if h, m := raw.Stats(); h != 0 || m != 0 {
		t.Fatalf("script: hits %d misses %d, want none", h, m)
	}
	for i := range 5 {
		if _, err := conn.ExecContext(ctx, `INSERT INTO t (v) VALUES (?)`, strings.Repeat("x", i)); err != nil {
			t.Fatal(err)
		}
	}
	if h, m := raw.Stats(); h != 4 || m != 1 {
		t.Fatalf("inserts: hits %d misses %d, want 4 and 1", h, m)
	}
	// Each query sees its own arguments: bindings do not leak between uses.
	for i := range 5 {
		var n int
		if err := conn.QueryRowContext(ctx, `SELECT COUNT(*) FROM t WHERE length(v) >= ?`, i).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 5-i {
			t.Fatalf("count for %d = %d, want %d", i, n, 5-i)
		}
	}
	if h, m := raw.Stats(); h != 8 || m != 2 {
		t.Fatalf("queries: hits %d misses %d, want 8 and 2", h, m)
	}
}

func TestBusyStatementIsNotShared(t *testing.T) {
	ctx := context.Background()
	_, conn, _ := open(t, 8)
	if _, err := conn.ExecContext(ctx, `CREATE TABLE t (id INTEGER PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := conn.ExecContext(ctx, `INSERT INTO t DEFAULT VALUES`); err != nil {
			t.Fatal(err)
		}
	}
	// The same query nested in its own iteration (one connection, as in a
	// transaction): the inner one must not reset the outer one's statement.
	const q = `SELECT id FROM t ORDER BY id`
	outer, err := conn.QueryContext(ctx, q)
	if err != nil {
		t.Fatal(err)
	}
	var got []int
	for outer.Next() {
		var id int
		if err := outer.Scan(&id); err != nil {
			t.Fatal(err)
		}
		inner, err := conn.QueryContext(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		var n int
		for inner.Next() {
			n++
		}
		if err := inner.Close(); err != nil {
			t.Fatal(err)
		}
		if n != 3 {
			t.Fatalf("inner saw %d rows", n)
		}
		got = append(got, id)
	}
	if err := outer.Err(); err != nil {
		t.Fatal(err)
	}
	_ = outer.Close()
	if len(got) != 3 || got[0] != 1 || got[2] != 3 {
		t.Fatalf("outer rows = %v", got)
	}
}

func TestEvictionAndErrors(t *testing.T) {
	ctx := context.Background()
	_, conn, raw := open(t, 2)
	if _, err := conn.ExecContext(ctx, `CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)`); err != nil {
		t.Fatal(err)
	}
	queries := []string{`SELECT 1`, `SELECT 2`, `SELECT 3`, `SELECT 1`}
	for _, q := range queries {
		var n int
		if err := conn.QueryRowContext(ctx, q).Scan(&n); err != nil {
			t.Fatal(err)
		}
	}
	if len(raw.stmts) != 2 || raw.lru.Len() != 2 {
		t.Fatalf("cache holds %d statements (%d in order), want 2", len(raw.stmts), raw.lru.Len())
	}
	if _, ok := raw.stmts[`SELECT 2`]; ok {
		t.Fatal("the least recently used statement was kept")
	}
	// A failing statement is dropped, and the next use works.
	const ins = `INSERT INTO t (v) VALUES (?)`
	if _, err := conn.ExecContext(ctx, ins, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(ctx, ins, "a"); err == nil || !strings.Contains(err.Error(), "UNIQUE") {
		t.Fatalf("duplicate insert: %v", err)
	}
	if _, ok := raw.stmts[ins]; ok {
		t.Fatal("a failed statement stayed cached")
	}
	if _, err := conn.ExecContext(ctx, ins, "b"); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := conn.QueryRowContext(ctx, `SELECT COUNT(*) FROM t`).Scan(&n); err != nil || n != 2 {
		t.Fatalf("rows = %d, %v", n, err)
	}
}

func TestTransactionsAndPreparedStatements(t *testing.T) {
	ctx := context.Background()
	db, conn, _ := open(t, 8)
	if _, err := conn.ExecContext(ctx, `CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)`); err != nil {
		t.Fatal(err)
	}
	_ = conn.Close() // back to the pool
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO t (v) VALUES (?)`, "rolled back"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	st, err := db.PrepareContext(ctx, `INSERT INTO t (v) VALUES (?)`)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.ExecContext(ctx, "kept"); err != nil {
		t.Fatal(err)
	}
	var vs []string
	rows, err := db.QueryContext(ctx, `SELECT v FROM t`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			t.Fatal(err)
		}
		vs = append(vs, v)
	}
	_ = rows.Close()
	if len(vs) != 1 || vs[0] != "kept" {
		t.Fatalf("rows = %v", vs)
	}
}
