package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
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

// writeRules writes the current and candidate rule sets into dir.
func writeRules(t testing.TB, dir string) (current, candidate string) {
	t.Helper()
	current, candidate = filepath.Join(dir, "current.yaml"), filepath.Join(dir, "candidate.yaml")
	if err := os.WriteFile(current, []byte(currentRules), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(candidate, []byte(candidateRules()), 0o644); err != nil {
		t.Fatal(err)
	}
	return current, candidate
}

// TestCandidateRules: the candidate set loads, has 1,000 rules, and on the
// seeded alerts most match none; those that match, match late in the set.
func TestCandidateRules(t *testing.T) {
	t.Parallel()
	current, candidate := writeRules(t, t.TempDir())
	set, err := rules.LoadFiles(candidate)
	if err != nil {
		t.Fatal(err)
	}
	if set.Len() != 1000 || !set.NeedsMachine() {
		t.Fatalf("candidate: %d rules, needs machine %v; want 1000 rules reading machine.*", set.Len(), set.NeedsMachine())
	}
	order := map[string]int{}
	for i, name := range set.Names() {
		order[name] = i
	}
	gen, err := newSeedGen(defaultSeedSpec(4_000, time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)), current)
	if err != nil {
		t.Fatal(err)
	}
	fleet := map[string]*alert.Machine{}
	for i := range gen.fleet {
		fleet[gen.fleet[i].attrs.ID] = &gen.fleet[i].attrs
	}
	matched, generated := 0, 0
	for !gen.done() {
		r, err := gen.row()
		if err != nil {
			t.Fatal(err)
		}
		var a alert.Alert
		if err := json.Unmarshal([]byte(r.payload), &a); err != nil {
			t.Fatal(err)
		}
		match := set.Evaluate(&a, fleet[a.MachineID])
		if !match.Matched {
			continue
		}
		matched++
		if strings.HasPrefix(match.Rule, "generated-") {
			generated++
			if order[match.Rule] < 900 {
				t.Errorf("alert %s matches %s, early in the set", a.ID, match.Rule)
			}
		}
	}
	if matched > 4_000*30/100 {
		t.Errorf("%d of 4,000 alerts match a candidate rule; most should match none", matched)
	}
	if generated == 0 || generated > 4_000/100 {
		t.Errorf("%d alerts match a generated rule; want a few", generated)
	}
}

// TestSeedSQLite seeds a small SQLite store through the product's schema
// and checks it, then that a kept seed is reused.
func TestSeedSQLite(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	current, _ := writeRules(t, dir)
	spec := defaultSeedSpec(5_000, time.Now().UTC())
	path := filepath.Join(dir, "seed.db")
	s, err := seedSQLite(context.Background(), path, spec, true, current)
	if err != nil {
		t.Fatal(err)
	}
	if s.reused || s.remove != nil {
		t.Fatalf("first seed: reused %v, removable %v", s.reused, s.remove != nil)
	}
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=query_only(1)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	checkSeed(t, db, spec)
	checkReplaysItself(t, s, current)
	again, err := seedSQLite(context.Background(), path, spec, true, current)
	if err != nil {
		t.Fatal(err)
	}
	if !again.reused || !again.end.Equal(spec.end) {
		t.Fatalf("second seed: reused %v, end %s; want the first seed (%s) reused", again.reused, again.end, spec.end)
	}
}

// TestSeedPostgres seeds a small PostgreSQL database with COPY and checks
// it, and that the sequences were moved past the given ids.
func TestSeedPostgres(t *testing.T) {
	t.Parallel()
	base := testkit.PostgresDSN(t)
	current, _ := writeRules(t, t.TempDir())
	spec := defaultSeedSpec(5_000, time.Now().UTC())
	s, err := seedPostgres(context.Background(), base, spec, false, current)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.remove)
	db, err := sql.Open("pgx", s.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	checkSeed(t, db, spec)
	checkReplaysItself(t, s, current)
	var next int64
	if err := db.QueryRow(`SELECT nextval(pg_get_serial_sequence('responder_alert', 'id'))`).Scan(&next); err != nil {
		t.Fatal(err)
	}
	if next != int64(spec.alerts)+1 {
		t.Fatalf("next alert id %d, want %d", next, spec.alerts+1)
	}
}

// checkReplaysItself replays the seed's last 3 days, where every decision
// kept its snapshot, with the rules that took them: the product's replay
// must find every decision as recorded (the seed is what the service
// would have recorded).
func checkReplaysItself(t *testing.T, s *seeded, current string) {
	t.Helper()
	set, err := rules.LoadFiles(current)
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.OpenReadOnly(context.Background(), s.driver, s.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	rep, err := replay.Run(context.Background(), st, replay.Options{
		Rules:  set,
		Window: store.ReplayWindow{From: s.end.Add(-3 * 24 * time.Hour), To: s.end.Add(time.Second)},
		Limits: rules.CircuitLimits{PerHour: 200, MachinesPer10m: 50},
		Quota:  quota.Windows{PerMinute: 100, PerHour: 1500, Slack: quota.DefaultSlack},
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Alerts < 1000 || rep.Changed != 0 {
		t.Fatalf("replaying the seed's last 3 days with its own rules: %d alerts, %d changed, transitions %v; want none changed",
			rep.Alerts, rep.Changed, rep.Transitions)
	}
}

// checkSeed checks a seeded store: one decision per alert, taken a few
// milliseconds after it arrived, within the window; the decisions' mix;
// snapshots that decode.
func checkSeed(t *testing.T, db *sql.DB, spec seedSpec) {
	t.Helper()
	var alerts, entries, bad, undispatched int
	q := func(query string, dst *int) {
		t.Helper()
		if err := db.QueryRow(query).Scan(dst); err != nil {
			t.Fatalf("%s: %v", query, err)
		}
	}
	q(`SELECT COUNT(*) FROM responder_alert`, &alerts)
	q(`SELECT COUNT(*) FROM responder_audit`, &entries)
	q(`SELECT COUNT(*) FROM responder_alert WHERE dispatched = 0`, &undispatched)
	from, to := spec.end.Add(-spec.span).UnixMilli(), spec.end.UnixMilli()
	q(`SELECT COUNT(*) FROM responder_audit u JOIN responder_alert a ON a.id = u.alert_row_id
WHERE u.created_at < a.received_at OR u.created_at > a.received_at + 1000 OR a.received_at < `+strconv.FormatInt(from, 10)+` OR a.received_at >= `+strconv.FormatInt(to, 10), &bad)
	if alerts != spec.alerts || entries != spec.alerts || bad != 0 || undispatched != 0 {
		t.Fatalf("%d alerts, %d entries, %d out of place, %d undispatched; want %d, %d, 0, 0", alerts, entries, bad, undispatched, spec.alerts, spec.alerts)
	}
	counts := map[audit.Decision]int{}
	rows, err := db.Query(`SELECT decision, COUNT(*) FROM responder_audit GROUP BY decision`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var d string
		var n int
		if err := rows.Scan(&d, &n); err != nil {
			t.Fatal(err)
		}
		counts[audit.Decision(d)] = n
	}
	if counts[audit.NoMatch] < spec.alerts/2 || counts[audit.Collect] == 0 || counts[audit.Ignore] == 0 || counts[audit.DryRun] == 0 {
		t.Fatalf("decisions %v: want mostly no_match, some collect, ignore and dry_run", counts)
	}
	var snapshot string
	if err := db.QueryRow(`SELECT machine FROM responder_audit WHERE machine <> '' ORDER BY id DESC LIMIT 1`).Scan(&snapshot); err != nil {
		t.Fatal(err)
	}
	if m, err := audit.UnmarshalSnapshot(snapshot); err != nil || m == nil || !alert.ValidMachineID(m.ID) || len(m.Tags) == 0 {
		t.Fatalf("snapshot %s: %+v, %v", snapshot, m, err)
	}
}

// BenchmarkSeedGen is the generator's cost per alert, apart from the
// database's.
func BenchmarkSeedGen(b *testing.B) {
	current, _ := writeRules(b, b.TempDir())
	gen, err := newSeedGen(defaultSeedSpec(b.N, time.Now()), current)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for !gen.done() {
		if _, err := gen.row(); err != nil {
			b.Fatal(err)
		}
	}
}
