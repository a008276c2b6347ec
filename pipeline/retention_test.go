package pipeline

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/responder-dev/responder/alert"
	"github.com/responder-dev/responder/audit"
	"github.com/responder-dev/responder/defender/defendertest"
	"github.com/responder-dev/responder/internal/testkit"
	"github.com/responder-dev/responder/store"
)

const retentionDay = 24 * time.Hour

// retentionRules has a cooldown longer than the tests' retention (10d), so
// that a cooldown row older than the retention may still be in force.
const retentionRules = `
rules:
  - name: long-cooldown
    when: 'alert.severity == "critical"'
    cooldown: 20d
  - name: high-severity
    when: 'alert.severity == "high"'
    cooldown: 24h
`

// storeDrivers runs fn once per driver, each on a store of its own.
func storeDrivers(t *testing.T, fn func(t *testing.T, driver, dsn string)) {
	t.Run("SQLite", func(t *testing.T) {
		t.Parallel()
		fn(t, store.DriverSQLite, filepath.Join(t.TempDir(), "responder.db"))
	})
	t.Run("Postgres", func(t *testing.T) {
		t.Parallel()
		fn(t, store.DriverPostgres, testkit.PostgresDSN(t))
	})
}

// seeder writes rows straight into the store, with the times a test needs.
type seeder struct {
	t  *testing.T
	tx *sql.Tx
}

func seed(t *testing.T, s *store.Store, fn func(sd *seeder)) {
	t.Helper()
	tx, err := s.DB.BeginTx(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	fn(&seeder{t: t, tx: tx})
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}

var seedCounter atomic.Int64

// alert stores an alert row received at.
func (sd *seeder) alert(at time.Time, payload string) int64 {
	sd.t.Helper()
	n := seedCounter.Add(1)
	return sd.alertKeyed(at, fmt.Sprintf("seed/%d", n), fmt.Sprintf("seed-%d", n), payload)
}

func (sd *seeder) alertKeyed(at time.Time, key, alertID, payload string) int64 {
	sd.t.Helper()
	var id int64
	if payload == "" {
		payload = "{}"
	}
	err := sd.tx.QueryRow(`INSERT INTO responder_alert (dedup_key, source, alert_id, payload, received_at, dispatched)
VALUES ($1, 'defender', $2, $3, $4, 1) RETURNING id`, key, alertID, payload, ms(at)).Scan(&id)
	if err != nil {
		sd.t.Fatal(err)
	}
	return id
}

// decided stores a as received and decided at, finished.
func (sd *seeder) decided(a alert.Alert, at time.Time) {
	sd.t.Helper()
	row := sd.alertKeyed(at, a.DedupKey(), a.ID, "")
	if _, err := sd.tx.Exec(`INSERT INTO responder_audit (alert_row_id, created_at, updated_at, source, alert_id, decision, state)
VALUES ($1, $2, $2, 'defender', $3, 'no_match', 'done')`, row, ms(at), a.ID); err != nil {
		sd.t.Fatal(err)
	}
}

// entry stores an alert received at created and its audit entry, created
// then and last changed at updated.
func (sd *seeder) entry(created, updated time.Time, state audit.State) (auditID, alertID int64) {
	sd.t.Helper()
	alertID = sd.alert(created, "")
	decision := audit.NoMatch
	if state != audit.Done {
		decision = audit.Collect
	}
	err := sd.tx.QueryRow(`INSERT INTO responder_audit (alert_row_id, created_at, updated_at, source, alert_id, decision, state)
VALUES ($1, $2, $3, 'defender', 'seed', $4, $5) RETURNING id`, alertID, ms(created), ms(updated), decision, state).Scan(&auditID)
	if err != nil {
		sd.t.Fatal(err)
	}
	return auditID, alertID
}

func (sd *seeder) cooldown(machine, action string, last time.Time, auditID int64) {
	sd.t.Helper()
	if _, err := sd.tx.Exec(`INSERT INTO responder_cooldown (machine_id, action, last_at, audit_id) VALUES ($1, $2, $3, $4)`,
		machine, action, ms(last), auditID); err != nil {
		sd.t.Fatal(err)
	}
}

func (sd *seeder) quota(at time.Time) {
	sd.t.Helper()
	if _, err := sd.tx.Exec(`INSERT INTO responder_quota (grp, at_ms) VALUES ('actions', $1)`, ms(at)); err != nil {
		sd.t.Fatal(err)
	}
}

// columnIDs returns the ids of a table, sorted.
func columnIDs(t *testing.T, s *store.Store, query string) []int64 {
	t.Helper()
	rows, err := s.DB.Query(query)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		out = append(out, id)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

func sortedIDs(set map[int64]bool) []int64 {
	out := slices.Collect(maps.Keys(set))
	slices.Sort(out)
	return out
}

// TestRetentionDeletesExactly ages a known mix of rows and requires one pass
// to delete exactly the finished entries older than the retention that no
// cooldown in force holds, with their alerts, and the cooldown rows that can
// no longer be in force; in batches of at most store.RetentionBatch rows.
func TestRetentionDeletesExactly(t *testing.T) {
	t.Parallel()
	storeDrivers(t, func(t *testing.T, driver, dsn string) {
		e := setup(t, envOpts{driver: driver, dsn: dsn, noStart: true, rulesSrc: retentionRules, cfg: Config{Retention: 10 * retentionDay}})
		now := time.Now()
		cutoff := now.Add(-10 * retentionDay)
		keepAudit, keepAlert := map[int64]bool{}, map[int64]bool{}
		keep := func(audit, alert int64) { keepAudit[audit], keepAlert[alert] = true, true }
		const oldDone = 2000
		resent := mdeAlert("resent-after-retention", defendertest.DevWorkstationID, "low")
		seed(t, e.store, func(sd *seeder) {
			// Deleted: finished long ago, nothing holds them.
			for i := range oldDone {
				sd.entry(now.Add(-50*retentionDay-time.Duration(i)*time.Second), now.Add(-50*retentionDay+time.Duration(i)*time.Second), audit.Done)
			}
			// Deleted: just past the cutoff.
			sd.entry(cutoff.Add(-time.Hour), cutoff.Add(-time.Minute), audit.Done)
			// Kept: created long ago, finished just inside the retention.
			keep(sd.entry(now.Add(-50*retentionDay), cutoff.Add(time.Minute), audit.Done))
			// Kept: recent.
			for range 5 {
				keep(sd.entry(now.Add(-retentionDay), now.Add(-retentionDay), audit.Done))
			}
			// Kept: old but live, in every live state.
			for _, s := range audit.LiveStates() {
				keep(sd.entry(now.Add(-60*retentionDay), now.Add(-60*retentionDay), s))
			}
			// Kept: old alerts not decided yet.
			for range 3 {
				keepAlert[sd.alert(now.Add(-60*retentionDay), "")] = true
			}
			// Kept: a collection 15 days ago, past the retention but
			// within the longest cooldown (20d): its cooldown may be in
			// force, so the row and the entry it points at stay.
			a, al := sd.entry(now.Add(-15*retentionDay), now.Add(-15*retentionDay), audit.Done)
			keep(a, al)
			sd.cooldown("m-held", "collect_investigation_package", now.Add(-15*retentionDay), a)
			// Kept: a recent cooldown and its entry.
			a, al = sd.entry(now.Add(-time.Hour), now.Add(-time.Hour), audit.Done)
			keep(a, al)
			sd.cooldown("m-recent", "collect_investigation_package", now.Add(-time.Hour), a)
			// Deleted: cooldowns older than any rule's cooldown (a real
			// one and a dry run's), then their entries.
			a, _ = sd.entry(now.Add(-25*retentionDay), now.Add(-25*retentionDay), audit.Done)
			sd.cooldown("m-expired", "collect_investigation_package", now.Add(-25*retentionDay), a)
			a, _ = sd.entry(now.Add(-25*retentionDay), now.Add(-25*retentionDay), audit.Done)
			sd.cooldown("m-expired", "dry_run:collect_investigation_package", now.Add(-25*retentionDay), a)
			// Deleted: an alert decided long ago, which its sender will
			// send again.
			sd.decided(resent, now.Add(-50*retentionDay))
			// Not retention's: the quota log.
			for range 4 {
				sd.quota(now.Add(-50 * retentionDay))
			}
		})
		const wantDeleted = oldDone + 1 + 2 + 1
		if r := e.submit(resent); !r.Duplicate[0] {
			t.Fatal("the stored alert sent again is not a duplicate before the pass")
		}

		r := e.p.store.NewRetainer(e.p.cfg.Retention, e.p.longestCooldown, e.p.cfg.Now)
		r.SetPause(time.Millisecond)
		if driver == store.DriverPostgres {
			// Another replica holds the pass: this one deletes nothing.
			conn, err := e.store.DB.Conn(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			var got bool
			if err := conn.QueryRowContext(context.Background(), `SELECT pg_try_advisory_lock(7406211, 16)`).Scan(&got); err != nil || !got {
				t.Fatalf("taking the lock: %v %v", got, err)
			}
			res, err := r.Pass(context.Background())
			if !errors.Is(err, store.ErrRetentionBusy) || res != (store.RetentionResult{}) {
				t.Fatalf("pass while another replica holds the lock: %+v, %v", res, err)
			}
			if _, err := conn.ExecContext(context.Background(), `SELECT pg_advisory_unlock(7406211, 16)`); err != nil {
				t.Fatal(err)
			}
			_ = conn.Close()
		}

		var batches []int64
		r.OnBatch(func(table string, n int64) {
			if table == "audit" {
				batches = append(batches, n)
			}
		})
		res, err := r.Pass(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if res.Audit != wantDeleted || res.Alerts != wantDeleted || res.Cooldowns != 2 {
			t.Fatalf("pass = %+v, want %d entries, %d alerts, 2 cooldowns", res, wantDeleted, wantDeleted)
		}
		var want []int64 // full batches, then the last (empty when it divides)
		for left := int64(wantDeleted); left >= 0; left -= store.RetentionBatch {
			want = append(want, min(left, store.RetentionBatch))
		}
		if !slices.Equal(batches, want) {
			t.Fatalf("entry batches = %v, want %v (at most %d rows per transaction)", batches, want, store.RetentionBatch)
		}

		if got, want := columnIDs(t, e.store, `SELECT id FROM responder_audit`), sortedIDs(keepAudit); !slices.Equal(got, want) {
			t.Fatalf("audit entries left\n got: %v\nwant: %v", got, want)
		}
		if got, want := columnIDs(t, e.store, `SELECT id FROM responder_alert`), sortedIDs(keepAlert); !slices.Equal(got, want) {
			t.Fatalf("alerts left\n got: %v\nwant: %v", got, want)
		}
		var cooldowns []string
		rows, err := e.store.DB.Query(`SELECT machine_id FROM responder_cooldown`)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var m string
			if err := rows.Scan(&m); err != nil {
				t.Fatal(err)
			}
			cooldowns = append(cooldowns, m)
		}
		rows.Close()
		sort.Strings(cooldowns)
		if !slices.Equal(cooldowns, []string{"m-held", "m-recent"}) {
			t.Fatalf("cooldowns left: %v, want m-held and m-recent", cooldowns)
		}
		var quota int
		if err := e.store.DB.QueryRow(`SELECT COUNT(*) FROM responder_quota`).Scan(&quota); err != nil || quota != 4 {
			t.Fatalf("quota rows = %d, %v; want 4 (not retention's)", quota, err)
		}

		// A second pass finds nothing more.
		if res, err := r.Pass(context.Background()); err != nil || res.Audit != 0 || res.Alerts != 0 || res.Cooldowns != 0 {
			t.Fatalf("second pass = %+v, %v; want nothing deleted", res, err)
		}
		// Its alert row gone, the alert sent again is new (README:
		// decided again at most once per retention period).
		if r := e.submit(resent); r.Duplicate[0] {
			t.Fatal("an alert deleted by retention and sent again is still a duplicate")
		}
	})
}

// TestRetentionUnderIntake runs a pass over 2,000 deletable entries while
// webhooks keep arriving and being decided: no submission fails, and every
// alert accepted meanwhile is still there afterwards.
func TestRetentionUnderIntake(t *testing.T) {
	t.Parallel()
	storeDrivers(t, func(t *testing.T, driver, dsn string) {
		e := setup(t, envOpts{driver: driver, dsn: dsn, cfg: Config{Retention: 10 * retentionDay, RetentionInterval: 24 * time.Hour}})
		now := time.Now()
		const old = 2000
		seed(t, e.store, func(sd *seeder) {
			for range old {
				sd.entry(now.Add(-50*retentionDay), now.Add(-50*retentionDay), audit.Done)
			}
		})

		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var (
			wg         sync.WaitGroup
			mu         sync.Mutex
			accepted   []string
			during     atomic.Int64 // submissions answered while the pass ran
			passing    atomic.Bool
			submitErr  error
			slowest    time.Duration
			machineIDs = []string{defendertest.DevWorkstationID, defendertest.DevServerID}
		)
		passing.Store(true)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				id := fmt.Sprintf("intake-%d", i)
				sev := "low"
				if i%10 == 0 {
					sev = "high"
				}
				start := time.Now()
				r, err := e.p.Submit(context.Background(), []alert.Alert{mdeAlert(id, machineIDs[i%2], sev)})
				took := time.Since(start)
				mu.Lock()
				if err != nil {
					submitErr = err
					mu.Unlock()
					return
				}
				if !r.Duplicate[0] {
					accepted = append(accepted, id)
				}
				slowest = max(slowest, took)
				mu.Unlock()
				if passing.Load() {
					during.Add(1)
				}
			}
		}()

		r := e.p.store.NewRetainer(e.p.cfg.Retention, e.p.longestCooldown, e.p.cfg.Now)
		start := time.Now()
		res, err := r.Pass(context.Background())
		took := time.Since(start)
		passing.Store(false)
		// A few more submissions after the pass, then stop.
		testkit.WaitUntil(t, 10*time.Second, "submissions after the pass", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return submitErr != nil || int64(len(accepted)) > during.Load()+5
		})
		cancel()
		wg.Wait()
		if err != nil {
			t.Fatal(err)
		}
		if submitErr != nil {
			t.Fatalf("intake failed during the retention pass: %v", submitErr)
		}
		if res.Audit != old || res.Alerts != old || res.Batches < old/store.RetentionBatch {
			t.Fatalf("pass = %+v, want %d entries and alerts in at least %d batches", res, old, old/store.RetentionBatch)
		}
		if during.Load() == 0 {
			t.Fatal("no submission was answered while the pass ran: the test checked nothing")
		}
		t.Logf("pass over %d entries took %s in %d batches; %d submissions answered meanwhile, the slowest in %s",
			old, took, res.Batches, during.Load(), slowest)

		var n int
		if err := e.store.DB.QueryRow(`SELECT COUNT(*) FROM responder_alert WHERE alert_id LIKE 'intake-%'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != len(accepted) {
			t.Fatalf("%d accepted alerts stored, want all %d", n, len(accepted))
		}
		var left int
		if err := e.store.DB.QueryRow(`SELECT COUNT(*) FROM responder_audit WHERE alert_id = 'seed'`).Scan(&left); err != nil || left != 0 {
			t.Fatalf("%d old entries left, %v", left, err)
		}
		// What was accepted is decided as usual, and stays.
		last := accepted[len(accepted)-1]
		e.waitEntry(last, func(*audit.Entry) bool { return true })
		if res, err := r.Pass(context.Background()); err != nil || res.Audit != 0 {
			t.Fatalf("second pass = %+v, %v; want nothing deleted", res, err)
		}
	})
}

// TestStoreGauges: responder_store_rows counts each table exactly (small
// tables, both drivers) and responder_store_bytes grows with what is
// stored.
func TestStoreGauges(t *testing.T) {
	t.Parallel()
	storeDrivers(t, func(t *testing.T, driver, dsn string) {
		e := setup(t, envOpts{driver: driver, dsn: dsn, noStart: true})
		now := time.Now()
		seed(t, e.store, func(sd *seeder) {
			a, _ := sd.entry(now, now, audit.Done)
			sd.entry(now, now, audit.Tracking)
			sd.alert(now, "")
			sd.cooldown("m1", "collect_investigation_package", now, a)
			for range 4 {
				sd.quota(now)
			}
		})
		sr := e.store.NewStatsReader()
		defer sr.Close()
		ctx := context.Background()
		if err := e.p.refreshStoreStats(ctx, sr); err != nil {
			t.Fatal(err)
		}
		want := map[string]float64{"alert": 3, "audit": 2, "cooldown": 1, "quota": 4, "job": 0}
		for table, n := range want {
			if got := testutil.ToFloat64(e.m.StoreRows.WithLabelValues(table)); got != n {
				t.Errorf("responder_store_rows{table=%q} = %v, want %v", table, got, n)
			}
		}
		before := testutil.ToFloat64(e.m.StoreBytes)
		if before <= 0 {
			t.Fatalf("responder_store_bytes = %v", before)
		}
		if driver == store.DriverSQLite {
			// The database's pages plus the WAL file.
			var pages, size int64
			if err := e.store.DB.QueryRow(`PRAGMA page_count`).Scan(&pages); err != nil {
				t.Fatal(err)
			}
			if err := e.store.DB.QueryRow(`PRAGMA page_size`).Scan(&size); err != nil {
				t.Fatal(err)
			}
			fi, err := os.Stat(dsn + "-wal")
			if err != nil {
				t.Fatal(err)
			}
			if want := float64(pages*size + fi.Size()); before != want {
				t.Errorf("responder_store_bytes = %v, want %v (page_count * page_size + WAL)", before, want)
			}
		}

		// 4 MiB of incompressible text: the size grows by at least 1 MiB
		// (PostgreSQL may compress it somewhat).
		buf := make([]byte, 2<<20)
		_, _ = rand.Read(buf)
		seed(t, e.store, func(sd *seeder) { sd.alert(now, `{"x":"`+hex.EncodeToString(buf)+`"}`) })
		if err := e.p.refreshStoreStats(ctx, sr); err != nil {
			t.Fatal(err)
		}
		if got := testutil.ToFloat64(e.m.StoreRows.WithLabelValues("alert")); got != 4 {
			t.Errorf("responder_store_rows{table=\"alert\"} = %v after one more alert, want 4", got)
		}
		if after := testutil.ToFloat64(e.m.StoreBytes); after < before+1<<20 {
			t.Errorf("responder_store_bytes %v -> %v after storing 4 MiB, want at least 1 MiB more", before, after)
		}
	})
}

// TestStoreGaugesUseEstimatesForLargeTables: on PostgreSQL a table that the
// planner estimates at over exactRowsBelow rows reports the estimate,
// without counting.
func TestStoreGaugesUseEstimatesForLargeTables(t *testing.T) {
	t.Parallel()
	dsn := testkit.PostgresDSN(t)
	e := setup(t, envOpts{driver: store.DriverPostgres, dsn: dsn, noStart: true})
	ctx := context.Background()
	if _, err := e.store.DB.ExecContext(ctx, `INSERT INTO responder_quota (grp, at_ms) SELECT 'actions', g FROM generate_series(1, 150000) g`); err != nil {
		t.Fatal(err)
	}
	if _, err := e.store.DB.ExecContext(ctx, `ANALYZE responder_quota`); err != nil {
		t.Fatal(err)
	}
	// Rows the estimate does not know yet: the gauge must not count them.
	if _, err := e.store.DB.ExecContext(ctx, `DELETE FROM responder_quota WHERE at_ms <= 10`); err != nil {
		t.Fatal(err)
	}
	sr := e.store.NewStatsReader()
	if err := e.p.refreshStoreStats(ctx, sr); err != nil {
		t.Fatal(err)
	}
	got := testutil.ToFloat64(e.m.StoreRows.WithLabelValues("quota"))
	if got < 140000 || got > 160000 {
		t.Fatalf("responder_store_rows{table=\"quota\"} = %v, want an estimate near 150000", got)
	}
	if got == 149990 {
		t.Fatalf("responder_store_rows{table=\"quota\"} = %v: counted, not estimated", got)
	}
}

// TestRetentionLoop: Start runs retention in the background (the first pass
// a tenth of the interval after start), each pass logs one info line with
// its counts whatever the rows deleted, the store gauges are set from
// start, and Stop ends the loop.
func TestRetentionLoop(t *testing.T) {
	t.Parallel()
	e := setup(t, envOpts{noStart: true, cfg: Config{Retention: 10 * retentionDay, RetentionInterval: 300 * time.Millisecond}})
	core, logs := observer.New(zap.InfoLevel)
	e.p.log = zap.New(core).Named("pipeline")
	const old = 1200
	now := time.Now()
	seed(t, e.store, func(sd *seeder) {
		for range old {
			sd.entry(now.Add(-50*retentionDay), now.Add(-50*retentionDay), audit.Done)
		}
	})
	e.start()
	testkit.WaitUntil(t, 20*time.Second, "old entries deleted by the background pass", func() bool {
		var n int
		_ = e.store.DB.QueryRow(`SELECT COUNT(*) FROM responder_audit`).Scan(&n)
		return n == 0
	})
	testkit.WaitUntil(t, 20*time.Second, "a second pass", func() bool { return logs.FilterMessage("retention pass").Len() >= 2 })
	if b := testutil.ToFloat64(e.m.StoreBytes); b <= 0 {
		t.Fatalf("responder_store_bytes = %v after start", b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.p.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-e.p.retentionDone:
	default:
		t.Fatal("the retention loop is still running after Stop")
	}

	passes := logs.FilterMessage("retention pass").All()
	var deleted int64
	for _, l := range passes {
		if l.Level != zap.InfoLevel {
			t.Fatalf("retention pass logged at %s", l.Level)
		}
		deleted += l.ContextMap()["audit_deleted"].(int64)
	}
	if deleted != old {
		t.Fatalf("passes logged %d entries deleted, want %d", deleted, old)
	}
	if n := logs.Len(); n > len(passes)+2 {
		t.Fatalf("%d log lines for %d passes: retention must log once per pass\n%v", n, len(passes), logs.All())
	}
	if f := logs.FilterMessage("retention pass failed").Len(); f > 0 {
		t.Fatalf("%d failed passes", f)
	}
}

// TestEvaluateJobSkipsDeletedAlerts: an evaluate job that runs again after
// retention deleted one of its alerts (with its decision) decides the
// others and completes, instead of failing on the missing row until it is
// discarded with them.
func TestEvaluateJobSkipsDeletedAlerts(t *testing.T) {
	t.Parallel()
	e := setup(t, envOpts{noStart: true})
	a := mdeAlert("da-kept", defendertest.DevWorkstationID, "low")
	e.submit(a)
	var rowID int64
	if err := e.store.DB.QueryRow(`SELECT id FROM responder_alert WHERE alert_id = 'da-kept'`).Scan(&rowID); err != nil {
		t.Fatal(err)
	}
	job := &river.Job[evaluateArgs]{JobRow: &rivertype.JobRow{Attempt: 1, MaxAttempts: 10}, Args: evaluateArgs{AlertRowIDs: []int64{rowID + 1000, rowID}}}
	if err := (&evaluateWorker{p: e.p}).Work(context.Background(), job); err != nil {
		t.Fatalf("the job failed: %v", err)
	}
	if got := e.entryFor("da-kept"); got == nil || got.Decision != audit.NoMatch {
		t.Fatalf("the remaining alert: %+v", got)
	}
}

// ms is a time as the store keeps it: unix milliseconds, 0 for the zero time.
func ms(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}
