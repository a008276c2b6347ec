package rules

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/responder-dev/responder/alert"
	"github.com/responder-dev/responder/audit"
	"github.com/responder-dev/responder/internal/yamlx"
)

// decisionNames lists the decisions for a message.
func decisionNames() string {
	q := make([]string, 0, len(audit.Decisions()))
	for _, d := range audit.Decisions() {
		q = append(q, string(d))
	}
	return strings.Join(q, ", ")
}

// MachineConfig gives the machine attributes of SPEC section 6.2 by the
// names rules use. Rule tests and `responder eval --machine` read it; the
// machine id always comes from the alert.
type MachineConfig struct {
	// ID is the machine id an alert that names only a host resolves to:
	// these tools do not ask Defender. Ignored for alerts that name an id.
	ID               string    `yaml:"id"`
	Name             string    `yaml:"name"`
	OSPlatform       string    `yaml:"os_platform"`
	HealthStatus     string    `yaml:"health_status"`
	RiskScore        string    `yaml:"risk_score"`
	ExposureLevel    string    `yaml:"exposure_level"`
	DeviceValue      string    `yaml:"device_value"`
	Tags             []string  `yaml:"tags"`
	Group            string    `yaml:"group"`
	OnboardingStatus string    `yaml:"onboarding_status"`
	LastSeen         time.Time `yaml:"last_seen"`
	// Unavailable says that the machine's attributes could not be had, as
	// when Defender fails: rules that read machine.* are not evaluated.
	Unavailable bool `yaml:"unavailable"`
}

// Input returns what the decision knows of the machine of alert a: these
// attributes (Machine), or that they are unavailable. An alert that names
// only a host is resolved to ID, as the service resolves it through
// Defender; without an ID it cannot be decided.
func (mc *MachineConfig) Input(a *alert.Alert) Machine {
	var in Machine
	if a.MachineID == "" {
		if mc == nil || mc.ID == "" {
			in.Unavailable = fmt.Sprintf("machine name %q cannot be resolved here: give the id it resolves to (machine: {id: ...})", a.MachineName)
			return in
		}
		a.MachineID = strings.ToLower(mc.ID)
		in.Notes = append(in.Notes, fmt.Sprintf("machine name %q resolved to %s (given)", a.MachineName, a.MachineID))
	}
	if mc != nil && mc.Unavailable {
		in.Unavailable = "the machine's attributes are given as unavailable"
		return in
	}
	m := mc.Machine(a)
	in.Attributes = &m
	return in
}

// GivenState is the state a rule test (`state:`) or `responder eval
// --state FILE` decides in; by default nothing holds an action back.
type GivenState struct {
	// Paused is the kill switch.
	Paused bool `yaml:"paused"`
	// DryRun is defender.dry_run.
	DryRun bool `yaml:"dry_run"`
	// CircuitOpen says that the circuit breaker's safety limits are
	// reached.
	CircuitOpen bool `yaml:"circuit_open"`
	// LastActions are the machine's last decisions holding a cooldown.
	LastActions []GivenAction `yaml:"last_actions"`
}

// GivenAction is a decision the machine had: an action, that long ago.
type GivenAction struct {
	Action Action        `yaml:"action"`
	Ago    time.Duration `yaml:"ago"`
	// DryRun marks a dry-run decision (its cooldown is its own).
	DryRun bool `yaml:"dry_run"`
}

// Memory returns the state as seen at now by machineID's decision (a nil
// GivenState is the default state).
func (g *GivenState) Memory(machineID string, now time.Time) *Memory {
	m := NewMemory(CircuitLimits{})
	m.SetNow(now)
	if g == nil {
		return m
	}
	m.SetPaused(g.Paused)
	if g.CircuitOpen {
		m.ForceCircuitOpen("the safety limits are given as reached")
	}
	for _, l := range g.LastActions {
		m.SetLastAction(machineID, CooldownKey(l.Action, l.DryRun), now.Add(-l.Ago), 0)
	}
	return m
}

// LoadStateFile reads a GivenState from a YAML or JSON file.
func LoadStateFile(path string) (*GivenState, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading state file: %w", err)
	}
	var g GivenState
	if _, err := yamlx.Decode(path, data, &g); err != nil {
		return nil, err
	}
	return &g, nil
}

// Machine returns the machine of alert a with these attributes. Its id is
// the alert's machine id; its name is Name, else the alert's machine name.
// A nil MachineConfig gives a machine with only the id and name.
func (mc *MachineConfig) Machine(a *alert.Alert) alert.Machine {
	m := alert.Machine{ID: a.MachineID, Name: a.MachineName}
	if mc == nil {
		return m
	}
	m.OSPlatform, m.HealthStatus, m.RiskScore = mc.OSPlatform, mc.HealthStatus, mc.RiskScore
	m.ExposureLevel, m.DeviceValue, m.Group = mc.ExposureLevel, mc.DeviceValue, mc.Group
	m.OnboardingStatus, m.LastSeen = mc.OnboardingStatus, mc.LastSeen
	m.Tags = append([]string(nil), mc.Tags...)
	if mc.Name != "" {
		m.Name = mc.Name
	}
	return m
}

// LoadMachineFile reads machine attributes from a YAML or JSON file.
func LoadMachineFile(path string) (*MachineConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading machine file: %w", err)
	}
	var mc MachineConfig
	pos, err := yamlx.Decode(path, data, &mc)
	if err != nil {
		return nil, err
	}
	if msg := mc.check(); msg != "" {
		return nil, fmt.Errorf("%s: id: %s", pos.Lookup(path, "id"), msg)
	}
	return &mc, nil
}

// check returns what is wrong with the given machine, or "".
func (mc *MachineConfig) check() string {
	if mc != nil && mc.ID != "" && !alert.ValidMachineID(mc.ID) {
		return fmt.Sprintf("%q is not a machine id (40 hexadecimal characters)", mc.ID)
	}
	return ""
}

// testFileConfig is a rule test file (SPEC section 6.4).
type testFileConfig struct {
	// RuleFiles are loaded like the service loads them; relative paths are
	// relative to the test file.
	RuleFiles []string         `yaml:"rule_files"`
	Tests     []testCaseConfig `yaml:"tests"`
}

type testCaseConfig struct {
	Name string `yaml:"name"`
	// Format is defender (default) or alertmanager.
	Format string `yaml:"format"`
	// PayloadFile is relative to the test file. Exactly one of PayloadFile
	// and Payload is set.
	PayloadFile string         `yaml:"payload_file"`
	Payload     any            `yaml:"payload"`
	Machine     *MachineConfig `yaml:"machine"`
	// State is the store's state when the alert arrives (default: nothing
	// holds an action back).
	State *GivenState `yaml:"state"`
	// Expect lists one entry per machine a rule matched; [] means none.
	Expect *[]expectConfig `yaml:"expect"`
}

type expectConfig struct {
	MachineID string `yaml:"machine_id"`
	Rule      string `yaml:"rule"`
	// Action, Decision and Comment are compared only when given.
	Action   *Action         `yaml:"action"`
	Decision *audit.Decision `yaml:"decision"`
	Comment  *string         `yaml:"comment"`
}

// testCase is a checked test case, ready to run.
type testCase struct {
	name    string
	pos     yamlx.Position
	format  alert.Format
	payload []byte
	machine *MachineConfig
	state   *GivenState
	expect  []expectConfig
}

// testFile is a checked test file with its rule set loaded.
type testFile struct {
	path  string
	set   *Set
	cases []testCase
}

// RunTests runs rule test files (SPEC section 6.4) and writes `PASS name` or
// `FAIL name` per case to w, with expected and actual decisions for each
// failure, then a summary line. It returns the number of failed cases, and
// an error only for test files that cannot be read or are invalid (every
// problem with file:line:col); the valid files still run.
func RunTests(w io.Writer, files ...string) (failed int, err error) {
	if len(files) == 0 {
		return 0, errors.New("no test files given")
	}
	var errs []error
	passed := 0
	for _, f := range files {
		tf, err := loadTestFile(f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if len(files) > 1 {
			fmt.Fprintf(w, "# %s\n", f)
		}
		for _, tc := range tf.cases {
			if tc.run(w, tf.set) {
				passed++
			} else {
				failed++
			}
		}
	}
	switch {
	case len(errs) > 0:
		fmt.Fprintf(w, "%d passed, %d failed, %d of %d test files invalid\n", passed, failed, len(errs), len(files))
	case failed > 0:
		fmt.Fprintf(w, "FAILED: %d passed, %d failed\n", passed, failed)
	default:
		fmt.Fprintf(w, "ok: %d passed\n", passed)
	}
	return failed, errors.Join(errs...)
}

func loadTestFile(path string) (*testFile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading test file: %w", err)
	}
	var cfg testFileConfig
	pos, err := yamlx.Decode(path, data, &cfg)
	c := &compiler{order: map[string]int{path: 0}}
	if err != nil {
		var es yamlx.Errors
		if !errors.As(err, &es) {
			return nil, err
		}
		c.errs = append(c.errs, es...)
	}
	dir := filepath.Dir(path)
	resolve := func(p string) string {
		if filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}
	lines := splitLines(data)
	at := func(p string) yamlx.Position {
		if q, ok := pos[p]; ok {
			return q
		}
		// An absent key: point at the first key of its mapping.
		return keyStart(lines, pos.Lookup(path, p))
	}

	tf := &testFile{path: path}
	if len(cfg.RuleFiles) == 0 {
		c.add(at("rule_files"), "rule_files", "list the rule files to test")
	}
	if len(cfg.Tests) == 0 {
		c.add(at("tests"), "tests", "no tests")
	}
	names := map[string]yamlx.Position{}
	for i, tcfg := range cfg.Tests {
		p := fmt.Sprintf("tests[%d]", i)
		tc := testCase{name: strings.TrimSpace(tcfg.Name), pos: at(p + ".name"), machine: tcfg.Machine, state: tcfg.State, format: alert.FormatDefender}
		if tc.name == "" {
			c.add(at(p+".name"), p+".name", "a test needs a name")
		} else if first, dup := names[tc.name]; dup {
			c.add(at(p+".name"), p+".name", "duplicate test name %q (first at %s)", tc.name, first)
		} else {
			names[tc.name] = at(p + ".name")
		}
		if tcfg.Format != "" {
			f, err := alert.ParseFormat(tcfg.Format)
			if err != nil {
				c.add(at(p+".format"), p+".format", "%v", err)
			}
			tc.format = f
		}
		switch {
		case tcfg.PayloadFile != "" && tcfg.Payload != nil:
			c.add(at(p+".payload"), p+".payload", "give either payload or payload_file, not both")
		case tcfg.PayloadFile != "":
			b, err := os.ReadFile(resolve(tcfg.PayloadFile))
			if err != nil {
				c.add(at(p+".payload_file"), p+".payload_file", "cannot read the payload file: %s", pathErrorText(err))
			}
			tc.payload = b
		case tcfg.Payload != nil:
			b, err := json.Marshal(tcfg.Payload)
			if err != nil {
				c.add(at(p+".payload"), p+".payload", "cannot encode the payload as JSON: %v", err)
			}
			tc.payload = b
		default:
			c.add(at(p), p, "give the alert as payload (inline) or payload_file")
		}
		if msg := tcfg.Machine.check(); msg != "" {
			c.add(at(p+".machine.id"), p+".machine.id", "%s", msg)
		}
		if tcfg.Expect == nil {
			c.add(at(p+".expect"), p+".expect", "missing: list the expected decisions, or expect: [] when no rule may match")
		} else {
			tc.expect = *tcfg.Expect
		}
		for j, e := range tc.expect {
			ep := fmt.Sprintf("%s.expect[%d]", p, j)
			if e.MachineID == "" {
				c.add(at(ep+".machine_id"), ep+".machine_id", "missing: the machine id from the payload (its host name when the alert names no id)")
			}
			if e.Rule == "" {
				c.add(at(ep+".rule"), ep+".rule", "missing: the name of the rule expected to decide")
			}
			if e.Comment != nil && e.Action != nil && !e.Action.SendsComment() {
				c.add(at(ep+".comment"), ep+".comment", "action %s sends no comment", *e.Action)
			}
			if e.Decision != nil && !slices.Contains(audit.Decisions(), *e.Decision) {
				c.add(at(ep+".decision"), ep+".decision", "unknown decision %q (want one of %s)", *e.Decision, decisionNames())
			}
		}
		tf.cases = append(tf.cases, tc)
	}
	if err := c.err(); err != nil {
		return nil, err
	}

	ruleFiles := make([]string, len(cfg.RuleFiles))
	for i, f := range cfg.RuleFiles {
		ruleFiles[i] = resolve(f)
	}
	set, err := LoadFiles(ruleFiles...)
	if err != nil {
		return nil, fmt.Errorf("%s: rule_files: the rule files do not load:\n%w", at("rule_files"), err)
	}
	tf.set = set
	return tf, nil
}

// outcome is one decision of a test case, in the shape of an expect entry.
type outcome struct {
	machineID string
	rule      string
	action    Action
	decision  audit.Decision
	comment   string // only for actions that send one
}

func (o outcome) String() string {
	s := fmt.Sprintf("{machine_id: %s, rule: %s, action: %s, decision: %s", o.machineID, o.rule, o.action, o.decision)
	if o.action.SendsComment() {
		s += fmt.Sprintf(", comment: %q", o.comment)
	}
	return s + "}"
}

func expectString(e expectConfig) string {
	s := fmt.Sprintf("{machine_id: %s, rule: %s", e.MachineID, e.Rule)
	if e.Action != nil {
		s += fmt.Sprintf(", action: %s", *e.Action)
	}
	if e.Decision != nil {
		s += fmt.Sprintf(", decision: %s", *e.Decision)
	}
	if e.Comment != nil {
		s += fmt.Sprintf(", comment: %q", *e.Comment)
	}
	return s + "}"
}

func (e expectConfig) matches(o outcome) bool {
	return e.MachineID == o.machineID && e.Rule == o.rule &&
		(e.Action == nil || *e.Action == o.action) &&
		(e.Decision == nil || *e.Decision == o.decision) &&
		(e.Comment == nil || *e.Comment == o.comment)
}

// run runs the case, writes its result and reports whether it passed.
func (tc *testCase) run(w io.Writer, set *Set) bool {
	batch, err := alert.Decode(tc.format, tc.payload)
	if err != nil {
		fmt.Fprintf(w, "FAIL %s (%s)\n    the payload does not decode as %s: %v\n", tc.name, tc.pos, tc.format, err)
		return false
	}
	var got []outcome
	var why, notes []string
	for _, p := range batch.Invalid {
		notes = append(notes, "invalid alert in the payload: "+p.String())
	}
	for i := range batch.Alerts {
		a := &batch.Alerts[i]
		id := a.MachineID
		if id == "" {
			id = a.MachineName
		}
		if id == "" {
			notes = append(notes, fmt.Sprintf("alert %s names no machine: not evaluated", a.ID))
			continue
		}
		now := time.Now()
		d, err := Decide(Input{Alert: a, Machine: tc.machine.Input(a), Rules: set,
			State: tc.state.Memory(a.MachineID, now), DryRun: tc.state != nil && tc.state.DryRun, Now: now})
		if err != nil { // a Memory state does not fail
			fmt.Fprintf(w, "FAIL %s (%s)\n    %v\n", tc.name, tc.pos, err)
			return false
		}
		why = append(why, fmt.Sprintf("%s: %s", id, d.Reason))
		for _, e := range d.Errors {
			notes = append(notes, "warning: "+e.Error())
		}
		if d.Matched() {
			got = append(got, outcome{machineID: id, rule: d.Rule, action: d.Action, decision: d.Decision, comment: d.Comment})
		}
	}

	used := make([]bool, len(got))
	var missing []string
	for _, e := range tc.expect {
		found := false
		for i, o := range got {
			if !used[i] && e.matches(o) {
				used[i], found = true, true
				break
			}
		}
		if !found {
			missing = append(missing, expectString(e))
		}
	}
	var unexpected []string
	for i, o := range got {
		if !used[i] {
			unexpected = append(unexpected, o.String())
		}
	}
	if len(missing) == 0 && len(unexpected) == 0 {
		fmt.Fprintf(w, "PASS %s\n", tc.name)
		for _, n := range notes {
			fmt.Fprintf(w, "    %s\n", n)
		}
		return true
	}
	fmt.Fprintf(w, "FAIL %s (%s)\n", tc.name, tc.pos)
	for _, s := range missing {
		fmt.Fprintf(w, "    - expected, not got: %s\n", s)
	}
	for _, s := range unexpected {
		fmt.Fprintf(w, "    + got, not expected: %s\n", s)
	}
	if len(tc.expect) == 0 {
		fmt.Fprintf(w, "    expected: no rule matches (expect: [])\n")
	}
	if len(got) == 0 {
		fmt.Fprintf(w, "    got: no rule matched\n")
	}
	for _, s := range why {
		fmt.Fprintf(w, "    why %s\n", s)
	}
	for _, n := range notes {
		fmt.Fprintf(w, "    %s\n", n)
	}
	return false
}
