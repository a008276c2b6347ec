package app

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/responder-dev/responder/config"
	"github.com/responder-dev/responder/pipeline"
)

// cmdActions lists the audit trail from the store, newest first. It opens the
// store read-only, so it works beside a running server.
func cmdActions(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("actions", stderr)
	configPath := fs.String("config", "", "config file (default responder.yaml when present)")
	machine := fs.String("machine", "", "only this machine id")
	status := fs.String("status", "", "only entries whose decision, outcome, action status or state is this (e.g. collect, cooldown, created, Succeeded, tracking)")
	limit := fs.Int("limit", 50, "at most this many entries")
	asJSON := fs.Bool("json", false, "print one JSON object per line")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *limit <= 0 || *limit > 10000 {
		fmt.Fprintln(stderr, "responder actions: --limit must be from 1 to 10000")
		return 2
	}
	path := *configPath
	if path == "" {
		path = defaultConfigPath()
	}
	cfg := config.Default()
	if path != "" {
		// Only the store settings matter here: do not demand webhook auth
		// or credentials of a command that only reads.
		c, err := config.Load(path, nil, os.LookupEnv)
		if c == nil {
			fmt.Fprintf(stderr, "responder actions: %s\n", oneLine(err))
			return 1
		}
		cfg = c
	} else {
		if v, ok := os.LookupEnv(config.EnvName("store.driver")); ok {
			cfg.Store.Driver = v
		}
		if v, ok := os.LookupEnv(config.EnvName("store.dsn")); ok {
			cfg.Store.DSN = v
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	store, err := pipeline.OpenStoreReadOnly(ctx, cfg.Store.Driver, cfg.Store.DSN)
	if err != nil {
		fmt.Fprintf(stderr, "responder actions: %s\n", oneLine(err))
		return 1
	}
	defer store.Close()
	entries, err := store.Entries(ctx, pipeline.Filter{MachineID: *machine, Status: *status, Limit: *limit})
	if err != nil {
		fmt.Fprintf(stderr, "responder actions: %s\n", oneLine(err))
		return 1
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		for _, e := range entries {
			if err := enc.Encode(e); err != nil {
				return 1
			}
		}
		return 0
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tTIME\tSOURCE\tALERT\tMACHINE\tRULE\tDECISION\tOUTCOME\tSTATUS\tACTION\tREASON")
	for _, e := range entries {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.ID, e.CreatedAt.Format(time.RFC3339), e.Source, e.AlertID,
			dash(e.MachineID), dash(e.Rule), e.Decision, dash(e.Outcome), dash(e.ActionStatus), dash(e.ActionID), e.Reason)
	}
	if err := tw.Flush(); err != nil {
		return 1
	}
	return 0
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
