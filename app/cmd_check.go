package app

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/responder-dev/responder/config"
)

// cmdCheck validates the configuration and rule files and prints every
// problem as file:line:col: message (SPEC section 3).
func cmdCheck(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("check", stderr)
	configPath := fs.String("config", "", "config file (default responder.yaml when present)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	path := *configPath
	if path == "" {
		path = defaultConfigPath()
	}
	ruleFiles := fs.Args()
	failed := false

	var cfg *config.Config
	if path != "" || len(ruleFiles) == 0 {
		c, err := config.Load(path, nil, os.LookupEnv)
		var ps config.Problems
		switch {
		case errors.As(err, &ps):
			for _, p := range ps {
				fmt.Fprintln(stdout, p.Error())
			}
			failed = true
		case err != nil:
			fmt.Fprintf(stdout, "%v\n", err)
			failed = true
		}
		cfg = c
	}
	if len(ruleFiles) == 0 && cfg != nil {
		ruleFiles = cfg.Rules.Files
	}
	if !checkRules(stdout, ruleFiles) {
		failed = true
	}
	if failed {
		return 1
	}
	if path != "" {
		fmt.Fprintf(stdout, "%s: OK\n", path)
	}
	return 0
}
