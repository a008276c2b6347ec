package app

import (
	"fmt"
	"io"
)

// cmdTest runs rule unit test files (SPEC 6.4). Being written.
func cmdTest(args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "responder test: not available yet")
	return 2
}

// cmdEval prints the decision for each alert of a payload. Being written.
func cmdEval(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "responder eval: not available yet")
	return 2
}
