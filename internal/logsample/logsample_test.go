package logsample

import (
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

func TestSampler(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_800_000_000, 0)
	s := New(10*time.Second, func() time.Time { return now })
	core, logs := observer.New(zapcore.InfoLevel)
	log := zap.New(core)

	for range 1000 {
		s.Write(log, zapcore.WarnLevel, "fetch", "Error fetching jobs", zap.String("err", "down"))
	}
	s.Write(log, zapcore.WarnLevel, "other", "another kind")
	now = now.Add(9 * time.Second)
	s.Write(log, zapcore.WarnLevel, "fetch", "Error fetching jobs")
	now = now.Add(time.Second)
	s.Write(log, zapcore.WarnLevel, "fetch", "Error fetching jobs")
	// Below the level: neither written nor counted.
	s.Write(log, zapcore.DebugLevel, "debug", "quiet")
	s.Write(log, zapcore.DebugLevel, "fetch", "Error fetching jobs")
	now = now.Add(time.Minute)
	s.Write(log, zapcore.WarnLevel, "fetch", "Error fetching jobs")

	got := logs.All()
	if len(got) != 4 {
		t.Fatalf("%d lines written, want 4: %v", len(got), got)
	}
	want := []struct {
		msg  string
		held int64 // -1: no count field
	}{{"Error fetching jobs", -1}, {"another kind", -1}, {"Error fetching jobs", 1000}, {"Error fetching jobs", -1}}
	for i, w := range want {
		e := got[i]
		held, ok := e.ContextMap()[Field].(int64)
		if e.Message != w.msg || (w.held < 0) == ok || (ok && held != w.held) {
			t.Errorf("line %d = %q %v, want %q with %d held back", i, e.Message, e.ContextMap(), w.msg, w.held)
		}
	}
}

func TestSamplerBoundsKinds(t *testing.T) {
	t.Parallel()
	s := New(time.Hour, nil)
	for i := range 3 * maxKinds {
		s.Allow(string(rune('a'+i%26)) + string(rune(i)))
	}
	if n := len(s.kinds); n > maxKinds {
		t.Fatalf("%d kinds remembered", n)
	}
}
