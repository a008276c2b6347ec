package alert_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/responder-dev/responder/alert"
)

// seedFuzz adds every payload of testdata/ and its subfolders to the corpus.
func seedFuzz(f *testing.F) {
	f.Helper()
	for _, pattern := range []string{"testdata/*.json", "testdata/invalid/*.json", "testdata/dropped/*.json"} {
		files, err := filepath.Glob(pattern)
		if err != nil {
			f.Fatal(err)
		}
		for _, file := range files {
			body, err := os.ReadFile(file)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(body)
		}
	}
}

// checkBatch fails unless a decoder's answer keeps the promises the rest of
// the service relies on, whatever the body.
func checkBatch(t *testing.T, batch alert.Batch, err error, sources ...alert.Source) {
	t.Helper()
	if err != nil {
		var de *alert.DecodeError
		if !errors.As(err, &de) {
			t.Fatalf("got error %v (%T), want *alert.DecodeError", err, err)
		}
		if n := len(err.Error()); n == 0 || n > 1024 {
			t.Fatalf("error message of %d bytes: %q", n, err.Error())
		}
		return
	}
	if n := len(batch.Alerts) + len(batch.Invalid); n > 10000 {
		t.Fatalf("got %d alerts and problems, want at most 10000", n)
	}
	severities := []string{
		alert.SeverityInformational, alert.SeverityLow, alert.SeverityMedium,
		alert.SeverityHigh, alert.SeverityCritical, alert.SeverityUnknown,
	}
	statuses := []string{alert.StatusFiring, alert.StatusResolved, alert.StatusNew, alert.StatusInProgress, "unknown"}
	for i, a := range batch.Alerts {
		switch {
		case a.ID == "" || len(a.ID) > 256:
			t.Fatalf("alert %d: id %q", i, a.ID)
		case !slices.Contains(sources, a.Source):
			t.Fatalf("alert %d: source %q, want one of %q", i, a.Source, sources)
		case !slices.Contains(severities, a.Severity):
			t.Fatalf("alert %d: severity %q", i, a.Severity)
		case !slices.Contains(statuses, a.Status):
			t.Fatalf("alert %d: status %q", i, a.Status)
		case a.MachineID != "" && !isLowerHex40(a.MachineID):
			t.Fatalf("alert %d: machine id %q is not 40 lower-case hex characters", i, a.MachineID)
		}
	}
	for i, p := range batch.Invalid {
		switch {
		case p.Path == "" || p.Reason == "" || len(p.Reason) > 512:
			t.Fatalf("problem %d: %q", i, p.String())
		case !slices.Contains(sources, p.Source):
			// Every decoder knows the kind of an alert before it finds a
			// problem with it.
			t.Fatalf("problem %d: source %q, want one of %q", i, p.Source, sources)
		case len(p.AlertID) > 256 || strings.ContainsFunc(p.AlertID, func(r rune) bool { return r < 0x20 || r == 0x7f }):
			t.Fatalf("problem %d: alert id %q", i, p.AlertID)
		}
	}
}

func isLowerHex40(s string) bool {
	if len(s) != 40 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !('0' <= s[i] && s[i] <= '9' || 'a' <= s[i] && s[i] <= 'f') {
			return false
		}
	}
	return true
}

func FuzzDecodeDefender(f *testing.F) {
	seedFuzz(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		batch, err := alert.DecodeDefender(body)
		checkBatch(t, batch, err, alert.SourceDefender, alert.SourceGraph)
	})
}

func FuzzDecodeAlertmanager(f *testing.F) {
	seedFuzz(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		batch, err := alert.DecodeAlertmanager(body)
		checkBatch(t, batch, err, alert.SourceAlertmanager, alert.SourceGrafana)
	})
}
