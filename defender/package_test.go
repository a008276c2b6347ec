package defender

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// packageBytes is a deterministic 300 KiB "zip".
func packageBytes() []byte {
	b := make([]byte, 300<<10)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

func TestDownloadPackage(t *testing.T) {
	t.Parallel()
	data := packageBytes()
	var b *bundle
	b = setup(t, func(w http.ResponseWriter, r *http.Request) {
		c := b.record(r)
		if c.Header.Get("Authorization") != "" {
			t.Error("the MDE token was sent to the storage host")
		}
		if r.URL.Query().Get("token") != "PKGTOKEN" {
			http.Error(w, "AuthenticationFailed", http.StatusForbidden)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		_, _ = w.Write(data)
	})
	dest := filepath.Join(t.TempDir(), testMachine, testAction+".zip")
	size, sum, err := b.client.DownloadPackage(context.Background(), b.srv.URL+"/safedownload/WDATP_Investigation_Package.zip?token=PKGTOKEN", dest)
	if err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(data)
	if size != int64(len(data)) || sum != hex.EncodeToString(want[:]) {
		t.Errorf("size %d sum %s; want %d %x", size, sum, len(data), want)
	}
	got, err := os.ReadFile(dest)
	if err != nil || string(got) != string(data) {
		t.Fatalf("file: %v", err)
	}
	if _, err := os.Stat(dest + ".part"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf(".part left behind: %v", err)
	}
	if ua := b.apiCalls()[0].Header.Get("User-Agent"); ua != testUA {
		t.Errorf("User-Agent %q", ua)
	}
	if b.tokens.count() != 0 {
		t.Error("a download fetched an MDE token")
	}

	// An expired link: retryable (fetch a new link), nothing written.
	dest2 := filepath.Join(t.TempDir(), "x.zip")
	_, _, err = b.client.DownloadPackage(context.Background(), b.srv.URL+"/safedownload/p.zip?token=EXPIRED", dest2)
	if e := asError(t, err); e.Outcome != OutcomeRetryable || e.StatusCode != 403 || e.Op != opDownloadPackage {
		t.Errorf("expired link: %s %d", e.Outcome, e.StatusCode)
	}
	if _, err := os.Stat(dest2); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("file written on 403: %v", err)
	}
}

func TestDownloadPackageCutShort(t *testing.T) {
	t.Parallel()
	b := setup(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100000")
		_, _ = w.Write([]byte("PK\x03\x04 partial"))
		w.(http.Flusher).Flush()
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			_ = conn.Close()
		}
	})
	dir := t.TempDir()
	dest := filepath.Join(dir, "p.zip")
	_, _, err := b.client.DownloadPackage(context.Background(), b.srv.URL+"/p.zip?sig=abc", dest)
	if e := asError(t, err); e.Outcome != OutcomeRetryable {
		t.Errorf("got %s: %v", e.Outcome, err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 0 {
		t.Errorf("files left: %v", entries)
	}
}

func TestDownloadPackageRejectsLinks(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	for _, uri := range []string{"", "ftp://storage.example.com/p.zip?sig=x", "http://storage.example.com/p.zip?sig=x", "/relative?sig=x", "https://user:pw@storage.example.com/p"} {
		_, _, err := b.client.DownloadPackage(context.Background(), uri, filepath.Join(t.TempDir(), "p.zip"))
		if !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%q: got %v", uri, err)
		}
		if uri != "" && strings.Contains(err.Error(), "sig=x") {
			t.Errorf("error names the link: %v", err)
		}
	}
}

// TestInvalidIDsNeverSent: malformed ids are refused before any request,
// token requests included.
func TestInvalidIDsNeverSent(t *testing.T) {
	t.Parallel()
	var b *bundle
	b = setup(t, func(w http.ResponseWriter, r *http.Request) {
		b.record(r)
		writeJSON(w, 200, `{"value":[]}`)
	})
	ctx := context.Background()
	badMachines := []string{
		testMachine[:39],                              // 39 characters
		testMachine + "0",                             // 41 characters
		strings.Repeat("g", 40),                       // not hex
		"../../api/machineactions/" + "0000000000000", // path traversal
		"../" + testMachine[:37],                      // traversal of the right length
		testMachine[:38] + "%2",                       // escape
		"",
	}
	for _, id := range badMachines {
		calls := map[string]func() error{
			"collect":   func() error { _, err := b.client.CollectInvestigationPackage(ctx, id, "c"); return err },
			"isolate":   func() error { _, err := b.client.Isolate(ctx, id, "c", IsolationFull); return err },
			"unisolate": func() error { _, err := b.client.Unisolate(ctx, id, "c"); return err },
			"scan":      func() error { _, err := b.client.RunAntivirusScan(ctx, id, "c", ScanFull); return err },
			"restrict":  func() error { _, err := b.client.RestrictCodeExecution(ctx, id, "c"); return err },
			"unrestrict": func() error {
				_, err := b.client.UnrestrictCodeExecution(ctx, id, "c")
				return err
			},
			"get machine": func() error { _, err := b.client.GetMachine(ctx, id); return err },
			"pending": func() error {
				_, _, err := b.client.PendingAction(ctx, id, TypeCollectInvestigationPackage)
				return err
			},
		}
		if id != "" { // an empty machine id means "any machine" in a filter
			calls["list"] = func() error {
				_, err := b.client.ListMachineActions(ctx, ActionFilter{MachineID: id})
				return err
			}
		}
		for name, call := range calls {
			err := call()
			if e := asError(t, err); !errors.Is(err, ErrInvalidID) || e.Outcome != OutcomePermanent {
				t.Errorf("%s(%q): got %v", name, id, err)
			}
		}
	}
	for _, id := range []string{"", "../" + testAction, testAction + "/cancel", "5382f7ea 7557", strings.Repeat("a", 65), "5382f7ea-7557-4ab7-9782-d50480024a4z", "%2e%2e"} {
		if _, err := b.client.GetMachineAction(ctx, id); !errors.Is(err, ErrInvalidID) {
			t.Errorf("GetMachineAction(%q): %v", id, err)
		}
		if _, err := b.client.GetPackageURI(ctx, id); !errors.Is(err, ErrInvalidID) {
			t.Errorf("GetPackageURI(%q): %v", id, err)
		}
	}
	if n := len(b.apiCalls()); n != 0 {
		t.Errorf("%d API requests sent", n)
	}
	if n := b.tokens.count(); n != 0 {
		t.Errorf("%d token requests sent", n)
	}
}
