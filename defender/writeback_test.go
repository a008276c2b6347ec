package defender_test

// Write-back (SPEC 13) against the simulator: a comment on the originating
// Defender alert (PATCH api/alerts/{id}) or Graph alert (POST
// alerts_v2/{id}/comments, with a Graph token), and every way it fails.

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"

	"github.com/responder-dev/responder/alert"
	"github.com/responder-dev/responder/defender"
	"github.com/responder-dev/responder/defender/defendertest"
	"github.com/responder-dev/responder/metrics"
)

const (
	mdeAlertID   = "da637472900382838869_1364969609"
	graphAlertID = "da637472900382838869_1364969609-g"
)

// writeBackSim is a simulator holding one alert, whose Graph id differs
// from its MDE id so that a comment sent to the wrong one shows.
func writeBackSim(t *testing.T, mutate func(*defendertest.Options)) *defendertest.Simulator {
	t.Helper()
	sim, _ := newSimulator(t, func(o *defendertest.Options) {
		o.Alerts = []defendertest.Alert{{ID: mdeAlertID, GraphID: graphAlertID, MachineID: ws, Title: "Ransomware behavior detected"}}
		if mutate != nil {
			mutate(o)
		}
	})
	return sim
}

// writeBackClient is clientFor with write-back on and Graph served by sim.
func writeBackClient(t *testing.T, sim *defendertest.Simulator, opts ...defender.Option) (*defender.Client, *metrics.Metrics) {
	t.Helper()
	cfg := defender.Config{
		APIURL: sim.URL(), TokenURL: sim.TokenURL(), TenantID: defendertest.DevTenantID,
		ClientID: defendertest.DevClientID, ClientSecret: defendertest.DevClientSecret,
		UserAgent: "responder/writeback", Timeout: 5 * time.Second,
		WriteBack: true, GraphURL: sim.URL(),
	}
	m := metrics.New(prometheus.NewRegistry())
	c, err := defender.New(cfg, m, zap.NewNop(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	return c, m
}

var (
	defenderRef = defender.AlertRef{Source: alert.SourceDefender, ID: mdeAlertID}
	graphRef    = defender.AlertRef{Source: alert.SourceGraph, ID: graphAlertID}
)

// comments returns the comment texts of the simulator's alert.
func comments(t *testing.T, sim *defendertest.Simulator) []string {
	t.Helper()
	a, ok := sim.Alert(mdeAlertID)
	if !ok {
		t.Fatal("alert gone from the simulator")
	}
	var out []string
	for _, c := range a.Comments {
		out = append(out, c.Comment)
	}
	return out
}

func TestWriteBackRef(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		alert  *alert.Alert
		want   defender.AlertRef
		wantOK bool
	}{
		{"defender", &alert.Alert{Source: alert.SourceDefender, ID: mdeAlertID}, defenderRef, true},
		{"graph uses the Graph id", &alert.Alert{Source: alert.SourceGraph, ID: mdeAlertID, GraphID: graphAlertID}, graphRef, true},
		{"graph without Graph id falls back to the id", &alert.Alert{Source: alert.SourceGraph, ID: mdeAlertID},
			defender.AlertRef{Source: alert.SourceGraph, ID: mdeAlertID}, true},
		{"alertmanager has none", &alert.Alert{Source: alert.SourceAlertmanager, ID: "6e2d6a5b1f0c3e71"}, defender.AlertRef{}, false},
		{"grafana has none", &alert.Alert{Source: alert.SourceGrafana, ID: "6e2d6a5b1f0c3e71"}, defender.AlertRef{}, false},
		{"nil", nil, defender.AlertRef{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, ok := defender.WriteBackRef(tc.alert)
			if got != tc.want || ok != tc.wantOK {
				t.Errorf("WriteBackRef = %+v, %v; want %+v, %v", got, ok, tc.want, tc.wantOK)
			}
		})
	}
}

// TestCommentAlertLands: a comment of each kind reaches the alert, sent as
// the contract says: method, path, exact body, User-Agent, a 200 counted
// under its operation.
func TestCommentAlertLands(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	sim := writeBackSim(t, nil)
	c, m := writeBackClient(t, sim)
	if err := c.CommentAlert(ctx, defenderRef, "Investigation package collected: action 5382f7ea"); err != nil {
		t.Fatal(err)
	}
	if err := c.CommentAlert(ctx, graphRef, `Collected "ws-0142" <ok> & done`); err != nil {
		t.Fatal(err)
	}
	if got := comments(t, sim); !slices.Equal(got, []string{"Investigation package collected: action 5382f7ea", `Collected "ws-0142" <ok> & done`}) {
		t.Errorf("alert comments = %q", got)
	}
	want := map[string]string{
		"PATCH /api/alerts/" + mdeAlertID:                             `{"comment":"Investigation package collected: action 5382f7ea"}`,
		"POST /v1.0/security/alerts_v2/" + graphAlertID + "/comments": `{"@odata.type":"microsoft.graph.security.alertComment","comment":"Collected \"ws-0142\" <ok> & done"}`,
	}
	for _, r := range sim.Requests() {
		body, ok := want[r.Method+" "+r.Path]
		if !ok {
			continue
		}
		delete(want, r.Method+" "+r.Path)
		if string(r.Body) != body || r.ContentType != "application/json" || r.UserAgent != "responder/writeback" || r.Status != http.StatusOK {
			t.Errorf("%s %s: body %s, type %q, agent %q, status %d", r.Method, r.Path, r.Body, r.ContentType, r.UserAgent, r.Status)
		}
	}
	if len(want) != 0 {
		t.Errorf("requests never sent: %v", want)
	}
	for _, op := range []string{"update_alert", "alert_comment"} {
		if got := testutil.ToFloat64(m.DefenderRequests.WithLabelValues(op, "200")); got != 1 {
			t.Errorf("requests{%s,200} = %v; want 1", op, got)
		}
	}
}

// TestGraphTokenScope: the Graph call gets its own token, requested with
// the cloud's Graph scope (not the simulator's URL, which no login endpoint
// knows), and each token's roles reach their own hook.
func TestGraphTokenScope(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	sim := writeBackSim(t, nil)
	var mu sync.Mutex
	var mdeRoles, graphRoles [][]string
	c, _ := writeBackClient(t, sim,
		defender.WithTokenRoles(func(r []string) { mu.Lock(); mdeRoles = append(mdeRoles, r); mu.Unlock() }),
		defender.WithGraphTokenRoles(func(r []string) { mu.Lock(); graphRoles = append(graphRoles, r); mu.Unlock() }))
	if c.GraphURL() != sim.URL() || c.GraphScope() != "https://graph.microsoft.com/.default" {
		t.Errorf("GraphURL %q GraphScope %q", c.GraphURL(), c.GraphScope())
	}
	if err := c.CheckGraphToken(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.CommentAlert(ctx, graphRef, "graph"); err != nil {
		t.Fatal(err)
	}
	if err := c.CommentAlert(ctx, defenderRef, "mde"); err != nil {
		t.Fatal(err)
	}
	var scopes []string
	for _, r := range sim.Requests() {
		if strings.HasSuffix(r.Path, "/oauth2/v2.0/token") {
			form, err := url.ParseQuery(string(r.Body))
			if err != nil {
				t.Fatal(err)
			}
			scopes = append(scopes, form.Get("scope"))
		}
	}
	// One Graph token (cached after CheckGraphToken), one MDE token.
	if !slices.Equal(scopes, []string{"https://graph.microsoft.com/.default", "https://api.securitycenter.microsoft.com/.default"}) {
		t.Errorf("token scopes = %q", scopes)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(graphRoles) != 1 || !slices.Equal(graphRoles[0], []string{defender.PermissionSecurityAlertReadWrite}) {
		t.Errorf("Graph roles hook saw %v", graphRoles)
	}
	if len(mdeRoles) != 1 || slices.Contains(mdeRoles[0], defender.PermissionSecurityAlertReadWrite) ||
		defender.MissingPermissions(mdeRoles[0], []string{defender.PermissionAlertReadWrite}) != nil {
		t.Errorf("MDE roles hook saw %v", mdeRoles)
	}
}

// TestCommentAlertOutcomes: the simulator's refusals, classified like every
// other call, for both kinds.
func TestCommentAlertOutcomes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, ref := range []defender.AlertRef{defenderRef, graphRef} {
		op := map[alert.Source]string{alert.SourceDefender: "update_alert", alert.SourceGraph: "alert_comment"}[ref.Source]
		for _, tc := range []struct {
			name    string
			mutate  func(*defendertest.Options)
			prepare func(*defendertest.Simulator)
			id      string
			outcome defender.Outcome
			status  int
			check   func(t *testing.T, e *defender.Error)
		}{
			{name: "quota", mutate: func(o *defendertest.Options) { o.QuotaPerMinute = 1 },
				outcome: defender.OutcomeRateLimited, status: 429, check: func(t *testing.T, e *defender.Error) {
					if e.RetryAfter != time.Minute {
						t.Errorf("RetryAfter = %s; want 1m", e.RetryAfter)
					}
				}},
			{name: "missing permission", prepare: func(s *defendertest.Simulator) {
				s.SetRoles(defendertest.RoleReadAll, defendertest.RoleCollectForensics)
				s.SetGraphRoles(defendertest.RoleSecurityAlertReadAll)
			}, outcome: defender.OutcomeForbidden, status: 403},
			{name: "unknown alert", id: "da000000000000000000_1", outcome: defender.OutcomePermanent, status: 404,
				check: func(t *testing.T, e *defender.Error) {
					if !errors.Is(e, defender.ErrAlertNotFound) || !strings.Contains(e.Error(), "alert not found") {
						t.Errorf("error %v does not wrap ErrAlertNotFound", e)
					}
				}},
			{name: "server error", prepare: func(s *defendertest.Simulator) {
				s.InjectFault(defendertest.Fault{PathContains: ref.ID, Status: 503})
			}, outcome: defender.OutcomeRetryable, status: 503},
			{name: "bad request", prepare: func(s *defendertest.Simulator) {
				s.InjectFault(defendertest.Fault{PathContains: ref.ID, Status: 400})
			}, outcome: defender.OutcomePermanent, status: 400},
		} {
			t.Run(string(ref.Source)+" "+tc.name, func(t *testing.T) {
				t.Parallel()
				sim := writeBackSim(t, tc.mutate)
				if tc.prepare != nil {
					tc.prepare(sim)
				}
				c, m := writeBackClient(t, sim)
				r := ref
				if tc.id != "" {
					r.ID = tc.id
				}
				if tc.name == "quota" {
					// The first call uses the simulator's quota of one.
					if err := c.CommentAlert(ctx, r, "first"); err != nil {
						t.Fatal(err)
					}
				}
				err := c.CommentAlert(ctx, r, "refused")
				var e *defender.Error
				if !errors.As(err, &e) || e.Outcome != tc.outcome || e.StatusCode != tc.status || e.Op != op {
					t.Fatalf("err = %v; want %s %d from %s", err, tc.outcome, tc.status, op)
				}
				if e.Code == "" || e.Target == "" {
					t.Errorf("code %q target %q: want both from the error body", e.Code, e.Target)
				}
				if tc.check != nil {
					tc.check(t, e)
				}
				if got := testutil.ToFloat64(m.DefenderRequests.WithLabelValues(op, strconv.Itoa(tc.status))); got != 1 {
					t.Errorf("requests{%s,%d} = %v", op, tc.status, got)
				}
				if slices.Contains(comments(t, sim), "refused") {
					t.Error("the refused comment landed")
				}
			})
		}
	}
}

// TestGraphUnauthorizedRefreshesGraphToken: a 401 from Graph invalidates the
// Graph token, not the MDE one, and the call succeeds with a new one.
func TestGraphUnauthorizedRefreshesGraphToken(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	sim := writeBackSim(t, nil)
	c, _ := writeBackClient(t, sim)
	if err := c.CheckToken(ctx); err != nil {
		t.Fatal(err)
	}
	sim.InjectFault(defendertest.Fault{PathPrefix: "/v1.0/", Status: 401, Times: 1})
	if err := c.CommentAlert(ctx, graphRef, "after a refresh"); err != nil {
		t.Fatal(err)
	}
	if err := c.CommentAlert(ctx, defenderRef, "mde token kept"); err != nil {
		t.Fatal(err)
	}
	var graph, mde int
	for _, r := range sim.Requests() {
		if strings.HasSuffix(r.Path, "/oauth2/v2.0/token") {
			if strings.Contains(string(r.Body), "graph.microsoft.com") {
				graph++
			} else {
				mde++
			}
		}
	}
	if graph != 2 || mde != 1 {
		t.Errorf("token requests: %d Graph, %d MDE; want 2 and 1", graph, mde)
	}
	if got := comments(t, sim); !slices.Equal(got, []string{"after a refresh", "mde token kept"}) {
		t.Errorf("comments = %q", got)
	}
}

// TestCommentAlertSendsNothing: a call refused by the client sends no
// request at all, token requests included.
func TestCommentAlertSendsNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, tc := range []struct {
		name      string
		ref       defender.AlertRef
		comment   string
		writeBack bool
		sentinel  error
	}{
		{"empty id", defender.AlertRef{Source: alert.SourceDefender}, "c", true, defender.ErrInvalidID},
		{"slash", defender.AlertRef{Source: alert.SourceDefender, ID: "da1/../../machines"}, "c", true, defender.ErrInvalidID},
		{"dot dot", defender.AlertRef{Source: alert.SourceGraph, ID: ".."}, "c", true, defender.ErrInvalidID},
		{"dot", defender.AlertRef{Source: alert.SourceGraph, ID: "."}, "c", true, defender.ErrInvalidID},
		{"space", defender.AlertRef{Source: alert.SourceGraph, ID: "da1 2"}, "c", true, defender.ErrInvalidID},
		{"query", defender.AlertRef{Source: alert.SourceDefender, ID: "da1?x=1"}, "c", true, defender.ErrInvalidID},
		{"percent", defender.AlertRef{Source: alert.SourceDefender, ID: "da1%2F"}, "c", true, defender.ErrInvalidID},
		{"newline", defender.AlertRef{Source: alert.SourceDefender, ID: "da1\nforged"}, "c", true, defender.ErrInvalidID},
		{"non-ASCII", defender.AlertRef{Source: alert.SourceDefender, ID: "da1é"}, "c", true, defender.ErrInvalidID},
		{"too long", defender.AlertRef{Source: alert.SourceDefender, ID: strings.Repeat("a", 129)}, "c", true, defender.ErrInvalidID},
		{"empty comment", defenderRef, " \n", true, defender.ErrInvalidArgument},
		{"alertmanager", defender.AlertRef{Source: alert.SourceAlertmanager, ID: "6e2d6a5b1f0c3e71"}, "c", true, defender.ErrInvalidArgument},
		{"write-back off, defender", defenderRef, "c", false, defender.ErrWriteBackDisabled},
		{"write-back off, graph", graphRef, "c", false, defender.ErrWriteBackDisabled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sim := writeBackSim(t, nil)
			c, _ := clientFor(t, sim, func(cfg *defender.Config) { cfg.WriteBack, cfg.GraphURL = tc.writeBack, sim.URL() })
			err := c.CommentAlert(ctx, tc.ref, tc.comment)
			if !errors.Is(err, tc.sentinel) || outcome(err) != defender.OutcomePermanent {
				t.Fatalf("err = %v; want a permanent error wrapping %v", err, tc.sentinel)
			}
			if errors.Is(tc.sentinel, defender.ErrInvalidID) && tc.ref.ID != "" && !strings.Contains(err.Error(), "alert id \"") {
				t.Errorf("error %q does not name the id", err)
			}
			if n := len(sim.Requests()); n != 0 {
				t.Errorf("%d requests sent", n)
			}
		})
	}
	t.Run("no Graph token without write-back", func(t *testing.T) {
		t.Parallel()
		sim := writeBackSim(t, nil)
		c, _ := clientFor(t, sim, nil)
		if err := c.CheckGraphToken(ctx); !errors.Is(err, defender.ErrWriteBackDisabled) {
			t.Fatalf("CheckGraphToken = %v", err)
		}
		if n := len(sim.Requests()); n != 0 {
			t.Errorf("%d requests sent", n)
		}
	})
	t.Run("longest id", func(t *testing.T) {
		t.Parallel()
		sim := writeBackSim(t, func(o *defendertest.Options) {
			o.Alerts = append(o.Alerts, defendertest.Alert{ID: strings.Repeat("a", 128), GraphID: "x.y-Z_0"})
		})
		c, _ := writeBackClient(t, sim)
		if err := c.CommentAlert(ctx, defender.AlertRef{Source: alert.SourceDefender, ID: strings.Repeat("a", 128)}, "c"); err != nil {
			t.Fatal(err)
		}
		if err := c.CommentAlert(ctx, defender.AlertRef{Source: alert.SourceGraph, ID: "x.y-Z_0"}, "c"); err != nil {
			t.Fatal(err)
		}
	})
}

// TestCommentCapped: a comment is cut to 1000 characters, not bytes, on a
// character boundary.
func TestCommentCapped(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, ref := range []defender.AlertRef{defenderRef, graphRef} {
		t.Run(string(ref.Source), func(t *testing.T) {
			t.Parallel()
			sim := writeBackSim(t, nil)
			c, _ := writeBackClient(t, sim)
			exact := strings.Repeat("x", defender.MaxCommentLength)
			if err := c.CommentAlert(ctx, ref, exact); err != nil {
				t.Fatal(err)
			}
			if err := c.CommentAlert(ctx, ref, strings.Repeat("é", 1500)); err != nil {
				t.Fatal(err)
			}
			got := comments(t, sim)
			if len(got) != 2 || got[0] != exact {
				t.Fatalf("comments = %d, first %d characters", len(got), utf8.RuneCountInString(got[0]))
			}
			if n := utf8.RuneCountInString(got[1]); n != defender.MaxCommentLength || !utf8.ValidString(got[1]) || got[1] != strings.Repeat("é", 1000) {
				t.Errorf("capped comment has %d characters, valid UTF-8 %v", n, utf8.ValidString(got[1]))
			}
		})
	}
}
