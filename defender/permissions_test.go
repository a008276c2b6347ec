package defender_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/responder-dev/responder/defender"
	"github.com/responder-dev/responder/defender/defendertest"
	"github.com/responder-dev/responder/metrics"
)

func TestMissingPermissions(t *testing.T) {
	for _, c := range []struct {
		name          string
		roles, needed []string
		want          []string
	}{
		{"all granted", defendertest.DefaultRoles, []string{defender.PermissionReadAll, defender.PermissionCollectForensics}, nil},
		{"collect missing", []string{defender.PermissionReadAll}, []string{defender.PermissionReadAll, defender.PermissionCollectForensics}, []string{defender.PermissionCollectForensics}},
		{"read-write grants read", []string{"Machine.ReadWrite.All", defender.PermissionCollectForensics}, []string{defender.PermissionReadAll, defender.PermissionCollectForensics}, nil},
		{"nothing granted", []string{}, []string{defender.PermissionReadAll, defender.PermissionIsolate}, []string{defender.PermissionReadAll, defender.PermissionIsolate}},
		{"case matters", []string{"machine.collectforensics", defender.PermissionReadAll}, []string{defender.PermissionCollectForensics}, []string{defender.PermissionCollectForensics}},
		{"alert write granted", []string{"Alert.ReadWrite.All"}, []string{defender.PermissionAlertReadWrite}, nil},
		{"alert write, update-alert page spelling", []string{"Alerts.ReadWrite.All"}, []string{defender.PermissionAlertReadWrite}, nil},
		{"alert read does not grant write", []string{"Alert.Read.All"}, []string{defender.PermissionAlertReadWrite}, []string{defender.PermissionAlertReadWrite}},
		{"no alias for other permissions", []string{"Alerts.ReadWrite.All", ""}, []string{defender.PermissionCollectForensics}, []string{defender.PermissionCollectForensics}},
		{"graph permission", []string{"SecurityAlert.ReadWrite.All"}, []string{defender.PermissionSecurityAlertReadWrite}, nil},
		{"graph read does not grant write", []string{"SecurityAlert.Read.All"}, []string{defender.PermissionSecurityAlertReadWrite}, []string{defender.PermissionSecurityAlertReadWrite}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := defender.MissingPermissions(c.roles, c.needed); !slices.Equal(got, c.want) {
				t.Fatalf("MissingPermissions(%v, %v) = %v, want %v", c.roles, c.needed, got, c.want)
			}
		})
	}
}

// TestTokenRolesHook: the roles of each new token reach the WithTokenRoles
// hook, once per token fetched, as the simulator grants them.
func TestTokenRolesHook(t *testing.T) {
	t.Parallel()
	sim, _ := newSimulator(t, nil)
	sim.SetRoles(defendertest.RoleReadAll)
	var mu sync.Mutex
	var seen [][]string
	cfg := defender.Config{
		APIURL: sim.URL(), TokenURL: sim.TokenURL(), TenantID: defendertest.DevTenantID,
		ClientID: defendertest.DevClientID, ClientSecret: defendertest.DevClientSecret,
		UserAgent: "responder/test", Timeout: 5 * time.Second,
	}
	c, err := defender.New(cfg, metrics.New(prometheus.NewRegistry()), zap.NewNop(), defender.WithTokenRoles(func(roles []string) {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, roles)
	}))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := c.CheckToken(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.CheckToken(ctx); err != nil { // cached: no second fetch
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 1 || !slices.Equal(seen[0], []string{defendertest.RoleReadAll}) {
		t.Fatalf("hook saw %v, want one call with [%s]", seen, defendertest.RoleReadAll)
	}
}
