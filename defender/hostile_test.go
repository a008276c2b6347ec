package defender

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/responder-dev/responder/internal/loopback"
)

// recorder is a server that must receive nothing: it counts requests and
// keeps their Authorization headers and bodies.
type recorder struct {
	srv   *httptest.Server
	n     atomic.Int64
	mu    sync.Mutex
	seen  []string
	bodys []string
}

func newRecorder(t *testing.T, tls bool) *recorder {
	t.Helper()
	rec := &recorder{}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rec.n.Add(1)
		rec.mu.Lock()
		rec.seen = append(rec.seen, r.Header.Get("Authorization"))
		rec.bodys = append(rec.bodys, string(body))
		rec.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"token_type":"Bearer","expires_in":3599,"access_token":"stolen","id":"x","value":[]}`)
	})
	if tls {
		rec.srv = httptest.NewTLSServer(h)
	} else {
		rec.srv = httptest.NewServer(h)
	}
	t.Cleanup(rec.srv.Close)
	return rec
}

func (rec *recorder) count() int64 { return rec.n.Load() }

// assertNoLeak fails when any text contains any of secrets.
func assertNoLeak(t *testing.T, texts []string, secrets ...string) {
	t.Helper()
	for _, text := range texts {
		for _, s := range secrets {
			if s != "" && strings.Contains(text, s) {
				t.Errorf("%q leaks %q", text, s)
			}
		}
	}
}

// TestTokenRedirectNotFollowed: a login endpoint answering a redirect to a
// plain-http server gets neither the secret nor the client assertion posted
// there; the error says why.
func TestTokenRedirectNotFollowed(t *testing.T) {
	t.Parallel()
	cert, err := makeTestCert()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		status int
		cfg    func(*Config)
	}{
		{"secret 307", http.StatusTemporaryRedirect, nil},
		{"secret 308", http.StatusPermanentRedirect, nil},
		{"secret 302", http.StatusFound, nil},
		{"certificate 307", http.StatusTemporaryRedirect, func(c *Config) {
			c.ClientSecret = ""
			c.CertificatePEM = cert.pem
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			thief := newRecorder(t, false)
			tokens := &tokenServer{answer: func(w http.ResponseWriter, _ int64) {
				w.Header().Set("Location", thief.srv.URL+"/steal")
				w.WriteHeader(tc.status)
			}}
			var api atomic.Int64
			b := setup(t, func(w http.ResponseWriter, r *http.Request) { api.Add(1) }, setupOpts{tokens: tokens, cfg: tc.cfg})
			_, err := b.client.GetMachine(context.Background(), testMachine)
			e := asError(t, err)
			if e.Op != opToken || e.Outcome != OutcomePermanent || e.StatusCode != tc.status {
				t.Errorf("error %s/%s/%d: %v", e.Op, e.Outcome, e.StatusCode, err)
			}
			want := fmt.Sprintf("login endpoint redirected (%d); redirects are not followed", tc.status)
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not say %q", err, want)
			}
			if n := thief.count(); n != 0 {
				t.Errorf("the redirect target received %d requests (bodies %q)", n, thief.bodys)
			}
			if n := api.Load(); n != 0 {
				t.Errorf("the API was called %d times without a token", n)
			}
			if b.tokens.count() != 1 {
				t.Errorf("%d token requests", b.tokens.count())
			}
			assertion := b.tokens.form(0).Get("client_assertion")
			if tc.cfg != nil && assertion == "" {
				t.Fatal("the certificate case sent no assertion")
			}
			texts := append(logText(b.logs), err.Error(), fmt.Sprintf("%+v", err))
			assertNoLeak(t, texts, testSecret, assertion, thief.srv.URL)
		})
	}
}

// TestAPIRedirectNotFollowed: the API client follows no redirect, not even
// to another port of the same host (Go would forward Authorization there).
func TestAPIRedirectNotFollowed(t *testing.T) {
	t.Parallel()
	thief := newRecorder(t, false)
	var b *bundle
	b = setup(t, func(w http.ResponseWriter, r *http.Request) {
		b.record(r)
		w.Header().Set("Location", thief.srv.URL+r.URL.Path)
		switch {
		case r.Method == http.MethodPost:
			w.WriteHeader(http.StatusTemporaryRedirect)
		case strings.HasPrefix(r.URL.Path, "/api/machineactions"):
			w.WriteHeader(http.StatusMovedPermanently)
		default:
			w.WriteHeader(http.StatusTemporaryRedirect)
		}
		_, _ = io.WriteString(w, `{"error":{"code":"Moved","message":"see `+thief.srv.URL+`"}}`)
	})
	if !strings.HasPrefix(thief.srv.URL, "http://127.0.0.1:") || !strings.HasPrefix(b.srv.URL, "http://127.0.0.1:") {
		t.Fatalf("servers %s and %s are not on the same host", b.srv.URL, thief.srv.URL)
	}
	ctx := context.Background()
	calls := map[string]func() error{
		"get machine": func() error { _, err := b.client.GetMachine(ctx, testMachine); return err },
		"collect": func() error {
			_, err := b.client.CollectInvestigationPackage(ctx, testMachine, "Collect forensics due to alert "+testAlertID)
			return err
		},
		"get action": func() error { _, err := b.client.GetMachineAction(ctx, testAction); return err },
		"list": func() error {
			_, err := b.client.ListMachineActions(ctx, ActionFilter{MachineID: testMachine})
			return err
		},
	}
	for name, call := range calls {
		err := call()
		e := asError(t, err)
		if e.Outcome != OutcomePermanent || e.StatusCode < 300 || e.StatusCode > 399 || e.Message != "unexpected redirect" {
			t.Errorf("%s: %v", name, err)
		}
		if strings.Contains(err.Error(), thief.srv.URL) {
			t.Errorf("%s: the error names the Location: %v", name, err)
		}
	}
	if n := thief.count(); n != 0 {
		t.Errorf("the other port received %d requests, Authorization %q", n, thief.seen)
	}
	if n := len(b.apiCalls()); n != len(calls) {
		t.Errorf("%d API requests; want %d (one each, no retry)", n, len(calls))
	}
}

// TestCallerHTTPClientNotChanged: New clones the caller's client for each
// purpose and sets nothing on it.
func TestCallerHTTPClientNotChanged(t *testing.T) {
	t.Parallel()
	tr := http.DefaultTransport.(*http.Transport).Clone()
	hc := &http.Client{Transport: tr, Timeout: time.Minute}
	b := setup(t, nil, setupOpts{cfg: func(c *Config) { c.HTTPClient = hc }})
	if hc.CheckRedirect != nil || hc.Transport != tr || hc.Timeout != time.Minute || hc.Jar != nil {
		t.Errorf("caller's client changed: %+v", hc)
	}
	if b.client.http == hc || b.client.download == hc || b.client.tokens.http == hc {
		t.Error("the caller's client is used as is")
	}
	for name, c := range map[string]*http.Client{"api": b.client.http, "download": b.client.download, "token": b.client.tokens.http} {
		if c.CheckRedirect == nil {
			t.Errorf("%s client has no CheckRedirect", name)
		}
	}
}

// storage is a set of hostile and honest package storage servers reached
// by name: every name is routed to a server on 127.0.0.1 by the client's
// dialer, and the test certificate is valid for example.com and
// *.example.com, so links look like real ones and TLS is verified.
type storage struct {
	tls       *httptest.Server // storage.example.com, storage2.example.com
	evil      *recorder        // evil.example.com (https)
	evilPlain *recorder        // http://storage.example.com (port 80), and a loopback port
	bodyRead  atomic.Int64     // bytes of response bodies the client read
	stop      chan struct{}    // closed at the end: unblocks stalled handlers
}

const pkgToken = "PKG-TOKEN-5d1f"

func newStorage(t *testing.T) *storage {
	t.Helper()
	s := &storage{stop: make(chan struct{})}
	s.evil = newRecorder(t, true)
	s.evilPlain = newRecorder(t, false)
	data := packageBytes()
	chunk := bytes.Repeat([]byte("PK0123456789abcdef"), 64<<10/18+1)[:64<<10]
	s.tls = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "" {
			t.Errorf("Authorization sent to the storage host for %s", r.URL.Path)
		}
		if r.URL.Query().Get("token") != pkgToken {
			w.WriteHeader(http.StatusForbidden)
			return
		}
		q := "?token=" + pkgToken
		switch r.URL.Path {
		case "/ok":
			_, _ = w.Write(data)
		case "/to-storage2":
			http.Redirect(w, r, "https://storage2.example.com/ok"+q, http.StatusFound)
		case "/to-evil":
			http.Redirect(w, r, "https://evil.example.com/steal"+q, http.StatusTemporaryRedirect)
		case "/to-http":
			http.Redirect(w, r, "http://storage.example.com/ok"+q, http.StatusTemporaryRedirect)
		case "/to-loopback":
			http.Redirect(w, r, s.evilPlain.srv.URL+"/steal"+q, http.StatusTemporaryRedirect)
		case "/loop":
			n, _ := strconv.Atoi(r.URL.Query().Get("n"))
			http.Redirect(w, r, fmt.Sprintf("/loop%s&n=%d", q, n+1), http.StatusFound)
		case "/exact":
			// Exactly the cap (set by the test to 4 MiB).
			w.Header().Set("Content-Length", strconv.Itoa(4<<20))
			for sent := 0; sent < 4<<20; sent += len(chunk) {
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
		case "/huge", "/huge-length":
			// 300 MiB generated as it is sent, never held in memory.
			const total = 300 << 20
			if r.URL.Path == "/huge-length" {
				w.Header().Set("Content-Length", strconv.Itoa(total))
			}
			for sent := 0; sent < total; sent += len(chunk) {
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
		case "/stall":
			_, _ = w.Write([]byte("P"))
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
			case <-s.stop:
			}
		case "/no-headers":
			select {
			case <-r.Context().Done():
			case <-s.stop:
			}
		case "/slow":
			// A byte at a time, well within the no-progress timeout.
			tick := time.NewTicker(20 * time.Millisecond)
			defer tick.Stop()
			for i := 0; i < 15; i++ {
				select {
				case <-tick.C:
				case <-r.Context().Done():
					return
				}
				_, _ = w.Write(data[i : i+1])
				w.(http.Flusher).Flush()
			}
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(func() {
		close(s.stop)
		s.tls.Close()
	})
	return s
}

// client returns an HTTP client that routes the storage names to the test
// servers, refuses any other non-loopback address, trusts the test
// certificate and counts the response body bytes read.
func (s *storage) client() *http.Client {
	tr := s.tls.Client().Transport.(*http.Transport).Clone()
	routes := map[string]string{
		"storage.example.com:443":  s.tls.Listener.Addr().String(),
		"storage2.example.com:443": s.tls.Listener.Addr().String(),
		"evil.example.com:443":     s.evil.srv.Listener.Addr().String(),
		"storage.example.com:80":   s.evilPlain.srv.Listener.Addr().String(),
	}
	d := &net.Dialer{Timeout: 5 * time.Second}
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if to, ok := routes[addr]; ok {
			return d.DialContext(ctx, network, to)
		}
		if host, _, _ := net.SplitHostPort(addr); !loopback.Host(host) {
			return nil, fmt.Errorf("test network: no route to %s", host)
		}
		return d.DialContext(ctx, network, addr)
	}
	return &http.Client{Transport: countingTransport{base: tr, n: &s.bodyRead}}
}

// countingTransport counts the response body bytes the client reads.
type countingTransport struct {
	base http.RoundTripper
	n    *atomic.Int64
}

func (c countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := c.base.RoundTrip(r)
	if err == nil {
		resp.Body = countingBody{ReadCloser: resp.Body, n: c.n}
	}
	return resp, err
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// storageSetup is a client whose package hosts are the two storage names.
func storageSetup(t *testing.T, s *storage, api http.HandlerFunc, cfg func(*Config), opts ...Option) *bundle {
	t.Helper()
	return setup(t, api, setupOpts{opts: opts, cfg: func(c *Config) {
		c.HTTPClient = s.client()
		c.PackageHosts = []string{"storage.example.com", "Storage2.Example.com"}
		if cfg != nil {
			cfg(c)
		}
	}})
}

// dirEmpty fails if dir holds anything (no package, no part file).
func dirEmpty(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Errorf("files left: %v", entries)
	}
}

// TestDownloadRedirects: every hop of a package download is checked: https
// (http only to loopback), a host of the allow-list or the API host, at
// most 3 redirects; the link never appears in an error or a log line.
func TestDownloadRedirects(t *testing.T) {
	t.Parallel()
	cases := []struct {
		path     string
		ok       bool
		refusedH string // host named in the refusal log line
	}{
		{"/ok", true, ""},
		{"/to-storage2", true, ""},
		{"/to-evil", false, "evil.example.com"},
		{"/to-http", false, "storage.example.com"},
		{"/to-loopback", false, "127.0.0.1"},
		{"/loop", false, "storage.example.com"},
	}
	for _, tc := range cases {
		t.Run(tc.path, func(t *testing.T) {
			t.Parallel()
			s := newStorage(t)
			b := storageSetup(t, s, nil, nil)
			dir := t.TempDir()
			link := "https://storage.example.com" + tc.path + "?token=" + pkgToken
			size, _, err := b.client.DownloadPackage(context.Background(), link, filepath.Join(dir, "p.zip"))
			if s.evil.count() != 0 || s.evilPlain.count() != 0 {
				t.Errorf("a refused host was contacted: https %d, http %d (Authorization %q)", s.evil.count(), s.evilPlain.count(), s.evil.seen)
			}
			if tc.ok {
				if err != nil || size != int64(len(packageBytes())) {
					t.Fatalf("download: %d %v", size, err)
				}
				return
			}
			e := asError(t, err)
			if e.Outcome != OutcomePermanent || !errors.Is(err, ErrPackageHostRefused) {
				t.Errorf("got %s: %v", e.Outcome, err)
			}
			dirEmpty(t, dir)
			texts := append(logText(b.logs), err.Error(), fmt.Sprintf("%+v", err))
			assertNoLeak(t, texts, pkgToken, "/steal", "?token")
			found := false
			for _, l := range b.logs.FilterMessage("defender package link refused").All() {
				found = found || l.ContextMap()["host"] == tc.refusedH
			}
			if !found {
				t.Errorf("no refusal logged with host %s: %v", tc.refusedH, logText(b.logs))
			}
		})
	}
}

// TestPackageLinkHosts: the link getPackageUri answers is checked against
// the package hosts before anything is downloaded, and so is a link given
// to DownloadPackage.
func TestPackageLinkHosts(t *testing.T) {
	t.Parallel()
	s := newStorage(t)
	var link atomic.Value
	b := storageSetup(t, s, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, `{"value":"\"`+link.Load().(string)+`\""}`)
	}, nil, WithLimiter(GroupPackageURI, nil))
	ctx := context.Background()
	for _, l := range []string{
		"https://evil.example.com/safedownload/p.zip?token=" + pkgToken,
		"https://storage.example.com.evil.example.com/p.zip?token=" + pkgToken,
		"https://userrequests-us.securitycenter.windows.com/p.zip?token=" + pkgToken, // not listed here: the list replaces the default
		"https://127.0.0.1:1/p.zip?token=" + pkgToken,                                // the API host's address, another port
	} {
		link.Store(l)
		_, err := b.client.GetPackageURI(ctx, testAction)
		if e := asError(t, err); e.Outcome != OutcomePermanent || !errors.Is(err, ErrPackageHostRefused) {
			t.Errorf("%s: %v", l, err)
		}
		dir := t.TempDir()
		_, _, err = b.client.DownloadPackage(ctx, l, filepath.Join(dir, "p.zip"))
		if e := asError(t, err); e.Outcome != OutcomePermanent || !errors.Is(err, ErrPackageHostRefused) {
			t.Errorf("download %s: %v", l, err)
		}
		dirEmpty(t, dir)
	}
	if s.evil.count() != 0 {
		t.Errorf("evil host contacted %d times", s.evil.count())
	}
	assertNoLeak(t, logText(b.logs), pkgToken)
	for _, l := range []string{
		"https://storage.example.com/ok?token=" + pkgToken,
		"https://STORAGE2.example.com./ok?token=" + pkgToken,
		b.srv.URL + "/safedownload/p.zip?token=" + pkgToken, // the API host
	} {
		link.Store(l)
		if got, err := b.client.GetPackageURI(ctx, testAction); err != nil || got != l {
			t.Errorf("%s: %q %v", l, got, err)
		}
	}
}

func TestDefaultPackageHosts(t *testing.T) {
	t.Parallel()
	cases := []struct {
		cloud, link string
		ok          bool
	}{
		{"commercial", "https://userrequests-us.securitycenter.windows.com:443/safedownload/WDATP_Investigation_Package.zip?token=x", true},
		{"", "https://userrequests-eu.securitycenter.windows.com/safedownload/p.zip?token=x", true},
		{"gcc", "https://userrequests-uk.securitycenter.microsoft.com/p.zip?token=x", true},
		{"commercial", "https://securitycenter.windows.com.evil.example/p.zip?token=x", false},
		{"commercial", "https://evilsecuritycenter.windows.com/p.zip?token=x", false},
		{"commercial", "https://userrequests-us.securitycenter.windows.us/p.zip?token=x", false},
		{"gcc-high", "https://userrequests-us.securitycenter.windows.us/p.zip?token=x", true},
		{"dod", "https://userrequests.securitycenter.microsoft.us/p.zip?token=x", true},
		{"dod", "https://userrequests-us.securitycenter.windows.com/p.zip?token=x", false},
	}
	for _, tc := range cases {
		b := setup(t, func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, 200, `{"value":"`+tc.link+`"}`)
		}, setupOpts{cfg: func(c *Config) { c.Cloud = tc.cloud }, opts: []Option{WithLimiter(GroupPackageURI, nil)}})
		_, err := b.client.GetPackageURI(context.Background(), testAction)
		if (err == nil) != tc.ok {
			t.Errorf("%s %s: %v", tc.cloud, tc.link, err)
		}
	}
}

func TestHostAllowed(t *testing.T) {
	t.Parallel()
	allow := []string{".securitycenter.windows.com", "storage.example.com"}
	cases := map[string]bool{
		"userrequests-us.securitycenter.windows.com":  true,
		"USERREQUESTS-US.SecurityCenter.Windows.com":  true,
		"a.b.securitycenter.windows.com":              true,
		"userrequests-us.securitycenter.windows.com.": true,
		"securitycenter.windows.com":                  false, // ".domain" matches subdomains only
		"evilsecuritycenter.windows.com":              false,
		"securitycenter.windows.com.evil.example":     false,
		"storage.example.com":                         true,
		"a.storage.example.com":                       false, // exact entry
		"example.com":                                 false,
		"":                                            false,
	}
	for host, want := range cases {
		if got := hostAllowed(host, allow); got != want {
			t.Errorf("hostAllowed(%q) = %v", host, got)
		}
	}
}

func TestCheckPackageHost(t *testing.T) {
	t.Parallel()
	for entry, ok := range map[string]bool{
		".securitycenter.windows.com":  true,
		"storage.example.com":          true,
		"127.0.0.1":                    true,
		"":                             false,
		".":                            false,
		"..example.com":                false,
		"https://storage.example.com":  false,
		"storage.example.com:443":      false,
		"*.securitycenter.windows.com": false,
		"storage.example.com/path":     false,
		"storage.example.com.":         false,
	} {
		if err := CheckPackageHost(entry); (err == nil) != ok {
			t.Errorf("CheckPackageHost(%q) = %v", entry, err)
		}
	}
	_, err := New(Config{TenantID: testTenant, ClientID: testClientID, ClientSecret: testSecret,
		PackageHosts: []string{"ok.example.com", "https://bad"}}, nil, nil)
	if err == nil || !strings.Contains(err.Error(), `package_hosts[1]: "https://bad"`) {
		t.Errorf("New: %v", err)
	}
}

// TestDownloadSizeCap: a package over the cap is cut there (a stream) or
// refused unread (Content-Length), and nothing is left on disk.
func TestDownloadSizeCap(t *testing.T) {
	t.Parallel()
	const limit = 4 << 20
	cases := []struct {
		path    string
		ok      bool
		maxRead int64
	}{
		{"/huge", false, limit + 32<<10}, // cut at the cap, give or take one copy buffer
		{"/huge-length", false, 0},       // refused before reading the body
		{"/exact", true, limit},          // exactly the cap passes
	}
	for _, tc := range cases {
		t.Run(tc.path, func(t *testing.T) {
			t.Parallel()
			s := newStorage(t)
			b := storageSetup(t, s, nil, func(c *Config) { c.MaxPackageBytes = limit })
			dir := t.TempDir()
			dest := filepath.Join(dir, "p.zip")
			size, _, err := b.client.DownloadPackage(context.Background(), "https://storage.example.com"+tc.path+"?token="+pkgToken, dest)
			if read := s.bodyRead.Load(); read > tc.maxRead {
				t.Errorf("read %d bytes of the body; want at most %d", read, tc.maxRead)
			}
			if tc.ok {
				if err != nil || size != limit {
					t.Fatalf("download: %d %v", size, err)
				}
				return
			}
			e := asError(t, err)
			want := fmt.Sprintf("package larger than defender.max_package_bytes (%d bytes)", limit)
			if e.Outcome != OutcomePermanent || e.Message != want || e.StatusCode != 200 {
				t.Errorf("got %v; want permanent %q", err, want)
			}
			assertNoLeak(t, append(logText(b.logs), err.Error()), pkgToken)
			dirEmpty(t, dir)
		})
	}
}

// TestDownloadStall: a download that receives nothing for the no-progress
// timeout is aborted as retryable; a slow one that keeps progressing is not.
func TestDownloadStall(t *testing.T) {
	t.Parallel()
	const stall = 300 * time.Millisecond
	cases := []struct {
		path string
		ok   bool
	}{
		{"/stall", false},      // one byte, then nothing
		{"/no-headers", false}, // not even headers
		{"/slow", true},        // a byte every 20 ms for 300 ms
	}
	for _, tc := range cases {
		t.Run(tc.path, func(t *testing.T) {
			t.Parallel()
			s := newStorage(t)
			b := storageSetup(t, s, nil, func(c *Config) {
				c.DownloadStallTimeout = stall
				c.DownloadTimeout = 10 * time.Second // without the stall timer: this, and a failure
			})
			dir := t.TempDir()
			begin := time.Now()
			_, _, err := b.client.DownloadPackage(context.Background(), "https://storage.example.com"+tc.path+"?token="+pkgToken, filepath.Join(dir, "p.zip"))
			took := time.Since(begin)
			if tc.ok {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			e := asError(t, err)
			if e.Outcome != OutcomeRetryable || !strings.Contains(err.Error(), "no data received for 300ms") {
				t.Errorf("got %s: %v", e.Outcome, err)
			}
			if took < stall || took > 5*time.Second {
				t.Errorf("aborted after %s; want about %s", took, stall)
			}
			assertNoLeak(t, append(logText(b.logs), err.Error()), pkgToken)
			dirEmpty(t, dir)
		})
	}
}

// streamJSON answers a 2xx JSON body of n bytes, generated as it is sent,
// with or without a Content-Length.
func streamJSON(w http.ResponseWriter, status int, n int, withLength bool) {
	w.Header().Set("Content-Type", odataCT)
	if withLength {
		w.Header().Set("Content-Length", strconv.Itoa(n))
	}
	w.WriteHeader(status)
	head := []byte(`{"id":"` + testMachine + `","computerDnsName":"`)
	if _, err := w.Write(head); err != nil {
		return
	}
	chunk := bytes.Repeat([]byte("a"), 64<<10)
	for sent := len(head); sent < n; sent += len(chunk) {
		if _, err := w.Write(chunk[:min(len(chunk), n-sent)]); err != nil {
			return
		}
	}
}

// TestAnswerCaps: single objects are capped at 1 MiB, list pages at
// 16 MiB; a larger answer is a permanent error (for an action POST the
// action may exist: already_running).
func TestAnswerCaps(t *testing.T) {
	t.Parallel()
	const big = 17 << 20
	cases := []struct {
		name    string
		size    int
		length  bool
		call    func(c *Client) error
		outcome Outcome
		msg     string
	}{
		{"machine stream", big, false, func(c *Client) error { _, err := c.GetMachine(context.Background(), testMachine); return err },
			OutcomePermanent, "answer larger than 1048576 bytes"},
		{"machine length", big, true, func(c *Client) error { _, err := c.GetMachine(context.Background(), testMachine); return err },
			OutcomePermanent, "answer larger than 1048576 bytes"},
		{"machine just under", 1 << 20, true, func(c *Client) error { _, err := c.GetMachine(context.Background(), testMachine); return err },
			OutcomeRetryable, "unreadable answer"}, // within the cap: read, then not JSON
		{"action", big, false, func(c *Client) error { _, err := c.GetMachineAction(context.Background(), testAction); return err },
			OutcomePermanent, "answer larger than 1048576 bytes"},
		{"list", big, false, func(c *Client) error {
			_, err := c.ListMachineActions(context.Background(), ActionFilter{MachineID: testMachine})
			return err
		}, OutcomePermanent, "answer larger than 16777216 bytes"},
		{"list under the page cap", 2 << 20, false, func(c *Client) error {
			_, err := c.ListMachineActions(context.Background(), ActionFilter{MachineID: testMachine})
			return err
		}, OutcomeRetryable, "unreadable answer"},
		{"collect", 2 << 20, false, func(c *Client) error {
			_, err := c.CollectInvestigationPackage(context.Background(), testMachine, "c")
			return err
		}, OutcomeAlreadyRunning, "answer larger than 1048576 bytes; the action may exist: look it up"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, func(w http.ResponseWriter, r *http.Request) {
				status := 200
				if r.Method == http.MethodPost {
					status = 201
				}
				streamJSON(w, status, tc.size, tc.length)
			})
			err := tc.call(b.client)
			e := asError(t, err)
			if e.Outcome != tc.outcome || e.Message != tc.msg {
				t.Errorf("got %s %q: %v", e.Outcome, e.Message, err)
			}
		})
	}
}

// TestLargeAnswerMemoryBounded: a machine read answering 60 MiB costs about
// the 1 MiB cap per call, not the answer's size. Not parallel: it measures
// the process's allocations.
func TestLargeAnswerMemoryBounded(t *testing.T) {
	const (
		answer = 60 << 20
		calls  = 8
	)
	b := setup(t, func(w http.ResponseWriter, r *http.Request) {
		streamJSON(w, 200, answer, false)
	})
	ctx := context.Background()
	if err := b.client.CheckToken(ctx); err != nil { // the token is not what is measured
		t.Fatal(err)
	}
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	var wg sync.WaitGroup
	errs := make([]error, calls)
	for i := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = b.client.GetMachine(ctx, testMachine)
		}()
	}
	wg.Wait()
	runtime.ReadMemStats(&after)
	for _, err := range errs {
		if e := asError(t, err); e.Outcome != OutcomePermanent {
			t.Errorf("got %v", err)
		}
	}
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("%d calls allocated %d MiB", calls, alloc>>20)
	if limit := uint64(calls * 4 << 20); alloc > limit {
		t.Errorf("%d calls allocated %d bytes; want at most %d (about the cap per call)", calls, alloc, limit)
	}
}

// endsOnCancel is a body that sends one byte, then nothing until its
// request is cancelled, and then ends cleanly: a server that closes its
// answer when the client gives up can make a cut body look whole.
type endsOnCancel struct {
	ctx  context.Context
	sent bool
}

func (b *endsOnCancel) Read(p []byte) (int, error) {
	if !b.sent {
		b.sent = true
		p[0] = 'P'
		return 1, nil
	}
	<-b.ctx.Done()
	return 0, io.EOF
}

func (b *endsOnCancel) Close() error { return nil }

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestDownloadStallEndedByServer: a body that ends after the no-progress
// timeout fired is not kept as a package.
func TestDownloadStallEndedByServer(t *testing.T) {
	t.Parallel()
	hc := &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		return &http.Response{StatusCode: 200, Header: http.Header{}, ContentLength: -1,
			Body: &endsOnCancel{ctx: r.Context()}, Request: r}, nil
	})}
	b := setup(t, nil, setupOpts{cfg: func(c *Config) {
		c.HTTPClient = hc
		c.DownloadStallTimeout = 50 * time.Millisecond
	}})
	dir := t.TempDir()
	_, _, err := b.client.DownloadPackage(context.Background(), b.srv.URL+"/safedownload/p.zip?token="+pkgToken, filepath.Join(dir, "p.zip"))
	if e := asError(t, err); e.Outcome != OutcomeRetryable || !strings.Contains(err.Error(), "no data received for 50ms") {
		t.Errorf("got %v", err)
	}
	dirEmpty(t, dir)
}
