package app

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/responder-dev/responder/config"
	"github.com/responder-dev/responder/handlers"
	"github.com/responder-dev/responder/internal/yamlx"
	"github.com/responder-dev/responder/quota"
	"github.com/responder-dev/responder/replay"
	"github.com/responder-dev/responder/rules"
	"github.com/responder-dev/responder/store"
)

// cmdReplay decides the stored alerts of a window again with candidate
// rules and prints what would change (SPEC 12). It opens the store
// read-only and calls nothing. Exit 0; 1 when a --max-* threshold is
// exceeded; 2 on bad input (rules, window, store).
func cmdReplay(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("replay", stderr)
	var ruleFiles multiFlag
	fs.Var(&ruleFiles, "rules", "candidate rule `FILE` (repeat to merge several, in order)")
	configPath := fs.String("config", "", "config `FILE` naming the store, safety limits, dry run and MDE quota (default responder.yaml when present)")
	since := fs.String("since", "", "replay the decisions of this long before now (default "+replay.DefaultSince+"; units s, m, h, d, w)")
	from := fs.String("from", "", "replay from this RFC 3339 time (instead of --since)")
	to := fs.String("to", "", "replay up to this RFC 3339 time (default now)")
	source := fs.String("source", "", "only alerts of this source (defender, graph, alertmanager, grafana)")
	format := fs.String("format", "table", "output: table, json or markdown")
	maxNew := fs.Int("max-new-collections", -1, "exit 1 when more alerts than this would be newly collected")
	maxChanged := fs.Int("max-changed", -1, "exit 1 when more alerts than this would change decision")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: responder replay --rules FILE... [--config FILE] [--since 7d | --from T --to T] [--source S]\n                        [--format table|json|markdown] [--max-new-collections N] [--max-changed N]\n\nDecides the stored alerts of a window again with candidate rules and prints what would change.\nReads the store only; calls nothing. Exit 1 when a --max-* threshold is exceeded, 2 on bad input.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	fail := func(format string, args ...any) int {
		fmt.Fprintf(stderr, "responder replay: "+format+"\n", args...)
		return 2
	}
	switch {
	case fs.NArg() > 0:
		return fail("unexpected argument %q (rule files go after --rules)", fs.Arg(0))
	case len(ruleFiles) == 0:
		return fail("--rules is required: the candidate rule files")
	case *format != "table" && *format != "json" && *format != "markdown":
		return fail("--format %q: use table, json or markdown", *format)
	}
	set, err := rules.LoadFiles(ruleFiles...)
	if err != nil {
		printRuleErrors(stderr, err)
		return 2
	}
	w, err := replay.ParseWindow(*since, *from, *to, *source, time.Now())
	if err != nil {
		return fail("%v", err)
	}
	cfg, err := readerConfig(*configPath)
	if err != nil {
		return fail("%s", oneLine(err))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	openCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	st, err := store.OpenReadOnly(openCtx, cfg.Store.Driver, cfg.Store.DSN)
	cancel()
	if err != nil {
		return fail("%s", oneLine(err))
	}
	defer st.Close()
	opts := replayOptions(cfg, set, w)
	progress := newProgress(stderr)
	opts.Progress = progress.update
	report, err := replay.Run(ctx, st, opts)
	progress.done()
	if err != nil {
		return fail("%s", oneLine(err))
	}
	if err := writeReport(stdout, report, *format); err != nil {
		return fail("writing the report: %v", err)
	}
	code := 0
	if *maxNew >= 0 && len(report.NewlyCollected) > *maxNew {
		fmt.Fprintf(stderr, "responder replay: %d alerts would be newly collected, more than --max-new-collections %d\n", len(report.NewlyCollected), *maxNew)
		code = 1
	}
	if *maxChanged >= 0 && report.Changed > *maxChanged {
		fmt.Fprintf(stderr, "responder replay: %d alerts would change decision, more than --max-changed %d\n", report.Changed, *maxChanged)
		code = 1
	}
	return code
}

// apiReplayDuty and apiReplayPage pace a replay run by the service.
const (
	apiReplayDuty = 0.25
	apiReplayPage = 250
)

// replayAPI runs a replay for POST /api/v1/replay, with the service's
// configuration. It reads through a read-only store handle of its own, so
// that its pages never queue behind (or hold up) the service's own
// connection, and paces itself (replay.Options.Duty).
func replayAPI(ctx context.Context, cfg *config.Config, rulesYAML []byte, q handlers.ReplayQuery) (*replay.Report, error) {
	set, err := rules.LoadSource("request body", rulesYAML)
	if err != nil {
		bad := &handlers.BadRequestError{Msg: "the candidate rules are not valid"}
		var ye yamlx.Errors
		if errors.As(err, &ye) {
			for _, e := range ye {
				bad.Problems = append(bad.Problems, e.Error())
			}
		} else {
			bad.Problems = []string{err.Error()}
		}
		return nil, bad
	}
	w, err := replay.ParseWindow(q.Since, q.From, q.To, q.Source, time.Now())
	if err != nil {
		return nil, &handlers.BadRequestError{Msg: err.Error()}
	}
	st, err := store.OpenReadOnly(ctx, cfg.Store.Driver, cfg.Store.DSN)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	opts := replayOptions(cfg, set, w)
	// Inside the service: busy a quarter of the time at most, in small
	// pages, so that intake and the workers keep the CPU.
	opts.Duty, opts.PageSize = apiReplayDuty, apiReplayPage
	report, err := replay.Run(ctx, st, opts)
	if replay.IsBadInput(err) {
		return nil, &handlers.BadRequestError{Msg: err.Error()}
	}
	return report, err
}

// replayOptions are the settings a replay decides with: the configuration's
// dry run, safety limits and quota of the actions group, as serve uses them.
func replayOptions(cfg *config.Config, set *rules.Set, w store.ReplayWindow) replay.Options {
	return replay.Options{
		Rules:  set,
		Window: w,
		DryRun: cfg.Defender.DryRun,
		Limits: rules.CircuitLimits{PerHour: cfg.Safety.MaxCollectionsPerHour, MachinesPer10m: cfg.Safety.MaxMachinesPer10m},
		Quota:  quota.Windows{PerMinute: cfg.Defender.RateLimit.PerMinute, PerHour: cfg.Defender.RateLimit.PerHour, Slack: quota.DefaultSlack},
	}
}

func writeReport(w io.Writer, r *replay.Report, format string) error {
	switch format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetEscapeHTML(false)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	case "markdown":
		return r.WriteMarkdown(w)
	}
	return r.WriteTable(w)
}

// printRuleErrors prints the problems of rule files one per line,
// file:line:col: message, as check does.
func printRuleErrors(w io.Writer, err error) {
	var ye yamlx.Errors
	if errors.As(err, &ye) {
		for _, e := range ye {
			fmt.Fprintln(w, e.Error())
		}
		return
	}
	fmt.Fprintln(w, err)
}

// progress prints how far a long replay is, on one line of a terminal;
// it is silent when stderr is not a terminal (CI logs, pipes).
type progress struct {
	w     io.Writer
	on    bool
	start time.Time
	last  time.Time
	shown bool
}

func newProgress(stderr io.Writer) *progress {
	p := &progress{w: stderr, start: time.Now()}
	if f, ok := stderr.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			p.on = true
		}
	}
	return p
}

func (p *progress) update(done, total int) {
	if !p.on || time.Since(p.last) < 200*time.Millisecond {
		return
	}
	p.last = time.Now()
	rate := float64(done) / max(time.Since(p.start).Seconds(), 0.001)
	fmt.Fprintf(p.w, "\rreplay: %d/%d alerts (%.0f/s)   ", done, total, rate)
	p.shown = true
}

func (p *progress) done() {
	if p.shown {
		fmt.Fprint(p.w, "\r\033[K")
	}
}
