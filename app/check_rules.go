package app

import (
	"fmt"
	"io"
	"os"
)

// checkRules validates rule files; the rules package replaces this
// existence check when it lands.
func checkRules(stdout io.Writer, files []string) bool {
	ok := true
	for _, f := range files {
		if _, err := os.Stat(f); err != nil {
			fmt.Fprintf(stdout, "%s: %v\n", f, err)
			ok = false
		}
	}
	return ok
}
