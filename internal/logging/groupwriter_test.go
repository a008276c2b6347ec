package logging

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"go.uber.org/zap"
)

// gatedWriter records each write; while its gate is held, writes wait.
type gatedWriter struct {
	gate    chan struct{} // a write takes a token; nil: never waits
	started chan struct{} // a token per write begun
	mu      sync.Mutex
	writes  [][]byte
	err     error
}

func (w *gatedWriter) Write(p []byte) (int, error) {
	if w.started != nil {
		w.started <- struct{}{}
	}
	if w.gate != nil {
		<-w.gate
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writes = append(w.writes, bytes.Clone(p))
	return len(p), w.err
}

func (w *gatedWriter) all() ([][]byte, []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.writes, bytes.Join(w.writes, nil)
}

// TestGroupWriterGroupsLinesLoggedDuringAWrite: the lines logged while a
// write is in progress go out in one write, in order, none lost.
func TestGroupWriterGroupsLinesLoggedDuringAWrite(t *testing.T) {
	t.Parallel()
	w := &gatedWriter{gate: make(chan struct{}), started: make(chan struct{}, 10)}
	g := newGroupWriter(w)
	g.Write([]byte("first\n"))
	<-w.started // the flusher is in the first write, held
	var want bytes.Buffer
	want.WriteString("first\n")
	for i := range 100 {
		line := fmt.Sprintf("line %d\n", i)
		want.WriteString(line)
		g.Write([]byte(line))
	}
	close(w.gate)
	if err := g.Sync(); err != nil {
		t.Fatal(err)
	}
	writes, got := w.all()
	if !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("written %q, want %q", got, want.Bytes())
	}
	if len(writes) != 2 {
		t.Fatalf("%d writes for 101 lines, want 2 (the first line, then the 100 logged during it)", len(writes))
	}
}

// TestGroupWriterWaitsRatherThanDrops: past maxPending bytes waiting, a
// logger waits for the write; every byte arrives.
func TestGroupWriterWaitsRatherThanDrops(t *testing.T) {
	t.Parallel()
	w := &gatedWriter{gate: make(chan struct{}), started: make(chan struct{}, 100)}
	g := newGroupWriter(w)
	line := bytes.Repeat([]byte("x"), 1023)
	line = append(line, '\n')
	g.Write(line)
	<-w.started
	// Fill the pending buffer while the first write is held, then one more
	// line from another goroutine: it must wait, not be dropped.
	for range maxPending / len(line) {
		g.Write(line)
	}
	returned := make(chan struct{})
	go func() {
		g.Write([]byte("last\n"))
		close(returned)
	}()
	select {
	case <-returned:
		t.Fatal("a Write past maxPending returned while the writer was held")
	default:
	}
	close(w.gate)
	<-returned
	if err := g.Sync(); err != nil {
		t.Fatal(err)
	}
	writes, got := w.all()
	// The line that waited went out after the full buffer, in a write of
	// its own: the buffer never grew past the bound.
	if len(writes) < 3 || len(writes[1]) > maxPending || bytes.Contains(writes[1], []byte("last")) {
		t.Fatalf("writes of %v bytes: the waiting line was not held back behind the full buffer", lens(writes))
	}
	if wantLen := (maxPending/len(line)+1)*len(line) + len("last\n"); len(got) != wantLen || !bytes.HasSuffix(got, []byte("last\n")) {
		t.Fatalf("written %d bytes ending %q, want %d ending \"last\\n\"", len(got), got[max(0, len(got)-8):], wantLen)
	}
}

func lens(writes [][]byte) []int {
	n := make([]int, len(writes))
	for i, w := range writes {
		n[i] = len(w)
	}
	return n
}

// TestGroupWriterSyncReportsAWriteError: a write that failed is reported
// by Sync (Write itself cannot know: it only queues).
func TestGroupWriterSyncReportsAWriteError(t *testing.T) {
	t.Parallel()
	broken := errors.New("disk full")
	g := newGroupWriter(&gatedWriter{err: broken})
	g.Write([]byte("line\n"))
	if err := g.Sync(); !errors.Is(err, broken) {
		t.Fatalf("Sync = %v, want %v", err, broken)
	}
}

// TestLoggerOnAFileWritesEveryLine: the logger New builds on a file (as
// serve's stdout is) writes every line of concurrent loggers whole, each
// logger's lines in order, all of them by the time Sync returns.
func TestLoggerOnAFileWritesEveryLine(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "log")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	log, err := New("info", "json", f)
	if err != nil {
		t.Fatal(err)
	}
	const loggers, lines = 8, 500
	var wg sync.WaitGroup
	for l := range loggers {
		wg.Go(func() {
			for i := range lines {
				log.Info("decision", zap.Int("logger", l), zap.Int("n", i))
			}
		})
	}
	wg.Wait()
	if err := log.Sync(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	next := make([]int, loggers)
	sc := bufio.NewScanner(bytes.NewReader(data))
	count := 0
	for sc.Scan() {
		var line struct {
			Msg    string `json:"msg"`
			Logger int    `json:"logger"`
			N      int    `json:"n"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("line %d %q: %v", count+1, sc.Text(), err)
		}
		if line.Msg != "decision" || line.N != next[line.Logger] {
			t.Fatalf("line %d = %+v, want logger %d's line %d", count+1, line, line.Logger, next[line.Logger])
		}
		next[line.Logger]++
		count++
	}
	if count != loggers*lines {
		t.Fatalf("%d lines in the file, want %d", count, loggers*lines)
	}
}
