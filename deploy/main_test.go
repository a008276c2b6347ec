package deploy_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/responder-dev/responder/internal/testkit"
)

// binary is the responder built once by TestMain; root is the repository.
var binary, root string

func TestMain(m *testing.M) {
	var err error
	if root, err = testkit.ModuleRoot(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(testkit.MainWithResponder(m, &binary))
}

// repoPath is a path inside the repository.
func repoPath(parts ...string) string {
	return filepath.Join(append([]string{root}, parts...)...)
}

// tool finds a program of Debian's prometheus package, or ends the test
// through testkit.Skip (a failure under .ci/run, which installs it).
func tool(t *testing.T, name string) string {
	t.Helper()
	return testkit.LookPath(t, name, "Debian's prometheus package: apt-get install -y prometheus, as .ci/run does")
}

// process is a program started by a test and stopped in t.Cleanup.
type process struct {
	name   string
	cmd    *exec.Cmd
	mu     sync.Mutex
	out    bytes.Buffer // stdout and stderr, for failure messages
	exited chan struct{}
	err    error
}

// start runs name with args and env (added to a minimal environment) and
// calls onLine for every line of its standard output. The process gets
// SIGTERM in t.Cleanup, then SIGKILL if it has not exited within 10 s.
func start(t *testing.T, name string, env []string, onLine func(string), args ...string) *process {
	t.Helper()
	p := &process{name: filepath.Base(name), exited: make(chan struct{})}
	p.cmd = exec.Command(name, args...)
	p.cmd.Dir = t.TempDir()
	// TMPDIR: --dev keeps its store there, so a killed process leaves
	// nothing behind.
	p.cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + p.cmd.Dir, "TMPDIR=" + t.TempDir()}, env...)
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p.cmd.Stderr = writerFunc(func(b []byte) (int, error) {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.out.Write(b)
	})
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.out.WriteString(line + "\n")
			p.mu.Unlock()
			if onLine != nil {
				onLine(line)
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			t.Logf("output of %s:\n%s", p.name, p.output())
		}
	})
	return p
}

func (p *process) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

// responder is a running `responder serve --dev`.
type responder struct {
	*process
	webhooks string // host:port of the webhook listener
	admin    string // host:port of the admin listener
}

// startResponder runs `responder serve --dev` on free loopback ports and
// waits until both listeners are up and it is ready.
func startResponder(t *testing.T) *responder {
	t.Helper()
	addrs := make(chan [2]string, 4)
	onLine := func(line string) {
		var l struct {
			Msg, Listener, Addr string
		}
		if json.Unmarshal([]byte(line), &l) == nil && l.Msg == "listening" {
			select {
			case addrs <- [2]string{l.Listener, l.Addr}:
			default:
			}
		}
	}
	p := start(t, binary, []string{
		"RESPONDER_SERVER_LISTEN=127.0.0.1:0",
		"RESPONDER_SERVER_ADMIN_LISTEN=127.0.0.1:0",
	}, onLine, "serve", "--dev")
	r := &responder{process: p}
	deadline := time.After(30 * time.Second)
	for r.webhooks == "" || r.admin == "" {
		select {
		case a := <-addrs:
			switch a[0] {
			case "webhooks":
				r.webhooks = a[1]
			case "admin":
				r.admin = a[1]
			}
		case <-p.exited:
			t.Fatalf("responder exited before listening: %v\n%s", p.err, p.output())
		case <-deadline:
			t.Fatalf("responder did not log both listen addresses within 30s:\n%s", p.output())
		}
	}
	testkit.WaitFor(t, 30*time.Second, "responder ready", func() (bool, string) {
		code, body, err := httpDo(http.MethodGet, "http://"+r.webhooks+"/readyz", "", nil)
		if err != nil {
			return false, err.Error()
		}
		return code == http.StatusOK, fmt.Sprintf("%d %s", code, body)
	})
	return r
}

var client = &http.Client{Timeout: 10 * time.Second}

// httpDo sends one request and returns the status and body.
func httpDo(method, url, contentType string, body []byte) (int, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b)), err
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
