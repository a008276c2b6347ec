package testkit

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
)

// PostgresEnv names the variable holding the DSN of the PostgreSQL server
// the tests use; DefaultPostgresDSN applies when it is unset.
const (
	PostgresEnv        = "RESPONDER_TEST_POSTGRES_DSN"
	DefaultPostgresDSN = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
)

// postgresTimeout bounds each statement the helper runs on the server.
const postgresTimeout = 30 * time.Second

// PostgresDSN creates a database of its own for one test on the server of
// RESPONDER_TEST_POSTGRES_DSN and returns its DSN; t.Cleanup drops it. When
// the server cannot be reached, t ends through Skip.
func PostgresDSN(t testing.TB) string {
	t.Helper()
	base := os.Getenv(PostgresEnv)
	if base == "" {
		base = DefaultPostgresDSN
	}
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("%s: %v", PostgresEnv, err)
	}
	admin, err := sql.Open("pgx", base)
	if err != nil {
		t.Fatalf("%s: %v", PostgresEnv, err)
	}
	defer admin.Close()
	ctx, cancel := context.WithTimeout(context.Background(), postgresTimeout)
	defer cancel()
	if err := admin.PingContext(ctx); err != nil {
		Skip(t, "PostgreSQL at %s (%s) does not answer: %v", u.Redacted(), PostgresEnv, err)
	}
	name := fmt.Sprintf("responder_test_%d_%d", time.Now().UnixNano(), rand.IntN(1e6))
	if _, err := admin.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("creating the test database on %s: %v", u.Redacted(), err)
	}
	t.Cleanup(func() {
		admin, err := sql.Open("pgx", base)
		if err != nil {
			t.Errorf("dropping the test database %s: %v", name, err)
			return
		}
		defer admin.Close()
		ctx, cancel := context.WithTimeout(context.Background(), postgresTimeout)
		defer cancel()
		if _, err := admin.ExecContext(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("dropping the test database %s: %v", name, err)
		}
	})
	u.Path = "/" + name
	return u.String()
}

// PostgresDigest returns, for each table of the database at dsn (those of
// its current schema), its row count and a digest of its rows: equal
// digests before and after a command show that it wrote nothing.
func PostgresDigest(t testing.TB, dsn string) map[string]string {
	t.Helper()
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatalf("PostgreSQL digest: %v", err)
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), postgresTimeout)
	defer cancel()
	rows, err := db.QueryContext(ctx, `SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY table_name`)
	if err != nil {
		t.Fatalf("PostgreSQL digest: listing the tables: %v", err)
	}
	var tables []string
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			t.Fatalf("PostgreSQL digest: %v", err)
		}
		tables = append(tables, name)
	}
	if err := rows.Close(); err != nil {
		t.Fatalf("PostgreSQL digest: %v", err)
	}
	out := make(map[string]string, len(tables))
	for _, table := range tables {
		var n int64
		var sum sql.NullString
		// Rows ordered by their text, so that the digest does not depend
		// on the order a scan returns them in.
		q := `SELECT COUNT(*), md5(string_agg(r::text, E'\n' ORDER BY r::text)) FROM ` + quoteIdent(table) + ` r`
		if err := db.QueryRowContext(ctx, q).Scan(&n, &sum); err != nil {
			t.Fatalf("PostgreSQL digest of %s: %v", table, err)
		}
		out[table] = fmt.Sprintf("%d rows, md5 %s", n, sum.String)
	}
	return out
}

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }
