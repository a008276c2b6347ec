package deploy_test

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDockerfile checks the Dockerfile's promises (static, non-root, the
// version stamped, the ports) and, since no Docker engine is needed for it,
// runs its build step on a copy of the build context that .dockerignore
// leaves: the context must hold everything `go build` needs, and the flags
// must give a static binary reporting the version.
func TestDockerfile(t *testing.T) {
	t.Parallel()
	df := string(readFile(t, "Dockerfile"))
	for _, want := range []string{
		"ARG GO_VERSION=1.26",
		"FROM golang:${GO_VERSION} AS build",
		"CGO_ENABLED=0 go build -trimpath",
		`-ldflags "-s -w -X github.com/responder-dev/responder/app.Version=${VERSION}"`,
		"FROM gcr.io/distroless/static-debian12:nonroot",
		"USER 65532:65532",
		"EXPOSE 8080 9090",
		`ENTRYPOINT ["/responder"]`,
		`CMD ["serve"]`,
	} {
		if !strings.Contains(df, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}

	ignore := dockerignore(t)
	ctxDir := t.TempDir()
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			return nil
		}
		if ignore(filepath.ToSlash(rel)) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		dst := filepath.Join(ctxDir, rel)
		if d.IsDir() {
			return os.MkdirAll(dst, 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		return copyFile(p, dst)
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, gone := range []string{".git", "deploy", ".ci", "README.md", "e2e_test.go"} {
		if _, err := os.Stat(filepath.Join(ctxDir, gone)); err == nil {
			t.Errorf(".dockerignore lets %s into the build context", gone)
		}
	}

	out := filepath.Join(t.TempDir(), "responder")
	// A first build with these flags compiles every dependency (modernc's
	// SQLite is large): minutes on a busy 2-core machine. The bound is
	// there to end a hang, not to time the build.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-buildvcs=false",
		"-ldflags", "-s -w -X github.com/responder-dev/responder/app.Version=v0.0.0-dockerfile-test", "-o", out, ".")
	build.Dir = ctxDir
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-mod=readonly")
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build in the .dockerignore'd context: %v\n%s", err, b)
	}
	f, err := elf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the binary has a dynamic loader: not static")
		}
	}
	v, err := exec.CommandContext(ctx, out, "version").CombinedOutput()
	if err != nil || !bytes.Contains(v, []byte("v0.0.0-dockerfile-test")) {
		t.Errorf("responder version: %v\n%s", err, v)
	}
}

// dockerignore returns a matcher of the repository's .dockerignore, with
// Docker's rules: patterns are relative to the context root, "**" matches any
// number of directories, and a matched directory excludes what it holds.
func dockerignore(t *testing.T) func(rel string) bool {
	t.Helper()
	var patterns [][]string
	sc := bufio.NewScanner(bytes.NewReader(readFile(t, ".dockerignore")))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(line, "!") {
			t.Fatalf(".dockerignore: exceptions (%s) are not understood by this test", line)
		}
		patterns = append(patterns, strings.Split(path.Clean(strings.TrimPrefix(line, "/")), "/"))
	}
	var match func(p, s []string) bool
	match = func(p, s []string) bool {
		if len(p) == 0 {
			return true
		}
		if p[0] == "**" {
			for i := 0; i <= len(s); i++ {
				if match(p[1:], s[i:]) {
					return true
				}
			}
			return false
		}
		if len(s) == 0 {
			return false
		}
		ok, _ := path.Match(p[0], s[0])
		return ok && match(p[1:], s[1:])
	}
	return func(rel string) bool {
		s := strings.Split(rel, "/")
		for _, p := range patterns {
			if match(p, s) {
				return true
			}
		}
		return false
	}
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
