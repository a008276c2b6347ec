// Package alert holds the normalised alert model that rules, the pipeline and
// the audit trail share (SPEC section 5.1), the machine attributes rules may
// read (SPEC section 6.2), and the decoders that turn each supported webhook
// body into that model.
package alert

import (
	"context"
	"strings"
	"time"
)

// Source names where an alert came from. It is a closed set and a metric label.
type Source string

// The sources of SPEC section 5.1.
const (
	SourceDefender     Source = "defender"
	SourceGraph        Source = "graph"
	SourceAlertmanager Source = "alertmanager"
	SourceGrafana      Source = "grafana"
)

// Sources lists every source, for metric label initialisation.
var Sources = []Source{SourceDefender, SourceGraph, SourceAlertmanager, SourceGrafana}

// Severity values, lower case (SPEC 5.1).
const (
	SeverityInformational = "informational"
	SeverityLow           = "low"
	SeverityMedium        = "medium"
	SeverityHigh          = "high"
	SeverityCritical      = "critical"
	SeverityUnknown       = "unknown"
)

// Status values. Alertmanager and Grafana alerts are firing or resolved; MDE
// and Graph alerts are new, inprogress or resolved.
const (
	StatusFiring     = "firing"
	StatusResolved   = "resolved"
	StatusNew        = "new"
	StatusInProgress = "inprogress"
)

// Alert is one alert about at most one machine, normalised from any source.
// An incoming alert that names several machines (a Graph alert with several
// device evidences) becomes several Alerts with the same ID.
//
// The expr tags are the names rule conditions use (`alert.severity`); the
// json tags are the names of the audit trail and the eval output.
type Alert struct {
	ID              string            `json:"id" expr:"id"`
	Source          Source            `json:"source" expr:"source"`
	Title           string            `json:"title,omitempty" expr:"title"`
	Description     string            `json:"description,omitempty" expr:"description"`
	Severity        string            `json:"severity" expr:"severity"`
	Status          string            `json:"status" expr:"status"`
	Category        string            `json:"category,omitempty" expr:"category"`
	DetectionSource string            `json:"detection_source,omitempty" expr:"detection_source"`
	ServiceSource   string            `json:"service_source,omitempty" expr:"service_source"`
	ThreatFamily    string            `json:"threat_family,omitempty" expr:"threat_family"`
	MitreTechniques []string          `json:"mitre_techniques,omitempty" expr:"mitre_techniques"`
	IncidentID      string            `json:"incident_id,omitempty" expr:"incident_id"`
	TenantID        string            `json:"tenant_id,omitempty" expr:"tenant_id"`
	CreatedAt       time.Time         `json:"created_at" expr:"created_at"`
	Labels          map[string]string `json:"labels,omitempty" expr:"labels"`
	Annotations     map[string]string `json:"annotations,omitempty" expr:"annotations"`
	MachineID       string            `json:"machine_id,omitempty" expr:"machine_id"`
	MachineName     string            `json:"machine_name,omitempty" expr:"machine_name"`

	// Occurrence distinguishes two firings of an Alertmanager or Grafana
	// alert whose id is only its label fingerprint (the same labels firing
	// again days later is a new incident). It is the startsAt time in
	// RFC 3339, and empty for sources whose alert ids are unique.
	Occurrence string `json:"occurrence,omitempty" expr:"-"`

	// GraphID is the Graph alerts_v2 id of a Graph alert: the id Graph's
	// comment endpoint takes, which ID (providerAlertId when present) may
	// not be. Empty for other sources, and for a Graph alert whose id is
	// unfit to keep (see DecodeDefender); rules do not see it.
	GraphID string `json:"graph_id,omitempty" expr:"-"`
}

// DedupKey identifies an alert about a machine across deliveries: the same
// source, alert id (and occurrence) and machine is the same alert (SPEC 6.3).
// Alerts that only name a machine by host name use that name until it is
// resolved to an id.
func (a *Alert) DedupKey() string {
	machine := a.MachineID
	if machine == "" {
		machine = "name:" + strings.ToLower(a.MachineName)
	}
	key := string(a.Source) + "|" + a.ID + "|" + machine
	if a.Occurrence != "" {
		key += "|" + a.Occurrence
	}
	return key
}

// Machine holds the MDE machine attributes that rules may read (SPEC 6.2).
type Machine struct {
	ID               string    `json:"id" expr:"id"`
	Name             string    `json:"name,omitempty" expr:"name"`
	OSPlatform       string    `json:"os_platform,omitempty" expr:"os_platform"`
	HealthStatus     string    `json:"health_status,omitempty" expr:"health_status"`
	RiskScore        string    `json:"risk_score,omitempty" expr:"risk_score"`
	ExposureLevel    string    `json:"exposure_level,omitempty" expr:"exposure_level"`
	DeviceValue      string    `json:"device_value,omitempty" expr:"device_value"`
	Tags             []string  `json:"tags,omitempty" expr:"tags"`
	Group            string    `json:"group,omitempty" expr:"group"`
	OnboardingStatus string    `json:"onboarding_status,omitempty" expr:"onboarding_status"`
	LastSeen         time.Time `json:"last_seen" expr:"last_seen"`
}

// ValidMachineID reports whether id is an MDE machine id: exactly 40
// hexadecimal characters. Anything else must never be put into a URL.
func ValidMachineID(id string) bool {
	if len(id) != 40 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

// Receipt says what became of a batch handed to a Sink.
type Receipt struct {
	// Duplicate[i] reports whether alerts[i] was already known (same
	// DedupKey); every other alert was durably stored and will be decided.
	Duplicate []bool
}

// Counts returns how many alerts were accepted and how many were duplicates.
func (r Receipt) Counts() (accepted, duplicates int) {
	for _, d := range r.Duplicate {
		if d {
			duplicates++
		} else {
			accepted++
		}
	}
	return accepted, duplicates
}

// Sink takes decoded alerts for processing. Submit returns only once the
// alerts are durably stored (or known as duplicates): the webhook answers 2xx
// on that promise. An error means nothing may be assumed stored and the
// sender must retry.
type Sink interface {
	Submit(ctx context.Context, alerts []Alert) (Receipt, error)
}

// SinkFunc adapts a function to the Sink interface.
type SinkFunc func(ctx context.Context, alerts []Alert) (Receipt, error)

// Submit calls f.
func (f SinkFunc) Submit(ctx context.Context, alerts []Alert) (Receipt, error) {
	return f(ctx, alerts)
}

// IgnoreReason says why intake does not store a, or "" when it does: the
// alert names no machine, or it is resolved and no rule takes resolved
// alerts (acceptResolved). The webhook and the evaluate API share it, so
// that both say the same of the same alert.
func IgnoreReason(a *Alert, acceptResolved bool) string {
	switch {
	case a.MachineID == "" && a.MachineName == "":
		return "the alert names no machine"
	case a.Status == StatusResolved && !acceptResolved:
		return "resolved, and no rule sets on_resolved"
	}
	return ""
}
