package main

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/responder-dev/responder/alert"
	"github.com/responder-dev/responder/audit"
	"github.com/responder-dev/responder/rules"
)

// seedVersion changes whenever the generator's output does: a kept seed
// store of another version is seeded again.
const seedVersion = 2

// seedSpec says what to seed.
type seedSpec struct {
	alerts   int
	machines int
	span     time.Duration // received_at is spread over the span before end
	end      time.Time
	limits   rules.CircuitLimits
}

func defaultSeedSpec(alerts int, end time.Time) seedSpec {
	return seedSpec{alerts: alerts, machines: 20_000, span: 7 * 24 * time.Hour, end: end.Truncate(time.Millisecond),
		limits: rules.CircuitLimits{PerHour: 200, MachinesPer10m: 50}}
}

// seedRow is one stored alert and the audit entry of its decision, as the
// service would have recorded them (the ids of both are the row's id).
type seedRow struct {
	id                                      int64
	key, source, alertID, machineID, name   string
	payload                                 string
	receivedAt, createdAt, updatedAt        int64
	rule, action, decision, reason, comment string
	dryRun                                  int
	state                                   string
	postedAt, actionCreatedAt, finishedAt   int64
	outcome, actionID, actionStatus         string
	posts                                   int
	settleUntil                             int64
	snapshot                                string
}

// alertValues and auditValues are a row's columns, in the order of
// alertColumns and auditColumns.
var (
	alertColumns = []string{"id", "dedup_key", "source", "alert_id", "machine_id", "machine_name", "payload", "received_at", "dispatched"}
	auditColumns = []string{"id", "alert_row_id", "created_at", "updated_at", "source", "alert_id", "machine_id", "machine_name",
		"rule", "action", "decision", "reason", "comment", "dry_run", "state", "posted_at", "outcome", "action_id",
		"action_status", "action_created_at", "finished_at", "posts", "settle_until", "machine"}
)

func (r *seedRow) alertValues() []any {
	return []any{r.id, r.key, r.source, r.alertID, r.machineID, r.name, r.payload, r.receivedAt, 1}
}

func (r *seedRow) auditValues() []any {
	return []any{r.id, r.id, r.createdAt, r.updatedAt, r.source, r.alertID, r.machineID, r.name,
		r.rule, r.action, r.decision, r.reason, r.comment, r.dryRun, r.state, r.postedAt, r.outcome, r.actionID,
		r.actionStatus, r.actionCreatedAt, r.finishedAt, r.posts, r.settleUntil, r.snapshot}
}

// cooldownRow is a cooldown the seeded decisions hold at the end.
type cooldownRow struct {
	machineID, key string
	lastAt, id     int64
}

// seedStats counts what the generator produced.
type seedStats struct {
	decisions    map[audit.Decision]int
	payloadBytes int64
	noSnapshot   int
}

// seedGen generates the seeded alerts in arrival order and decides each
// with the current rules through rules.Decide, on a virtual clock with an
// in-memory state: the recorded decisions are what the service would
// have recorded with those rules (cooldowns, circuit breaker, dry run).
type seedGen struct {
	spec     seedSpec
	rng      *rand.Rand
	fleet    []fleetMachine
	arrivals []arrival
	set      *rules.Set
	mem      *rules.Memory
	// snapshotsFrom is when decisions started keeping the machine
	// snapshot (migration 7): the oldest alerts have none.
	snapshotsFrom int64
	held          map[[2]string]cooldownRow
	lastCreated   int64
	next          int
	stats         seedStats
	burstMachine  int
}

// arrival is when an alert was received, and whether it belongs to a
// burst (a campaign hitting many workstations at once).
type arrival struct {
	at    int64
	burst bool
}

// newSeedGen prepares the generator; currentPath is a file holding
// currentRules.
func newSeedGen(spec seedSpec, currentPath string) (*seedGen, error) {
	set, err := rules.LoadFiles(currentPath)
	if err != nil {
		return nil, fmt.Errorf("loading the current rules: %w", err)
	}
	rng := rand.New(rand.NewPCG(13, uint64(spec.alerts)))
	g := &seedGen{
		spec: spec, rng: rng, set: set, mem: rules.NewMemory(spec.limits),
		held:  map[[2]string]cooldownRow{},
		stats: seedStats{decisions: map[audit.Decision]int{}},
	}
	g.fleet = newFleet(spec.machines, rng)
	g.arrivals = arrivals(spec, rng)
	start := spec.end.Add(-spec.span).UnixMilli()
	g.snapshotsFrom = start + int64(float64(spec.span.Milliseconds())*0.02)
	return g, nil
}

// arrivals spreads the alerts over the span with a daily rhythm (busier
// in working hours), plus one burst a day: 250 alerts within 5 minutes.
func arrivals(spec seedSpec, rng *rand.Rand) []arrival {
	start := spec.end.Add(-spec.span).UnixMilli()
	span := spec.span.Milliseconds()
	days := int(spec.span / (24 * time.Hour))
	const perBurst = 250
	bursts := min(days, spec.alerts/(perBurst*20))
	out := make([]arrival, 0, spec.alerts)
	for d := range bursts {
		at := start + int64(d)*24*3600*1000 + 14*3600*1000 + rng.Int64N(3600*1000)
		for range perBurst {
			out = append(out, arrival{at: at + rng.Int64N(5*60*1000), burst: true})
		}
	}
	for len(out) < spec.alerts {
		at := start + rng.Int64N(span)
		// The rhythm runs from the start of the span, not the clock's
		// midnight, so that two seeds of the same size are the same
		// alerts and decisions, shifted in time.
		hour := float64((at-start)/1000%86400) / 3600
		weight := 0.35 + 0.65*max(0, math.Sin(math.Pi*(hour-6)/12))
		if rng.Float64() < weight {
			out = append(out, arrival{at: at})
		}
	}
	slices.SortFunc(out, func(a, b arrival) int { return int(a.at - b.at) })
	return out
}

// fleetMachine is a machine of the seeded fleet.
type fleetMachine struct {
	attrs alert.Machine
	kind  string
}

var (
	departments = []string{"finance", "engineering", "sales", "hr", "it", "legal", "marketing", "support"}
	regions     = []string{"emea", "amer", "apac"}
)

// newFleet makes n machines: mostly workstations, some servers, a few
// domain controllers, 1 % opted out of forensics, and a few carrying the
// tags of the candidate's tag rules.
func newFleet(n int, rng *rand.Rand) []fleetMachine {
	out := make([]fleetMachine, n)
	for i := range out {
		kind, platform, prefix := "workstation", "Windows11", "ws"
		switch r := rng.Float64(); {
		case r < 0.005:
			kind, platform, prefix = "domain-controller", "WindowsServer2022", "dc"
		case r < 0.2:
			kind, platform, prefix = "server", "WindowsServer2019", "srv"
			if rng.IntN(3) == 0 {
				platform = "Linux"
			}
		case r < 0.45:
			platform = "Windows10"
		case r < 0.5:
			platform = "macOS"
		}
		dept, region := departments[rng.IntN(len(departments))], regions[rng.IntN(len(regions))]
		tags := []string{kind, region, dept}
		if rng.Float64() < 0.01 {
			tags = append(tags, "no-forensics")
		}
		if rng.Float64() < 0.02 {
			tags = append(tags, "vip")
		}
		if rng.Float64() < 0.004 {
			tags = append(tags, fmt.Sprintf("tag-%d", tagRules[rng.IntN(len(tagRules))]))
		}
		risk := []string{"None", "Low", "Medium", "High"}[rng.IntN(4)]
		out[i] = fleetMachine{kind: kind, attrs: alert.Machine{
			ID:               fmt.Sprintf("%08x%032x", rng.Uint32(), i+1),
			Name:             fmt.Sprintf("%s-%s-%05d.corp.contoso.com", dept, prefix, i+1),
			OSPlatform:       platform,
			HealthStatus:     "Active",
			RiskScore:        risk,
			ExposureLevel:    []string{"Low", "Medium", "High"}[rng.IntN(3)],
			DeviceValue:      "Normal",
			Tags:             tags,
			Group:            strings.ToUpper(region[:1]) + region[1:] + "-" + kind + "s",
			OnboardingStatus: "Onboarded",
		}}
		if rng.Float64() < 0.03 {
			out[i].attrs.HealthStatus = "Inactive"
		}
		if kind == "domain-controller" || rng.Float64() < 0.05 {
			out[i].attrs.DeviceValue = "High"
		}
	}
	return out
}

// done reports whether every alert has been generated.
func (g *seedGen) done() bool { return g.next >= len(g.arrivals) }

// row generates the next alert and decides it.
func (g *seedGen) row() (seedRow, error) {
	arr := g.arrivals[g.next]
	g.next++
	id := int64(g.next)
	m := g.machineFor(arr)
	a := g.alertFor(id, arr, m)
	payload, err := json.Marshal(&a)
	if err != nil {
		return seedRow{}, fmt.Errorf("encoding alert %d: %w", id, err)
	}
	created := max(arr.at+2+g.rng.Int64N(40), g.lastCreated)
	g.lastCreated = created
	now := time.UnixMilli(created).UTC()
	attrs := m.attrs
	attrs.LastSeen = time.UnixMilli(arr.at - g.rng.Int64N(30*60*1000)).UTC().Truncate(time.Second)
	machine := rules.Machine{Attributes: &attrs}
	if g.rng.Float64() < 0.003 {
		machine = rules.Machine{Unavailable: "Defender answered 503 Service Unavailable"}
	}
	g.mem.SetNow(now)
	d, err := rules.Decide(rules.Input{Alert: &a, Machine: machine, Rules: g.set, State: g.mem, Now: now})
	if err != nil {
		return seedRow{}, fmt.Errorf("deciding alert %d: %w", id, err)
	}
	g.mem.Record(a.MachineID, d, id, now)
	r := seedRow{
		id: id, key: a.DedupKey(), source: string(a.Source), alertID: a.ID, machineID: a.MachineID, name: a.MachineName,
		payload: string(payload), receivedAt: arr.at, createdAt: created, updatedAt: created,
		rule: d.Rule, action: string(d.Action), decision: string(d.Decision), reason: d.Reason, comment: d.Comment,
		state: string(audit.Done),
	}
	if d.DryRun {
		r.dryRun = 1
	}
	if arr.at >= g.snapshotsFrom {
		if r.snapshot, err = audit.MarshalSnapshot(d.Snapshot); err != nil {
			return seedRow{}, fmt.Errorf("encoding the snapshot of alert %d: %w", id, err)
		}
	}
	if r.snapshot == "" {
		g.stats.noSnapshot++
	}
	if d.Decision.ClaimsCooldown() {
		key := rules.CooldownKey(d.Action, d.DryRun)
		g.held[[2]string{a.MachineID, key}] = cooldownRow{machineID: a.MachineID, key: key, lastAt: created, id: id}
	}
	if d.Decision == audit.Collect {
		g.collected(&r)
	}
	g.stats.decisions[d.Decision]++
	g.stats.payloadBytes += int64(len(payload))
	return r, nil
}

// collected fills in what became of a collection: posted, created,
// succeeded some minutes later (never after the end of the window).
func (g *seedGen) collected(r *seedRow) {
	r.postedAt = r.createdAt + 20 + g.rng.Int64N(200)
	r.settleUntil = r.postedAt + 60_000
	r.posts = 1
	r.outcome = string(audit.Created)
	r.actionID = fmt.Sprintf("%08x-%04x-%04x-%04x-%012x", g.rng.Uint32(), g.rng.IntN(1<<16), g.rng.IntN(1<<16), g.rng.IntN(1<<16), g.rng.Int64N(1<<48))
	r.actionCreatedAt = r.postedAt + 300
	r.finishedAt = min(r.actionCreatedAt+int64(10+g.rng.IntN(30))*60_000, g.spec.end.UnixMilli())
	r.actionStatus = string(audit.Succeeded)
	r.updatedAt = r.finishedAt
}

// cooldowns are the cooldowns the seeded decisions hold at the end.
func (g *seedGen) cooldowns() []cooldownRow {
	out := make([]cooldownRow, 0, len(g.held))
	for _, c := range g.held {
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b cooldownRow) int { return int(a.id - b.id) })
	return out
}

// machineFor picks the alert's machine: a burst hits distinct
// workstations; otherwise 30 % of the alerts come from 2 % of the fleet
// (noisy machines, whose repeats meet the cooldowns).
func (g *seedGen) machineFor(arr arrival) *fleetMachine {
	if arr.burst {
		for {
			g.burstMachine = (g.burstMachine + 7919) % len(g.fleet)
			if m := &g.fleet[g.burstMachine]; m.kind == "workstation" {
				return m
			}
		}
	}
	if g.rng.Float64() < 0.3 {
		return &g.fleet[g.rng.IntN(max(1, len(g.fleet)/50))]
	}
	return &g.fleet[g.rng.IntN(len(g.fleet))]
}

// weighted picks a value from a table of weights.
func weighted[T any](rng *rand.Rand, table []weightedValue[T]) T {
	total := 0.0
	for _, w := range table {
		total += w.weight
	}
	r := rng.Float64() * total
	for _, w := range table {
		if r < w.weight {
			return w.value
		}
		r -= w.weight
	}
	return table[len(table)-1].value
}

type weightedValue[T any] struct {
	weight float64
	value  T
}

var (
	sourceTable = []weightedValue[alert.Source]{
		{45, alert.SourceDefender}, {20, alert.SourceGraph}, {25, alert.SourceAlertmanager}, {10, alert.SourceGrafana},
	}
	severityTable = []weightedValue[string]{
		{15, alert.SeverityInformational}, {35, alert.SeverityLow}, {33, alert.SeverityMedium},
		{14, alert.SeverityHigh}, {3, alert.SeverityCritical},
	}
	categoryTable = []weightedValue[string]{
		{18, "Malware"}, {20, "SuspiciousActivity"}, {12, "Execution"}, {8, "DefenseEvasion"}, {7, "Persistence"},
		{5, "CredentialAccess"}, {6, "Discovery"}, {3, "LateralMovement"}, {5, "CommandAndControl"},
		{4, "InitialAccess"}, {2, "Exfiltration"}, {9, "UnwantedSoftware"}, {0.5, "Ransomware"}, {0.5, "Exploit"},
	}
	families   = []string{"Emotet", "Qakbot", "Lumma", "AgentTesla", "Formbook", "RedLine", "IcedID", "Remcos", "AsyncRAT", "Mimikatz"}
	techniques = map[string][]string{
		"Malware":            {"T1204.002", "T1059.001"},
		"SuspiciousActivity": {"T1059.001", "T1027"},
		"Execution":          {"T1059.003", "T1106"},
		"DefenseEvasion":     {"T1562.001", "T1070.001"},
		"Persistence":        {"T1547.001", "T1053.005"},
		"CredentialAccess":   {"T1003.001", "T1555.003"},
		"Discovery":          {"T1087.002", "T1482"},
		"LateralMovement":    {"T1021.002", "T1570"},
		"CommandAndControl":  {"T1071.001", "T1105"},
		"InitialAccess":      {"T1566.001", "T1190"},
		"Exfiltration":       {"T1041", "T1567.002"},
		"UnwantedSoftware":   {"T1204"},
		"Ransomware":         {"T1486", "T1490"},
		"Exploit":            {"T1203", "T1068"},
	}
	titles = map[string][]string{
		"Malware":            {"'%s' malware was detected", "'%s' malware was prevented", "An active '%s' malware process was detected while executing"},
		"SuspiciousActivity": {"Suspicious PowerShell command line", "Suspicious process injection observed", "Suspicious file dropped and launched"},
		"Execution":          {"Suspicious script execution via wscript", "Office application spawned a command interpreter"},
		"DefenseEvasion":     {"Attempt to turn off Microsoft Defender Antivirus protection", "Event log was cleared"},
		"Persistence":        {"Suspicious scheduled task created", "Anomalous Run key modification"},
		"CredentialAccess":   {"Suspicious access to LSASS service", "Possible credential dumping with a known tool"},
		"Discovery":          {"Anomalous account lookups", "Domain trust discovery"},
		"LateralMovement":    {"Suspicious remote service installation", "Possible lateral movement over SMB"},
		"CommandAndControl":  {"Connection to a known command and control server", "Suspicious DNS tunnelling"},
		"InitialAccess":      {"Malicious attachment opened", "Exploitation of a public-facing application"},
		"Exfiltration":       {"Large upload to a personal cloud storage service", "Data staged for exfiltration"},
		"UnwantedSoftware":   {"'%s' unwanted software was detected", "Potentially unwanted application installed"},
		"Ransomware":         {"Ransomware behaviour detected in the file system", "'%s' ransomware was detected"},
		"Exploit":            {"Exploit attempt against a browser process", "Possible exploitation of a kernel driver"},
	}
	detectionSources = []string{"WindowsDefenderAv", "WindowsDefenderAtp", "AutomatedInvestigation", "CustomDetection", "SmartScreen"}
	amAlerts         = []weightedValue[[2]string]{ // alertname, category label
		{20, [2]string{"EDRSensorUnhealthy", ""}}, {15, [2]string{"SuspiciousOutboundConnection", "CommandAndControl"}},
		{10, [2]string{"AuditLogCleared", "DefenseEvasion"}}, {15, [2]string{"FalcoCriticalRule", "Execution"}},
		{8, [2]string{"YaraMatch", "Malware"}}, {12, [2]string{"HighFailedLogins", "CredentialAccess"}},
		{10, [2]string{"UnexpectedListeningPort", ""}}, {10, [2]string{"DiskEncryptionDisabled", ""}},
	}
	amSeverity = map[string]string{
		alert.SeverityInformational: "info", alert.SeverityLow: "low", alert.SeverityMedium: "warning",
		alert.SeverityHigh: "error", alert.SeverityCritical: "critical",
	}
)

const seedTenant = "3f6f2a7e-5d3c-4c1b-9a8e-2b7d4e6f8a10"

// alertFor makes the normalised alert of arrival arr on machine m, as
// intake would have stored it (JSON of alert.Alert).
func (g *seedGen) alertFor(id int64, arr arrival, m *fleetMachine) alert.Alert {
	src := weighted(g.rng, sourceTable)
	sev := weighted(g.rng, severityTable)
	cat := weighted(g.rng, categoryTable)
	if arr.burst {
		src, sev, cat = alert.SourceDefender, alert.SeverityHigh, "Malware"
	}
	if src == alert.SourceAlertmanager || src == alert.SourceGrafana {
		return g.metricAlert(id, arr, m, src, sev)
	}
	family := families[g.rng.IntN(len(families))]
	title := titles[cat][g.rng.IntN(len(titles[cat]))]
	if strings.Contains(title, "%s") {
		title = fmt.Sprintf(title, family)
	}
	det := detectionSources[g.rng.IntN(len(detectionSources))]
	switch r := g.rng.Float64(); {
	case r < 0.001:
		title = fmt.Sprintf("Activity linked to campaign-%d was observed", campaignRules[g.rng.IntN(len(campaignRules))])
	case r < 0.0015:
		det = fmt.Sprintf("Source%d", sourceRules[g.rng.IntN(len(sourceRules))])
	}
	created := time.UnixMilli(arr.at - 30_000 - g.rng.Int64N(600_000)).UTC()
	a := alert.Alert{
		ID:              fmt.Sprintf("da63%016d_%d", 7_000_000_000_000_000+id*7919, 1_000_000_000+g.rng.Int64N(1_000_000_000)),
		Source:          src,
		Title:           title,
		Severity:        sev,
		Status:          alert.StatusNew,
		Category:        cat,
		DetectionSource: det,
		ServiceSource:   "MicrosoftDefenderForEndpoint",
		MitreTechniques: techniques[cat],
		IncidentID:      fmt.Sprintf("%d", 40_000+id/7),
		TenantID:        seedTenant,
		CreatedAt:       created,
		MachineID:       m.attrs.ID,
		MachineName:     m.attrs.Name,
	}
	if cat == "Malware" || cat == "Ransomware" || cat == "UnwantedSoftware" {
		a.ThreatFamily = family
	}
	if g.rng.IntN(5) == 0 {
		a.Status = alert.StatusInProgress
	}
	if src == alert.SourceGraph {
		a.ServiceSource = "microsoftDefenderForEndpoint"
	}
	a.Description = g.description(a.Title, m.attrs.Name, family)
	return a
}

// description is the long text of a Defender alert, which makes most of a
// stored payload's size (1.2 to 1.4 KB in all).
func (g *seedGen) description(title, machine, family string) string {
	hash := fmt.Sprintf("%016x%016x%016x%016x", g.rng.Uint64(), g.rng.Uint64(), g.rng.Uint64(), g.rng.Uint64())
	user := fmt.Sprintf("CONTOSO\\user%04d", g.rng.IntN(10000))
	return fmt.Sprintf("%s on %s. A process associated with %s activity was observed running under the account %s. "+
		"The file C:\\Users\\user\\AppData\\Local\\Temp\\%s.exe (SHA256 %s) was written to disk by a process spawned from an "+
		"Office application and then executed with an encoded command line, as commodity malware operators do to "+
		"persist, collect credentials and move laterally. Recommended actions: review the process tree and the timeline "+
		"of the device, collect an investigation package, and reset the credentials of its recent users. "+
		"Raised after correlating %d related events.",
		title, machine, family, user, hash[:12], hash, 3+g.rng.IntN(40))
}

// metricAlert is an Alertmanager or Grafana alert: a fingerprint id with
// its occurrence, labels naming the machine, annotations.
func (g *seedGen) metricAlert(id int64, arr arrival, m *fleetMachine, src alert.Source, sev string) alert.Alert {
	which := weighted(g.rng, amAlerts)
	starts := time.UnixMilli(arr.at - 60_000 - g.rng.Int64N(900_000)).UTC()
	host := strings.SplitN(m.attrs.Name, ".", 2)[0]
	labels := map[string]string{
		"alertname": which[0], "severity": amSeverity[sev], "instance": host + ":9100", "job": "node",
		"team": "secops", "env": "prod", "machine_id": m.attrs.ID,
	}
	if which[1] != "" {
		labels["category"] = which[1]
	}
	if src == alert.SourceGrafana {
		labels["grafana_folder"] = "Security"
		labels["__alert_rule_uid__"] = fmt.Sprintf("ae%012x", g.rng.Int64N(1<<40))
	}
	summary := fmt.Sprintf("%s on %s", which[0], host)
	desc := g.description(summary, m.attrs.Name, "unknown")
	annotations := map[string]string{
		"summary": summary, "description": desc[:min(len(desc), 320)],
		"runbook_url":   "https://runbooks.corp.contoso.com/security/" + strings.ToLower(which[0]),
		"dashboard_url": "https://grafana.corp.contoso.com/d/sec-overview?var-host=" + host,
	}
	return alert.Alert{
		ID:          fmt.Sprintf("%016x", uint64(id)*0x9e3779b97f4a7c15),
		Source:      src,
		Title:       summary,
		Description: annotations["description"],
		Severity:    sev,
		Status:      alert.StatusFiring,
		Category:    labels["category"],
		CreatedAt:   starts,
		Labels:      labels,
		Annotations: annotations,
		MachineID:   m.attrs.ID,
		Occurrence:  starts.Format(time.RFC3339Nano),
	}
}
