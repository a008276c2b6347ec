package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/responder-dev/responder/defender/defendertest"
	"github.com/responder-dev/responder/internal/testkit"
)

// The sustained scenario (issue 15): alerts accepted per second and alerts
// decided per second over the same window, the backlog between them, and
// the responder's CPU per alert, beside a bare handler driven by the same
// client in the same run.
//
//	go run ./internal/loadbench -scenario sustained
//	go run ./internal/loadbench -scenario sustained -duration 5s -sustained-mix tags -postgres DSN
//
// The workload is what most deployments see: one MDE alert of about 1.5 KB
// per request from a fleet of 19,000 machines, bearer-token webhooks,
// info-level JSON logs written to a file, 64 keep-alive connections in a
// closed loop. Two mixes:
//
//   - severity: one rule on alert.severity and nothing reading machine.*,
//     and no alert qualifies (no "critical" severity);
//   - tags: 90 % of the alerts as above, 10 % critical on machines the
//     simulator knows, with rules reading machine.tags (so each machine
//     is read from Defender, then cached for 10 minutes), in dry-run
//     mode.
//
// Each run (mix, store) reports, over one window: 202 answers counted by
// the client and alerts accepted and decided according to the responder's
// own counters (responder_alerts_received_total{outcome="accepted"}, and
// responder_decisions_total summed over its labels: one per decided alert
// and machine, no_match included), the backlog (accepted minus decided
// since the start) at the window's start, its end and 10 s after the load
// stops, the responder's CPU from /proc per decided and per accepted
// alert, the 202 latency, and the ratios to the bare handler. Then an open
// loop at 1,000 alerts/s, and a cross-check of the counters against the
// store's rows.

// sustainedOptions are the flags of the sustained scenario.
type sustainedOptions struct {
	duration time.Duration
	conns    int
	postgres string
	// mixes is a comma-separated list of sustainedMixes' names.
	mixes string
}

const (
	// sustainedMachines is how many machines the alerts come from.
	sustainedMachines = 19_000
	// sustainedQualifying is how many of them the qualifying alerts of
	// the tags mix come from.
	sustainedQualifying = 3_000
	// sustainedWarmUp is the closed loop before each measured window.
	sustainedWarmUp = 2 * time.Second
	// sustainedPrime bounds priming the machine cache (the mixes whose
	// rules read machine.*): one alert from each machine, decided.
	sustainedPrime = 3 * time.Minute
	// sustainedDrain is how long the backlog is watched after the load.
	sustainedDrain = 10 * time.Second
	// sustainedOpenRate and sustainedOpenFor are the open loop's.
	sustainedOpenRate = 1000
	sustainedOpenFor  = 10 * time.Second
	// sustainedDefaultDuration is -duration's default for this scenario.
	sustainedDefaultDuration = 30 * time.Second
)

// sustainedMix is one workload of the scenario.
type sustainedMix struct {
	name  string
	rules string
	// qualifyingPercent of the alerts are critical, on one of the
	// qualifying machines.
	qualifyingPercent uint64
	// env is added to the responder's environment.
	env []string
	// readsMachines: the rules read machine.*, so the simulator must know
	// the fleet.
	readsMachines bool
	notes         []string
}

var sustainedMixes = []sustainedMix{
	{
		name: "severity",
		rules: `rules:
  - name: critical-only
    when: 'alert.severity == "critical"'
`,
		notes: []string{"no rule reads machine.*: no machine is read from Defender", "no alert is critical: none qualifies"},
	},
	{
		name: "tags",
		rules: `rules:
  - name: never-domain-controllers
    when: '"domain-controller" in machine.tags'
    action: ignore
  - name: critical-workstations
    when: 'alert.severity == "critical" && "workstation" in machine.tags'
`,
		qualifyingPercent: 10,
		env: []string{
			"RESPONDER_DEFENDER_DRY_RUN=true",
			// The responder's own quota on Defender calls (machine reads
			// included) defaults to 100 a minute and 1,500 an hour, which
			// would cap deciding at 100 alerts of new machines a minute.
			// The configuration sets no upper bound; these never bind.
			"RESPONDER_DEFENDER_RATE_LIMIT_PER_MINUTE=1000000",
			"RESPONDER_DEFENDER_RATE_LIMIT_PER_HOUR=100000000",
		},
		readsMachines: true,
		notes: []string{
			"10 % of the alerts are critical on 3,000 workstations; every alert needs its machine's tags (the first rule reads them): each machine is read from Defender once, then cached for 10 minutes",
			"the simulator knows the whole fleet (19,000 machines, 1 % tagged domain-controller), with a quota of 1,000,000 calls a minute",
			"the responder's own Defender quota (machine reads included) is lifted to 1,000,000 calls a minute and 100,000,000 an hour, which never bind (the configuration has no upper bound); at the default 100 a minute and 1,500 an hour it would cap deciding: the fleet's first reads alone would take 13 hours",
			"defender.dry_run is on: qualifying alerts are decided dry_run (or cooldown), and no collection is sent, so the simulator's action quota plays no part",
		},
	},
}

// sustainedEnv is what every run sets besides the listeners, the store
// and Defender: the safety limits lifted like intake's.
var sustainedEnv = []string{
	"RESPONDER_SAFETY_MAX_COLLECTIONS_PER_HOUR=1000000",
	"RESPONDER_SAFETY_MAX_MACHINES_PER_10M=1000000",
}

// flagSet reports whether the flag name was given on the command line.
func flagSet(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

func (b *bench) sustained(o sustainedOptions) {
	hz := clockTicks()
	var mixes []sustainedMix
	for _, name := range strings.Split(o.mixes, ",") {
		i := slices.IndexFunc(sustainedMixes, func(m sustainedMix) bool { return m.name == strings.TrimSpace(name) })
		if i < 0 {
			fatal(fmt.Errorf("-sustained-mix: unknown mix %q (want severity, tags)", name))
		}
		mixes = append(mixes, sustainedMixes[i])
	}
	fleet := newSustainedFleet(sustainedSeed, sustainedMachines, sustainedQualifying)
	sizes := newMDEAlerts(sustainedSeed, fleet, 10).sizes(5000)
	fmt.Printf("\n## sustained: one MDE alert per request (%d–%d bytes, mean %d) from %d machines, bearer token, info-level JSON logs to a file, %d connections, %s closed loop after %s of warm-up; then %d alerts/s open loop for %s\n",
		sizes[0], sizes[2], sizes[1], sustainedMachines, o.conns, o.duration, sustainedWarmUp, sustainedOpenRate, sustainedOpenFor)
	fmt.Printf("CPU from /proc/<pid>/stat at CLK_TCK %d (getconf); the load generator's own CPU from getrusage(RUSAGE_SELF)\n", hz)
	var rows []sustainedRow
	for _, mix := range mixes {
		stores := []sustainedStore{{name: "SQLite", driver: "sqlite"}}
		if o.postgres != "" {
			stores = append(stores, sustainedStore{name: "PostgreSQL", driver: "postgres", base: o.postgres})
		}
		for _, st := range stores {
			rows = append(rows, b.sustainedRun(o, mix, st, fleet, hz))
		}
	}
	fmt.Printf("\n### sustained: summary\n\n")
	fmt.Println("| mix, store | bare handler | accepted/s (202 · metric) | decided/s | decided ÷ bare | backlog growth | backlog +10 s | CPU µs / decided | 202 p50 / p99 | p99 @1,000/s |")
	fmt.Println("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
	for _, r := range rows {
		fmt.Println(r.summary())
	}
}

// sustainedStore is the store of one run: driver and, for PostgreSQL, the
// DSN of the server to create a database beside.
type sustainedStore struct {
	name, driver, base string
}

// sustainedRow holds what one run measured, for its table.
type sustainedRow struct {
	mix, store string

	refRate, refCPU float64 // req/s; µs per request, client and server in one process

	window                       time.Duration
	answered, ok202, errs        int
	codes                        map[int]int
	clientCPU                    float64 // µs per answered request
	clientWith                   string  // what else the load generator did meanwhile
	accepted, decided            float64 // in the window, from the metrics
	backlogStart, backlogEnd     float64
	backlogAfter                 float64
	drainedIn                    time.Duration // 0: not drained within sustainedDrain
	respCPU                      time.Duration
	p50, p99                     time.Duration
	openP50, openP99             time.Duration
	openAnswered, openOK         int
	reads, quotaWait, quotaWaits float64
}

func (r *sustainedRow) acceptedRate() float64 { return r.accepted / r.window.Seconds() }
func (r *sustainedRow) decidedRate() float64  { return r.decided / r.window.Seconds() }
func (r *sustainedRow) ok202Rate() float64    { return float64(r.ok202) / r.window.Seconds() }

func perAlert(d time.Duration, n float64) float64 {
	if n <= 0 {
		return 0
	}
	return float64(d.Microseconds()) / n
}

func (r *sustainedRow) summary() string {
	after := fmt.Sprintf("%.0f", r.backlogAfter)
	if r.drainedIn > 0 {
		after = fmt.Sprintf("0 (drained in %.1f s)", r.drainedIn.Seconds())
	}
	return fmt.Sprintf("| %s, %s | %.0f /s | %.0f · %.0f /s | **%.0f /s** | %.3f | %+.0f | %s | %.0f µs | %.1f / %.1f ms | %.1f ms |",
		r.mix, r.store, r.refRate, r.ok202Rate(), r.acceptedRate(), r.decidedRate(), r.decidedRate()/r.refRate,
		r.backlogEnd-r.backlogStart, after, perAlert(r.respCPU, r.decided), ms(r.p50), ms(r.p99), ms(r.openP99))
}

// table is the run's compact table, ready for BENCHMARKS.md.
func (r *sustainedRow) table() string {
	var sb strings.Builder
	row := func(k, format string, a ...any) { fmt.Fprintf(&sb, "| %s | "+format+" |\n", append([]any{k}, a...)...) }
	fmt.Fprintf(&sb, "| %s mix, %s, %s window | |\n|---|---:|\n", r.mix, r.store, r.window.Round(10*time.Millisecond))
	row("bare handler, same client", "%.0f req/s, %.1f µs CPU per request (client and server in one process)", r.refRate, r.refCPU)
	row("202 answers (client)", "%.0f /s (%d answers, codes %v, transport errors %d)", r.ok202Rate(), r.answered, r.codes, r.errs)
	row("accepted (responder_alerts_received_total)", "%.0f /s", r.acceptedRate())
	row("decided (responder_decisions_total)", "**%.0f /s**", r.decidedRate())
	row("accepted ÷ bare, decided ÷ bare", "%.3f, **%.3f**", r.acceptedRate()/r.refRate, r.decidedRate()/r.refRate)
	row("backlog at start → end (growth)", "%.0f → %.0f (%+.0f)", r.backlogStart, r.backlogEnd, r.backlogEnd-r.backlogStart)
	if r.drainedIn > 0 {
		row("backlog 10 s after the load", "0 (drained in %.1f s)", r.drainedIn.Seconds())
	} else {
		row("backlog 10 s after the load", "%.0f", r.backlogAfter)
	}
	row("responder CPU per decided, per accepted alert", "**%.0f µs**, %.0f µs (%.1f s of CPU)", perAlert(r.respCPU, r.decided), perAlert(r.respCPU, r.accepted), r.respCPU.Seconds())
	row("load generator CPU per answer ("+r.clientWith+")", "%.1f µs", r.clientCPU)
	row("202 latency p50 / p99", "%.2f / %.2f ms", ms(r.p50), ms(r.p99))
	row(fmt.Sprintf("open loop %d/s: 202 p50 / p99", sustainedOpenRate), "%.2f / %.2f ms (%d of %d answers 202)", ms(r.openP50), ms(r.openP99), r.openOK, r.openAnswered)
	if r.reads > 0 || r.quotaWaits > 0 {
		row("machine reads in the window; their wait for the responder's quota", "%.0f; %.2f s in all (%.0f calls through the quota)", r.reads, r.quotaWait, r.quotaWaits)
	}
	return sb.String()
}

func (b *bench) sustainedRun(o sustainedOptions, mix sustainedMix, st sustainedStore, fleet *sustainedFleet, hz int64) sustainedRow {
	row := sustainedRow{mix: mix.name, store: st.name}
	fmt.Printf("\n### sustained, %s mix, %s\n", mix.name, st.name)
	fmt.Printf("- rules: %s\n", strings.Join(strings.Fields(strings.TrimPrefix(mix.rules, "rules:")), " "))
	for _, n := range mix.notes {
		fmt.Println("-", n)
	}
	token := randomToken()
	var sim *defendertest.Simulator
	var stopSim func()
	if mix.readsMachines {
		sim, stopSim = fleet.simulator(1_000_000)
	} else {
		sim, stopSim = fleet.simulator(0)
	}
	defer stopSim()

	// The bare handler, with the same client, payloads and duration,
	// right before the responder.
	refURL, stopRef := reference()
	ref := newLoadClient(o.conns, token)
	refGen := newMDEAlerts(sustainedSeed, fleet, mix.qualifyingPercent)
	ref.closedLoop("warm-up", refURL, o.conns, sustainedWarmUp, refGen)
	self0 := testkit.ProcessCPU()
	refRes := ref.closedLoop("bare handler", refURL, o.conns, o.duration, refGen)
	refCPU := testkit.ProcessCPU() - self0
	stopRef()
	ref.close()
	row.refRate = refRes.rate()
	row.refCPU = perAlert(refCPU, float64(refRes.requests))
	fmt.Printf("%-44s %8.0f req/s  p50 %6.2f ms  p99 %6.2f ms  CPU %.1f µs per request (client and server in this one process)  codes %v errors %d\n",
		"bare Echo handler (reference)", row.refRate, ms(refRes.pct(0.5)), ms(refRes.pct(0.99)), row.refCPU, refRes.codes, refRes.errors)

	env := append(slices.Clone(sustainedEnv), mix.env...)
	storeDSN := ""
	if st.driver == "postgres" {
		storeDSN = createDatabase(st.base)
		env = append(env, "RESPONDER_STORE_DRIVER=postgres", "RESPONDER_STORE_DSN="+storeDSN)
	}
	r := b.startSustained(sim, mix, token, env)
	defer r.stop()
	if st.driver != "postgres" {
		storeDSN = r.db
	}
	lc := newLoadClient(o.conns, token)
	defer lc.close()
	gen := newMDEAlerts(sustainedSeed, fleet, mix.qualifyingPercent)
	if mix.readsMachines {
		// A deployment's steady state: every machine that raises alerts
		// has been read in the last 10 minutes (the responder's machine
		// cache). One alert from each machine of the fleet, then the
		// backlog drained, before the window; a cold start is a different
		// measurement (machine reads at Defender's pace).
		began := time.Now()
		primed := lc.each(r.hook, o.conns, len(fleet.hosts), gen.appendFrom)
		left, drained := r.watchBacklog(began, sustainedPrime)
		reads := r.scrape().sum("responder_defender_requests_total", `operation="get_machine"`)
		if drained > 0 {
			fmt.Printf("%-44s one alert from each of the %d machines (%d answers %v), decided with %.0f machine reads in %.1f s\n", "machine cache primed",
				len(fleet.hosts), primed.requests, primed.codes, reads, drained.Seconds())
		} else {
			fmt.Printf("%-44s one alert from each of the %d machines, %.0f machine reads, %.0f still undecided after %s: the window starts with that backlog\n", "machine cache NOT primed",
				len(fleet.hosts), reads, left, sustainedPrime)
		}
	}
	lc.closedLoop("warm-up", r.hook, o.conns, sustainedWarmUp, gen)

	m0 := r.scrape()
	t0, cpu0, self0 := time.Now(), procCPU(r.pid(), hz), testkit.ProcessCPU()
	// The profile covers the window but its last second, so that it is
	// written before the window ends.
	wait := profile(r.admin, "sustained-"+mix.name+"-"+st.driver, max(o.duration-time.Second, time.Second))
	res := lc.closedLoop("responder", r.hook, o.conns, o.duration, gen)
	m1 := r.scrape()
	t1, cpu1, self1 := time.Now(), procCPU(r.pid(), hz), testkit.ProcessCPU()
	stopped := time.Now()
	wait()

	row.window = t1.Sub(t0)
	row.answered, row.ok202, row.errs, row.codes = res.requests, res.codes[http.StatusAccepted], res.errors, res.codes
	row.p50, row.p99 = res.pct(0.5), res.pct(0.99)
	row.clientCPU = perAlert(self1-self0, float64(res.requests))
	row.accepted = m1.accepted() - m0.accepted()
	row.decided = m1.decided() - m0.decided()
	row.backlogStart, row.backlogEnd = m0.backlog(), m1.backlog()
	row.respCPU = cpu1 - cpu0
	row.reads = m1.sum("responder_defender_requests_total", `operation="get_machine"`) - m0.sum("responder_defender_requests_total", `operation="get_machine"`)
	row.quotaWaits = m1.sum("responder_defender_rate_limit_wait_seconds_count") - m0.sum("responder_defender_rate_limit_wait_seconds_count")
	row.quotaWait = m1.sum("responder_defender_rate_limit_wait_seconds_sum") - m0.sum("responder_defender_rate_limit_wait_seconds_sum")
	fmt.Printf("%-44s %8.0f 202/s  p50 %6.2f ms  p99 %6.2f ms  codes %v errors %d\n", "responder (client's count)", row.ok202Rate(), ms(row.p50), ms(row.p99), res.codes, res.errors)
	fmt.Printf("%-44s accepted %.0f/s, decided %.0f/s over %s; backlog %.0f → %.0f\n", "responder (its metrics)", row.acceptedRate(), row.decidedRate(), row.window.Round(time.Millisecond), row.backlogStart, row.backlogEnd)
	row.clientWith = "the client alone"
	if mix.readsMachines {
		row.clientWith = "the client and the simulator serving the machine reads"
	}
	fmt.Printf("%-44s responder %.1f s (%.0f µs per decided alert), load generator %.1f s (%.1f µs per answer: %s)\n", "CPU over the window", row.respCPU.Seconds(),
		perAlert(row.respCPU, row.decided), (self1 - self0).Seconds(), row.clientCPU, row.clientWith)
	if mix.readsMachines {
		readSecs := m1.sum("responder_defender_request_duration_seconds_sum", `operation="get_machine"`) - m0.sum("responder_defender_request_duration_seconds_sum", `operation="get_machine"`)
		fmt.Printf("%-44s %.0f machine reads in the window (%.0f since the start, of %d machines), %.1f ms each on average; %.0f Defender calls went through the responder's quota, waiting %.2f s in all\n", "",
			row.reads, m1.sum("responder_defender_requests_total", `operation="get_machine"`), sustainedMachines, 1000*readSecs/max(row.reads, 1), row.quotaWaits, row.quotaWait)
		if row.quotaWait > 0.1 {
			fmt.Printf("%-44s the responder's Defender quota limiter held machine reads back (%.1f ms a call), so it caps deciding although its limits never bind: on PostgreSQL each call is admitted in a transaction on the shared quota log, one at a time\n", "",
				1000*row.quotaWait/max(row.quotaWaits, 1))
		}
	}

	// Does the backlog drain once the load stops?
	row.backlogAfter, row.drainedIn = r.watchBacklog(stopped, sustainedDrain)
	if row.drainedIn > 0 {
		fmt.Printf("%-44s drained %.1f s after the load stopped\n", "backlog", row.drainedIn.Seconds())
	} else {
		fmt.Printf("%-44s %.0f alerts %s after the load stopped\n", "backlog", row.backlogAfter, sustainedDrain)
	}

	waitOpen := profile(r.admin, "sustained-open-"+mix.name+"-"+st.driver, sustainedOpenFor-time.Second)
	open := newLoadClient(512, token)
	openRes := open.openLoop(r.hook, sustainedOpenRate, sustainedOpenFor, gen)
	open.close()
	waitOpen()
	row.openP50, row.openP99 = openRes.pct(0.5), openRes.pct(0.99)
	row.openAnswered, row.openOK = openRes.requests, openRes.codes[http.StatusAccepted]
	fmt.Printf("%-44s p50 %6.2f ms  p99 %6.2f ms  codes %v errors %d\n", fmt.Sprintf("open loop %d alerts/s", sustainedOpenRate), ms(row.openP50), ms(row.openP99), openRes.codes, openRes.errors)

	// The counters against the store, once nothing is left to decide (or
	// sustainedDrain has passed: then both move while they are read).
	if left, _ := r.watchBacklog(time.Now(), sustainedDrain); left > 0 {
		fmt.Printf("%-44s %.0f alerts still undecided %s after the open loop: the counters and the rows below are read a moment apart and may differ\n", "", left, sustainedDrain)
	}
	final := r.scrape()
	fmt.Printf("%-44s accepted %.0f, duplicates %.0f, decided %.0f (%s)\n", "metrics since the start", final.accepted(),
		final.sum("responder_alerts_received_total", `outcome="duplicate"`), final.decided(), formatCounts(final.byLabel("responder_decisions_total", "decision")))
	if alerts, audits, by, err := storeCounts(st.driver, storeDSN); err != nil {
		fmt.Printf("%-44s %v\n", "store", err)
	} else {
		fmt.Printf("%-44s responder_alert rows %d, responder_audit rows %d (%s)\n", "store", alerts, audits, formatCounts(by))
	}
	_, peak := rss(r.pid())
	fmt.Printf("%-44s peak RSS %.1f MiB; log file %.1f MiB\n", "", mib(peak), mib(fileSize(r.logPath)))
	fmt.Println()
	fmt.Print(row.table())
	return row
}

// clockTicks is the kernel's clock tick rate (getconf CLK_TCK), the unit of
// utime and stime in /proc/<pid>/stat.
func clockTicks() int64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err != nil {
		fmt.Fprintln(os.Stderr, "getconf CLK_TCK:", err, "(taking 100)")
		return 100
	}
	hz, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	if err != nil || hz <= 0 {
		fmt.Fprintf(os.Stderr, "getconf CLK_TCK: %q (taking 100)\n", out)
		return 100
	}
	return hz
}

// procCPU is the user and system CPU time process pid has used so far.
func procCPU(pid int, hz int64) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The fields after the command name (which may hold spaces): utime and
	// stime are the 12th and 13th, in clock ticks.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+s) * time.Second / time.Duration(hz)
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

func randomToken() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		fatal(err)
	}
	return hex.EncodeToString(b)
}

// sustainedResponder is a responder started with its logs going to a file.
type sustainedResponder struct {
	cmd     *exec.Cmd
	db      string // the SQLite store's path
	hook    string
	admin   string
	logPath string
	exited  chan struct{}
	metrics *http.Client
}

func (r *sustainedResponder) pid() int { return r.cmd.Process.Pid }

// startSustained starts the responder the way a new user would run it:
// bearer-token webhooks (and webhooks.allow_unauthenticated left unset,
// unlike bench.startWith), info-level JSON logs written to a file, the
// mix's rules. The environment is given in full rather than appended to
// startWith's; the listeners are found in the log file.
func (b *bench) startSustained(sim *defendertest.Simulator, mix sustainedMix, token string, env []string) *sustainedResponder {
	name := fmt.Sprintf("sustained-%s-%d", mix.name, mrand.IntN(1e9))
	// The rules in a directory of their own, as the deploy files mount
	// them (/etc/responder/rules beside /var/lib/responder): the rules
	// watcher is told of every write in its directory, and the store and
	// the log file write thousands of times a second.
	rulesDir := filepath.Join(b.dir, name+"-rules")
	if err := os.Mkdir(rulesDir, 0o700); err != nil {
		fatal(err)
	}
	rules := filepath.Join(rulesDir, "rules.yaml")
	if err := os.WriteFile(rules, []byte(mix.rules), 0o600); err != nil {
		fatal(err)
	}
	r := &sustainedResponder{db: filepath.Join(b.dir, name+".db"), logPath: filepath.Join(b.dir, name+".log"),
		exited: make(chan struct{}), metrics: &http.Client{Timeout: 10 * time.Second}}
	logFile, err := os.Create(r.logPath)
	if err != nil {
		fatal(err)
	}
	defer logFile.Close() // the child has its own descriptor
	r.cmd = exec.Command(b.binary, "serve")
	// os/exec keeps the last value of a key given twice (Cmd.Env's
	// documentation), so env may override any of these.
	r.cmd.Env = append([]string{
		"PATH=" + os.Getenv("PATH"),
		"RESPONDER_SERVER_LISTEN=127.0.0.1:0",
		"RESPONDER_SERVER_ADMIN_LISTEN=127.0.0.1:0",
		"RESPONDER_ADMIN_ALLOW_UNAUTHENTICATED=true", // the admin listener is loopback
		"RESPONDER_WEBHOOKS_BEARER_TOKEN=" + token,
		"RESPONDER_LOG_LEVEL=info",
		"RESPONDER_LOG_FORMAT=json",
		"RESPONDER_STORE_DSN=" + r.db,
		"RESPONDER_RULES_FILES=" + rules,
		"RESPONDER_DEFENDER_API_URL=" + sim.URL(),
		"RESPONDER_DEFENDER_TOKEN_URL=" + sim.TokenURL(),
		"RESPONDER_DEFENDER_TENANT_ID=" + defendertest.DevTenantID,
		"RESPONDER_DEFENDER_CLIENT_ID=" + defendertest.DevClientID,
		"RESPONDER_DEFENDER_CLIENT_SECRET=" + defendertest.DevClientSecret,
	}, env...)
	r.cmd.Stdout, r.cmd.Stderr = logFile, os.Stderr
	if err := r.cmd.Start(); err != nil {
		fatal(err)
	}
	go func() { _ = r.cmd.Wait(); close(r.exited) }()
	if err := r.findListeners(30 * time.Second); err != nil {
		r.stop()
		fatal(fmt.Errorf("%w (log: %s)", err, r.logPath))
	}
	return r
}

// findListeners reads the "listening" lines of the log file as the
// responder writes them. A file gives no notice of a write: it is read
// again every 20 ms until both listeners are named, the process exits or
// the time is up.
func (r *sustainedResponder) findListeners(limit time.Duration) error {
	f, err := os.Open(r.logPath)
	if err != nil {
		return err
	}
	defer f.Close()
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var pending []byte
	buf := make([]byte, 64<<10)
	for {
		for {
			n, err := f.Read(buf)
			pending = append(pending, buf[:n]...)
			if err != nil || n == 0 {
				break
			}
		}
		for {
			i := bytes.IndexByte(pending, '\n')
			if i < 0 {
				break
			}
			line := pending[:i]
			pending = pending[i+1:]
			if !bytes.Contains(line, []byte(`"msg":"listening"`)) {
				continue
			}
			noteListening(line, &r.hook, &r.admin)
		}
		if r.hook != "" && r.admin != "" {
			return nil
		}
		select {
		case <-tick.C:
		case <-r.exited:
			return errors.New("the responder exited before listening")
		case <-deadline.C:
			return errors.New("the responder did not start")
		}
	}
}

// stop interrupts the responder and waits for it to exit (30 s, then it
// is killed). It may be called more than once.
func (r *sustainedResponder) stop() {
	select {
	case <-r.exited:
		return
	default:
	}
	_ = r.cmd.Process.Signal(os.Interrupt)
	select {
	case <-r.exited:
	case <-time.After(30 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.exited
	}
	r.metrics.CloseIdleConnections()
}

// scrape reads the responder's metrics from its admin listener.
func (r *sustainedResponder) scrape() promSamples {
	s, err := scrapeMetrics(r.metrics, r.admin)
	if err != nil {
		fatal(err)
	}
	return s
}

// watchBacklog reads the backlog every 200 ms until it is zero or limit has
// passed since from, and returns the last backlog and, if it reached
// zero, how long after from it did.
func (r *sustainedResponder) watchBacklog(from time.Time, limit time.Duration) (float64, time.Duration) {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		backlog := r.scrape().backlog()
		if backlog <= 0 {
			return backlog, max(time.Since(from), time.Millisecond)
		}
		if time.Since(from) >= limit {
			return backlog, 0
		}
		<-tick.C
	}
}

// promSample is one series of a Prometheus text exposition.
type promSample struct {
	name, labels string
	value        float64
}

type promSamples []promSample

// scrapeMetrics fetches admin's /metrics.
func scrapeMetrics(c *http.Client, admin string) (promSamples, error) {
	resp, err := c.Get(admin + "/metrics")
	if err != nil {
		return nil, fmt.Errorf("scraping the metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scraping the metrics: status %s", resp.Status)
	}
	s, err := parseMetrics(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("scraping the metrics: %w", err)
	}
	return s, nil
}

// parseMetrics reads the Prometheus text format line by line: name{labels}
// value (no timestamps, which promhttp does not write); comments skipped.
func parseMetrics(r io.Reader) (promSamples, error) {
	var out promSamples
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		sp := strings.LastIndexByte(line, ' ')
		if sp < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[sp+1:], 64)
		if err != nil {
			continue
		}
		s := promSample{name: line[:sp], value: v}
		if i := strings.IndexByte(s.name, '{'); i >= 0 {
			s.name, s.labels = s.name[:i], s.name[i:]
		}
		out = append(out, s)
	}
	return out, sc.Err()
}

// sum adds the series of name whose labels contain every one of match
// (each `label="value"`).
func (s promSamples) sum(name string, match ...string) float64 {
	var t float64
	for _, x := range s {
		if x.name != name {
			continue
		}
		if !slices.ContainsFunc(match, func(m string) bool { return !strings.Contains(x.labels, m) }) {
			t += x.value
		}
	}
	return t
}

// byLabel sums the series of name by the value of one label.
func (s promSamples) byLabel(name, label string) map[string]float64 {
	out := map[string]float64{}
	key := label + `="`
	for _, x := range s {
		i := strings.Index(x.labels, key)
		if x.name != name || i < 0 {
			continue
		}
		v := x.labels[i+len(key):]
		v = v[:strings.IndexByte(v, '"')]
		out[v] += x.value
	}
	return out
}

// accepted is the alerts stored as new since the start: the webhook
// handler counts an alert (per machine named) "accepted" once the intake
// commit stored it; a duplicate, an ignored or an invalid alert is counted
// under its own outcome.
func (s promSamples) accepted() float64 {
	return s.sum("responder_alerts_received_total", `outcome="accepted"`)
}

// decided is the decisions committed since the start: the evaluator counts
// each recorded decision once, after its transaction, whatever the
// decision (no_match, ignore, dry_run, cooldown included).
func (s promSamples) decided() float64 { return s.sum("responder_decisions_total") }

// backlog is what was accepted and is not decided yet.
func (s promSamples) backlog() float64 { return s.accepted() - s.decided() }

func formatCounts[V int64 | float64](m map[string]V) string {
	keys := make([]string, 0, len(m))
	for k, v := range m {
		if v != 0 {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %.0f", k, float64(m[k]))
	}
	return strings.Join(parts, ", ")
}

// storeCounts counts the stored alerts and the audit entries (one per
// decided alert row), by decision.
func storeCounts(driver, dsn string) (alerts, audits int64, byDecision map[string]int64, err error) {
	var db *sql.DB
	if driver == "postgres" {
		db, err = sql.Open("pgx", dsn)
	} else {
		db, err = sql.Open("sqlite", "file:"+dsn+"?_pragma=query_only(1)&_pragma=busy_timeout(5000)")
	}
	if err != nil {
		return 0, 0, nil, err
	}
	defer db.Close()
	if err := db.QueryRow(`SELECT COUNT(*) FROM responder_alert`).Scan(&alerts); err != nil {
		return 0, 0, nil, fmt.Errorf("counting alerts: %w", err)
	}
	rows, err := db.Query(`SELECT decision, COUNT(*) FROM responder_audit GROUP BY decision`)
	if err != nil {
		return 0, 0, nil, fmt.Errorf("counting audit entries: %w", err)
	}
	defer rows.Close()
	byDecision = map[string]int64{}
	for rows.Next() {
		var d string
		var n int64
		if err := rows.Scan(&d, &n); err != nil {
			return 0, 0, nil, err
		}
		byDecision[d] = n
		audits += n
	}
	return alerts, audits, byDecision, rows.Err()
}

// loadClient is the scenario's HTTP client: newClient's keep-alive
// transport, and the bearer token on every request (the bare handler
// ignores it, so both sides send the same requests).
type loadClient struct {
	c    *http.Client
	auth string
}

func newLoadClient(conns int, token string) *loadClient {
	return &loadClient{c: newClient(conns), auth: "Bearer " + token}
}

func (l *loadClient) close() { l.c.CloseIdleConnections() }

func (l *loadClient) post(url string, body []byte) (int, time.Duration, error) {
	start := time.Now()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", l.auth)
	resp, err := l.c.Do(req)
	if err != nil {
		return 0, 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, time.Since(start), nil
}

// each sends n requests, the i-th with the payload next appends for i,
// over conns workers, and returns when all are answered.
func (l *loadClient) each(url string, conns, n int, next func(b []byte, i int) []byte) *result {
	var cursor atomic.Int64
	return l.drive("each", url, conns, func(b []byte) ([]byte, bool) {
		i := int(cursor.Add(1)) - 1
		if i >= n {
			return b, false
		}
		return next(b, i), true
	})
}

// closedLoop sends as fast as conns workers can for d, each building its
// payloads in a buffer of its own. The result's latencies are those of the
// 202 answers; requests counts every answer.
func (l *loadClient) closedLoop(name, url string, conns int, d time.Duration, gen *mdeAlerts) *result {
	deadline := time.Now().Add(d)
	return l.drive(name, url, conns, func(b []byte) ([]byte, bool) {
		if !time.Now().Before(deadline) {
			return b, false
		}
		return gen.append(b), true
	})
}

// drive runs conns workers, each posting the payloads next appends to its
// buffer until next says there are no more, and sums what they got: every
// answer by code, transport errors, and the latencies of the 202 answers.
func (l *loadClient) drive(name, url string, conns int, next func(b []byte) ([]byte, bool)) *result {
	res := &result{name: name, codes: map[int]int{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for range conns {
		wg.Go(func() {
			buf := make([]byte, 0, 2048)
			lat := make([]time.Duration, 0, 4096)
			codes := map[int]int{}
			answers, errs := 0, 0
			for {
				var more bool
				if buf, more = next(buf[:0]); !more {
					break
				}
				code, took, err := l.post(url, buf)
				if err != nil {
					errs++
					continue
				}
				answers++
				codes[code]++
				if code == http.StatusAccepted {
					lat = append(lat, took)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			res.latencies = append(res.latencies, lat...)
			res.requests += answers
			res.errors += errs
			for k, v := range codes {
				res.codes[k] += v
			}
		})
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	return res
}

// openLoop sends rate requests a second for d whatever the answers take,
// and measures each 202 from when its request was due (no coordinated
// omission), as openLoop does.
func (l *loadClient) openLoop(url string, rate int, d time.Duration, gen *mdeAlerts) *result {
	res := &result{name: "open loop", codes: map[int]int{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	interval := time.Second / time.Duration(rate)
	start := time.Now()
	for i := range int(d / interval) {
		due := start.Add(time.Duration(i) * interval)
		if w := time.Until(due); w > 0 {
			time.Sleep(w) // pacing, not synchronisation
		}
		body := gen.append(make([]byte, 0, 2048))
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, _, err := l.post(url, body)
			took := time.Since(due)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				res.errors++
				return
			}
			res.requests++
			res.codes[code]++
			if code == http.StatusAccepted {
				res.latencies = append(res.latencies, took)
			}
		}()
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	return res
}
