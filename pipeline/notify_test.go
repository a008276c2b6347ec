package pipeline

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/riverqueue/river"

	"github.com/responder-dev/responder/alert"
	"github.com/responder-dev/responder/audit"
	"github.com/responder-dev/responder/defender/defendertest"
	"github.com/responder-dev/responder/internal/testkit"
	"github.com/responder-dev/responder/notify"
	"github.com/responder-dev/responder/store"
)

// recorder is a notifier that keeps what it was sent; fail, when set,
// decides the answer of each send (nil: delivered).
type recorder struct {
	name  string
	kinds []notify.Kind
	rules []string

	mu        sync.Mutex
	delivered []notify.Event
	attempts  []time.Time
	fail      func(ev notify.Event, attempt int) error
}

func (r *recorder) Name() string { return r.name }
func (r *recorder) Type() string { return "recorder" }
func (r *recorder) Wants(k notify.Kind, rule string) bool {
	return (len(r.kinds) == 0 || slices.Contains(r.kinds, k)) && (len(r.rules) == 0 || rule == "" || slices.Contains(r.rules, rule))
}

func (r *recorder) Send(_ context.Context, ev notify.Event) (notify.Answer, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.attempts = append(r.attempts, time.Now())
	if r.fail != nil {
		if err := r.fail(ev, len(r.attempts)); err != nil {
			return notify.Answer{}, err
		}
	}
	r.delivered = append(r.delivered, ev)
	return notify.Answer{Status: 200, Body: "ok"}, nil
}

func (r *recorder) events() []notify.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.delivered)
}

func (r *recorder) setFail(f func(ev notify.Event, attempt int) error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fail = f
}

// kinds lists the kinds of events, per alert id, in delivery order.
func byAlert(evs []notify.Event) map[string][]notify.Kind {
	out := map[string][]notify.Kind{}
	for _, ev := range evs {
		key := ""
		if ev.Alert != nil {
			key = ev.Alert.ID
		}
		out[key] = append(out[key], ev.Kind)
	}
	return out
}

// notifyEnv starts a pipeline with notifiers in force.
func notifyEnv(t *testing.T, o envOpts, list ...notify.Notifier) *testEnv {
	t.Helper()
	o.noStart = true
	if o.cfg.NotifyRetryBase == 0 {
		o.cfg.NotifyRetryBase, o.cfg.NotifyRetryCap = 10*time.Millisecond, 100*time.Millisecond
	}
	if o.rulesSrc == "" {
		o.rulesSrc = "rules:\n  - name: high\n    when: 'alert.severity == \"high\"'\n    cooldown: 1h\n"
	}
	e := setup(t, o)
	if err := e.p.SetNotifiers(list); err != nil {
		t.Fatal(err)
	}
	e.start()
	return e
}

// settled waits until no notification is pending, and returns them all.
func (e *testEnv) settled(within time.Duration) []store.Notification {
	e.t.Helper()
	var all []store.Notification
	testkit.WaitUntil(e.t, within, "every notification delivered or ended", func() bool {
		all = all[:0]
		for _, en := range e.entries() {
			ns, err := e.store.Notifications(context.Background(), en.ID)
			if err != nil {
				e.t.Fatal(err)
			}
			all = append(all, ns...)
		}
		for _, n := range all {
			if n.State == store.NotificationPending {
				return false
			}
		}
		return len(all) > 0
	})
	return all
}

// TestEveryEventReachesEverySubscriberOnce: decided and collected (with
// the package) for a collection, decided and failed for a refused one,
// nothing for an alert no rule matched; each notifier gets exactly the
// kinds it subscribed to, once each, an alert's in order.
func TestEveryEventReachesEverySubscriberOnce(t *testing.T) {
	t.Parallel()
	for _, driver := range []string{store.DriverSQLite, store.DriverPostgres} {
		t.Run(driver, func(t *testing.T) {
			t.Parallel()
			o := envOpts{cfg: Config{DownloadDir: t.TempDir()}}
			if driver == store.DriverPostgres {
				o.driver, o.dsn = driver, testkit.PostgresDSN(t)
			}
			all := &recorder{name: "all"}
			ends := &recorder{name: "ends", kinds: []notify.Kind{notify.Collected, notify.Failed}}
			other := &recorder{name: "other-rule", rules: []string{"another-rule"}}
			e := notifyEnv(t, o, all, ends, other)
			e.submit(mdeAlert("ok", defendertest.DevWorkstationID, "high"), mdeAlert("nf", fmt.Sprintf("%040x", 0xdead), "high"),
				mdeAlert("low", defendertest.DevWorkstationID, "low"))
			done := e.waitEntry("ok", func(en *audit.Entry) bool { return en.PackageSHA256 != "" })
			e.waitEntry("nf", func(en *audit.Entry) bool { return en.State == audit.Done })
			rows := e.settled(20 * time.Second)
			if len(rows) != 6 {
				t.Fatalf("%d notifications stored, want 6 (4 for all, 2 for ends): %+v", len(rows), rows)
			}
			want := map[string][]notify.Kind{"ok": {notify.Decided, notify.Collected}, "nf": {notify.Decided, notify.Failed}}
			if got := byAlert(all.events()); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("all got %v, want %v", got, want)
			}
			if got := byAlert(ends.events()); fmt.Sprint(got) != fmt.Sprint(map[string][]notify.Kind{"ok": {notify.Collected}, "nf": {notify.Failed}}) {
				t.Fatalf("ends got %v", got)
			}
			if got := other.events(); len(got) != 0 {
				t.Fatalf("a notifier of another rule got %v", got)
			}
			for _, ev := range ends.events() {
				switch ev.Kind {
				case notify.Collected:
					if ev.Package == nil || ev.Package.SHA256 != done.PackageSHA256 || ev.Package.Bytes != done.PackageSize ||
						ev.ActionID != done.ActionID || ev.Status != "Succeeded" || ev.Alert.Title != "test" || ev.Alert.Severity != "high" ||
						ev.Machine == nil || ev.Machine.ID != defendertest.DevWorkstationID || ev.Rule != "high" || ev.AuditID != done.ID {
						t.Fatalf("collected event = %+v (package %+v)", ev, ev.Package)
					}
				case notify.Failed:
					if ev.Outcome != string(audit.MachineNotFound) || ev.Reason == "" || ev.ActionID != "" {
						t.Fatalf("failed event = %+v", ev)
					}
				}
			}
			if v := testutil.ToFloat64(e.m.Notifications.WithLabelValues("all", "collected", "sent")); v != 1 {
				t.Fatalf("notifications_total{all,collected,sent} = %v", v)
			}
		})
	}
}

// TestReceiverDownThenBack: while a receiver fails, collections go on and
// another notifier gets its messages; once it is back it receives every
// message once, each alert's in order.
func TestReceiverDownThenBack(t *testing.T) {
	t.Parallel()
	down := errors.New("connection refused")
	flaky := &recorder{name: "flaky"}
	flaky.setFail(func(notify.Event, int) error { return &notify.Error{Class: notify.Retryable, Err: down} })
	good := &recorder{name: "good"}
	machines := make([]defendertest.Machine, 4)
	for i := range machines {
		machines[i] = defendertest.Machine{ID: fmt.Sprintf("%040x", 0xf00+i), ComputerDNSName: fmt.Sprintf("ws-%d.example.com", i), HealthStatus: "Active"}
	}
	e := notifyEnv(t, envOpts{simOpts: defendertest.Options{Machines: machines}}, flaky, good)
	for i, m := range machines {
		e.submit(mdeAlert(fmt.Sprintf("a-%d", i), m.ID, "high"))
	}
	for i := range machines {
		e.waitEntry(fmt.Sprintf("a-%d", i), func(en *audit.Entry) bool { return en.ActionStatus == "Succeeded" })
	}
	testkit.WaitUntil(t, 20*time.Second, "the healthy notifier's 8 messages", func() bool { return len(good.events()) == 8 })
	testkit.WaitUntil(t, 20*time.Second, "the receiver retried", func() bool {
		flaky.mu.Lock()
		defer flaky.mu.Unlock()
		return len(flaky.attempts) >= 3
	})
	if got := flaky.events(); len(got) != 0 {
		t.Fatalf("delivered while down: %v", got)
	}
	flaky.setFail(nil)
	e.settled(30 * time.Second)
	got := flaky.events()
	ids := map[string]int{}
	for _, ev := range got {
		ids[ev.ID]++
	}
	if len(got) != 8 || len(ids) != 8 {
		t.Fatalf("delivered %d messages, %d distinct, want 8 once each", len(got), len(ids))
	}
	for alertID, kinds := range byAlert(got) {
		if !slices.Equal(kinds, []notify.Kind{notify.Decided, notify.Collected}) {
			t.Fatalf("alert %s: delivered %v, want decided then collected", alertID, kinds)
		}
	}
	if v := testutil.ToFloat64(e.m.Notifications.WithLabelValues("flaky", "decided", "retried")); v < 1 {
		t.Fatalf("retries not counted: %v", v)
	}
}

// TestRefusedNotificationIsNotRetried: a 4xx is final, recorded failed with
// the receiver's answer and counted.
func TestRefusedNotificationIsNotRetried(t *testing.T) {
	t.Parallel()
	r := &recorder{name: "strict", kinds: []notify.Kind{notify.Decided}}
	r.setFail(func(notify.Event, int) error {
		return &notify.Error{Class: notify.Permanent, Status: 400, Body: "invalid_blocks", Err: errors.New("400 invalid_blocks")}
	})
	e := notifyEnv(t, envOpts{}, r)
	e.submit(mdeAlert("x", defendertest.DevWorkstationID, "high"))
	rows := e.settled(20 * time.Second)
	if len(rows) != 1 || rows[0].State != store.NotificationFailed || rows[0].Attempts != 1 || rows[0].Answer == "" {
		t.Fatalf("rows = %+v", rows)
	}
	if v := testutil.ToFloat64(e.m.Notifications.WithLabelValues("strict", "decided", "failed")); v != 1 {
		t.Fatalf("failed counted %v", v)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.attempts) != 1 {
		t.Fatalf("sent %d times", len(r.attempts))
	}
}

// TestRateLimitedNotificationWaitsAsAsked: a 429 with Retry-After is tried
// again no sooner than asked.
func TestRateLimitedNotificationWaitsAsAsked(t *testing.T) {
	t.Parallel()
	r := &recorder{name: "busy", kinds: []notify.Kind{notify.Decided}}
	r.setFail(func(_ notify.Event, attempt int) error {
		if attempt == 1 {
			return &notify.Error{Class: notify.RateLimited, RetryAfter: 700 * time.Millisecond, Status: 429, Err: errors.New("429")}
		}
		return nil
	})
	e := notifyEnv(t, envOpts{}, r)
	e.submit(mdeAlert("x", defendertest.DevWorkstationID, "high"))
	rows := e.settled(20 * time.Second)
	if len(rows) != 1 || rows[0].State != store.NotificationSent || rows[0].Attempts != 2 {
		t.Fatalf("rows = %+v", rows)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if gap := r.attempts[1].Sub(r.attempts[0]); gap < 700*time.Millisecond {
		t.Fatalf("retried after %s, Retry-After was 700ms", gap)
	}
}

// TestNotificationGivenUpAfterADay: a delivery still failing a day after
// its event is given up, logged and counted.
func TestNotificationGivenUpAfterADay(t *testing.T) {
	t.Parallel()
	clock := testkit.NewFakeClock(time.Now())
	r := &recorder{name: "dead", kinds: []notify.Kind{notify.Decided}}
	r.setFail(func(notify.Event, int) error {
		return &notify.Error{Class: notify.Retryable, Err: errors.New("timeout")}
	})
	e := notifyEnv(t, envOpts{cfg: Config{Now: clock.Now}}, r)
	e.submit(mdeAlert("x", defendertest.DevWorkstationID, "high"))
	testkit.WaitUntil(t, 20*time.Second, "a first attempt", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.attempts) > 0
	})
	clock.Advance(DefaultNotifyGiveUp + time.Minute)
	rows := e.settled(20 * time.Second)
	if len(rows) != 1 || rows[0].State != store.NotificationGaveUp {
		t.Fatalf("rows = %+v", rows)
	}
	if v := testutil.ToFloat64(e.m.Notifications.WithLabelValues("dead", "decided", "gave_up")); v != 1 {
		t.Fatalf("gave_up counted %v", v)
	}
}

// TestCircuitAndPermissionEvents: the breaker's opening and re-arming are
// raised once each, in order; a missing permission once per change.
func TestCircuitAndPermissionEvents(t *testing.T) {
	t.Parallel()
	clock := testkit.NewFakeClock(time.Now())
	machines := make([]defendertest.Machine, 4)
	for i := range machines {
		machines[i] = defendertest.Machine{ID: fmt.Sprintf("%040x", 0xc00+i), ComputerDNSName: fmt.Sprintf("ws-%d.example.com", i), HealthStatus: "Active"}
	}
	r := &recorder{name: "soc", kinds: []notify.Kind{notify.CircuitOpen, notify.CircuitClosed, notify.PermissionMissing}}
	e := notifyEnv(t, envOpts{simOpts: defendertest.Options{Machines: machines}, cfg: Config{MaxMachinesPer10m: 2, Now: clock.Now}}, r)
	for i, m := range machines {
		e.submit(mdeAlert(fmt.Sprintf("s-%d", i), m.ID, "high"))
	}
	testkit.WaitUntil(t, 20*time.Second, "the circuit_open event", func() bool { return len(r.events()) == 1 })
	if err := e.p.refreshCircuit(context.Background()); err != nil { // sees it open too: no second event
		t.Fatal(err)
	}
	clock.Advance(11 * time.Minute)
	if err := e.p.refreshCircuit(context.Background()); err != nil {
		t.Fatal(err)
	}
	e.p.NotePermissions([]string{"Machine.CollectForensics"})
	testkit.WaitUntil(t, 20*time.Second, "three events", func() bool { return len(r.events()) == 3 })
	e.p.NotePermissions([]string{"Machine.CollectForensics"}) // the same gap: not raised again
	e.p.NotePermissions([]string{"Machine.CollectForensics", "Alert.ReadWrite.All"})
	testkit.WaitUntil(t, 20*time.Second, "four events", func() bool { return len(r.events()) == 4 })
	var kinds []notify.Kind
	for _, ev := range r.events() {
		kinds = append(kinds, ev.Kind)
	}
	// The breaker's events are in order; the first permission event may
	// overtake the re-arming (they are not about one thing).
	slices.Sort(kinds[1:3])
	want := []notify.Kind{notify.CircuitOpen, notify.CircuitClosed, notify.PermissionMissing, notify.PermissionMissing}
	if !slices.Equal(kinds, want) {
		t.Fatalf("events %v, want %v", kinds, want)
	}
	if last := r.events()[3]; last.Kind != notify.PermissionMissing || len(last.MissingPermissions) != 2 || last.Reason == "" {
		t.Fatalf("permission event = %+v", last)
	}
}

// TestFailingNotifierParksItsDeliveries: while a receiver fails, one
// delivery (the probe) is tried at each end of the notifier's hold and
// the others wait, parked, without being fetched at each; once the probe
// gets through, the parked ones are woken at once, not at their park's end.
func TestFailingNotifierParksItsDeliveries(t *testing.T) {
	t.Parallel()
	for _, driver := range []string{store.DriverSQLite, store.DriverPostgres} {
		t.Run(driver, func(t *testing.T) {
			t.Parallel()
			const alerts = 30
			// Holds of 0.1, 0.2, 0.4 … s; parked deliveries wait 20 s.
			o := envOpts{cfg: Config{NotifyRetryBase: 100 * time.Millisecond, NotifyRetryCap: 20 * time.Second}}
			if driver == store.DriverPostgres {
				o.driver, o.dsn = driver, testkit.PostgresDSN(t)
			}
			flaky := &recorder{name: "flaky", kinds: []notify.Kind{notify.Decided}}
			flaky.setFail(func(notify.Event, int) error {
				return &notify.Error{Class: notify.Retryable, Err: errors.New("connection refused")}
			})
			e := notifyEnv(t, o, flaky)
			snoozed, cancel := e.p.client.Subscribe(river.EventKindJobSnoozed)
			defer cancel()
			var list []alert.Alert
			for i := range alerts {
				list = append(list, mdeAlert(fmt.Sprintf("p-%d", i), fmt.Sprintf("%040x", 0xbad0+i), "high"))
			}
			e.submit(list...)
			attempts := func() int {
				flaky.mu.Lock()
				defer flaky.mu.Unlock()
				return len(flaky.attempts)
			}
			// Six failures: holds of 0.1 to 1.6 s, five ends of hold.
			testkit.WaitUntil(t, 30*time.Second, "six attempts", func() bool { return attempts() >= 6 })
			tried := attempts()
			snoozes := 0
			for drained := false; !drained; {
				select {
				case ev := <-snoozed:
					if ev.Job.Queue == notifyQueue("flaky") {
						snoozes++
					}
				default:
					drained = true
				}
			}
			// At most: each delivery parked once, and the probe's wait
			// after each failure. Without parking, each end of hold wakes
			// every pending delivery (about 5 x 30). Two deliveries run at once,
			// so a failure may leave one more to park.
			if snoozes > alerts+2*tried {
				t.Errorf("%d snoozes of delivery jobs over %d attempts with %d pending, want at most %d", snoozes, tried, alerts, alerts+2*tried)
			}
			flaky.setFail(nil)
			back := time.Now()
			rows := e.settled(30 * time.Second)
			if took := time.Since(back); took > 10*time.Second {
				t.Errorf("the parked deliveries arrived %s after the receiver came back, want them woken by the probe (park: 20 s)", took)
			}
			if len(rows) != alerts || len(flaky.events()) != alerts {
				t.Fatalf("%d notifications, %d delivered, want %d each", len(rows), len(flaky.events()), alerts)
			}
			t.Logf("%d attempts while down, %d snoozes; all delivered %s after the receiver came back", tried, snoozes, time.Since(back).Round(time.Millisecond))
		})
	}
}

// TestParkedDeliveriesWokenAfterRestart: a restart forgets which notifier
// was failing, not the deliveries parked meanwhile: the first delivery
// that gets through after the restart wakes them.
func TestParkedDeliveriesWokenAfterRestart(t *testing.T) {
	t.Parallel()
	const alerts = 20
	dsn := filepath.Join(t.TempDir(), "responder.db")
	sim := newSim(t, defendertest.Options{})
	o := envOpts{sim: sim, dsn: dsn, driver: store.DriverSQLite,
		cfg: Config{NotifyRetryBase: 100 * time.Millisecond, NotifyRetryCap: 20 * time.Second}} // parked for 200 s
	down := &recorder{name: "siem", kinds: []notify.Kind{notify.Decided}}
	down.setFail(func(notify.Event, int) error {
		return &notify.Error{Class: notify.Retryable, Err: errors.New("connection refused")}
	})
	first := notifyEnv(t, o, down)
	var list []alert.Alert
	for i := range alerts {
		list = append(list, mdeAlert(fmt.Sprintf("r-%d", i), fmt.Sprintf("%040x", 0xbee0+i), "high"))
	}
	first.submit(list...)
	testkit.WaitUntil(t, 30*time.Second, "three attempts", func() bool {
		down.mu.Lock()
		defer down.mu.Unlock()
		return len(down.attempts) >= 3
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := first.p.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	first.store.Close()

	up := &recorder{name: "siem", kinds: []notify.Kind{notify.Decided}}
	restarted := time.Now()
	second := notifyEnv(t, o, up)
	rows := second.settled(30 * time.Second)
	if took := time.Since(restarted); took > 15*time.Second {
		t.Errorf("the parked deliveries arrived %s after the restart, want them woken by the first delivery (park: 200 s)", took)
	}
	if len(rows) != alerts || len(up.events()) != alerts {
		t.Fatalf("%d notifications, %d delivered after the restart, want %d each", len(rows), len(up.events()), alerts)
	}
}
