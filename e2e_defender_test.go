package main

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestCheckRunsDefenderValidation: `check` refuses the Defender URLs and
// certificates the client refuses, each at its file:line:col, and `serve`
// refuses the same file.
func TestCheckRunsDefenderValidation(t *testing.T) {
	t.Parallel()
	cases := []struct {
		file string
		want []string
	}{
		{"config/testdata/invalid-defender-urls.yaml", []string{
			`config/testdata/invalid-defender-urls.yaml:4:12: defender.api_url: "http://localhost.evil.example": http is allowed only to a loopback host; use https`,
			`config/testdata/invalid-defender-urls.yaml:5:14: defender.token_url: "http://127.0.0.1.nip.io/tenant/oauth2/v2.0/token": http is allowed only to a loopback host; use https`,
		}},
		{"config/testdata/invalid-defender-cert-not-pem.yaml", []string{
			`config/testdata/invalid-defender-cert-not-pem.yaml:6:21: defender.certificate_file: "config/testdata/not-a-cert.pem": certificate: no PEM data`,
		}},
	}
	for _, tc := range cases {
		cmd := exec.Command(binary, "check", "--config", tc.file)
		cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
		out, err := cmd.CombinedOutput()
		if code := exitCode(err); code != 1 {
			t.Errorf("check %s: exit %d\n%s", tc.file, code, out)
		}
		for _, w := range tc.want {
			if !strings.Contains(string(out), w) {
				t.Errorf("check %s: output lacks %q:\n%s", tc.file, w, out)
			}
		}

		serve := exec.Command(binary, "serve", "--config", tc.file)
		serve.Dir = t.TempDir()
		serve.Env = []string{"PATH=" + os.Getenv("PATH")}
		serve.Args[3] = mustAbs(t, tc.file)
		var stderr bytes.Buffer
		serve.Stderr = &stderr
		if err := serve.Run(); err == nil {
			t.Fatalf("serve %s started", tc.file)
		}
		if !strings.Contains(stderr.String(), "defender.") {
			t.Errorf("serve %s: stderr %q does not name the Defender key", tc.file, stderr.String())
		}
	}
}
