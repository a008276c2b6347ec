package main

// End-to-end tests of the admin API's defaults and of the intake limits
// (issue 11): the real binary, its listeners and its configuration.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// e2eAllRules decides every alert with one rule that reads no machine
// attribute, so that a dry run records an audit entry per alert at once.
const e2eAllRules = "rules:\n  - name: everything\n    when: 'true'\n"

// TestAdminStartRefused: serve refuses to start, with one line naming the
// key or variable, when the admin API would be reachable without a token;
// check reports the same problem at its place in the file.
func TestAdminStartRefused(t *testing.T) {
	t.Parallel()
	base := []string{"RESPONDER_SERVER_LISTEN=127.0.0.1:0", "RESPONDER_WEBHOOKS_ALLOW_UNAUTHENTICATED=true", "RESPONDER_DEFENDER_DRY_RUN=true"}
	cases := []struct {
		name string
		env  []string
		want string
	}{
		{"default admin listener, every interface, no token", nil,
			`config: server.admin_listen: ":9090" is not loopback-only and no admin token is set`},
		{"admin API on the webhook listener without a token", []string{"RESPONDER_SERVER_ADMIN_LISTEN=", "RESPONDER_ADMIN_ALLOW_UNAUTHENTICATED=true"},
			`env RESPONDER_SERVER_ADMIN_LISTEN: server.admin_listen: is "", which serves the admin API on the webhook listener: that needs an admin token`},
		{"allow_unauthenticated off loopback", []string{"RESPONDER_SERVER_ADMIN_LISTEN=0.0.0.0:0", "RESPONDER_ADMIN_ALLOW_UNAUTHENTICATED=true"},
			`env RESPONDER_ADMIN_ALLOW_UNAUTHENTICATED: admin.allow_unauthenticated: is only accepted with a loopback-only server.admin_listen`},
		{"loopback without allow_unauthenticated", []string{"RESPONDER_SERVER_ADMIN_LISTEN=127.0.0.1:0"},
			`config: admin: no admin token is set`},
		{"admin token of blanks", []string{"RESPONDER_SERVER_ADMIN_LISTEN=0.0.0.0:0", "RESPONDER_ADMIN_BEARER_TOKEN=   "},
			`env RESPONDER_ADMIN_BEARER_TOKEN: is set but empty or blank`},
		{"empty admin token, even where none is needed", []string{"RESPONDER_SERVER_ADMIN_LISTEN=127.0.0.1:0", "RESPONDER_ADMIN_ALLOW_UNAUTHENTICATED=true", "RESPONDER_ADMIN_BEARER_TOKEN="},
			`env RESPONDER_ADMIN_BEARER_TOKEN: is set but empty or blank`},
		{"webhook token of blanks", []string{"RESPONDER_SERVER_ADMIN_LISTEN=127.0.0.1:0", "RESPONDER_ADMIN_ALLOW_UNAUTHENTICATED=true", "RESPONDER_WEBHOOKS_ALLOW_UNAUTHENTICATED=false", "RESPONDER_WEBHOOKS_BEARER_TOKEN= "},
			`env RESPONDER_WEBHOOKS_BEARER_TOKEN: is set but empty or blank`},
		{"--dev with the admin listener moved off loopback", []string{"RESPONDER_SERVER_ADMIN_LISTEN=0.0.0.0:0", "--dev"},
			`admin.allow_unauthenticated: is only accepted with a loopback-only server.admin_listen (an IP loopback address or localhost), not "0.0.0.0:0"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			args := []string{"serve"}
			env := append([]string{"PATH=" + os.Getenv("PATH")}, base...)
			for _, e := range tc.env {
				if e == "--dev" {
					args = append(args, e)
					continue
				}
				env = append(env, e)
			}
			cmd := exec.Command(binary, args...)
			cmd.Dir = t.TempDir()
			cmd.Env = env
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			done := make(chan error, 1)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				if code := exitCode(err); code != 1 {
					t.Fatalf("exit code %d, want 1; stderr %s", code, stderr.String())
				}
			case <-time.After(30 * time.Second):
				_ = cmd.Process.Kill()
				t.Fatalf("serve started: %s", stdout.String())
			}
			msg := strings.TrimSpace(stderr.String())
			if strings.Contains(msg, "\n") || !strings.Contains(msg, tc.want) {
				t.Fatalf("stderr = %q, want one line with %q", msg, tc.want)
			}
			if strings.Contains(stdout.String(), `"listening"`) {
				t.Fatal("a listener was opened before the refusal")
			}
		})
	}

	// check reports it at its place in the file.
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "responder.yaml")
	rules := filepath.Join(dir, "rules.yaml")
	if err := os.WriteFile(rules, []byte(e2eAllRules), 0o600); err != nil {
		t.Fatal(err)
	}
	cfgText := "server:\n  admin_listen: \"0.0.0.0:9090\"\nadmin:\n  allow_unauthenticated: true\nwebhooks:\n  allow_unauthenticated: true\nrules:\n  files: [rules.yaml]\ndefender:\n  dry_run: true\n"
	if err := os.WriteFile(cfgPath, []byte(cfgText), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary, "check", "--config", cfgPath)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	out, err := cmd.CombinedOutput()
	want := cfgPath + `:4:26: admin.allow_unauthenticated: is only accepted with a loopback-only server.admin_listen (an IP loopback address or localhost), not "0.0.0.0:9090"`
	if exitCode(err) != 1 || !strings.Contains(string(out), want) {
		t.Fatalf("check: exit %d\n%s\nwant %s", exitCode(err), out, want)
	}
}

// adminProc is a running responder with its admin address.
type adminProc struct {
	*proc
	admin, hook, dsn string
}

func startAdminProc(t *testing.T, extraEnv ...string) *adminProc {
	t.Helper()
	dir := t.TempDir()
	rules := filepath.Join(dir, "rules.yaml")
	if err := os.WriteFile(rules, []byte(e2eAllRules), 0o600); err != nil {
		t.Fatal(err)
	}
	dsn := filepath.Join(dir, "responder.db")
	p := startResponder(t, append([]string{
		"RESPONDER_SERVER_LISTEN=127.0.0.1:0",
		"RESPONDER_SERVER_ADMIN_LISTEN=127.0.0.1:0",
		"RESPONDER_WEBHOOKS_BEARER_TOKEN=" + e2eBearer,
		"RESPONDER_DEFENDER_DRY_RUN=true",
		"RESPONDER_RULES_FILES=" + rules,
		"RESPONDER_STORE_DSN=" + dsn,
	}, extraEnv...), "serve")
	t.Cleanup(func() {
		if t.Failed() {
			t.Log("stderr: " + p.stderr.String())
			for _, l := range p.output() {
				t.Log(l)
			}
		}
	})
	return &adminProc{proc: p, admin: "http://" + p.addr("admin"), hook: "http://" + p.addr("webhooks"), dsn: dsn}
}

// call sends one request; headers are name, value pairs ("Host" sets the
// Host header).
func call(t *testing.T, method, url, body string, headers ...string) (int, string) {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, r)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		if headers[i] == "Host" {
			req.Host = headers[i+1]
			continue
		}
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(raw))
}

// logLines returns the JSON log lines of p whose msg is msg.
func (p *adminProc) logLines(msg string) []map[string]any {
	var out []map[string]any
	for _, l := range p.output() {
		var rec map[string]any
		if json.Unmarshal([]byte(l), &rec) == nil && rec["msg"] == msg {
			out = append(out, rec)
		}
	}
	return out
}

// TestAdminTokenEndToEnd: with a token, the admin API refuses requests
// without it or with a wrong one (401), and logs every state change with
// the token's name and the peer.
func TestAdminTokenEndToEnd(t *testing.T) {
	t.Parallel()
	p := startAdminProc(t, "RESPONDER_ADMIN_BEARER_TOKEN="+e2eAdmin)
	good := []string{"Authorization", "Bearer " + e2eAdmin}
	for _, tc := range []struct {
		name    string
		headers []string
		code    int
	}{
		{"no token", nil, 401},
		{"wrong token", []string{"Authorization", "Bearer " + e2eAdmin + "x"}, 401},
		{"webhook token", []string{"Authorization", "Bearer " + e2eBearer}, 401},
		{"admin token", good, 200},
	} {
		for _, path := range []string{"/api/v1/actions", "/api/v1/pause", "/debug/pprof/cmdline"} {
			if code, body := call(t, http.MethodGet, p.admin+path, "", tc.headers...); code != tc.code {
				t.Errorf("%s: GET %s = %d %s, want %d", tc.name, path, code, body, tc.code)
			}
		}
		if code, _ := call(t, http.MethodPost, p.admin+"/api/v1/pause", "", tc.headers...); code != tc.code {
			t.Errorf("%s: POST /pause = %d, want %d", tc.name, code, tc.code)
		}
	}
	if code, _ := call(t, http.MethodGet, p.admin+"/metrics", ""); code != 200 {
		t.Errorf("/metrics needs no token: %d", code)
	}
	if code, body := call(t, http.MethodPost, p.admin+"/api/v1/resume", "", good...); code != 200 {
		t.Fatalf("resume: %d %s", code, body)
	}

	// The pause above and the resume are logged with by and remote_addr.
	for _, action := range []string{"pause", "resume"} {
		var found map[string]any
		waitUntil(t, "the "+action+" log line", func() bool {
			for _, l := range p.logLines("admin action") {
				if l["action"] == action {
					found = l
				}
			}
			return found != nil
		})
		if found["by"] != "admin" || !strings.HasPrefix(fmt.Sprint(found["remote_addr"]), "127.0.0.1:") {
			t.Fatalf("%s log line = %v, want by admin and remote_addr 127.0.0.1:port", action, found)
		}
	}
	// A reload through the API, and one on SIGHUP, say who asked.
	if code, body := call(t, http.MethodPost, p.admin+"/api/v1/reload", "", good...); code != 200 {
		t.Fatalf("reload: %d %s", code, body)
	}
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the SIGHUP reload in the log", func() bool {
		for _, l := range p.logLines("rules unchanged") {
			if l["by"] == "signal" {
				return true
			}
		}
		return false
	})
	// The API reload was logged before its answer, so before the SIGHUP one.
	var api map[string]any
	for _, l := range p.logLines("rules unchanged") {
		if l["by"] == "admin" {
			api = l
		}
	}
	if api == nil || !strings.HasPrefix(fmt.Sprint(api["remote_addr"]), "127.0.0.1:") {
		t.Fatalf("API reload log line = %v", p.logLines("rules unchanged"))
	}
	for _, l := range p.output() {
		if strings.Contains(l, e2eAdmin) {
			t.Fatalf("the admin token is in the log: %s", l)
		}
	}
}

// TestAdminLoopbackWithoutToken: on a loopback admin listener with
// admin.allow_unauthenticated, the API answers without a token, but a page
// in the operator's browser can neither flip the kill switch cross-site nor
// read the API through a rebound name.
func TestAdminLoopbackWithoutToken(t *testing.T) {
	t.Parallel()
	p := startAdminProc(t, "RESPONDER_ADMIN_ALLOW_UNAUTHENTICATED=true")
	if len(p.logLines("the admin API has no token (admin.allow_unauthenticated): any local user can pause, resume and reload")) != 1 {
		t.Error("no warning that the admin API has no token")
	}
	paused := func() string {
		t.Helper()
		code, body := call(t, http.MethodGet, p.admin+"/api/v1/pause", "")
		if code != 200 {
			t.Fatalf("GET /pause = %d %s", code, body)
		}
		return body
	}
	if got := paused(); got != `{"paused":false}` {
		t.Fatalf("kill switch at start: %s", got)
	}
	for _, tc := range []struct {
		name, body string
		headers    []string
		code       int
	}{
		{"form, text/plain", `{"x":1}`, []string{"Content-Type", "text/plain"}, 415},
		{"form, urlencoded", `a=b`, []string{"Content-Type", "application/x-www-form-urlencoded"}, 415},
		{"form, multipart", "--b--\r\n", []string{"Content-Type", "multipart/form-data; boundary=b"}, 415},
		{"no-cors fetch without a body, Origin", "", []string{"Origin", "https://evil.example"}, 403},
		{"no-cors fetch without a body, Sec-Fetch-Site", "", []string{"Sec-Fetch-Site", "cross-site"}, 403},
		{"JSON from another origin", `{}`, []string{"Content-Type", "application/json", "Origin", "http://evil.example"}, 403},
		{"rebound name", "", []string{"Host", "evil.example:9090"}, 403},
	} {
		code, body := call(t, http.MethodPost, p.admin+"/api/v1/pause", tc.body, tc.headers...)
		if code != tc.code {
			t.Errorf("%s: POST /pause = %d %s, want %d", tc.name, code, body, tc.code)
		}
		if got := paused(); got != `{"paused":false}` {
			t.Fatalf("%s: the kill switch changed: %s", tc.name, got)
		}
	}

	// DNS rebinding: a page whose name now points at 127.0.0.1 reads
	// nothing; an IP literal or localhost is served.
	code, body := call(t, http.MethodGet, p.admin+"/api/v1/actions", "", "Host", "attacker.example:"+port(p.admin))
	if code != 403 || !strings.Contains(body, "admin.allowed_hosts") {
		t.Fatalf("GET /actions with a rebound Host = %d %s, want 403 naming admin.allowed_hosts", code, body)
	}
	if code, _ := call(t, http.MethodGet, p.admin+"/debug/pprof/cmdline", "", "Host", "attacker.example"); code != 403 {
		t.Fatalf("pprof with a rebound Host = %d, want 403", code)
	}
	for _, host := range []string{"127.0.0.1:" + port(p.admin), "localhost:" + port(p.admin)} {
		if code, body := call(t, http.MethodGet, p.admin+"/api/v1/actions", "", "Host", host); code != 200 {
			t.Fatalf("GET /actions with Host %s = %d %s", host, code, body)
		}
	}
	if code, _ := call(t, http.MethodGet, p.admin+"/metrics", "", "Host", "prometheus-target.example"); code != 200 {
		t.Fatalf("/metrics with any Host = %d, want 200", code)
	}

	// curl -X POST (no body, no type) works, logged as unauthenticated.
	if code, body := call(t, http.MethodPost, p.admin+"/api/v1/pause", ""); code != 200 {
		t.Fatalf("POST /pause = %d %s", code, body)
	}
	if got := paused(); got != `{"paused":true}` {
		t.Fatalf("kill switch after pause: %s", got)
	}
	waitUntil(t, "the pause log line", func() bool { return len(p.logLines("admin action")) > 0 })
	lines := p.logLines("admin action")
	if len(lines) != 1 || lines[0]["action"] != "pause" || lines[0]["by"] != "unauthenticated" ||
		!strings.HasPrefix(fmt.Sprint(lines[0]["remote_addr"]), "127.0.0.1:") {
		t.Fatalf("admin action lines = %v", lines)
	}
	if n := len(p.logLines("admin request refused")); n != 9 {
		t.Errorf("%d refused admin requests logged, want 9", n)
	}
}

func port(url string) string {
	_, p, _ := net.SplitHostPort(strings.TrimPrefix(url, "http://"))
	return p
}

// TestAuditPagingEndToEnd pages through the audit trail with before_id on
// the API and with responder actions --before-id beside the running
// server.
func TestAuditPagingEndToEnd(t *testing.T) {
	t.Parallel()
	p := startAdminProc(t, "RESPONDER_ADMIN_BEARER_TOKEN="+e2eAdmin)
	auth := []string{"Authorization", "Bearer " + e2eAdmin}
	const n = 5
	for i := range n {
		body := fmt.Sprintf(`{"id":"da-page-%d","machineId":"1e5bc9d7e413ddd7902c2932e418702b84d0cc07","severity":"High"}`, i)
		if a := post(t, p.hook+"/webhooks/defender", []byte(body), map[string]string{"Authorization": "Bearer " + e2eBearer}); a.Code != 202 {
			t.Fatalf("alert %d: %v", i, a)
		}
	}
	type page struct {
		Actions []struct {
			ID      int64  `json:"id"`
			AlertID string `json:"alert_id"`
		} `json:"actions"`
		More         bool   `json:"more"`
		NextBeforeID *int64 `json:"next_before_id"`
	}
	get := func(query string) page {
		t.Helper()
		code, body := call(t, http.MethodGet, p.admin+"/api/v1/actions"+query, "", auth...)
		if code != 200 {
			t.Fatalf("GET /actions%s = %d %s", query, code, body)
		}
		var pg page
		if err := json.Unmarshal([]byte(body), &pg); err != nil {
			t.Fatal(err)
		}
		return pg
	}
	waitUntil(t, "an audit entry per alert", func() bool { return len(get("?limit=100").Actions) == n })
	// The alerts are decided concurrently: the order of the whole list is
	// the reference.
	var all []string
	for _, e := range get("?limit=100").Actions {
		all = append(all, e.AlertID)
	}

	var seen []string
	query := "?limit=2"
	for pages := 1; ; pages++ {
		pg := get(query)
		for _, e := range pg.Actions {
			seen = append(seen, e.AlertID)
		}
		if !pg.More {
			if pg.NextBeforeID != nil || pages != 3 {
				t.Fatalf("last page %d: %+v", pages, pg)
			}
			break
		}
		if pg.NextBeforeID == nil || *pg.NextBeforeID != pg.Actions[len(pg.Actions)-1].ID {
			t.Fatalf("page %d with more: %+v", pages, pg)
		}
		query = fmt.Sprintf("?limit=2&before_id=%d", *pg.NextBeforeID)
	}
	if strings.Join(seen, ",") != strings.Join(all, ",") {
		t.Fatalf("paged through %v, want %v", seen, all)
	}
	for _, bad := range []string{"?before_id=x", "?before_id=0", "?before_id=-1"} {
		if code, body := call(t, http.MethodGet, p.admin+"/api/v1/actions"+bad, "", auth...); code != 400 || !strings.Contains(body, "before_id") {
			t.Errorf("GET /actions%s = %d %s, want 400", bad, code, body)
		}
	}

	// The command, beside the running server.
	actions := func(args ...string) (string, string) {
		t.Helper()
		cmd := exec.Command(binary, append([]string{"actions"}, args...)...)
		cmd.Dir = t.TempDir()
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "RESPONDER_STORE_DSN=" + p.dsn}
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("responder actions %v: %v\n%s", args, err, stderr.String())
		}
		return stdout.String(), stderr.String()
	}
	first := get("?limit=2")
	stdout, stderr := actions("--limit", "2")
	want := fmt.Sprintf("more entries: next page with --before-id %d\n", *first.NextBeforeID)
	if stderr != want || !strings.Contains(stdout, all[0]+" ") || !strings.Contains(stdout, all[1]+" ") || strings.Contains(stdout, all[2]+" ") {
		t.Fatalf("actions --limit 2:\nstdout %s\nstderr %q, want %q", stdout, stderr, want)
	}
	stdout, stderr = actions("--limit", "2", "--before-id", fmt.Sprint(*first.NextBeforeID), "--json")
	var pg page
	if err := json.Unmarshal([]byte(stdout), &pg); err != nil || stderr != "" {
		t.Fatalf("actions --json: %v\n%s\n%s", err, stdout, stderr)
	}
	if len(pg.Actions) != 2 || pg.Actions[0].AlertID != all[2] || !pg.More || pg.NextBeforeID == nil {
		t.Fatalf("actions --json page 2: %s", stdout)
	}
	stdout, stderr = actions("--before-id", fmt.Sprint(*pg.NextBeforeID))
	if stderr != "" || !strings.Contains(stdout, all[4]+" ") || strings.Contains(stdout, all[3]+" ") {
		t.Fatalf("actions last page:\n%s\n%s", stdout, stderr)
	}
}

// TestOversizedContentLengthEndToEnd: a webhook announcing 10 GiB and
// sending one byte gets its 413 at once, long before read_timeout (30 s).
func TestOversizedContentLengthEndToEnd(t *testing.T) {
	t.Parallel()
	p := startAdminProc(t, "RESPONDER_ADMIN_BEARER_TOKEN="+e2eAdmin, "RESPONDER_SERVER_READ_TIMEOUT=30s")
	for _, tc := range []struct{ addr, path, auth string }{
		{p.addr("webhooks"), "/webhooks/defender", e2eBearer},
		{p.addr("admin"), "/api/v1/evaluate", e2eAdmin},
	} {
		conn, err := net.Dial("tcp", tc.addr)
		if err != nil {
			t.Fatal(err)
		}
		head := "POST " + tc.path + " HTTP/1.1\r\nHost: " + tc.addr + "\r\nAuthorization: Bearer " + tc.auth +
			"\r\nContent-Type: application/json\r\nContent-Length: 10737418240\r\n\r\n{"
		began := time.Now()
		if _, err := conn.Write([]byte(head)); err != nil {
			t.Fatal(err)
		}
		// A bound well under read_timeout, not a benchmark.
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("%s: no answer within 5s with read_timeout 30s: %v", tc.path, err)
		}
		resp.Body.Close()
		conn.Close()
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Fatalf("%s: answer %d, want 413", tc.path, resp.StatusCode)
		}
		t.Logf("%s: 413 after %s", tc.path, time.Since(began).Round(time.Millisecond))
	}
}
