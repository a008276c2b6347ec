package testkit

import (
	"testing"
	"time"
)

// Polling starts fast, for conditions that hold at once, and slows down to
// maxPoll, so that waiting on a slow process (Prometheus scraping) does not
// hammer it.
const (
	firstPoll = 5 * time.Millisecond
	maxPoll   = 100 * time.Millisecond
)

// WaitUntil polls cond until it holds. When timeout passes first, it fails t
// with what it waited for. It is for waiting on another process or a
// goroutine the test cannot synchronise with; cond runs on the test's
// goroutine and may call t.Fatal.
func WaitUntil(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	WaitFor(t, timeout, what, func() (bool, string) { return cond(), "" })
}

// WaitFor is WaitUntil for a condition that also says what it saw; the last
// of these is in the failure message.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	poll := firstPoll
	for {
		ok, last := cond()
		if ok {
			return
		}
		if !time.Now().Before(deadline) {
			if last != "" {
				t.Fatalf("timed out after %s waiting for %s; last seen: %s", timeout, what, last)
				return
			}
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
			return
		}
		time.Sleep(min(poll, time.Until(deadline)))
		poll = min(2*poll, maxPoll)
	}
}
