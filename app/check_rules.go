package app

import (
	"errors"
	"fmt"
	"io"

	"github.com/responder-dev/responder/internal/yamlx"
	"github.com/responder-dev/responder/rules"
)

// checkRules loads rule files as serve would and prints every problem as
// file:line:col: message.
func checkRules(stdout io.Writer, files []string) bool {
	if len(files) == 0 {
		return true
	}
	set, err := rules.LoadFiles(files...)
	if err != nil {
		var ye yamlx.Errors
		if errors.As(err, &ye) {
			for _, e := range ye {
				fmt.Fprintln(stdout, e.Error())
			}
		} else {
			fmt.Fprintln(stdout, err)
		}
		return false
	}
	for _, f := range set.Files() {
		fmt.Fprintf(stdout, "%s: OK (sha256 %s)\n", f.Path, f.SHA256[:12])
	}
	fmt.Fprintf(stdout, "%d rules\n", set.Len())
	return true
}
