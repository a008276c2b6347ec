package pipeline

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/responder-dev/responder/audit"
	"github.com/responder-dev/responder/defender/defendertest"
	"github.com/responder-dev/responder/internal/logsample"
	"github.com/responder-dev/responder/internal/testkit"
	"github.com/responder-dev/responder/store"
)

// TestSuppressedDecisionsDoNotFloodTheLog: with the circuit breaker open,
// every alert is decided circuit_open; each is in the audit trail and the
// metrics, while the log says it once per window, with a count.
func TestSuppressedDecisionsDoNotFloodTheLog(t *testing.T) {
	t.Parallel()
	core, logs := observer.New(zapcore.InfoLevel)
	const n = 300
	e := setup(t, envOpts{logs: core, rulesSrc: "rules:\n  - name: high\n    when: 'alert.severity == \"high\"'\n",
		cfg: Config{MaxCollectionsPerHour: 1, MaxMachinesPer10m: 1}})
	start := time.Now()
	for i := range n {
		e.submit(mdeAlert(fmt.Sprintf("flood-%d", i), fmt.Sprintf("%040x", 0xf100d000+i), "high"))
	}
	testkit.WaitUntil(t, 90*time.Second, "every decision", func() bool { return len(e.entries()) == n })
	elapsed := time.Since(start)
	suppressed := 0
	for _, en := range e.entries() {
		if en.Decision == audit.CircuitOpen {
			suppressed++
		}
	}
	if suppressed != n-1 {
		t.Fatalf("%d circuit_open decisions, want %d", suppressed, n-1)
	}
	lines, held := 0, 0
	for _, l := range logs.FilterMessage("decision").All() {
		if l.ContextMap()["decision"] == string(audit.CircuitOpen) {
			lines++
			if h, ok := l.ContextMap()[logsample.Field].(int64); ok {
				held += int(h)
			}
		}
	}
	// Written once per window; the count of a window is written with the
	// next line, so a short storm shows one line. The storm lasts a second
	// on an idle machine, longer on a loaded one: at most one line per
	// window it spanned, and one more for the window it began in.
	if most := 2 + int(elapsed/logSampleWindow); lines < 1 || lines > most {
		t.Fatalf("%d log lines for %d circuit_open decisions over %s (at most %d)", lines, suppressed, elapsed.Round(time.Second), most)
	}
	if lines+held > suppressed {
		t.Fatalf("%d lines and %d held back for %d decisions", lines, held, suppressed)
	}
	if n := logs.FilterMessage("circuit breaker opened: collections are suppressed until the window clears").Len(); n != 1 {
		t.Fatalf("the circuit opening was logged %d times", n)
	}
}

// TestStoreOutageDoesNotFloodTheLog: when PostgreSQL refuses this replica's
// connections, every queue poll fails; the log says that the store does not
// answer once, then once that it answers again, and River's repeated fetch
// errors appear once per window with a count.
func TestStoreOutageDoesNotFloodTheLog(t *testing.T) {
	t.Parallel()
	dsn := testkit.PostgresDSN(t)
	core, logs := observer.New(zapcore.WarnLevel)
	e := setup(t, envOpts{driver: store.DriverPostgres, dsn: dsn, logs: core})
	e.submit(mdeAlert("before", defendertest.DevWorkstationID, "high"))
	e.waitEntry("before", func(*audit.Entry) bool { return true })

	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	name := strings.TrimPrefix(u.Path, "/")
	u.Path = "/postgres"
	admin, err := sql.Open("pgx", u.String())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	ctx := context.Background()
	if _, err := admin.ExecContext(ctx, `ALTER DATABASE `+name+` ALLOW_CONNECTIONS false`); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.ExecContext(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1`, name); err != nil {
		t.Fatal(err)
	}
	// Down for longer than a sampling window and a background tick.
	testkit.WaitUntil(t, 20*time.Second, "the outage to be noticed", func() bool {
		return logs.FilterMessage("the store does not answer: webhooks get 503 and queued work waits until it does").Len() > 0
	})
	time.Sleep(12 * time.Second) // the outage lasts; the assertion is on what it logged meanwhile
	if _, err := admin.ExecContext(ctx, `ALTER DATABASE `+name+` ALLOW_CONNECTIONS true`); err != nil {
		t.Fatal(err)
	}
	testkit.WaitUntil(t, 20*time.Second, "the recovery to be noticed", func() bool {
		return logs.FilterMessage("the store answers again").Len() > 0
	})

	perMessage := map[string]int{}
	held := 0
	for _, l := range logs.All() {
		perMessage[l.Message]++
		if h, ok := l.ContextMap()[logsample.Field].(int64); ok {
			held += int(h)
		}
	}
	t.Logf("lines by message during the outage: %v; %d similar lines held back", perMessage, held)
	if n := perMessage["the store does not answer: webhooks get 503 and queued work waits until it does"]; n != 1 {
		t.Fatalf("the outage was logged %d times, want once", n)
	}
	for msg, n := range perMessage {
		// Each kind at most once per 10 s window over about 15 s of outage.
		if n > 3 {
			t.Errorf("%q logged %d times during a 15 s outage", msg, n)
		}
	}
	if held == 0 {
		t.Errorf("no count of held-back lines: the outage's repeats were neither logged nor counted")
	}
	// Work resumes.
	e.submit(mdeAlert("after", defendertest.DevWorkstationID, "critical"))
	e.waitEntry("after", func(*audit.Entry) bool { return true })
}
