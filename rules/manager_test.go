package rules

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/responder-dev/responder/alert"
	"github.com/responder-dev/responder/metrics"
)

// testClock is a clock that moves one second per reading.
type testClock struct{ n atomic.Int64 }

func (c *testClock) now() time.Time { return time.Unix(1_700_000_000+c.n.Add(1), 0) }

// writeAtomic replaces path the way editors and Kubernetes do: a new file
// renamed over the old one, so a reader sees the old or the new content.
func writeAtomic(t testing.TB, path, content string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Error(err)
		return
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Error(err)
	}
}

type managerBundle struct {
	mg      *Manager
	metrics *metrics.Metrics
	logs    *observer.ObservedLogs
	path    string
}

func setupManager(t *testing.T, content string) *managerBundle {
	t.Helper()
	path := filepath.Join(t.TempDir(), "rules.yaml")
	writeFile(t, path, content)
	m := metrics.New(prometheus.NewRegistry())
	core, logs := observer.New(zapcore.DebugLevel)
	clock := &testClock{}
	mg, err := newManager([]string{path}, m, zap.New(core), clock.now)
	if err != nil {
		t.Fatal(err)
	}
	return &managerBundle{mg: mg, metrics: m, logs: logs, path: path}
}

const (
	rulesV1 = "rules:\n  - name: r1\n    when: 'true'\n  - name: r2\n    when: 'false'\n"
	rulesV2 = "rules:\n  - name: r1\n    when: 'true'\n  - name: r2\n    when: 'false'\n  - name: r3\n    when: 'false'\n"
	rulesXX = "rules:\n  - name: r1\n    when: alert.nope\n"
)

func TestManagerReloadMetrics(t *testing.T) {
	t.Parallel()
	b := setupManager(t, rulesV1)
	m := b.metrics
	check := func(step string, loaded, ok, ts float64) {
		t.Helper()
		if got := testutil.ToFloat64(m.RulesLoaded); got != loaded {
			t.Errorf("%s: rules_loaded = %v, want %v", step, got, loaded)
		}
		if got := testutil.ToFloat64(m.RulesReloadOK); got != ok {
			t.Errorf("%s: rules_last_reload_successful = %v, want %v", step, got, ok)
		}
		if got := testutil.ToFloat64(m.RulesReloadSuccess); got != ts {
			t.Errorf("%s: rules_last_reload_success_timestamp_seconds = %v, want %v", step, got, ts)
		}
	}
	check("initial load", 2, 1, 1_700_000_001)
	// Decision series of every rule (and of "none") exist at 0.
	if n := testutil.CollectAndCount(m.Decisions); n != 3*len(metrics.Decisions) {
		t.Fatalf("decision series = %d, want %d", n, 3*len(metrics.Decisions))
	}
	first := b.mg.Current()

	writeAtomic(t, b.path, rulesXX)
	err := b.mg.Reload()
	if err == nil || !strings.Contains(err.Error(), "rules.yaml:3:17: rules[0].when: unknown field alert.nope") {
		t.Fatalf("reload of an invalid file: err = %v", err)
	}
	check("invalid file", 2, 0, 1_700_000_001)
	if b.mg.Current() != first {
		t.Fatal("an invalid file replaced the rule set")
	}
	entries := b.logs.FilterMessage("rules reload failed; the previous rules stay in force").All()
	if len(entries) != 1 {
		t.Fatalf("logged %d reload failures, want 1", len(entries))
	}
	if p, ok := entries[0].ContextMap()["problems"].([]any); !ok || len(p) != 1 || !strings.Contains(p[0].(string), "unknown field alert.nope") {
		t.Fatalf("logged problems = %#v", entries[0].ContextMap()["problems"])
	}

	// Back to the content in force: nothing to swap, but a success.
	writeAtomic(t, b.path, rulesV1)
	if err := b.mg.Reload(); err != nil {
		t.Fatal(err)
	}
	check("unchanged file", 2, 1, 1_700_000_003)
	if b.mg.Current() != first {
		t.Fatal("an unchanged file replaced the rule set")
	}

	writeAtomic(t, b.path, rulesV2)
	if err := b.mg.Reload(); err != nil {
		t.Fatal(err)
	}
	check("new rules", 3, 1, 1_700_000_004)
	if b.mg.Current() == first || b.mg.Current().Len() != 3 {
		t.Fatal("the new rules were not swapped in")
	}
	if n := testutil.CollectAndCount(m.Decisions); n != 4*len(metrics.Decisions) {
		t.Fatalf("decision series = %d, want %d", n, 4*len(metrics.Decisions))
	}

	// A deleted file is a failed reload too.
	if err := os.Remove(b.path); err != nil {
		t.Fatal(err)
	}
	if err := b.mg.Reload(); err == nil || !strings.Contains(err.Error(), "cannot read the file") {
		t.Fatalf("reload of a missing file: err = %v", err)
	}
	check("missing file", 3, 0, 1_700_000_004)
}

func TestNewManagerFails(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "rules.yaml")
	writeFile(t, path, rulesXX)
	m := metrics.New(prometheus.NewRegistry())
	mg, err := NewManager([]string{path}, m, nil)
	if err == nil || mg != nil {
		t.Fatalf("NewManager = %v, %v; want an error", mg, err)
	}
	if testutil.ToFloat64(m.RulesReloadOK) != 0 {
		t.Fatal("rules_last_reload_successful is not 0 after a failed load")
	}
	if _, err := NewManager(nil, nil, nil); err == nil {
		t.Fatal("NewManager with no files succeeded")
	}
}

// reloadWaiter turns the manager's reload hook into a channel, so that a
// test waits for the watcher's reloads instead of sleeping.
func reloadWaiter(mg *Manager) <-chan struct{} {
	ch := make(chan struct{}, 1)
	mg.afterReload = func(bool, error) {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	return ch
}

// waitFor waits until cond holds, re-checking after every reload, for at
// most 10 seconds.
func waitFor(t *testing.T, reloaded <-chan struct{}, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for !cond() {
		select {
		case <-reloaded:
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func startRun(t *testing.T, mg *Manager) {
	t.Helper()
	ready := make(chan struct{})
	mg.watching = func() { close(ready) }
	mg.Debounce = 5 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mg.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run returned %v", err)
		}
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Run returned early: %v", err)
	}
}

func TestManagerRunReloadsOnWrite(t *testing.T) {
	t.Parallel()
	b := setupManager(t, rulesV1)
	reloaded := reloadWaiter(b.mg)
	startRun(t, b.mg)
	writeAtomic(t, b.path, rulesV2)
	waitFor(t, reloaded, "the watcher to load 3 rules", func() bool { return b.mg.Current().Len() == 3 })
	// The reload line says who made it.
	lines := b.logs.FilterMessage("rules reloaded").All()
	if len(lines) == 0 || lines[0].ContextMap()["by"] != ByFileWatcher {
		t.Fatalf("reload lines %v, want by %q", lines, ByFileWatcher)
	}
}

// TestManagerReloadBy: each outcome of a reload is logged with who asked
// and the fields given (the admin API's remote_addr).
func TestManagerReloadBy(t *testing.T) {
	t.Parallel()
	b := setupManager(t, rulesV1)
	peer := zap.String("remote_addr", "192.0.2.10:5555")
	for _, step := range []struct {
		content, by, msg string
		fields           []zap.Field
	}{
		{rulesV1, BySignal, "rules unchanged", nil},
		{rulesV2, "admin", "rules reloaded", []zap.Field{peer}},
		{rulesXX, "admin", "rules reload failed; the previous rules stay in force", []zap.Field{peer}},
	} {
		writeAtomic(t, b.path, step.content)
		_ = b.mg.ReloadBy(step.by, step.fields...)
		lines := b.logs.FilterMessage(step.msg).All()
		if len(lines) != 1 {
			t.Fatalf("%d lines %q, want 1", len(lines), step.msg)
		}
		ctx := lines[0].ContextMap()
		if ctx["by"] != step.by || (step.fields != nil) != (ctx["remote_addr"] == "192.0.2.10:5555") {
			t.Fatalf("%q logged with %v, want by %q", step.msg, ctx, step.by)
		}
	}
}

// TestManagerRunConfigMapSwap replays how the kubelet updates a ConfigMap
// volume: the files are symlinks through ..data, which is swapped to a new
// timestamped directory by a rename.
func TestManagerRunConfigMapSwap(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	mkVersion := func(name, content string) {
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, name, "rules.yaml"), content)
	}
	mkVersion("..2024_01_01_00_00_00.1", rulesV1)
	if err := os.Symlink("..2024_01_01_00_00_00.1", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "rules.yaml")
	if err := os.Symlink(filepath.Join("..data", "rules.yaml"), path); err != nil {
		t.Fatal(err)
	}
	mg, err := NewManager([]string{path}, metrics.New(prometheus.NewRegistry()), nil)
	if err != nil {
		t.Fatal(err)
	}
	reloaded := reloadWaiter(mg)
	startRun(t, mg)

	mkVersion("..2024_01_01_00_05_00.2", rulesV2)
	if err := os.Symlink("..2024_01_01_00_05_00.2", filepath.Join(dir, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(dir, "..2024_01_01_00_00_00.1")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, reloaded, "the ConfigMap swap to load 3 rules", func() bool { return mg.Current().Len() == 3 })
}

// Two rule files in two versions. Mixing the files of two versions gives a
// duplicate rule name, so only whole versions are valid; the invalid version
// fails in both files.
func versionFiles(v string) (string, string) {
	rule := func(name, when string) string {
		return fmt.Sprintf("  - name: %s\n    description: version %s\n    when: %s\n    comment: 'version %s {{ .Rule.Name }}'\n", name, v, when, v)
	}
	switch v {
	case "A":
		return "rules:\n" + rule("a-dc", `'"domain-controller" in machine.tags'`) + rule("shared-1a-2b", `alert.severity == "high"`),
			"rules:\n" + rule("shared-1b-2a", `'true'`)
	case "B":
		return "rules:\n" + rule("shared-1b-2a", `alert.severity == "high"`) + rule("b-extra", `alert.category == "Malware"`),
			"rules:\n" + rule("shared-1a-2b", `'true'`) + rule("b-last", `'false'`)
	}
	return "rules:\n  - name: broken\n    when: alert.severty == \"high\"\n", "rules: [{name: broken2, when: 'true', actoin: ignore}]\n"
}

// TestManagerConcurrentReload evaluates from several goroutines while the
// rule files are rewritten with valid and invalid versions and reloaded by
// Reload and by the watcher: every set seen must be a whole valid version.
func TestManagerConcurrentReload(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	f1, f2 := filepath.Join(dir, "10-rules.yaml"), filepath.Join(dir, "20-rules.yaml")
	a1, a2 := versionFiles("A")
	writeFile(t, f1, a1)
	writeFile(t, f2, a2)
	mg, err := NewManager([]string{f1, f2}, metrics.New(prometheus.NewRegistry()), nil)
	if err != nil {
		t.Fatal(err)
	}
	reloaded := reloadWaiter(mg)
	startRun(t, mg)

	wantLen := map[string]int{"A": 3, "B": 4}
	// checkSet verifies one snapshot and one decision taken on it.
	checkSet := func(s *Set, d Match) error {
		infos := s.Rules()
		v := strings.TrimPrefix(infos[0].Description, "version ")
		if wantLen[v] != len(infos) {
			return fmt.Errorf("set of version %q has %d rules", v, len(infos))
		}
		for _, ri := range infos {
			if ri.Description != "version "+v {
				return fmt.Errorf("set mixes versions: %+v", infos)
			}
		}
		if !d.Matched || !strings.HasPrefix(d.Comment, "version "+v+" ") {
			return fmt.Errorf("decision %+v on a set of version %s", d, v)
		}
		return nil
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var evaluations, seenB atomic.Int64
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a := testAlert()
			m := &alert.Machine{ID: testMachineID}
			if g%2 == 0 {
				m.Tags = []string{"domain-controller"}
			}
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				s := mg.Current()
				if err := checkSet(s, s.Evaluate(a, m)); err != nil {
					t.Error(err)
					return
				}
				evaluations.Add(1)
				if s.Len() == wantLen["B"] {
					seenB.Add(1)
				}
				runtime.Gosched()
			}
		}()
	}

	versions := []string{"A", "invalid", "B", "invalid"}
	for i := range 100 {
		v := versions[i%len(versions)]
		c1, c2 := versionFiles(v)
		writeAtomic(t, f1, c1)
		if i%3 == 0 {
			_ = mg.Reload() // half-written: must fail (or find nothing new)
		}
		writeAtomic(t, f2, c2)
		err := mg.Reload()
		if (v == "invalid") != (err != nil) {
			t.Errorf("step %d: reload of version %s: err = %v", i, v, err)
		}
		if cur := strings.TrimPrefix(mg.Current().Rules()[0].Description, "version "); v != "invalid" && cur != v {
			t.Errorf("step %d: version in force is %s, want %s", i, cur, v)
		}
	}
	// Last, a change only the watcher is told about.
	b1, b2 := versionFiles("B")
	writeAtomic(t, f1, b1)
	writeAtomic(t, f2, b2)
	waitFor(t, reloaded, "the watcher to load version B", func() bool {
		return mg.Current().Rules()[0].Description == "version B"
	})
	close(stop)
	wg.Wait()
	if evaluations.Load() == 0 {
		t.Fatal("no evaluation ran")
	}
	t.Logf("%d evaluations, %d on version B", evaluations.Load(), seenB.Load())
}
