package replay_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/responder-dev/responder/alert"
	"github.com/responder-dev/responder/audit"
	"github.com/responder-dev/responder/internal/testkit"
	"github.com/responder-dev/responder/quota"
	"github.com/responder-dev/responder/replay"
	"github.com/responder-dev/responder/rules"
	"github.com/responder-dev/responder/store"
)

// The tests record an audit trail as the service does (store.Decide, the
// one decision function, View.Record, and the collection's end releasing
// its cooldown), then replay it. The expected differences are worked out
// by hand from the rules' meaning, not by calling the code under test.

var t0 = time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)

// machines of the trail and their tags.
var machines = map[string][]string{
	"m-ws-1":  {"workstation"},
	"m-ws-2":  {"workstation"},
	"m-srv-1": {"server"},
	"m-dc-1":  {"server", "domain-controller"},
}

func machineID(name string) string { return fmt.Sprintf("%040x", name) }

// sent is one alert of the trail: when it is decided, and whether its
// collection (if any) then fails and gives its cooldown back, failAfter
// later.
type sent struct {
	at        time.Duration // after t0
	id        string
	machine   string
	severity  string
	category  string
	source    alert.Source
	failAfter time.Duration
}

const rulesA = `rules:
  - name: never-dc
    when: '"domain-controller" in machine.tags'
    action: ignore
  - name: ransomware
    when: 'alert.category == "Ransomware"'
    cooldown: 2h
  - name: high-workstation
    when: 'alert.severity == "high" && "workstation" in machine.tags'
    cooldown: 30m
  - name: watch-medium
    when: 'alert.severity == "medium"'
    dry_run: true
`

type trail struct {
	st    *store.Store
	dsn   string
	alert map[string]sent
}

// record stores and decides the alerts in order as the service would with
// the rules of set and the circuit breaker's limits.
func record(t *testing.T, driver string, set *rules.Set, limits rules.CircuitLimits, alerts []sent, undecided ...sent) *trail {
	t.Helper()
	ctx := context.Background()
	dsn := filepath.Join(t.TempDir(), "responder.db")
	if driver == store.DriverPostgres {
		dsn = testkit.PostgresDSN(t)
	}
	st, err := store.Open(ctx, driver, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	tr := &trail{st: st, dsn: dsn, alert: map[string]sent{}}
	type release struct {
		at time.Time
		id int64
	}
	var releases []release
	releaseDue := func(now time.Time) {
		for len(releases) > 0 && !releases[0].at.After(now) {
			r := releases[0]
			releases = releases[1:]
			err := st.InTx(ctx, func(tx *sql.Tx) error {
				if _, err := st.Transition(ctx, tx, r.id, []audit.State{audit.Queued}, store.Change{State: store.Ptr(audit.Done), Outcome: store.Ptr(audit.Failed)}, r.at); err != nil {
					return err
				}
				return st.ReleaseCooldown(ctx, tx, r.id)
			})
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, s := range alerts {
		now := t0.Add(s.at)
		releaseDue(now)
		rowID := tr.store(t, s, now)
		var entry *audit.Entry
		err := st.Decide(ctx, now, store.StateOptions{Limits: limits}, func(v *store.View) error {
			a := s.alert()
			m := rules.Machine{}
			if set.NeedsMachine() {
				m.Attributes = &alert.Machine{ID: a.MachineID, Name: s.machine, Tags: machines[s.machine]}
			}
			d, err := rules.Decide(rules.Input{Alert: a, Machine: m, Rules: set, State: v, Now: now})
			if err != nil {
				return err
			}
			entry = d.Entry(a)
			return v.Record(rowID, entry, d.ClaimedCooldown())
		})
		if err != nil {
			t.Fatal(err)
		}
		if entry.Decision == audit.Collect && s.failAfter > 0 {
			releases = append(releases, release{at: now.Add(s.failAfter), id: entry.ID})
		}
	}
	releaseDue(t0.Add(1000 * time.Hour))
	for _, s := range undecided {
		tr.store(t, s, t0.Add(s.at))
	}
	return tr
}

// store stores one alert received at now and returns its row id.
func (tr *trail) store(t *testing.T, s sent, now time.Time) int64 {
	t.Helper()
	ctx := context.Background()
	in := store.NewIntake(tr.st, func() time.Time { return now }, nil, nil)
	defer in.Close()
	if _, err := in.Submit(ctx, []alert.Alert{*s.alert()}); err != nil {
		t.Fatal(err)
	}
	// The dispatcher's reads, per driver (SQLite: the one node reads,
	// then marks; PostgreSQL: takes, locking).
	var ids []int64
	var err error
	if tr.st.Driver == store.DriverSQLite {
		if ids, err = tr.st.Undispatched(ctx, 10); err == nil {
			err = tr.st.MarkDispatched(ctx, ids)
		}
	} else {
		_, err = tr.st.TakeUndispatched(ctx, 10, func(_ *sql.Tx, taken []int64) error { ids = taken; return nil })
	}
	if err != nil || len(ids) != 1 {
		t.Fatalf("undispatched rows %v, %v: want the one just stored", ids, err)
	}
	tr.alert[s.id] = s
	return ids[0]
}

func (s sent) alert() *alert.Alert {
	src := s.source
	if src == "" {
		src = alert.SourceDefender
	}
	return &alert.Alert{Source: src, ID: s.id, MachineID: machineID(s.machine), MachineName: s.machine,
		Severity: s.severity, Category: s.category, Title: "test alert " + s.id, Status: "new"}
}

func mustRules(t *testing.T, yaml string) *rules.Set {
	t.Helper()
	path := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	set, err := rules.LoadFiles(path)
	if err != nil {
		t.Fatal(err)
	}
	return set
}

func (tr *trail) replay(t *testing.T, set *rules.Set, limits rules.CircuitLimits, w store.ReplayWindow) *replay.Report {
	t.Helper()
	ro, err := store.OpenReadOnly(context.Background(), tr.st.Driver, tr.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if w.From.IsZero() {
		w = store.ReplayWindow{From: t0, To: t0.Add(48 * time.Hour), Source: w.Source}
	}
	r, err := replay.Run(context.Background(), ro, replay.Options{Rules: set, Window: w, Limits: limits,
		Quota: quota.Windows{PerMinute: 100, PerHour: 1500}, PageSize: 3})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// mix is the trail most tests replay: repeats within cooldown, a failed
// collection that gives its cooldown back, a domain controller, a dry run,
// and a burst that opens the circuit breaker (3 collections per hour).
func mix() []sent {
	return []sent{
		{at: 0, id: "a1", machine: "m-ws-1", severity: "high", category: "Malware"},                                               // collect high-workstation
		{at: 10 * time.Minute, id: "a2", machine: "m-ws-1", severity: "high", category: "Malware"},                                // cooldown (30m)
		{at: 40 * time.Minute, id: "a3", machine: "m-ws-1", severity: "high", category: "Malware"},                                // collect again: cooldown over
		{at: 41 * time.Minute, id: "a4", machine: "m-dc-1", severity: "high", category: "Ransomware"},                             // ignore never-dc
		{at: 42 * time.Minute, id: "a5", machine: "m-srv-1", severity: "medium", category: "Malware"},                             // dry_run watch-medium
		{at: 43 * time.Minute, id: "a6", machine: "m-srv-1", severity: "low", category: "Ransomware", failAfter: 5 * time.Minute}, // collect ransomware; fails at 48m
		{at: 50 * time.Minute, id: "a7", machine: "m-srv-1", severity: "low", category: "Ransomware"},                             // cooldown given back: circuit open (3 in the hour)
		{at: 55 * time.Minute, id: "a8", machine: "m-ws-2", severity: "low", category: "Malware"},                                 // no_match
		{at: 3 * time.Hour, id: "a9", machine: "m-srv-1", severity: "low", category: "Ransomware"},                                // collect (window cleared, no cooldown held)
		{at: 3*time.Hour + time.Minute, id: "a10", machine: "m-srv-1", severity: "low", category: "Ransomware"},                   // cooldown (2h)
	}
}

var limitsA = rules.CircuitLimits{PerHour: 3, MachinesPer10m: 50}

// TestReplaySameRulesReproducesTheTrail: replaying the rules that recorded
// the trail changes nothing, on both drivers.
func TestReplaySameRulesReproducesTheTrail(t *testing.T) {
	t.Parallel()
	for _, driver := range []string{store.DriverSQLite, store.DriverPostgres} {
		t.Run(driver, func(t *testing.T) {
			t.Parallel()
			set := mustRules(t, rulesA)
			tr := record(t, driver, set, limitsA, mix(), sent{at: 4 * time.Hour, id: "late", machine: "m-ws-2", severity: "high"})
			r := tr.replay(t, set, limitsA, store.ReplayWindow{})
			want := map[audit.Decision]int{audit.Collect: 4, audit.Cooldown: 2, audit.Ignore: 1, audit.DryRun: 1, audit.CircuitOpen: 1, audit.NoMatch: 1}
			for _, d := range audit.Decisions() {
				if r.Decisions.Current[d] != want[d] || r.Decisions.Candidate[d] != want[d] {
					t.Errorf("%s: current %d, candidate %d, want %d both", d, r.Decisions.Current[d], r.Decisions.Candidate[d], want[d])
				}
			}
			if r.Alerts != 10 || r.Changed != 0 || len(r.Transitions) != 0 || len(r.NewlyCollected) != 0 || len(r.NewlySpared) != 0 {
				t.Errorf("alerts %d changed %d transitions %v newly collected %v spared %v: want 10 alerts, no change",
					r.Alerts, r.Changed, r.Transitions, r.NewlyCollected, r.NewlySpared)
			}
			if r.Undecided != 1 {
				t.Errorf("undecided %d, want 1", r.Undecided)
			}
			for _, h := range r.Rules {
				if h.Current != h.Candidate {
					t.Errorf("rule %s: current %d, candidate %d", h.Name, h.Current, h.Candidate)
				}
			}
			if r.Quota.PeakPerMinute != 1 || r.Quota.PeakPerHour != 3 || r.Quota.LateCollections != 0 {
				t.Errorf("quota %+v: want peaks 1/min, 3/h, none late", r.Quota)
			}
		})
	}
}

// TestReplayCandidate: a candidate that narrows a rule, adds one and
// shortens a cooldown reports exactly the transitions worked out by hand.
func TestReplayCandidate(t *testing.T) {
	t.Parallel()
	for _, driver := range []string{store.DriverSQLite, store.DriverPostgres} {
		t.Run(driver, func(t *testing.T) {
			t.Parallel()
			tr := record(t, driver, mustRules(t, rulesA), limitsA, mix())
			// ransomware narrowed to servers that are not ...: the same on
			// this trail but for its cooldown, 2h -> 1m; high-workstation's
			// cooldown 30m -> 5m; a new rule collects low Malware alerts on
			// workstations.
			candidate := mustRules(t, `rules:
  - name: never-dc
    when: '"domain-controller" in machine.tags'
    action: ignore
  - name: ransomware
    when: 'alert.category == "Ransomware" && "server" in machine.tags'
    cooldown: 1m
  - name: high-workstation
    when: 'alert.severity == "high" && "workstation" in machine.tags'
    cooldown: 5m
  - name: watch-medium
    when: 'alert.severity == "medium"'
    dry_run: true
  - name: low-malware-workstation
    when: 'alert.category == "Malware" && alert.severity == "low" && "workstation" in machine.tags'
`)
			r := tr.replay(t, candidate, limitsA, store.ReplayWindow{})
			// By hand, in order (circuit: 3 collections per hour):
			// a1 collect (1). a2 at 10m: 5m cooldown over -> collect (2):
			// cooldown -> collect. a3 at 40m collect (3). a4 ignore. a5
			// dry_run. a6 at 43m: 3 in the last hour -> circuit_open
			// (was collect). a7 at 50m: circuit_open (as recorded). a8 at
			// 55m low Malware on a workstation: circuit_open (was no_match).
			// a9 at 3h collect. a10 at 3h01: cooldown 1m over -> collect
			// (was cooldown).
			want := map[[2]audit.Decision]int{
				{audit.Cooldown, audit.Collect}:    2, // a2, a10
				{audit.Collect, audit.CircuitOpen}: 1, // a6
				{audit.NoMatch, audit.CircuitOpen}: 1, // a8
			}
			got := map[[2]audit.Decision]int{}
			for _, tr := range r.Transitions {
				got[[2]audit.Decision{tr.From, tr.To}] = tr.Count
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("transitions %v, want %v", got, want)
			}
			if r.Changed != 4 {
				t.Errorf("changed %d, want 4", r.Changed)
			}
			if ids := changeIDs(r.NewlyCollected); ids != "a2 a10" {
				t.Errorf("newly collected %s, want a2 a10", ids)
			}
			if ids := changeIDs(r.NewlySpared); ids != "a6" {
				t.Errorf("newly spared %s, want a6", ids)
			}
			sp := r.NewlySpared[0]
			if sp.Decision != audit.CircuitOpen || sp.CurrentRule != "ransomware" || sp.MachineID != machineID("m-srv-1") || !strings.Contains(sp.Reason, "circuit breaker") {
				t.Errorf("spared a6 = %+v", sp)
			}
			hits := map[string][2]int{}
			for _, h := range r.Rules {
				hits[h.Name] = [2]int{h.Current, h.Candidate}
			}
			if hits["low-malware-workstation"] != [2]int{0, 1} || hits["high-workstation"] != [2]int{3, 3} {
				t.Errorf("rule hits %v", hits)
			}
		})
	}
}

func changeIDs(cs []replay.Change) string {
	var ids []string
	for _, c := range cs {
		ids = append(ids, c.AlertID)
	}
	return strings.Join(ids, " ")
}

// TestReplayUnknownAttributes: alerts decided by rules that read no
// machine attribute kept no snapshot; a candidate that reads machine.*
// cannot evaluate them, and says so, rather than decide on empty
// attributes (an exclusion by tag would fail open).
func TestReplayUnknownAttributes(t *testing.T) {
	t.Parallel()
	noMachine := mustRules(t, "rules:\n  - name: ransomware\n    when: 'alert.category == \"Ransomware\"'\n")
	tr := record(t, store.DriverSQLite, noMachine, rules.CircuitLimits{}, []sent{
		{at: 0, id: "r1", machine: "m-dc-1", severity: "high", category: "Ransomware"},
		{at: time.Minute, id: "r2", machine: "m-ws-1", severity: "high", category: "Malware"},
	})
	r := tr.replay(t, mustRules(t, rulesA), rules.CircuitLimits{}, store.ReplayWindow{})
	if r.UnknownAttributes != 2 || r.Decisions.Candidate[audit.NoMatch] != 2 {
		t.Fatalf("unknown %d, candidate %v: want both alerts unknown and no_match", r.UnknownAttributes, r.Decisions.Candidate)
	}
	if len(r.NewlySpared) != 1 || !strings.Contains(r.NewlySpared[0].Reason, "attributes unknown") {
		t.Fatalf("spared %+v: want r1, not evaluated for unknown attributes", r.NewlySpared)
	}
}

// TestReplayStartsFromThePriorState: a window that starts after a
// collection sees its cooldown, and its collections in the circuit
// breaker's hour, as the service did.
func TestReplayStartsFromThePriorState(t *testing.T) {
	t.Parallel()
	set := mustRules(t, rulesA)
	tr := record(t, store.DriverSQLite, set, limitsA, mix())
	w := store.ReplayWindow{From: t0.Add(45 * time.Minute), To: t0.Add(48 * time.Hour)}
	r := tr.replay(t, set, limitsA, w)
	if r.Alerts != 4 || r.Changed != 0 {
		t.Fatalf("alerts %d, changed %d (%v): want a7 to a10 replayed as recorded", r.Alerts, r.Changed, r.Transitions)
	}
	if r.Decisions.Candidate[audit.CircuitOpen] != 1 || r.Decisions.Candidate[audit.Cooldown] != 1 {
		t.Fatalf("candidate %v: a7 must see the 3 collections before the window, a10 a9's cooldown", r.Decisions.Candidate)
	}
}

// TestReplaySource: --source keeps one source's alerts.
func TestReplaySource(t *testing.T) {
	t.Parallel()
	set := mustRules(t, rulesA)
	alerts := mix()
	alerts[7].source = alert.SourceAlertmanager
	tr := record(t, store.DriverSQLite, set, limitsA, alerts)
	r := tr.replay(t, set, limitsA, store.ReplayWindow{Source: string(alert.SourceAlertmanager)})
	if r.Alerts != 1 || r.Decisions.Current[audit.NoMatch] != 1 {
		t.Fatalf("alerts %d, current %v: want the one alertmanager alert", r.Alerts, r.Decisions.Current)
	}
}

// TestReplayQuota: collections beyond the per-minute quota are counted
// late, with the peak they would need.
func TestReplayQuota(t *testing.T) {
	t.Parallel()
	set := mustRules(t, "rules:\n  - name: all\n    when: 'true'\n    cooldown: 1s\n")
	var alerts []sent
	for i := range 5 {
		alerts = append(alerts, sent{at: time.Duration(i) * time.Second, id: fmt.Sprintf("q%d", i), machine: "m-ws-1"})
	}
	tr := record(t, store.DriverSQLite, set, rules.CircuitLimits{}, alerts)
	ro, err := store.OpenReadOnly(context.Background(), store.DriverSQLite, tr.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	r, err := replay.Run(context.Background(), ro, replay.Options{Rules: set, Window: store.ReplayWindow{From: t0, To: t0.Add(time.Hour)},
		Quota: quota.Windows{PerMinute: 2, PerHour: 100}})
	if err != nil {
		t.Fatal(err)
	}
	q := r.Quota
	// Sent at 0s, 1s, 60s, 61s and 120s: the fifth waits 116 s.
	if q.PeakPerMinute != 5 || q.LateCollections != 3 || q.MaxDelaySeconds != 116 {
		t.Fatalf("quota %+v: want peak 5/min, 3 late, the last 116 s late", q)
	}
}

// TestReplayEmptyWindow: a window without decisions says why, in one line.
func TestReplayEmptyWindow(t *testing.T) {
	t.Parallel()
	set := mustRules(t, rulesA)
	tr := record(t, store.DriverSQLite, set, limitsA, mix())
	ro, err := store.OpenReadOnly(context.Background(), store.DriverSQLite, tr.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	cases := []struct {
		w    store.ReplayWindow
		want string
	}{
		{store.ReplayWindow{From: t0.Add(-48 * time.Hour), To: t0.Add(-24 * time.Hour)}, "ends before the store's oldest decision (2026-12-01T09:00:00Z)"},
		{store.ReplayWindow{From: t0.Add(24 * time.Hour), To: t0.Add(48 * time.Hour)}, "starts after the store's newest decision"},
		{store.ReplayWindow{From: t0.Add(2 * time.Hour), To: t0.Add(150 * time.Minute)}, "no alert was decided from 2026-12-01T11:00:00Z to 2026-12-01T11:30:00Z"},
		{store.ReplayWindow{From: t0, To: t0.Add(48 * time.Hour), Source: "grafana"}, "no alert of source grafana was decided"},
	}
	for _, tc := range cases {
		_, err := replay.Run(context.Background(), ro, replay.Options{Rules: set, Window: tc.w})
		if err == nil || !strings.Contains(err.Error(), tc.want) || !replay.IsBadInput(err) || !errors.Is(err, replay.ErrEmptyWindow) || strings.Contains(err.Error(), "\n") {
			t.Errorf("window %v: error %v, want one line with %q", tc.w, err, tc.want)
		}
	}
}

func TestParseWindow(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		since, from, to, source string
		want                    string // window, or error text
	}{
		{"", "", "", "", "2026-11-28T12:00:00Z..2026-12-05T12:00:00Z"},
		{"36h", "", "", "graph", "2026-12-04T00:00:00Z..2026-12-05T12:00:00Z"},
		{"", "2026-12-01T00:00:00Z", "2026-12-02T00:00:00Z", "", "2026-12-01T00:00:00Z..2026-12-02T00:00:00Z"},
		{"", "2026-12-01T00:00:00Z", "", "", "2026-12-01T00:00:00Z..2026-12-05T12:00:00Z"},
		{"", "2026-12-02T00:00:00Z", "2026-12-01T00:00:00Z", "", "from (2026-12-02T00:00:00Z) is not before to (2026-12-01T00:00:00Z)"},
		{"7d", "2026-12-01T00:00:00Z", "", "", "either since or from/to"},
		{"-1h", "", "", "", `since "-1h" is not a positive duration`},
		{"", "yesterday", "", "", `from "yesterday" is not an RFC 3339 time`},
		{"", "", "2026-12-01T00:00:00Z", "", "to needs from"},
		{"", "", "", "splunk", `unknown source "splunk"`},
	}
	for _, tc := range cases {
		w, err := replay.ParseWindow(tc.since, tc.from, tc.to, tc.source, now)
		got := fmt.Sprintf("%s..%s", w.From.UTC().Format(time.RFC3339), w.To.UTC().Format(time.RFC3339))
		if err != nil {
			got = err.Error()
			if !replay.IsBadInput(err) {
				t.Errorf("%+v: error %v is not bad input", tc, err)
			}
		}
		if !strings.Contains(got, tc.want) {
			t.Errorf("%+v: got %q, want %q", tc, got, tc.want)
		}
	}
}

// TestReplayPacedSameReport: the paced replay (the API's) reports exactly
// what the parallel one does.
func TestReplayPacedSameReport(t *testing.T) {
	t.Parallel()
	tr := record(t, store.DriverSQLite, mustRules(t, rulesA), limitsA, mix())
	candidate := mustRules(t, strings.Replace(rulesA, "cooldown: 2h", "cooldown: 1m", 1))
	ro, err := store.OpenReadOnly(context.Background(), store.DriverSQLite, tr.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	run := func(duty float64) string {
		r, err := replay.Run(context.Background(), ro, replay.Options{Rules: candidate, Limits: limitsA, Duty: duty, PageSize: 2,
			Window: store.ReplayWindow{From: t0, To: t0.Add(48 * time.Hour)}, Quota: quota.Windows{PerMinute: 100, PerHour: 1500}})
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(r)
		return string(b)
	}
	parallel, paced := run(0), run(0.9)
	if parallel != paced {
		t.Fatalf("paced report differs:\n%s\n%s", paced, parallel)
	}
	if !strings.Contains(paced, `"changed":1`) {
		t.Fatalf("the candidate changes nothing: %s", paced)
	}
}
