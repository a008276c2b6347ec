package quota_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/responder-dev/responder/internal/testkit"
	"github.com/responder-dev/responder/quota"
	"github.com/responder-dev/responder/store"
)

func quotaRows(t *testing.T, s *store.Store, group string) int {
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
	st, err := store.Open(ctx, store.DriverSQLite, path)
	if err != nil {
		t.Fatal(err)
	}
	l, err := quota.NewLocal(ctx, st, "machines", quota.Windows{PerMinute: 3, PerHour: 100, Slack: quota.DefaultSlack})
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 3; i++ {
		if _, err := l.Wait(ctx); err != nil {
			t.Fatal(err)
		}
		if n := quotaRows(t, st, "machines"); n != i {
			t.Fatalf("after call %d the store holds %d calls", i, n)
		}
	}
	st.Close() // the process dies: nothing else runs

	st, err = store.Open(ctx, store.DriverSQLite, path)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	second, err := quota.NewLocal(ctx, st, "machines", quota.Windows{PerMinute: 3, PerHour: 100, Slack: quota.DefaultSlack})
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := second.Wait(wctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a fourth call within the minute was admitted after the restart (err %v)", err)
	}
	if n := quotaRows(t, st, "machines"); n != 3 {
		t.Fatalf("a refused call was recorded: %d calls", n)
	}
	// Another group has its own quota.
	other, err := quota.NewLocal(ctx, st, "actions", quota.Windows{PerMinute: 3, PerHour: 100, Slack: quota.DefaultSlack})
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
	st, err := store.Open(ctx, store.DriverSQLite, filepath.Join(t.TempDir(), "r.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	now := time.Now().UnixMilli()
	saved := fmt.Sprintf("[%d,%d]", now-2000, now-1000)
	if _, err := st.DB.Exec(`INSERT INTO responder_setting (name, value, updated_at) VALUES ('quota_calls:machines', $1, 0)`, saved); err != nil {
		t.Fatal(err)
	}
	l, err := quota.NewLocal(ctx, st, "machines", quota.Windows{PerMinute: 2, PerHour: 100, Slack: quota.DefaultSlack})
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := l.Wait(wctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the saved calls were forgotten (err %v)", err)
	}
	if n := quotaRows(t, st, "machines"); n != 2 {
		t.Fatalf("%d calls kept as rows, want 2", n)
	}
}

// TestLocalLimiterThrottle: a throttle holds back the calls of the process
// and of the next one within it.
func TestLocalLimiterThrottle(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "r.db")
	st, err := store.Open(ctx, store.DriverSQLite, path)
	if err != nil {
		t.Fatal(err)
	}
	l, err := quota.NewLocal(ctx, st, "actions", quota.Windows{PerMinute: 100, PerHour: 1500, Slack: quota.DefaultSlack})
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
	st.Close()

	st, err = store.Open(ctx, store.DriverSQLite, path)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	second, err := quota.NewLocal(ctx, st, "actions", quota.Windows{PerMinute: 100, PerHour: 1500, Slack: quota.DefaultSlack})
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
	if until, err := st.QuotaThrottle(ctx, "actions"); err != nil || time.Until(until) < 50*time.Minute {
		t.Fatalf("throttle until %v (err %v)", until, err)
	}
}

// TestSharedLimiterThrottleHoldsEveryReplica: on PostgreSQL a 429 seen by
// one replica holds back the group on every replica.
func TestSharedLimiterThrottleHoldsEveryReplica(t *testing.T) {
	t.Parallel()
	dsn := testkit.PostgresDSN(t)
	ctx := context.Background()
	var stores []*store.Store
	var limiters []*quota.Shared
	w := quota.Windows{PerMinute: 100, PerHour: 1500, Slack: quota.DefaultSlack}
	for range 2 {
		st, err := store.Open(ctx, store.DriverPostgres, dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(st.Close)
		stores = append(stores, st)
		limiters = append(limiters, quota.NewShared(st, "actions", w))
	}
	if _, err := limiters[1].Wait(ctx); err != nil {
		t.Fatalf("before the throttle: %v", err)
	}
	limiters[0].Throttle(time.Now().Add(30 * time.Second))
	wait, err := stores[1].AdmitQuotaCall(ctx, "actions", time.Now(), w)
	if err != nil || wait < 29*time.Second || wait > 30*time.Second {
		t.Fatalf("the other replica: wait %v err %v, want about 30s", wait, err)
	}
	wctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if _, err := limiters[1].Wait(wctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the other replica's limiter admitted a call during the throttle: %v", err)
	}
	if n := quotaRows(t, stores[1], "actions"); n != 1 {
		t.Fatalf("a held-back call was recorded: %d calls", n)
	}
}

// TestSharedLimiterWindows: the log admits a call when both windows allow
// it, or says how long until the call that must leave one has left.
func TestSharedLimiterWindows(t *testing.T) {
	t.Parallel()
	st, err := store.Open(context.Background(), store.DriverSQLite, filepath.Join(t.TempDir(), "q.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	now := time.Unix(1_800_000_000, 0)
	windows := quota.Windows{PerMinute: 3, PerHour: 5, Slack: quota.DefaultSlack}
	try := func(ctx context.Context) (time.Duration, error) {
		return st.AdmitQuotaCall(ctx, "actions", now, windows)
	}
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		if w, err := try(ctx); err != nil || w != 0 {
			t.Fatalf("call %d: wait %v err %v", i, w, err)
		}
		now = now.Add(time.Second)
	}
	w, err := try(ctx)
	if err != nil || w != 58*time.Second+time.Millisecond { // 60 s window + 1 s slack, oldest call 3 s ago
		t.Fatalf("4th call in the minute: wait %v err %v", w, err)
	}
	now = now.Add(w)
	if w, err := try(ctx); err != nil || w != 0 {
		t.Fatalf("after the wait: %v %v", w, err)
	}
	now = now.Add(62 * time.Second)
	if w, _ := try(ctx); w != 0 {
		t.Fatalf("5th call of the hour refused: %v", w)
	}
	now = now.Add(62 * time.Second)
	if w, _ := try(ctx); w <= time.Minute {
		t.Fatalf("6th call in the hour admitted or short wait: %v", w)
	}
}
