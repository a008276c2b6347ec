package app

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/responder-dev/responder/defender"
	"github.com/responder-dev/responder/defender/defendertest"
	"github.com/responder-dev/responder/rules"
)

func loadRules(t *testing.T, src string) *rules.Set {
	t.Helper()
	path := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	set, err := rules.LoadFiles(path)
	if err != nil {
		t.Fatal(err)
	}
	return set
}

func TestNeededPermissions(t *testing.T) {
	set := loadRules(t, `
rules:
  - name: collect
    when: 'alert.severity == "high"'
  - name: isolate
    when: 'alert.severity == "critical"'
    action: isolate
  - name: scan-rehearsal
    when: 'alert.category == "Malware"'
    action: run_antivirus_scan
    dry_run: true
  - name: restrict-off
    when: 'alert.category == "Exploit"'
    action: restrict_code_execution
    enabled: false
  - name: dc
    when: '"dc" in machine.tags'
    action: ignore
`)
	for _, c := range []struct {
		name   string
		dryRun bool
		want   []string
	}{
		// Reads always; then the action of every enabled rule that may act.
		{"live", false, []string{defender.PermissionReadAll, defender.PermissionCollectForensics, defender.PermissionIsolate}},
		{"global dry run", true, []string{defender.PermissionReadAll}},
	} {
		if got := neededPermissions(set, c.dryRun); !slices.Equal(got, c.want) {
			t.Errorf("%s: needed = %v, want %v", c.name, got, c.want)
		}
	}
}

// TestPermissionCheck: the roles of a token are compared with what the
// rules need; the missing ones are logged loudly, and a later token with
// them is confirmed.
func TestPermissionCheck(t *testing.T) {
	set := loadRules(t, "rules:\n  - name: collect\n    when: 'true'\n")
	core, logs := observer.New(zap.InfoLevel)
	pc := &permissionCheck{log: zap.New(core), current: func() *rules.Set { return set }}

	pc.roles([]string{defender.PermissionReadAll})
	errs := logs.FilterLevelExact(zap.ErrorLevel).All()
	if len(errs) != 1 || !slices.Equal(errs[0].ContextMap()["missing"].([]any), []any{defender.PermissionCollectForensics}) {
		t.Fatalf("error lines = %+v", errs)
	}

	pc.roles([]string{"Machine.ReadWrite.All", defender.PermissionCollectForensics})
	if n := logs.FilterLevelExact(zap.ErrorLevel).Len(); n != 1 {
		t.Fatalf("%d error lines after the grant, want still 1", n)
	}
	if n := logs.FilterMessage("the Defender token grants the permissions the rules need").Len(); n != 1 {
		t.Fatalf("%d confirmation lines, want 1", n)
	}
}

// TestTokenCheckAtStart: the start-up token fetch runs the check against
// what the login endpoint (the simulator) really grants, and a login that
// fails is reported, not fatal.
func TestTokenCheckAtStart(t *testing.T) {
	set := loadRules(t, "rules:\n  - name: collect\n    when: 'true'\n")
	sim, _ := defendertest.NewServer(t, defendertest.DevOptions())
	sim.SetRoles(defendertest.RoleReadAll)
	core, logs := observer.New(zap.InfoLevel)
	log := zap.New(core)
	pc := &permissionCheck{log: log, current: func() *rules.Set { return set }}
	client := func(secret string) *defender.Client {
		c, err := defender.New(defender.Config{
			APIURL: sim.URL(), TokenURL: sim.TokenURL(), TenantID: defendertest.DevTenantID,
			ClientID: defendertest.DevClientID, ClientSecret: secret, UserAgent: "responder/test", Timeout: 5 * time.Second,
		}, nil, nil, defender.WithTokenRoles(pc.roles))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}

	checkTokenAtStart(context.Background(), client(defendertest.DevClientSecret), false, log)
	errs := logs.FilterLevelExact(zap.ErrorLevel).All()
	if len(errs) != 1 || !slices.Equal(errs[0].ContextMap()["missing"].([]any), []any{defender.PermissionCollectForensics}) {
		t.Fatalf("with only Machine.Read.All granted, error lines = %+v", errs)
	}

	// Refused credentials need an administrator: an error, not a warning.
	checkTokenAtStart(context.Background(), client("wrong-secret"), false, log)
	if n := logs.FilterMessage("Defender refused the credentials at start; alerts are accepted, but no action can be sent until they are fixed").FilterLevelExact(zap.ErrorLevel).Len(); n != 1 {
		t.Fatalf("a refused login logged %d errors, want 1: %+v", n, logs.All())
	}
	// An unreachable login endpoint is transient: a warning.
	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) }))
	defer down.Close()
	c, err := defender.New(defender.Config{
		APIURL: sim.URL(), TokenURL: down.URL, TenantID: defendertest.DevTenantID,
		ClientID: defendertest.DevClientID, ClientSecret: defendertest.DevClientSecret, UserAgent: "responder/test", Timeout: 5 * time.Second,
	}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkTokenAtStart(context.Background(), c, false, log)
	if n := logs.FilterMessage("cannot get a Defender token at start; alerts are accepted and calls will try again").FilterLevelExact(zap.WarnLevel).Len(); n != 1 {
		t.Fatalf("a login endpoint answering 503 logged %d warnings, want 1: %+v", n, logs.All())
	}
}
