package app

import (
	"fmt"
	"io"
)

// cmdActions lists the audit trail; it needs the durable store.
func cmdActions(args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "responder actions: the audit trail arrives with the durable store")
	return 1
}
