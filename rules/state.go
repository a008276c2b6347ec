package rules

import (
	"fmt"
	"time"

	"github.com/responder-dev/responder/audit"
)

// CircuitLimits are the circuit breaker's safety limits (safety.*); a zero
// limit does not apply.
type CircuitLimits struct {
	// PerHour is safety.max_collections_per_hour.
	PerHour int
	// MachinesPer10m is safety.max_machines_per_10m.
	MachinesPer10m int
}

// Why returns the reason of a circuit breaker opened by counts: lastHour
// collect decisions in the last hour, machines distinct machines in the
// last 10 minutes, for a collection on a machine that is among them or not
// (known). "" when it stays closed. The store's view and Memory both use it.
func (l CircuitLimits) Why(lastHour, machines int, known bool) string {
	if l.PerHour > 0 && lastHour >= l.PerHour {
		return fmt.Sprintf("%d collect decisions in the last hour reach safety.max_collections_per_hour (%d)", lastHour, l.PerHour)
	}
	if l.MachinesPer10m > 0 && !known && machines >= l.MachinesPer10m {
		return fmt.Sprintf("%d distinct machines with collect decisions in the last 10 minutes reach safety.max_machines_per_10m (%d)", machines, l.MachinesPer10m)
	}
	return ""
}

// Memory is a State kept in memory: rule tests and `responder eval` give it
// (GivenState), and replay runs it on a virtual clock, recording each
// decision as it goes. It is not safe for concurrent use.
type Memory struct {
	paused bool
	// forcedOpen, when set, holds the circuit open with this reason.
	forcedOpen string
	limits     CircuitLimits
	now        time.Time
	last       map[cooldownSlot]lastAction
	// collections are the collect decisions of the last hour, oldest first.
	collections []collectionAt
}

type cooldownSlot struct{ machineID, key string }

type lastAction struct {
	at      time.Time
	auditID int64
}

type collectionAt struct {
	at        time.Time
	machineID string
}

var _ State = (*Memory)(nil)

// NewMemory returns an empty state: not paused, no cooldown held, the
// circuit breaker closed, with limits.
func NewMemory(limits CircuitLimits) *Memory {
	return &Memory{limits: limits, last: map[cooldownSlot]lastAction{}}
}

// SetNow moves the clock the circuit breaker's windows are read on.
func (m *Memory) SetNow(t time.Time) { m.now = t }

// SetPaused turns the kill switch on or off.
func (m *Memory) SetPaused(on bool) { m.paused = on }

// ForceCircuitOpen holds the circuit breaker open with reason (a rule test
// that says the safety limits are reached); "" lets the windows decide.
func (m *Memory) ForceCircuitOpen(reason string) { m.forcedOpen = reason }

// SetLastAction says that machineID had a decision holding the cooldown key
// at at (audit id auditID).
func (m *Memory) SetLastAction(machineID, key string, at time.Time, auditID int64) {
	m.last[cooldownSlot{machineID, key}] = lastAction{at: at, auditID: auditID}
}

// Record keeps what a decision changes in the state: the cooldown it
// claims, and a collection for the circuit breaker's windows.
func (m *Memory) Record(machineID string, d Decision, auditID int64, at time.Time) {
	if key := d.ClaimedCooldown(); key != "" {
		m.SetLastAction(machineID, key, at, auditID)
	}
	if d.Decision == audit.Collect {
		m.collections = append(m.collections, collectionAt{at: at, machineID: machineID})
	}
}

// Release gives back the cooldown key of machineID when decision auditID
// still holds it (its collection collected nothing), as the store does.
func (m *Memory) Release(machineID, key string, auditID int64) {
	slot := cooldownSlot{machineID, key}
	if l, ok := m.last[slot]; ok && l.auditID == auditID {
		delete(m.last, slot)
	}
}

// Paused implements State.
func (m *Memory) Paused() (bool, error) { return m.paused, nil }

// LastAction implements State.
func (m *Memory) LastAction(machineID, key string) (time.Time, int64, bool, error) {
	l, ok := m.last[cooldownSlot{machineID, key}]
	return l.at, l.auditID, ok, nil
}

// CircuitOpen implements State over the collections recorded within the
// last hour of the clock.
func (m *Memory) CircuitOpen(machineID string) (bool, string, error) {
	if m.forcedOpen != "" {
		return true, m.forcedOpen, nil
	}
	hour, tenMinutes := m.now.Add(-time.Hour), m.now.Add(-10*time.Minute)
	drop := 0
	for drop < len(m.collections) && !m.collections[drop].at.After(hour) {
		drop++
	}
	m.collections = m.collections[drop:]
	machines := map[string]bool{}
	for _, c := range m.collections {
		if c.at.After(tenMinutes) {
			machines[c.machineID] = true
		}
	}
	why := m.limits.Why(len(m.collections), len(machines), machines[machineID])
	return why != "", why, nil
}
