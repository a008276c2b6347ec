package main

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/responder-dev/responder/internal/testkit"
)

// maxTrackedBytes is the largest file the repository tracks: the Grafana
// dashboard is about 70 KiB; a build output is megabytes.
const maxTrackedBytes = 1 << 20

// TestNoBuildOutputsTracked: git tracks no build output (a binary, a test
// binary, a store), which .gitignore keeps out of `git add .` but not out
// of `git add -f` or an older commit.
func TestNoBuildOutputsTracked(t *testing.T) {
	t.Parallel()
	git := testkit.LookPath(t, "git", "apt-get install -y git")
	if _, err := os.Stat(".git"); err != nil {
		testkit.Skip(t, "not a git checkout: %v", err)
	}
	out, err := exec.Command(git, "ls-files", "-z").Output()
	if err != nil {
		t.Fatalf("git ls-files: %v", err)
	}
	files := strings.Split(strings.TrimRight(string(out), "\x00"), "\x00")
	if len(files) < 100 {
		t.Fatalf("git ls-files listed %d files", len(files))
	}
	for _, name := range files {
		base := filepath.Base(name)
		for _, pattern := range []string{"*.test", "*.db", "*.db-wal", "*.db-shm", "*.zip", "*.exe", "*.so", "*.a", "responder", "loadbench"} {
			if ok, _ := filepath.Match(pattern, base); ok {
				t.Errorf("%s is tracked: a build output or a store (%s)", name, pattern)
			}
		}
		fi, err := os.Stat(name)
		if err != nil {
			continue // deleted in the working tree
		}
		if fi.Size() > maxTrackedBytes {
			t.Errorf("%s is tracked and has %d bytes", name, fi.Size())
		}
		if magic := head(t, name, 4); isExecutable(magic) {
			t.Errorf("%s is tracked and is an executable (%q)", name, magic)
		}
	}
}

// head returns the first n bytes of a file.
func head(t *testing.T, name string, n int) []byte {
	t.Helper()
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	m, err := io.ReadFull(f, b)
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		t.Fatalf("%s: %v", name, err)
	}
	return b[:m]
}

// isExecutable recognises ELF, Mach-O and PE (MZ) headers.
func isExecutable(magic []byte) bool {
	for _, m := range [][]byte{{0x7f, 'E', 'L', 'F'}, {0xcf, 0xfa, 0xed, 0xfe}, {0xfe, 0xed, 0xfa, 0xcf}, {'M', 'Z'}} {
		if bytes.HasPrefix(magic, m) {
			return true
		}
	}
	return false
}
