package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/responder-dev/responder/defender/defendertest"
	"github.com/responder-dev/responder/notify"
)

// The notify scenario (issue 14): a notifier that is dead or slow must not
// delay a collection, and a receiver that is down for minutes must get
// every message once it is back, in order per alert.
//
//	go run ./internal/loadbench -scenario notify
//	go run ./internal/loadbench -scenario notify -notify-steps outage -notify-outage 5m -notify-flow 2m

// notifyOptions are the flags of the notify scenario.
type notifyOptions struct {
	// steps: dispatch (the three dispatch runs), outage (down, then
	// back), baseline (the outage's flow and wait with no notifier).
	steps string
	// runs is how many times the three dispatch runs are made, interleaved.
	runs int
	// outage is how long the receiver answers 503; flow how long alerts
	// are sent from its start, at flowRate per second.
	outage, flow time.Duration
	flowRate     int
}

func (o notifyOptions) step(name string) bool {
	return slices.Contains(strings.Split(o.steps, ","), name)
}

// The dispatch runs: 100 alerts/s for 10 s, each for its own machine (no
// cooldown), the simulator's actions ending 3 s after their creation and
// polled every 2 s, so that every alert raises decided and, within the
// run, collected.
const (
	notifyDispatchRate    = 100
	notifyDispatchFor     = 10 * time.Second
	notifyPollInterval    = "2s"
	notifyActionPending   = time.Second
	notifyActionInProcess = 2 * time.Second
	// notifySecret signs the outage receiver's messages.
	notifySecret = "loadbench-notify-hmac-secret-0123"
	// notifyDrainFor bounds the wait for the last delivery after the outage.
	notifyDrainFor = 10 * time.Minute
)

func (b *bench) notify(o notifyOptions) {
	if o.step("dispatch") {
		b.notifyDispatch(o)
	}
	if o.step("outage") {
		b.notifyOutage(o)
	}
	if o.step("baseline") {
		fmt.Printf("\n## notify: the outage's flow with no notifier (baseline): %d alerts/s for %s, then quiet until %s\n", o.flowRate, o.flow, o.outage)
		r, _ := b.outageFlow(o, "dispatch, no notifier", nil)
		r.stop()
	}
}

// notifySim serves a simulator knowing machines, whose actions end in
// notifyActionPending + notifyActionInProcess, with quotas that never
// throttle.
func notifySim(machines []string) *defendertest.Simulator {
	o := defendertest.DevOptions()
	for _, id := range machines {
		o.Machines = append(o.Machines, defendertest.Machine{ID: id, ComputerDNSName: "m-" + id[:12] + ".corp.example.com", HealthStatus: "Active", MachineTags: []string{"workstation"}})
	}
	o.QuotaPerMinute, o.QuotaPerHour = 1_000_000, 60_000_000
	o.PendingFor, o.InProgressFor = notifyActionPending, notifyActionInProcess
	sim := defendertest.New(o)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fatal(err)
	}
	sim.SetURL("http://" + ln.Addr().String())
	go func() { _ = sim.Serve(context.Background(), ln) }()
	return sim
}

// notifyEnv lifts every limit that would hold collections back.
var notifyEnv = []string{
	"RESPONDER_DEFENDER_RATE_LIMIT_PER_MINUTE=1000000", "RESPONDER_DEFENDER_RATE_LIMIT_PER_HOUR=100000000",
	"RESPONDER_SAFETY_MAX_COLLECTIONS_PER_HOUR=1000000", "RESPONDER_SAFETY_MAX_MACHINES_PER_10M=1000000",
	"RESPONDER_DEFENDER_POLL_INTERVAL=" + notifyPollInterval,
}

// writeNotifyConfig writes a configuration with one webhook notifier
// (every event) at url, signed when secretFile is set, and returns its path.
func (b *bench) writeNotifyConfig(name, url, secretFile string) string {
	text := fmt.Sprintf("notify:\n  - name: siem\n    type: webhook\n    url: %q\n", url)
	if secretFile != "" {
		text += fmt.Sprintf("    hmac_secret_file: %q\n", secretFile)
	}
	path := filepath.Join(b.dir, name+".yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		fatal(err)
	}
	return path
}

// notifyDispatch measures the dispatch latency with no notifier, a dead
// webhook (connection refused) and a slow one (answers nothing until the
// notifier's 10 s timeout), side by side on the same binary.
func (b *bench) notifyDispatch(o notifyOptions) {
	fmt.Printf("\n## notify: dispatch at %d alerts/s for %s (202 to the simulator's receipt of the collect POST), with no notifier, a dead one and a slow one\n",
		notifyDispatchRate, notifyDispatchFor)
	dead := deadAddr()
	slow := newSlowReceiver()
	defer slow.close()
	runs := []struct {
		name, config string
		requests     func() int64
	}{
		{"(a) no notifier", "", nil},
		{"(b) dead webhook (connection refused)", b.writeNotifyConfig("dead", "http://"+dead+"/hook", ""), nil},
		{"(c) slow webhook (no answer, 10 s timeout)", b.writeNotifyConfig("slow", slow.url(), ""), slow.requests.Load},
	}
	for i := range o.runs * len(runs) {
		run := runs[i%len(runs)]
		n := notifyDispatchRate * int(notifyDispatchFor/time.Second)
		machines := machineIDs(n, 20+i)
		sim := notifySim(machines)
		var args []string
		if run.config != "" {
			args = []string{"--config", run.config}
		}
		r := b.startWith(sim, args, notifyEnv...)
		cpu0 := cpuTime(r.cmd.Process.Pid)
		wait := profile(r.admin, fmt.Sprintf("notify-dispatch-%d", i), notifyDispatchFor-time.Second)
		lat, accepted := sendForDispatch(r, sim, machines, notifyDispatchRate, fmt.Sprintf("da-notify-%d", i))
		wait()
		cpu := cpuTime(r.cmd.Process.Pid) - cpu0
		res := &result{latencies: lat}
		fmt.Printf("%-44s %d of %d accepted alerts reached Defender  p50 %.2f ms  p99 %.2f ms  max %.2f ms  responder CPU %.1f s\n",
			run.name, len(lat), accepted, ms(res.pct(0.5)), ms(res.pct(0.99)), ms(res.pct(1)), cpu.Seconds())
		r.stop()
		line := notificationSummary(r.db)
		if run.requests != nil {
			line += fmt.Sprintf("; the receiver got %d requests", run.requests())
		}
		fmt.Printf("%-44s %s\n", "", line)
	}
}

// sendForDispatch sends one alert per machine at rate, and returns the
// time from each 202 to the simulator's receipt of its collect POST
// (waiting up to a minute for the POSTs), and how many were accepted.
func sendForDispatch(r *responder, sim *defendertest.Simulator, machines []string, rate int, prefix string) ([]time.Duration, int) {
	c := newClient(64)
	accepted := make(map[string]time.Time, len(machines))
	var mu sync.Mutex
	var wg sync.WaitGroup
	interval := time.Second / time.Duration(rate)
	start := time.Now()
	for i, m := range machines {
		if w := time.Until(start.Add(time.Duration(i) * interval)); w > 0 {
			time.Sleep(w)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := fmt.Appendf(nil, `{"id":"%s-%d","machineId":%q,"severity":"High","status":"New","category":"Malware","title":"t","alertCreationTime":"2026-11-26T10:00:00Z"}`, prefix, i, m)
			code, _, err := postOnce(c, r.hook, body)
			if err == nil && code == http.StatusAccepted {
				mu.Lock()
				accepted[m] = time.Now()
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	var lat []time.Duration
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		lat = lat[:0]
		for _, req := range sim.Requests() {
			if req.Method != http.MethodPost || !strings.HasSuffix(req.Path, "/collectInvestigationPackage") {
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
	}
	return lat, len(accepted)
}

// deadAddr returns a loopback address nothing listens on: a port taken and
// given back, so that connections to it are refused.
func deadAddr() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

// slowReceiver accepts requests and never answers: the notifier's timeout
// ends each.
type slowReceiver struct {
	srv      *http.Server
	addr     string
	requests atomic.Int64
	done     chan struct{}
}

func newSlowReceiver() *slowReceiver {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fatal(err)
	}
	s := &slowReceiver{addr: ln.Addr().String(), done: make(chan struct{})}
	s.srv = &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.requests.Add(1)
		select {
		case <-r.Context().Done():
		case <-s.done:
		}
	})}
	go func() { _ = s.srv.Serve(ln) }()
	return s
}

func (s *slowReceiver) url() string { return "http://" + s.addr + "/hook" }

func (s *slowReceiver) close() {
	close(s.done)
	_ = s.srv.Close()
}

// notificationSummary counts a store's notifications by state, with their
// delivery attempts (failed ones, and the one that succeeded).
func notificationSummary(dbPath string) string {
	db, err := sql.Open("sqlite", "file:"+dbPath+"?_pragma=query_only(1)&_pragma=busy_timeout(5000)")
	if err != nil {
		return "notifications: " + err.Error()
	}
	defer db.Close()
	rows, err := db.Query(`SELECT state, COUNT(*), COALESCE(SUM(attempts), 0) FROM responder_notification GROUP BY state ORDER BY state`)
	if err != nil {
		return "notifications: " + err.Error()
	}
	defer rows.Close()
	parts := []string{}
	for rows.Next() {
		var state string
		var n, attempts int
		if rows.Scan(&state, &n, &attempts) == nil {
			parts = append(parts, fmt.Sprintf("%s %d (%d attempts)", state, n, attempts))
		}
	}
	if len(parts) == 0 {
		return "notifications: none"
	}
	// A delivery job that waits (a failing receiver, an earlier event of
	// its alert) is snoozed: each snooze is one run of the job.
	var jobs, snoozes int
	_ = db.QueryRow(`SELECT COUNT(*), COALESCE(SUM(json_extract(metadata, '$.snoozes')), 0) FROM river_job WHERE kind = 'responder.notify'`).Scan(&jobs, &snoozes)
	return fmt.Sprintf("notifications: %s; %d delivery jobs snoozed %d times", strings.Join(parts, ", "), jobs, snoozes)
}

// cpuTime is the user and system CPU time a process has used so far.
func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The fields after the command name (which may hold spaces): utime and
	// stime are the 12th and 13th, in clock ticks of 1/100 s.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+s) * 10 * time.Millisecond
}

// outageReceiver is a signed-webhook receiver that answers 503 until up,
// then 200, and records what it accepted.
type outageReceiver struct {
	mu       sync.Mutex
	up       bool
	upAt     time.Time
	refused  []time.Time // when 503 was answered
	bad      int         // failed the signature check or not an event
	accepted []acceptedEvent
}

type acceptedEvent struct {
	at      time.Time
	id      string
	kind    notify.Kind
	alertID string
}

func (o *outageReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	raw, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	var ev notify.Event
	if err == nil {
		err = notify.Verify([]byte(notifySecret), r.Header.Get(notify.HeaderTimestamp), r.Header.Get(notify.HeaderSignature), raw, time.Now(), 0)
	}
	if err == nil {
		err = json.Unmarshal(raw, &ev)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	switch {
	case err != nil:
		o.bad++
		http.Error(w, "bad delivery", http.StatusBadRequest)
	case !o.up:
		o.refused = append(o.refused, time.Now())
		http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
	default:
		a := acceptedEvent{at: time.Now(), id: ev.ID, kind: ev.Kind}
		if ev.Alert != nil {
			a.alertID = ev.Alert.ID
		}
		o.accepted = append(o.accepted, a)
		w.WriteHeader(http.StatusOK)
	}
}

func (o *outageReceiver) setUp() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.up, o.upAt = true, time.Now()
}

// outageReport is what the receiver got once back.
type outageReport struct {
	delivered, duplicates, orderViolations int
	last                                   time.Time
}

// report counts the distinct events accepted, the repeats, and the alerts
// whose collected (or failed) came before their decided.
func (o *outageReceiver) report() outageReport {
	o.mu.Lock()
	defer o.mu.Unlock()
	var r outageReport
	seen := map[string]bool{}
	decidedAt := map[string]time.Time{}
	for _, a := range o.accepted {
		if seen[a.id] {
			r.duplicates++
			continue
		}
		seen[a.id] = true
		r.delivered++
		r.last = a.at
		switch {
		case a.kind == notify.Decided:
			decidedAt[a.alertID] = a.at
		case a.alertID != "" && decidedAt[a.alertID].IsZero():
			r.orderViolations++
		}
	}
	return r
}

// notifyOutage runs a responder whose only notifier answers 503 for
// o.outage while alerts flow for o.flow at o.flowRate/s, then answers 200:
// messages expected and delivered, repeats, order per alert, the time
// from recovery to the last delivery, and the dispatch latency during the
// outage. The backoff is the product's default.
func (b *bench) notifyOutage(o notifyOptions) {
	fmt.Printf("\n## notify: receiver down (503) for %s while %d alerts/s flow for %s, then back (default backoff)\n", o.outage, o.flowRate, o.flow)
	rcv := &outageReceiver{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fatal(err)
	}
	srv := &http.Server{Handler: rcv, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	secret := filepath.Join(b.dir, "outage-hmac")
	if err := os.WriteFile(secret, []byte(notifySecret), 0o600); err != nil {
		fatal(err)
	}
	cfg := b.writeNotifyConfig("outage", "http://"+ln.Addr().String()+"/hook", secret)

	r, accepted := b.outageFlow(o, "dispatch during the outage", []string{"--config", cfg})
	rcv.setUp()
	back := time.Now()
	expected := 2 * accepted // decided and collected per alert
	for deadline := back.Add(notifyDrainFor); time.Now().Before(deadline); time.Sleep(time.Second) {
		if rcv.report().delivered >= expected && pendingNotifications(r.db) == 0 {
			break
		}
	}
	rep := rcv.report()
	rcv.mu.Lock()
	refused, bad := slices.Clone(rcv.refused), rcv.bad
	rcv.mu.Unlock()
	fmt.Printf("%-44s expected %d (decided and collected of %d alerts), delivered %d, duplicates %d, order violations %d, bad deliveries %d\n",
		"after recovery", expected, accepted, rep.delivered, rep.duplicates, rep.orderViolations, bad)
	last := "none delivered"
	if !rep.last.IsZero() {
		last = rep.last.Sub(back).Round(100*time.Millisecond).String() + " after recovery"
	}
	fmt.Printf("%-44s %d attempts answered 503 in %s (%s); last delivery %s\n", "", len(refused), o.outage, gapSummary(refused), last)
	r.stop()
	fmt.Printf("%-44s %s\n", "", notificationSummary(r.db))
}

// pendingNotifications counts the notifications of a store still pending.
func pendingNotifications(dbPath string) int {
	db, err := sql.Open("sqlite", "file:"+dbPath+"?_pragma=query_only(1)&_pragma=busy_timeout(5000)")
	if err != nil {
		return -1
	}
	defer db.Close()
	var n int
	if err := db.QueryRow(`SELECT COUNT(*) FROM responder_notification WHERE state = 'pending'`).Scan(&n); err != nil {
		return -1
	}
	return n
}

// gapSummary describes the spacing of a failing receiver's attempts: the
// backoff a dead receiver sees. Attempts within a second of each other are
// one round.
func gapSummary(at []time.Time) string {
	var gaps []time.Duration
	for i := 1; i < len(at); i++ {
		if g := at[i].Sub(at[i-1]); g > time.Second {
			gaps = append(gaps, g)
		}
	}
	if len(gaps) == 0 {
		return "no gaps"
	}
	last := gaps[max(len(gaps)-10, 0):]
	for i := range last {
		last[i] = last[i].Round(100 * time.Millisecond)
	}
	r := &result{latencies: slices.Clone(gaps)}
	return fmt.Sprintf("%d rounds, gap between rounds median %s, max %s, the last ones %v",
		len(gaps)+1, r.pct(0.5).Round(100*time.Millisecond), r.pct(1).Round(100*time.Millisecond), last)
}

// outageFlow starts a responder with args, sends o.flowRate alerts/s for
// o.flow, each for its own machine, then waits until o.outage after the
// start; it prints the dispatch latency and the responder's CPU time in
// both spans, and returns the running responder and the alerts accepted.
func (b *bench) outageFlow(o notifyOptions, label string, args []string) (*responder, int) {
	n := o.flowRate * int(o.flow/time.Second)
	machines := machineIDs(n, 30)
	sim := notifySim(machines)
	r := b.startWith(sim, args, notifyEnv...)
	pid := r.cmd.Process.Pid
	start, cpuStart := time.Now(), cpuTime(pid)
	lat, accepted := sendForDispatch(r, sim, machines, o.flowRate, "da-outage")
	flowEnd, cpuFlow := time.Now(), cpuTime(pid)
	res := &result{latencies: lat}
	fmt.Printf("%-44s %d of %d accepted alerts reached Defender  p50 %.2f ms  p99 %.2f ms  max %.2f ms; responder CPU %.1f s in %s\n",
		label, len(lat), accepted, ms(res.pct(0.5)), ms(res.pct(0.99)), ms(res.pct(1)),
		(cpuFlow - cpuStart).Seconds(), flowEnd.Sub(start).Round(time.Second))
	if w := time.Until(start.Add(o.outage)); w > 0 {
		time.Sleep(w) // the outage lasts its set time
	}
	fmt.Printf("%-44s responder CPU %.1f s in the %s after the alerts (%d notifications pending)\n",
		"", (cpuTime(pid) - cpuFlow).Seconds(), time.Since(flowEnd).Round(time.Second), pendingNotifications(r.db))
	return r, accepted
}
