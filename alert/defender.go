package alert

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
)

// DecodeDefender decodes an MDE API v1 alert or a Graph alerts_v2 alert: a
// single object, an array of them, or an OData envelope {"value":[...]}.
// Each object is told apart on its own, so a body may mix both schemas.
//
// A v1 alert names its machine with machineId and computerDnsName. A Graph
// alert becomes one Alert per distinct device evidence (mdeDeviceId,
// deviceDnsName), with the id providerAlertId (the MDE id) when present,
// else id, and GraphID its Graph id; a Graph alert with no device evidence
// names no machine.
//
// A body that is not JSON, not one of those shapes or has a value of the
// wrong type is a *DecodeError, and so is an object the decoder reads (an
// alert, the envelope, an evidence item) that names a member twice. An alert
// without an id or with a malformed machine id is listed in Batch.Invalid,
// with its source and, when valid, its id, and the rest of the body is kept.
func DecodeDefender(body []byte) (Batch, error) {
	raw, err := parseBody(body)
	if err != nil {
		return Batch{}, err
	}
	var b builder
	switch kindOf(raw) {
	case "array":
		err = eachElement(raw, "", maxAlerts, func(i int, elem json.RawMessage) error {
			return b.defenderElement(elem, joinIndex("", i))
		})
	case "object":
		var top object
		if top, err = decodeObject(raw, ""); err != nil {
			break
		}
		if value, ok := top.get("value"); ok {
			err = eachElement(value, "value", maxAlerts, func(i int, elem json.RawMessage) error {
				return b.defenderElement(elem, joinIndex("value", i))
			})
			break
		}
		if !looksLikeDefenderAlert(top) {
			err = &DecodeError{Path: "body", Msg: notDefenderShape}
			break
		}
		err = b.defender(top)
	default:
		err = &DecodeError{Path: "body", Msg: notDefenderShape + ", got " + kindOf(raw)}
	}
	if err != nil {
		return Batch{}, err
	}
	return b.batch, nil
}

// notDefenderShape is what DecodeDefender says of a body of another shape.
const notDefenderShape = `expected an alert object, an array of alerts or {"value": [...]}`

// defenderKeys are the members of which a Defender alert object has at least
// one; an object with none of them is some other document.
var defenderKeys = []string{
	"id", "providerAlertId", "machineId", "computerDnsName", "alertCreationTime",
	"createdDateTime", "incidentId", "@odata.type",
}

// looksLikeDefenderAlert reports whether o is an MDE v1 or a Graph alert.
func looksLikeDefenderAlert(o object) bool {
	return slices.ContainsFunc(defenderKeys, o.has)
}

// defenderElement decodes one element of an array of alerts.
func (b *builder) defenderElement(raw json.RawMessage, path string) error {
	o, err := decodeObject(raw, path)
	if err != nil {
		return err
	}
	if !looksLikeDefenderAlert(o) {
		return &DecodeError{Path: path, Msg: "expected an MDE or Graph alert object, found none of the members " + strings.Join(defenderKeys, ", ")}
	}
	return b.defender(o)
}

// defender decodes one MDE v1 or Graph alert object.
func (b *builder) defender(o object) error {
	graph, err := isGraphAlert(o)
	if err != nil {
		return err
	}
	if graph {
		return b.graph(o)
	}
	return b.defenderV1(o)
}

// isGraphAlert tells a Graph alerts_v2 object from an MDE v1 one. An object
// of neither is taken as v1, which names its machine at the top level.
func isGraphAlert(o object) (bool, error) {
	typ, err := o.str("@odata.type")
	if err != nil {
		return false, err
	}
	if strings.Contains(strings.ToLower(typ), "microsoft.graph") {
		return true, nil
	}
	for _, k := range []string{"machineId", "computerDnsName", "alertCreationTime", "aadTenantId", "lastUpdateTime"} {
		if o.has(k) {
			return false, nil
		}
	}
	for _, k := range []string{"providerAlertId", "serviceSource", "createdDateTime", "tenantId", "lastUpdateDateTime", "alertWebUrl"} {
		if o.has(k) {
			return true, nil
		}
	}
	// v1 evidence is flat; Graph evidence is typed with @odata.type.
	ev, ok := o.get("evidence")
	return ok && bytes.Contains(ev, []byte(`"@odata.type"`)), nil
}

// defenderCommon holds what MDE v1 and Graph alerts share under the same
// or different names.
type defenderCommon struct {
	title, description, severity, status string
	category, detectionSource, threat    string
	mitre                                []string
	incident                             string
}

// decodeCommon reads the members both schemas name alike.
func decodeCommon(o object) (defenderCommon, error) {
	var c defenderCommon
	for _, f := range []struct {
		key string
		dst *string
	}{
		{"title", &c.title},
		{"description", &c.description},
		{"severity", &c.severity},
		{"status", &c.status},
		{"category", &c.category},
		{"detectionSource", &c.detectionSource},
		{"threatFamilyName", &c.threat},
	} {
		s, err := o.str(f.key)
		if err != nil {
			return c, err
		}
		*f.dst = s
	}
	var err error
	if c.mitre, err = o.strList("mitreTechniques"); err != nil {
		return c, err
	}
	if c.incident, err = o.integerText("incidentId"); err != nil {
		return c, err
	}
	return c, nil
}

// alert builds the normalised alert of the common members.
func (c defenderCommon) alert(id string, source Source) Alert {
	return Alert{
		ID:              id,
		Source:          source,
		Title:           c.title,
		Description:     c.description,
		Severity:        normalSeverity(c.severity),
		Status:          normalStatus(c.status, StatusNew, StatusInProgress, StatusResolved),
		Category:        c.category,
		DetectionSource: c.detectionSource,
		ThreatFamily:    c.threat,
		MitreTechniques: c.mitre,
		IncidentID:      c.incident,
	}
}

// defenderV1 decodes an MDE API v1 alert (/api/alerts schema).
func (b *builder) defenderV1(o object) error {
	id, err := o.str("id")
	if err != nil {
		return err
	}
	c, err := decodeCommon(o)
	if err != nil {
		return err
	}
	machineID, err := o.str("machineId")
	if err != nil {
		return err
	}
	machineName, err := o.str("computerDnsName")
	if err != nil {
		return err
	}
	tenant, err := o.str("aadTenantId")
	if err != nil {
		return err
	}
	created, err := o.timestamp("alertCreationTime")
	if err != nil {
		return err
	}

	id = strings.TrimSpace(id)
	if id == "" {
		return b.invalid(Problem{Path: o.at("id"), Reason: "missing alert id", Source: SourceDefender})
	}
	if o.lossy("id", id) {
		return b.invalid(Problem{Path: o.at("id"), Reason: "alert id is " + badUTF8, Source: SourceDefender})
	}
	if reason := checkAlertID(id); reason != "" {
		return b.invalid(Problem{Path: o.at("id"), Reason: reason, Source: SourceDefender})
	}
	for _, f := range []struct{ key, value, what string }{{"machineId", machineID, "machine id"}, {"computerDnsName", machineName, "machine name"}} {
		if o.lossy(f.key, f.value) {
			return b.invalid(Problem{Path: o.at(f.key), Reason: f.what + " is " + badUTF8, Source: SourceDefender, AlertID: id})
		}
	}
	a := c.alert(id, SourceDefender)
	a.TenantID = tenant
	a.CreatedAt = created
	a.MachineName = strings.TrimSpace(machineName)
	if machineID = strings.TrimSpace(machineID); machineID != "" {
		norm, reason := normalMachineID(machineID)
		if reason != "" {
			return b.invalid(Problem{Path: o.at("machineId"), Reason: reason, Source: SourceDefender, AlertID: id})
		}
		a.MachineID = norm
	}
	return b.add(a, o.path)
}

// device is a machine named by the evidence of a Graph alert.
type device struct {
	id, name string
}

// graph decodes a Graph security alerts_v2 alert.
func (b *builder) graph(o object) error {
	id, err := o.str("id")
	if err != nil {
		return err
	}
	providerID, err := o.str("providerAlertId")
	if err != nil {
		return err
	}
	c, err := decodeCommon(o)
	if err != nil {
		return err
	}
	serviceSource, err := o.str("serviceSource")
	if err != nil {
		return err
	}
	tenant, err := o.str("tenantId")
	if err != nil {
		return err
	}
	created, err := o.timestamp("createdDateTime")
	if err != nil {
		return err
	}
	devices, problems, err := graphDevices(o)
	if err != nil {
		return err
	}

	id, idKey := strings.TrimSpace(id), "id"
	graphID := id
	if p := strings.TrimSpace(providerID); p != "" {
		id, idKey = p, "providerAlertId"
	}
	idPath := o.at(idKey)
	if id == "" {
		return b.invalid(Problem{Path: o.at("id"), Reason: "missing alert id", Source: SourceGraph})
	}
	if o.lossy(idKey, id) {
		return b.invalid(Problem{Path: idPath, Reason: "alert id is " + badUTF8, Source: SourceGraph})
	}
	if reason := checkAlertID(id); reason != "" {
		return b.invalid(Problem{Path: idPath, Reason: reason, Source: SourceGraph})
	}
	for _, p := range problems {
		p.Source, p.AlertID = SourceGraph, id
		if err := b.invalid(p); err != nil {
			return err
		}
	}
	base := c.alert(id, SourceGraph)
	base.GraphID = soundGraphID(o, graphID)
	base.ServiceSource = serviceSource
	base.TenantID = tenant
	base.CreatedAt = created
	if len(devices) == 0 {
		if len(problems) > 0 {
			return nil // every device it names was invalid
		}
		return b.add(base, o.path)
	}
	for _, d := range devices {
		a := base
		a.MitreTechniques = slices.Clone(base.MitreTechniques)
		a.MachineID, a.MachineName = d.id, d.name
		if err := b.add(a, o.path); err != nil {
			return err
		}
	}
	return nil
}

// soundGraphID returns the Graph id of a Graph alert when it is fit to keep
// (the checks of an alert id), else "". When providerAlertId is the alert's
// ID, a bad Graph id does not refuse an alert that is fine for collection;
// it only leaves nothing to comment on Graph.
func soundGraphID(o object, id string) string {
	if id == "" || o.lossy("id", id) || checkAlertID(id) != "" {
		return ""
	}
	return id
}

// graphDevices returns the distinct devices of the deviceEvidence items of
// a Graph alert, in order of appearance, and a problem for each malformed
// mdeDeviceId. A device named twice is returned once, with both its id and
// name when the two mentions have one each. Other evidence types (files,
// processes) may carry an mdeDeviceId too: the device they ran on, which
// has its own deviceEvidence; they are not read.
func graphDevices(o object) ([]device, []Problem, error) {
	raw, ok := o.get("evidence")
	if !ok {
		return nil, nil, nil
	}
	var (
		devices  []device
		problems []Problem
	)
	var seen deviceIndex
	err := eachElement(raw, o.at("evidence"), noLimit, func(i int, elem json.RawMessage) error {
		ev, err := decodeObject(elem, joinIndex(o.at("evidence"), i))
		if err != nil {
			return err
		}
		typ, err := ev.str("@odata.type")
		if err != nil {
			return err
		}
		if !strings.EqualFold(strings.TrimPrefix(typ, "#"), "microsoft.graph.security.deviceEvidence") {
			return nil
		}
		id, err := ev.str("mdeDeviceId")
		if err != nil {
			return err
		}
		name, err := ev.str("deviceDnsName")
		if err != nil {
			return err
		}
		for _, f := range []struct{ key, value, what string }{{"mdeDeviceId", id, "machine id"}, {"deviceDnsName", name, "machine name"}} {
			if ev.lossy(f.key, f.value) {
				problems = append(problems, Problem{Path: ev.at(f.key), Reason: f.what + " is " + badUTF8})
				return nil
			}
		}
		d := device{name: strings.TrimSpace(name)}
		if id = strings.TrimSpace(id); id != "" {
			norm, reason := normalMachineID(id)
			if reason != "" {
				problems = append(problems, Problem{Path: ev.at("mdeDeviceId"), Reason: reason})
				return nil
			}
			d.id = norm
		}
		if d.id == "" && d.name == "" {
			return nil
		}
		devices = seen.merge(devices, d)
		return nil
	})
	return devices, problems, err
}

// deviceIndex finds the devices already named by a Graph alert, so that
// merging stays linear in the number of evidence items.
type deviceIndex struct {
	byID     map[string]int // device id to index in devices
	nameOnly map[string]int // lower-cased name of a device without id to index
	names    map[string]bool
}

// merge adds d to devices unless it is already there: the same id, or the
// same name (case-insensitively) where one of the two has no id. A device
// named without id, then with id, gets the id.
func (x *deviceIndex) merge(devices []device, d device) []device {
	if x.byID == nil {
		x.byID, x.nameOnly, x.names = map[string]int{}, map[string]int{}, map[string]bool{}
	}
	name := strings.ToLower(d.name)
	if d.id == "" {
		if x.names[name] {
			return devices
		}
		x.names[name] = true
		x.nameOnly[name] = len(devices)
		return append(devices, d)
	}
	if i, ok := x.byID[d.id]; ok {
		if devices[i].name == "" && d.name != "" {
			devices[i].name = d.name
			x.names[name] = true
		}
		return devices
	}
	if i, ok := x.nameOnly[name]; ok && d.name != "" {
		delete(x.nameOnly, name)
		devices[i].id = d.id
		x.byID[d.id] = i
		return devices
	}
	x.byID[d.id] = len(devices)
	if d.name != "" {
		x.names[name] = true
	}
	return append(devices, d)
}

// builder collects the Batch of one body and enforces maxAlerts.
type builder struct {
	batch Batch
}

// add appends an alert decoded from the object at path.
func (b *builder) add(a Alert, path string) error {
	if len(b.batch.Alerts)+len(b.batch.Invalid) >= maxAlerts {
		return &DecodeError{Path: where(path), Msg: tooManyAlerts}
	}
	b.batch.Alerts = append(b.batch.Alerts, a)
	return nil
}

// invalid records an alert dropped for the reason p gives.
func (b *builder) invalid(p Problem) error {
	p.Path = where(p.Path)
	if len(b.batch.Alerts)+len(b.batch.Invalid) >= maxAlerts {
		return &DecodeError{Path: p.Path, Msg: tooManyAlerts}
	}
	b.batch.Invalid = append(b.batch.Invalid, p)
	return nil
}
