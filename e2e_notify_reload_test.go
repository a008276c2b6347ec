package main

// End-to-end test of the notifiers' hot reload (SPEC 13: the notify list
// reloads with the rules).

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/responder-dev/responder/defender/defendertest"
	"github.com/responder-dev/responder/notify"
)

// hookReceiver records the events a webhook notifier delivers.
type hookReceiver struct {
	*httptest.Server
	mu     sync.Mutex
	events []notify.Event
}

func newHookReceiver(t *testing.T) *hookReceiver {
	r := &hookReceiver{}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		var ev notify.Event
		if err := json.Unmarshal(body, &ev); err != nil {
			http.Error(w, "bad json", http.StatusBadRequest)
			return
		}
		r.mu.Lock()
		r.events = append(r.events, ev)
		r.mu.Unlock()
	}))
	t.Cleanup(r.Close)
	return r
}

// got lists the events received as "kind alert-id".
func (r *hookReceiver) got() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, ev := range r.events {
		id := ""
		if ev.Alert != nil {
			id = ev.Alert.ID
		}
		out = append(out, string(ev.Kind)+" "+id)
	}
	return out
}

// TestNotifiersReloadWithTheRules: POST /api/v1/reload puts a changed
// notify list in force for the events raised after it; a list with a
// problem is refused and the notifiers in force stay.
func TestNotifiersReloadWithTheRules(t *testing.T) {
	t.Parallel()
	a, b := newHookReceiver(t), newHookReceiver(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "responder.yaml")
	write := func(notifiers string) {
		t.Helper()
		if err := os.WriteFile(cfg, []byte("notify:\n"+notifiers), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	hook := func(name, url string) string {
		return fmt.Sprintf("  - name: %s\n    type: webhook\n    url: %s\n    events: [decided]\n", name, url)
	}
	write(hook("a", a.URL))
	p := startResponder(t, []string{"RESPONDER_SERVER_LISTEN=127.0.0.1:0", "RESPONDER_SERVER_ADMIN_LISTEN=127.0.0.1:0"},
		"serve", "--dev", "--config", cfg)
	hookURL, admin := "http://"+p.addr("webhooks")+"/webhooks/defender", "http://"+p.addr("admin")
	send := func(id, machine string) {
		t.Helper()
		body := fmt.Sprintf(`{"id":%q,"machineId":%q,"severity":"High","status":"New","category":"Ransomware","title":"reload"}`, id, machine)
		if ans := post(t, hookURL, []byte(body), nil); ans.Code != 202 {
			t.Fatalf("alert %s: %v", id, ans)
		}
	}

	send("da-reload-1", defendertest.DevWorkstationID)
	waitUntil(t, "a's decided event", func() bool { return len(a.got()) == 1 })

	write(hook("b", b.URL))
	if code, body := call(t, http.MethodPost, admin+"/api/v1/reload", ""); code != 200 {
		t.Fatalf("reload: %d %s", code, body)
	}
	send("da-reload-2", defendertest.DevServerID)
	waitUntil(t, "b's decided event", func() bool { return len(b.got()) == 1 })

	write("  - name: Bad Name\n    type: pager\n")
	if code, body := call(t, http.MethodPost, admin+"/api/v1/reload", ""); code == 200 {
		t.Fatalf("reload of a bad list: %d %s", code, body)
	}
	send("da-reload-3", defendertest.DevStaleDuplicateID)
	waitUntil(t, "b's second decided event", func() bool { return len(b.got()) == 2 })

	if got := a.got(); len(got) != 1 || got[0] != "decided da-reload-1" {
		t.Fatalf("a got %v, want only the event before the reload", got)
	}
	if got := b.got(); got[0] != "decided da-reload-2" || got[1] != "decided da-reload-3" {
		t.Fatalf("b got %v", got)
	}
}
