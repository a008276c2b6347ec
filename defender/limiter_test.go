package defender

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/responder-dev/responder/quota"
)

// TestLimiter250Collects drives 250 collect calls through a client at
// 100/min and 1500/h on a fake clock. The fake clock moves only when every
// unfinished worker waits on it, so the time the server records is the time
// the limiter admitted the call.
func TestLimiter250Collects(t *testing.T) {
	t.Parallel()
	const n = 250
	var (
		mu    sync.Mutex
		times []time.Time
		b     *bundle
	)
	b = setup(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		times = append(times, b.clock.Now())
		mu.Unlock()
		writeJSON(w, http.StatusCreated, actionJSON(testAction, "Pending"))
	}, setupOpts{cfg: func(c *Config) { c.RateLimit = RateLimit{PerMinute: 100, PerHour: 1500} }})
	start := b.clock.Now()

	done := make(chan error, n)
	for range n {
		go func() {
			_, err := b.client.CollectInvestigationPackage(context.Background(), testMachine, "Collect forensics due to alert "+testAlertID)
			done <- err
		}()
	}
	finished := 0
	for finished < n {
		// Wait until every unfinished worker is blocked on the clock.
		for finished < n && finished+b.clock.Waiters() < n {
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("call failed: %v", err)
				}
				finished++
			case <-b.clock.Changed():
			}
		}
		if finished < n && !b.clock.AdvanceToNext() {
			t.Fatal("workers neither finished nor waiting")
		}
	}

	mu.Lock()
	got := sortedTimes(times)
	mu.Unlock()
	if len(got) != n {
		t.Fatalf("server saw %d calls; want %d (none dropped)", len(got), n)
	}
	for i := 0; i+100 < len(got); i++ {
		if d := got[i+100].Sub(got[i]); d < time.Minute {
			t.Fatalf("calls %d and %d are %s apart: 101 calls in one 60 s window", i, i+100, d)
		}
	}
	// Admitted as early as the quota allows: 100 at once, 100 a minute
	// later, 50 two minutes later.
	for i, want := range map[int]time.Duration{0: 0, 99: 0, 100: time.Minute, 199: time.Minute, 200: 2 * time.Minute, 249: 2 * time.Minute} {
		if d := got[i].Sub(start); d != want {
			t.Errorf("call %d at +%s; want +%s", i, d, want)
		}
	}
	count, sum := histogram(t, b.m.RateLimitWait)
	if count != n || sum != 100*60+50*120 {
		t.Errorf("wait histogram count %d sum %v; want %d and %d", count, sum, n, 100*60+50*120)
	}
}

// TestInjectedLimiter: a group's limiter can be replaced (e.g. by one shared
// through PostgreSQL), and its error stops the call before any request.
func TestInjectedLimiter(t *testing.T) {
	t.Parallel()
	var calls []Group
	var mu sync.Mutex
	spy := func(g Group, err error) quota.Limiter {
		return quota.LimiterFunc(func(ctx context.Context) (time.Duration, error) {
			mu.Lock()
			calls = append(calls, g)
			mu.Unlock()
			return 2 * time.Second, err
		})
	}
	boom := errors.New("store down")
	var b *bundle
	b = setup(t, func(w http.ResponseWriter, r *http.Request) {
		b.record(r)
		writeJSON(w, 200, `{"value":[]}`)
	}, setupOpts{opts: []Option{
		WithLimiter(GroupMachineActions, spy(GroupMachineActions, nil)),
		WithLimiter(GroupActions, spy(GroupActions, boom)),
	}})
	if _, err := b.client.ListMachineActions(context.Background(), ActionFilter{}); err != nil {
		t.Fatal(err)
	}
	_, err := b.client.CollectInvestigationPackage(context.Background(), testMachine, "c")
	if e := asError(t, err); e.Outcome != OutcomeRetryable || !errors.Is(err, boom) {
		t.Errorf("got %v", err)
	}
	if len(b.apiCalls()) != 1 || len(calls) != 2 || calls[0] != GroupMachineActions || calls[1] != GroupActions {
		t.Errorf("api calls %d, limiter calls %v", len(b.apiCalls()), calls)
	}
	if count, sum := histogram(t, b.m.RateLimitWait); count != 1 || sum != 2 {
		t.Errorf("wait histogram %d %v", count, sum)
	}
}

// TestRateLimitedThrottlesTheGroup: after a 429 with Retry-After the client
// holds back every call of that API group until it has passed (MDE would
// refuse them all), while other groups go on.
func TestRateLimitedThrottlesTheGroup(t *testing.T) {
	t.Parallel()
	var (
		mu    sync.Mutex
		calls []time.Time
		b     *bundle
	)
	b = setup(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if r.Method == http.MethodGet {
			writeJSON(w, http.StatusOK, actionJSON(testAction, "Pending"))
			return
		}
		calls = append(calls, b.clock.Now())
		if len(calls) == 1 {
			w.Header().Set("Retry-After", "30")
			writeJSON(w, http.StatusTooManyRequests, `{"error":{"code":"TooManyRequests","message":"slow down","target":"t"}}`)
			return
		}
		writeJSON(w, http.StatusCreated, actionJSON(testAction, "Pending"))
	})
	ctx := context.Background()
	start := b.clock.Now()
	if _, err := b.client.CollectInvestigationPackage(ctx, testMachine, "c"); err == nil {
		t.Fatal("the 429 was not an error")
	}
	// Another group is not held back.
	if _, err := b.client.GetMachineAction(ctx, testAction); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := b.client.Isolate(ctx, testMachine, "c", IsolationFull)
		done <- err
	}()
	for b.clock.Waiters() == 0 {
		<-b.clock.Changed()
	}
	b.clock.AdvanceToNext()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(calls) != 2 || calls[1].Sub(start) != 30*time.Second {
		t.Fatalf("action POSTs at %v; want the second at +30s", calls)
	}
}
