package app

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/responder-dev/responder/config"
	"github.com/responder-dev/responder/defender"
)

// TestNewDefenderPackageSettings: defender.package_hosts and
// defender.max_package_bytes reach the client serve builds.
func TestNewDefenderPackageSettings(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(strings.Repeat("P", 100)))
	}))
	t.Cleanup(srv.Close)
	cfg := config.Default()
	d := &cfg.Defender
	d.APIURL, d.TokenURL = srv.URL, srv.URL+"/token"
	d.TenantID, d.ClientID = "contoso.onmicrosoft.com", "client"
	cfg.Secrets.DefenderClientSecret = "secret"
	d.MaxPackageBytes = 10
	d.PackageHosts = []string{"storage.example.com"}
	c, err := newDefender(cfg, nil, nil, zap.NewNop(), nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// The API host serves it (as the simulator does): over the 10-byte cap.
	_, _, err = c.DownloadPackage(context.Background(), srv.URL+"/safedownload/p.zip?token=x", filepath.Join(dir, "p.zip"))
	if err == nil || !strings.Contains(err.Error(), "package larger than defender.max_package_bytes (10 bytes)") {
		t.Errorf("over the cap: %v", err)
	}
	// The configured list replaces the cloud's default.
	_, _, err = c.DownloadPackage(context.Background(), "https://userrequests-us.securitycenter.windows.com/safedownload/p.zip?token=x", filepath.Join(dir, "p.zip"))
	if !errors.Is(err, defender.ErrPackageHostRefused) {
		t.Errorf("default host: %v", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("files left: %v", entries)
	}
}
