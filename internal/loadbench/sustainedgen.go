package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/responder-dev/responder/defender/defendertest"
)

// sustainedSeed makes the fleet and every payload of the sustained
// scenario the same from run to run.
const sustainedSeed = 15

// sustainedFleet is the machines the alerts come from. Their ids are
// random 40-hex-digit strings, as MDE's are (also what keeps the
// simulator's linear look-up by id short: ids differ from the first
// character).
type sustainedFleet struct {
	hosts      []fleetHost
	qualifying []int // indexes of the workstations critical alerts come from
}

type fleetHost struct {
	id, name, group string
	tags            []string
}

func newSustainedFleet(seed uint64, n, qualifying int) *sustainedFleet {
	rng := mrand.New(mrand.NewPCG(seed, 0x5157a1ed))
	f := &sustainedFleet{hosts: make([]fleetHost, n)}
	groups := []string{"Workstations EMEA", "Workstations Americas", "Workstations APAC", "Servers", "Domain controllers"}
	var raw [20]byte
	for i := range f.hosts {
		for j := range raw {
			raw[j] = byte(rng.Uint32())
		}
		h := fleetHost{id: hex.EncodeToString(raw[:])}
		switch {
		case i%100 == 99:
			h.name, h.group, h.tags = fmt.Sprintf("dc-%05d.corp.contoso.com", i), groups[4], []string{"domain-controller", "tier-0"}
		case i%10 == 9:
			h.name, h.group, h.tags = fmt.Sprintf("srv-%05d.corp.contoso.com", i), groups[3], []string{"server"}
		default:
			h.name, h.group, h.tags = fmt.Sprintf("ws-%05d.corp.contoso.com", i), groups[i%3], []string{"workstation"}
			if len(f.qualifying) < qualifying {
				f.qualifying = append(f.qualifying, i)
			}
		}
		f.hosts[i] = h
	}
	return f
}

// simulator serves a Defender simulator on loopback that knows the fleet
// when perMinute > 0 (its quota per API group; else the defaults and the
// dev machines only). stop shuts it down and waits for it.
func (f *sustainedFleet) simulator(perMinute int) (*defendertest.Simulator, func()) {
	o := defendertest.DevOptions()
	if perMinute > 0 {
		for _, h := range f.hosts {
			o.Machines = append(o.Machines, defendertest.Machine{ID: h.id, ComputerDNSName: h.name, HealthStatus: "Active", MachineTags: h.tags})
		}
		o.QuotaPerMinute, o.QuotaPerHour = perMinute, perMinute*60
	}
	o.PendingFor, o.InProgressFor = time.Hour, time.Hour
	sim := defendertest.New(o)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fatal(err)
	}
	sim.SetURL("http://" + ln.Addr().String())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = sim.Serve(ctx, ln)
	}()
	return sim, func() { cancel(); <-done }
}

// mdeAlerts makes MDE API v1 alerts of about 1.5 KB, each with a new id.
// Alert n is a function of the seed and n alone, so a run sends the same
// alerts whatever the order the workers draw them in. The text is built
// from templates compiled once; a payload is appended to the caller's
// buffer.
type mdeAlerts struct {
	seed       uint64
	seq        atomic.Uint64
	fleet      *sustainedFleet
	qualifying uint64 // percent of critical alerts on qualifying machines
	kinds      []alertTemplate
	critical   alertTemplate
}

func newMDEAlerts(seed uint64, fleet *sustainedFleet, qualifyingPercent uint64) *mdeAlerts {
	g := &mdeAlerts{seed: seed, fleet: fleet, qualifying: qualifyingPercent}
	for _, k := range mdeKinds {
		g.kinds = append(g.kinds, compileAlert(k))
	}
	g.critical = compileAlert(mdeCritical)
	return g
}

// append appends the next alert to b.
func (g *mdeAlerts) append(b []byte) []byte {
	n := g.seq.Add(1)
	h := splitmix(g.seed ^ n*0x9e3779b97f4a7c15)
	v := alertValues{n: n, hash: h}
	t := &g.kinds[(h>>40)%uint64(len(g.kinds))]
	if h%100 < g.qualifying {
		t = &g.critical
		v.host = &g.fleet.hosts[g.fleet.qualifying[(h>>8)%uint64(len(g.fleet.qualifying))]]
		// MDE's own severities stop at High (UnSpecified, Informational,
		// Low, Medium, High); the qualifying alerts are critical.
		v.severity = "Critical"
	} else {
		v.host = &g.fleet.hosts[(h>>8)%uint64(len(g.fleet.hosts))]
		v.severity = severityOf((h >> 32) % 100)
	}
	return t.append(b, &v)
}

// appendFrom appends the next alert, one from host i that does not
// qualify (priming the machine cache).
func (g *mdeAlerts) appendFrom(b []byte, i int) []byte {
	n := g.seq.Add(1)
	h := splitmix(g.seed ^ n*0x9e3779b97f4a7c15)
	v := alertValues{n: n, hash: h, host: &g.fleet.hosts[i], severity: severityOf((h >> 32) % 100)}
	return g.kinds[(h>>40)%uint64(len(g.kinds))].append(b, &v)
}

// sizes returns the smallest, mean and largest of the next n payloads;
// it draws them from g, so it is meant for a generator of its own.
func (g *mdeAlerts) sizes(n int) [3]int {
	var buf []byte
	lo, hi, sum := 1<<30, 0, 0
	for range n {
		buf = g.append(buf[:0])
		lo, hi, sum = min(lo, len(buf)), max(hi, len(buf)), sum+len(buf)
	}
	return [3]int{lo, sum / n, hi}
}

// severityOf spreads the alerts that do not qualify over MDE's severities.
func severityOf(p uint64) string {
	switch {
	case p < 25:
		return "Informational"
	case p < 60:
		return "Low"
	case p < 88:
		return "Medium"
	}
	return "High"
}

func splitmix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// alertValues are what changes from one alert to the next.
type alertValues struct {
	n, hash  uint64
	host     *fleetHost
	severity string
}

// alertTemplate is an alert's JSON cut at its variable parts: text[i] is
// followed by the value of slots[i].
type alertTemplate struct {
	text  []string
	slots []slot
}

// slot is a variable part of an alert, written ${name} in a template.
type slot uint8

const (
	slotID slot = iota
	slotIncident
	slotInvestigation
	slotSeverity
	slotCreated
	slotFirst
	slotLast
	slotUpdated
	slotMachine
	slotHost
	slotGroup
	slotUser
)

var slotNames = map[string]slot{
	"id": slotID, "incident": slotIncident, "investigation": slotInvestigation, "severity": slotSeverity,
	"created": slotCreated, "first": slotFirst, "last": slotLast, "updated": slotUpdated,
	"machine": slotMachine, "host": slotHost, "group": slotGroup, "user": slotUser,
}

// The users the alerts name.
var mdeUsers = []string{"jdoe", "asmith", "mgarcia", "lchen", "okowalski", "pnair", "svc-backup", "tbrown"}

// append appends the alert of v to b.
func (t *alertTemplate) append(b []byte, v *alertValues) []byte {
	// Times: the alert is created between 08:00 and about 22:00, its
	// events a few seconds before.
	created := 28_800_000 + int64(v.n*37)%50_000_000
	for i, s := range t.slots {
		b = append(b, t.text[i]...)
		switch s {
		case slotID: // da + 18 digits _ 10 digits, like da637472900382838869_1364969609
			b = append(b, "da"...)
			b = appendPadded(b, 638_690_000_000_000_000+v.n, 18)
			b = append(b, '_')
			b = appendPadded(b, v.hash%10_000_000_000, 10)
		case slotIncident:
			b = strconv.AppendUint(b, 1_200_000+v.n/3, 10)
		case slotInvestigation:
			b = strconv.AppendUint(b, 900_000+v.n/3, 10)
		case slotSeverity:
			b = append(b, v.severity...)
		case slotCreated:
			b = appendStamp(b, created)
		case slotFirst:
			b = appendStamp(b, created-int64(v.hash>>52)-2_000)
		case slotLast:
			b = appendStamp(b, created-1_000)
		case slotUpdated:
			b = appendStamp(b, created+350)
		case slotMachine:
			b = append(b, v.host.id...)
		case slotHost:
			b = append(b, v.host.name...)
		case slotGroup:
			b = append(b, v.host.group...)
		case slotUser:
			b = append(b, mdeUsers[(v.hash>>20)%uint64(len(mdeUsers))]...)
		}
	}
	return append(b, t.text[len(t.slots)]...)
}

// appendPadded appends v in decimal, zero-padded to width digits.
func appendPadded(b []byte, v uint64, width int) []byte {
	var d [20]byte
	i := len(d)
	for v > 0 || i > len(d)-width {
		i--
		d[i] = byte('0' + v%10)
		v /= 10
	}
	return append(b, d[i:]...)
}

// appendStamp appends 2026-12-06Thh:mm:ss.fffffffZ for ms milliseconds into
// that day (the day before or after when ms is out of it is not needed:
// it is folded into the day).
func appendStamp(b []byte, ms int64) []byte {
	ms = (ms%86_400_000 + 86_400_000) % 86_400_000
	b = append(b, "2026-12-06T"...)
	b = appendPadded(b, uint64(ms/3_600_000), 2)
	b = append(b, ':')
	b = appendPadded(b, uint64(ms/60_000%60), 2)
	b = append(b, ':')
	b = appendPadded(b, uint64(ms/1000%60), 2)
	b = append(b, '.')
	b = appendPadded(b, uint64(ms%1000), 3)
	return append(b, "0000Z"...)
}

// mdeKind is one kind of MDE alert: what every alert of the kind shares.
type mdeKind struct {
	category, detectionSource, investigationState string
	threatFamily, threatName                      string // "" is null
	title, description                            string
	mitre                                         []string
	// evidence is the JSON of the evidence list's items; ${created},
	// ${user} and the other slots may appear in it.
	evidence string
}

// compileAlert cuts the alert of kind k at its ${slot}s.
func compileAlert(k mdeKind) alertTemplate {
	str := func(s string) string {
		if s == "" {
			return "null"
		}
		b, _ := json.Marshal(s)
		return string(b)
	}
	mitre, _ := json.Marshal(k.mitre)
	text := `{"id":"${id}","incidentId":${incident},"investigationId":${investigation},"assignedTo":null,"severity":"${severity}",` +
		`"status":"New","classification":null,"determination":null,"investigationState":` + str(k.investigationState) +
		`,"detectionSource":` + str(k.detectionSource) + `,"category":` + str(k.category) +
		`,"threatFamilyName":` + str(k.threatFamily) + `,"threatName":` + str(k.threatName) +
		`,"title":` + str(k.title) + `,"description":` + str(k.description) +
		`,"alertCreationTime":"${created}","firstEventTime":"${first}","lastEventTime":"${last}","lastUpdateTime":"${updated}"` +
		`,"machineId":"${machine}","computerDnsName":"${host}","rbacGroupName":"${group}","aadTenantId":"` + defendertest.DevTenantID + `"` +
		`,"mitreTechniques":` + string(mitre) + `,"relatedUser":{"userName":"${user}","domainName":"CORP"},"evidence":[` + k.evidence + `]}`
	var t alertTemplate
	for {
		i := strings.Index(text, "${")
		if i < 0 {
			break
		}
		j := strings.IndexByte(text[i:], '}')
		sl, ok := slotNames[text[i+2:i+j]]
		if !ok {
			panic("loadbench: unknown slot " + text[i:i+j+1])
		}
		t.text = append(t.text, text[:i])
		t.slots = append(t.slots, sl)
		text = text[i+j+1:]
	}
	t.text = append(t.text, text)
	return t
}

// userEvidence is the evidence item of the alert's user.
const userEvidence = `{"entityType":"User","evidenceCreationTime":"${updated}","accountName":"${user}","domainName":"CORP","userPrincipalName":"${user}@contoso.com","detectionStatus":null}`

// mdeKinds are the alerts that do not qualify, after common MDE alert
// titles; mdeCritical is the qualifying one.
var (
	mdeKinds = []mdeKind{
		{
			category: "Execution", detectionSource: "WindowsDefenderAtp", investigationState: "PendingApproval",
			title:       "Suspicious PowerShell command line",
			description: "A suspicious PowerShell activity was observed on the machine. This behavior may indicate that PowerShell was used during installation, exploration, or lateral movement.",
			mitre:       []string{"T1059.001", "T1105"},
			evidence:    `{"entityType":"Process","evidenceCreationTime":"${updated}","sha1":"6cbce4a295c163791b60fc23d285e6d84f28ee4c","fileName":"powershell.exe","filePath":"C:\\Windows\\System32\\WindowsPowerShell\\v1.0","processId":7340,"processCommandLine":"powershell.exe -nop -ep bypass -f u.ps1","detectionStatus":"Detected"},` + userEvidence,
		},
		{
			category: "Malware", detectionSource: "WindowsDefenderAv", investigationState: "Benign",
			threatFamily: "Wacatac", threatName: "Trojan:Win32/Wacatac.B!ml",
			title:       "'Wacatac' malware was prevented",
			description: "Malware and unwanted software are undesirable applications that perform annoying, disruptive, or harmful actions on affected machines. The malware was stopped from delivering its payload.",
			mitre:       []string{},
			evidence:    `{"entityType":"File","evidenceCreationTime":"${updated}","sha1":"3395856ce81f2b7382dee72602f798b642f14140","fileName":"invoice_0412.exe","filePath":"C:\\Users\\${user}\\Downloads","detectionStatus":"Prevented"},` + userEvidence,
		},
		{
			category: "SuspiciousActivity", detectionSource: "WindowsDefenderAtp", investigationState: "UnsupportedAlertType",
			title:       "Anomaly detected in ASEP registry",
			description: "A process registered a suspicious command or file in ASEP registry key, where it will be run after a reboot. An attacker may place malware there to keep access after a restart.",
			mitre:       []string{"T1547.001"},
			evidence:    `{"entityType":"Registry","evidenceCreationTime":"${updated}","registryKey":"SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Run","registryHive":"HKEY_LOCAL_MACHINE","registryValue":"C:\\ProgramData\\sync\\odsync.exe","detectionStatus":"Detected"},` + userEvidence,
		},
	}
	mdeCritical = mdeKind{
		category: "Ransomware", detectionSource: "WindowsDefenderAtp", investigationState: "Queued",
		threatFamily: "Sodinokibi", threatName: "Ransom:Win32/Sodinokibi.A",
		title:       "Ransomware behavior detected in the file system",
		description: "Ransomware-like activity was observed: a process encrypted and renamed many files in a short time, and deleted volume shadow copies. Ransomware encrypts files and demands a ransom.",
		mitre:       []string{"T1486", "T1490"},
		evidence:    `{"entityType":"File","evidenceCreationTime":"${updated}","sha1":"ff836cfb1af40252bd2a2ea843032e99a5b262b6","fileName":"svchost32.exe","filePath":"C:\\Users\\${user}\\AppData\\Local\\Temp","detectionStatus":"Detected"},` + userEvidence,
	}
)
