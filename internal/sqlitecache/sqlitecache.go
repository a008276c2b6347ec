// Package sqlitecache opens SQLite (modernc.org/sqlite) connections that
// keep their prepared statements, keyed by SQL text, for reuse.
//
// Why: database/sql prepares a statement for every Query and Exec that does
// not go through an explicit *sql.Stmt, and River's SQLite driver (like most
// code) queries with SQL text. Parsing a statement costs more than running
// it for the short statements a job queue runs: profiles of the responder
// under load spent a quarter of its CPU in SQLite's parser. A connection of
// this package parses each distinct statement once and resets it between
// uses, as a hand-written *sql.Stmt would.
//
// Scripts (several statements in one string) are not cached; a statement
// already in use on the connection (rows still open) is not shared: the
// query then runs on a one-off statement, as without the cache.
package sqlitecache

import (
	"container/list"
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"reflect"
	"strings"

	"modernc.org/sqlite"
)

// DefaultSize bounds the statements kept per connection.
const DefaultSize = 256

// Open returns a database whose connections cache their statements. dsn is
// as for modernc.org/sqlite's "sqlite" driver.
func Open(dsn string, size int) *sql.DB {
	if size <= 0 {
		size = DefaultSize
	}
	return sql.OpenDB(&connector{dsn: dsn, size: size, drv: &sqlite.Driver{}})
}

type connector struct {
	dsn  string
	size int
	drv  driver.Driver
}

func (c *connector) Connect(context.Context) (driver.Conn, error) {
	conn, err := c.drv.Open(c.dsn)
	if err != nil {
		return nil, err
	}
	inner, ok := conn.(innerConn)
	if !ok {
		_ = conn.Close()
		return nil, errors.New("sqlitecache: the sqlite driver's connection lacks context methods")
	}
	return &Conn{inner: inner, size: c.size, stmts: map[string]*cached{}, lru: list.New()}, nil
}

func (c *connector) Driver() driver.Driver { return c.drv }

// innerConn is what the wrapped connection provides.
type innerConn interface {
	driver.Conn
	driver.ConnBeginTx
	driver.ConnPrepareContext
	driver.ExecerContext
	driver.QueryerContext
}

type ctxStmt interface {
	driver.Stmt
	driver.StmtExecContext
	driver.StmtQueryContext
}

// Conn is one cached connection. database/sql uses a connection from one
// goroutine at a time, so it needs no lock.
type Conn struct {
	inner innerConn
	size  int
	stmts map[string]*cached
	lru   *list.List // of *cached, most recently used first

	hits, misses int
}

type cached struct {
	query string
	stmt  ctxStmt
	busy  bool // rows are open on it
	elem  *list.Element
	evict bool // close when released
}

// Stats reports cache hits and misses (tests).
func (c *Conn) Stats() (hits, misses int) { return c.hits, c.misses }

// take returns the cached statement for query, preparing it if needed; nil
// when the query is not cacheable or its statement is busy.
func (c *Conn) take(ctx context.Context, query string) (*cached, error) {
	if strings.Contains(strings.TrimRight(strings.TrimSpace(query), ";"), ";") {
		return nil, nil // a script
	}
	if e, ok := c.stmts[query]; ok {
		if e.busy {
			return nil, nil
		}
		c.hits++
		c.lru.MoveToFront(e.elem)
		e.busy = true
		return e, nil
	}
	c.misses++
	st, err := c.inner.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	cs, ok := st.(ctxStmt)
	if !ok {
		_ = st.Close()
		return nil, nil
	}
	e := &cached{query: query, stmt: cs, busy: true}
	e.elem = c.lru.PushFront(e)
	c.stmts[query] = e
	for c.lru.Len() > c.size {
		old := c.lru.Back().Value.(*cached)
		c.drop(old)
	}
	return e, nil
}

// drop removes e from the cache; it is closed now, or when released.
func (c *Conn) drop(e *cached) {
	if e.elem == nil {
		return
	}
	c.lru.Remove(e.elem)
	e.elem = nil
	delete(c.stmts, e.query)
	if e.busy {
		e.evict = true
		return
	}
	_ = e.stmt.Close()
}

// release makes e available again; after an error it is dropped, since a
// failed statement's state is not worth reasoning about.
func (c *Conn) release(e *cached, failed bool) {
	e.busy = false
	if failed {
		c.drop(e)
	}
	if e.evict || failed {
		_ = e.stmt.Close()
	}
}

// QueryContext runs query on its cached statement.
func (c *Conn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	e, err := c.take(ctx, query)
	if err != nil {
		return nil, err
	}
	if e == nil {
		return c.inner.QueryContext(ctx, query, args)
	}
	rows, err := e.stmt.QueryContext(ctx, args)
	if err != nil {
		c.release(e, true)
		return nil, err
	}
	return &cachedRows{Rows: rows, c: c, e: e}, nil
}

// ExecContext runs query on its cached statement.
func (c *Conn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	e, err := c.take(ctx, query)
	if err != nil {
		return nil, err
	}
	if e == nil {
		return c.inner.ExecContext(ctx, query, args)
	}
	res, err := e.stmt.ExecContext(ctx, args)
	c.release(e, err != nil)
	return res, err
}

// Close closes every cached statement, then the connection.
func (c *Conn) Close() error {
	for _, e := range c.stmts {
		_ = e.stmt.Close()
	}
	c.stmts, c.lru = nil, list.New()
	return c.inner.Close()
}

func (c *Conn) Prepare(query string) (driver.Stmt, error) { return c.inner.Prepare(query) }

func (c *Conn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	return c.inner.PrepareContext(ctx, query)
}

//nolint:staticcheck // driver.Conn requires Begin.
func (c *Conn) Begin() (driver.Tx, error) { return c.inner.Begin() }

func (c *Conn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	return c.inner.BeginTx(ctx, opts)
}

func (c *Conn) Ping(ctx context.Context) error {
	if p, ok := c.inner.(driver.Pinger); ok {
		return p.Ping(ctx)
	}
	return nil
}

func (c *Conn) ResetSession(ctx context.Context) error {
	if r, ok := c.inner.(driver.SessionResetter); ok {
		return r.ResetSession(ctx)
	}
	return nil
}

func (c *Conn) IsValid() bool {
	if v, ok := c.inner.(driver.Validator); ok {
		return v.IsValid()
	}
	return true
}

// cachedRows releases its statement when closed.
type cachedRows struct {
	driver.Rows
	c      *Conn
	e      *cached
	closed bool
}

func (r *cachedRows) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	err := r.Rows.Close() // resets the statement for reuse
	r.c.release(r.e, err != nil)
	return err
}

// The column type interfaces of the wrapped rows, for sql.Rows.ColumnTypes.

func (r *cachedRows) ColumnTypeDatabaseTypeName(i int) string {
	if t, ok := r.Rows.(driver.RowsColumnTypeDatabaseTypeName); ok {
		return t.ColumnTypeDatabaseTypeName(i)
	}
	return ""
}

func (r *cachedRows) ColumnTypeLength(i int) (int64, bool) {
	if t, ok := r.Rows.(driver.RowsColumnTypeLength); ok {
		return t.ColumnTypeLength(i)
	}
	return 0, false
}

func (r *cachedRows) ColumnTypeNullable(i int) (bool, bool) {
	if t, ok := r.Rows.(driver.RowsColumnTypeNullable); ok {
		return t.ColumnTypeNullable(i)
	}
	return false, false
}

func (r *cachedRows) ColumnTypePrecisionScale(i int) (int64, int64, bool) {
	if t, ok := r.Rows.(driver.RowsColumnTypePrecisionScale); ok {
		return t.ColumnTypePrecisionScale(i)
	}
	return 0, 0, false
}

func (r *cachedRows) ColumnTypeScanType(i int) reflect.Type {
	if t, ok := r.Rows.(driver.RowsColumnTypeScanType); ok {
		return t.ColumnTypeScanType(i)
	}
	return reflect.TypeFor[any]()
}
