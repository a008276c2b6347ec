package defender

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/responder-dev/responder/alert"
)

// Machine action statuses. Only Pending and InProgress are live.
const (
	StatusPending    = "Pending"
	StatusInProgress = "InProgress"
	StatusSucceeded  = "Succeeded"
	StatusFailed     = "Failed"
	StatusTimeOut    = "TimeOut"
	StatusCancelled  = "Cancelled" // two Ls
)

// TerminalStatuses are the final statuses of a machine action.
var TerminalStatuses = []string{StatusSucceeded, StatusFailed, StatusTimeOut, StatusCancelled}

// Machine action types (the type field; also the $filter value).
const (
	TypeCollectInvestigationPackage = "CollectInvestigationPackage"
	TypeIsolate                     = "Isolate"
	TypeUnisolate                   = "Unisolate"
	TypeRunAntiVirusScan            = "RunAntiVirusScan"
	TypeRestrictCodeExecution       = "RestrictCodeExecution"
	TypeUnrestrictCodeExecution     = "UnrestrictCodeExecution"
	TypeOffboard                    = "Offboard"
	TypeLiveResponse                = "LiveResponse"
	TypeStopAndQuarantineFile       = "StopAndQuarantineFile"
)

// Isolation types of Isolate.
const (
	IsolationFull            = "Full"
	IsolationSelective       = "Selective"
	IsolationUnManagedDevice = "UnManagedDevice"
)

// Scan types of RunAntivirusScan.
const (
	ScanQuick = "Quick"
	ScanFull  = "Full"
)

// MachineAction is an MDE machine action. Its JSON form uses MDE's names;
// decoding accepts both lastUpdateDateTimeUtc (entity page, real answers)
// and lastUpdateTimeUtc (list examples), and timestamps with 7 fractional
// digits, with or without a zone.
type MachineAction struct {
	ID                    string    `json:"id"`
	Type                  string    `json:"type"`
	Scope                 string    `json:"scope,omitempty"`
	Title                 string    `json:"title,omitempty"`
	Status                string    `json:"status"`
	MachineID             string    `json:"machineId"`
	ComputerDNSName       string    `json:"computerDnsName,omitempty"`
	Requestor             string    `json:"requestor,omitempty"`
	RequestorComment      string    `json:"requestorComment,omitempty"`
	RequestSource         string    `json:"requestSource,omitempty"`
	ExternalID            string    `json:"externalId,omitempty"`
	CancellationRequestor string    `json:"cancellationRequestor,omitempty"`
	CancellationComment   string    `json:"cancellationComment,omitempty"`
	ErrorHResult          int64     `json:"errorHResult,omitempty"`
	CreationTime          time.Time `json:"creationDateTimeUtc"`
	LastUpdateTime        time.Time `json:"lastUpdateDateTimeUtc"`
	CancellationTime      time.Time `json:"cancellationDateTimeUtc,omitzero"`
}

// UnmarshalJSON decodes an MDE MachineAction tolerantly.
func (a *MachineAction) UnmarshalJSON(b []byte) error {
	type plain MachineAction
	var w struct {
		plain
		CreationTime     mdeTime     `json:"creationDateTimeUtc"`
		LastUpdate       mdeTime     `json:"lastUpdateDateTimeUtc"`
		LastUpdateAlt    mdeTime     `json:"lastUpdateTimeUtc"`
		CancellationTime mdeTime     `json:"cancellationDateTimeUtc"`
		ErrorHResult     json.Number `json:"errorHResult"`
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	*a = MachineAction(w.plain)
	a.CreationTime = time.Time(w.CreationTime)
	a.LastUpdateTime = time.Time(w.LastUpdate)
	if a.LastUpdateTime.IsZero() {
		a.LastUpdateTime = time.Time(w.LastUpdateAlt)
	}
	a.CancellationTime = time.Time(w.CancellationTime)
	if w.ErrorHResult != "" {
		a.ErrorHResult, _ = w.ErrorHResult.Int64()
	}
	return nil
}

// Terminal reports whether the action reached a final status: Succeeded,
// Failed, TimeOut or Cancelled.
func (a MachineAction) Terminal() bool {
	return Terminal(a.Status)
}

// Terminal reports whether status is final.
func Terminal(status string) bool {
	switch status {
	case StatusSucceeded, StatusFailed, StatusTimeOut, StatusCancelled:
		return true
	}
	return false
}

// mdeTime decodes MDE timestamps: RFC 3339 with up to 9 fractional digits,
// or the same without a zone (read as UTC); null or "" is the zero time.
type mdeTime time.Time

var zonelessLayouts = []string{"2006-01-02T15:04:05.999999999", "2006-01-02 15:04:05.999999999"}

func (t *mdeTime) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("timestamp: %w", err)
	}
	s = strings.TrimSpace(s)
	if s == "" {
		return nil
	}
	if v, err := time.Parse(time.RFC3339Nano, s); err == nil {
		*t = mdeTime(v.UTC())
		return nil
	}
	for _, layout := range zonelessLayouts {
		if v, err := time.ParseInLocation(layout, s, time.UTC); err == nil {
			*t = mdeTime(v)
			return nil
		}
	}
	return fmt.Errorf("timestamp %q: not RFC 3339", s)
}

// validActionID accepts GUID-like ids: 1 to 64 hex digits and dashes.
func validActionID(id string) bool {
	if len(id) == 0 || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F' || c == '-') {
			return false
		}
	}
	return true
}

// MachineActionSpec is what the responder knows of one machine action it
// sends: the one table (MachineActions) that the client, the collection,
// the permission check and the rules' action names share.
type MachineActionSpec struct {
	// Name is the action's name: the rule action (rules.Action) and the
	// operation label of the client's metrics.
	Name string
	// Type is Defender's machine action type (MachineAction.Type), by
	// which an earlier or running action is looked up.
	Type string
	// Path is the POST's last path segment under /api/machines/{id}/.
	Path string
	// Permission is the application permission it needs.
	Permission string
	// body is the request body, from the comment; MDE's keys are
	// case-sensitive, and some actions need more than the comment.
	body func(comment string) actionBody
}

// MachineActions lists the machine actions the responder sends; rules may
// ask for the first four (SPEC 6.1), the releases are for operators.
var MachineActions = []MachineActionSpec{
	{Name: opCollect, Type: TypeCollectInvestigationPackage, Path: "collectInvestigationPackage", Permission: PermissionCollectForensics,
		body: func(c string) actionBody { return actionBody{Comment: c} }},
	{Name: opIsolate, Type: TypeIsolate, Path: "isolate", Permission: PermissionIsolate,
		body: func(c string) actionBody { return actionBody{Comment: c, IsolationType: IsolationFull} }},
	{Name: opScan, Type: TypeRunAntiVirusScan, Path: "runAntiVirusScan", Permission: PermissionScan,
		body: func(c string) actionBody { return actionBody{Comment: c, ScanType: ScanQuick} }},
	{Name: opRestrict, Type: TypeRestrictCodeExecution, Path: "restrictCodeExecution", Permission: PermissionRestrictExecution,
		body: func(c string) actionBody { return actionBody{Comment: c} }},
	{Name: opUnisolate, Type: TypeUnisolate, Path: "unisolate", Permission: PermissionIsolate,
		body: func(c string) actionBody { return actionBody{Comment: c} }},
	{Name: opUnrestrict, Type: TypeUnrestrictCodeExecution, Path: "unrestrictCodeExecution", Permission: PermissionRestrictExecution,
		body: func(c string) actionBody { return actionBody{Comment: c} }},
}

// MachineActionByName returns the machine action named name.
func MachineActionByName(name string) (MachineActionSpec, bool) {
	for _, a := range MachineActions {
		if a.Name == name {
			return a, true
		}
	}
	return MachineActionSpec{}, false
}

// pathOf is the POST path segment of the machine action named name.
func pathOf(name string) string {
	a, _ := MachineActionByName(name)
	return a.Path
}

// Act sends the machine action named name (MachineActions) with its
// default options: full isolation, a quick scan. On OutcomeAlreadyRunning,
// look the pending action up with PendingAction; never re-send it.
func (c *Client) Act(ctx context.Context, name, machineID, comment string) (MachineAction, error) {
	spec, ok := MachineActionByName(name)
	if !ok {
		return MachineAction{}, invalid("act", fmt.Sprintf("unknown machine action %q", clean(name)), ErrInvalidArgument)
	}
	return c.postAction(ctx, spec.Name, machineID, spec.Path, spec.body(comment))
}

// actionBody is the body of an action POST; MDE's keys are case-sensitive.
type actionBody struct {
	Comment       string `json:"Comment"`
	IsolationType string `json:"IsolationType,omitempty"`
	ScanType      string `json:"ScanType,omitempty"`
}

// CollectInvestigationPackage asks MDE to collect an investigation package
// from the machine (POST /api/machines/{id}/collectInvestigationPackage). On
// OutcomeAlreadyRunning, look the pending action up with PendingAction; never
// re-send the POST. After a retryable error the POST may or may not have
// reached MDE: look with PendingAction before sending it again.
func (c *Client) CollectInvestigationPackage(ctx context.Context, machineID, comment string) (MachineAction, error) {
	return c.Act(ctx, opCollect, machineID, comment)
}

// Isolate isolates the machine from the network. isolationType is Full,
// Selective or UnManagedDevice; empty leaves MDE's default (Full).
func (c *Client) Isolate(ctx context.Context, machineID, comment, isolationType string) (MachineAction, error) {
	switch isolationType {
	case "", IsolationFull, IsolationSelective, IsolationUnManagedDevice:
	default:
		return MachineAction{}, invalid(opIsolate, fmt.Sprintf("isolation type %q: want Full, Selective or UnManagedDevice", clean(isolationType)), ErrInvalidArgument)
	}
	return c.postAction(ctx, opIsolate, machineID, pathOf(opIsolate), actionBody{Comment: comment, IsolationType: isolationType})
}

// Unisolate releases the machine from isolation.
func (c *Client) Unisolate(ctx context.Context, machineID, comment string) (MachineAction, error) {
	return c.postAction(ctx, opUnisolate, machineID, pathOf(opUnisolate), actionBody{Comment: comment})
}

// RunAntivirusScan starts a Defender Antivirus scan; scanType is Quick or
// Full.
func (c *Client) RunAntivirusScan(ctx context.Context, machineID, comment, scanType string) (MachineAction, error) {
	if scanType != ScanQuick && scanType != ScanFull {
		return MachineAction{}, invalid(opScan, fmt.Sprintf("scan type %q: want Quick or Full", clean(scanType)), ErrInvalidArgument)
	}
	return c.postAction(ctx, opScan, machineID, pathOf(opScan), actionBody{Comment: comment, ScanType: scanType})
}

// RestrictCodeExecution restricts the machine to Microsoft-signed code.
func (c *Client) RestrictCodeExecution(ctx context.Context, machineID, comment string) (MachineAction, error) {
	return c.postAction(ctx, opRestrict, machineID, pathOf(opRestrict), actionBody{Comment: comment})
}

// UnrestrictCodeExecution lifts the code execution restriction.
func (c *Client) UnrestrictCodeExecution(ctx context.Context, machineID, comment string) (MachineAction, error) {
	return c.postAction(ctx, opUnrestrict, machineID, pathOf(opUnrestrict), actionBody{Comment: comment})
}

// postAction sends an action POST and decodes the MachineAction answered.
func (c *Client) postAction(ctx context.Context, op, machineID, verb string, body actionBody) (MachineAction, error) {
	if !alert.ValidMachineID(machineID) {
		return MachineAction{}, invalid(op, "machine id is not 40 hexadecimal characters", ErrInvalidID)
	}
	if strings.TrimSpace(body.Comment) == "" {
		return MachineAction{}, invalid(op, "comment is required", ErrInvalidArgument)
	}
	data, err := marshalBody(body)
	if err != nil {
		return MachineAction{}, invalid(op, "cannot encode the body", err)
	}
	r := request{op: op, kind: kindAction, group: GroupActions, method: http.MethodPost,
		url: c.endpoint("api", "machines", machineID, verb), body: data, machineID: machineID}
	raw, err := c.send(ctx, r)
	if err != nil {
		return MachineAction{}, err
	}
	var a MachineAction
	if err := json.Unmarshal(raw, &a); err != nil || a.ID == "" {
		// MDE accepted the action, but its id is unknown: the caller must
		// look it up as it would an action already running, and not send
		// the POST again.
		e := &Error{Op: op, Outcome: OutcomeAlreadyRunning, StatusCode: http.StatusCreated,
			Message: "action accepted but the answer is unreadable; look it up", Err: err}
		c.logFailure(&r, e)
		return MachineAction{}, e
	}
	c.logger.Debug("defender machine action created", r.fields(zap.String("action_id", a.ID), zap.String("status", a.Status))...)
	return a, nil
}

// marshalBody encodes v without HTML escaping and without a trailing newline.
func marshalBody(v any) ([]byte, error) {
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return []byte(strings.TrimSuffix(b.String(), "\n")), nil
}

// GetMachineAction returns one machine action (GET /api/machineactions/{id}).
// An unknown id is a permanent "not found" error.
func (c *Client) GetMachineAction(ctx context.Context, actionID string) (MachineAction, error) {
	if !validActionID(actionID) {
		return MachineAction{}, invalid(opGetMachineAction, "action id is not a GUID", ErrInvalidID)
	}
	var a MachineAction
	r := request{op: opGetMachineAction, kind: kindActionGet, group: GroupMachineActions, method: http.MethodGet,
		url: c.endpoint("api", "machineactions", actionID), actionID: actionID}
	if err := c.getJSON(ctx, r, &a); err != nil {
		return MachineAction{}, err
	}
	return a, nil
}

// ActionFilter selects machine actions. Empty fields select everything.
type ActionFilter struct {
	MachineID string   // must be a valid machine id when set
	Type      string   // e.g. CollectInvestigationPackage
	Statuses  []string // any of these statuses
	Top       int      // at most this many (0: all; MDE caps a page at 10000)
}

// maxTop is MDE's page size limit.
const maxTop = 10000

// filter builds the OData $filter expression of f.
func (f ActionFilter) filter() string {
	var parts []string
	if f.MachineID != "" {
		parts = append(parts, "machineId eq "+odataString(f.MachineID))
	}
	if f.Type != "" {
		parts = append(parts, "type eq "+odataString(f.Type))
	}
	switch len(f.Statuses) {
	case 0:
	case 1:
		parts = append(parts, "status eq "+odataString(f.Statuses[0]))
	default:
		or := make([]string, len(f.Statuses))
		for i, s := range f.Statuses {
			or[i] = "status eq " + odataString(s)
		}
		parts = append(parts, "("+strings.Join(or, " or ")+")")
	}
	return strings.Join(parts, " and ")
}

// ListMachineActions lists machine actions (GET /api/machineactions with
// $filter), following @odata.nextLink on the API host.
func (c *Client) ListMachineActions(ctx context.Context, f ActionFilter) ([]MachineAction, error) {
	if f.MachineID != "" && !alert.ValidMachineID(f.MachineID) {
		return nil, invalid(opListMachineActions, "machine id is not 40 hexadecimal characters", ErrInvalidID)
	}
	if f.Top < 0 {
		return nil, invalid(opListMachineActions, "top must not be negative", ErrInvalidArgument)
	}
	var q []string
	if expr := f.filter(); expr != "" {
		q = append(q, "$filter="+queryEscape(expr))
	}
	if f.Top > 0 {
		q = append(q, "$top="+strconv.Itoa(min(f.Top, maxTop)))
	}
	u := c.endpoint("api", "machineactions")
	if len(q) > 0 {
		u += "?" + strings.Join(q, "&")
	}
	r := request{op: opListMachineActions, kind: kindActionGet, group: GroupMachineActions, method: http.MethodGet,
		url: u, machineID: f.MachineID}
	return list[MachineAction](ctx, c, r, f.Top)
}

// PendingAction returns the newest action of actionType on the machine that
// is not in a final status, and whether there is one. Use it after
// OutcomeAlreadyRunning, and after a restart, to track the action instead of
// sending another.
func (c *Client) PendingAction(ctx context.Context, machineID, actionType string) (MachineAction, bool, error) {
	if !alert.ValidMachineID(machineID) {
		return MachineAction{}, false, invalid(opListMachineActions, "machine id is not 40 hexadecimal characters", ErrInvalidID)
	}
	if actionType == "" {
		return MachineAction{}, false, invalid(opListMachineActions, "action type is required", ErrInvalidArgument)
	}
	// Statuses are filtered here, not in $filter: the documented examples
	// only combine machineId and type.
	all, err := c.ListMachineActions(ctx, ActionFilter{MachineID: machineID, Type: actionType})
	if err != nil {
		return MachineAction{}, false, err
	}
	var live []MachineAction
	for _, a := range all {
		if !a.Terminal() && strings.EqualFold(a.Type, actionType) {
			live = append(live, a)
		}
	}
	if len(live) == 0 {
		return MachineAction{}, false, nil
	}
	sort.SliceStable(live, func(i, j int) bool {
		if !live[i].CreationTime.Equal(live[j].CreationTime) {
			return live[i].CreationTime.After(live[j].CreationTime)
		}
		return live[i].LastUpdateTime.After(live[j].LastUpdateTime)
	})
	return live[0], true, nil
}
