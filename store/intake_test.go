package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/responder-dev/responder/alert"
	"github.com/responder-dev/responder/audit"
	"github.com/responder-dev/responder/internal/testkit"
)

// doorRecorder is a Door that decides the low-severity alerts (no match)
// and counts the decisions reported, by alert id.
type doorRecorder struct {
	mu       sync.Mutex
	reported map[string][]int64 // audit ids reported, by alert id
}

func (d *doorRecorder) door(a *alert.Alert) *DoorDecision {
	if a.Severity != "low" {
		return nil
	}
	rec := &audit.Entry{Source: string(a.Source), AlertID: a.ID, MachineID: a.MachineID, Decision: audit.NoMatch,
		Reason: "no rule matched", State: audit.Done}
	return &DoorDecision{Entry: rec, Report: func(e *audit.Entry) {
		d.mu.Lock()
		defer d.mu.Unlock()
		d.reported[e.AlertID] = append(d.reported[e.AlertID], e.ID)
	}}
}

func (d *doorRecorder) reports() map[string][]int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[string][]int64{}
	for k, v := range d.reported {
		out[k] = slices.Clone(v)
	}
	return out
}

func intakeAlert(id, severity string) alert.Alert {
	return alert.Alert{ID: id, Source: alert.SourceDefender, Severity: severity, MachineID: fmt.Sprintf("%040x", 0xab), Title: "t"}
}

// TestIntakeDecidesAtTheDoor: alerts the door decides are stored with
// their audit entry in one commit, are not left for the dispatcher, and
// are reported once each with their entry's id; a duplicate (in the batch
// or stored before) is neither recorded nor reported; the others are left
// for the dispatcher.
func TestIntakeDecidesAtTheDoor(t *testing.T) {
	t.Parallel()
	for _, driver := range []string{DriverSQLite, DriverPostgres} {
		t.Run(driver, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			st := openTestStore(t, driver)
			d := &doorRecorder{reported: map[string][]int64{}}
			in := NewIntake(st, nil, nil, d.door)
			t.Cleanup(in.Close)

			if _, err := in.Submit(ctx, []alert.Alert{intakeAlert("before", "low")}); err != nil {
				t.Fatal(err)
			}
			r, err := in.Submit(ctx, []alert.Alert{intakeAlert("a", "low"), intakeAlert("b", "high"), intakeAlert("a", "low"),
				intakeAlert("before", "low"), intakeAlert("c", "low")})
			if err != nil {
				t.Fatal(err)
			}
			if want := []bool{false, false, true, true, false}; !slices.Equal(r.Duplicate, want) {
				t.Fatalf("duplicates %v, want %v", r.Duplicate, want)
			}
			entries, err := st.Entries(ctx, Filter{Limit: 100})
			if err != nil {
				t.Fatal(err)
			}
			byAlert := map[string]*audit.Entry{}
			for _, e := range entries {
				if byAlert[e.AlertID] != nil {
					t.Fatalf("two entries for alert %s", e.AlertID)
				}
				byAlert[e.AlertID] = e
			}
			reports := d.reports()
			for _, id := range []string{"before", "a", "c"} {
				e := byAlert[id]
				if e == nil || e.Decision != audit.NoMatch || e.AlertRowID == 0 {
					t.Fatalf("entry of %s = %+v", id, e)
				}
				if got := reports[id]; !slices.Equal(got, []int64{e.ID}) {
					t.Fatalf("alert %s reported with audit ids %v, want [%d] once", id, got, e.ID)
				}
				a, _, err := st.Alert(ctx, e.AlertRowID)
				if err != nil || a.ID != id {
					t.Fatalf("entry of %s names alert row %d: %+v, %v", id, e.AlertRowID, a, err)
				}
			}
			if byAlert["b"] != nil || len(reports) != 3 {
				t.Fatalf("entries %v, reports %v: want only before, a and c decided", byAlert, reports)
			}
			undispatched, err := st.Undispatched(ctx, 100)
			if err != nil {
				t.Fatal(err)
			}
			if len(undispatched) != 1 {
				t.Fatalf("%d rows left for the dispatcher, want 1 (b)", len(undispatched))
			}
			if a, _, err := st.Alert(ctx, undispatched[0]); err != nil || a.ID != "b" {
				t.Fatalf("row left for the dispatcher: %+v, %v", a, err)
			}
		})
	}
}

// TestIntakeReportsForAGoneCaller: when the webhook's caller leaves while
// its alerts are being committed, the committer reports their decisions:
// recorded decisions are never left uncounted and unlogged.
func TestIntakeReportsForAGoneCaller(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := openTestStore(t, DriverSQLite)
	d := &doorRecorder{reported: map[string][]int64{}}
	in := NewIntake(st, nil, nil, d.door)
	t.Cleanup(in.Close)

	// Hold the store's one connection: the committer waits for it.
	tx, err := st.DB.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	waits := st.DB.Stats().WaitCount
	callerCtx, leave := context.WithCancel(ctx)
	submitted := make(chan error, 1)
	go func() {
		_, err := in.Submit(callerCtx, []alert.Alert{intakeAlert("gone", "low")})
		submitted <- err
	}()
	testkit.WaitUntil(t, 10*time.Second, "the committer waiting for the store", func() bool { return st.DB.Stats().WaitCount > waits })
	leave()
	if err := <-submitted; !errors.Is(err, context.Canceled) {
		t.Fatalf("Submit = %v, want the caller's cancellation", err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	testkit.WaitUntil(t, 10*time.Second, "the decision reported", func() bool { return len(d.reports()["gone"]) > 0 })
	e, err := st.Entries(ctx, Filter{Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	if got := d.reports()["gone"]; len(e) != 1 || !slices.Equal(got, []int64{e[0].ID}) {
		t.Fatalf("entries %+v, reported %v: want one entry, reported once", e, got)
	}
}

// TestEncodePayload: the stored JSON of an alert is what json.Marshal
// gives, with the buffer reused from one alert to the next.
func TestEncodePayload(t *testing.T) {
	t.Parallel()
	for _, file := range []string{"defender-v1-array.json", "alertmanager-firing-resolved.json", "graph-alerts-v2-two-devices.json"} {
		body, err := os.ReadFile(filepath.Join("..", "alert", "testdata", file))
		if err != nil {
			t.Fatal(err)
		}
		format := alert.FormatDefender
		if strings.HasPrefix(file, "alertmanager") {
			format = alert.FormatAlertmanager
		}
		batch, err := alert.Decode(format, body)
		if err != nil {
			t.Fatal(err)
		}
		odd := intakeAlert("da1", "low")
		odd.Title, odd.Description = `<script>&"quoted"</script> `+"\u2028", strings.Repeat("long ", 20000)
		for _, a := range append(batch.Alerts, odd, intakeAlert("da2", "high")) {
			want, err := json.Marshal(&a)
			if err != nil {
				t.Fatal(err)
			}
			got, err := encodePayload(&a)
			if err != nil {
				t.Fatal(err)
			}
			if got != string(want) {
				t.Errorf("%s, alert %s: encodePayload = %s, json.Marshal %s", file, a.ID, got, want)
			}
		}
	}
}
