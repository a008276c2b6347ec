package replay_test

import (
	"context"
	"encoding/json"
	"fmt"
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

// memReader serves n generated decisions from memory: the replay's own
// work (decoding, rules, the state), without the store's.
type memReader struct {
	n        int
	payloads [][]byte
	snapshot string
}

func newMemReader(n int) *memReader {
	r := &memReader{n: n}
	for i := range 64 {
		a := alert.Alert{
			ID: fmt.Sprintf("da6374729003828%05d_136496960%d", i, i), Source: alert.SourceDefender,
			Title:           fmt.Sprintf("Suspicious PowerShell command line %d was observed on the device", i),
			Description:     strings.Repeat("A process executed a command line that resembles known attacker behaviour. ", 8),
			Severity:        []string{"low", "medium", "high", "informational"}[i%4],
			Status:          "new",
			Category:        []string{"Execution", "Malware", "CredentialAccess", "Ransomware"}[i%4],
			DetectionSource: "WindowsDefenderAtp", ServiceSource: "MicrosoftDefenderForEndpoint",
			MitreTechniques: []string{"T1059.001", "T1086"}, IncidentID: fmt.Sprint(1000 + i),
			CreatedAt: time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC),
			MachineID: fmt.Sprintf("%040x", i), MachineName: fmt.Sprintf("ws-%04d.corp.example.com", i),
		}
		b, _ := json.Marshal(a)
		r.payloads = append(r.payloads, b)
	}
	s, _ := audit.MarshalSnapshot(&alert.Machine{ID: "m", Name: "ws", OSPlatform: "Windows11", Tags: []string{"finance", "emea", "workstation"}, RiskScore: "Medium"})
	r.snapshot = s
	return r
}

func (r *memReader) ReplayRange(context.Context, store.ReplayWindow) (int64, int64, bool, error) {
	return 0, int64(r.n), true, nil
}

func (r *memReader) ReplayPage(_ context.Context, _ store.ReplayWindow, after, last int64, limit int) ([]store.ReplayRow, error) {
	var rows []store.ReplayRow
	for id := after + 1; id <= last && len(rows) < limit; id++ {
		i := int(id)
		rows = append(rows, store.ReplayRow{
			AuditID: id, DecidedAt: t0.Add(time.Duration(i) * 500 * time.Millisecond),
			Payload: append([]byte(nil), r.payloads[i%len(r.payloads)]...), MachineID: fmt.Sprintf("%040x", i%20000),
			Decision: audit.NoMatch, Snapshot: r.snapshot,
		})
	}
	return rows, nil
}

func (r *memReader) ReplayPrior(context.Context, time.Time, time.Duration) ([]store.ReplayRow, error) {
	return nil, nil
}

func (r *memReader) ReplayCounts(context.Context, store.ReplayWindow) (int, int, error) {
	return r.n, 0, nil
}

func (r *memReader) DecisionSpan(context.Context) (time.Time, time.Time, bool, error) {
	return t0, t0.Add(time.Duration(r.n) * time.Second), true, nil
}

// benchRuleSet is n generated rules (testkit.GeneratedRule); few alerts
// match.
func benchRuleSet(b *testing.B, n int) *rules.Set {
	var y strings.Builder
	y.WriteString("rules:\n")
	for i := range n {
		fmt.Fprintf(&y, "  - name: rule-%d\n    when: '%s'\n", i, testkit.GeneratedRule(i))
	}
	set, err := rules.LoadSource("bench.yaml", []byte(y.String()))
	if err != nil {
		b.Fatal(err)
	}
	return set
}

// BenchmarkReplay: one op is one alert replayed against 1,000 rules.
func BenchmarkReplay(b *testing.B) {
	set := benchRuleSet(b, 1000)
	r := newMemReader(b.N)
	b.ReportAllocs()
	b.ResetTimer()
	rep, err := replay.Run(context.Background(), r, replay.Options{Rules: set,
		Window: store.ReplayWindow{From: t0, To: t0.Add(24 * 365 * time.Hour)}, Quota: quota.Windows{PerMinute: 100, PerHour: 1500}})
	if err != nil {
		b.Fatal(err)
	}
	if rep.Alerts != b.N {
		b.Fatalf("%d alerts replayed, want %d", rep.Alerts, b.N)
	}
}
