package defender

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"time"
	"unicode"

	"go.uber.org/zap"

	"github.com/responder-dev/responder/alert"
)

// HealthActive is the healthStatus of a machine that reports to MDE.
const HealthActive = "Active"

// Machine is an MDE machine (GET /api/machines/{id}).
type Machine struct {
	ID                     string    `json:"id"`
	ComputerDNSName        string    `json:"computerDnsName"`
	OSPlatform             string    `json:"osPlatform,omitempty"`
	HealthStatus           string    `json:"healthStatus,omitempty"`
	RiskScore              string    `json:"riskScore,omitempty"`
	ExposureLevel          string    `json:"exposureLevel,omitempty"`
	DeviceValue            string    `json:"deviceValue,omitempty"`
	RBACGroupName          string    `json:"rbacGroupName,omitempty"`
	RBACGroupID            string    `json:"rbacGroupId,omitempty"` // a number in real answers
	OnboardingStatus       string    `json:"onboardingStatus,omitempty"`
	AADDeviceID            string    `json:"aadDeviceId,omitempty"`
	MachineTags            []string  `json:"machineTags,omitempty"`
	IsPotentialDuplication bool      `json:"isPotentialDuplication,omitempty"`
	MergedIntoMachineID    string    `json:"mergedIntoMachineId,omitempty"`
	FirstSeen              time.Time `json:"firstSeen,omitzero"`
	LastSeen               time.Time `json:"lastSeen,omitzero"`
}

// UnmarshalJSON decodes an MDE Machine tolerantly (timestamps with 7
// fractional digits, rbacGroupId as number or string).
func (m *Machine) UnmarshalJSON(b []byte) error {
	type plain Machine
	var w struct {
		plain
		RBACGroupID json.RawMessage `json:"rbacGroupId"`
		FirstSeen   mdeTime         `json:"firstSeen"`
		LastSeen    mdeTime         `json:"lastSeen"`
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	*m = Machine(w.plain)
	m.FirstSeen = time.Time(w.FirstSeen)
	m.LastSeen = time.Time(w.LastSeen)
	m.RBACGroupID = ""
	if len(w.RBACGroupID) > 0 && string(w.RBACGroupID) != "null" {
		var s string
		if json.Unmarshal(w.RBACGroupID, &s) == nil {
			m.RBACGroupID = s
		} else {
			var n json.Number
			if json.Unmarshal(w.RBACGroupID, &n) == nil {
				m.RBACGroupID = n.String()
			}
		}
	}
	return nil
}

// Alert returns the machine attributes rules read (SPEC 6.2).
func (m Machine) Alert() alert.Machine {
	return alert.Machine{
		ID:               m.ID,
		Name:             m.ComputerDNSName,
		OSPlatform:       m.OSPlatform,
		HealthStatus:     m.HealthStatus,
		RiskScore:        m.RiskScore,
		ExposureLevel:    m.ExposureLevel,
		DeviceValue:      m.DeviceValue,
		Tags:             append([]string(nil), m.MachineTags...),
		Group:            m.RBACGroupName,
		OnboardingStatus: m.OnboardingStatus,
		LastSeen:         m.LastSeen,
	}
}

// GetMachine returns one machine (GET /api/machines/{id}). An unknown id is
// OutcomeMachineNotFound.
func (c *Client) GetMachine(ctx context.Context, machineID string) (Machine, error) {
	if !alert.ValidMachineID(machineID) {
		return Machine{}, invalid(opGetMachine, "machine id is not 40 hexadecimal characters", ErrInvalidID)
	}
	var m Machine
	r := request{op: opGetMachine, kind: kindMachine, group: GroupMachines, method: http.MethodGet,
		url: c.endpoint("api", "machines", machineID), machineID: machineID}
	if err := c.getJSON(ctx, r, &m); err != nil {
		return Machine{}, err
	}
	return m, nil
}

// maxDNSName is the longest DNS name.
const maxDNSName = 255

// FindMachineByName finds the machine of a DNS name
// (GET /api/machines?$filter=computerDnsName eq '…'). Re-onboarded machines
// keep their name under a new id, so several may match: the most recently
// seen one with healthStatus Active wins, else the most recently seen one.
// No match is OutcomeMachineNotFound.
func (c *Client) FindMachineByName(ctx context.Context, dnsName string) (Machine, error) {
	dnsName = strings.TrimSpace(dnsName)
	if dnsName == "" || len(dnsName) > maxDNSName || strings.ContainsFunc(dnsName, func(r rune) bool {
		return unicode.IsControl(r) || unicode.IsSpace(r)
	}) {
		return Machine{}, invalid(opFindMachines, "not a DNS name", ErrInvalidArgument)
	}
	u := c.endpoint("api", "machines") + "?$filter=" + queryEscape("computerDnsName eq "+odataString(dnsName))
	r := request{op: opFindMachines, kind: kindMachineSearch, group: GroupMachines, method: http.MethodGet, url: u}
	found, err := list[Machine](ctx, c, r, 0)
	if err != nil {
		return Machine{}, err
	}
	best, ok := pickMachine(found)
	if !ok {
		return Machine{}, &Error{Op: opFindMachines, Outcome: OutcomeMachineNotFound, StatusCode: http.StatusOK,
			Message: "no machine has this name"}
	}
	if len(found) > 1 {
		c.logger.Debug("defender machine name matched several machines",
			zap.String("operation", opFindMachines), zap.String("machine_id", best.ID), zap.Int("matches", len(found)))
	}
	return best, nil
}

// pickMachine prefers active machines, then the latest lastSeen.
func pickMachine(ms []Machine) (Machine, bool) {
	var best Machine
	found := false
	for _, m := range ms {
		if !alert.ValidMachineID(m.ID) {
			continue
		}
		if !found {
			best, found = m, true
			continue
		}
		ba, ma := strings.EqualFold(best.HealthStatus, HealthActive), strings.EqualFold(m.HealthStatus, HealthActive)
		switch {
		case ma && !ba:
			best = m
		case ma == ba && m.LastSeen.After(best.LastSeen):
			best = m
		}
	}
	return best, found
}
