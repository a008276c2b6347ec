package defender_test

// Conformance of the client against the project's Defender simulator: every
// row of SPEC section 7's outcome mapping, every token source, and every
// cloud's hosts and scope. The simulator enforces the documented contract
// (case-sensitive bodies, token audience and expiry, quotas), so a client
// that passes here talks to Microsoft correctly.

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"

	"github.com/responder-dev/responder/defender"
	"github.com/responder-dev/responder/defender/defendertest"
	"github.com/responder-dev/responder/internal/testkit"
	"github.com/responder-dev/responder/metrics"
)

const (
	ws  = defendertest.DevWorkstationID
	srv = defendertest.DevServerID
)

func newSimulator(t *testing.T, mutate func(*defendertest.Options)) (*defendertest.Simulator, *testkit.FakeClock) {
	t.Helper()
	clock := testkit.NewFakeClock(time.Now())
	o := defendertest.DevOptions()
	o.Now = clock.Now
	if mutate != nil {
		mutate(&o)
	}
	sim, _ := defendertest.NewServer(t, o)
	return sim, clock
}

func clientFor(t *testing.T, sim *defendertest.Simulator, mutate func(*defender.Config)) (*defender.Client, *metrics.Metrics) {
	t.Helper()
	cfg := defender.Config{
		APIURL: sim.URL(), TokenURL: sim.TokenURL(), TenantID: defendertest.DevTenantID,
		ClientID: defendertest.DevClientID, ClientSecret: defendertest.DevClientSecret,
		UserAgent: "responder/conformance", Timeout: 5 * time.Second,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	m := metrics.New(prometheus.NewRegistry())
	c, err := defender.New(cfg, m, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	return c, m
}

func outcome(err error) defender.Outcome {
	var de *defender.Error
	if errors.As(err, &de) {
		return de.Outcome
	}
	return ""
}

func TestConformanceOutcomeMapping(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("201 created", func(t *testing.T) {
		t.Parallel()
		sim, _ := newSimulator(t, nil)
		c, m := clientFor(t, sim, nil)
		a, err := c.CollectInvestigationPackage(ctx, ws, "Collect forensics due to alert da1")
		if err != nil {
			t.Fatal(err)
		}
		if a.Status != defender.StatusPending || a.Type != defender.TypeCollectInvestigationPackage || a.RequestorComment != "Collect forensics due to alert da1" {
			t.Fatalf("action = %+v", a)
		}
		if v := testutil.ToFloat64(m.DefenderRequests.WithLabelValues("collect_investigation_package", "201")); v != 1 {
			t.Fatalf("requests{201} = %v", v)
		}
		for _, r := range sim.Requests() {
			if r.UserAgent != "responder/conformance" {
				t.Fatalf("User-Agent %q on %s", r.UserAgent, r.Path)
			}
		}
	})

	t.Run("400 ActiveRequestAlreadyExists is already_running and the pending action is found", func(t *testing.T) {
		t.Parallel()
		sim, _ := newSimulator(t, nil)
		c, _ := clientFor(t, sim, nil)
		first, err := c.CollectInvestigationPackage(ctx, ws, "first")
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.CollectInvestigationPackage(ctx, ws, "second")
		if outcome(err) != defender.OutcomeAlreadyRunning {
			t.Fatalf("err = %v", err)
		}
		pending, found, err := c.PendingAction(ctx, ws, defender.TypeCollectInvestigationPackage)
		if err != nil || !found || pending.ID != first.ID {
			t.Fatalf("pending = %+v %v %v", pending, found, err)
		}
		n := 0
		for _, a := range sim.Actions() {
			if a.MachineID == ws {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("%d actions on the machine", n)
		}
	})

	t.Run("404 machine_not_found", func(t *testing.T) {
		t.Parallel()
		sim, _ := newSimulator(t, nil)
		c, _ := clientFor(t, sim, nil)
		_, err := c.CollectInvestigationPackage(ctx, strings.Repeat("ab", 20), "x")
		if outcome(err) != defender.OutcomeMachineNotFound {
			t.Fatalf("err = %v", err)
		}
		var de *defender.Error
		if !errors.As(err, &de) || de.Code != "ResourceNotFound" || de.Target == "" {
			t.Fatalf("MDE code and target not carried: %#v", de)
		}
		if _, err := c.GetMachine(ctx, strings.Repeat("cd", 20)); outcome(err) != defender.OutcomeMachineNotFound {
			t.Fatalf("GetMachine err = %v", err)
		}
		if _, err := c.FindMachineByName(ctx, "nobody.example.com"); outcome(err) != defender.OutcomeMachineNotFound {
			t.Fatalf("FindMachineByName err = %v", err)
		}
	})

	t.Run("403 forbidden without Machine.CollectForensics", func(t *testing.T) {
		t.Parallel()
		sim, _ := newSimulator(t, func(o *defendertest.Options) { o.DenyCollect = true })
		c, _ := clientFor(t, sim, nil)
		if _, err := c.CollectInvestigationPackage(ctx, ws, "x"); outcome(err) != defender.OutcomeForbidden {
			t.Fatalf("err = %v", err)
		}
		// Reading still works: only the permission of the action is missing.
		if _, err := c.GetMachine(ctx, ws); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("401 refreshes the token once", func(t *testing.T) {
		t.Parallel()
		sim, clock := newSimulator(t, nil)
		c, m := clientFor(t, sim, nil)
		if _, err := c.GetMachine(ctx, ws); err != nil {
			t.Fatal(err)
		}
		// The cached token expires on the simulator's clock before the
		// client's: the API answers 401, the client gets a new token.
		clock.Advance(2 * time.Hour)
		if _, err := c.GetMachine(ctx, ws); err != nil {
			t.Fatalf("after expiry: %v", err)
		}
		if v := testutil.ToFloat64(m.DefenderRequests.WithLabelValues("get_machine", "401")); v != 1 {
			t.Fatalf("get_machine 401s = %v, want exactly 1", v)
		}
		if v := testutil.ToFloat64(m.DefenderRequests.WithLabelValues("token", "200")); v != 2 {
			t.Fatalf("token requests = %v, want 2", v)
		}
	})

	t.Run("401 twice is unauthorized", func(t *testing.T) {
		t.Parallel()
		sim, _ := newSimulator(t, nil)
		sim.InjectFault(defendertest.Fault{PathPrefix: "/api/machines/", Status: 401})
		c, _ := clientFor(t, sim, nil)
		if _, err := c.GetMachine(ctx, ws); outcome(err) != defender.OutcomeUnauthorized {
			t.Fatalf("err = %v", err)
		}
		n := 0
		for _, r := range sim.Requests() {
			if strings.HasPrefix(r.Path, "/api/machines/") {
				n++
			}
		}
		if n != 2 {
			t.Fatalf("%d API requests, want 2 (one refresh, then give up)", n)
		}
	})

	t.Run("429 rate_limited carries Retry-After", func(t *testing.T) {
		t.Parallel()
		sim, _ := newSimulator(t, func(o *defendertest.Options) { o.QuotaPerMinute = 2 })
		c, _ := clientFor(t, sim, func(cfg *defender.Config) { cfg.RateLimit = defender.RateLimit{PerMinute: 1000, PerHour: 100000} })
		_, _ = c.GetMachine(ctx, ws)
		_, _ = c.GetMachine(ctx, srv)
		_, err := c.GetMachine(ctx, ws)
		var de *defender.Error
		if !errors.As(err, &de) || de.Outcome != defender.OutcomeRateLimited || de.RetryAfter < time.Second || de.RetryAfter > time.Minute {
			t.Fatalf("err = %#v", err)
		}
	})

	t.Run("5xx, timeouts and resets are retryable", func(t *testing.T) {
		t.Parallel()
		sim, _ := newSimulator(t, nil)
		c, _ := clientFor(t, sim, func(cfg *defender.Config) { cfg.Timeout = 200 * time.Millisecond })
		sim.InjectFault(defendertest.Fault{PathContains: "collectInvestigationPackage", Status: 503, Times: 1})
		if _, err := c.CollectInvestigationPackage(ctx, ws, "x"); outcome(err) != defender.OutcomeRetryable {
			t.Fatalf("503: %v", err)
		}
		sim.InjectFault(defendertest.Fault{PathContains: "collectInvestigationPackage", Drop: true, Times: 1})
		if _, err := c.CollectInvestigationPackage(ctx, ws, "x"); outcome(err) != defender.OutcomeRetryable {
			t.Fatalf("dropped: %v", err)
		}
		sim.InjectFault(defendertest.Fault{PathContains: "collectInvestigationPackage", Delay: 2 * time.Second, Times: 1})
		if _, err := c.CollectInvestigationPackage(ctx, ws, "x"); outcome(err) != defender.OutcomeRetryable {
			t.Fatalf("timeout: %v", err)
		}
	})

	t.Run("status progression to every terminal status", func(t *testing.T) {
		t.Parallel()
		for _, final := range []string{"Succeeded", "Failed", "TimeOut", "Cancelled"} {
			sim, clock := newSimulator(t, nil)
			sim.SetFinalStatus(ws, final)
			c, _ := clientFor(t, sim, nil)
			a, err := c.CollectInvestigationPackage(ctx, ws, "x")
			if err != nil {
				t.Fatal(err)
			}
			seen := []string{a.Status}
			for i := 0; i < 5 && !a.Terminal(); i++ {
				clock.Advance(3 * time.Second)
				if a, err = c.GetMachineAction(ctx, a.ID); err != nil {
					t.Fatal(err)
				}
				if seen[len(seen)-1] != a.Status {
					seen = append(seen, a.Status)
				}
			}
			if strings.Join(seen, ">") != "Pending>InProgress>"+final || a.LastUpdateTime.IsZero() {
				t.Fatalf("%s: statuses %v, action %+v", final, seen, a)
			}
		}
	})

	t.Run("package URI not ready, then quoted value trimmed, then downloaded", func(t *testing.T) {
		t.Parallel()
		sim, clock := newSimulator(t, nil)
		c, _ := clientFor(t, sim, nil)
		a, err := c.CollectInvestigationPackage(ctx, ws, "x")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.GetPackageURI(ctx, a.ID); outcome(err) != defender.OutcomeRetryable {
			t.Fatalf("before Succeeded: %v", err)
		}
		clock.Advance(time.Minute)
		uri, err := c.GetPackageURI(ctx, a.ID)
		if err != nil || strings.Contains(uri, `"`) || !strings.Contains(uri, "/safedownload/") {
			t.Fatalf("uri = %q, %v", uri, err)
		}
		dest := filepath.Join(t.TempDir(), "pkg.zip")
		size, sum, err := c.DownloadPackage(ctx, uri, dest)
		if err != nil || size == 0 || len(sum) != 64 {
			t.Fatalf("download: %d %q %v", size, sum, err)
		}
		if strings.Contains(err2str(err), "token=") {
			t.Fatal("signed URL in an error")
		}
	})

	t.Run("machine lookups", func(t *testing.T) {
		t.Parallel()
		sim, _ := newSimulator(t, nil)
		c, _ := clientFor(t, sim, nil)
		m, err := c.FindMachineByName(ctx, "ws-0142.corp.example.com")
		if err != nil || m.ID != ws {
			t.Fatalf("by name (two machines share it; the active, recent one wins): %+v %v", m, err)
		}
		got, err := c.GetMachine(ctx, defendertest.DevDomainControllerID)
		if err != nil || len(got.MachineTags) == 0 || got.MachineTags[0] != "domain-controller" || got.RBACGroupName != "Tier 0" {
			t.Fatalf("machine = %+v %v", got, err)
		}
	})
}

func err2str(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// newCertificate writes a self-signed RSA certificate and key, PEM.
func newCertificate(t *testing.T) (*x509.Certificate, []byte) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "responder"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	out := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	out = append(out, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})...)
	return cert, out
}

func TestConformanceTokenSources(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	cert, pemBytes := newCertificate(t)
	for _, alg := range []string{defender.AlgPS256, defender.AlgRS256} {
		t.Run("certificate "+alg, func(t *testing.T) {
			t.Parallel()
			sim, _ := newSimulator(t, func(o *defendertest.Options) { o.ClientSecret = ""; o.Certificate = cert })
			c, _ := clientFor(t, sim, func(cfg *defender.Config) {
				cfg.ClientSecret, cfg.CertificatePEM, cfg.CertificateAlg = "", pemBytes, alg
			})
			if _, err := c.CollectInvestigationPackage(ctx, ws, "cert"); err != nil {
				t.Fatal(err)
			}
		})
	}
	t.Run("wrong certificate", func(t *testing.T) {
		t.Parallel()
		other, _ := newCertificate(t)
		sim, _ := newSimulator(t, func(o *defendertest.Options) { o.ClientSecret = ""; o.Certificate = other })
		c, _ := clientFor(t, sim, func(cfg *defender.Config) { cfg.ClientSecret, cfg.CertificatePEM = "", pemBytes })
		if _, err := c.GetMachine(ctx, ws); outcome(err) != defender.OutcomeUnauthorized && outcome(err) != defender.OutcomePermanent {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("federated token file", func(t *testing.T) {
		t.Parallel()
		sim, _ := newSimulator(t, func(o *defendertest.Options) { o.ClientSecret = ""; o.FederatedToken = "eyJ.workload.identity" })
		file := filepath.Join(t.TempDir(), "token")
		if err := os.WriteFile(file, []byte("eyJ.workload.identity\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		c, _ := clientFor(t, sim, func(cfg *defender.Config) { cfg.ClientSecret, cfg.FederatedTokenFile = "", file })
		if _, err := c.GetMachine(ctx, ws); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("wrong secret", func(t *testing.T) {
		t.Parallel()
		sim, _ := newSimulator(t, nil)
		c, _ := clientFor(t, sim, func(cfg *defender.Config) { cfg.ClientSecret = "wrong-secret-value" })
		_, err := c.GetMachine(ctx, ws)
		if outcome(err) != defender.OutcomeUnauthorized && outcome(err) != defender.OutcomePermanent {
			t.Fatalf("err = %v", err)
		}
		if strings.Contains(err.Error(), "wrong-secret-value") {
			t.Fatalf("secret in error: %v", err)
		}
	})
}

func TestConformanceClouds(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, cloud := range defender.Clouds {
		t.Run(cloud, func(t *testing.T) {
			t.Parallel()
			api, _, scope, err := defender.Endpoints(cloud)
			if err != nil {
				t.Fatal(err)
			}
			host := strings.TrimSuffix(scope, "/.default")
			// The simulator plays that cloud's API: it issues tokens only for
			// its audience and refuses others on the API.
			sim, _ := newSimulator(t, func(o *defendertest.Options) { o.APIHost = host })
			c, _ := clientFor(t, sim, func(cfg *defender.Config) { cfg.Cloud = cloud })
			if _, err := c.CollectInvestigationPackage(ctx, ws, "cloud "+cloud); err != nil {
				t.Fatalf("%s (api %s, scope %s): %v", cloud, api, scope, err)
			}
			var form string
			for _, r := range sim.Requests() {
				if strings.Contains(r.Path, "/oauth2/v2.0/token") {
					form = string(r.Body)
				}
			}
			if !strings.Contains(form, "scope="+strings.ReplaceAll(strings.ReplaceAll(scope, ":", "%3A"), "/", "%2F")) {
				t.Fatalf("token request %q lacks scope %s", form, scope)
			}
		})
	}
	// A client of one cloud against another cloud's API is refused.
	sim, _ := newSimulator(t, func(o *defendertest.Options) { o.APIHost = "https://api-gov.securitycenter.microsoft.us" })
	c, _ := clientFor(t, sim, func(cfg *defender.Config) { cfg.Cloud = "commercial" })
	if _, err := c.GetMachine(ctx, ws); err == nil {
		t.Fatal("a commercial token was accepted by the gov API")
	}
}
