package app

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/responder-dev/responder/alert"
	"github.com/responder-dev/responder/config"
	"github.com/responder-dev/responder/store"
)

// cmdActions lists the audit trail from the store, newest first. It opens the
// store read-only, so it works beside a running server.
func cmdActions(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("actions", stderr)
	configPath := fs.String("config", "", "config file (default responder.yaml when present)")
	machine := fs.String("machine", "", "only this machine id")
	status := fs.String("status", "", "only entries whose decision, outcome, action status or state is this (e.g. collect, cooldown, created, Succeeded, tracking)")
	limit := fs.Int("limit", 50, "at most this many entries (up to 10000)")
	beforeID := fs.Int64("before-id", 0, "only entries older than this id: the next page, as the previous one said")
	asJSON := fs.Bool("json", false, `print the page as one JSON object, as GET /api/v1/actions answers it: {"actions":[...],"more":...,"next_before_id":...}`)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *limit <= 0 || *limit > store.MaxLimit {
		fmt.Fprintf(stderr, "responder actions: --limit must be from 1 to %d\n", store.MaxLimit)
		return 2
	}
	if *beforeID < 0 {
		fmt.Fprintln(stderr, "responder actions: --before-id must be a positive audit entry id")
		return 2
	}
	cfg, err := readerConfig(*configPath)
	if err != nil {
		fmt.Fprintf(stderr, "responder actions: %s\n", oneLine(err))
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := store.OpenReadOnly(ctx, cfg.Store.Driver, cfg.Store.DSN)
	if err != nil {
		fmt.Fprintf(stderr, "responder actions: %s\n", oneLine(err))
		return 1
	}
	defer st.Close()
	page, err := st.EntriesPage(ctx, store.Filter{MachineID: *machine, Status: *status, Limit: *limit, BeforeID: *beforeID})
	if err != nil {
		fmt.Fprintf(stderr, "responder actions: %s\n", oneLine(err))
		return 1
	}
	if *asJSON {
		if err := json.NewEncoder(stdout).Encode(page); err != nil {
			return 1
		}
		return 0
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tTIME\tSOURCE\tALERT\tMACHINE\tRULE\tDECISION\tOUTCOME\tSTATUS\tACTION\tATTRIBUTES\tREASON")
	for _, e := range page.Actions {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.ID, e.CreatedAt.Format(time.RFC3339), e.Source, e.AlertID,
			dash(e.MachineID), dash(e.Rule), e.Decision, dash(string(e.Outcome)), dash(e.ActionStatus), dash(e.ActionID), dash(attributes(e.Machine)), e.Reason)
	}
	if err := tw.Flush(); err != nil {
		return 1
	}
	if page.More {
		// On stderr, so that the table on stdout stays only the table.
		fmt.Fprintf(stderr, "more entries: next page with --before-id %d\n", page.NextBeforeID)
	}
	return 0
}

// attributes is a machine snapshot in a table cell: the attributes rules
// read most, those that are set ("" when the rules read none).
func attributes(m *alert.Machine) string {
	if m == nil {
		return ""
	}
	var parts []string
	add := func(k, v string) {
		if v != "" {
			parts = append(parts, k+"="+v)
		}
	}
	if len(m.Tags) > 0 {
		add("tags", strings.Join(m.Tags, ","))
	}
	add("os", m.OSPlatform)
	add("health", m.HealthStatus)
	add("risk", m.RiskScore)
	add("exposure", m.ExposureLevel)
	add("value", m.DeviceValue)
	add("group", m.Group)
	if len(parts) == 0 {
		return "(none set)"
	}
	return strings.Join(parts, " ")
}

// readerConfig is the configuration of a command that only reads the store
// (actions, replay): the file at path (default responder.yaml when
// present), or none, with the RESPONDER_* variables over it, as serve reads
// it. It does not demand webhook auth or credentials: problems with what
// only serve needs are not this command's, so the configuration is kept
// whenever it could be read.
func readerConfig(path string) (*config.Config, error) {
	if path == "" {
		path = defaultConfigPath()
	}
	cfg, err := config.Load(path, nil, os.LookupEnv)
	if cfg == nil {
		return nil, err
	}
	return cfg, nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
