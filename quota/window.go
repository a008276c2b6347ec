// Package quota keeps calls within Defender's quotas: a sliding window of
// calls per minute and per hour for each API group, in process
// (WindowLimiter), kept in the store so that a restart does not forget the
// calls before it (Local, one node), or shared through the store by the
// replicas (Shared). A 429 holds back its whole group (Throttler).
package quota

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Clock tells the time and waits; tests inject a fake.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

// RealClock is the Clock of the time package.
type RealClock struct{}

// Now returns time.Now().
func (RealClock) Now() time.Time { return time.Now() }

// After returns time.After(d).
func (RealClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Limiter admits one call when the quota allows it. Wait blocks until then
// and returns how long it waited, or ctx.Err() if ctx ends first (the call is
// then not admitted). Implementations must be safe for concurrent use. The
// pipeline may plug in a limiter shared by several replicas.
type Limiter interface {
	Wait(ctx context.Context) (waited time.Duration, err error)
}

// Throttler is a Limiter that a 429 can hold back: Throttle stops admitting
// calls until until, including the calls already waiting for a slot. MDE
// counts its quota per application and tenant, so when it answers one
// request 429 with Retry-After, every request of that API group would get
// the same answer until then: the whole group waits, not only the request
// that was refused. Limiters shared by several replicas hold them all back.
type Throttler interface {
	Throttle(until time.Time)
}

// Throttle holds back l's group until until, when l can be throttled.
func Throttle(l Limiter, until time.Time) {
	if t, ok := l.(Throttler); ok {
		t.Throttle(until)
	}
}

// LimiterFunc adapts a function to the Limiter interface.
type LimiterFunc func(ctx context.Context) (time.Duration, error)

// Wait calls f.
func (f LimiterFunc) Wait(ctx context.Context) (time.Duration, error) { return f(ctx) }

// WindowLimiter is a sliding-log limiter: it guarantees that no 60 s window
// holds more than perMinute admitted calls and no 3600 s window more than
// perHour (windows half-open: a call admitted at t and another at t+60s do not
// share a window). A token bucket does not give that guarantee: with burst N
// refilled at N/min it lets nearly 2N calls through within one minute.
//
// Callers are admitted in arrival order: each reserves the earliest slot that
// keeps both windows within quota and not before any earlier reservation,
// then waits for it. A caller whose ctx ends before its slot gives the slot
// back (removing a reservation only lowers the counts, so the guarantee
// holds for the reservations made after it).
type WindowLimiter struct {
	perMinute, perHour int
	// slack lengthens both windows: a call admitted here reaches MDE a
	// little later, and MDE's clock is not ours, so windows exactly 60 s
	// apart here may overlap there.
	slack time.Duration
	clock Clock

	mu sync.Mutex
	// log holds admitted and reserved call times in ascending order, none
	// older than an hour before the latest prune.
	log []time.Time
	// throttled holds back every call until then (a 429's Retry-After).
	throttled time.Time
}

// NewWindowLimiter returns a limiter of perMinute calls per 60 s and perHour
// calls per 3600 s on clock (nil: the real clock). Non-positive quotas panic.
func NewWindowLimiter(perMinute, perHour int, clock Clock) *WindowLimiter {
	if perMinute <= 0 || perHour <= 0 {
		panic(fmt.Sprintf("quota: NewWindowLimiter(%d, %d): quotas must be positive", perMinute, perHour))
	}
	if clock == nil {
		clock = RealClock{}
	}
	return &WindowLimiter{perMinute: perMinute, perHour: perHour, clock: clock}
}

// DefaultSlack is the slack of the service's limiters: a call admitted here
// reaches Defender a little later, on Defender's clock.
const DefaultSlack = time.Second

// WithSlack returns l with both windows lengthened by d (see the slack
// field); the pipeline uses a second, which costs under 2% of the quota.
func (l *WindowLimiter) WithSlack(d time.Duration) *WindowLimiter {
	l.slack = d
	return l
}

// Wait implements Limiter.
func (l *WindowLimiter) Wait(ctx context.Context) (time.Duration, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	start, slot := l.reserve()
	for {
		now := l.clock.Now()
		if !now.Before(slot) {
			// A 429 may have throttled the group while this call waited
			// for its slot: take a new one after the throttle.
			if until := l.throttledUntil(); now.Before(until) {
				l.release(slot)
				_, slot = l.reserve()
				continue
			}
			return max(slot.Sub(start), 0), nil
		}
		select {
		case <-ctx.Done():
			l.release(slot)
			return 0, ctx.Err()
		case <-l.clock.After(slot.Sub(now)):
		}
		// A clock may fire early (or be advanced in steps): the loop waits
		// again until the slot has come.
	}
}

// Reserve admits one call at the earliest slot the quota allows, without
// waiting, and returns the slot. Replay runs the limiter on a virtual
// clock this way, to tell when each collection would have been sent.
func (l *WindowLimiter) Reserve() time.Time {
	_, slot := l.reserve()
	return slot
}

// Throttle implements Throttler: no call is admitted before until.
func (l *WindowLimiter) Throttle(until time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if until.After(l.throttled) {
		l.throttled = until
	}
}

func (l *WindowLimiter) throttledUntil() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.throttled
}

// reserve records the earliest allowed slot and returns the time now and the
// slot.
func (l *WindowLimiter) reserve() (now, slot time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now = l.clock.Now()
	// Forget calls that can no longer share an hour window with a new one.
	cut := 0
	for cut < len(l.log) && !l.log[cut].After(now.Add(-time.Hour-l.slack)) {
		cut++
	}
	if cut > 0 {
		l.log = append(l.log[:0], l.log[cut:]...)
	}
	slot = now
	if l.throttled.After(slot) {
		slot = l.throttled
	}
	n := len(l.log)
	if n > 0 && l.log[n-1].After(slot) {
		slot = l.log[n-1] // first come, first served
	}
	if n >= l.perMinute {
		if t := l.log[n-l.perMinute].Add(time.Minute + l.slack); t.After(slot) {
			slot = t
		}
	}
	if n >= l.perHour {
		if t := l.log[n-l.perHour].Add(time.Hour + l.slack); t.After(slot) {
			slot = t
		}
	}
	l.log = append(l.log, slot)
	return now, slot
}

// Calls returns the times of the calls admitted or reserved within the last
// hour (and slack), oldest first: what a restarted process must not forget.
func (l *WindowLimiter) Calls() []time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	cutoff := l.clock.Now().Add(-time.Hour - l.slack)
	var out []time.Time
	for _, t := range l.log {
		if t.After(cutoff) {
			out = append(out, t)
		}
	}
	return out
}

// Remember adds calls made before this limiter existed (by a previous
// process), so that a restart does not grant a fresh quota.
func (l *WindowLimiter) Remember(calls []time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	cutoff := l.clock.Now().Add(-time.Hour - l.slack)
	for _, t := range calls {
		if t.After(cutoff) {
			l.log = append(l.log, t)
		}
	}
	slices.SortFunc(l.log, func(a, b time.Time) int { return a.Compare(b) })
}

// release gives back a reservation that was not used.
func (l *WindowLimiter) release(slot time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := len(l.log) - 1; i >= 0; i-- {
		if l.log[i].Equal(slot) {
			l.log = append(l.log[:i], l.log[i+1:]...)
			return
		}
	}
}
