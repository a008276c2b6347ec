package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/responder-dev/responder/config"
	"github.com/responder-dev/responder/defender/defendertest"
	"github.com/responder-dev/responder/examples"
)

// devEnvironment is what serve --dev runs beside the responder: a temporary
// directory with the SQLite store and the example rules, and the built-in
// Defender simulator on a loopback port.
type devEnvironment struct {
	dir  string
	sim  *defendertest.Simulator
	done chan error
	stop context.CancelFunc
}

// devRulesFile is the example rules file of the --dev directory dir, in a
// directory of its own: the rules watcher is told of every write in the
// directory it watches, and the store beside it writes at every commit.
func devRulesFile(dir string) string { return filepath.Join(dir, "rules", "rules.yaml") }

// startDev starts the simulator and prepares the temporary directory.
func startDev(ctx context.Context) (*devEnvironment, error) {
	dir, err := os.MkdirTemp("", "responder-dev-")
	if err != nil {
		return nil, err
	}
	if err := os.Mkdir(filepath.Dir(devRulesFile(dir)), 0o700); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	if err := os.WriteFile(devRulesFile(dir), examples.Rules, 0o600); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("starting the Defender simulator: %w", err)
	}
	opts := defendertest.DevOptions()
	opts.PendingFor, opts.InProgressFor = 3*time.Second, 7*time.Second
	sim := defendertest.New(opts)
	sim.SetURL("http://" + ln.Addr().String())
	// The sample alert exists in the simulator, so that the write-back's
	// comment lands on it.
	sim.AddAlert(defendertest.Alert{ID: devSampleAlertID, MachineID: defendertest.DevWorkstationID, ComputerDNSName: "ws-0142.corp.example.com",
		Title: "Ransomware behavior detected", Severity: "High", Status: "New", Category: "Ransomware", DetectionSource: "WindowsDefenderAtp",
		CreationTime: time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)})
	simCtx, cancel := context.WithCancel(ctx)
	d := &devEnvironment{dir: dir, sim: sim, done: make(chan error, 1), stop: cancel}
	go func() { d.done <- sim.Serve(simCtx, ln) }()
	return d, nil
}

// config is the base configuration of --dev; RESPONDER_* variables and a
// --config file still apply on top.
func (d *devEnvironment) config() *config.Config {
	c := config.Default()
	c.Server.Listen = "127.0.0.1:8080"
	c.Server.AdminListen = "127.0.0.1:9090"
	c.Webhooks.AllowUnauthenticated = true
	// On these loopback listeners only: config refuses it if RESPONDER_*
	// moves the admin listener elsewhere without an admin token.
	c.Admin.AllowUnauthenticated = true
	c.Store.DSN = filepath.Join(d.dir, "responder.db")
	c.Rules.Files = []string{devRulesFile(d.dir)}
	c.Defender.APIURL = d.sim.URL()
	c.Defender.TokenURL = d.sim.TokenURL()
	c.Defender.TenantID = defendertest.DevTenantID
	c.Defender.ClientID = defendertest.DevClientID
	c.Secrets.DefenderClientSecret = defendertest.DevClientSecret
	c.Defender.PollInterval = 2 * time.Second
	c.Defender.DownloadDir = filepath.Join(d.dir, "packages")
	// The whole loop: each event is logged by the dev-log notifier, and
	// the alert gets a comment when its action ends.
	c.Defender.WriteBack = true
	c.Defender.GraphURL = d.sim.URL()
	return c
}

// Close stops the simulator and removes the temporary directory.
func (d *devEnvironment) Close() {
	d.stop()
	if err := <-d.done; err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "responder: Defender simulator:", err)
	}
	_ = os.RemoveAll(d.dir)
}

// selfName is how to run this binary again from a shell.
func selfName() string {
	exe, err := os.Executable()
	if err != nil || strings.Contains(exe, "go-build") {
		return "go run ." // started with go run
	}
	return exe
}

// devSampleAlertID is the id of the sample alert.
const devSampleAlertID = "da637472900382838869_1364969609"

// devSampleAlert is the MDE alert that the printed curl line posts: a
// ransomware alert on the simulator's workstation.
const devSampleAlert = `{"id":"` + devSampleAlertID + `","machineId":"` + defendertest.DevWorkstationID + `","computerDnsName":"ws-0142.corp.example.com","severity":"High","status":"New","category":"Ransomware","title":"Ransomware behavior detected","detectionSource":"WindowsDefenderAtp","alertCreationTime":"2026-11-26T10:00:00Z"}`

// printDevHelp tells a newcomer how to send the dev server an alert.
func printDevHelp(w io.Writer, addrs map[string]string, dsn string) {
	hook := addrs["webhooks"]
	admin := addrs["admin"]
	if admin == "" {
		admin = hook
	}
	fmt.Fprintf(w, `
responder is running in --dev mode with the built-in Defender simulator.
Send it a sample Microsoft Defender alert:

  curl -sS -H 'Content-Type: application/json' -d '%s' http://%s/webhooks/defender

Then watch the collection in this log (the dev-log notifier prints each
notification; the alert gets a comment in the simulator when the action
ends), in the audit trail with its notifications:

  curl -sS http://%s/api/v1/actions
  RESPONDER_STORE_DSN=%s %s actions

and in the metrics at http://%s/metrics

See what a rule change would have done to the alerts received so far:

  cp %s candidate.yaml   # edit a rule, then
  RESPONDER_STORE_DSN=%s %s replay --rules candidate.yaml --since 1h

`, devSampleAlert, hook, admin, dsn, selfName(), admin, devRulesFile(filepath.Dir(dsn)), dsn, selfName())
}
