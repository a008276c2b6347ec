package app

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/responder-dev/responder/alert"
	"github.com/responder-dev/responder/rules"
)

// cmdTest runs rule unit test files (SPEC 6.4): exit 0 when every case
// passes, 1 on a failure or an invalid test file, 2 on a usage error.
func cmdTest(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("test", stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: responder test FILE...\n\nRuns the rule unit tests of each FILE (rule_files, tests with payload and expect).")
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(stderr, "responder test: no test file given")
		fs.Usage()
		return 2
	}
	failed, err := rules.RunTests(stdout, fs.Args()...)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if failed > 0 {
		return 1
	}
	return 0
}

// multiFlag collects a flag given several times.
type multiFlag []string

func (m *multiFlag) String() string { return strings.Join(*m, ",") }

func (m *multiFlag) Set(v string) error {
	*m = append(*m, v)
	return nil
}

// evalResult is one line of `responder eval`: the decision for one alert
// and machine.
type evalResult struct {
	AlertID     string `json:"alert_id"`
	Source      string `json:"source"`
	MachineID   string `json:"machine_id"`
	MachineName string `json:"machine_name"`
	Matched     bool   `json:"matched"`
	// Decision is the decision of the audit trail, decided by the one
	// decision function with the state of --state (by default nothing
	// holds an action back; duplicates need the store and are not known
	// here).
	Decision string   `json:"decision"`
	Rule     string   `json:"rule"`
	Action   string   `json:"action"`
	Comment  string   `json:"comment"`
	Cooldown string   `json:"cooldown"`
	DryRun   bool     `json:"dry_run"`
	Reason   string   `json:"reason"`
	Errors   []string `json:"errors,omitempty"`
}

// cmdEval prints the decision for each alert and machine of a payload read
// from stdin, as one JSON object per line. It calls nothing: machine
// attributes come from --machine. Exit 0 on success, 1 on bad input, 2 on a
// usage error.
func cmdEval(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := newFlagSet("eval", stderr)
	var ruleFiles multiFlag
	fs.Var(&ruleFiles, "rules", "rule `FILE` (repeat to merge several, in order)")
	format := fs.String("format", string(alert.FormatDefender), "payload format: defender or alertmanager")
	machineFile := fs.String("machine", "", "YAML or JSON `FILE` with the machine attributes rules read (tags, risk_score, ...; unavailable: true as when Defender fails)")
	stateFile := fs.String("state", "", "YAML or JSON `FILE` with the state to decide in (paused, dry_run, circuit_open, last_actions); default: nothing holds an action back")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: responder eval --rules FILE [--rules FILE2] [--format defender|alertmanager] [--machine FILE] < payload.json\n\nPrints the decision for each alert and machine of the payload as JSON. Calls nothing.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if len(ruleFiles) == 0 || fs.NArg() > 0 {
		if fs.NArg() > 0 {
			fmt.Fprintf(stderr, "responder eval: unexpected argument %q (the payload is read from stdin)\n", fs.Arg(0))
		} else {
			fmt.Fprintln(stderr, "responder eval: --rules is required")
		}
		fs.Usage()
		return 2
	}
	f, err := alert.ParseFormat(*format)
	if err != nil {
		fmt.Fprintf(stderr, "responder eval: --format: %v\n", err)
		return 2
	}

	set, err := rules.LoadFiles(ruleFiles...)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	var mc *rules.MachineConfig
	if *machineFile != "" {
		if mc, err = rules.LoadMachineFile(*machineFile); err != nil {
			fmt.Fprintf(stderr, "responder eval: --machine: %v\n", err)
			return 1
		}
	} else if set.NeedsMachine() {
		fmt.Fprintln(stderr, "responder eval: note: the rules read machine.* but no --machine file was given; machine attributes are empty")
	}
	var state *rules.GivenState
	if *stateFile != "" {
		if state, err = rules.LoadStateFile(*stateFile); err != nil {
			fmt.Fprintf(stderr, "responder eval: --state: %v\n", err)
			return 1
		}
	}
	body, err := io.ReadAll(stdin)
	if err != nil {
		fmt.Fprintf(stderr, "responder eval: reading the payload from stdin: %v\n", err)
		return 1
	}
	batch, err := alert.Decode(f, body)
	if err != nil {
		fmt.Fprintf(stderr, "responder eval: the payload is not a valid %s alert: %v\n", f, err)
		return 1
	}
	for _, p := range batch.Invalid {
		fmt.Fprintf(stderr, "responder eval: invalid alert skipped: %s\n", p)
	}
	if len(batch.Alerts) == 0 && len(batch.Invalid) == 0 {
		fmt.Fprintln(stderr, "responder eval: the payload holds no alert")
	}

	enc := json.NewEncoder(stdout)
	enc.SetEscapeHTML(false)
	for i := range batch.Alerts {
		a := &batch.Alerts[i]
		now := time.Now()
		d, err := rules.Decide(rules.Input{Alert: a, Machine: mc.Input(a), Rules: set,
			State: state.Memory(a.MachineID, now), DryRun: state != nil && state.DryRun, Now: now})
		if err != nil {
			fmt.Fprintf(stderr, "responder eval: %v\n", err)
			return 1
		}
		res := evalResult{
			AlertID:     a.ID,
			Source:      string(a.Source),
			MachineID:   a.MachineID,
			MachineName: a.MachineName,
			Matched:     d.Matched(),
			Decision:    string(d.Decision),
			Rule:        d.Rule,
			Action:      string(d.Action),
			Comment:     d.Comment,
			Reason:      d.Reason,
			DryRun:      d.DryRun,
		}
		if d.Matched() {
			res.Cooldown = d.Cooldown.String()
		}
		for _, e := range d.Errors {
			res.Errors = append(res.Errors, e.Error())
		}
		if err := enc.Encode(res); err != nil {
			fmt.Fprintf(stderr, "responder eval: %v\n", err)
			return 1
		}
	}
	return 0
}
