package pipeline

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/riverqueue/river"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/responder-dev/responder/alert"
	"github.com/responder-dev/responder/audit"
	"github.com/responder-dev/responder/defender/defendertest"
	"github.com/responder-dev/responder/internal/testkit"
	"github.com/responder-dev/responder/metrics"
	"github.com/responder-dev/responder/store"
)

// doorRules read no machine attribute; "count" fails at run time on
// every alert (no such label), which counts as not matching and is
// reported in the reason and the logs.
const doorRules = `
rules:
  - name: ignore-informational
    when: 'alert.severity == "informational"'
    action: ignore
  - name: count
    when: 'int(alert.labels["count"]) > 3'
  - name: high
    when: 'alert.severity == "high"'
`

// doorAlerts are decided at intake (ignore, no match), in the queue (a
// collection; a machine named only by host name), or not at all (a
// duplicate).
func doorAlerts() []alert.Alert {
	byName := mdeAlert("by-name", "", "low")
	byName.MachineName = "ws-1.example.com"
	return []alert.Alert{
		mdeAlert("info", defendertest.DevWorkstationID, "informational"),
		mdeAlert("low", defendertest.DevWorkstationID, "low"),
		mdeAlert("high", defendertest.DevWorkstationID, "high"),
		byName,
		mdeAlert("low", defendertest.DevWorkstationID, "low"),
		mdeAlert("medium", fmt.Sprintf("%040x", 0xd00), "medium"),
	}
}

// TestDecidedAtIntakeAsInTheQueue: with rules that read no machine
// attribute, an alert no rule with an action matches is decided at intake,
// in the commit that stores it, and never becomes a job; it is recorded,
// counted and logged exactly as the evaluate worker records, counts and
// logs it. The others still go through the queue.
func TestDecidedAtIntakeAsInTheQueue(t *testing.T) {
	t.Parallel()
	for _, driver := range []string{store.DriverSQLite, store.DriverPostgres} {
		t.Run(driver, func(t *testing.T) {
			t.Parallel()
			run := func(queueAll bool) doorOutcome {
				e, logs := doorEnv(t, driver, doorRules, queueAll)
				r := e.submit(doorAlerts()...)
				if want := []bool{false, false, false, false, true, false}; !slices.Equal(r.Duplicate, want) {
					t.Fatalf("duplicates %v, want %v", r.Duplicate, want)
				}
				for _, id := range []string{"info", "low", "high", "by-name", "medium"} {
					e.waitEntry(id, func(*audit.Entry) bool { return true })
				}
				return observeDecisions(t, e, logs, "ignore-informational", "count", "high")
			}
			door, queue := run(false), run(true)
			if want := []string{"by-name", "high"}; !slices.Equal(door.jobbed, want) {
				t.Errorf("with intake deciding, the alerts that became jobs are %v, want %v", door.jobbed, want)
			}
			if want := []string{"by-name", "high", "info", "low", "medium"}; !slices.Equal(queue.jobbed, want) {
				t.Errorf("with every decision queued, the alerts that became jobs are %v, want %v", queue.jobbed, want)
			}
			door.sameAs(t, queue)
			if len(door.entries) != 5 || door.entries["info"].Decision != audit.Ignore || door.entries["low"].Decision != audit.NoMatch ||
				door.entries["high"].Decision != audit.DryRun {
				t.Errorf("entries %+v", door.entries)
			}
		})
	}
}

// doorEnv sets up a dry-run pipeline on driver with rules, deciding at
// intake or (queueAll) queueing every decision, and observing its info logs.
func doorEnv(t *testing.T, driver, rules string, queueAll bool) (*testEnv, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.InfoLevel)
	o := envOpts{rulesSrc: rules, logs: core, cfg: Config{QueueEveryDecision: queueAll, DryRun: true}}
	if driver == store.DriverPostgres {
		o.driver, o.dsn = driver, testkit.PostgresDSN(t)
	}
	return setup(t, o), logs
}

// doorOutcome is what a test run decided: the audit entries by alert id
// (without what only the store's clock and counters set), the decision
// log lines, responder_decisions_total, and the alerts that became jobs.
type doorOutcome struct {
	entries  map[string]audit.Entry
	machines map[string]string // the entries' machine snapshots, as JSON
	logs     []string
	counts   map[string]float64
	jobbed   []string
}

// observeDecisions reads what e decided, counting the decisions of rules.
func observeDecisions(t *testing.T, e *testEnv, logs *observer.ObservedLogs, rules ...string) doorOutcome {
	t.Helper()
	out := doorOutcome{entries: map[string]audit.Entry{}, machines: map[string]string{}, counts: map[string]float64{}}
	rowAlert := map[int64]string{}
	for _, en := range e.entries() {
		rowAlert[en.AlertRowID] = en.AlertID
		c := *en
		c.ID, c.AlertRowID, c.CreatedAt, c.UpdatedAt = 0, 0, time.Time{}, time.Time{}
		if c.Machine != nil {
			m := *c.Machine
			m.LastSeen = time.Time{} // each run's simulator sets its own
			c.Machine = &m
		}
		snapshot, err := json.Marshal(c.Machine)
		if err != nil {
			t.Fatal(err)
		}
		out.machines[en.AlertID], c.Machine = string(snapshot), nil
		out.entries[en.AlertID] = c
	}
	// A decision is logged and counted once its entry is committed: the
	// entry can be read a moment before its line is written.
	testkit.WaitUntil(t, 20*time.Second, "a decision line for every entry", func() bool {
		return logs.FilterMessage("decision").Len() >= len(out.entries)
	})
	for _, l := range logs.All() {
		if l.Message == "decision" || l.Message == "rule evaluation error" {
			f := l.ContextMap()
			delete(f, "audit_id")
			out.logs = append(out.logs, fmt.Sprint(l.Level, " ", l.Message, " ", f))
		}
	}
	slices.Sort(out.logs)
	for _, rule := range append(rules, metrics.NoRule) {
		for _, d := range audit.Decisions() {
			if v := testutil.ToFloat64(e.m.Decisions.WithLabelValues(rule, string(d))); v != 0 {
				out.counts[rule+"/"+string(d)] = v
			}
		}
	}
	jobs, err := e.p.client.JobList(context.Background(), river.NewJobListParams().Kinds(evaluateArgs{}.Kind()).First(1000))
	if err != nil {
		t.Fatal(err)
	}
	for _, j := range jobs.Jobs {
		var args evaluateArgs
		if err := json.Unmarshal(j.EncodedArgs, &args); err != nil {
			t.Fatal(err)
		}
		for _, id := range args.AlertRowIDs {
			out.jobbed = append(out.jobbed, rowAlert[id])
		}
	}
	slices.Sort(out.jobbed)
	return out
}

// sameAs fails t unless o (intake deciding) recorded, logged and counted
// exactly what queue (every decision queued) did.
func (o doorOutcome) sameAs(t *testing.T, queue doorOutcome) {
	t.Helper()
	if fmt.Sprint(o.entries) != fmt.Sprint(queue.entries) {
		t.Errorf("audit entries differ:\nintake: %+v\nqueue:  %+v", o.entries, queue.entries)
	}
	if fmt.Sprint(o.machines) != fmt.Sprint(queue.machines) {
		t.Errorf("machine snapshots differ:\nintake: %v\nqueue:  %v", o.machines, queue.machines)
	}
	if !slices.Equal(o.logs, queue.logs) {
		t.Errorf("log lines differ:\nintake: %q\nqueue:  %q", o.logs, queue.logs)
	}
	if fmt.Sprint(o.counts) != fmt.Sprint(queue.counts) {
		t.Errorf("responder_decisions_total differs:\nintake: %v\nqueue:  %v", o.counts, queue.counts)
	}
}

// tagRules read machine.tags: every alert needs its machine's attributes.
const tagRules = `
rules:
  - name: never-domain-controllers
    when: '"domain-controller" in machine.tags'
    action: ignore
  - name: critical-workstations
    when: 'alert.severity == "critical" && "workstation" in machine.tags'
`

// TestDecidedAtIntakeWithACachedMachine: with rules that read machine.*,
// an alert whose machine's attributes are cached (read for an earlier
// alert) and that no rule with an action matches is decided at intake,
// with those attributes, exactly as the queue decides it; an alert whose
// machine is not cached goes through the queue, which reads it.
func TestDecidedAtIntakeWithACachedMachine(t *testing.T) {
	t.Parallel()
	for _, driver := range []string{store.DriverSQLite, store.DriverPostgres} {
		t.Run(driver, func(t *testing.T) {
			t.Parallel()
			run := func(queueAll bool) doorOutcome {
				e, logs := doorEnv(t, driver, tagRules, queueAll)
				// The first alert of each machine reads it (and caches it).
				e.submit(mdeAlert("ws-first", defendertest.DevWorkstationID, "low"), mdeAlert("dc-first", defendertest.DevDomainControllerID, "low"))
				for _, id := range []string{"ws-first", "dc-first"} {
					e.waitEntry(id, func(*audit.Entry) bool { return true })
				}
				e.submit(
					mdeAlert("ws-low", defendertest.DevWorkstationID, "low"),           // cached, no match
					mdeAlert("ws-critical", defendertest.DevWorkstationID, "critical"), // cached, an action
					mdeAlert("dc-second", defendertest.DevDomainControllerID, "high"),  // cached, ignored
					mdeAlert("srv-first", defendertest.DevServerID, "low"),             // not cached
				)
				for _, id := range []string{"ws-low", "ws-critical", "dc-second", "srv-first"} {
					e.waitEntry(id, func(*audit.Entry) bool { return true })
				}
				return observeDecisions(t, e, logs, "never-domain-controllers", "critical-workstations")
			}
			door, queue := run(false), run(true)
			if want := []string{"dc-first", "srv-first", "ws-critical", "ws-first"}; !slices.Equal(door.jobbed, want) {
				t.Errorf("with intake deciding, the alerts that became jobs are %v, want %v", door.jobbed, want)
			}
			if want := []string{"dc-first", "dc-second", "srv-first", "ws-critical", "ws-first", "ws-low"}; !slices.Equal(queue.jobbed, want) {
				t.Errorf("with every decision queued, the alerts that became jobs are %v, want %v", queue.jobbed, want)
			}
			door.sameAs(t, queue)
			for id, want := range map[string]audit.Decision{"dc-second": audit.Ignore, "ws-low": audit.NoMatch, "ws-critical": audit.DryRun} {
				if d := door.entries[id]; d.Decision != want || !strings.Contains(door.machines[id], "workstation") && !strings.Contains(door.machines[id], "domain-controller") {
					t.Errorf("%s: %+v with machine %s, want %s with the machine's tags recorded", id, d, door.machines[id], want)
				}
			}
		})
	}
}
