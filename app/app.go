// Package app wires the responder together: the command-line verbs of SPEC
// section 3, the serve process with its listeners, pipeline and rule
// watcher, and the signal handling. main.go only calls Main, so that tests
// can run the whole program in-process.
package app

import (
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
)

// Version is the responder version, set at build time with
// -ldflags "-X github.com/responder-dev/responder/app.Version=v1.2.3".
var Version = "dev"

// Commit returns the VCS revision the binary was built from, if known.
func Commit() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	rev, dirty := "unknown", false
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if dirty {
		rev += "-dirty"
	}
	return rev
}

// UserAgent is the User-Agent of every outbound request.
func UserAgent() string { return "responder/" + Version }

const usage = `responder receives alert webhooks, decides with YAML rules whether the
machine in an alert qualifies, and asks Microsoft Defender for Endpoint to
collect an investigation package.

Usage:
  responder serve [--config FILE] [--dev]    run the service
  responder check [--config FILE] [RULES...] validate config and rule files
  responder test FILE...                      run rule unit tests
  responder eval --rules FILE [--format defender|alertmanager] [--machine FILE] < payload.json
  responder replay --rules FILE... [--config FILE] [--since 7d | --from T --to T] [--source S]
                   [--format table|json|markdown] [--max-new-collections N] [--max-changed N]
                                              decide stored alerts again with candidate rules
  responder notify test NAME [--config FILE] [--event KIND]
                                              send a sample message to one notifier
  responder actions [--config FILE] [--machine ID] [--status S] [--limit N] [--before-id ID] [--json]
  responder version                           print version information

Run "responder COMMAND --help" for the flags of a command.
`

// Main runs the command line and returns the process exit code.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "serve":
		return cmdServe(rest, stdout, stderr)
	case "check":
		return cmdCheck(rest, stdout, stderr)
	case "test":
		return cmdTest(rest, stdout, stderr)
	case "eval":
		return cmdEval(rest, stdin, stdout, stderr)
	case "actions":
		return cmdActions(rest, stdout, stderr)
	case "replay":
		return cmdReplay(rest, stdout, stderr)
	case "notify":
		return cmdNotify(rest, stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintf(stdout, "responder %s\n  commit: %s\n  go: %s %s/%s\n", Version, Commit(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "responder: unknown command %q\n\n%s", cmd, usage)
	return 2
}

// newFlagSet returns a flag set that reports errors instead of exiting.
func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("responder "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// defaultConfigPath returns responder.yaml when it exists, else "".
func defaultConfigPath() string {
	if _, err := os.Stat("responder.yaml"); err == nil {
		return "responder.yaml"
	}
	return ""
}

// oneLine flattens a multi-line error for the one-line reasons of SPEC 3.
func oneLine(err error) string {
	return strings.ReplaceAll(err.Error(), "\n", "; ")
}
