package pipeline

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/responder-dev/responder/audit"
	"github.com/responder-dev/responder/defender"
	"github.com/responder-dev/responder/defender/defendertest"
)

func quotaRows(t *testing.T, s *Store, group string) int {
	t.Helper()
	var n int
	if err := s.DB.QueryRow(`SELECT COUNT(*) FROM responder_quota WHERE grp = $1`, group).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestLocalLimiterRecordsEachCallBeforeItIsMade: on SQLite each admitted
// call is in the store when Wait returns, so a process killed right after
// its calls (no stop, no save) leaves them to the next one.
func TestLocalLimiterRecordsEachCallBeforeItIsMade(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "r.db")
	store, err := OpenStore(ctx, DriverSQLite, path)
	if err != nil {
		t.Fatal(err)
	}
	l, err := NewLocalLimiter(ctx, store, "machines", 3, 100, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 3; i++ {
		if _, err := l.Wait(ctx); err != nil {
			t.Fatal(err)
		}
		if n := quotaRows(t, store, "machines"); n != i {
			t.Fatalf("after call %d the store holds %d calls", i, n)
		}
	}
	store.Close() // the process dies: nothing else runs

	store, err = OpenStore(ctx, DriverSQLite, path)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	second, err := NewLocalLimiter(ctx, store, "machines", 3, 100, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := second.Wait(wctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a fourth call within the minute was admitted after the restart (err %v)", err)
	}
	if n := quotaRows(t, store, "machines"); n != 3 {
		t.Fatalf("a refused call was recorded: %d calls", n)
	}
	// Another group has its own quota.
	other, err := NewLocalLimiter(ctx, store, "actions", 3, 100, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Wait(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestLocalLimiterUpgradesSavedWindows: the windows that earlier versions
// saved every few seconds are read once and kept as rows.
func TestLocalLimiterUpgradesSavedWindows(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store, err := OpenStore(ctx, DriverSQLite, filepath.Join(t.TempDir(), "r.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	now := time.Now().UnixMilli()
	saved := fmt.Sprintf("[%d,%d]", now-2000, now-1000)
	if _, err := store.DB.Exec(`INSERT INTO responder_setting (name, value, updated_at) VALUES ('quota_calls:machines', $1, 0)`, saved); err != nil {
		t.Fatal(err)
	}
	l, err := NewLocalLimiter(ctx, store, "machines", 2, 100, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := l.Wait(wctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the saved calls were forgotten (err %v)", err)
	}
	if n := quotaRows(t, store, "machines"); n != 2 {
		t.Fatalf("%d calls kept as rows, want 2", n)
	}
}

// TestLocalLimiterThrottle: a throttle holds back the calls of the process
// and of the next one within it.
func TestLocalLimiterThrottle(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "r.db")
	store, err := OpenStore(ctx, DriverSQLite, path)
	if err != nil {
		t.Fatal(err)
	}
	l, err := NewLocalLimiter(ctx, store, "actions", 100, 1500, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	until := time.Now().Add(200 * time.Millisecond)
	l.Throttle(until)
	if _, err := l.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if now := time.Now(); now.Before(until) {
		t.Fatalf("admitted %s before the throttle ended", until.Sub(now))
	}
	l.Throttle(time.Now().Add(time.Hour))
	store.Close()

	store, err = OpenStore(ctx, DriverSQLite, path)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	second, err := NewLocalLimiter(ctx, store, "actions", 100, 1500, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := second.Wait(wctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the throttle was forgotten by the restart (err %v)", err)
	}
	// An earlier throttle does not shorten a later one.
	second.Throttle(time.Now())
	if until, err := throttledUntil(ctx, store.DB, "actions"); err != nil || time.Until(time.UnixMilli(until)) < 50*time.Minute {
		t.Fatalf("throttle until %v (err %v)", time.UnixMilli(until), err)
	}
}

// TestSharedLimiterThrottleHoldsEveryReplica: on PostgreSQL a 429 seen by
// one replica holds back the group on every replica.
func TestSharedLimiterThrottleHoldsEveryReplica(t *testing.T) {
	t.Parallel()
	dsn := postgresDSN(t)
	ctx := context.Background()
	var limiters []*SharedLimiter
	for range 2 {
		store, err := OpenStore(ctx, DriverPostgres, dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(store.Close)
		limiters = append(limiters, NewSharedLimiter(store, "actions", 100, 1500))
	}
	if w, err := limiters[1].try(ctx); err != nil || w != 0 {
		t.Fatalf("before the throttle: wait %v err %v", w, err)
	}
	limiters[0].Throttle(time.Now().Add(30 * time.Second))
	w, err := limiters[1].try(ctx)
	if err != nil || w < 29*time.Second || w > 30*time.Second {
		t.Fatalf("the other replica: wait %v err %v, want about 30s", w, err)
	}
	if n := quotaRows(t, limiters[1].store, "actions"); n != 1 {
		t.Fatalf("a held-back call was recorded: %d calls", n)
	}
}

// TestRateLimitHoldsBackTheGroup: when Defender answers one collection 429
// with Retry-After, no other collection is sent before it has passed (they
// would all get 429: MDE counts per application), and every one is sent
// after it.
func TestRateLimitHoldsBackTheGroup(t *testing.T) {
	t.Parallel()
	const n = 8
	ms := make([]defendertest.Machine, n)
	for i := range ms {
		ms[i] = defendertest.Machine{ID: fmt.Sprintf("%040x", 0x429000+i), ComputerDNSName: fmt.Sprintf("t-%d.example.com", i), HealthStatus: "Active"}
	}
	sim := newSim(t, defendertest.Options{Machines: ms, PendingFor: time.Hour})
	sim.InjectFault(defendertest.Fault{Method: "POST", PathContains: "collectInvestigationPackage", Status: 429, RetryAfter: 2, Times: 1})
	e := setup(t, envOpts{sim: sim, noStart: true, cfg: Config{MaxCollectionsPerHour: 1000, MaxMachinesPer10m: 1000}})
	l, err := NewLocalLimiter(context.Background(), e.store, "actions", 100, 1500, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	e.p.quota = l
	e.start()
	collects := func() []defendertest.Request {
		var out []defendertest.Request
		for _, r := range sim.Requests() {
			if r.Method == "POST" && strings.HasSuffix(r.Path, "/collectInvestigationPackage") {
				out = append(out, r)
			}
		}
		return out
	}
	// One alert first, so that its POST gets the 429; then the others.
	e.submit(mdeAlert("t-0", ms[0].ID, "high"))
	waitFor(t, "the 429", 10*time.Second, func() bool { return len(collects()) > 0 })
	for i := 1; i < n; i++ {
		e.submit(mdeAlert(fmt.Sprintf("t-%d", i), ms[i].ID, "high"))
	}
	waitFor(t, "every collection created", 20*time.Second, func() bool {
		for _, en := range e.entries() {
			if en.Outcome != audit.Created {
				return false
			}
		}
		return len(e.entries()) == n
	})
	all := collects()
	refused := all[0]
	if refused.Status != 429 {
		t.Fatalf("first POST answered %d", refused.Status)
	}
	for _, r := range all[1:] {
		if d := r.Time.Sub(refused.Time); d < 2*time.Second {
			var lines []string
			for _, r := range all {
				lines = append(lines, fmt.Sprintf("%s %d", r.Time.Format("15:04:05.000"), r.Status))
			}
			t.Fatalf("a POST was sent %s after a 429 with Retry-After: 2\n%s", d, strings.Join(lines, "\n"))
		}
	}
	if len(all) != n+1 {
		t.Fatalf("%d POSTs, want %d (one refused, then one per alert)", len(all), n+1)
	}
	var _ defender.Throttler = l
}
