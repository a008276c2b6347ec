package pipeline

import (
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/responder-dev/responder/audit"
	"github.com/responder-dev/responder/defender/defendertest"
)

// collectRequests returns the collect POSTs the simulator received,
// answered or not.
func collectRequests(sim *defendertest.Simulator) []defendertest.Request {
	var out []defendertest.Request
	for _, r := range sim.Requests() {
		if r.Method == http.MethodPost && strings.HasSuffix(r.Path, "/collectInvestigationPackage") {
			out = append(out, r)
		}
	}
	return out
}

// TestLateAnswerMakesOneAction: Defender receives a collection POST but
// answers it only after the client has given up, and lists the action only
// then. The decision looks for it until the request has settled instead of
// posting again at the first look that finds nothing: one decision, one
// request, one machine action, tracked to its end.
func TestLateAnswerMakesOneAction(t *testing.T) {
	t.Parallel()
	// Short actions: a second POST after the first action ended would be
	// accepted, and make a second action.
	sim := newSim(t, defendertest.Options{PendingFor: 50 * time.Millisecond, InProgressFor: 50 * time.Millisecond})
	sim.InjectFault(defendertest.Fault{Method: http.MethodPost, PathContains: "collectInvestigationPackage", Delay: 2 * time.Second, Late: true, Times: 1})
	e := setup(t, envOpts{sim: sim, clientTimeout: 300 * time.Millisecond,
		cfg: Config{RequestTimeout: 300 * time.Millisecond, PostSettle: 15 * time.Second}})
	e.submit(mdeAlert("da-late", defendertest.DevWorkstationID, "high"))
	got := e.waitEntry("da-late", func(en *audit.Entry) bool { return en.State == audit.Done })
	if got.Outcome != audit.Created || got.ActionStatus != "Succeeded" {
		t.Fatalf("entry = %+v", got)
	}
	var actions []string
	for _, a := range sim.Actions() {
		if a.MachineID == defendertest.DevWorkstationID {
			actions = append(actions, a.ID)
		}
	}
	if len(actions) != 1 || actions[0] != got.ActionID {
		t.Fatalf("machine actions %v for one decision (tracked %s)", actions, got.ActionID)
	}
	if n := len(collectRequests(sim)); n != 1 {
		t.Fatalf("%d collect POSTs, want 1", n)
	}
}

// refuseFirstCollect fails the first collect POST as a refused connection
// would, before any byte is sent.
type refuseFirstCollect struct {
	base    http.RoundTripper
	refused atomic.Bool
}

func (r *refuseFirstCollect) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Method == http.MethodPost && strings.HasSuffix(req.URL.Path, "/collectInvestigationPackage") && r.refused.CompareAndSwap(false, true) {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	}
	return r.base.RoundTrip(req)
}

// TestUnsentPostIsSentAgainAtOnce: a POST that never left (no connection)
// cannot have created an action: the next attempt sends it without looking
// and without waiting for it to settle.
func TestUnsentPostIsSentAgainAtOnce(t *testing.T) {
	t.Parallel()
	sim := newSim(t, defendertest.Options{PendingFor: time.Hour})
	rt := &refuseFirstCollect{base: http.DefaultTransport.(*http.Transport).Clone()}
	e := setup(t, envOpts{sim: sim, transport: rt}) // PostSettle: the default 5m
	e.submit(mdeAlert("da-unsent", defendertest.DevWorkstationID, "high"))
	got := e.waitEntry("da-unsent", func(en *audit.Entry) bool { return en.Outcome != "" })
	if got.Outcome != audit.Created || !rt.refused.Load() {
		t.Fatalf("entry = %+v (refused %v)", got, rt.refused.Load())
	}
	for _, r := range sim.Requests() {
		if r.Method == http.MethodGet && r.Path == "/api/machineactions" {
			t.Fatalf("looked for a request that was never sent: %s?%s", r.Path, r.RawQuery)
		}
	}
	if n := len(collectRequests(sim)); n != 1 {
		t.Fatalf("%d collect POSTs reached Defender, want 1", n)
	}
	if got.Posts != 2 {
		t.Fatalf("posts = %d, want 2 (the attempt that was not sent counts)", got.Posts)
	}
}
