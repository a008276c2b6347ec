package testkit

import (
	"database/sql"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeTB records how a helper ended t. Like testing's, its Skip and Fatal
// end the goroutine, so run calls the helper on a goroutine of its own.
type fakeTB struct {
	testing.TB // unimplemented methods panic
	mu         sync.Mutex
	skipped    string
	failed     string
	cleanups   []func()
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Skip(args ...any) {
	f.mu.Lock()
	f.skipped = fmt.Sprint(args...)
	f.mu.Unlock()
	runtime.Goexit()
}

func (f *fakeTB) Fatalf(format string, args ...any) {
	f.mu.Lock()
	f.failed = fmt.Sprintf(format, args...)
	f.mu.Unlock()
	runtime.Goexit()
}

func (f *fakeTB) Cleanup(fn func()) { f.cleanups = append(f.cleanups, fn) }

func run(helper func(testing.TB)) *fakeTB {
	f := &fakeTB{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		helper(f)
	}()
	<-done
	for i := len(f.cleanups) - 1; i >= 0; i-- {
		f.cleanups[i]()
	}
	return f
}

func TestSkip(t *testing.T) {
	cases := []struct {
		name, ci           string
		wantSkip, wantFail string
	}{
		{name: "outside CI it skips with the reason", ci: "", wantSkip: "cannot run: promtool is missing"},
		{name: "under .ci/run it fails with the reason", ci: "1", wantFail: "cannot run: promtool is missing (RESPONDER_CI=1: CI must run every test)"},
		{name: "another value is not CI", ci: "true", wantSkip: "cannot run: promtool is missing"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(CIEnv, tc.ci)
			f := run(func(tb testing.TB) { Skip(tb, "%s is missing", "promtool") })
			if f.skipped != tc.wantSkip || f.failed != tc.wantFail {
				t.Fatalf("skipped %q, failed %q; want skipped %q, failed %q", f.skipped, f.failed, tc.wantSkip, tc.wantFail)
			}
		})
	}
}

func TestLookPath(t *testing.T) {
	t.Setenv(CIEnv, "")
	t.Setenv("PATH", t.TempDir())
	f := run(func(tb testing.TB) { LookPath(tb, "promtool", "apt-get install prometheus") })
	if want := "cannot run: promtool is not in PATH (apt-get install prometheus)"; f.skipped != want {
		t.Fatalf("skipped %q, want %q (failed %q)", f.skipped, want, f.failed)
	}
	var got string
	f = run(func(tb testing.TB) { got = LookPath(tb, "go", "") })
	if f.skipped == "" || got != "" {
		t.Fatalf("go found in an empty PATH: %q", got)
	}
}

func TestWaitFor(t *testing.T) {
	t.Parallel()
	n := 0
	f := run(func(tb testing.TB) {
		WaitUntil(tb, 10*time.Second, "the third poll", func() bool { n++; return n == 3 })
	})
	if f.failed != "" || n != 3 {
		t.Fatalf("failed %q after %d polls", f.failed, n)
	}
	start := time.Now()
	f = run(func(tb testing.TB) {
		WaitFor(tb, 50*time.Millisecond, "never", func() (bool, string) { return false, "state 7" })
	})
	if want := "timed out after 50ms waiting for never; last seen: state 7"; f.failed != want {
		t.Fatalf("failed %q, want %q", f.failed, want)
	}
	if waited := time.Since(start); waited < 50*time.Millisecond || waited > 5*time.Second {
		t.Fatalf("waited %s for a 50ms timeout", waited)
	}
}

func TestFakeClock(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)
	c := NewFakeClock(t0)
	if got := <-c.After(0); !got.Equal(t0) {
		t.Fatalf("After(0) = %v", got)
	}
	a := c.After(time.Minute)
	b := c.After(time.Hour)
	select {
	case <-c.Changed():
	default:
		t.Fatal("Changed not signalled after After")
	}
	if c.Waiters() != 2 {
		t.Fatalf("Waiters = %d, want 2", c.Waiters())
	}
	c.Advance(59 * time.Second)
	select {
	case <-a:
		t.Fatal("fired a second early")
	default:
	}
	if !c.AdvanceToNext() || !c.Now().Equal(t0.Add(time.Minute)) {
		t.Fatalf("AdvanceToNext moved to %v", c.Now())
	}
	if got := <-a; !got.Equal(t0.Add(time.Minute)) {
		t.Fatalf("a fired with %v", got)
	}
	c.Set(t0) // never backwards
	if !c.Now().Equal(t0.Add(time.Minute)) {
		t.Fatalf("Set moved the clock back to %v", c.Now())
	}
	c.Set(t0.Add(2 * time.Hour))
	if got := <-b; !got.Equal(t0.Add(2 * time.Hour)) {
		t.Fatalf("b fired with %v", got)
	}
	if c.AdvanceToNext() {
		t.Fatal("AdvanceToNext with nobody waiting")
	}
}

func TestPostgresDSN(t *testing.T) {
	dsn := PostgresDSN(t) // skips (or fails under .ci/run) without a server
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var name string
	if err := db.QueryRowContext(t.Context(), "SELECT current_database()").Scan(&name); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(name, "responder_test_") {
		t.Fatalf("connected to %q, want a database of the test's own", name)
	}
}

func TestPostgresDSNUnreachable(t *testing.T) {
	t.Setenv(CIEnv, "")
	t.Setenv(PostgresEnv, "postgres://postgres@127.0.0.1:1/test?sslmode=disable&connect_timeout=5")
	f := run(func(tb testing.TB) { PostgresDSN(tb) })
	if !strings.HasPrefix(f.skipped, "cannot run: PostgreSQL at postgres://postgres@127.0.0.1:1/test") || f.failed != "" {
		t.Fatalf("skipped %q, failed %q; want a skip naming the server", f.skipped, f.failed)
	}
	t.Setenv(CIEnv, "1")
	f = run(func(tb testing.TB) { PostgresDSN(tb) })
	if !strings.Contains(f.failed, "does not answer") || f.skipped != "" {
		t.Fatalf("under CI: skipped %q, failed %q; want a failure", f.skipped, f.failed)
	}
}

func TestModuleRoot(t *testing.T) {
	t.Parallel()
	root, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(root, "go.mod")); err != nil || !strings.HasPrefix(string(b), "module github.com/responder-dev/responder\n") {
		t.Fatalf("%s/go.mod: %v %.40q", root, err, b)
	}
}

// TestSkipsGoThroughTestkit: every test of the module skips through Skip
// (or LookPath, PostgresDSN), never t.Skip directly, so that .ci/run, which
// sets RESPONDER_CI=1, fails rather than passes when a test could not run.
func TestSkipsGoThroughTestkit(t *testing.T) {
	t.Parallel()
	root, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	self, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	var bad []string
	checked := 0
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p != root && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" || p == self) {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(p, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, p, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		checked++
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			switch sel.Sel.Name {
			case "Skip", "Skipf", "SkipNow":
				if x, ok := sel.X.(*ast.Ident); !ok || x.Name != "testkit" {
					rel, _ := filepath.Rel(root, p)
					bad = append(bad, fmt.Sprintf("%s:%d", rel, fset.Position(call.Pos()).Line))
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 50 {
		t.Fatalf("only %d test files found under %s", checked, root)
	}
	for _, b := range bad {
		t.Errorf("%s: skips directly; use testkit.Skip, which fails under .ci/run", b)
	}
}
