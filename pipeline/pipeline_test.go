package pipeline

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"

	"github.com/responder-dev/responder/alert"
	"github.com/responder-dev/responder/audit"
	"github.com/responder-dev/responder/defender"
	"github.com/responder-dev/responder/defender/defendertest"
	"github.com/responder-dev/responder/internal/testkit"
	"github.com/responder-dev/responder/metrics"
	"github.com/responder-dev/responder/quota"
	"github.com/responder-dev/responder/rules"
	"github.com/responder-dev/responder/store"
)

const testRules = `
rules:
  - name: never-domain-controllers
    when: '"domain-controller" in machine.tags'
    action: ignore
  - name: high-severity
    when: 'alert.severity in ["high", "critical"]'
    cooldown: 24h
`

// testEnv is one responder pipeline wired to a simulator.
type testEnv struct {
	t     *testing.T
	sim   *defendertest.Simulator
	store *store.Store
	p     *Pipeline
	m     *metrics.Metrics
}

type envOpts struct {
	driver   string
	dsn      string // postgres: an existing database
	sim      *defendertest.Simulator
	cfg      Config
	quota    quota.Limiter
	noStart  bool
	simOpts  defendertest.Options
	rulesSrc string
	// clientTimeout is the Defender client's request timeout (default 5s).
	clientTimeout time.Duration
	// transport, when set, carries the Defender client's requests.
	transport http.RoundTripper
	// client, when set, changes the Defender client's configuration.
	client func(*defender.Config)
	// logs, when set, receives the pipeline's logs (default: the test log
	// at warn level).
	logs zapcore.Core
}

func newSim(t *testing.T, o defendertest.Options) *defendertest.Simulator {
	t.Helper()
	o.TenantID, o.ClientID, o.ClientSecret = defendertest.DevTenantID, defendertest.DevClientID, defendertest.DevClientSecret
	if o.Machines == nil {
		o.Machines = defendertest.DevMachines()
	}
	if o.PendingFor == 0 {
		o.PendingFor = 50 * time.Millisecond
	}
	if o.InProgressFor == 0 {
		o.InProgressFor = 50 * time.Millisecond
	}
	sim, _ := defendertest.NewServer(t, o)
	return sim
}

func setup(t *testing.T, o envOpts) *testEnv {
	t.Helper()
	if o.sim == nil {
		o.sim = newSim(t, o.simOpts)
	}
	if o.driver == "" {
		o.driver = store.DriverSQLite
		o.dsn = filepath.Join(t.TempDir(), "responder.db")
	}
	logger := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	if o.logs != nil {
		logger = zap.New(zapcore.NewTee(logger.Core(), o.logs))
	}
	m := metrics.New(prometheus.NewRegistry())
	ctx := context.Background()
	store, err := store.Open(ctx, o.driver, o.dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Close)
	if o.clientTimeout == 0 {
		o.clientTimeout = 5 * time.Second
	}
	var hc *http.Client
	if o.transport != nil {
		hc = &http.Client{Transport: o.transport}
	}
	dc := defender.Config{
		APIURL: o.sim.URL(), TokenURL: o.sim.TokenURL(), TenantID: defendertest.DevTenantID,
		ClientID: defendertest.DevClientID, ClientSecret: defendertest.DevClientSecret,
		UserAgent: "responder/test", Timeout: o.clientTimeout, HTTPClient: hc,
	}
	if o.client != nil {
		o.client(&dc)
	}
	api, err := defender.New(dc, m, logger, defender.WithLimiter(defender.GroupActions, nil))
	if err != nil {
		t.Fatal(err)
	}
	src := o.rulesSrc
	if src == "" {
		src = testRules
	}
	rulesPath := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(rulesPath, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	rm, err := rules.NewManager([]string{rulesPath}, m, logger)
	if err != nil {
		t.Fatal(err)
	}
	cfg := o.cfg
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 50 * time.Millisecond
	}
	if cfg.RequestTimeout == 0 {
		cfg.RequestTimeout = 100 * time.Millisecond
	}
	if cfg.RetryBase == 0 {
		cfg.RetryBase, cfg.RetryCap = 10*time.Millisecond, 100*time.Millisecond
	}
	p, err := New(store, api, o.quota, rm, m, logger, cfg)
	if err != nil {
		t.Fatal(err)
	}
	env := &testEnv{t: t, sim: o.sim, store: store, p: p, m: m}
	if !o.noStart {
		env.start()
	}
	return env
}

func (e *testEnv) start() {
	e.t.Helper()
	if err := e.p.Start(context.Background()); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = e.p.Stop(ctx)
	})
}

func mdeAlert(id, machine, severity string) alert.Alert {
	return alert.Alert{ID: id, Source: alert.SourceDefender, Severity: severity, Status: alert.StatusNew, MachineID: machine, Title: "test"}
}

func (e *testEnv) submit(alerts ...alert.Alert) alert.Receipt {
	e.t.Helper()
	r, err := e.p.Submit(context.Background(), alerts)
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

func (e *testEnv) entries() []*audit.Entry {
	e.t.Helper()
	es, err := e.store.Entries(context.Background(), store.Filter{Limit: 10000})
	if err != nil {
		e.t.Fatal(err)
	}
	return es
}

func (e *testEnv) entryFor(alertID string) *audit.Entry {
	for _, en := range e.entries() {
		if en.AlertID == alertID {
			return en
		}
	}
	return nil
}

func (e *testEnv) waitEntry(alertID string, cond func(*audit.Entry) bool) *audit.Entry {
	e.t.Helper()
	var got *audit.Entry
	testkit.WaitUntil(e.t, 20*time.Second, "audit entry of "+alertID, func() bool {
		got = e.entryFor(alertID)
		return got != nil && cond(got)
	})
	return got
}

// posts returns the collect POST requests the simulator answered, by path.
func posts(sim *defendertest.Simulator, verb string) []defendertest.Request {
	var out []defendertest.Request
	for _, r := range sim.Requests() {
		if r.Method == "POST" && strings.HasSuffix(r.Path, "/"+verb) && r.Status == 201 {
			out = append(out, r)
		}
	}
	return out
}

func TestCollectTrackedToSucceeded(t *testing.T) {
	t.Parallel()
	e := setup(t, envOpts{})
	id := "da637472900382838869_1364969609"
	r := e.submit(mdeAlert(id, defendertest.DevWorkstationID, "high"))
	if r.Duplicate[0] {
		t.Fatal("first delivery is a duplicate")
	}
	got := e.waitEntry(id, func(en *audit.Entry) bool { return en.State == audit.Done && en.ActionStatus != "" })
	if got.Decision != audit.Collect || got.Outcome != audit.Created || got.ActionStatus != "Succeeded" || got.Rule != "high-severity" {
		t.Fatalf("entry = %+v", got)
	}
	ps := posts(e.sim, "collectInvestigationPackage")
	if len(ps) != 1 {
		t.Fatalf("%d POSTs, want 1", len(ps))
	}
	var body map[string]string
	if err := json.Unmarshal(ps[0].Body, &body); err != nil || body["Comment"] != "Collect forensics due to alert "+id || len(body) != 1 {
		t.Fatalf("POST body = %s", ps[0].Body)
	}
	if v := testutil.ToFloat64(e.m.Collections.WithLabelValues("created")); v != 1 {
		t.Fatalf("collections created = %v", v)
	}
	if v := testutil.ToFloat64(e.m.ActionsFinished.WithLabelValues("Succeeded")); v != 1 {
		t.Fatalf("actions finished = %v", v)
	}
	if v := testutil.ToFloat64(e.m.Decisions.WithLabelValues("high-severity", "collect")); v != 1 {
		t.Fatalf("decisions = %v", v)
	}

	// The same alert again is a duplicate; another alert on the machine
	// within the cooldown is decided "cooldown". Neither posts.
	if r := e.submit(mdeAlert(id, defendertest.DevWorkstationID, "high")); !r.Duplicate[0] {
		t.Fatal("redelivery not detected as duplicate")
	}
	e.submit(mdeAlert("da2", defendertest.DevWorkstationID, "critical"))
	cd := e.waitEntry("da2", func(*audit.Entry) bool { return true })
	if cd.Decision != audit.Cooldown || !strings.Contains(cd.Reason, "cooldown of 24h0m0s") {
		t.Fatalf("second alert: %+v", cd)
	}
	if n := len(posts(e.sim, "collectInvestigationPackage")); n != 1 {
		t.Fatalf("%d POSTs after duplicate and cooldown, want 1", n)
	}
}

// TestFailedActionReleasesCooldown: an action that ends Failed or TimeOut
// collected nothing, so the next alert for the machine may collect again;
// one that was Cancelled (somebody stopped it) keeps the cooldown.
func TestFailedActionReleasesCooldown(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		final string
		next  audit.Decision // decision of the next alert
	}{
		{"Failed", audit.Collect},
		{"TimeOut", audit.Collect},
		{"Cancelled", audit.Cooldown},
	} {
		t.Run(c.final, func(t *testing.T) {
			t.Parallel()
			sim := newSim(t, defendertest.Options{})
			sim.SetFinalStatus(defendertest.DevWorkstationID, c.final)
			e := setup(t, envOpts{sim: sim})
			e.submit(mdeAlert("first-"+c.final, defendertest.DevWorkstationID, "high"))
			first := e.waitEntry("first-"+c.final, func(en *audit.Entry) bool { return en.State == audit.Done && en.ActionStatus != "" })
			if first.ActionStatus != c.final {
				t.Fatalf("first = %+v", first)
			}
			e.submit(mdeAlert("next-"+c.final, defendertest.DevWorkstationID, "high"))
			next := e.waitEntry("next-"+c.final, func(*audit.Entry) bool { return true })
			if next.Decision != c.next {
				t.Fatalf("after an action that ended %s, the next alert was decided %q (%s), want %q", c.final, next.Decision, next.Reason, c.next)
			}
		})
	}
}

func TestDecisionsWithoutAction(t *testing.T) {
	t.Parallel()
	e := setup(t, envOpts{})
	e.submit(
		mdeAlert("dc", defendertest.DevDomainControllerID, "high"),
		mdeAlert("low", defendertest.DevServerID, "low"),
	)
	dc := e.waitEntry("dc", func(*audit.Entry) bool { return true })
	low := e.waitEntry("low", func(*audit.Entry) bool { return true })
	if dc.Decision != audit.Ignore || dc.Rule != "never-domain-controllers" {
		t.Fatalf("dc = %+v", dc)
	}
	if low.Decision != audit.NoMatch || low.Reason == "" {
		t.Fatalf("low = %+v", low)
	}
	if n := len(posts(e.sim, "collectInvestigationPackage")); n != 0 {
		t.Fatalf("%d POSTs", n)
	}
	if v := testutil.ToFloat64(e.m.Decisions.WithLabelValues(metrics.NoRule, "no_match")); v != 1 {
		t.Fatalf("no_match = %v", v)
	}
}

func TestAlreadyRunningIsTrackedNotRetried(t *testing.T) {
	t.Parallel()
	sim := newSim(t, defendertest.Options{PendingFor: time.Hour})
	e := setup(t, envOpts{sim: sim})
	// Someone else started a collection on the machine.
	other, err := defender.New(defender.Config{APIURL: sim.URL(), TokenURL: sim.TokenURL(), TenantID: defendertest.DevTenantID,
		ClientID: defendertest.DevClientID, ClientSecret: defendertest.DevClientSecret, UserAgent: "analyst"}, metrics.New(nil), zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	first, err := other.CollectInvestigationPackage(context.Background(), defendertest.DevWorkstationID, "manual collection")
	if err != nil {
		t.Fatal(err)
	}
	e.submit(mdeAlert("da-ar", defendertest.DevWorkstationID, "high"))
	got := e.waitEntry("da-ar", func(en *audit.Entry) bool { return en.Outcome != "" })
	if got.Outcome != audit.AlreadyRunning || got.ActionID != first.ID || got.State != audit.Tracking {
		t.Fatalf("entry = %+v", got)
	}
	var refused int
	for _, r := range sim.Requests() {
		if r.Method == "POST" && strings.HasSuffix(r.Path, "/collectInvestigationPackage") && r.Status == 400 {
			refused++
		}
	}
	if refused != 1 {
		t.Fatalf("%d refused POSTs, want exactly 1 (never retried)", refused)
	}
}

func TestRetriesOn429And5xx(t *testing.T) {
	t.Parallel()
	sim := newSim(t, defendertest.Options{})
	sim.InjectFault(defendertest.Fault{Method: "POST", PathContains: "collectInvestigationPackage", Status: 429, RetryAfter: 1, Times: 1})
	sim.InjectFault(defendertest.Fault{Method: "POST", PathContains: "collectInvestigationPackage", Status: 503, Times: 2})
	e := setup(t, envOpts{sim: sim})
	e.submit(mdeAlert("da-retry", defendertest.DevWorkstationID, "high"))
	got := e.waitEntry("da-retry", func(en *audit.Entry) bool { return en.Outcome != "" })
	if got.Outcome != audit.Created {
		t.Fatalf("entry = %+v", got)
	}
	var statuses []int
	for _, r := range sim.Requests() {
		if r.Method == "POST" && strings.HasSuffix(r.Path, "/collectInvestigationPackage") {
			statuses = append(statuses, r.Status)
		}
	}
	// 429 (waited Retry-After), 503, then the look-up before re-posting
	// (the 503 might have created the action), 503, then 201.
	if fmt.Sprint(statuses) != "[429 503 503 201]" {
		t.Fatalf("POST statuses = %v", statuses)
	}
	// The 429 gave its attempt back: three requests count.
	if got.Posts != 3 {
		t.Fatalf("posts = %d, want 3 (the 429 does not count)", got.Posts)
	}
}

// TestGivesUpAfterThePostBudget: with Defender failing every POST, the
// decision is retried past the quick budget of collectMaxAttempts requests
// (counted across the evaluator's inline try and the collect job) until it
// is RetryFor old, then recorded failed with the number of requests sent.
func TestGivesUpAfterThePostBudget(t *testing.T) {
	t.Parallel()
	sim := newSim(t, defendertest.Options{})
	sim.InjectFault(defendertest.Fault{Method: "POST", PathContains: "collectInvestigationPackage", Status: 500})
	e := setup(t, envOpts{sim: sim, cfg: Config{RetryFor: time.Second}})
	e.submit(mdeAlert("da-budget", defendertest.DevWorkstationID, "high"))
	got := e.waitEntry("da-budget", func(en *audit.Entry) bool { return en.Outcome != "" })
	if got.Outcome != audit.Failed {
		t.Fatalf("entry = %+v", got)
	}
	var sent int
	for _, r := range sim.Requests() {
		if r.Method == "POST" && strings.HasSuffix(r.Path, "/collectInvestigationPackage") {
			sent++
		}
	}
	if sent < collectMaxAttempts || got.Posts != sent {
		t.Fatalf("%d POSTs, posts = %d: want the same, at least %d", sent, got.Posts, collectMaxAttempts)
	}
	if want := fmt.Sprintf("giving up after %d requests over ", got.Posts); !strings.Contains(got.Error+got.Reason, want) {
		t.Fatalf("entry error %q, reason %q: want %q", got.Error, got.Reason, want)
	}
	if got.FinishedAt.Sub(got.CreatedAt) < time.Second {
		t.Fatalf("given up %s after the decision, before RetryFor (1s)", got.FinishedAt.Sub(got.CreatedAt))
	}
}

// TestOutageDoesNotLoseAlerts: an accepted alert survives a Defender
// outage longer than any attempt budget. Machine reads fail 11 times
// (evaluate jobs allow 10 attempts) and then POSTs 10 times (more than
// collectMaxAttempts): the alert is still evaluated on its machine's
// attributes and collected once.
func TestOutageDoesNotLoseAlerts(t *testing.T) {
	t.Parallel()
	sim := newSim(t, defendertest.Options{})
	sim.InjectFault(defendertest.Fault{Method: "GET", PathContains: "/api/machines/", Status: 503, Times: 11})
	sim.InjectFault(defendertest.Fault{Method: "POST", PathContains: "collectInvestigationPackage", Status: 503, Times: 10})
	e := setup(t, envOpts{sim: sim})
	e.submit(mdeAlert("da-outage", defendertest.DevWorkstationID, "high"))
	// Each failure waits for a queue poll: allow more than waitEntry does.
	var got *audit.Entry
	testkit.WaitUntil(t, time.Minute, "the collection after the outage", func() bool {
		got = e.entryFor("da-outage")
		return got != nil && got.Outcome != ""
	})
	if got.Decision != audit.Collect || got.Outcome != audit.Created || got.Posts != 11 {
		t.Fatalf("entry = %+v, want collect, created after 11 requests", got)
	}
	if n := len(posts(sim, "collectInvestigationPackage")); n != 1 {
		t.Fatalf("%d actions created, want 1", n)
	}
}

// TestOutageBeyondRetryForDecidesWithoutDefender: when machine reads keep
// failing for RetryFor, the alert is decided fail-safe (not evaluated on
// empty attributes), never left undecided.
func TestOutageBeyondRetryForDecidesWithoutDefender(t *testing.T) {
	t.Parallel()
	sim := newSim(t, defendertest.Options{})
	sim.InjectFault(defendertest.Fault{Method: "GET", PathContains: "/api/machines/", Status: 503})
	e := setup(t, envOpts{sim: sim, cfg: Config{RetryFor: time.Second}})
	e.submit(mdeAlert("da-long-outage", defendertest.DevWorkstationID, "high"))
	got := e.waitEntry("da-long-outage", func(*audit.Entry) bool { return true })
	if got.Decision != audit.NoMatch || !strings.Contains(got.Reason, "not evaluated") {
		t.Fatalf("entry = %+v", got)
	}
	if n := len(posts(sim, "collectInvestigationPackage")); n != 0 {
		t.Fatalf("%d actions created for an alert not evaluated", n)
	}
}

func TestUnansweredPostIsLookedUpNotResent(t *testing.T) {
	t.Parallel()
	sim := newSim(t, defendertest.Options{PendingFor: time.Hour})
	e := setup(t, envOpts{sim: sim, noStart: true})
	// Decide while the workers are stopped, so the collect job waits.
	a := mdeAlert("da-crash", defendertest.DevWorkstationID, "high")
	e.submit(a)
	ctx := context.Background()
	var rowID int64
	if err := e.store.DB.QueryRow(`SELECT id FROM responder_alert WHERE alert_id = 'da-crash'`).Scan(&rowID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.p.decide(ctx, decideItem{rowID: rowID, alert: &a, set: e.p.rules.Current(), machine: rules.Machine{Attributes: &alert.Machine{ID: a.MachineID}}}); err != nil {
		t.Fatal(err)
	}
	en := e.entryFor("da-crash")
	// A previous process marked the POST in flight, MDE created the action,
	// and the process died before it read the answer.
	posted := time.Now().Add(-time.Second)
	if claimed, err := e.store.ClaimPosting(ctx, en, posted, posted.Add(e.p.cfg.PostSettle)); err != nil || !claimed {
		t.Fatalf("claim: %v %v", claimed, err)
	}
	other, err := defender.New(defender.Config{APIURL: sim.URL(), TokenURL: sim.TokenURL(), TenantID: defendertest.DevTenantID,
		ClientID: defendertest.DevClientID, ClientSecret: defendertest.DevClientSecret, UserAgent: "responder/test"}, metrics.New(nil), zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	created, err := other.CollectInvestigationPackage(ctx, a.MachineID, en.Comment)
	if err != nil {
		t.Fatal(err)
	}
	sim.ClearRequests()
	e.start()
	got := e.waitEntry("da-crash", func(en *audit.Entry) bool { return en.Outcome != "" })
	if got.Outcome != audit.Created || got.ActionID != created.ID || got.State != audit.Tracking {
		t.Fatalf("entry = %+v", got)
	}
	for _, r := range sim.Requests() {
		if r.Method == "POST" && strings.HasPrefix(r.Path, "/api/") {
			t.Fatalf("a POST was sent again: %s %s", r.Path, r.Body)
		}
	}
}

func TestPostingStateWithoutActionPostsAgain(t *testing.T) {
	t.Parallel()
	e := setup(t, envOpts{noStart: true, cfg: Config{PostSettle: 300 * time.Millisecond}})
	a := mdeAlert("da-lost", defendertest.DevWorkstationID, "high")
	e.submit(a)
	ctx := context.Background()
	var rowID int64
	if err := e.store.DB.QueryRow(`SELECT id FROM responder_alert WHERE alert_id = 'da-lost'`).Scan(&rowID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.p.decide(ctx, decideItem{rowID: rowID, alert: &a, set: e.p.rules.Current(), machine: rules.Machine{Attributes: &alert.Machine{ID: a.MachineID}}}); err != nil {
		t.Fatal(err)
	}
	en := e.entryFor("da-lost")
	// The POST never reached MDE: the look-ups find nothing until it has
	// settled, so it is sent again.
	posted := time.Now().Add(-time.Second)
	if claimed, err := e.store.ClaimPosting(ctx, en, posted, posted.Add(e.p.cfg.PostSettle)); err != nil || !claimed {
		t.Fatalf("claim: %v %v", claimed, err)
	}
	e.start()
	if got := e.waitEntry("da-lost", func(en *audit.Entry) bool { return en.Outcome != "" }); got.Outcome != audit.Created {
		t.Fatalf("entry = %+v", got)
	}
	if n := len(posts(e.sim, "collectInvestigationPackage")); n != 1 {
		t.Fatalf("%d POSTs, want 1", n)
	}
}

func TestCircuitBreakerOpensAndRearms(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	machines := make([]defendertest.Machine, 7)
	for i := range machines {
		machines[i] = defendertest.Machine{ID: fmt.Sprintf("%040x", i+1), ComputerDNSName: fmt.Sprintf("ws-%d.example.com", i), HealthStatus: "Active"}
	}
	e := setup(t, envOpts{simOpts: defendertest.Options{Machines: machines}, cfg: Config{MaxMachinesPer10m: 3, Now: clock}})
	for i := range machines[:6] {
		e.submit(mdeAlert(fmt.Sprintf("storm-%d", i), machines[i].ID, "high"))
	}
	testkit.WaitUntil(t, 20*time.Second, "six decisions", func() bool { return len(e.entries()) == 6 })
	counts := map[audit.Decision]int{}
	for _, en := range e.entries() {
		counts[en.Decision]++
	}
	if counts[audit.Collect] != 3 || counts[audit.CircuitOpen] != 3 {
		t.Fatalf("decisions = %v", counts)
	}
	if v := testutil.ToFloat64(e.m.CircuitOpen); v != 1 {
		t.Fatalf("circuit_open = %v", v)
	}
	if v := testutil.ToFloat64(e.m.Decisions.WithLabelValues("high-severity", "circuit_open")); v != 3 {
		t.Fatalf("suppressed decisions counted = %v", v)
	}
	testkit.WaitUntil(t, 10*time.Second, "three POSTs", func() bool { return len(posts(e.sim, "collectInvestigationPackage")) == 3 })
	// Eleven minutes later the window has cleared: the breaker re-arms.
	mu.Lock()
	now = now.Add(11 * time.Minute)
	mu.Unlock()
	if err := e.p.refreshCircuit(context.Background()); err != nil {
		t.Fatal(err)
	}
	if v := testutil.ToFloat64(e.m.CircuitOpen); v != 0 {
		t.Fatalf("circuit_open after the window = %v", v)
	}
	e.submit(mdeAlert("after-storm", machines[6].ID, "high"))
	if got := e.waitEntry("after-storm", func(*audit.Entry) bool { return true }); got.Decision != audit.Collect {
		t.Fatalf("after re-arm: %+v", got)
	}
}

func TestPauseAndDryRun(t *testing.T) {
	t.Parallel()
	e := setup(t, envOpts{})
	if err := e.p.Pause(context.Background()); err != nil {
		t.Fatal(err)
	}
	e.submit(mdeAlert("paused", defendertest.DevWorkstationID, "high"))
	if got := e.waitEntry("paused", func(*audit.Entry) bool { return true }); got.Decision != audit.Paused {
		t.Fatalf("paused: %+v", got)
	}
	if err := e.p.Resume(context.Background()); err != nil {
		t.Fatal(err)
	}
	dry := setup(t, envOpts{cfg: Config{DryRun: true}})
	dry.submit(mdeAlert("dry", defendertest.DevWorkstationID, "high"))
	if got := dry.waitEntry("dry", func(*audit.Entry) bool { return true }); got.Decision != audit.DryRun || !got.DryRun {
		t.Fatalf("dry run: %+v", got)
	}
	for _, env := range []*testEnv{e, dry} {
		if n := len(posts(env.sim, "collectInvestigationPackage")); n != 0 {
			t.Fatalf("%d POSTs while paused or in dry run", n)
		}
	}
}

func TestHostnameResolvedAndCollected(t *testing.T) {
	t.Parallel()
	e := setup(t, envOpts{})
	a := alert.Alert{ID: "c0ffee0123456789", Source: alert.SourceAlertmanager, Severity: "critical", Status: alert.StatusFiring,
		MachineName: "ws-0142.corp.example.com", Occurrence: "2026-11-26T10:00:00Z"}
	e.submit(a)
	got := e.waitEntry(a.ID, func(en *audit.Entry) bool { return en.Outcome != "" })
	if got.MachineID != defendertest.DevWorkstationID || got.Outcome != audit.Created || !strings.Contains(got.Reason, "resolved to") {
		t.Fatalf("entry = %+v", got)
	}
}

func TestMachineNotFoundAndForbidden(t *testing.T) {
	t.Parallel()
	e := setup(t, envOpts{rulesSrc: "rules:\n  - name: all\n    when: 'true'\n"})
	e.submit(mdeAlert("nf", strings.Repeat("ab", 20), "high"))
	if got := e.waitEntry("nf", func(en *audit.Entry) bool { return en.Outcome != "" }); got.Outcome != audit.MachineNotFound || got.State != audit.Done {
		t.Fatalf("unknown machine: %+v", got)
	}
	f := setup(t, envOpts{simOpts: defendertest.Options{DenyCollect: true}, rulesSrc: "rules:\n  - name: all\n    when: 'true'\n"})
	f.submit(mdeAlert("fb", defendertest.DevWorkstationID, "high"))
	if got := f.waitEntry("fb", func(en *audit.Entry) bool { return en.Outcome != "" }); got.Outcome != audit.Forbidden {
		t.Fatalf("forbidden: %+v", got)
	}
	// Nothing was collected, so the cooldown is released.
	var n int
	if err := f.store.DB.QueryRow(`SELECT COUNT(*) FROM responder_cooldown`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("cooldown rows = %d (%v)", n, err)
	}
}

func TestDownloadPackage(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	e := setup(t, envOpts{cfg: Config{DownloadDir: dir}})
	e.submit(mdeAlert("dl", defendertest.DevWorkstationID, "high"))
	got := e.waitEntry("dl", func(en *audit.Entry) bool { return en.PackageSHA256 != "" })
	if !strings.HasPrefix(got.PackagePath, filepath.Join(dir, defendertest.DevWorkstationID)) || got.PackageSize == 0 {
		t.Fatalf("entry = %+v", got)
	}
	if _, err := os.Stat(got.PackagePath); err != nil {
		t.Fatal(err)
	}
}

// TestPackageNotDownloadedIsRecorded: a package that cannot be downloaded
// (here larger than defender.max_package_bytes) leaves the reason in the
// audit entry, and no file.
func TestPackageNotDownloadedIsRecorded(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	e := setup(t, envOpts{cfg: Config{DownloadDir: dir},
		simOpts: defendertest.Options{PackageBytes: make([]byte, 64<<10)},
		client:  func(c *defender.Config) { c.MaxPackageBytes = 1 << 10 }})
	e.submit(mdeAlert("dl-big", defendertest.DevWorkstationID, "high"))
	got := e.waitEntry("dl-big", func(en *audit.Entry) bool { return en.Error != "" })
	if got.ActionStatus != "Succeeded" || got.PackageSHA256 != "" || !strings.Contains(got.Error, "package not downloaded") ||
		!strings.Contains(got.Error, "max_package_bytes") {
		t.Fatalf("entry = %+v", got)
	}
	if files, _ := filepath.Glob(filepath.Join(dir, "*", "*")); len(files) != 0 {
		t.Fatalf("files left: %v", files)
	}
}

func TestPostgresCollect(t *testing.T) {
	t.Parallel()
	dsn := testkit.PostgresDSN(t)
	e := setup(t, envOpts{driver: store.DriverPostgres, dsn: dsn})
	e.submit(mdeAlert("pg-1", defendertest.DevWorkstationID, "high"))
	got := e.waitEntry("pg-1", func(en *audit.Entry) bool { return en.ActionStatus == "Succeeded" })
	if got.Outcome != audit.Created {
		t.Fatalf("entry = %+v", got)
	}
	// Migrations are idempotent: opening again changes nothing.
	s2, err := store.Open(context.Background(), store.DriverPostgres, dsn)
	if err != nil {
		t.Fatal(err)
	}
	s2.Close()
}

func TestPostgresReplicasShareWork(t *testing.T) {
	t.Parallel()
	dsn := testkit.PostgresDSN(t)
	const machines = 40
	ms := make([]defendertest.Machine, machines)
	for i := range ms {
		ms[i] = defendertest.Machine{ID: fmt.Sprintf("%040x", 0xabc000+i), ComputerDNSName: fmt.Sprintf("host-%d.example.com", i), HealthStatus: "Active"}
	}
	sim := newSim(t, defendertest.Options{Machines: ms, PendingFor: time.Hour})
	// Start one replica first so the schema exists, then two more.
	var replicas []*testEnv
	for i := 0; i < 3; i++ {
		replicas = append(replicas, setup(t, envOpts{driver: store.DriverPostgres, dsn: dsn, sim: sim,
			// Slow polling keeps the simulator's 100 calls/min quota for the POSTs.
			cfg: Config{MaxCollectionsPerHour: 1000, MaxMachinesPer10m: 1000, PollInterval: 10 * time.Second}}))
	}
	// Each replica gets the same alerts concurrently: two alerts per machine.
	var alerts []alert.Alert
	for i := range ms {
		alerts = append(alerts, mdeAlert(fmt.Sprintf("a-%d", i), ms[i].ID, "high"), mdeAlert(fmt.Sprintf("b-%d", i), ms[i].ID, "high"))
	}
	var wg sync.WaitGroup
	for _, r := range replicas {
		for chunk := 0; chunk < len(alerts); chunk += 10 {
			wg.Add(1)
			go func(r *testEnv, batch []alert.Alert) {
				defer wg.Done()
				if _, err := r.p.Submit(context.Background(), batch); err != nil {
					t.Error(err)
				}
			}(r, alerts[chunk:min(chunk+10, len(alerts))])
		}
	}
	wg.Wait()
	e := replicas[0]
	testkit.WaitUntil(t, 60*time.Second, "every alert decided", func() bool { return len(e.entries()) == 2*machines })
	testkit.WaitUntil(t, 60*time.Second, "every collection sent", func() bool {
		for _, en := range e.entries() {
			if en.Decision == audit.Collect && en.Outcome == "" {
				return false
			}
		}
		return true
	})
	counts := map[audit.Decision]int{}
	for _, en := range e.entries() {
		counts[en.Decision]++
	}
	if counts[audit.Collect] != machines || counts[audit.Cooldown] != machines {
		t.Fatalf("decisions = %v", counts)
	}
	perMachine := map[string]int{}
	for _, r := range posts(sim, "collectInvestigationPackage") {
		perMachine[r.Path]++
	}
	if len(perMachine) != machines {
		t.Fatalf("%d machines collected, want %d", len(perMachine), machines)
	}
	for path, n := range perMachine {
		if n != 1 {
			t.Fatalf("%s collected %d times", path, n)
		}
	}
}

func TestPostgresQuotaHeldAcrossReplicas(t *testing.T) {
	t.Parallel()
	dsn := testkit.PostgresDSN(t)
	const machines, perMinute = 12, 5
	ms := make([]defendertest.Machine, machines)
	for i := range ms {
		ms[i] = defendertest.Machine{ID: fmt.Sprintf("%040x", 0xdef000+i), ComputerDNSName: fmt.Sprintf("q-%d.example.com", i), HealthStatus: "Active"}
	}
	sim := newSim(t, defendertest.Options{Machines: ms, PendingFor: time.Hour})
	var replicas []*testEnv
	for i := 0; i < 3; i++ {
		env := setup(t, envOpts{driver: store.DriverPostgres, dsn: dsn, sim: sim, noStart: true,
			// Slow polling: the simulator's own 100 calls/min quota counts the
			// polls too, and fast polls of the first actions could spend it
			// before the later POSTs on a slow machine.
			cfg: Config{MaxCollectionsPerHour: 1000, MaxMachinesPer10m: 1000, QuotaWait: 200 * time.Millisecond, PollInterval: 10 * time.Second}})
		env.p.quota = quota.NewShared(env.store, "actions", quota.Windows{PerMinute: perMinute, PerHour: 1500, Slack: quota.DefaultSlack})
		env.start()
		replicas = append(replicas, env)
	}
	t.Cleanup(func() { dumpOnFailure(t, sim, replicas[0]) })
	for i := range ms {
		replicas[i%3].submit(mdeAlert(fmt.Sprintf("q-%d", i), ms[i].ID, "high"))
	}
	testkit.WaitUntil(t, 30*time.Second, "the quota spent", func() bool {
		n := len(posts(sim, "collectInvestigationPackage"))
		if n > perMinute {
			t.Fatalf("%d POSTs, quota %d", n, perMinute)
		}
		return n == perMinute
	})
	// The others wait in the queue, snoozed; none is sent within the minute
	// and none is dropped.
	testkit.WaitUntil(t, 30*time.Second, "every alert decided", func() bool { return len(replicas[0].entries()) == machines })
	time.Sleep(2 * time.Second) // a window for a wrong extra POST to show; the assertion is that none does
	if n := len(posts(sim, "collectInvestigationPackage")); n != perMinute {
		t.Fatalf("%d POSTs within the minute across replicas, quota %d", n, perMinute)
	}
	var queued int
	for _, en := range replicas[0].entries() {
		if en.Decision == audit.Collect && en.Outcome == "" {
			queued++
		}
	}
	if queued != machines-perMinute {
		t.Fatalf("%d collections waiting, want %d", queued, machines-perMinute)
	}
}

// dumpOnFailure logs what the simulator received, the audit trail, the
// shared quota log and the queue, so a failure on CI can be read.
func dumpOnFailure(t *testing.T, sim *defendertest.Simulator, e *testEnv) {
	if !t.Failed() {
		return
	}
	for _, r := range sim.Requests() {
		t.Logf("simulator: %s %s %d", r.Method, r.Path, r.Status)
	}
	for _, en := range e.entries() {
		t.Logf("entry %d: alert %s decision %s state %s outcome %s", en.ID, en.AlertID, en.Decision, en.State, en.Outcome)
	}
	dump := func(what, query string) {
		rows, err := e.store.DB.Query(query)
		if err != nil {
			t.Logf("%s: %v", what, err)
			return
		}
		defer rows.Close()
		for rows.Next() {
			var line string
			if err := rows.Scan(&line); err != nil {
				t.Logf("%s: %v", what, err)
				return
			}
			t.Logf("%s: %s", what, line)
		}
	}
	dump("quota", `SELECT grp || ' ' || at_ms FROM responder_quota ORDER BY at_ms`)
	dump("job", `SELECT id || ' ' || kind || ' ' || state || ' attempt ' || attempt || ' ' || args::text || ' ' || coalesce(errors::text, '') FROM river_job ORDER BY id`)
}

// TestDecideBatchSeesEarlierDecisions records several decisions in one
// transaction: each sees the ones before it (cooldown, circuit window), and
// rows decided already are left alone.
func TestDecideBatchSeesEarlierDecisions(t *testing.T) {
	t.Parallel()
	for _, driver := range []string{store.DriverSQLite, store.DriverPostgres} {
		t.Run(driver, func(t *testing.T) {
			t.Parallel()
			o := envOpts{noStart: true, cfg: Config{MaxCollectionsPerHour: 100, MaxMachinesPer10m: 2}}
			if driver == store.DriverPostgres {
				o.driver, o.dsn = store.DriverPostgres, testkit.PostgresDSN(t)
			}
			e := setup(t, o)
			ctx := context.Background()
			machine := func(i int) string { return fmt.Sprintf("%040x", 0xbadc0de0+i) }
			// Two alerts for machine 0, then machines 1 and 2: the second
			// alert is within machine 0's cooldown, machine 2 is a third
			// distinct machine within 10 minutes.
			alerts := []alert.Alert{
				mdeAlert("b-0a", machine(0), "high"), mdeAlert("b-0b", machine(0), "high"),
				mdeAlert("b-1", machine(1), "high"), mdeAlert("b-2", machine(2), "high"),
			}
			e.submit(alerts...)
			items := make([]decideItem, len(alerts))
			set := e.p.rules.Current()
			for i := range alerts {
				a := &alerts[i]
				if err := e.store.DB.QueryRow(`SELECT id FROM responder_alert WHERE alert_id = $1`, a.ID).Scan(&items[i].rowID); err != nil {
					t.Fatal(err)
				}
				items[i].alert, items[i].set, items[i].machine = a, set, rules.Machine{Attributes: &alert.Machine{ID: a.MachineID}}
			}
			entries, err := e.p.decideBatch(ctx, items)
			if err != nil {
				t.Fatal(err)
			}
			var got []audit.Decision
			for _, en := range entries {
				got = append(got, en.Decision)
			}
			if want := []audit.Decision{audit.Collect, audit.Cooldown, audit.Collect, audit.CircuitOpen}; !slices.Equal(got, want) {
				t.Fatalf("decisions = %v, want %v", got, want)
			}
			if !strings.Contains(entries[3].Reason, "2 distinct machines with collect decisions in the last 10 minutes reach safety.max_machines_per_10m (2)") {
				t.Fatalf("circuit reason = %q", entries[3].Reason)
			}
			// Deciding the same rows again (a retried job) changes nothing.
			again, err := e.p.decideBatch(ctx, items)
			if err != nil {
				t.Fatal(err)
			}
			for i, en := range again {
				if en != nil {
					t.Fatalf("row %d decided twice: %+v", i, en)
				}
			}
			if n := len(e.entries()); n != len(alerts) {
				t.Fatalf("%d audit entries, want %d", n, len(alerts))
			}
		})
	}
}

// TestGroupCommitDeduplicates submits overlapping alerts concurrently (a
// key repeated inside one request, across requests, and stored earlier),
// in batches larger than one insert statement: each key is stored once and
// reported new exactly once.
func TestGroupCommitDeduplicates(t *testing.T) {
	t.Parallel()
	for _, driver := range []string{store.DriverSQLite, store.DriverPostgres} {
		t.Run(driver, func(t *testing.T) {
			t.Parallel()
			o := envOpts{noStart: true}
			if driver == store.DriverPostgres {
				o.driver, o.dsn = store.DriverPostgres, testkit.PostgresDSN(t)
			}
			e := setup(t, o)
			const keys = 300
			alertFor := func(k int) alert.Alert {
				return mdeAlert(fmt.Sprintf("gc-%d", k), defendertest.DevWorkstationID, "high")
			}
			e.submit(alertFor(0), alertFor(1)) // stored before
			var mu sync.Mutex
			news := map[string]int{}
			var wg sync.WaitGroup
			for w := range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					var batch []alert.Alert
					for k := range keys {
						if (k+w)%3 != 0 {
							batch = append(batch, alertFor(k))
						}
					}
					batch = append(batch, alertFor(w), alertFor(w)) // repeated inside the request
					r, err := e.p.Submit(context.Background(), batch)
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					defer mu.Unlock()
					for i, dup := range r.Duplicate {
						if !dup {
							news[batch[i].ID]++
						}
					}
				}()
			}
			wg.Wait()
			var stored int
			if err := e.store.DB.QueryRow(`SELECT COUNT(*) FROM responder_alert`).Scan(&stored); err != nil {
				t.Fatal(err)
			}
			if stored != keys {
				t.Fatalf("%d rows stored, want %d", stored, keys)
			}
			for k := range keys {
				id := fmt.Sprintf("gc-%d", k)
				want := 1
				if k < 2 {
					want = 0 // stored before: a duplicate in every request
				}
				if news[id] != want {
					t.Fatalf("%s reported new %d times, want %d", id, news[id], want)
				}
			}
		})
	}
}

// TestDispatchCrashBetweenEnqueueAndMark covers the SQLite dispatcher's
// window between its two commits: the evaluate jobs are committed, the rows
// are not marked (the process died). On restart the rows are dispatched
// again; the two jobs naming each alert decide it once and collect once.
func TestDispatchCrashBetweenEnqueueAndMark(t *testing.T) {
	t.Parallel()
	e := setup(t, envOpts{noStart: true, cfg: Config{MaxCollectionsPerHour: 1000, MaxMachinesPer10m: 1000}})
	ctx := context.Background()
	a := mdeAlert("crash-dispatch", defendertest.DevWorkstationID, "high")
	e.submit(a)
	ids, err := e.store.Undispatched(ctx, 100)
	if err != nil || len(ids) != 1 {
		t.Fatalf("undispatched rows = %v, %v", ids, err)
	}
	// The first half of a dispatch, as the dead process left it.
	if _, err := e.p.client.InsertMany(ctx, evaluateJobs(ids)); err != nil {
		t.Fatal(err)
	}
	e.start()
	got := e.waitEntry(a.ID, func(en *audit.Entry) bool { return en.Outcome != "" })
	if got.Decision != audit.Collect || got.Outcome != audit.Created {
		t.Fatalf("entry = %+v", got)
	}
	testkit.WaitUntil(t, 20*time.Second, "both evaluate jobs finished", func() bool {
		var open int
		if err := e.store.DB.QueryRow(`SELECT COUNT(*) FROM river_job WHERE kind = 'responder.evaluate' AND state NOT IN ('completed', 'discarded', 'cancelled')`).Scan(&open); err != nil {
			t.Fatal(err)
		}
		var all int
		if err := e.store.DB.QueryRow(`SELECT COUNT(*) FROM river_job WHERE kind = 'responder.evaluate'`).Scan(&all); err != nil {
			t.Fatal(err)
		}
		return open == 0 && all == 2
	})
	if n := len(e.entries()); n != 1 {
		t.Fatalf("%d audit entries, want 1", n)
	}
	if n := len(posts(e.sim, "collectInvestigationPackage")); n != 1 {
		t.Fatalf("%d POSTs, want 1", n)
	}
}

// TestExplain: POST /api/v1/evaluate's answers match what the pipeline
// does: collect, cooldown after a decision, and what intake would ignore
// (no machine; resolved without on_resolved) or could not resolve.
func TestExplain(t *testing.T) {
	t.Parallel()
	e := setup(t, envOpts{})
	ctx := context.Background()
	mde := `{"id":"da-explain","machineId":"` + defendertest.DevWorkstationID + `","severity":"High","status":"New","title":"t"}`
	am := func(status, labels string) string {
		return `{"version":"4","status":"` + status + `","alerts":[{"status":"` + status + `","labels":{` + labels + `},"fingerprint":"f1"}]}`
	}
	explain := func(format alert.Format, body string) Explanation {
		t.Helper()
		ev, err := e.p.Explain(ctx, format, []byte(body))
		if err != nil {
			t.Fatal(err)
		}
		if len(ev.Decisions) != 1 {
			t.Fatalf("%d decisions: %+v", len(ev.Decisions), ev)
		}
		return ev.Decisions[0]
	}
	if got := explain(alert.FormatDefender, mde); got.Decision != string(audit.Collect) || got.Rule != "high-severity" {
		t.Fatalf("before any decision: %+v", got)
	}
	e.submit(mdeAlert("da-first", defendertest.DevWorkstationID, "high"))
	e.waitEntry("da-first", func(*audit.Entry) bool { return true })
	if got := explain(alert.FormatDefender, mde); got.Decision != string(audit.Cooldown) {
		t.Fatalf("after a collection: %+v", got)
	}
	if got := explain(alert.FormatAlertmanager, am("firing", `"alertname":"x","severity":"critical"`)); got.Decision != IgnoredAtIntake || got.Reason != "the alert names no machine" {
		t.Fatalf("no machine: %+v", got)
	}
	if got := explain(alert.FormatAlertmanager, am("resolved", `"alertname":"x","machine_id":"`+defendertest.DevServerID+`"`)); got.Decision != IgnoredAtIntake || !strings.Contains(got.Reason, "on_resolved") {
		t.Fatalf("resolved: %+v", got)
	}
	if got := explain(alert.FormatAlertmanager, am("firing", `"alertname":"x","severity":"critical","hostname":"no-such-host.example.com"`)); got.Decision != string(audit.NoMatch) || got.Reason != `no Defender machine is named "no-such-host.example.com"` {
		t.Fatalf("unknown name: %+v", got)
	}
}

// TestDecisionKeepsMachineSnapshot: a decision keeps the machine attributes
// the rules read (SPEC 11), for the audit trail and a later replay; none
// when the rules read none.
func TestDecisionKeepsMachineSnapshot(t *testing.T) {
	t.Parallel()
	e := setup(t, envOpts{})
	e.submit(mdeAlert("snap", defendertest.DevWorkstationID, "low"))
	got := e.waitEntry("snap", func(*audit.Entry) bool { return true })
	if got.Machine == nil || got.Machine.ID != defendertest.DevWorkstationID || !slices.Contains(got.Machine.Tags, "workstation") {
		t.Fatalf("snapshot = %+v", got.Machine)
	}
	again, err := e.store.Entry(context.Background(), got.ID)
	if err != nil {
		t.Fatal(err)
	}
	if again.Machine == nil || !slices.Equal(again.Machine.Tags, got.Machine.Tags) {
		t.Fatalf("stored snapshot = %+v", again.Machine)
	}

	alertOnly := setup(t, envOpts{rulesSrc: "rules:\n  - name: high\n    when: 'alert.severity == \"high\"'\n"})
	alertOnly.submit(mdeAlert("no-snap", defendertest.DevWorkstationID, "high"))
	if got := alertOnly.waitEntry("no-snap", func(*audit.Entry) bool { return true }); got.Machine != nil {
		t.Fatalf("a snapshot of attributes no rule read: %+v", got.Machine)
	}
}
