package logging

import (
	"io"
	"sync"
)

// groupWriter writes log lines to a file or pipe in as few write calls as
// the writer's pace allows, the way the intake commits alerts: a line is
// handed to a flushing goroutine at once (never held back by a timer), and
// the lines logged while a write is in progress go out together in the
// next one. Under load that is one system call for many lines instead of
// one per line; when idle, a line is written within a goroutine switch.
//
// Nothing is dropped: past maxPending bytes waiting, Write waits for the
// flush (the loggers slow down rather than lose lines). A process killed
// outright loses the lines of the last write in flight, microseconds' worth;
// Sync, which zap's logger calls on Fatal and serve calls on the way out,
// writes everything first.
//
// The flushing goroutine exists only while there is something to write: it
// is started by the Write that finds none running and ends when nothing is
// left, so there is nothing to stop.
type groupWriter struct {
	w io.Writer

	mu       sync.Mutex
	flushed  sync.Cond // signalled after each write, and when the flusher ends
	pending  []byte    // lines not yet handed to w
	spare    []byte    // the buffer of the last write, reused
	flushing bool      // a flusher goroutine is running
	err      error     // the first write error, reported by Sync
}

// maxPending is how many bytes may wait for a write before loggers wait.
const maxPending = 1 << 20

func newGroupWriter(w io.Writer) *groupWriter {
	g := &groupWriter{w: w}
	g.flushed.L = &g.mu
	return g
}

// Write queues p for the flusher. It never returns an error: a failed write
// to the log's destination is reported by Sync (zap would only report it on
// stderr, which is where the destination usually is).
func (g *groupWriter) Write(p []byte) (int, error) {
	g.mu.Lock()
	for len(g.pending) >= maxPending {
		g.flushed.Wait()
	}
	g.pending = append(g.pending, p...)
	if !g.flushing {
		g.flushing = true
		go g.flush()
	}
	g.mu.Unlock()
	return len(p), nil
}

// flush writes what is pending, again and again, until nothing is.
func (g *groupWriter) flush() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for len(g.pending) > 0 {
		batch := g.pending
		g.pending = g.spare[:0]
		g.mu.Unlock()
		_, err := g.w.Write(batch)
		g.mu.Lock()
		if err != nil && g.err == nil {
			g.err = err
		}
		if cap(batch) <= 4*maxPending { // a burst's huge buffer is let go
			g.spare = batch[:0]
		}
		g.flushed.Broadcast()
	}
	g.flushing = false
	g.flushed.Broadcast()
}

// Sync waits until every line written before it is written to w, then
// syncs w when it can be.
func (g *groupWriter) Sync() error {
	g.mu.Lock()
	for g.flushing {
		g.flushed.Wait()
	}
	err := g.err
	g.mu.Unlock()
	if s, ok := g.w.(interface{ Sync() error }); ok {
		if serr := s.Sync(); serr != nil && err == nil {
			err = serr
		}
	}
	return err
}
