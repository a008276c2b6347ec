package quota

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/responder-dev/responder/internal/testkit"
)

func newFakeClock() *testkit.FakeClock {
	return testkit.NewFakeClock(time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC))
}

// TestWindowLimiterHour checks the hour window and fairness on a small quota.
func TestWindowLimiterHour(t *testing.T) {
	t.Parallel()
	clk := newFakeClock()
	l := NewWindowLimiter(2, 3, clk)
	start := clk.Now()
	var admitted []time.Duration
	for range 5 {
		ch := make(chan time.Duration, 1)
		go func() {
			w, err := l.Wait(context.Background())
			if err != nil {
				t.Error(err)
			}
			ch <- w
		}()
		before := clk.Now()
		var waited time.Duration
	wait:
		for {
			select {
			case waited = <-ch:
				break wait
			case <-clk.Changed():
				clk.AdvanceToNext()
			}
		}
		if now := clk.Now(); waited != now.Sub(before) {
			t.Errorf("waited %s; the clock moved %s", waited, now.Sub(before))
		}
		admitted = append(admitted, clk.Now().Sub(start))
	}
	// 2 per minute, 3 per hour: 0, 0, 60s, then the hour window: 3600s, 3600s.
	want := []time.Duration{0, 0, time.Minute, time.Hour, time.Hour}
	for i := range want {
		if admitted[i] != want[i] {
			t.Errorf("call %d admitted at +%s; want +%s", i, admitted[i], want[i])
		}
	}
}

// TestWindowLimiterCancel: a caller whose ctx ends gives its slot back.
func TestWindowLimiterCancel(t *testing.T) {
	t.Parallel()
	clk := newFakeClock()
	l := NewWindowLimiter(1, 100, clk)
	if _, err := l.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := l.Wait(ctx)
		errc <- err
	}()
	for clk.Waiters() == 0 {
		<-clk.Changed()
	}
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v; want context.Canceled", err)
	}
	// The cancelled slot (+60 s) is free again: the next caller takes it.
	clk.Advance(time.Minute)
	if w, err := l.Wait(context.Background()); err != nil || w != 0 {
		t.Errorf("got %s, %v; want no wait", w, err)
	}
	if _, err := l.Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("done ctx: %v", err)
	}
}

// TestWindowLimiterRemember: a limiter given the calls of an earlier one
// (a restarted process) admits only what is left of both windows.
func TestWindowLimiterRemember(t *testing.T) {
	t.Parallel()
	clk := newFakeClock()
	first := NewWindowLimiter(2, 3, clk)
	for range 2 {
		if w, err := first.Wait(context.Background()); err != nil || w != 0 {
			t.Fatalf("first limiter: waited %s, %v", w, err)
		}
	}
	clk.Advance(10 * time.Second)
	calls := first.Calls()
	if len(calls) != 2 {
		t.Fatalf("Calls() = %v, want the 2 admitted", calls)
	}

	second := NewWindowLimiter(2, 3, clk)
	second.Remember(append(calls, clk.Now().Add(-2*time.Hour))) // too old to count
	if got := second.Calls(); len(got) != 2 {
		t.Fatalf("after Remember, Calls() = %v, want the 2 recent ones", got)
	}
	// The minute window is full: the next slot is 60 s after the first call.
	now, slot := second.reserve()
	if want := calls[0].Add(time.Minute); !slot.Equal(want) {
		t.Fatalf("next slot at +%s, want +%s (a minute after the remembered call)", slot.Sub(now), want.Sub(now))
	}
}

// TestWindowLimiterThrottle: a throttle holds back a caller already waiting
// for an earlier slot, and every caller after it.
func TestWindowLimiterThrottle(t *testing.T) {
	t.Parallel()
	clk := newFakeClock()
	l := NewWindowLimiter(1, 100, clk)
	start := clk.Now()
	if _, err := l.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	done := make(chan time.Time, 1)
	go func() {
		if _, err := l.Wait(context.Background()); err != nil {
			t.Error(err)
		}
		done <- clk.Now()
	}()
	for clk.Waiters() == 0 {
		<-clk.Changed()
	}
	// The waiter's slot is +60 s; a 429 now asks for 90 s.
	l.Throttle(start.Add(90 * time.Second))
	var admitted time.Time
wait:
	for {
		clk.AdvanceToNext()
		select {
		case admitted = <-done:
			break wait
		case <-clk.Changed(): // a new waiter: advance to it
		}
	}
	if d := admitted.Sub(start); d != 90*time.Second {
		t.Fatalf("the waiting call was admitted at +%s; want +90s, after the throttle", d)
	}
	// An earlier throttle does not shorten it.
	l.Throttle(start)
	if got := l.throttledUntil(); !got.Equal(start.Add(90 * time.Second)) {
		t.Fatalf("throttle moved back to %s", got)
	}
}
