// Package logsample keeps a repeating log line from flooding the log: the
// first line of a kind is written, then at most one per window, which says
// how many of its kind were held back since the previous one. An outage
// makes the same line thousands of times a second (a queue that cannot
// fetch, every decision suppressed by the circuit breaker); the state
// change is what an operator needs, and the count tells the rest.
package logsample

import (
	"sync"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Field is the key of the count of lines held back.
const Field = "suppressed"

// maxKinds bounds the kinds remembered; kinds are constant messages, so it
// is only reached by a caller that puts variable text in its key.
const maxKinds = 1024

// Sampler decides which lines of each kind are written. The zero value is
// not usable; call New. It is safe for concurrent use.
type Sampler struct {
	window time.Duration
	now    func() time.Time

	mu    sync.Mutex
	kinds map[string]*kind
}

type kind struct {
	next time.Time // the next line written, not before
	held int       // lines held back since the last one written
}

// New returns a sampler that writes at most one line of a kind per window,
// on the clock now (nil: time.Now).
func New(window time.Duration, now func() time.Time) *Sampler {
	if now == nil {
		now = time.Now
	}
	return &Sampler{window: window, now: now, kinds: map[string]*kind{}}
}

// Allow reports whether a line of kind key may be written now, and when it
// may, how many lines of the kind were held back since the last one.
func (s *Sampler) Allow(key string) (ok bool, held int) {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.kinds[key]
	if k == nil {
		if len(s.kinds) >= maxKinds {
			clear(s.kinds)
		}
		k = &kind{}
		s.kinds[key] = k
	}
	if now.Before(k.next) {
		k.held++
		return false, 0
	}
	held, k.held = k.held, 0
	k.next = now.Add(s.window)
	return true, held
}

// Write writes msg at level lvl on log, with fields, unless a line of kind
// key was written within the window; a line written after some were held
// back carries their count under Field. A line the logger's level drops is
// neither written nor counted.
func (s *Sampler) Write(log *zap.Logger, lvl zapcore.Level, key, msg string, fields ...zap.Field) {
	ce := log.Check(lvl, msg)
	if ce == nil {
		return
	}
	ok, held := s.Allow(key)
	if !ok {
		return
	}
	if held > 0 {
		fields = append(fields, zap.Int(Field, held))
	}
	ce.Write(fields...)
}
