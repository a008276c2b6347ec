package main

import (
	"bytes"
	"slices"
	"testing"

	"github.com/responder-dev/responder/alert"
)

// TestSustainedPayloads checks the sustained scenario's alerts: each is one
// valid MDE v1 alert of 1.4–1.6 KB with an id of its own, on a machine of
// the fleet; critical ones only on the qualifying machines, in the share
// asked for; and alert n is the same from one generator to the next.
func TestSustainedPayloads(t *testing.T) {
	t.Parallel()
	fleet := newSustainedFleet(sustainedSeed, 2000, 300)
	hosts := map[string]fleetHost{}
	for _, h := range fleet.hosts {
		hosts[h.id] = h
	}
	qualifying := map[string]bool{}
	for _, i := range fleet.qualifying {
		qualifying[fleet.hosts[i].id] = true
		if !slices.Contains(fleet.hosts[i].tags, "workstation") {
			t.Fatalf("qualifying machine %s is not a workstation: %v", fleet.hosts[i].name, fleet.hosts[i].tags)
		}
	}
	for _, pct := range []uint64{0, 10} {
		g, again := newMDEAlerts(sustainedSeed, fleet, pct), newMDEAlerts(sustainedSeed, fleet, pct)
		ids := map[string]bool{}
		severities := map[string]int{}
		const n = 4000
		var buf []byte
		for range n {
			buf = g.append(buf[:0])
			if other := again.append(nil); !bytes.Equal(buf, other) {
				t.Fatalf("two generators of the same seed differ:\n%s\n%s", buf, other)
			}
			if len(buf) < 1400 || len(buf) > 1600 {
				t.Fatalf("alert of %d bytes, want 1.4–1.6 KB: %s", len(buf), buf)
			}
			b, err := alert.DecodeDefender(buf)
			if err != nil || len(b.Alerts) != 1 || len(b.Invalid) != 0 {
				t.Fatalf("decoding %s: %v, %d alerts, invalid %v", buf, err, len(b.Alerts), b.Invalid)
			}
			a := b.Alerts[0]
			if ids[a.ID] {
				t.Fatalf("alert id %s sent twice", a.ID)
			}
			ids[a.ID] = true
			h, ok := hosts[a.MachineID]
			if !ok || a.MachineName != h.name {
				t.Fatalf("alert %s names machine %s (%s), not one of the fleet", a.ID, a.MachineID, a.MachineName)
			}
			if reason := alert.IgnoreReason(&a, false); reason != "" {
				t.Fatalf("alert %s would be ignored: %s", a.ID, reason)
			}
			severities[a.Severity]++
			if a.Severity == alert.SeverityCritical && !qualifying[a.MachineID] {
				t.Fatalf("critical alert %s on %s, not a qualifying machine", a.ID, a.MachineName)
			}
		}
		critical := severities[alert.SeverityCritical] * 100 / n
		if critical < int(pct)-2 || critical > int(pct)+2 {
			t.Errorf("%d %% critical, want about %d %%: %v", critical, pct, severities)
		}
		for _, s := range []string{alert.SeverityInformational, alert.SeverityLow, alert.SeverityMedium, alert.SeverityHigh} {
			if severities[s] == 0 {
				t.Errorf("no %s alert among %d: %v", s, n, severities)
			}
		}
	}
}

// BenchmarkMDEAlerts is the load generator's cost of one payload, to set
// against the client's CPU per request that the scenario prints.
func BenchmarkMDEAlerts(b *testing.B) {
	g := newMDEAlerts(sustainedSeed, newSustainedFleet(sustainedSeed, sustainedMachines, sustainedQualifying), 10)
	buf := make([]byte, 0, 2048)
	b.ReportAllocs()
	for b.Loop() {
		buf = g.append(buf[:0])
	}
	b.SetBytes(int64(len(buf)))
}
