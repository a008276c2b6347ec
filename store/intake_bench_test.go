package store

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/responder-dev/responder/alert"
	"github.com/responder-dev/responder/audit"
	"github.com/responder-dev/responder/internal/testkit"
)

// BenchmarkIntakeDecidedAtTheDoor measures the committer alone: alerts of
// about 1.5 KB from 19,000 machines, each decided at the door (no match),
// submitted one per call by 64 concurrent senders as webhook requests
// would. Beside ns/op (wall time per alert over all senders) it reports
// the process's CPU per alert, the figure the sustained load scenario is
// limited by. Run it with a fixed count (-benchtime=50000x) to compare
// stores of the same size.
func BenchmarkIntakeDecidedAtTheDoor(b *testing.B) {
	for _, driver := range []string{DriverSQLite, DriverPostgres} {
		b.Run(driver, func(b *testing.B) {
			st := openTestStore(b, driver)
			in := NewIntake(st, nil, nil, func(a *alert.Alert) *DoorDecision {
				return &DoorDecision{Entry: &audit.Entry{Source: string(a.Source), AlertID: a.ID, MachineID: a.MachineID,
					MachineName: a.MachineName, Decision: audit.NoMatch, Reason: "no rule matched", State: audit.Done},
					Report: func(*audit.Entry) {}}
			})
			b.Cleanup(in.Close)
			description := strings.Repeat("Suspicious process behaviour was observed on the device. ", 20)
			var n atomic.Int64
			b.SetParallelism(32) // 64 senders on two cores
			cpu0 := testkit.ProcessCPU()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := n.Add(1)
					a := alert.Alert{ID: fmt.Sprintf("da%018d_%010d", 638_690_000_000_000_000+i, i*7919%10_000_000_000),
						Source: alert.SourceDefender, Severity: "low", Title: "Suspicious PowerShell command line",
						Description: description, MachineID: fmt.Sprintf("%040x", i*104729%19000), MachineName: fmt.Sprintf("ws-%05d.corp.example", i%19000)}
					if _, err := in.Submit(context.Background(), []alert.Alert{a}); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			b.ReportMetric(float64((testkit.ProcessCPU()-cpu0).Microseconds())/float64(b.N), "cpu-µs/alert")
		})
	}
}
