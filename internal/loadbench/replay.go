package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/responder-dev/responder/quota"
	"github.com/responder-dev/responder/replay"
	"github.com/responder-dev/responder/rules"
	"github.com/responder-dev/responder/store"
)

// replayOptions are the flags of the replay scenario.
type replayOptions struct {
	alerts    int
	storePath string // the SQLite seed store
	keep      bool   // keep the seed stores, and reuse them when they match
	postgres  string // PostgreSQL DSN of a database to create the seed database beside; "" skips PostgreSQL
	intakeFor time.Duration
	// steps are the parts to run after seeding: cli (the replay command's
	// runs), profile (an in-process replay's CPU profile, with -profile),
	// intake (the p99 beside a replay), api-alone (with intake: one API
	// replay of the whole window first, alone), fresh (with intake: the
	// same p99 on an empty store first); none: seed only.
	steps string
}

func (o replayOptions) step(name string) bool {
	return slices.Contains(strings.Split(o.steps, ","), name)
}

// replay seeds stores with o.alerts alerts (SQLite, and PostgreSQL with
// -postgres), replays them with the real binary against a 1,000-rule
// candidate over a 1-day and the full 8-day window (wall time, peak RSS),
// then measures the intake's p99 at 1,000 alerts/s on a serving responder
// holding the same alerts, without and with a replay running.
func (b *bench) replay(o replayOptions) {
	fmt.Printf("\n## replay: %d stored alerts x 1,000 rules (issue 13)\n", o.alerts)
	ctx := context.Background()
	current, candidate := filepath.Join(b.dir, "current.yaml"), filepath.Join(b.dir, "candidate.yaml")
	for path, text := range map[string]string{current: currentRules, candidate: candidateRules()} {
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			fatal(err)
		}
	}
	spec := defaultSeedSpec(o.alerts, time.Now().UTC())
	var stores []*seeded
	s, err := seedSQLite(ctx, o.storePath, spec, o.keep, current)
	if err != nil {
		fatal(err)
	}
	stores = append(stores, s)
	if o.postgres != "" {
		s, err := seedPostgres(ctx, o.postgres, spec, o.keep, current)
		if err != nil {
			fatal(err)
		}
		stores = append(stores, s)
	}
	defer func() {
		for _, s := range stores {
			if s.remove != nil {
				s.remove()
			}
		}
	}()
	for _, s := range stores {
		if s.reused {
			fmt.Printf("%s: reused the seed store of %s (seeded in %s)\n", s.driver, s.end.Format(time.RFC3339), s.took.Round(100*time.Millisecond))
		}
	}
	for _, s := range stores {
		if !o.step("cli") {
			break
		}
		cfg := b.replayConfig(s.driver, s.dsn, current)
		for _, w := range []time.Duration{24 * time.Hour, 8 * 24 * time.Hour} {
			run := b.runReplay(context.Background(), cfg, candidate, s.end, w, s.driver)
			fmt.Printf("%-8s %s\n", s.driver, run)
		}
		// The seed's own rules over its last 3 days, where every decision
		// kept its snapshot: nothing may change.
		same := b.runReplay(context.Background(), cfg, current, s.end, 3*24*time.Hour, s.driver+", the seed's own rules")
		if same.err == nil && same.result.Changed != 0 {
			same.err = fmt.Errorf("%d decisions change with the rules that took them", same.result.Changed)
		}
		fmt.Printf("%-8s %s\n", s.driver, same)
	}
	if profileDir != "" && o.step("profile") {
		for _, s := range stores {
			profileReplay(ctx, s, candidate)
		}
	}
	for _, s := range stores {
		if o.step("intake") {
			b.intakeBesideReplay(ctx, s, o, candidate, current)
		}
	}
}

// replayConfig writes a configuration naming the store; the safety limits
// are the defaults the seeded decisions were taken with, and like them it
// has no global dry run (the replay reads no credential).
func (b *bench) replayConfig(driver, dsn, current string) string {
	path := filepath.Join(b.dir, fmt.Sprintf("replay-%s-%d.yaml", driver, time.Now().UnixNano()))
	text := fmt.Sprintf(`store:
  driver: %s
  dsn: %q
rules:
  files: [%q]
safety:
  max_collections_per_hour: 200
  max_machines_per_10m: 50
webhooks:
  allow_unauthenticated: true
admin:
  allow_unauthenticated: true
`, driver, dsn, current)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		fatal(err)
	}
	return path
}

// window returns the arguments selecting the last d of the seeded window
// ending at end: --since while the seed is fresh (as a user would write
// it), else --from and --to, so that a kept seed gives the same window.
func window(end time.Time, d time.Duration) url.Values {
	v := url.Values{}
	if time.Since(end) < time.Hour {
		v.Set("since", fmt.Sprintf("%dd", int(d/(24*time.Hour))))
		return v
	}
	v.Set("from", end.Add(-d).Format(time.RFC3339))
	v.Set("to", end.Add(time.Second).Format(time.RFC3339))
	return v
}

func windowArgs(v url.Values) []string {
	var out []string
	for _, k := range []string{"since", "from", "to"} {
		if x := v.Get(k); x != "" {
			out = append(out, "--"+k, x)
		}
	}
	return out
}

// replayResult is the part of the replay's JSON output (SPEC 12) the
// benchmark reports.
type replayResult struct {
	Alerts            int `json:"alerts"`
	UnknownAttributes int `json:"unknown_attributes"`
	Changed           int `json:"changed"`
	Decisions         struct {
		Current   map[string]int `json:"current"`
		Candidate map[string]int `json:"candidate"`
	} `json:"decisions"`
	Transitions []struct {
		From  string `json:"from"`
		To    string `json:"to"`
		Count int    `json:"count"`
	} `json:"transitions"`
	NewlyCollected []json.RawMessage `json:"newly_collected"`
	NewlySpared    []json.RawMessage `json:"newly_spared"`
	Quota          struct {
		PeakPerMinute   int `json:"peak_per_minute"`
		PeakPerHour     int `json:"peak_per_hour"`
		LateCollections int `json:"late_collections"`
	} `json:"quota"`
}

func (r *replayResult) summary() string {
	var tr []string
	for _, t := range r.Transitions {
		tr = append(tr, fmt.Sprintf("%s->%s=%d", t.From, t.To, t.Count))
	}
	sort.Strings(tr)
	return fmt.Sprintf("changed %d; unknown attributes %d; current %v; candidate %v; transitions %s; newly collected %d, spared %d; quota peak %d/min %d/h, %d late",
		r.Changed, r.UnknownAttributes, r.Decisions.Current, r.Decisions.Candidate, strings.Join(tr, " "),
		len(r.NewlyCollected), len(r.NewlySpared), r.Quota.PeakPerMinute, r.Quota.PeakPerHour, r.Quota.LateCollections)
}

// replayRun is one run of `responder replay`.
type replayRun struct {
	what      string
	wall      time.Duration
	user, sys time.Duration
	maxRSS    int64 // bytes, from wait4's rusage
	exit      int
	stderr    string
	result    replayResult
	err       error
}

func (r *replayRun) String() string {
	if r.err != nil {
		return fmt.Sprintf("%s: failed after %s: %v (exit %d) %s", r.what, r.wall.Round(time.Millisecond), r.err, r.exit, strings.TrimSpace(r.stderr))
	}
	cores := (r.user + r.sys).Seconds() / r.wall.Seconds()
	return fmt.Sprintf("%s: %d alerts in %.1f s (%.0f alerts/s), peak RSS %.1f MiB, CPU %.1f s user + %.1f s sys (%.2f cores), exit %d, load %s\n         %s",
		r.what, r.result.Alerts, r.wall.Seconds(), float64(r.result.Alerts)/r.wall.Seconds(), mib(r.maxRSS),
		r.user.Seconds(), r.sys.Seconds(), cores, r.exit, loadavg(), r.result.summary())
}

// runReplay runs the real binary's replay over the last d of the seed,
// and measures its wall time and peak RSS. With -profile, it writes a CPU
// profile when the command supports --cpuprofile.
func (b *bench) runReplay(ctx context.Context, cfg, candidate string, end time.Time, d time.Duration, label string) *replayRun {
	return b.runReplayAs(ctx, nil, cfg, candidate, end, d, label)
}

// runReplayAs is runReplay with the command run through prefix (nice).
func (b *bench) runReplayAs(ctx context.Context, prefix []string, cfg, candidate string, end time.Time, d time.Duration, label string) *replayRun {
	w := window(end, d)
	args := append([]string{"replay", "--rules", candidate, "--config", cfg, "--format", "json"}, windowArgs(w)...)
	run := &replayRun{what: fmt.Sprintf("replay %s (%s)", strings.Join(windowArgs(w), " "), label)}
	if profileDir != "" && b.replayHasFlag("cpuprofile") {
		args = append(args, "--cpuprofile", filepath.Join(profileDir, fmt.Sprintf("replay-%s-%dd.pprof", label, int(d.Hours()/24))))
	}
	argv := append(append(append([]string(nil), prefix...), b.binary), args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	run.wall = time.Since(start)
	run.stderr = stderr.String()
	if st := cmd.ProcessState; st != nil {
		run.exit = st.ExitCode()
		run.user, run.sys = st.UserTime(), st.SystemTime()
		if ru, ok := st.SysUsage().(*syscall.Rusage); ok {
			run.maxRSS = ru.Maxrss * 1024 // kilobytes on Linux
		}
	}
	var exitErr *exec.ExitError
	if err != nil && !(errors.As(err, &exitErr) && run.exit == 1) { // 1: a threshold, which none is given
		run.err = err
		return run
	}
	if err := json.Unmarshal(stdout.Bytes(), &run.result); err != nil {
		run.err = fmt.Errorf("reading the JSON output: %w", err)
	}
	return run
}

// replayHasFlag reports whether `responder replay --help` mentions flag.
func (b *bench) replayHasFlag(flag string) bool {
	out, _ := exec.Command(b.binary, "replay", "--help").CombinedOutput()
	return bytes.Contains(out, []byte("-"+flag))
}

// serveRules are the serving responder's rules in the intake measurement:
// they read no machine attribute, so the service asks the simulator for
// none and the queue does the same work in every phase.
const serveRules = `rules:
  - name: high-malware
    when: 'alert.severity in ["high", "critical"] && alert.category in ["Malware", "Ransomware"]'
`

// intakeBesideReplay serves a copy of the seeded store (the service adds
// alerts to it) and measures the p99 of the webhook's 202 at 1,000
// alerts/s: without a replay, with replays through the admin API back to
// back, with CLI replays back to back (as they are, then under nice -n 19
// as the README advises), and without again.
func (b *bench) intakeBesideReplay(ctx context.Context, s *seeded, o replayOptions, candidate, current string) {
	fmt.Printf("\n### intake p99 at 1,000 alerts/s on the %s store of %d alerts, without and with a replay of the 8-day window\n", s.driver, o.alerts)
	rulesPath := filepath.Join(b.dir, "serve-rules.yaml")
	if err := os.WriteFile(rulesPath, []byte(serveRules), 0o644); err != nil {
		fatal(err)
	}
	machines := machineIDs(5000, 1)
	sim := b.sim(machines, 100)
	serve := func(dsn string) *responder {
		env := []string{"RESPONDER_STORE_DSN=" + dsn, "RESPONDER_RULES_FILES=" + rulesPath}
		if s.driver == "postgres" {
			env = append(env, "RESPONDER_STORE_DRIVER=postgres")
		}
		return b.start(sim, env...)
	}
	p := newPayloads(machines)
	if o.step("fresh") {
		// The same measurement on an empty store first: what the 1M
		// alerts alone change.
		dsn := filepath.Join(b.dir, fmt.Sprintf("fresh-%d.db", time.Now().UnixNano()))
		if s.driver == "postgres" {
			dsn = createDatabase(o.postgres)
		}
		r := serve(dsn)
		openLoop("warm-up", r.hook, 1000, 2*time.Second, p.next)
		res := openLoop(fmt.Sprintf("%s @1000/s, empty store", s.driver), r.hook, 1000, o.intakeFor, p.next)
		fmt.Printf("%s  load %s\n", res, loadavg())
		r.stop()
		if u, err := url.Parse(dsn); err == nil && s.driver == "postgres" {
			_ = dropDatabase(o.postgres, strings.TrimPrefix(u.Path, "/"))
		}
	}
	dsn, drop := b.copyStore(ctx, s, o)
	defer drop()
	r := serve(dsn)
	defer r.stop()
	openLoop("warm-up", r.hook, 1000, 2*time.Second, p.next)
	cfg := b.replayConfig(s.driver, dsn, current)
	rulesYAML, err := os.ReadFile(candidate)
	if err != nil {
		fatal(err)
	}
	w := window(s.end, 8*24*time.Hour)
	api := func(ctx context.Context) string {
		start := time.Now()
		code, body, err := postReplay(ctx, r.admin, w, rulesYAML)
		if ctx.Err() != nil {
			return fmt.Sprintf("API replay: running for %.1f s when the measurement ended; cancelled", time.Since(start).Seconds())
		}
		if err != nil {
			return fmt.Sprintf("API replay: %v after %s", err, time.Since(start).Round(time.Millisecond))
		}
		var res replayResult
		if code != http.StatusOK || json.Unmarshal(body, &res) != nil {
			return fmt.Sprintf("API replay: %d after %s: %.300s", code, time.Since(start).Round(time.Millisecond), body)
		}
		return fmt.Sprintf("API replay: %d alerts in %.1f s", res.Alerts, time.Since(start).Seconds())
	}
	cli := func(prefix ...string) func(ctx context.Context) string {
		return func(ctx context.Context) string {
			run := b.runReplayAs(ctx, prefix, cfg, candidate, s.end, 8*24*time.Hour, s.driver+"-beside-serve")
			if ctx.Err() != nil {
				return fmt.Sprintf("CLI replay: running for %.1f s when the measurement ended; cancelled", run.wall.Seconds())
			}
			if run.err != nil {
				return run.String()
			}
			return fmt.Sprintf("CLI replay: %d alerts in %.1f s, peak RSS %.1f MiB", run.result.Alerts, run.wall.Seconds(), mib(run.maxRSS))
		}
	}
	// One API replay alone first: its time without load, and with
	// -profile the service's CPU profile while it runs (the replay
	// command has no profile flag of its own).
	if o.step("api-alone") {
		wait := profile(r.admin, "replay-api-"+s.driver, 30*time.Second)
		fmt.Printf("%-34s %s, alone, load %s\n", "", api(ctx), loadavg())
		wait()
	}
	phases := []struct {
		name   string
		replay func(context.Context) string
	}{{"no replay", nil}, {"replay via POST /api/v1/replay", api}, {"CLI replay on the same store", cli()},
		{"CLI replay under nice -n 19", cli("nice", "-n", "19")}, {"no replay, again", nil}}
	for _, ph := range phases {
		res, replays := besideReplays(ph.replay, func() *result {
			return openLoop(fmt.Sprintf("%s @1000/s, %s", s.driver, ph.name), r.hook, 1000, o.intakeFor, p.next)
		})
		fmt.Printf("%s  load %s\n", res, loadavg())
		for _, line := range replays {
			fmt.Println("        ", line)
		}
	}
	_, peak := rss(r.cmd.Process.Pid)
	fmt.Printf("%-34s serving responder's peak RSS %.1f MiB\n", "", mib(peak))
}

// besideReplays runs measure while replays run back to back (none when
// replay is nil): the first starts 2 s before the measurement, so that it
// is past loading its rules, and the one still running when the
// measurement ends is cancelled (the API's by closing its request).
func besideReplays(replay func(context.Context) string, measure func() *result) (*result, []string) {
	if replay == nil {
		return measure(), nil
	}
	var mu sync.Mutex
	var lines []string
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			line := replay(ctx)
			mu.Lock()
			lines = append(lines, line)
			mu.Unlock()
		}
	}()
	time.Sleep(2 * time.Second)
	res := measure()
	cancel()
	<-done
	return res, lines
}

// loadavg is the machine's load average over the last minute: the
// machine is shared, and the figures mean little without it.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Fields(string(b))[0]
}

// postReplay asks the serving responder for a replay of window w.
func postReplay(ctx context.Context, admin string, w url.Values, rules []byte) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, admin+"/api/v1/replay?"+w.Encode(), bytes.NewReader(rules))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/yaml")
	resp, err := (&http.Client{Timeout: 10 * time.Minute}).Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// copyStore gives the serving responder a copy of the seed (it writes to
// its store), or the seed itself when it is not kept.
func (b *bench) copyStore(ctx context.Context, s *seeded, o replayOptions) (string, func()) {
	if !o.keep {
		return s.dsn, func() {}
	}
	start := time.Now()
	if s.driver == "sqlite" {
		dst := filepath.Join(b.dir, "serve.db")
		if err := copyFile(s.dsn, dst); err != nil {
			fatal(fmt.Errorf("copying the seed store: %w", err))
		}
		fmt.Printf("copied the seed store in %s\n", time.Since(start).Round(100*time.Millisecond))
		return dst, func() { removeSQLite(dst) }
	}
	u, err := url.Parse(s.dsn)
	if err != nil {
		fatal(err)
	}
	seedName := strings.TrimPrefix(u.Path, "/")
	name := fmt.Sprintf("responder_replay_serve_%d", time.Now().UnixNano())
	if err := recreateDatabase(ctx, o.postgres, name, seedName); err != nil {
		fatal(err)
	}
	// The copy's pages written out before the measurement starts, not
	// during it.
	if err := checkpoint(ctx, o.postgres); err != nil {
		fatal(err)
	}
	fmt.Printf("copied the seed database in %s\n", time.Since(start).Round(100*time.Millisecond))
	dsn, err := withDatabase(o.postgres, name)
	if err != nil {
		fatal(err)
	}
	return dsn, func() { _ = dropDatabase(o.postgres, name) }
}

// profileReplay runs the replay of the 8-day window in this process, with
// the options `responder replay` builds from replayConfig's settings, and
// writes its CPU profile: the command has no profile flag of its own.
func profileReplay(ctx context.Context, s *seeded, candidate string) {
	set, err := rules.LoadFiles(candidate)
	if err != nil {
		fatal(err)
	}
	w := window(s.end, 8*24*time.Hour)
	win, err := replay.ParseWindow(w.Get("since"), w.Get("from"), w.Get("to"), "", time.Now())
	if err != nil {
		fatal(err)
	}
	st, err := store.OpenReadOnly(ctx, s.driver, s.dsn)
	if err != nil {
		fatal(err)
	}
	defer st.Close()
	path := filepath.Join(profileDir, "replay-inprocess-"+s.driver+".pprof")
	f, err := os.Create(path)
	if err != nil {
		fatal(err)
	}
	defer f.Close()
	if err := pprof.StartCPUProfile(f); err != nil {
		fatal(err)
	}
	start := time.Now()
	rep, err := replay.Run(ctx, st, replay.Options{
		Rules: set, Window: win,
		Limits: rules.CircuitLimits{PerHour: 200, MachinesPer10m: 50},
		Quota:  quota.Windows{PerMinute: 100, PerHour: 1500, Slack: quota.DefaultSlack},
	})
	pprof.StopCPUProfile()
	if err != nil {
		fmt.Printf("%-8s in-process replay: %v\n", s.driver, err)
		return
	}
	fmt.Printf("%-8s in-process replay (profiled, %s): %d alerts in %.1f s, load %s\n", s.driver, path, rep.Alerts, time.Since(start).Seconds(), loadavg())
}
