// Command loadbench measures the responder side by side with the physical
// ceiling of the same HTTP stack (BENCHMARKS.md). It builds and starts the
// real binary, runs an in-process Defender simulator for it, and drives it
// with an HTTP load generator on loopback.
//
//	go run ./internal/loadbench -scenario intake
//	go run ./internal/loadbench -scenario all
//
// Scenarios: intake (bare Echo reference, then the responder on SQLite and,
// with -postgres, PostgreSQL; closed loop on 64 connections, then an open
// loop at 1,000 alerts/s), dispatch (202 to the simulator's receipt of the
// POST at 10 and 100 alerts/s), storm (100,000 alerts for 20,000 machines in
// one burst), idle (RSS of an idle responder), replay (issue 13: a store
// seeded with 1,000,000 alerts replayed against 1,000 rules, and the
// intake's p99 beside a replay; not part of all, see replay.go), notify
// (issue 14: dispatch with a dead and a slow notifier, and a receiver down
// for minutes then back; not part of all, see notify.go), sustained (issue 15:
// alerts accepted and decided per second over one window, the backlog, CPU
// per alert, beside the bare handler; not part of all, see sustained.go).
package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
	"github.com/labstack/echo/v4"
	_ "modernc.org/sqlite"

	"github.com/responder-dev/responder/defender/defendertest"
)

func main() {
	scenario := flag.String("scenario", "intake", "intake, dispatch, storm, idle, all (these four), replay, notify or sustained")
	duration := flag.Duration("duration", 10*time.Second, "length of each closed-loop run (sustained: default 30s)")
	conns := flag.Int("connections", 64, "concurrent connections of the closed loop")
	postgres := flag.String("postgres", "", "PostgreSQL DSN of a database to create benchmark databases beside (intake, replay and sustained on postgres); empty skips it")
	stormAlerts := flag.Int("storm-alerts", 100_000, "alerts of the storm")
	stormMachines := flag.Int("storm-machines", 20_000, "machines of the storm")
	stormObserve := flag.Duration("storm-observe", 3*time.Minute, "how long to watch the storm drain")
	flag.StringVar(&profileDir, "profile", "", "directory to write CPU profiles of the responder to (intake runs)")
	var ro replayOptions
	flag.IntVar(&ro.alerts, "replay-alerts", 1_000_000, "alerts seeded for the replay scenario")
	flag.StringVar(&ro.storePath, "store", "", "SQLite seed store of the replay scenario (default: responder-replay-<alerts>.db in the temporary directory)")
	flag.BoolVar(&ro.keep, "keep", false, "keep the replay's seed stores, and reuse them when they hold the same seed")
	flag.DurationVar(&ro.intakeFor, "intake-for", 20*time.Second, "length of each intake measurement beside a replay")
	flag.StringVar(&ro.steps, "replay-steps", "cli,profile,intake,api-alone,fresh", "replay scenario: what to run after seeding (cli, profile, intake, api-alone, fresh; none: seed only)")
	var no notifyOptions
	flag.StringVar(&no.steps, "notify-steps", "dispatch,outage,baseline", "notify scenario: what to run (dispatch, outage, baseline)")
	flag.IntVar(&no.runs, "notify-runs", 1, "notify scenario: how many times to make the three dispatch runs, interleaved")
	flag.DurationVar(&no.outage, "notify-outage", 5*time.Minute, "notify scenario: how long the receiver answers 503")
	flag.DurationVar(&no.flow, "notify-flow", 2*time.Minute, "notify scenario: how long alerts flow from the start of the outage")
	flag.IntVar(&no.flowRate, "notify-rate", 10, "notify scenario: alerts per second during the outage")
	sustainedMix := flag.String("sustained-mix", "severity,tags", "sustained scenario: the workloads to run (severity, tags)")
	binary := flag.String("binary", "", "responder binary to measure (default: build this checkout)")
	flag.Parse()
	ro.postgres = *postgres
	if ro.storePath == "" {
		ro.storePath = filepath.Join(os.TempDir(), fmt.Sprintf("responder-replay-%d.db", ro.alerts))
	}
	if profileDir != "" {
		if err := os.MkdirAll(profileDir, 0o755); err != nil {
			fatal(err)
		}
	}

	b, err := newBench(*binary)
	if err != nil {
		fatal(err)
	}
	defer b.cleanup()
	fmt.Printf("# loadbench %s, %d CPUs, %s\n", time.Now().UTC().Format(time.RFC3339), runtime.NumCPU(), runtime.Version())
	run := func(name string) bool { return *scenario == name || *scenario == "all" }
	if run("intake") {
		b.intake(*duration, *conns, *postgres)
	}
	if run("dispatch") {
		b.dispatch()
	}
	if run("storm") {
		b.storm(*stormAlerts, *stormMachines, *stormObserve)
	}
	if run("idle") {
		b.idle()
	}
	if *scenario == "replay" {
		b.replay(ro)
	}
	if *scenario == "notify" {
		b.notify(no)
	}
	if *scenario == "sustained" {
		so := sustainedOptions{duration: *duration, conns: *conns, postgres: *postgres, mixes: *sustainedMix}
		if !flagSet("duration") {
			so.duration = sustainedDefaultDuration
		}
		b.sustained(so)
	}
}

// profileDir, when set, receives a CPU and an allocation profile of each
// intake run.
var profileDir string

// profile fetches a CPU profile and the allocations of d seconds from the
// responder's admin listener into profileDir/name.pprof and
// profileDir/name.allocs.pprof, concurrently with the load.
func profile(admin, name string, d time.Duration) func() {
	if profileDir == "" {
		return func() {}
	}
	var wg sync.WaitGroup
	for _, p := range []struct{ path, file string }{
		{"profile", name + ".pprof"},
		{"allocs", name + ".allocs.pprof"},
	} {
		wg.Go(func() {
			resp, err := http.Get(fmt.Sprintf("%s/debug/pprof/%s?seconds=%d", admin, p.path, int(d.Seconds())))
			if err != nil {
				fmt.Fprintln(os.Stderr, "profile:", err)
				return
			}
			defer resp.Body.Close()
			f, err := os.Create(filepath.Join(profileDir, p.file))
			if err != nil {
				fmt.Fprintln(os.Stderr, "profile:", err)
				return
			}
			defer f.Close()
			_, _ = io.Copy(f, resp.Body)
		})
	}
	return wg.Wait
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "loadbench:", err)
	os.Exit(1)
}

type bench struct {
	dir    string
	binary string
}

func newBench(binary string) (*bench, error) {
	dir, err := os.MkdirTemp("", "loadbench-")
	if err != nil {
		return nil, err
	}
	if binary != "" {
		// A binary built elsewhere (an earlier commit): before and after
		// side by side, with the same load generator.
		return &bench{dir: dir, binary: binary}, nil
	}
	b := &bench{dir: dir, binary: filepath.Join(dir, "responder")}
	cmd := exec.Command("go", "build", "-o", b.binary, ".")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("building responder: %w", err)
	}
	return b, nil
}

func (b *bench) cleanup() { _ = os.RemoveAll(b.dir) }

// result summarises one load run.
type result struct {
	name      string
	requests  int
	errors    int
	codes     map[int]int
	elapsed   time.Duration
	latencies []time.Duration
}

func (r *result) rate() float64 { return float64(r.requests) / r.elapsed.Seconds() }

func (r *result) pct(p float64) time.Duration {
	if len(r.latencies) == 0 {
		return 0
	}
	slices.Sort(r.latencies)
	i := int(float64(len(r.latencies)-1) * p)
	return r.latencies[i]
}

func (r *result) String() string {
	return fmt.Sprintf("%-34s %8d req %9.0f req/s  p50 %7.2f ms  p99 %7.2f ms  errors %d  codes %v",
		r.name, r.requests, r.rate(), ms(r.pct(0.50)), ms(r.pct(0.99)), r.errors, r.codes)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// payloads makes distinct MDE alerts: each request is a new alert.
type payloads struct {
	seq      atomic.Int64
	machines []string
}

func newPayloads(machines []string) *payloads { return &payloads{machines: machines} }

func (p *payloads) next() []byte {
	n := p.seq.Add(1)
	m := p.machines[int(n)%len(p.machines)]
	return fmt.Appendf(nil, `{"id":"da%018d_%d","incidentId":%d,"machineId":%q,"computerDnsName":"ws-%d.corp.example.com","severity":"High","status":"New","category":"Malware","detectionSource":"WindowsDefenderAv","threatFamilyName":"Emotet","title":"Emotet malware was detected","description":"Malware was detected on the device.","mitreTechniques":["T1059","T1204"],"alertCreationTime":"2026-11-26T10:00:00.1234567Z"}`,
		n, n%100000, n, m, int(n)%len(p.machines))
}

func machineIDs(n int, seed int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%08x%032x", seed, i+1)
	}
	return out
}

func newClient(conns int) *http.Client {
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			MaxIdleConns: conns, MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns,
			IdleConnTimeout: time.Minute, DisableCompression: true,
		},
	}
}

func postOnce(c *http.Client, url string, body []byte) (int, time.Duration, error) {
	start := time.Now()
	resp, err := c.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		return 0, 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, time.Since(start), nil
}

// closedLoop sends as fast as conns workers can for d.
func closedLoop(name, url string, conns int, d time.Duration, next func() []byte) *result {
	c := newClient(conns)
	var mu sync.Mutex
	res := &result{name: name, codes: map[int]int{}}
	deadline := time.Now().Add(d)
	start := time.Now()
	var wg sync.WaitGroup
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var lat []time.Duration
			codes := map[int]int{}
			errs := 0
			for time.Now().Before(deadline) {
				code, l, err := postOnce(c, url, next())
				if err != nil {
					errs++
					continue
				}
				codes[code]++
				lat = append(lat, l)
			}
			mu.Lock()
			res.latencies = append(res.latencies, lat...)
			res.errors += errs
			for k, v := range codes {
				res.codes[k] += v
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	res.requests = len(res.latencies)
	return res
}

// openLoop sends at a fixed rate for d, whatever the answers take, so that
// latency is measured without coordinated omission.
func openLoop(name, url string, rate int, d time.Duration, next func() []byte) *result {
	c := newClient(512)
	res := &result{name: name, codes: map[int]int{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	interval := time.Second / time.Duration(rate)
	start := time.Now()
	total := int(d / interval)
	for i := range total {
		due := start.Add(time.Duration(i) * interval)
		if w := time.Until(due); w > 0 {
			time.Sleep(w)
		}
		wg.Add(1)
		go func(due time.Time) {
			defer wg.Done()
			code, _, err := postOnce(c, url, next())
			l := time.Since(due) // from when it should have been sent
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				res.errors++
				return
			}
			res.codes[code]++
			res.latencies = append(res.latencies, l)
		}(due)
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	res.requests = len(res.latencies)
	return res
}

// reference is the physical ceiling: a bare Echo handler that reads the body
// and answers 202, on the same loopback, measured in the same run.
func reference() (string, func()) {
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.POST("/webhooks/defender", func(c echo.Context) error {
		_, _ = io.Copy(io.Discard, c.Request().Body)
		return c.JSONBlob(http.StatusAccepted, []byte(`{"received":1,"accepted":1,"duplicates":0,"ignored":0,"invalid":0}`))
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fatal(err)
	}
	srv := &http.Server{Handler: e}
	go func() { _ = srv.Serve(ln) }()
	return "http://" + ln.Addr().String() + "/webhooks/defender", func() { _ = srv.Close() }
}

// responder is a running responder binary.
type responder struct {
	db    string
	cmd   *exec.Cmd
	hook  string
	admin string
	out   *lineBuffer
}

type lineBuffer struct {
	mu    sync.Mutex
	lines []string
	part  []byte
}

func (l *lineBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.part = append(l.part, p...)
	for {
		i := bytes.IndexByte(l.part, '\n')
		if i < 0 {
			break
		}
		line := string(l.part[:i])
		l.part = l.part[i+1:]
		if strings.Contains(line, `"msg":"listening"`) || strings.Contains(line, `"level":"error"`) {
			l.lines = append(l.lines, line)
		}
	}
	return len(p), nil
}

func (l *lineBuffer) find(sub string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, s := range l.lines {
		if strings.Contains(s, sub) {
			out = append(out, s)
		}
	}
	return out
}

func (b *bench) start(sim *defendertest.Simulator, env ...string) *responder {
	return b.startWith(sim, nil, env...)
}

// startWith starts the responder with serve's args (--config FILE) besides
// the environment.
func (b *bench) startWith(sim *defendertest.Simulator, args []string, env ...string) *responder {
	rules := filepath.Join(b.dir, "rules.yaml")
	_ = os.WriteFile(rules, []byte("rules:\n  - name: never-domain-controllers\n    when: '\"domain-controller\" in machine.tags'\n    action: ignore\n  - name: high-malware\n    when: 'alert.severity in [\"high\", \"critical\"] && alert.category in [\"Malware\", \"Ransomware\"]'\n"), 0o600)
	db := filepath.Join(b.dir, fmt.Sprintf("r%d.db", rand.IntN(1e9)))
	cmd := exec.Command(b.binary, append([]string{"serve"}, args...)...)
	cmd.Env = append([]string{
		"PATH=" + os.Getenv("PATH"),
		"RESPONDER_SERVER_LISTEN=127.0.0.1:0",
		"RESPONDER_SERVER_ADMIN_LISTEN=127.0.0.1:0",
		"RESPONDER_WEBHOOKS_ALLOW_UNAUTHENTICATED=true",
		"RESPONDER_ADMIN_ALLOW_UNAUTHENTICATED=true", // the admin listener is loopback
		"RESPONDER_LOG_LEVEL=warn",
		"RESPONDER_STORE_DSN=" + db,
		"RESPONDER_RULES_FILES=" + rules,
		"RESPONDER_DEFENDER_API_URL=" + sim.URL(),
		"RESPONDER_DEFENDER_TOKEN_URL=" + sim.TokenURL(),
		"RESPONDER_DEFENDER_TENANT_ID=" + defendertest.DevTenantID,
		"RESPONDER_DEFENDER_CLIENT_ID=" + defendertest.DevClientID,
		"RESPONDER_DEFENDER_CLIENT_SECRET=" + defendertest.DevClientSecret,
	}, env...)
	cmd.Env = append(cmd.Env, "RESPONDER_LOG_LEVEL=info") // listening lines are info
	out := &lineBuffer{}
	cmd.Stdout, cmd.Stderr = out, os.Stderr
	if err := cmd.Start(); err != nil {
		fatal(err)
	}
	r := &responder{cmd: cmd, out: out, db: db}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		for _, l := range out.find(`"msg":"listening"`) {
			noteListening([]byte(l), &r.hook, &r.admin)
		}
		if r.hook != "" && r.admin != "" {
			return r
		}
		time.Sleep(20 * time.Millisecond)
	}
	fatal(errors.New("responder did not start"))
	return nil
}

// noteListening takes the webhook and admin addresses from a "listening"
// log line into hook and admin.
func noteListening(line []byte, hook, admin *string) {
	var rec struct{ Listener, Addr string }
	if json.Unmarshal(line, &rec) != nil {
		return
	}
	switch rec.Listener {
	case "webhooks":
		*hook = "http://" + rec.Addr + "/webhooks/defender"
	case "admin":
		*admin = "http://" + rec.Addr
	}
}

func (r *responder) stop() {
	_ = r.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { _ = r.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = r.cmd.Process.Kill()
		<-done
	}
}

// rss reads a process's resident set (current and peak) from /proc.
func rss(pid int) (cur, peak int64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			cur = v * 1024
		case "VmHWM:":
			peak = v * 1024
		}
	}
	return cur, peak
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

func (b *bench) sim(machines []string, perMinute int) *defendertest.Simulator {
	o := defendertest.DevOptions()
	for _, id := range machines {
		o.Machines = append(o.Machines, defendertest.Machine{ID: id, ComputerDNSName: "m-" + id[:12] + ".corp.example.com", HealthStatus: "Active", MachineTags: []string{"workstation"}})
	}
	o.QuotaPerMinute, o.QuotaPerHour = perMinute, perMinute*60
	o.PendingFor, o.InProgressFor = time.Hour, time.Hour
	sim := defendertest.New(o)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fatal(err)
	}
	sim.SetURL("http://" + ln.Addr().String())
	go func() { _ = sim.Serve(context.Background(), ln) }()
	return sim
}

func (b *bench) intake(d time.Duration, conns int, pgDSN string) {
	fmt.Printf("\n## intake: one alert per request, %d connections, %s closed loop; then 1,000 alerts/s open loop\n", conns, d)
	machines := machineIDs(5000, 1)
	sim := b.sim(machines, 100)

	refURL, stopRef := reference()
	warm := newPayloads(machines)
	closedLoop("warm-up", refURL, conns, time.Second, warm.next)
	ref := closedLoop("bare Echo handler (reference)", refURL, conns, d, newPayloads(machines).next)
	stopRef()
	fmt.Println(ref)

	stores := []struct{ name, driver, dsn string }{{"responder, SQLite synchronous=FULL", "sqlite", ""}}
	if pgDSN != "" {
		stores = append(stores, struct{ name, driver, dsn string }{"responder, PostgreSQL", "postgres", createDatabase(pgDSN)})
	}
	for _, st := range stores {
		env := []string{"RESPONDER_SAFETY_MAX_COLLECTIONS_PER_HOUR=1000000", "RESPONDER_SAFETY_MAX_MACHINES_PER_10M=1000000"}
		if st.driver == "postgres" {
			env = append(env, "RESPONDER_STORE_DRIVER=postgres", "RESPONDER_STORE_DSN="+st.dsn)
		}
		r := b.start(sim, env...)
		p := newPayloads(machines)
		closedLoop("warm-up", r.hook, conns, time.Second, p.next)
		wait := profile(r.admin, "intake-"+st.driver, d-time.Second)
		res := closedLoop(st.name, r.hook, conns, d, p.next)
		wait()
		fmt.Println(res)
		fmt.Printf("%-34s %.1f%% of the reference's throughput\n", "", 100*res.rate()/ref.rate())
		if st.driver == "sqlite" {
			summarise(r.db)
		}
		waitOpen := profile(r.admin, "intake-open-"+st.driver, d-time.Second)
		open := openLoop(st.name+" @1000/s", r.hook, 1000, d, p.next)
		waitOpen()
		fmt.Println(open)
		_, peak := rss(r.cmd.Process.Pid)
		fmt.Printf("%-34s peak RSS %.1f MiB\n", "", mib(peak))
		r.stop()
	}
}

// summarise prints the decisions and the queue of a run.
func summarise(dbPath string) {
	db, err := sql.Open("sqlite", "file:"+dbPath+"?_pragma=query_only(1)&_pragma=busy_timeout(5000)")
	if err != nil {
		return
	}
	defer db.Close()
	for _, q := range []string{
		`SELECT decision || '/' || state || '/' || outcome, COUNT(*) FROM responder_audit GROUP BY 1 ORDER BY 2 DESC`,
		`SELECT kind || '/' || state, COUNT(*) FROM river_job GROUP BY 1 ORDER BY 2 DESC`,
		`SELECT 'undispatched', COUNT(*) FROM responder_alert WHERE dispatched = 0`,
	} {
		rows, err := db.Query(q)
		if err != nil {
			fmt.Println("summary:", err)
			continue
		}
		var parts []string
		for rows.Next() {
			var k string
			var n int
			if rows.Scan(&k, &n) == nil {
				parts = append(parts, fmt.Sprintf("%s=%d", k, n))
			}
		}
		rows.Close()
		fmt.Println("  ", strings.Join(parts, " "))
	}
}

// stages prints where the time between acceptance and the POST went, from
// the store's own timestamps (milliseconds).
func stages(dbPath string) {
	db, err := sql.Open("sqlite", "file:"+dbPath+"?_pragma=query_only(1)")
	if err != nil {
		return
	}
	defer db.Close()
	rows, err := db.Query(`SELECT a.created_at - r.received_at, u.posted_at - a.created_at FROM responder_audit a
JOIN responder_alert r ON r.id = a.alert_row_id JOIN responder_audit u ON u.id = a.id WHERE a.posted_at > 0`)
	if err != nil {
		fmt.Println("stages:", err)
		return
	}
	defer rows.Close()
	var decide, post []time.Duration
	for rows.Next() {
		var d, p int64
		if rows.Scan(&d, &p) == nil {
			decide = append(decide, time.Duration(d)*time.Millisecond)
			post = append(post, time.Duration(p)*time.Millisecond)
		}
	}
	dr := &result{latencies: decide}
	pr := &result{latencies: post}
	fmt.Printf("%-34s accepted -> decided p50 %.0f ms p99 %.0f ms; decided -> POST started p50 %.0f ms p99 %.0f ms\n", "",
		ms(dr.pct(0.5)), ms(dr.pct(0.99)), ms(pr.pct(0.5)), ms(pr.pct(0.99)))
}

func createDatabase(base string) string {
	admin, err := sql.Open("pgx", base)
	if err != nil {
		fatal(err)
	}
	defer admin.Close()
	name := fmt.Sprintf("responder_bench_%d", time.Now().UnixNano())
	if _, err := admin.Exec("CREATE DATABASE " + name); err != nil {
		fatal(fmt.Errorf("creating the benchmark database: %w", err))
	}
	u, err := url.Parse(base)
	if err != nil {
		fatal(err)
	}
	u.Path = "/" + name
	return u.String()
}

// dispatch measures from the webhook's 202 to the simulator's receipt of
// the collect POST, with unique machines so that no cooldown applies.
func (b *bench) dispatch() {
	fmt.Println("\n## dispatch: 202 answer to the simulator's receipt of the collect POST")
	for _, rate := range []int{10, 100} {
		n := rate * 10
		machines := machineIDs(n, 2+rate)
		sim := b.sim(machines, 1_000_000)
		r := b.start(sim, "RESPONDER_DEFENDER_RATE_LIMIT_PER_MINUTE=1000000", "RESPONDER_DEFENDER_RATE_LIMIT_PER_HOUR=100000000",
			"RESPONDER_SAFETY_MAX_COLLECTIONS_PER_HOUR=1000000", "RESPONDER_SAFETY_MAX_MACHINES_PER_10M=1000000")
		c := newClient(64)
		accepted := make(map[string]time.Time, n)
		var mu sync.Mutex
		var wg sync.WaitGroup
		interval := time.Second / time.Duration(rate)
		wait := profile(r.admin, fmt.Sprintf("dispatch-%d", rate), 9*time.Second)
		start := time.Now()
		for i := range n {
			if w := time.Until(start.Add(time.Duration(i) * interval)); w > 0 {
				time.Sleep(w)
			}
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				m := machines[i]
				body := fmt.Appendf(nil, `{"id":"da-dispatch-%d","machineId":%q,"severity":"High","status":"New","category":"Malware","title":"t","alertCreationTime":"2026-11-26T10:00:00Z"}`, i, m)
				code, _, err := postOnce(c, r.hook, body)
				if err == nil && code == 202 {
					mu.Lock()
					accepted[m] = time.Now()
					mu.Unlock()
				}
			}(i)
		}
		wg.Wait()
		wait()
		deadline := time.Now().Add(60 * time.Second)
		var lat []time.Duration
		for time.Now().Before(deadline) {
			lat = lat[:0]
			for _, req := range sim.Requests() {
				if req.Method != "POST" || !strings.HasSuffix(req.Path, "/collectInvestigationPackage") {
					continue
				}
				m := strings.TrimSuffix(strings.TrimPrefix(req.Path, "/api/machines/"), "/collectInvestigationPackage")
				if at, ok := accepted[m]; ok {
					lat = append(lat, max(req.Time.Sub(at), 0))
				}
			}
			if len(lat) >= len(accepted) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		res := &result{name: fmt.Sprintf("dispatch @%d alerts/s", rate), latencies: lat, requests: len(lat), elapsed: time.Second, codes: map[int]int{}}
		fmt.Printf("%-34s %d of %d accepted alerts reached Defender  p50 %.2f ms  p99 %.2f ms  max %.2f ms\n",
			res.name, len(lat), len(accepted), ms(res.pct(0.5)), ms(res.pct(0.99)), ms(res.pct(1)))
		r.stop()
		stages(r.db)
	}
}

// storm sends a burst of alerts for many machines at the default quota and
// watches the queue drain.
func (b *bench) storm(alerts, machinesN int, observe time.Duration) {
	fmt.Printf("\n## storm: %d alerts for %d machines in one burst, default quota (100/min)\n", alerts, machinesN)
	machines := machineIDs(machinesN, 3)
	sim := b.sim(machines, 100)
	r := b.start(sim, "RESPONDER_SAFETY_MAX_COLLECTIONS_PER_HOUR=1000000", "RESPONDER_SAFETY_MAX_MACHINES_PER_10M=1000000")
	p := newPayloads(machines)
	c := newClient(64)
	var sent, acceptedN, other atomic.Int64
	codes := sync.Map{}
	start := time.Now()
	var wg sync.WaitGroup
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for sent.Add(1) <= int64(alerts) {
				code, _, err := postOnce(c, r.hook, p.next())
				if err != nil {
					other.Add(1)
					continue
				}
				v, _ := codes.LoadOrStore(code, new(atomic.Int64))
				v.(*atomic.Int64).Add(1)
				if code == 202 {
					acceptedN.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	burst := time.Since(start)
	cm := map[int]int64{}
	codes.Range(func(k, v any) bool { cm[k.(int)] = v.(*atomic.Int64).Load(); return true })
	_, peak := rss(r.cmd.Process.Pid)
	fmt.Printf("burst: %d alerts in %s (%.0f/s), answers %v, transport errors %d, peak RSS so far %.1f MiB\n",
		alerts, burst.Round(time.Millisecond), float64(alerts)/burst.Seconds(), cm, other.Load(), mib(peak))

	// Watch the drain. The first POST marks the start of the backlog.
	deadline := time.Now().Add(observe)
	for time.Now().Before(deadline) {
		time.Sleep(5 * time.Second)
	}
	// MDE counts the calls it served against the quota, not those it
	// refused with 429.
	var times []time.Time
	for _, req := range sim.Requests() {
		if req.Method == "POST" && strings.HasSuffix(req.Path, "/collectInvestigationPackage") && req.Status != 429 {
			times = append(times, req.Time)
		}
	}
	slices.SortFunc(times, func(a, b time.Time) int { return a.Compare(b) })
	worst := 0
	for i := range times {
		j := i
		for j < len(times) && times[j].Sub(times[i]) < time.Minute {
			j++
		}
		worst = max(worst, j-i)
	}
	var rate429 int
	for _, req := range sim.Requests() {
		if req.Status == 429 {
			rate429++
		}
	}
	_, peak = rss(r.cmd.Process.Pid)
	summarise(r.db)
	if profileDir != "" {
		if resp, err := http.Get(r.admin + "/debug/pprof/goroutine?debug=1"); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			_ = os.WriteFile(filepath.Join(profileDir, "storm-goroutines.txt"), b, 0o644)
		}
	}
	if len(times) > 1 {
		span := times[len(times)-1].Sub(times[0])
		// Full minutes of backlog observed: calls made in them / quota.
		full := int(span / time.Minute)
		inFull := 0
		for _, t := range times {
			if t.Sub(times[0]) < time.Duration(full)*time.Minute {
				inFull++
			}
		}
		eff := 0.0
		if full > 0 {
			eff = float64(inFull) / float64(full*100)
		}
		fmt.Printf("drain: %d collect POSTs in %s of backlog; busiest 60 s window %d calls (quota 100); 429 answers %d; drain efficiency over %d full minutes %.3f of the quota; peak RSS %.1f MiB\n",
			len(times), span.Round(time.Second), worst, rate429, full, eff, mib(peak))
	}
	r.stop()
}

func (b *bench) idle() {
	fmt.Println("\n## idle")
	machines := machineIDs(10, 4)
	sim := b.sim(machines, 100)
	r := b.start(sim)
	time.Sleep(15 * time.Second) // let the runtime settle: this is what is measured
	cur, peak := rss(r.cmd.Process.Pid)
	fmt.Printf("idle responder after 15 s: RSS %.1f MiB (peak %.1f MiB)\n", mib(cur), mib(peak))
	r.stop()
}
