package defendertest

import (
	"archive/zip"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"time"
)

// Machine is a device in the simulated registry. Empty fields get MDE-like defaults when the
// machine is added: a random 40-hex id, OnboardingStatus "Onboarded", HealthStatus "Active",
// OSPlatform "Windows11", RiskScore and ExposureLevel "None", DeviceValue "Normal", LastSeen the
// simulator clock, FirstSeen 30 days before LastSeen.
type Machine struct {
	// ID is the 40-hex MDE device id (stored lower case).
	ID string
	// ComputerDNSName is the device FQDN; several machines may share one (re-onboarding).
	ComputerDNSName string
	// OSPlatform is e.g. "Windows11", "WindowsServer2022", "Linux".
	OSPlatform string
	// HealthStatus is "Active", "Inactive", "ImpairedCommunication", "NoSensorData", ...
	HealthStatus string
	// RiskScore is "None", "Informational", "Low", "Medium" or "High".
	RiskScore string
	// ExposureLevel is "None", "Low", "Medium" or "High".
	ExposureLevel string
	// DeviceValue is "Normal", "Low" or "High".
	DeviceValue string
	// RBACGroupName is the device group; "" answers null.
	RBACGroupName string
	// OnboardingStatus is "Onboarded", "CanBeOnboarded", "Unsupported" or "InsufficientInfo".
	OnboardingStatus string
	// MachineTags are the device tags.
	MachineTags []string
	// LastSeen is the last full device report.
	LastSeen time.Time
	// FinalStatus is the status this machine's actions end in; default Succeeded.
	FinalStatus string

	// FirstSeen is the first report of the device.
	FirstSeen time.Time
	// RBACGroupID is the device group id; MDE answers 0 when the device is in no group.
	RBACGroupID int
	// AADDeviceID is the Entra device id (a GUID, not the MDE id); "" answers null.
	AADDeviceID string
	// LastIPAddress and LastExternalIPAddress are the last known addresses.
	LastIPAddress, LastExternalIPAddress string
	// Version is the OS version, e.g. "22H2"; OSBuild the build number.
	Version string
	OSBuild int64
	// OSArchitecture is "64-bit" or "32-bit"; default "64-bit".
	OSArchitecture string
	// AgentVersion is the sensor version.
	AgentVersion string
	// IsPotentialDuplication and MergedIntoMachineID mark re-onboarded duplicates.
	IsPotentialDuplication bool
	MergedIntoMachineID    string
}

// AddMachine adds m to the registry (or replaces the machine with the same id). It panics when
// m.FinalStatus is set and is not a terminal status.
func (s *Simulator) AddMachine(m Machine) {
	if m.FinalStatus != "" && !IsTerminal(m.FinalStatus) {
		panic(fmt.Sprintf("defendertest: machine %q: FinalStatus %q is not one of Succeeded, Failed, TimeOut, Cancelled", m.ID, m.FinalStatus))
	}
	if m.ID == "" {
		m.ID = randomMachineID()
	}
	m.ID = strings.ToLower(m.ID)
	m.MachineTags = append([]string{}, m.MachineTags...)
	def := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	def(&m.OnboardingStatus, "Onboarded")
	def(&m.HealthStatus, "Active")
	def(&m.OSPlatform, "Windows11")
	def(&m.RiskScore, "None")
	def(&m.ExposureLevel, "None")
	def(&m.DeviceValue, "Normal")
	def(&m.OSArchitecture, "64-bit")
	if m.LastSeen.IsZero() {
		m.LastSeen = s.now()
	}
	if m.FirstSeen.IsZero() {
		m.FirstSeen = m.LastSeen.Add(-30 * 24 * time.Hour)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, old := range s.machines {
		if old.ID == m.ID {
			s.machines[i] = &m
			return
		}
	}
	s.machines = append(s.machines, &m)
}

// Machines returns a copy of the machine registry.
func (s *Simulator) Machines() []Machine {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Machine, len(s.machines))
	for i, m := range s.machines {
		out[i] = *m
		out[i].MachineTags = append([]string{}, m.MachineTags...)
	}
	return out
}

// SetFinalStatus sets the status future actions on machineID end in: Succeeded, Failed,
// TimeOut or Cancelled. Actions already created keep theirs. It panics on another status.
func (s *Simulator) SetFinalStatus(machineID, status string) {
	if !IsTerminal(status) {
		panic(fmt.Sprintf("defendertest: SetFinalStatus(%q, %q): not one of Succeeded, Failed, TimeOut, Cancelled", machineID, status))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.final[strings.ToLower(machineID)] = status
}

// machineByIDLocked returns the machine with id (case-insensitive), or nil.
func (s *Simulator) machineByIDLocked(id string) *Machine {
	for _, m := range s.machines {
		if strings.EqualFold(m.ID, id) {
			return m
		}
	}
	return nil
}

// machineByIDOrNameLocked resolves GET /api/machines/{id}, which accepts a device id or a
// computer name (reference section 5): the full DNS name or its first label, case-insensitive.
// Several machines may share a name; the most recently seen one wins.
func (s *Simulator) machineByIDOrNameLocked(key string) *Machine {
	if m := s.machineByIDLocked(key); m != nil {
		return m
	}
	var best *Machine
	pick := func(match func(*Machine) bool) {
		for _, m := range s.machines {
			if match(m) && (best == nil || m.LastSeen.After(best.LastSeen)) {
				best = m
			}
		}
	}
	pick(func(m *Machine) bool { return strings.EqualFold(m.ComputerDNSName, key) })
	if best == nil && !strings.Contains(key, ".") {
		pick(func(m *Machine) bool {
			short, _, _ := strings.Cut(m.ComputerDNSName, ".")
			return strings.EqualFold(short, key)
		})
	}
	return best
}

func (s *Simulator) finalStatusLocked(m *Machine) string {
	if st, ok := s.final[m.ID]; ok {
		return st
	}
	if m.FinalStatus != "" {
		return m.FinalStatus
	}
	return StatusSucceeded
}

// IPAddress is one entry of a machine's ipAddresses.
type IPAddress struct {
	IPAddress         string `json:"ipAddress"`
	MACAddress        string `json:"macAddress"`
	Type              string `json:"type"`
	OperationalStatus string `json:"operationalStatus"`
}

// machineJSON is the Machine entity as MDE answers it (reference section 5).
type machineJSON struct {
	ID                     string      `json:"id"`
	ComputerDNSName        string      `json:"computerDnsName"`
	FirstSeen              string      `json:"firstSeen"`
	LastSeen               string      `json:"lastSeen"`
	OSPlatform             string      `json:"osPlatform"`
	OSVersion              *string     `json:"osVersion"`
	OSProcessor            string      `json:"osProcessor"`
	Version                string      `json:"version"`
	LastIPAddress          string      `json:"lastIpAddress"`
	LastExternalIPAddress  string      `json:"lastExternalIpAddress"`
	AgentVersion           string      `json:"agentVersion"`
	OSBuild                int64       `json:"osBuild"`
	HealthStatus           string      `json:"healthStatus"`
	DeviceValue            string      `json:"deviceValue"`
	RBACGroupID            int         `json:"rbacGroupId"`
	RBACGroupName          *string     `json:"rbacGroupName"`
	RiskScore              string      `json:"riskScore"`
	ExposureLevel          string      `json:"exposureLevel"`
	IsAADJoined            bool        `json:"isAadJoined"`
	AADDeviceID            *string     `json:"aadDeviceId"`
	MachineTags            []string    `json:"machineTags"`
	DefenderAVStatus       string      `json:"defenderAvStatus"`
	OnboardingStatus       string      `json:"onboardingStatus"`
	OSArchitecture         string      `json:"osArchitecture"`
	ManagedBy              string      `json:"managedBy"`
	ManagedByStatus        string      `json:"managedByStatus"`
	IPAddresses            []IPAddress `json:"ipAddresses"`
	VMMetadata             *struct{}   `json:"vmMetadata"`
	IsPotentialDuplication bool        `json:"isPotentialDuplication"`
	MergedIntoMachineID    *string     `json:"mergedIntoMachineId"`
	IsExcluded             bool        `json:"isExcluded"`
	ExclusionReason        *string     `json:"exclusionReason"`
}

func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func (m *Machine) toJSON() machineJSON {
	j := machineJSON{
		ID:                     m.ID,
		ComputerDNSName:        m.ComputerDNSName,
		FirstSeen:              formatTime(m.FirstSeen),
		LastSeen:               formatTime(m.LastSeen),
		OSPlatform:             m.OSPlatform,
		OSProcessor:            "x64",
		Version:                m.Version,
		LastIPAddress:          m.LastIPAddress,
		LastExternalIPAddress:  m.LastExternalIPAddress,
		AgentVersion:           m.AgentVersion,
		OSBuild:                m.OSBuild,
		HealthStatus:           m.HealthStatus,
		DeviceValue:            m.DeviceValue,
		RBACGroupID:            m.RBACGroupID,
		RBACGroupName:          nullable(m.RBACGroupName),
		RiskScore:              m.RiskScore,
		ExposureLevel:          m.ExposureLevel,
		IsAADJoined:            m.AADDeviceID != "",
		AADDeviceID:            nullable(m.AADDeviceID),
		MachineTags:            append([]string{}, m.MachineTags...),
		DefenderAVStatus:       "Updated",
		OnboardingStatus:       m.OnboardingStatus,
		OSArchitecture:         m.OSArchitecture,
		ManagedBy:              "MicrosoftDefenderForEndpoint",
		ManagedByStatus:        "Success",
		IPAddresses:            []IPAddress{},
		IsPotentialDuplication: m.IsPotentialDuplication,
		MergedIntoMachineID:    nullable(m.MergedIntoMachineID),
	}
	if m.LastIPAddress != "" {
		j.IPAddresses = append(j.IPAddresses, IPAddress{IPAddress: m.LastIPAddress, Type: "Ethernet", OperationalStatus: "Up"})
	}
	return j
}

// machineFields are the $filter properties of GET /api/machines (reference section 5).
var machineFields = map[string]fieldKind{
	"id":               kindString,
	"computerDnsName":  kindStringFold,
	"version":          kindString,
	"deviceValue":      kindString,
	"aadDeviceId":      kindString,
	"machineTags":      kindList,
	"lastSeen":         kindTime,
	"exposureLevel":    kindString,
	"onboardingStatus": kindString,
	"lastIpAddress":    kindString,
	"healthStatus":     kindString,
	"osPlatform":       kindString,
	"riskScore":        kindString,
	"rbacGroupId":      kindNumber,
}

func (m *Machine) filterValues() map[string]any {
	return map[string]any{
		"id":               m.ID,
		"computerDnsName":  m.ComputerDNSName,
		"version":          m.Version,
		"deviceValue":      m.DeviceValue,
		"aadDeviceId":      m.AADDeviceID,
		"machineTags":      m.MachineTags,
		"lastSeen":         m.LastSeen,
		"exposureLevel":    m.ExposureLevel,
		"onboardingStatus": m.OnboardingStatus,
		"lastIpAddress":    m.LastIPAddress,
		"healthStatus":     m.HealthStatus,
		"osPlatform":       m.OSPlatform,
		"riskScore":        m.RiskScore,
		"rbacGroupId":      int64(m.RBACGroupID),
	}
}

func randomMachineID() string {
	b := make([]byte, 20)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// formatTime formats t as MDE does: UTC, seven fractional digits, Z.
func formatTime(t time.Time) string {
	return t.UTC().Format("2006-01-02T15:04:05.0000000Z")
}

// Dev mode credentials: the simulator started by `responder serve --dev` accepts these, and
// the dev configuration sends them. They protect nothing.
const (
	DevTenantID     = "00000000-0000-4000-8000-00000000d3f0"
	DevClientID     = "00000000-0000-4000-8000-0000000c1e47"
	DevClientSecret = "dev-secret-not-for-production"
)

// Ids of the machines returned by DevMachines.
const (
	DevWorkstationID      = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07"
	DevServerID           = "7f3a51c0b2d94e8a6c1d0e9f8a7b6c5d4e3f2a10"
	DevDomainControllerID = "c0ffee5eed0dc01a2b3c4d5e6f708192a3b4c5d6"
	DevStaleDuplicateID   = "0b1d2e3f405162738495a6b7c8d9eaf00112233f"
)

// DevMachines returns the machines of dev mode: a workstation tagged "workstation", an
// application server, a domain controller tagged "domain-controller", and a stale,
// re-onboarded duplicate of the workstation (same DNS name, older lastSeen, Inactive) so that
// name lookups meet the duplicate case.
func DevMachines() []Machine {
	now := time.Now().UTC().Truncate(time.Second)
	return []Machine{
		{
			ID: DevWorkstationID, ComputerDNSName: "ws-0142.corp.example.com", OSPlatform: "Windows11",
			Version: "23H2", OSBuild: 22631, HealthStatus: "Active", RiskScore: "Medium", ExposureLevel: "Medium",
			DeviceValue: "Normal", RBACGroupName: "Workstations", RBACGroupID: 41, OnboardingStatus: "Onboarded",
			MachineTags: []string{"workstation", "finance"}, LastSeen: now.Add(-17 * time.Minute),
			FirstSeen: now.Add(-210 * 24 * time.Hour), AADDeviceID: "80fe8ff8-2624-418e-9591-41f0491218f9",
			LastIPAddress: "10.20.14.42", LastExternalIPAddress: "203.0.113.17", AgentVersion: "10.8760.22631.3447",
		},
		{
			ID: DevServerID, ComputerDNSName: "srv-app-07.corp.example.com", OSPlatform: "WindowsServer2022",
			Version: "21H2", OSBuild: 20348, HealthStatus: "Active", RiskScore: "Low", ExposureLevel: "Medium",
			DeviceValue: "High", RBACGroupName: "Servers", RBACGroupID: 42, OnboardingStatus: "Onboarded",
			MachineTags: []string{"server", "prod"}, LastSeen: now.Add(-42 * time.Minute),
			FirstSeen: now.Add(-400 * 24 * time.Hour), LastIPAddress: "10.30.0.17",
			LastExternalIPAddress: "203.0.113.40", AgentVersion: "10.8760.20348.2402",
		},
		{
			ID: DevDomainControllerID, ComputerDNSName: "dc-01.corp.example.com", OSPlatform: "WindowsServer2019",
			Version: "1809", OSBuild: 17763, HealthStatus: "Active", RiskScore: "None", ExposureLevel: "Low",
			DeviceValue: "High", RBACGroupName: "Tier 0", RBACGroupID: 40, OnboardingStatus: "Onboarded",
			MachineTags: []string{"domain-controller", "tier0"}, LastSeen: now.Add(-9 * time.Minute),
			FirstSeen: now.Add(-900 * 24 * time.Hour), LastIPAddress: "10.0.0.10",
			LastExternalIPAddress: "203.0.113.2", AgentVersion: "10.8760.17763.5696",
		},
		{
			ID: DevStaleDuplicateID, ComputerDNSName: "ws-0142.corp.example.com", OSPlatform: "Windows11",
			Version: "22H2", OSBuild: 22621, HealthStatus: "Inactive", RiskScore: "None", ExposureLevel: "Low",
			DeviceValue: "Normal", RBACGroupName: "Workstations", RBACGroupID: 41, OnboardingStatus: "Onboarded",
			MachineTags: []string{"workstation"}, LastSeen: now.Add(-26 * 24 * time.Hour),
			FirstSeen: now.Add(-420 * 24 * time.Hour), LastIPAddress: "10.20.9.77",
			IsPotentialDuplication: true, AgentVersion: "10.8560.22621.2134",
		},
	}
}

// DevOptions returns the Options of dev mode: the dev credentials and DevMachines.
func DevOptions() Options {
	return Options{
		TenantID:     DevTenantID,
		ClientID:     DevClientID,
		ClientSecret: DevClientSecret,
		AppName:      "responder (dev)",
		Machines:     DevMachines(),
	}
}

// defaultPackage returns a small valid zip shaped like a Windows investigation package.
var defaultPackage = sync.OnceValue(func() []byte {
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	files := []struct{ name, body string }{
		{"CollectionSummaryReport.xls", "Simulated investigation package (defendertest).\r\n"},
		{"Processes/Processes.csv", "Name,Id,Path\r\nexplorer.exe,4242,C:\\Windows\\explorer.exe\r\n"},
		{"Network connections/ActiveNetConnections.txt", "Proto  Local Address  Foreign Address  State\r\n"},
		{"System Information/SystemInformation.txt", "OS Name: Microsoft Windows 11 Enterprise\r\n"},
	}
	mod := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, f := range files {
		w, err := zw.CreateHeader(&zip.FileHeader{Name: f.name, Method: zip.Deflate, Modified: mod})
		if err != nil {
			panic(err)
		}
		if _, err := w.Write([]byte(f.body)); err != nil {
			panic(err)
		}
	}
	if err := zw.Close(); err != nil {
		panic(err)
	}
	return buf.Bytes()
})
