package pipeline

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/responder-dev/responder/audit"
	"github.com/responder-dev/responder/defender/defendertest"
	"github.com/responder-dev/responder/internal/testkit"
	"github.com/responder-dev/responder/quota"
)

// TestRateLimitHoldsBackTheGroup: when Defender answers one collection 429
// with Retry-After, no other collection is sent before it has passed (they
// would all get 429: MDE counts per application), and every one is sent
// after it.
func TestRateLimitHoldsBackTheGroup(t *testing.T) {
	t.Parallel()
	const n = 8
	ms := make([]defendertest.Machine, n)
	for i := range ms {
		ms[i] = defendertest.Machine{ID: fmt.Sprintf("%040x", 0x429000+i), ComputerDNSName: fmt.Sprintf("t-%d.example.com", i), HealthStatus: "Active"}
	}
	sim := newSim(t, defendertest.Options{Machines: ms, PendingFor: time.Hour})
	sim.InjectFault(defendertest.Fault{Method: "POST", PathContains: "collectInvestigationPackage", Status: 429, RetryAfter: 2, Times: 1})
	e := setup(t, envOpts{sim: sim, noStart: true, cfg: Config{MaxCollectionsPerHour: 1000, MaxMachinesPer10m: 1000}})
	l, err := quota.NewLocal(context.Background(), e.store, "actions", quota.Windows{PerMinute: 100, PerHour: 1500, Slack: quota.DefaultSlack})
	if err != nil {
		t.Fatal(err)
	}
	e.p.quota = l
	e.start()
	collects := func() []defendertest.Request {
		var out []defendertest.Request
		for _, r := range sim.Requests() {
			if r.Method == "POST" && strings.HasSuffix(r.Path, "/collectInvestigationPackage") {
				out = append(out, r)
			}
		}
		return out
	}
	// One alert first, so that its POST gets the 429; then the others.
	e.submit(mdeAlert("t-0", ms[0].ID, "high"))
	testkit.WaitUntil(t, 10*time.Second, "the 429", func() bool { return len(collects()) > 0 })
	for i := 1; i < n; i++ {
		e.submit(mdeAlert(fmt.Sprintf("t-%d", i), ms[i].ID, "high"))
	}
	testkit.WaitUntil(t, 20*time.Second, "every collection created", func() bool {
		for _, en := range e.entries() {
			if en.Outcome != audit.Created {
				return false
			}
		}
		return len(e.entries()) == n
	})
	all := collects()
	refused := all[0]
	if refused.Status != 429 {
		t.Fatalf("first POST answered %d", refused.Status)
	}
	for _, r := range all[1:] {
		if d := r.Time.Sub(refused.Time); d < 2*time.Second {
			var lines []string
			for _, r := range all {
				lines = append(lines, fmt.Sprintf("%s %d", r.Time.Format("15:04:05.000"), r.Status))
			}
			t.Fatalf("a POST was sent %s after a 429 with Retry-After: 2\n%s", d, strings.Join(lines, "\n"))
		}
	}
	if len(all) != n+1 {
		t.Fatalf("%d POSTs, want %d (one refused, then one per alert)", len(all), n+1)
	}
}
