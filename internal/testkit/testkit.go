// Package testkit holds what the tests of several packages share: the rule
// for a test that cannot run (Skip), the responder binary built once per
// package, waiting for a condition with a deadline, a fake clock and a fresh
// PostgreSQL database per test.
//
// Only tests import it: the binary must not link the testing package
// (TestBinaryLinksNoTestCode in the root package checks it).
package testkit

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// CIEnv is the variable .ci/run sets to 1. Under it a test that cannot run
// fails instead of skipping: CI runs every test, and a skipped one would read
// as a pass.
const CIEnv = "RESPONDER_CI"

// InCI reports whether the tests run under .ci/run.
func InCI() bool { return os.Getenv(CIEnv) == "1" }

// Skip ends t because something it needs is missing (a program, a server),
// with the reason: t.Skip, or under .ci/run (RESPONDER_CI=1) t.Fatal. Tests
// skip only through it (TestSkipsGoThroughTestkit checks), so that CI
// cannot pass a test that did not run.
func Skip(t testing.TB, format string, args ...any) {
	t.Helper()
	reason := fmt.Sprintf(format, args...)
	if InCI() {
		t.Fatalf("cannot run: %s (%s=1: CI must run every test)", reason, CIEnv)
	}
	t.Skip("cannot run: " + reason)
}

// LookPath returns the path of the program name, or ends t through Skip when
// it is not in PATH; install says how to get it.
func LookPath(t testing.TB, name, install string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Skip(t, "%s is not in PATH (%s)", name, install)
	}
	return p
}
