package defendertest

import (
	"encoding/json"
	"time"
)

// MachineAction is the MDE MachineAction entity (reference section 1.2) with its status
// derived from the simulator clock. It marshals exactly as MDE answers: every key present,
// nullable ones as null, timestamps in UTC with seven fractional digits and Z.
type MachineAction struct {
	ID                      string           `json:"id"`
	Type                    string           `json:"type"`
	Title                   *string          `json:"title"`
	Requestor               string           `json:"requestor"`
	RequestorComment        string           `json:"requestorComment"`
	Status                  string           `json:"status"`
	MachineID               string           `json:"machineId"`
	ComputerDNSName         string           `json:"computerDnsName"`
	CreationDateTimeUtc     time.Time        `json:"creationDateTimeUtc"`
	LastUpdateDateTimeUtc   time.Time        `json:"lastUpdateDateTimeUtc"`
	CancellationRequestor   *string          `json:"cancellationRequestor"`
	CancellationComment     *string          `json:"cancellationComment"`
	CancellationDateTimeUtc *time.Time       `json:"cancellationDateTimeUtc"`
	ErrorHResult            int              `json:"errorHResult"`
	Scope                   *string          `json:"scope"`
	ExternalID              *string          `json:"externalId"`
	RequestSource           string           `json:"requestSource"`
	RelatedFileInfo         *RelatedFileInfo `json:"relatedFileInfo"`
	Commands                []any            `json:"commands"`
	TroubleshootInfo        *string          `json:"troubleshootInfo"`
}

// RelatedFileInfo is the file an action is about (StopAndQuarantineFile); null otherwise.
type RelatedFileInfo struct {
	FileIdentifier     string `json:"fileIdentifier"`
	FileIdentifierType string `json:"fileIdentifierType"`
}

// actionWire is MachineAction on the wire.
type actionWire struct {
	ID                      string           `json:"id"`
	Type                    string           `json:"type"`
	Title                   *string          `json:"title"`
	Requestor               string           `json:"requestor"`
	RequestorComment        string           `json:"requestorComment"`
	Status                  string           `json:"status"`
	MachineID               string           `json:"machineId"`
	ComputerDNSName         string           `json:"computerDnsName"`
	CreationDateTimeUtc     wireTime         `json:"creationDateTimeUtc"`
	LastUpdateDateTimeUtc   wireTime         `json:"lastUpdateDateTimeUtc"`
	CancellationRequestor   *string          `json:"cancellationRequestor"`
	CancellationComment     *string          `json:"cancellationComment"`
	CancellationDateTimeUtc *wireTime        `json:"cancellationDateTimeUtc"`
	ErrorHResult            int              `json:"errorHResult"`
	Scope                   *string          `json:"scope"`
	ExternalID              *string          `json:"externalId"`
	RequestSource           string           `json:"requestSource"`
	RelatedFileInfo         *RelatedFileInfo `json:"relatedFileInfo"`
	Commands                []any            `json:"commands"`
	TroubleshootInfo        *string          `json:"troubleshootInfo"`
}

// legacyActionWire is actionWire with the lastUpdateTimeUtc key of the documentation's list
// examples. Go converts between struct types that differ only in tags, so the compiler keeps
// the two field lists identical.
type legacyActionWire struct {
	ID                      string           `json:"id"`
	Type                    string           `json:"type"`
	Title                   *string          `json:"title"`
	Requestor               string           `json:"requestor"`
	RequestorComment        string           `json:"requestorComment"`
	Status                  string           `json:"status"`
	MachineID               string           `json:"machineId"`
	ComputerDNSName         string           `json:"computerDnsName"`
	CreationDateTimeUtc     wireTime         `json:"creationDateTimeUtc"`
	LastUpdateDateTimeUtc   wireTime         `json:"lastUpdateTimeUtc"`
	CancellationRequestor   *string          `json:"cancellationRequestor"`
	CancellationComment     *string          `json:"cancellationComment"`
	CancellationDateTimeUtc *wireTime        `json:"cancellationDateTimeUtc"`
	ErrorHResult            int              `json:"errorHResult"`
	Scope                   *string          `json:"scope"`
	ExternalID              *string          `json:"externalId"`
	RequestSource           string           `json:"requestSource"`
	RelatedFileInfo         *RelatedFileInfo `json:"relatedFileInfo"`
	Commands                []any            `json:"commands"`
	TroubleshootInfo        *string          `json:"troubleshootInfo"`
}

// wireTime marshals as MDE's DateTimeOffset text.
type wireTime time.Time

func (t wireTime) MarshalJSON() ([]byte, error) {
	return json.Marshal(formatTime(time.Time(t)))
}

func (a MachineAction) wire() actionWire {
	w := actionWire{
		ID: a.ID, Type: a.Type, Title: a.Title, Requestor: a.Requestor, RequestorComment: a.RequestorComment,
		Status: a.Status, MachineID: a.MachineID, ComputerDNSName: a.ComputerDNSName,
		CreationDateTimeUtc: wireTime(a.CreationDateTimeUtc), LastUpdateDateTimeUtc: wireTime(a.LastUpdateDateTimeUtc),
		CancellationRequestor: a.CancellationRequestor, CancellationComment: a.CancellationComment,
		ErrorHResult: a.ErrorHResult, Scope: a.Scope, ExternalID: a.ExternalID, RequestSource: a.RequestSource,
		RelatedFileInfo: a.RelatedFileInfo, Commands: a.Commands, TroubleshootInfo: a.TroubleshootInfo,
	}
	if a.CancellationDateTimeUtc != nil {
		ct := wireTime(*a.CancellationDateTimeUtc)
		w.CancellationDateTimeUtc = &ct
	}
	if w.Commands == nil {
		w.Commands = []any{}
	}
	return w
}

// MarshalJSON encodes the action as MDE does.
func (a MachineAction) MarshalJSON() ([]byte, error) {
	return json.Marshal(a.wire())
}

// action is a stored machine action; its status is derived from the clock.
type action struct {
	base          MachineAction
	final         string
	pendingFor    time.Duration
	inProgressFor time.Duration
	cancelled     bool
}

// view returns the action as it is at now.
func (a *action) view(now time.Time) MachineAction {
	v := a.base
	v.Commands = []any{}
	created := v.CreationDateTimeUtc
	switch {
	case a.cancelled:
		v.Status = StatusCancelled
		v.LastUpdateDateTimeUtc = *v.CancellationDateTimeUtc
	case now.Before(created.Add(a.pendingFor)):
		v.Status = StatusPending
		v.LastUpdateDateTimeUtc = created
	case now.Before(created.Add(a.pendingFor + a.inProgressFor)):
		v.Status = StatusInProgress
		v.LastUpdateDateTimeUtc = created.Add(a.pendingFor)
	default:
		v.Status = a.final
		v.LastUpdateDateTimeUtc = created.Add(a.pendingFor + a.inProgressFor)
	}
	return v
}

// Actions returns every machine action in creation order, with its current status.
func (s *Simulator) Actions() []MachineAction {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]MachineAction, len(s.actions))
	for i, a := range s.actions {
		out[i] = a.view(now)
	}
	return out
}

// actionFields are the $filter properties of GET /api/machineactions (reference section 1.4).
var actionFields = map[string]fieldKind{
	"id":                  kindString,
	"status":              kindString,
	"machineId":           kindString,
	"type":                kindString,
	"requestor":           kindString,
	"creationDateTimeUtc": kindTime,
}

func (a MachineAction) filterValues() map[string]any {
	return map[string]any{
		"id":                  a.ID,
		"status":              a.Status,
		"machineId":           a.MachineID,
		"type":                a.Type,
		"requestor":           a.Requestor,
		"creationDateTimeUtc": a.CreationDateTimeUtc,
	}
}
