package testkit

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
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
