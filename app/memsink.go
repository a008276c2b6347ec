package app

import (
	"context"
	"sync"

	"github.com/responder-dev/responder/alert"
)

// memSink keeps accepted alerts in memory. It stands in for the durable
// pipeline until that lands: alerts are deduplicated but not acted upon, and
// a restart forgets them.
type memSink struct {
	mu   sync.Mutex
	seen map[string]bool
	all  []alert.Alert
}

func newMemSink() *memSink { return &memSink{seen: map[string]bool{}} }

func (s *memSink) Submit(_ context.Context, alerts []alert.Alert) (alert.Receipt, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := alert.Receipt{Duplicate: make([]bool, len(alerts))}
	for i, a := range alerts {
		key := a.DedupKey()
		if s.seen[key] {
			r.Duplicate[i] = true
			continue
		}
		s.seen[key] = true
		s.all = append(s.all, a)
	}
	return r, nil
}
