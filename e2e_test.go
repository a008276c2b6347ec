package main

// End-to-end tests: they build the real binary once and drive it over HTTP
// and signals, as a user or a sender would.

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/responder-dev/responder/internal/testkit"
)

// binary is the responder built once by TestMain.
var binary string

func TestMain(m *testing.M) { os.Exit(testkit.MainWithResponder(m, &binary)) }

// proc is a running responder.
type proc struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	lines  []string // stdout lines
	stderr syncBuffer
	addrs  map[string]string
	exited chan error
}

// syncBuffer is a bytes.Buffer that may be read while the process writes
// to it (a failing test logs it before the process is killed).
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startResponder runs the binary with args and env and waits until every
// listener it logs is up.
func startResponder(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{addrs: map[string]string{}, exited: make(chan error, 1)}
	p.cmd = exec.Command(binary, args...)
	p.cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}, env...)
	p.cmd.Dir = t.TempDir()
	p.cmd.Stderr = &p.stderr
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		signalled := false
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.lines = append(p.lines, line)
			var rec map[string]any
			if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == "listening" {
				p.addrs[rec["listener"].(string)] = rec["addr"].(string)
			}
			if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == "responder starting" && !signalled {
				signalled = true
				close(ready)
			}
			p.mu.Unlock()
		}
		p.exited <- p.cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
	})
	select {
	case <-ready:
	case err := <-p.exited:
		t.Fatalf("responder exited early: %v\nstderr: %s\nstdout: %s", err, p.stderr.String(), strings.Join(p.lines, "\n"))
	case <-time.After(30 * time.Second):
		t.Fatal("responder did not start within 30s")
	}
	// The listeners are logged before "responder starting".
	testkit.WaitUntil(t, 10*time.Second, "the logged listeners to accept connections", func() bool {
		p.mu.Lock()
		n := len(p.addrs)
		p.mu.Unlock()
		return n > 0 && p.addrReady()
	})
	return p
}

func (p *proc) addrReady() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, a := range p.addrs {
		c, err := net.DialTimeout("tcp", a, time.Second)
		if err != nil {
			return false
		}
		c.Close()
	}
	return true
}

func (p *proc) addr(name string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.addrs[name]
}

func (p *proc) output() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.lines...)
}

type answer struct {
	Code int
	Body map[string]any
}

func post(t *testing.T, url string, body []byte, headers map[string]string) answer {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("posting %d bytes: %v", len(body), err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	a := answer{Code: resp.StatusCode}
	if err := json.Unmarshal(raw, &a.Body); err != nil {
		t.Fatalf("answer is not JSON: %q", raw)
	}
	return a
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

const (
	e2eBearer = "e2e-webhook-bearer-0123456789"
	e2eHMAC   = "e2e-grafana-hmac-secret"
	e2eAdmin  = "e2e-admin-token-9876543210"
)

func TestIntakeEndToEnd(t *testing.T) {
	t.Parallel()
	p := startResponder(t, []string{
		"RESPONDER_SERVER_LISTEN=127.0.0.1:0",
		"RESPONDER_SERVER_ADMIN_LISTEN=127.0.0.1:0",
		"RESPONDER_WEBHOOKS_BEARER_TOKEN=" + e2eBearer,
		"RESPONDER_ADMIN_BEARER_TOKEN=" + e2eAdmin,
		"RESPONDER_DEFENDER_DRY_RUN=true",
		"RESPONDER_RULES_FILES=" + mustAbs(t, "examples/rules.yaml"),
	}, "serve")
	hook := "http://" + p.addr("webhooks")
	bearer := map[string]string{"Authorization": "Bearer " + e2eBearer}

	cases := []struct {
		name, endpoint, file string
		headers              map[string]string
		code                 int
		accepted             float64
	}{
		{"defender v1 single", "defender", "alert/testdata/defender-v1-single.json", bearer, 202, 1},
		{"defender v1 array", "defender", "alert/testdata/defender-v1-array.json", bearer, 202, -1},
		{"defender value envelope", "defender", "alert/testdata/defender-v1-value-envelope.json", bearer, 202, -1},
		{"graph two devices", "defender", "alert/testdata/graph-alerts-v2-two-devices.json", bearer, 202, 2},
		{"alertmanager", "alertmanager", "alert/testdata/alertmanager-firing-resolved.json", bearer, 202, -1},
		{"grafana", "alertmanager", "alert/testdata/grafana-v1.json", bearer, 202, -1},
		{"no auth", "defender", "alert/testdata/defender-v1-single.json", nil, 401, -1},
		{"wrong auth", "defender", "alert/testdata/defender-v1-single.json", map[string]string{"Authorization": "Bearer wrong"}, 401, -1},
	}
	for _, tc := range cases {
		a := post(t, hook+"/webhooks/"+tc.endpoint, readFile(t, tc.file), tc.headers)
		if a.Code != tc.code {
			t.Fatalf("%s: code = %d, want %d (%v)", tc.name, a.Code, tc.code, a.Body)
		}
		if tc.code == 202 {
			for _, k := range []string{"received", "accepted", "duplicates", "ignored"} {
				if _, ok := a.Body[k]; !ok {
					t.Fatalf("%s: answer lacks %q: %v", tc.name, k, a.Body)
				}
			}
			if tc.accepted >= 0 && a.Body["accepted"] != tc.accepted {
				t.Fatalf("%s: accepted = %v, want %v", tc.name, a.Body["accepted"], tc.accepted)
			}
		}
	}
	// The same alert again is a duplicate.
	if a := post(t, hook+"/webhooks/defender", readFile(t, "alert/testdata/defender-v1-single.json"), bearer); a.Body["duplicates"] != 1.0 {
		t.Fatalf("redelivery: %v", a.Body)
	}
	// Bad input classes.
	if a := post(t, hook+"/webhooks/defender", []byte(`{"id": 12`), bearer); a.Code != 400 || a.Body["error"] == "" {
		t.Fatalf("not JSON: %v", a)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log("stderr: " + p.stderr.String())
			for _, l := range p.output() {
				if !strings.Contains(l, `"level":"info"`) {
					t.Log(l)
				}
			}
		}
	})
	if a := post(t, hook+"/webhooks/defender", bytes.Repeat([]byte(" "), 2<<20), bearer); a.Code != 413 {
		t.Fatalf("oversized: %v", a)
	}
	if a := post(t, hook+"/webhooks/defender", []byte(`{}`), map[string]string{"Authorization": "Bearer " + e2eBearer, "Content-Type": "text/plain"}); a.Code != 415 {
		t.Fatalf("content type: %v", a)
	}

	// Metrics on the admin port, with the SPEC names.
	resp, err := http.Get("http://" + p.addr("admin") + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	metrics := string(raw)
	for _, want := range []string{
		`responder_webhook_requests_total{code="202",source="defender"} 5`,
		`responder_webhook_requests_total{code="401",source="defender"} 2`,
		`responder_alerts_received_total{outcome="duplicate",source="defender"} 1`,
		`responder_alerts_received_total{outcome="accepted",source="graph"} 2`,
		`responder_build_info{`,
		`process_resident_memory_bytes`,
		`go_goroutines`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if code := getCode(t, "http://"+p.addr("webhooks")+"/metrics"); code != 404 {
		t.Errorf("/metrics is served on the webhook port: %d", code)
	}

	// Stop, then check stdout: JSON lines only, no secret.
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	if err := <-p.exited; err != nil {
		t.Fatalf("exit after SIGTERM: %v (stderr %s)", err, p.stderr.String())
	}
	for _, line := range p.output() {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("stdout line is not JSON: %q", line)
		}
		for _, k := range []string{"ts", "level", "msg"} {
			if _, ok := rec[k]; !ok {
				t.Fatalf("log line lacks %q: %s", k, line)
			}
		}
		for _, secret := range []string{e2eBearer, e2eAdmin, "Bearer wrong"} {
			if strings.Contains(line, secret) {
				t.Fatalf("log line leaks a secret: %s", line)
			}
		}
	}
}

func TestGrafanaHMACEndToEnd(t *testing.T) {
	t.Parallel()
	p := startResponder(t, []string{
		"RESPONDER_SERVER_LISTEN=127.0.0.1:0",
		"RESPONDER_SERVER_ADMIN_LISTEN=",
		"RESPONDER_ADMIN_BEARER_TOKEN=" + e2eAdmin, // the admin API on the webhook listener needs one
		"RESPONDER_WEBHOOKS_HMAC_SECRET=" + e2eHMAC,
		"RESPONDER_WEBHOOKS_HMAC_TIMESTAMP_HEADER=X-Grafana-Alerting-Timestamp",
		"RESPONDER_DEFENDER_DRY_RUN=true",
		"RESPONDER_RULES_FILES=" + mustAbs(t, "examples/rules.yaml"),
	}, "serve")
	body := readFile(t, "alert/testdata/grafana-v1.json")
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	mac := hmac.New(sha256.New, []byte(e2eHMAC))
	mac.Write([]byte(ts + ":"))
	mac.Write(body)
	url := "http://" + p.addr("webhooks") + "/webhooks/alertmanager"
	good := map[string]string{"X-Grafana-Alerting-Signature": hex.EncodeToString(mac.Sum(nil)), "X-Grafana-Alerting-Timestamp": ts}
	if a := post(t, url, body, good); a.Code != 202 {
		t.Fatalf("signed: %v", a)
	}
	bad := map[string]string{"X-Grafana-Alerting-Signature": hex.EncodeToString(mac.Sum(nil)), "X-Grafana-Alerting-Timestamp": strconv.FormatInt(time.Now().Add(-time.Hour).Unix(), 10)}
	if a := post(t, url, body, bad); a.Code != 401 {
		t.Fatalf("stale timestamp: %v", a)
	}
	if a := post(t, url, body, nil); a.Code != 401 {
		t.Fatalf("unsigned: %v", a)
	}
}

func TestServeRefusesBadStart(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		env  []string
		want string
	}{
		{"no webhook auth", []string{"RESPONDER_DEFENDER_DRY_RUN=true"}, "no webhook authentication is configured"},
		{"no credential", []string{"RESPONDER_WEBHOOKS_ALLOW_UNAUTHENTICATED=true", "RESPONDER_DEFENDER_TENANT_ID=t", "RESPONDER_DEFENDER_CLIENT_ID=c"}, "no Defender credential"},
		{"bad duration", []string{"RESPONDER_WEBHOOKS_ALLOW_UNAUTHENTICATED=true", "RESPONDER_DEFENDER_DRY_RUN=true", "RESPONDER_SERVER_READ_TIMEOUT=10"}, "env RESPONDER_SERVER_READ_TIMEOUT: server.read_timeout: invalid duration"},
	}
	for _, tc := range cases {
		cmd := exec.Command(binary, "serve")
		cmd.Dir = t.TempDir()
		cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, tc.env...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		if err == nil {
			t.Fatalf("%s: serve started", tc.name)
		}
		msg := stderr.String()
		if strings.Count(strings.TrimSpace(msg), "\n") != 0 || !strings.Contains(msg, tc.want) {
			t.Fatalf("%s: stderr = %q, want one line with %q", tc.name, msg, tc.want)
		}
	}
}

func TestCheckAndVersion(t *testing.T) {
	t.Parallel()
	out, err := exec.Command(binary, "version").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "responder ") || !strings.Contains(string(out), "go1.") {
		t.Fatalf("version: %v %s", err, out)
	}
	out, err = exec.Command(binary, "check", "--config", "examples/responder.yaml").CombinedOutput()
	if err != nil {
		t.Fatalf("check of the example config: %v\n%s", err, out)
	}
	out, err = exec.Command(binary, "check", "--config", "config/testdata/invalid-unknown-key-deep.yaml").CombinedOutput()
	if code := exitCode(err); code != 1 || !strings.Contains(string(out), "config/testdata/invalid-unknown-key-deep.yaml:5:5: webhooks.basic_auth.pasword_file: unknown key") {
		t.Fatalf("check of a bad config: exit %d\n%s", code, out)
	}
}

func TestSIGTERMDuringSlowRequest(t *testing.T) {
	t.Parallel()
	p := startResponder(t, []string{
		"RESPONDER_SERVER_LISTEN=127.0.0.1:0",
		"RESPONDER_SERVER_ADMIN_LISTEN=127.0.0.1:0",
		"RESPONDER_ADMIN_ALLOW_UNAUTHENTICATED=true", // pprof below, on loopback
		"RESPONDER_WEBHOOKS_ALLOW_UNAUTHENTICATED=true",
		"RESPONDER_DEFENDER_DRY_RUN=true",
		"RESPONDER_RULES_FILES=" + mustAbs(t, "examples/rules.yaml"),
	}, "serve")
	body := readFile(t, "alert/testdata/defender-v1-single.json")
	conn, err := net.Dial("tcp", p.addr("webhooks"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	head := fmt.Sprintf("POST /webhooks/defender HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", len(body))
	if _, err := conn.Write(append([]byte(head), body[:20]...)); err != nil {
		t.Fatal(err)
	}
	// Signal only once the handler is reading our body: its goroutine shows
	// in the admin listener's goroutine dump.
	testkit.WaitUntil(t, 10*time.Second, "the slow request to reach the handler", func() bool {
		resp, err := http.Get("http://" + p.addr("admin") + "/debug/pprof/goroutine?debug=2")
		if err != nil {
			t.Fatal(err)
		}
		dump, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return bytes.Contains(dump, []byte("handlers.(*Webhooks).serve"))
	})
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(body[20:]); err != nil {
		t.Fatalf("writing the rest of the body after SIGTERM: %v", err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, _ := io.ReadAll(conn)
	if !strings.HasPrefix(string(resp), "HTTP/1.1 202") {
		t.Fatalf("slow request answer = %q", resp)
	}
	select {
	case err := <-p.exited:
		if err != nil {
			t.Fatalf("exit: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("did not exit after SIGTERM")
	}
}

func getCode(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}

func mustAbs(t *testing.T, p string) string {
	t.Helper()
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
