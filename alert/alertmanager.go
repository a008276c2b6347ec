package alert

import (
	"encoding/json"
	"strings"
	"time"
)

// Label names the Alertmanager and Grafana decoder reads, in order of
// preference (SPEC 5.1).
var (
	machineIDLabels   = []string{"machine_id", "mde_device_id", "device_id"}
	machineNameLabels = []string{"computer_dns_name", "hostname", "host", "instance"}
)

// webhookVersions maps the version member of a webhook body to its source.
var webhookVersions = map[string]Source{
	"4": SourceAlertmanager,
	"1": SourceGrafana,
}

// wantVersion ends the messages about a bad or missing version.
const wantVersion = `expected "4" (Alertmanager) or "1" (Grafana)`

// DecodeAlertmanager decodes an Alertmanager webhook (version "4") or a
// Grafana webhook (version "1").
//
// Each alert's id is its alert_id label, else its fingerprint; an id taken
// from the fingerprint carries the startsAt time as its Occurrence. The
// machine is the first of the labels machine_id, mde_device_id and
// device_id, else the host (port dropped) of the first of
// computer_dns_name, hostname, host and instance; an alert with none of
// them names no machine. The severity label is mapped through one table of
// synonyms (see severities); the title is the summary annotation, else the
// alertname label.
//
// A body that is not JSON, not a webhook object of a supported version or
// has a value of the wrong type is a *DecodeError, and so is an object the
// decoder reads (the webhook, an alert, its labels or annotations) that
// names a member twice. An alert without an id or with a malformed machine
// id is listed in Batch.Invalid, with its source and, when valid, its id,
// and the rest of the body is kept.
func DecodeAlertmanager(body []byte) (Batch, error) {
	raw, err := parseBody(body)
	if err != nil {
		return Batch{}, err
	}
	if k := kindOf(raw); k != "object" {
		return Batch{}, &DecodeError{Path: "body", Msg: "expected an Alertmanager or Grafana webhook object, got " + k}
	}
	top, err := decodeObject(raw, "")
	if err != nil {
		return Batch{}, err
	}
	version, err := top.str("version")
	if err != nil {
		return Batch{}, err
	}
	if version == "" {
		return Batch{}, &DecodeError{Path: "version", Msg: "missing, " + wantVersion}
	}
	source, ok := webhookVersions[version]
	if !ok {
		return Batch{}, &DecodeError{Path: "version", Msg: "unsupported webhook version " + quoteCapped(version) + ", " + wantVersion}
	}
	alerts, ok := top.get("alerts")
	if !ok {
		return Batch{}, &DecodeError{Path: "alerts", Msg: "missing, expected an array of alerts"}
	}
	var b builder
	err = eachElement(alerts, "alerts", maxAlerts, func(i int, elem json.RawMessage) error {
		o, err := decodeObject(elem, joinIndex("alerts", i))
		if err != nil {
			return err
		}
		return b.webhookAlert(o, source)
	})
	if err != nil {
		return Batch{}, err
	}
	return b.batch, nil
}

// webhookAlert decodes one alert of an Alertmanager or Grafana webhook.
func (b *builder) webhookAlert(o object, source Source) error {
	labels, err := o.strMap("labels")
	if err != nil {
		return err
	}
	annotations, err := o.strMap("annotations")
	if err != nil {
		return err
	}
	status, err := o.str("status")
	if err != nil {
		return err
	}
	fingerprint, err := o.str("fingerprint")
	if err != nil {
		return err
	}
	startsAt, err := o.timestamp("startsAt")
	if err != nil {
		return err
	}

	id, idPath := strings.TrimSpace(labels["alert_id"]), joinKey(o.at("labels"), "alert_id")
	idLossy := o.lossyIn("labels", "alert_id", id)
	var occurrence string
	if id == "" {
		id, idPath = strings.TrimSpace(fingerprint), o.at("fingerprint")
		idLossy = o.lossy("fingerprint", id)
		if id != "" && !startsAt.IsZero() {
			occurrence = startsAt.Format(time.RFC3339Nano)
		}
	}
	if id == "" {
		return b.invalid(Problem{Path: o.path, Reason: "no alert_id label and no fingerprint", Source: source})
	}
	if idLossy {
		return b.invalid(Problem{Path: idPath, Reason: "alert id is " + badUTF8, Source: source})
	}
	if reason := checkAlertID(id); reason != "" {
		return b.invalid(Problem{Path: idPath, Reason: reason, Source: source})
	}

	title := annotations["summary"]
	if title == "" {
		title = labels["alertname"]
	}
	a := Alert{
		ID:          id,
		Source:      source,
		Title:       title,
		Description: annotations["description"],
		Severity:    normalSeverity(labels["severity"]),
		Status:      normalStatus(status, StatusFiring, StatusResolved),
		Category:    labels["category"],
		CreatedAt:   startsAt,
		Labels:      labels,
		Annotations: annotations,
		Occurrence:  occurrence,
	}
	for _, l := range machineIDLabels {
		if v := strings.TrimSpace(labels[l]); v != "" {
			if o.lossyIn("labels", l, v) {
				return b.invalid(Problem{Path: joinKey(o.at("labels"), l), Reason: "machine id is " + badUTF8, Source: source, AlertID: id})
			}
			norm, reason := normalMachineID(v)
			if reason != "" {
				return b.invalid(Problem{Path: joinKey(o.at("labels"), l), Reason: reason, Source: source, AlertID: id})
			}
			a.MachineID = norm
			break
		}
	}
	if a.MachineID == "" {
		for _, l := range machineNameLabels {
			if host := hostOf(labels[l]); host != "" {
				if o.lossyIn("labels", l, labels[l]) {
					return b.invalid(Problem{Path: joinKey(o.at("labels"), l), Reason: "machine name is " + badUTF8, Source: source, AlertID: id})
				}
				a.MachineName = host
				break
			}
		}
	}
	return b.add(a, o.path)
}
