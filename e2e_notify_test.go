package main

// End-to-end tests of notifications and write-back (SPEC 13, issue 14): the
// real binary, HTTP receivers that check Slack's and Teams' documented
// shapes and the webhook's signature, and the Defender simulator.

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/responder-dev/responder/defender/defendertest"
	"github.com/responder-dev/responder/internal/testkit"
	"github.com/responder-dev/responder/notify"
)

// notifyHMAC signs the webhook notifications of these tests.
const notifyHMAC = "e2e-notify-hmac-secret-0123456789"

// notifyRules collects on every high alert; no rule reads machine.*, so an
// unknown machine is found out by the collect request itself.
const notifyRules = `
rules:
  - name: high-or-critical
    when: 'alert.severity in ["high", "critical"]'
`

// The formats a fake receiver checks.
const (
	formatSlack   = "slack"
	formatTeams   = "teams"
	formatWebhook = "webhook"
)

// delivery is one request a fake receiver got.
type delivery struct {
	at      time.Time
	eventID string
	kind    string
	alertID string // webhook only
	status  int    // what the receiver answered
	raw     []byte
	event   notify.Event // webhook only
	texts   []string     // Slack and Teams: every text of the message
}

// receiver is a fake Slack, Teams or signed-webhook endpoint: it checks
// each request against its format's documented shape (a request that fails
// is answered 400 and recorded as a problem) and records every delivery.
// It listens on a fixed address, so that it can stop accepting and come
// back on the same port.
type receiver struct {
	t      *testing.T
	format string
	path   string // the URL's path; for Slack and Teams it is the credential
	addr   string

	mu       sync.Mutex
	srv      *http.Server
	got      []delivery
	problems []string
	status   int
	text     string
	// before runs for each well-formed delivery before it is answered.
	before func(d delivery)
}

func newReceiver(t *testing.T, format, path string, status int, text string) *receiver {
	t.Helper()
	r := &receiver{t: t, format: format, path: path, status: status, text: text}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.addr = ln.Addr().String()
	r.serve(ln)
	t.Cleanup(r.stop)
	return r
}

func (r *receiver) url() string { return "http://" + r.addr + r.path }

func (r *receiver) serve(ln net.Listener) {
	srv := &http.Server{Handler: r, ReadHeaderTimeout: 10 * time.Second}
	r.mu.Lock()
	r.srv = srv
	r.mu.Unlock()
	go func() { _ = srv.Serve(ln) }()
}

// stop closes the listener and every connection: the responder's requests
// are refused until restart.
func (r *receiver) stop() {
	r.mu.Lock()
	srv := r.srv
	r.srv = nil
	r.mu.Unlock()
	if srv != nil {
		_ = srv.Close()
	}
}

// restart listens on the same address again.
func (r *receiver) restart() {
	r.t.Helper()
	var ln net.Listener
	testkit.WaitUntil(r.t, 10*time.Second, "the receiver's port "+r.addr+" to be free again", func() bool {
		var err error
		ln, err = net.Listen("tcp", r.addr)
		return err == nil
	})
	r.serve(ln)
}

// answer sets what well-formed requests get from now on.
func (r *receiver) answer(status int, text string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.status, r.text = status, text
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	raw, err := io.ReadAll(io.LimitReader(req.Body, 1<<20))
	d := delivery{at: time.Now(), raw: raw}
	var problem string
	switch {
	case err != nil:
		problem = "reading the body: " + err.Error()
	case req.Method != http.MethodPost || req.URL.Path != r.path:
		problem = fmt.Sprintf("%s %s, want POST %s", req.Method, req.URL.Path, r.path)
	case req.Header.Get("Content-Type") != "application/json":
		problem = "Content-Type " + req.Header.Get("Content-Type")
	default:
		switch r.format {
		case formatSlack:
			problem = checkSlackMessage(raw, &d)
		case formatTeams:
			problem = checkTeamsMessage(raw, &d)
		default:
			problem = checkSignedEvent(req, raw, &d)
		}
	}
	if problem == "" && strings.Contains(string(raw), notifyHMAC) {
		problem = "the message carries the signing secret"
	}
	r.mu.Lock()
	if problem != "" {
		r.problems = append(r.problems, problem)
		r.mu.Unlock()
		http.Error(w, problem, http.StatusBadRequest)
		return
	}
	d.status = r.status
	text, before := r.text, r.before
	r.mu.Unlock()
	if before != nil {
		before(d)
	}
	r.mu.Lock()
	r.got = append(r.got, d)
	r.mu.Unlock()
	w.WriteHeader(d.status)
	_, _ = io.WriteString(w, text)
}

// deliveries returns what the receiver got, answered with a 2xx when ok.
func (r *receiver) deliveries(ok bool) []delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []delivery
	for _, d := range r.got {
		if !ok || d.status/100 == 2 {
			out = append(out, d)
		}
	}
	return out
}

// checkProblems fails the test with every malformed request the receiver got.
func (r *receiver) checkProblems(t *testing.T) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.problems {
		t.Errorf("%s receiver: %s", r.format, p)
	}
}

// eventInFooter finds the event id in a message's footer ("event <id>").
var eventInFooter = regexp.MustCompile(`\bevent (\S+)`)

// kindOfID is the kind an event id names: "audit-<n>-<kind>" for an
// entry's events, "sample-<kind>-<n>" for notify test's.
func kindOfID(id string) string {
	for _, part := range strings.Split(id, "-") {
		if k, ok := notify.ParseKind(part); ok {
			return string(k)
		}
	}
	return ""
}

// checkSlackMessage checks an incoming-webhook message against Block Kit's
// documented shape: a "text" string, "blocks" with a header (plain_text, at
// most 150 characters), sections of at most 10 fields, a context of at most
// 10 elements.
func checkSlackMessage(raw []byte, d *delivery) string {
	var msg struct {
		Text   *string `json:"text"`
		Blocks []struct {
			Type     string                        `json:"type"`
			Text     *struct{ Type, Text string }  `json:"text"`
			Fields   []struct{ Type, Text string } `json:"fields"`
			Elements []struct {
				Type string `json:"type"`
				Text any    `json:"text"`
			} `json:"elements"`
		} `json:"blocks"`
	}
	if err := json.Unmarshal(raw, &msg); err != nil {
		return "slack: not JSON: " + err.Error()
	}
	if msg.Text == nil || *msg.Text == "" {
		return "slack: no top-level text"
	}
	d.texts = append(d.texts, *msg.Text)
	seen := map[string]bool{}
	for i, b := range msg.Blocks {
		seen[b.Type] = true
		switch b.Type {
		case "header":
			if b.Text == nil || b.Text.Type != "plain_text" || utf8.RuneCountInString(b.Text.Text) > 150 {
				return fmt.Sprintf("slack: blocks[%d]: header text must be plain_text of at most 150 characters: %+v", i, b.Text)
			}
			d.texts = append(d.texts, b.Text.Text)
		case "section":
			if len(b.Fields) > 10 {
				return fmt.Sprintf("slack: blocks[%d]: %d fields, at most 10", i, len(b.Fields))
			}
			if b.Text != nil {
				d.texts = append(d.texts, b.Text.Text)
			}
			for _, f := range b.Fields {
				d.texts = append(d.texts, f.Text)
			}
		case "context":
			if len(b.Elements) == 0 || len(b.Elements) > 10 {
				return fmt.Sprintf("slack: blocks[%d]: %d context elements, want 1 to 10", i, len(b.Elements))
			}
			for _, e := range b.Elements {
				if s, ok := e.Text.(string); ok {
					d.texts = append(d.texts, s)
					if m := eventInFooter.FindStringSubmatch(s); m != nil {
						d.eventID = m[1]
					}
				}
			}
		case "actions":
		default:
			return fmt.Sprintf("slack: blocks[%d]: unexpected block type %q", i, b.Type)
		}
	}
	for _, typ := range []string{"header", "section", "context"} {
		if !seen[typ] {
			return "slack: no " + typ + " block"
		}
	}
	if d.eventID == "" {
		return "slack: the context names no event"
	}
	d.kind = kindOfID(d.eventID)
	return ""
}

// checkTeamsMessage checks a workflow-webhook message: type "message" with
// one attachment, an Adaptive Card (contentType, type, version, a body).
func checkTeamsMessage(raw []byte, d *delivery) string {
	var msg struct {
		Type        string `json:"type"`
		Attachments []struct {
			ContentType string `json:"contentType"`
			Content     struct {
				Type    string `json:"type"`
				Version string `json:"version"`
				Body    []struct {
					Type  string                          `json:"type"`
					Text  string                          `json:"text"`
					Facts []struct{ Title, Value string } `json:"facts"`
				} `json:"body"`
			} `json:"content"`
		} `json:"attachments"`
	}
	if err := json.Unmarshal(raw, &msg); err != nil {
		return "teams: not JSON: " + err.Error()
	}
	if msg.Type != "message" || len(msg.Attachments) != 1 {
		return fmt.Sprintf("teams: type %q with %d attachments, want \"message\" with 1", msg.Type, len(msg.Attachments))
	}
	a := msg.Attachments[0]
	if a.ContentType != "application/vnd.microsoft.card.adaptive" || a.Content.Type != "AdaptiveCard" || a.Content.Version == "" || len(a.Content.Body) == 0 {
		return fmt.Sprintf("teams: attachment %q, content type %q version %q with %d body elements, want an Adaptive Card",
			a.ContentType, a.Content.Type, a.Content.Version, len(a.Content.Body))
	}
	for _, e := range a.Content.Body {
		d.texts = append(d.texts, e.Text)
		for _, f := range e.Facts {
			d.texts = append(d.texts, f.Title+": "+f.Value)
		}
		if m := eventInFooter.FindStringSubmatch(e.Text); m != nil {
			d.eventID = m[1]
		}
	}
	if d.eventID == "" {
		return "teams: the card names no event"
	}
	d.kind = kindOfID(d.eventID)
	return ""
}

// checkSignedEvent checks a webhook delivery: signed with the shared secret
// (notify.Verify), the versioned document, its headers naming it.
func checkSignedEvent(req *http.Request, raw []byte, d *delivery) string {
	if err := notify.Verify([]byte(notifyHMAC), req.Header.Get(notify.HeaderTimestamp), req.Header.Get(notify.HeaderSignature), raw, time.Now(), 0); err != nil {
		return "webhook: " + err.Error()
	}
	if err := json.Unmarshal(raw, &d.event); err != nil {
		return "webhook: not the event document: " + err.Error()
	}
	ev := d.event
	switch {
	case ev.Version != notify.Version:
		return fmt.Sprintf("webhook: version %q", ev.Version)
	case ev.ID == "" || req.Header.Get(notify.HeaderDelivery) != ev.ID:
		return fmt.Sprintf("webhook: id %q, %s %q", ev.ID, notify.HeaderDelivery, req.Header.Get(notify.HeaderDelivery))
	case req.Header.Get(notify.HeaderEvent) != string(ev.Kind):
		return fmt.Sprintf("webhook: event %q, %s %q", ev.Kind, notify.HeaderEvent, req.Header.Get(notify.HeaderEvent))
	}
	d.eventID, d.kind = ev.ID, string(ev.Kind)
	if ev.Alert != nil {
		d.alertID = ev.Alert.ID
	}
	return ""
}

// notifyStack is a responder started with a configuration file (its
// notify: list) beside a Defender simulator.
type notifyStack struct {
	stack
	cfg string
}

// newNotifyStack writes cfgYAML to dir and starts the responder with it; the
// rest of the settings come from the environment, as the other end-to-end
// tests set them.
func newNotifyStack(t *testing.T, sim *defendertest.Simulator, dir, cfgYAML string, extraEnv ...string) *notifyStack {
	t.Helper()
	rules := filepath.Join(dir, "rules.yaml")
	writeTestFile(t, rules, notifyRules)
	s := &notifyStack{stack: stack{sim: sim, dir: dir}, cfg: filepath.Join(dir, "responder.yaml")}
	writeTestFile(t, s.cfg, cfgYAML)
	s.env = append([]string{
		"RESPONDER_SERVER_LISTEN=127.0.0.1:0",
		"RESPONDER_SERVER_ADMIN_LISTEN=127.0.0.1:0",
		"RESPONDER_ADMIN_ALLOW_UNAUTHENTICATED=true", // the tests read the admin API on loopback
		"RESPONDER_WEBHOOKS_BEARER_TOKEN=" + e2eBearer,
		"RESPONDER_STORE_DSN=" + filepath.Join(dir, "responder.db"),
		"RESPONDER_RULES_FILES=" + rules,
		"RESPONDER_DEFENDER_API_URL=" + sim.URL(),
		"RESPONDER_DEFENDER_TOKEN_URL=" + sim.TokenURL(),
		"RESPONDER_DEFENDER_TENANT_ID=" + defendertest.DevTenantID,
		"RESPONDER_DEFENDER_CLIENT_ID=" + defendertest.DevClientID,
		"RESPONDER_DEFENDER_CLIENT_SECRET=" + defendertest.DevClientSecret,
		"RESPONDER_DEFENDER_POLL_INTERVAL=200ms",
	}, extraEnv...)
	s.start(t)
	t.Cleanup(func() {
		if t.Failed() {
			for _, l := range s.proc.output() {
				if strings.Contains(l, "notif") || strings.Contains(l, `"level":"error"`) || strings.Contains(l, `"level":"warn"`) {
					t.Log(l)
				}
			}
		}
	})
	return s
}

func (s *notifyStack) start(t *testing.T) {
	t.Helper()
	s.proc = startResponder(t, s.env, "serve", "--config", s.cfg)
	s.hook = "http://" + s.proc.addr("webhooks")
	s.admin = "http://" + s.proc.addr("admin")
}

// newNotifySim serves a simulator whose actions end within half a second.
func newNotifySim(t *testing.T, machines []defendertest.Machine, alerts ...defendertest.Alert) *defendertest.Simulator {
	t.Helper()
	o := defendertest.DevOptions()
	o.PendingFor, o.InProgressFor = 200*time.Millisecond, 300*time.Millisecond
	if machines != nil {
		o.Machines = machines
	}
	o.Alerts = alerts
	sim, _ := defendertest.NewServer(t, o)
	return sim
}

// notificationRow is one notification of an entry, as the admin API shows it.
type notificationRow struct {
	Notifier string `json:"notifier"`
	Event    string `json:"event"`
	EventID  string `json:"event_id"`
	State    string `json:"state"`
	Attempts int    `json:"attempts"`
	Answer   string `json:"answer"`
}

// actionDetail is GET /api/v1/actions/{id}: the entry and its notifications.
type actionDetail struct {
	auditEntry
	PackagePath   string            `json:"package_path"`
	PackageSHA256 string            `json:"package_sha256"`
	PackageSize   int64             `json:"package_size"`
	Notifications []notificationRow `json:"notifications"`
}

func (s *notifyStack) detail(t *testing.T, id int64) actionDetail {
	t.Helper()
	code, body := call(t, http.MethodGet, fmt.Sprintf("%s/api/v1/actions/%d", s.admin, id), "")
	if code != http.StatusOK {
		t.Fatalf("GET /api/v1/actions/%d: %d %s", id, code, body)
	}
	var d actionDetail
	if err := json.Unmarshal([]byte(body), &d); err != nil {
		t.Fatalf("GET /api/v1/actions/%d: %v: %s", id, err, body)
	}
	return d
}

// waitSent waits until the entry of alertID has exactly the notifications
// want ("notifier/event"), every one sent, and returns it. A notification
// that ends any other way fails the test at once.
func (s *notifyStack) waitSent(t *testing.T, alertID string, want ...string) actionDetail {
	t.Helper()
	e := s.entry(t, alertID, func(auditEntry) bool { return true })
	want = slices.Sorted(slices.Values(want))
	var d actionDetail
	testkit.WaitFor(t, 45*time.Second, "the notifications of alert "+alertID+" to be sent", func() (bool, string) {
		d = s.detail(t, e.ID)
		var got []string
		sent := true
		for _, n := range d.Notifications {
			got = append(got, n.Notifier+"/"+n.Event)
			if n.State != "sent" && n.State != "pending" {
				t.Fatalf("notification %s/%s of alert %s ended %s: %s", n.Notifier, n.Event, alertID, n.State, n.Answer)
			}
			sent = sent && n.State == "sent"
		}
		slices.Sort(got)
		return sent && slices.Equal(got, want), fmt.Sprintf("%+v (entry %+v)", d.Notifications, d.auditEntry)
	})
	return d
}

// eventIDs returns the event ids of the notifications of notifier.
func (d actionDetail) eventIDs(notifier string) []string {
	var out []string
	for _, n := range d.Notifications {
		if n.Notifier == notifier {
			out = append(out, n.EventID)
		}
	}
	return out
}

// checkOncePerEvent checks that rcv got (and accepted) each of the events
// of ids exactly once, and nothing else.
func checkOncePerEvent(t *testing.T, rcv *receiver, ids []string) {
	t.Helper()
	counts := map[string]int{}
	for _, d := range rcv.deliveries(true) {
		counts[d.eventID]++
	}
	for _, id := range ids {
		if counts[id] != 1 {
			t.Errorf("%s receiver got event %s %d times, want once", rcv.format, id, counts[id])
		}
		delete(counts, id)
	}
	for id, n := range counts {
		t.Errorf("%s receiver got event %s (%d times), which no notification of the entries names", rcv.format, id, n)
	}
}

// byEvent returns the accepted delivery of event id, or fails.
func byEvent(t *testing.T, rcv *receiver, id string) delivery {
	t.Helper()
	for _, d := range rcv.deliveries(true) {
		if d.eventID == id {
			return d
		}
	}
	t.Fatalf("%s receiver got no event %s", rcv.format, id)
	return delivery{}
}

func eventIDOf(d actionDetail, notifier, kind string) string {
	for _, n := range d.Notifications {
		if n.Notifier == notifier && n.Event == kind {
			return n.EventID
		}
	}
	return ""
}

// graphAlertJSON is a Graph alerts_v2 alert of one device, whose Graph id
// differs from its MDE id (providerAlertId).
func graphAlertJSON(graphID, mdeID, machine, dnsName string) string {
	return fmt.Sprintf(`{"@odata.type":"#microsoft.graph.security.alert","id":%q,"providerAlertId":%q,`+
		`"serviceSource":"microsoftDefenderForEndpoint","severity":"high","status":"new","title":"Suspicious execution of hidden file",`+
		`"category":"DefenseEvasion","tenantId":%q,"createdDateTime":"2026-11-26T10:00:00Z","evidence":[{"@odata.type":"#microsoft.graph.security.deviceEvidence",`+
		`"mdeDeviceId":%q,"deviceDnsName":%q,"roles":["compromised"]}]}`, graphID, mdeID, defendertest.DevTenantID, machine, dnsName)
}

// TestNotificationsEndToEnd: Slack, Teams and a signed webhook each get
// every event they subscribe to exactly once, in their documented shapes;
// the collected message carries the sha256 of the package the responder
// downloaded; the write-back comments the originating MDE alert (PATCH) and
// Graph alert (its comment endpoint, on the Graph id); a refused collection
// is a failed event with its outcome and no write-back.
func TestNotificationsEndToEnd(t *testing.T) {
	t.Parallel()
	const (
		mdeID     = "da638700000000000001_1111111111"
		graphMDE  = "da638700000000000002_2222222222"
		graphID   = "ed638700000000000002_2222222222"
		unknownID = "da638700000000000003_3333333333"
	)
	unknownMachine := fmt.Sprintf("%040x", 0xdead)
	sim := newNotifySim(t, nil,
		defendertest.Alert{ID: mdeID, MachineID: defendertest.DevWorkstationID, Title: "e2e", Severity: "High"},
		defendertest.Alert{ID: graphMDE, GraphID: graphID, MachineID: defendertest.DevServerID, Title: "Suspicious execution of hidden file", Severity: "High"},
		defendertest.Alert{ID: unknownID, MachineID: unknownMachine, Title: "e2e", Severity: "High"},
	)
	slack := newReceiver(t, formatSlack, "/services/T0E2E/B0E2E/slack-url-credential-0123", http.StatusOK, "ok")
	teams := newReceiver(t, formatTeams, "/workflows/e2e/triggers/manual/paths/invoke/teams-url-credential-4567", http.StatusAccepted, "")
	siem := newReceiver(t, formatWebhook, "/hooks/responder", http.StatusOK, "accepted")

	dir := t.TempDir()
	writeTestFile(t, filepath.Join(dir, "slack-url"), slack.url()+"\n")
	writeTestFile(t, filepath.Join(dir, "siem-hmac"), notifyHMAC+"\n")
	packages := filepath.Join(dir, "packages")
	s := newNotifyStack(t, sim, dir, fmt.Sprintf(`
defender:
  download_dir: %q
  write_back: true
  graph_url: %q
notify:
  - name: soc-slack
    type: slack
    url_file: %q
    events: [collected, failed]
  - name: soc-teams
    type: teams
  - name: siem
    type: webhook
    url: %q
    hmac_secret_file: %q
`, packages, sim.URL(), filepath.Join(dir, "slack-url"), siem.url(), filepath.Join(dir, "siem-hmac")),
		"RESPONDER_NOTIFY_SOC_TEAMS_URL="+teams.url())

	if a := s.postDefender(t, mdeAlertJSON(mdeID, defendertest.DevWorkstationID, "High")); a.Code != 202 || a.Body["accepted"] != 1.0 {
		t.Fatalf("MDE alert: %+v", a)
	}
	if a := s.postDefender(t, graphAlertJSON(graphID, graphMDE, defendertest.DevServerID, "srv-app-07.corp.example.com")); a.Code != 202 || a.Body["accepted"] != 1.0 {
		t.Fatalf("Graph alert: %+v", a)
	}
	if a := s.postDefender(t, mdeAlertJSON(unknownID, unknownMachine, "High")); a.Code != 202 || a.Body["accepted"] != 1.0 {
		t.Fatalf("alert on an unknown machine: %+v", a)
	}
	collected := []string{"soc-slack/collected", "soc-teams/decided", "soc-teams/collected", "siem/decided", "siem/collected", "write-back/collected"}
	mde := s.waitSent(t, mdeID, collected...)
	graph := s.waitSent(t, graphMDE, collected...)
	refused := s.waitSent(t, unknownID, "soc-slack/failed", "soc-teams/decided", "soc-teams/failed", "siem/decided", "siem/failed")
	t.Cleanup(func() {
		for _, r := range []*receiver{slack, teams, siem} {
			r.checkProblems(t)
		}
	})

	// Every receiver got each event of its subscription once, and nothing else.
	for _, tc := range []struct {
		rcv      *receiver
		notifier string
	}{{slack, "soc-slack"}, {teams, "soc-teams"}, {siem, "siem"}} {
		var ids []string
		for _, d := range []actionDetail{mde, graph, refused} {
			ids = append(ids, d.eventIDs(tc.notifier)...)
		}
		checkOncePerEvent(t, tc.rcv, ids)
	}

	for _, d := range []actionDetail{mde, graph} {
		checkCollectedEndToEnd(t, d, slack, siem, packages)
	}

	// The MDE alert is commented through PATCH /api/alerts/{id}.
	checkComment(t, sim, mdeID, mde)
	if !simRequested(sim, http.MethodPatch, "/api/alerts/"+mdeID, http.StatusOK) {
		t.Errorf("no PATCH /api/alerts/%s answered 200", mdeID)
	}
	// The Graph alert is commented through Graph, on its Graph id.
	checkComment(t, sim, graphMDE, graph)
	if !simRequested(sim, http.MethodPost, "/v1.0/security/alerts_v2/"+graphID+"/comments", http.StatusOK) {
		t.Errorf("no POST /v1.0/security/alerts_v2/%s/comments answered 200", graphID)
	}
	if simRequested(sim, http.MethodPatch, "/api/alerts/"+graphMDE, 0) {
		t.Errorf("the Graph alert was commented through the MDE API too")
	}

	// The refused collection: failed, machine_not_found, no action and so
	// no write-back.
	if refused.Outcome != "machine_not_found" || refused.ActionID != "" {
		t.Fatalf("refused collection: %+v", refused.auditEntry)
	}
	failed := byEvent(t, siem, eventIDOf(refused, "siem", "failed"))
	if failed.event.Outcome != "machine_not_found" || failed.event.ActionID != "" || failed.event.Machine == nil || failed.event.Machine.ID != unknownMachine {
		t.Errorf("failed event: %s", failed.raw)
	}
	if a, _ := sim.Alert(unknownID); len(a.Comments) != 0 || simRequested(sim, http.MethodPatch, "/api/alerts/"+unknownID, 0) {
		t.Errorf("the alert of a refused collection was written back: %+v", a.Comments)
	}

	// No secret in the logs.
	for _, l := range s.proc.output() {
		for _, secret := range []string{notifyHMAC, slack.path, teams.path, defendertest.DevClientSecret} {
			if strings.Contains(l, secret) {
				t.Fatalf("log line leaks a secret: %s", l)
			}
		}
	}
}

// checkCollectedEndToEnd checks the end of a successful collection: the
// package on disk with the sha256 the entry recorded; Slack's collected
// message with it; the webhook's decided then collected, the latter with
// the package.
func checkCollectedEndToEnd(t *testing.T, d actionDetail, slack, siem *receiver, packages string) {
	t.Helper()
	if d.ActionStatus != "Succeeded" || d.PackageSHA256 == "" || d.ActionID == "" {
		t.Fatalf("entry of alert %s: %+v", d.AlertID, d)
	}
	if !strings.HasPrefix(d.PackagePath, packages+string(filepath.Separator)) {
		t.Errorf("package path %q is not under the download directory %q", d.PackagePath, packages)
	}
	pkg := readFile(t, d.PackagePath)
	if sum := sha256.Sum256(pkg); hex.EncodeToString(sum[:]) != d.PackageSHA256 || int64(len(pkg)) != d.PackageSize {
		t.Errorf("package on disk: sha256 %x, %d bytes; entry: %s, %d bytes", sum, len(pkg), d.PackageSHA256, d.PackageSize)
	}

	msg := byEvent(t, slack, eventIDOf(d, "soc-slack", "collected"))
	if !strings.Contains(msg.texts[0], "sha256 "+d.PackageSHA256[:12]) {
		t.Errorf("Slack's collected text %q does not carry sha256 %s", msg.texts[0], d.PackageSHA256)
	}
	if !slices.ContainsFunc(msg.texts, func(s string) bool { return strings.Contains(s, d.PackageSHA256) }) {
		t.Errorf("Slack's collected message does not show the whole sha256 %s: %q", d.PackageSHA256, msg.texts)
	}
	if !slices.ContainsFunc(msg.texts, func(s string) bool { return strings.Contains(s, d.ActionID) }) {
		t.Errorf("Slack's collected message does not name action %s: %q", d.ActionID, msg.texts)
	}

	decided := byEvent(t, siem, eventIDOf(d, "siem", "decided"))
	done := byEvent(t, siem, eventIDOf(d, "siem", "collected"))
	if !decided.at.Before(done.at) {
		t.Errorf("webhook: collected (%s) arrived before decided (%s)", done.at, decided.at)
	}
	ev := done.event
	if ev.Package == nil || ev.Package.SHA256 != d.PackageSHA256 || ev.Package.Bytes != d.PackageSize ||
		ev.ActionID != d.ActionID || ev.Status != "Succeeded" || ev.Alert == nil || ev.Alert.ID != d.AlertID ||
		ev.Machine == nil || ev.Machine.ID != d.MachineID || ev.Rule != "high-or-critical" || ev.AuditID != d.ID {
		t.Errorf("webhook collected event of alert %s: %s (entry %+v)", d.AlertID, done.raw, d)
	}
	if decided.event.Decision != "collect" || decided.event.Alert == nil || decided.event.Alert.ID != d.AlertID {
		t.Errorf("webhook decided event of alert %s: %s", d.AlertID, decided.raw)
	}
}

// checkComment checks that the simulator's alert id holds one comment, the
// write-back's, naming the action and the sha256.
func checkComment(t *testing.T, sim *defendertest.Simulator, id string, d actionDetail) {
	t.Helper()
	a, ok := sim.Alert(id)
	if !ok {
		t.Fatalf("the simulator has no alert %s", id)
	}
	if len(a.Comments) != 1 {
		t.Fatalf("alert %s has %d comments, want the write-back's: %+v", id, len(a.Comments), a.Comments)
	}
	c := a.Comments[0].Comment
	if !strings.Contains(c, d.ActionID) || !strings.Contains(c, d.PackageSHA256) || !strings.Contains(c, "Succeeded") {
		t.Errorf("comment on alert %s = %q, want the action %s, Succeeded and sha256 %s", id, c, d.ActionID, d.PackageSHA256)
	}
}

// simRequested reports whether the simulator got method path, answered
// status (0: any).
func simRequested(sim *defendertest.Simulator, method, path string, status int) bool {
	return slices.ContainsFunc(sim.Requests(), func(r defendertest.Request) bool {
		return r.Method == method && r.Path == path && (status == 0 || r.Status == status)
	})
}

// TestNotificationCrashBetweenSendAndRecord: the responder dies (SIGKILL)
// after the receiver got a message and before it could record the answer.
// Restarted on the same store, it sends that one message again, with the
// same id and body, once; no other message is repeated, and the
// notification ends sent.
func TestNotificationCrashBetweenSendAndRecord(t *testing.T) {
	t.Parallel()
	const first, second = "da638700000000000011_1", "da638700000000000012_2"
	sim := newNotifySim(t, nil)
	siem := newReceiver(t, formatWebhook, "/hooks/responder", http.StatusOK, "accepted")
	dir := t.TempDir()
	writeTestFile(t, filepath.Join(dir, "siem-hmac"), notifyHMAC)
	s := newNotifyStack(t, sim, dir, fmt.Sprintf(`
notify:
  - name: siem
    type: webhook
    url: %q
    hmac_secret_file: %q
`, siem.url(), filepath.Join(dir, "siem-hmac")))
	t.Cleanup(func() { siem.checkProblems(t) })

	// An alert whose messages are all delivered before the crash.
	s.postDefender(t, mdeAlertJSON(first, defendertest.DevWorkstationID, "High"))
	before := s.waitSent(t, first, "siem/decided", "siem/collected")

	// The second alert's collected message kills the responder before its
	// answer is written.
	var victim atomic.Pointer[proc]
	victim.Store(s.proc)
	killed := make(chan struct{})
	var once sync.Once
	siem.mu.Lock()
	siem.before = func(d delivery) {
		if d.alertID != second || d.kind != "collected" {
			return
		}
		once.Do(func() {
			p := victim.Load()
			_ = p.cmd.Process.Signal(syscall.SIGKILL)
			select {
			case <-p.exited:
			case <-time.After(10 * time.Second):
			}
			close(killed)
		})
	}
	siem.mu.Unlock()
	s.postDefender(t, mdeAlertJSON(second, defendertest.DevServerID, "High"))
	select {
	case <-killed:
	case <-time.After(45 * time.Second):
		t.Fatal("the collected message of the second alert never came")
	}

	s.start(t)
	after := s.waitSent(t, second, "siem/decided", "siem/collected")
	repeated := eventIDOf(after, "siem", "collected")
	var bodies [][]byte
	counts := map[string]int{}
	for _, d := range siem.deliveries(true) {
		counts[d.eventID]++
		if d.eventID == repeated {
			bodies = append(bodies, d.raw)
		}
	}
	if len(bodies) != 2 || string(bodies[0]) != string(bodies[1]) {
		t.Fatalf("the message sent when the responder died was received %d times (want twice, the same body): %q", len(bodies), bodies)
	}
	for _, id := range append(before.eventIDs("siem"), eventIDOf(after, "siem", "decided")) {
		if counts[id] != 1 {
			t.Errorf("event %s received %d times, want once", id, counts[id])
		}
	}
	if len(counts) != 4 {
		t.Errorf("received events %v, want the 4 of the two alerts", counts)
	}
}

// TestReceiverDownThenBackEndToEnd: a receiver answers 503, then refuses
// connections, for about 20 s while five alerts are collected. The
// collections end while it is down; once back, it gets every message once,
// each alert's decided before its collected.
func TestReceiverDownThenBackEndToEnd(t *testing.T) {
	t.Parallel()
	var machines []defendertest.Machine
	for i := range 5 {
		machines = append(machines, defendertest.Machine{ID: fmt.Sprintf("%040x", 0xd0e5d0e0+i), ComputerDNSName: fmt.Sprintf("down-%d.corp.example.com", i), HealthStatus: "Active"})
	}
	sim := newNotifySim(t, machines)
	siem := newReceiver(t, formatWebhook, "/hooks/responder", http.StatusServiceUnavailable, "down for maintenance")
	dir := t.TempDir()
	writeTestFile(t, filepath.Join(dir, "siem-hmac"), notifyHMAC)
	s := newNotifyStack(t, sim, dir, fmt.Sprintf(`
notify:
  - name: siem
    type: webhook
    url: %q
    hmac_secret_file: %q
`, siem.url(), filepath.Join(dir, "siem-hmac")))
	t.Cleanup(func() { siem.checkProblems(t) })

	down := time.Now()
	var ids []string
	for i, m := range machines {
		id := fmt.Sprintf("da-down-%d", i)
		ids = append(ids, id)
		if a := s.postDefender(t, mdeAlertJSON(id, m.ID, "High")); a.Code != 202 {
			t.Fatal(a)
		}
	}
	// The collections do not wait for the receiver.
	for _, id := range ids {
		s.entry(t, id, func(e auditEntry) bool { return e.ActionStatus == "Succeeded" })
	}
	if len(siem.deliveries(true)) != 0 {
		t.Fatal("the receiver accepted a message while down")
	}
	waitUntil(t, "a delivery to be tried against the 503", func() bool { return len(siem.deliveries(false)) > 0 })
	// The outage is a span of time, not a condition to wait for: 503 for
	// 10 s, then connections refused until 20 s.
	<-time.After(time.Until(down.Add(10 * time.Second)))
	siem.stop()
	<-time.After(time.Until(down.Add(20 * time.Second)))
	tried := len(siem.deliveries(false))
	siem.answer(http.StatusOK, "accepted")
	siem.restart()
	back := time.Now()

	var details []actionDetail
	for _, id := range ids {
		details = append(details, s.waitSent(t, id, "siem/decided", "siem/collected"))
	}
	t.Logf("%d attempts answered 503; every message delivered %s after the receiver came back", tried, time.Since(back).Round(time.Millisecond))
	var all []string
	retried := false
	for _, d := range details {
		all = append(all, d.eventIDs("siem")...)
		for _, n := range d.Notifications {
			retried = retried || n.Attempts > 1
		}
		decided := byEvent(t, siem, eventIDOf(d, "siem", "decided"))
		done := byEvent(t, siem, eventIDOf(d, "siem", "collected"))
		if !decided.at.Before(done.at) {
			t.Errorf("alert %s: collected delivered at %s, before decided at %s", d.AlertID, done.at, decided.at)
		}
		if done.at.Before(back) {
			t.Errorf("alert %s: collected accepted before the receiver came back", d.AlertID)
		}
	}
	checkOncePerEvent(t, siem, all)
	if !retried {
		t.Error("no notification records a failed attempt")
	}
}

// TestNotifyTestCommand: `responder notify test NAME` sends a sample to one
// notifier and prints the receiver's answer: exit 0 on success, 1 with the
// answer when the receiver refuses, 2 for a name not configured (naming
// those that are). Nothing it prints holds a URL or a secret.
func TestNotifyTestCommand(t *testing.T) {
	t.Parallel()
	slack := newReceiver(t, formatSlack, "/services/T0E2E/B0E2E/test-credential-89ab", http.StatusOK, "ok")
	gone := newReceiver(t, formatSlack, "/services/T0E2E/B0E2E/revoked-credential-cdef", http.StatusNotFound, "no_service")
	siem := newReceiver(t, formatWebhook, "/hooks/responder", http.StatusAccepted, "queued")
	t.Cleanup(func() {
		for _, r := range []*receiver{slack, gone, siem} {
			r.checkProblems(t)
		}
	})
	dir := t.TempDir()
	writeTestFile(t, filepath.Join(dir, "slack-url"), slack.url())
	writeTestFile(t, filepath.Join(dir, "siem-hmac"), notifyHMAC)
	cfg := filepath.Join(dir, "responder.yaml")
	writeTestFile(t, cfg, fmt.Sprintf(`
server:
  admin_listen: "127.0.0.1:9090"
admin:
  allow_unauthenticated: true
webhooks:
  allow_unauthenticated: true
defender:
  dry_run: true
notify:
  - name: soc-slack
    type: slack
    url_file: %q
  - name: old-slack
    type: slack
  - name: siem
    type: webhook
    url: %q
    hmac_secret_file: %q
`, filepath.Join(dir, "slack-url"), siem.url(), filepath.Join(dir, "siem-hmac")))
	env := []string{"PATH=" + os.Getenv("PATH"), "RESPONDER_NOTIFY_OLD_SLACK_URL=" + gone.url()}

	cases := []struct {
		name   string
		args   []string
		code   int
		stdout []string
		stderr []string
	}{
		{"slack", []string{"soc-slack"}, 0, []string{"sent a sample collected event", "to soc-slack (slack)", "receiver answered 200: ok"}, nil},
		{"revoked slack", []string{"old-slack", "--event", "failed"}, 1, []string{"sent a sample failed event", "receiver answered 404: no_service"}, []string{"old-slack: delivery failed"}},
		{"webhook", []string{"siem", "--event", "decided"}, 0, []string{"to siem (webhook)", "receiver answered 202: queued"}, nil},
		{"unknown", []string{"pager"}, 2, nil, []string{`no notifier named "pager"`, "configured: soc-slack, old-slack, siem"}},
	}
	for _, tc := range cases {
		cmd := exec.Command(binary, append(append([]string{"notify", "test"}, tc.args...), "--config", cfg)...)
		cmd.Env = env
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		var exit *exec.ExitError
		if err != nil && !errors.As(err, &exit) {
			t.Fatalf("%s: %v", tc.name, err)
		}
		out := stdout.String() + stderr.String()
		if code := exitCode(err); code != tc.code {
			t.Errorf("%s: exit %d, want %d\n%s", tc.name, code, tc.code, out)
		}
		for _, w := range tc.stdout {
			if !strings.Contains(stdout.String(), w) {
				t.Errorf("%s: stdout lacks %q:\n%s", tc.name, w, stdout.String())
			}
		}
		for _, w := range tc.stderr {
			if !strings.Contains(stderr.String(), w) {
				t.Errorf("%s: stderr lacks %q:\n%s", tc.name, w, stderr.String())
			}
		}
		for _, secret := range []string{slack.url(), gone.url(), slack.path, gone.path, siem.url(), notifyHMAC} {
			if strings.Contains(out, secret) {
				t.Errorf("%s: the output holds a URL or secret %q:\n%s", tc.name, secret, out)
			}
		}
	}
	for _, tc := range []struct {
		rcv  *receiver
		kind string
	}{{slack, "collected"}, {gone, "failed"}, {siem, "decided"}} {
		got := tc.rcv.deliveries(false)
		if len(got) != 1 || got[0].kind != tc.kind {
			t.Errorf("%s receiver %s got %d messages, want one sample %s event", tc.rcv.format, tc.rcv.path, len(got), tc.kind)
		}
	}
}

// TestDeadReceiverBackoffGrowsEndToEnd: a receiver that keeps failing is
// tried less and less often, by the default backoff (2 s, doubling, capped
// at a minute): in 30 s, rounds of attempts at about 0, 2, 6, 14 and 30 s,
// whichever of its pending messages makes them; the wait between rounds
// never shrinks.
//
// It fails today with a few hundred messages pending (200 here; a dry run
// raises a decided event per alert): each failed delivery holds the
// notifier for the backoff of that delivery's own attempt
// (pipeline/notify.go, deliver: p.failing.fail(n.Notifier,
// now.Add(p.notifyBackoff(job.Attempt)))), and when the hold ends the
// delivery that tries next is mostly one that never tried (attempt 1), so
// the hold stays at 2 s for as long as the receiver is down: a request
// every 2 s, and every pending delivery woken every 2 s
// (loadbench -scenario notify, BENCHMARKS.md).
func TestDeadReceiverBackoffGrowsEndToEnd(t *testing.T) {
	t.Parallel()
	siem := newReceiver(t, formatWebhook, "/hooks/responder", http.StatusServiceUnavailable, "down")
	dir := t.TempDir()
	writeTestFile(t, filepath.Join(dir, "siem-hmac"), notifyHMAC)
	s := newNotifyStack(t, newNotifySim(t, nil), dir, fmt.Sprintf(`
notify:
  - name: siem
    type: webhook
    url: %q
    hmac_secret_file: %q
    events: [decided]
`, siem.url(), filepath.Join(dir, "siem-hmac")),
		"RESPONDER_DEFENDER_DRY_RUN=true",
		"RESPONDER_SAFETY_MAX_COLLECTIONS_PER_HOUR=100000", "RESPONDER_SAFETY_MAX_MACHINES_PER_10M=100000")
	t.Cleanup(func() { siem.checkProblems(t) })
	var alerts []string
	for i := range 200 {
		alerts = append(alerts, mdeAlertJSON(fmt.Sprintf("da-dead-%d", i), fmt.Sprintf("%040x", 0xdeadbac0+i), "High"))
	}
	if a := s.postDefender(t, "["+strings.Join(alerts, ",")+"]"); a.Code != 202 || a.Body["accepted"] != 200.0 {
		t.Fatalf("200 alerts: %+v", a)
	}
	waitUntil(t, "a first delivery attempt", func() bool { return len(siem.deliveries(false)) > 0 })
	first := siem.deliveries(false)[0].at
	// Watch the receiver for 30 s: a span of time, not a condition.
	<-time.After(time.Until(first.Add(30 * time.Second)))

	// Attempts within a second of each other (two deliveries run at once)
	// are one round.
	var rounds []time.Duration
	last := time.Time{}
	for _, d := range siem.deliveries(false) {
		if d.at.Sub(first) > 30*time.Second {
			break
		}
		if last.IsZero() || d.at.Sub(last) > time.Second {
			rounds = append(rounds, d.at.Sub(first).Round(100*time.Millisecond))
		}
		last = d.at
	}
	t.Logf("rounds of attempts at %v", rounds)
	// The wait between rounds never shrinks (10 % jitter aside) while the
	// receiver keeps failing.
	for i := 2; i < len(rounds); i++ {
		if prev, gap := rounds[i-1]-rounds[i-2], rounds[i]-rounds[i-1]; gap < prev*3/4 {
			t.Errorf("the wait between attempts shrank from %s to %s at %s, against a receiver answering 503 all along (rounds at %v)", prev, gap, rounds[i], rounds)
			break
		}
	}
	if len(rounds) > 7 {
		t.Errorf("%d rounds of attempts in 30 s, want at most 7 (backoff 2 s doubling)", len(rounds))
	}
}
