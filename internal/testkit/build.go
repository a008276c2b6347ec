package testkit

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// ModuleRoot returns the directory holding the module's go.mod, found from
// the working directory upwards (go test runs a package's tests in its
// directory).
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("testkit: module root: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("testkit: module root: no go.mod above the working directory")
		}
		dir = parent
	}
}

// BuildResponder builds the responder binary (the module's main package)
// into a new temporary directory and returns its path, and a function that
// removes the directory.
func BuildResponder() (path string, remove func(), err error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", nil, err
	}
	dir, err := os.MkdirTemp("", "responder-test-bin-")
	if err != nil {
		return "", nil, fmt.Errorf("testkit: build responder: %w", err)
	}
	remove = func() { _ = os.RemoveAll(dir) }
	path = filepath.Join(dir, "responder")
	build := exec.Command("go", "build", "-o", path, ".")
	build.Dir = root
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		remove()
		return "", nil, fmt.Errorf("testkit: go build of the responder in %s: %w", root, err)
	}
	return path, remove, nil
}

// MainWithResponder is the TestMain of a package whose tests run the real
// binary: it builds the responder once, stores its path in *binary, runs the
// tests, removes the binary and returns the exit code for os.Exit.
func MainWithResponder(m *testing.M, binary *string) int {
	path, remove, err := BuildResponder()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer remove()
	*binary = path
	return m.Run()
}
