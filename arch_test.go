package main

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The architecture (README, "Layout"): each package does one of HTTP
// intake (handlers), storage (store), queue work (pipeline), deciding
// (rules) and talking to Defender (defender). These tests keep it so.

const module = "github.com/responder-dev/responder/"

// onlyIn maps an import to the only packages whose non-test code may use
// it. The tools beside the product (the benchmarks, the test helpers, the
// Defender simulator, which is a fake Defender, and the demo's alert
// sender, a fake sender) are not held to it.
var onlyIn = map[string][]string{
	"github.com/labstack/echo/v4":              {"handlers"},
	"github.com/jackc/pgx/v5/stdlib":           {"store"},
	"modernc.org/sqlite":                       {"store", "internal/sqlitecache"},
	"github.com/riverqueue/river":              {"pipeline"},
	"github.com/riverqueue/river/rivermigrate": {"store"},
	"github.com/expr-lang/expr":                {"rules"},
	"net/http":                                 {"handlers", "defender", "notify"},
}

var tools = []string{"internal/loadbench", "internal/testkit", "defender/defendertest", "examples/demo"}

// TestPackagesKeepToTheirJob checks the imports above, and that no SQL is
// written outside the store.
func TestPackagesKeepToTheirJob(t *testing.T) {
	t.Parallel()
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}} {{join .Imports " "}}`, "./...").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		pkg := strings.TrimPrefix(fields[0], module)
		if isTool(pkg) {
			continue
		}
		for _, imp := range fields[1:] {
			if allowed, ok := onlyIn[imp]; ok && !contains(allowed, pkg) {
				t.Errorf("%s imports %s, which only %v may use", pkg, imp, allowed)
			}
		}
	}
	sqlText := regexp.MustCompile(`\b(SELECT|INSERT INTO|UPDATE \w+ SET|DELETE FROM|CREATE TABLE)\b`)
	for _, dir := range []string{"pipeline", "handlers", "rules", "defender", "app", "quota", "audit", "alert", "config", "replay"} {
		files, _ := filepath.Glob(filepath.Join(dir, "*.go"))
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if m := sqlText.Find(b); m != nil {
				t.Errorf("%s holds SQL (%q): SQL belongs to package store", f, m)
			}
		}
	}
}

func isTool(pkg string) bool {
	for _, t := range tools {
		if pkg == t || strings.HasPrefix(pkg, t+"/") {
			return true
		}
	}
	return false
}

func contains(set []string, s string) bool {
	for _, v := range set {
		if v == s {
			return true
		}
	}
	return false
}

// maxFunctionLines bounds the functions of the packages that work the
// alerts (the pipeline and what came out of it): a longer one hides more
// than one step.
const maxFunctionLines = 80

// TestFunctionsStayShort: no non-test function of pipeline, store or quota
// is longer than maxFunctionLines.
func TestFunctionsStayShort(t *testing.T) {
	t.Parallel()
	fset := token.NewFileSet()
	for _, dir := range []string{"pipeline", "store", "quota", "replay"} {
		files, _ := filepath.Glob(filepath.Join(dir, "*.go"))
		for _, name := range files {
			if strings.HasSuffix(name, "_test.go") {
				continue
			}
			f, err := parser.ParseFile(fset, name, nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range f.Decls {
				fn, ok := d.(*ast.FuncDecl)
				if !ok || fn.Body == nil {
					continue
				}
				lines := fset.Position(fn.End()).Line - fset.Position(fn.Pos()).Line + 1
				if lines > maxFunctionLines {
					t.Errorf("%s: %s is %d lines long (at most %d)", name, fn.Name.Name, lines, maxFunctionLines)
				}
			}
		}
	}
}
