package main

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// testImporters are the packages outside this module allowed to bring the
// testing package into the binary, with the reason. Nothing may bring
// net/http/httptest or the tests' helpers.
var testImporters = map[string]string{
	// prometheus/common's expfmt parses OpenMetrics with go-abnf, whose
	// fuzz helpers (generate_fuzz.go, ...) are not _test files.
	"github.com/pandatix/go-abnf": "imported by github.com/prometheus/common/expfmt",
}

// TestBinaryLinksNoTestCode: the binary links no test code of ours.
// responder serve --dev runs the Defender simulator (defender/defendertest),
// which the tests use too; the testing package and httptest must not come
// with it, nor internal/testkit. go list -deps of the main package names
// every package linked; each one's imports tell who brought testing in.
func TestBinaryLinksNoTestCode(t *testing.T) {
	t.Parallel()
	cmd := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}} {{join .Imports \" \"}}", ".")
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("go list -deps .: %v\n%s", err, stderr)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) < 100 {
		t.Fatalf("go list -deps . listed %d packages:\n%s", len(lines), out)
	}
	var linked []string
	for _, line := range lines {
		pkg, imports, _ := strings.Cut(line, " ")
		linked = append(linked, pkg)
		for _, imp := range strings.Fields(imports) {
			switch {
			case imp == "testing" || strings.HasPrefix(imp, "testing/"):
				if why, ok := testImporters[pkg]; ok {
					t.Logf("%s imports %s (allowed: %s)", pkg, imp, why)
					continue
				}
				t.Errorf("%s imports %s: the binary must not link test code", pkg, imp)
			case imp == "net/http/httptest", strings.HasSuffix(imp, "/internal/testkit"):
				t.Errorf("%s imports %s: the binary must not link test code", pkg, imp)
			}
		}
	}
	// The simulator is linked (--dev), so this test watches the package
	// that once brought testing in.
	if !slices.Contains(linked, "github.com/responder-dev/responder/defender/defendertest") {
		t.Errorf("the binary no longer links defender/defendertest: go list -deps . gave\n%s", out)
	}
}
