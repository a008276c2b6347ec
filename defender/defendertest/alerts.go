package defendertest

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"mime"
	"net/http"
	"slices"
	"sort"
	"strings"
	"time"
)

// Alert is an alert in the simulated alert store: the same alert as MDE's API v1 shows it
// (GET /api/alerts/{id}, reference section 6.1) and as Graph's alerts_v2 does under GraphID.
// Empty fields get defaults when the alert is added: a random da… id, GraphID the ID, Severity
// "Medium", Status "New", CreationTime the simulator clock, and the machine's DNS name when
// MachineID names a known machine.
type Alert struct {
	// ID is the MDE alert id, e.g. "da637472900382838869_1364969609".
	ID string
	// GraphID is the id of the alert in Graph's alerts_v2 (its comment endpoint takes it);
	// default ID, as Graph's examples show for MDE alerts.
	GraphID string
	// MachineID and ComputerDNSName name the machine of the alert.
	MachineID, ComputerDNSName string
	// Title and Description describe it.
	Title, Description string
	// Severity is "UnSpecified", "Informational", "Low", "Medium" or "High".
	Severity string
	// Status is "New", "InProgress" or "Resolved"; PATCH may change it.
	Status string
	// Category is e.g. "Ransomware"; DetectionSource e.g. "WindowsDefenderAtp".
	Category, DetectionSource string
	// ThreatFamilyName is the malware family, if any.
	ThreatFamilyName string
	// IncidentID is the incident the alert belongs to; 0 answers null.
	IncidentID int64
	// AssignedTo, Classification and Determination are set by analysts (PATCH).
	AssignedTo, Classification, Determination string
	// CreationTime is alertCreationTime; LastUpdateTime changes with each PATCH or comment.
	CreationTime, LastUpdateTime time.Time
	// Comments are the comments on the alert, oldest first, from either API.
	Comments []Comment
}

// Comment is one comment on an alert, with MDE's names (reference section 6.1). Graph shows
// CreatedBy as createdByDisplayName.
type Comment struct {
	Comment     string
	CreatedBy   string // the application (client) id of the token that added it
	CreatedTime time.Time
}

// The values PATCH /api/alerts/{id} accepts (update-alert page).
var (
	alertStatuses        = []string{"New", "InProgress", "Resolved"}
	alertClassifications = []string{"TruePositive", "InformationalExpectedActivity", "FalsePositive"}
)

// alertUpdateKeys are the keys of a PATCH /api/alerts/{id} body, case-sensitive as the
// update-alert page's example names them.
var alertUpdateKeys = []string{"status", "assignedTo", "classification", "determination", "comment"}

// AddAlert adds a to the alert store, or replaces the alert with the same ID (its comments
// included).
func (s *Simulator) AddAlert(a Alert) {
	if a.ID == "" {
		a.ID = fmt.Sprintf("da%018d_%d", rand.Int64N(1e18), rand.Int32())
	}
	if a.GraphID == "" {
		a.GraphID = a.ID
	}
	if a.Severity == "" {
		a.Severity = "Medium"
	}
	if a.Status == "" {
		a.Status = "New"
	}
	if a.CreationTime.IsZero() {
		a.CreationTime = s.now().UTC()
	}
	if a.LastUpdateTime.IsZero() {
		a.LastUpdateTime = a.CreationTime
	}
	a.Comments = slices.Clone(a.Comments)
	s.mu.Lock()
	defer s.mu.Unlock()
	if m := s.machineByIDLocked(a.MachineID); m != nil && a.ComputerDNSName == "" {
		a.ComputerDNSName = m.ComputerDNSName
	}
	for i, old := range s.alerts {
		if old.ID == a.ID {
			s.alerts[i] = &a
			return
		}
	}
	s.alerts = append(s.alerts, &a)
}

// Alert returns the alert with the MDE id id, its comments included, and whether there is one.
func (s *Simulator) Alert(id string) (Alert, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.alertLocked(func(a *Alert) bool { return a.ID == id })
	if a == nil {
		return Alert{}, false
	}
	out := *a
	out.Comments = slices.Clone(a.Comments)
	return out, true
}

// alertLocked returns the first stored alert that match accepts, or nil.
func (s *Simulator) alertLocked(match func(*Alert) bool) *Alert {
	for _, a := range s.alerts {
		if match(a) {
			return a
		}
	}
	return nil
}

// alertJSON is the MDE Alert entity as GET and PATCH /api/alerts/{id} answer it.
type alertJSON struct {
	ID                 string        `json:"id"`
	IncidentID         *int64        `json:"incidentId"`
	InvestigationID    *int64        `json:"investigationId"`
	AssignedTo         *string       `json:"assignedTo"`
	Severity           string        `json:"severity"`
	Status             string        `json:"status"`
	Classification     *string       `json:"classification"`
	Determination      *string       `json:"determination"`
	InvestigationState string        `json:"investigationState"`
	DetectionSource    string        `json:"detectionSource"`
	DetectorID         *string       `json:"detectorId"`
	Category           string        `json:"category"`
	ThreatFamilyName   *string       `json:"threatFamilyName"`
	Title              string        `json:"title"`
	Description        string        `json:"description"`
	AlertCreationTime  string        `json:"alertCreationTime"`
	FirstEventTime     string        `json:"firstEventTime"`
	LastEventTime      string        `json:"lastEventTime"`
	LastUpdateTime     string        `json:"lastUpdateTime"`
	ResolvedTime       *string       `json:"resolvedTime"`
	MachineID          string        `json:"machineId"`
	ComputerDNSName    string        `json:"computerDnsName"`
	RBACGroupName      *string       `json:"rbacGroupName"`
	AADTenantID        string        `json:"aadTenantId"`
	ThreatName         *string       `json:"threatName"`
	MitreTechniques    []string      `json:"mitreTechniques"`
	RelatedUser        *struct{}     `json:"relatedUser"`
	LoggedOnUsers      []any         `json:"loggedOnUsers"`
	Comments           []commentJSON `json:"comments"`
	Evidence           []any         `json:"evidence"`
}

// commentJSON is a comment as MDE's Alert entity shows it.
type commentJSON struct {
	Comment     string `json:"comment"`
	CreatedBy   string `json:"createdBy"`
	CreatedTime string `json:"createdTime"`
}

func (s *Simulator) alertToJSON(a *Alert) alertJSON {
	j := alertJSON{
		ID: a.ID, AssignedTo: nullable(a.AssignedTo), Severity: a.Severity, Status: a.Status,
		Classification: nullable(a.Classification), Determination: nullable(a.Determination),
		InvestigationState: "Unknown", DetectionSource: a.DetectionSource, Category: a.Category,
		ThreatFamilyName: nullable(a.ThreatFamilyName), Title: a.Title, Description: a.Description,
		AlertCreationTime: formatTime(a.CreationTime), FirstEventTime: formatTime(a.CreationTime),
		LastEventTime: formatTime(a.CreationTime), LastUpdateTime: formatTime(a.LastUpdateTime),
		MachineID: a.MachineID, ComputerDNSName: a.ComputerDNSName, AADTenantID: s.opts.TenantID,
		MitreTechniques: []string{}, LoggedOnUsers: []any{}, Comments: []commentJSON{}, Evidence: []any{},
	}
	if a.IncidentID != 0 {
		id := a.IncidentID
		j.IncidentID = &id
	}
	if a.Status == "Resolved" {
		j.ResolvedTime = nullable(formatTime(a.LastUpdateTime))
	}
	for _, c := range a.Comments {
		j.Comments = append(j.Comments, commentJSON{c.Comment, c.CreatedBy, formatTime(c.CreatedTime)})
	}
	return j
}

// getAlert answers GET /api/alerts/{id}.
func (s *Simulator) getAlert(w http.ResponseWriter, r *http.Request, id string) *apiError {
	s.mu.Lock()
	a := s.alertLocked(func(a *Alert) bool { return a.ID == id })
	var j alertJSON
	if a != nil {
		j = s.alertToJSON(a)
	}
	s.mu.Unlock()
	if a == nil {
		return alertNotFound(id)
	}
	writeEntity(w, r, http.StatusOK, "Alerts/$entity", j)
	return nil
}

func alertNotFound(id string) *apiError {
	return &apiError{http.StatusNotFound, "ResourceNotFound", fmt.Sprintf("Alert %s was not found", id)}
}

// alertUpdate is a checked PATCH /api/alerts/{id} body: the keys it sets.
type alertUpdate map[string]string

// updateAlert answers PATCH /api/alerts/{id} (update-alert page): it sets the properties the
// body names and appends its comment, then answers 200 with the alert.
func (s *Simulator) updateAlert(w http.ResponseWriter, r *http.Request, body []byte, tok *accessToken, now time.Time, id string) *apiError {
	upd, aerr := parseAlertUpdate(r, body)
	if aerr != nil {
		return aerr
	}
	s.mu.Lock()
	a := s.alertLocked(func(a *Alert) bool { return a.ID == id })
	if a == nil {
		s.mu.Unlock()
		return alertNotFound(id)
	}
	for k, v := range upd {
		switch k {
		case "status":
			a.Status = v
		case "assignedTo":
			a.AssignedTo = v
		case "classification":
			a.Classification = v
		case "determination":
			a.Determination = v
		case "comment":
			a.Comments = append(a.Comments, Comment{Comment: v, CreatedBy: tok.appID, CreatedTime: now.UTC()})
		}
	}
	a.LastUpdateTime = now.UTC()
	j := s.alertToJSON(a)
	s.mu.Unlock()
	writeEntity(w, r, http.StatusOK, "Alerts/$entity", j)
	return nil
}

// parseAlertUpdate checks a PATCH /api/alerts/{id} body: JSON, only the documented keys with
// their documented case (a "Comment" key is refused, as the action endpoints refuse
// "comment"), string values, known status and classification values, and at least one key.
func parseAlertUpdate(r *http.Request, body []byte) (alertUpdate, *apiError) {
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if mt != "application/json" {
		return nil, &apiError{http.StatusBadRequest, "InvalidRequestBody", "The request body must be JSON sent with Content-Type: application/json."}
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil || fields == nil {
		return nil, &apiError{http.StatusBadRequest, "InvalidRequestBody", "The request body is not a valid JSON object."}
	}
	keys := make([]string, 0, len(fields))
	for k := range fields {
		keys = append(keys, k)
	}
	sort.Strings(keys) // the same body, the same answer
	upd := alertUpdate{}
	for _, k := range keys {
		if !slices.Contains(alertUpdateKeys, k) {
			msg := fmt.Sprintf("Unknown parameter '%s'. Allowed parameters: %s.", k, strings.Join(alertUpdateKeys, ", "))
			for _, known := range alertUpdateKeys {
				if strings.EqualFold(k, known) {
					msg = fmt.Sprintf("Unknown parameter '%s'. Body parameters are case-sensitive: did you mean '%s'?", k, known)
				}
			}
			return nil, &apiError{http.StatusBadRequest, "InvalidRequestBody", msg}
		}
		var v string
		if err := json.Unmarshal(fields[k], &v); err != nil || (v == "" && k != "assignedTo") {
			return nil, &apiError{http.StatusBadRequest, "InvalidRequestBody", fmt.Sprintf("Parameter '%s' must be a non-empty string.", k)}
		}
		if allowed := alertValues(k); allowed != nil && !slices.Contains(allowed, v) {
			return nil, &apiError{http.StatusBadRequest, "InvalidRequestBody",
				fmt.Sprintf("Invalid value '%s' for '%s'. Allowed values: %s.", v, k, strings.Join(allowed, ", "))}
		}
		upd[k] = v
	}
	if len(upd) == 0 {
		return nil, &apiError{http.StatusBadRequest, "MissingRequiredParameter",
			"The request body sets none of the parameters: " + strings.Join(alertUpdateKeys, ", ") + "."}
	}
	return upd, nil
}

// alertValues returns the values a PATCH key accepts, nil for any string.
func alertValues(key string) []string {
	switch key {
	case "status":
		return alertStatuses
	case "classification":
		return alertClassifications
	}
	return nil
}
