package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/responder-dev/responder/defender/defendertest"
)

// quotaRules collect on severity alone: no machine reads, so the collect
// POSTs are the only calls that spend the quota under test.
const quotaRules = `
rules:
  - name: high
    when: 'alert.severity == "high"'
`

// TestQuotaHeldThroughCrashLoop kills the responder (SIGKILL) right after
// bursts of collect POSTs, several times in a row, with a backlog of 300
// qualifying alerts on 300 machines. Every restart must remember the calls of
// the processes before it: Defender sees at most the configured 100 collect
// POSTs in any 60 s window, whatever the crashes.
func TestQuotaHeldThroughCrashLoop(t *testing.T) {
	t.Parallel()
	const alerts, perMinute = 300, 100
	machines := make([]defendertest.Machine, alerts)
	for i := range machines {
		machines[i] = defendertest.Machine{ID: fmt.Sprintf("%040x", 0xfa11_0000+i), ComputerDNSName: fmt.Sprintf("q-%d.example.com", i), HealthStatus: "Active"}
	}
	dir := t.TempDir()
	rules := filepath.Join(dir, "quota-rules.yaml")
	if err := os.WriteFile(rules, []byte(quotaRules), 0o600); err != nil {
		t.Fatal(err)
	}
	s := newStack(t, defendertest.Options{Machines: machines},
		"RESPONDER_RULES_FILES="+rules,
		fmt.Sprintf("RESPONDER_DEFENDER_RATE_LIMIT_PER_MINUTE=%d", perMinute),
		"RESPONDER_SAFETY_MAX_COLLECTIONS_PER_HOUR=100000",
		"RESPONDER_SAFETY_MAX_MACHINES_PER_10M=100000",
	)
	var body strings.Builder
	body.WriteString("[")
	for i, m := range machines {
		if i > 0 {
			body.WriteString(",")
		}
		body.WriteString(mdeAlertJSON(fmt.Sprintf("q-%d", i), m.ID, "High"))
	}
	body.WriteString("]")
	if a := s.postDefender(t, body.String()); a.Code != 202 || a.Body["accepted"] != float64(alerts) {
		t.Fatalf("intake: %+v", a)
	}

	collectTimes := func() []time.Time {
		var out []time.Time
		for _, r := range s.sim.Requests() {
			if r.Method == "POST" && strings.HasSuffix(r.Path, "/collectInvestigationPackage") {
				out = append(out, r.Time)
			}
		}
		return out
	}
	// A crash loop: each process is killed two seconds after its first
	// POST (or after three seconds without one: its quota may be spent),
	// and started again, for a minute and more. Each process starts its
	// burst with whatever quota it believes is left.
	waitUntil(t, "the first collect POST", func() bool { return len(collectTimes()) > 0 })
	first := collectTimes()[0]
	for rounds := 0; time.Since(first) < 65*time.Second; rounds++ {
		before := len(collectTimes())
		deadline := time.Now().Add(3 * time.Second)
		for len(collectTimes()) == before && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if len(collectTimes()) > before {
			time.Sleep(2 * time.Second) // the scenario: killed 2 s after the burst began
		}
		_ = s.proc.cmd.Process.Signal(syscall.SIGKILL)
		<-s.proc.exited
		s.start(t)
	}
	times := collectTimes()
	slices.SortFunc(times, func(a, b time.Time) int { return a.Compare(b) })
	peak, at := 0, time.Time{}
	for i := range times {
		n := 0
		for j := i; j < len(times) && times[j].Sub(times[i]) < time.Minute; j++ {
			n++
		}
		if n > peak {
			peak, at = n, times[i]
		}
	}
	t.Logf("%d collect POSTs in all, at most %d in a 60 s window (from %s)", len(times), peak, at.Format("15:04:05.000"))
	if peak > perMinute {
		t.Fatalf("%d collect POSTs reached Defender within 60 s from %s, quota %d", peak, at.Format("15:04:05.000"), perMinute)
	}
	if len(times) == 0 {
		t.Fatal("no collect POST at all")
	}
}
