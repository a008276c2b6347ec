// Package rules loads, checks and evaluates the YAML rule files that decide
// whether the machine of an alert qualifies for an action (SPEC section 6).
//
// Rule files are decoded strictly into FileConfig values, then compiled once
// into an immutable Set: each `when` condition becomes an expr-lang program
// type-checked against the alert and machine names rules may read, and each
// `comment` a parsed text/template. Every problem of every file is reported
// at once with its file, line and column. A Manager holds the Set in force
// and swaps in a new one only when it is completely valid.
package rules

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"text/template"
	"time"
	"unicode/utf8"

	"github.com/expr-lang/expr/file"
	"github.com/expr-lang/expr/vm"

	"github.com/responder-dev/responder/alert"
)

// Set is a compiled, immutable rule set: the rules of every file, in order.
// It is safe for concurrent use.
type Set struct {
	rules           []*rule // all rules, in order
	active          []*rule // enabled rules, in order
	activeChunks    []chunk // active, compiled in chunks
	resolvedChunks  []chunk // the active rules with on_resolved, in chunks
	activeIndex     *guardIndex
	resolvedIndex   *guardIndex
	files           []FileInfo
	onResolved      int // active rules with on_resolved
	needsMachine    bool
	acceptsResolved bool
}

// rule is the compiled form of a RuleConfig.
type rule struct {
	name        string
	description string
	file        string
	line        int
	when        string      // as written
	whenText    string      // on one line, for reasons
	program     *vm.Program // accelerated (fast.go)
	reference   *vm.Program // as written; for tests
	action      Action
	cooldown    time.Duration
	comment     *template.Template
	dryRun      bool
	enabled     bool
	onResolved  bool
	// readsMachine is true when the condition reads machine.*.
	readsMachine bool
	// guard is the condition's leading cheap terms (guard.go).
	guard guard
}

// FileInfo describes one loaded rule file.
type FileInfo struct {
	Path     string    `json:"path"`
	SHA256   string    `json:"sha256"`
	LoadedAt time.Time `json:"loaded_at"`
}

// RuleInfo describes one loaded rule, for the rules API and the CLI.
type RuleInfo struct {
	Name        string        `json:"name"`
	Description string        `json:"description,omitempty"`
	File        string        `json:"file"`
	Line        int           `json:"line"`
	Action      Action        `json:"action"`
	Cooldown    time.Duration `json:"cooldown"` // encoded as a Go duration string
	DryRun      bool          `json:"dry_run"`
	Enabled     bool          `json:"enabled"`
	OnResolved  bool          `json:"on_resolved"`
	When        string        `json:"when"`
}

// MarshalJSON encodes the rule with its cooldown as a Go duration ("24h0m0s").
func (ri RuleInfo) MarshalJSON() ([]byte, error) {
	type plain RuleInfo
	return json.Marshal(struct {
		plain
		Cooldown string `json:"cooldown"`
	}{plain(ri), ri.Cooldown.String()})
}

// Len returns the number of rules in the set, disabled ones included.
func (s *Set) Len() int { return len(s.rules) }

// NeedsMachine reports whether some enabled rule's condition reads
// machine.*: only then must the machine attributes be fetched.
func (s *Set) NeedsMachine() bool { return s.needsMachine }

// AcceptsResolved reports whether some enabled rule has on_resolved: true.
// Resolved alerts can be dropped on arrival otherwise.
func (s *Set) AcceptsResolved() bool { return s.acceptsResolved }

// Names returns the rule names in order, for metrics.InitRules.
func (s *Set) Names() []string {
	out := make([]string, len(s.rules))
	for i, r := range s.rules {
		out[i] = r.name
	}
	return out
}

// Rules describes every rule, in evaluation order.
func (s *Set) Rules() []RuleInfo {
	out := make([]RuleInfo, len(s.rules))
	for i, r := range s.rules {
		out[i] = RuleInfo{
			Name: r.name, Description: r.description, File: r.file, Line: r.line,
			Action: r.action, Cooldown: r.cooldown, DryRun: r.dryRun,
			Enabled: r.enabled, OnResolved: r.onResolved, When: r.when,
		}
	}
	return out
}

// Files describes the loaded files, in merge order.
func (s *Set) Files() []FileInfo { return append([]FileInfo(nil), s.files...) }

// Match is what the rules alone say of one alert and machine: which rule
// matched first, if any. It explains itself: Reason says which rule matched
// and why, or that none did. Decide turns it into the decision, with the
// state (cooldown, kill switch, circuit breaker, dry run).
type Match struct {
	// Matched is true when a rule matched (false means no_match).
	Matched bool
	// Rule is the deciding rule's name, "" when none matched.
	Rule string
	// Action is the deciding rule's action (ActionIgnore for ignore rules),
	// "" when none matched.
	Action Action
	// Comment is the rendered comment for actions that send one, at most
	// MaxCommentLength characters.
	Comment string
	// Cooldown is the deciding rule's cooldown per machine and action.
	Cooldown time.Duration
	// DryRun is the deciding rule's dry_run.
	DryRun bool
	// Reason is a one-line human explanation for logs and the audit trail.
	Reason string
	// Errors lists the rules that could not be evaluated on this alert (they
	// counted as not matching) and comment templates that failed (the
	// default comment was used). Callers log them at warn level.
	Errors []EvalError
}

// EvalError is a problem met while evaluating one rule on one alert.
type EvalError struct {
	Rule string
	Err  error
}

// Error formats the problem as `rule "name": message`.
func (e EvalError) Error() string { return fmt.Sprintf("rule %q: %v", e.Rule, e.Err) }

// Unwrap returns the underlying error.
func (e EvalError) Unwrap() error { return e.Err }

var (
	vmPool  = sync.Pool{New: func() any { return &vm.VM{} }}
	envPool = sync.Pool{New: func() any { return &env{} }}
)

// Evaluate decides for alert a about machine m. m may be nil when
// NeedsMachine is false or the machine lookup failed: machine.* then reads
// zero values. The first enabled rule whose condition is true decides; a
// resolved alert is only considered by rules with on_resolved: true. A rule
// whose condition fails at run time (a type error on unexpected data) counts
// as not matching and is listed in Match.Errors. Evaluate never panics on
// alert data.
func (s *Set) Evaluate(a *alert.Alert, m *alert.Machine) Match {
	e := envPool.Get().(*env)
	if a != nil {
		e.Alert = *a
	}
	if m != nil {
		e.Machine = *m
	}
	machine := vmPool.Get().(*vm.VM)
	defer func() {
		e.reset()
		envPool.Put(e)
		vmPool.Put(machine)
	}()

	chunks, index, skipped := s.activeChunks, s.activeIndex, 0
	if e.Alert.Status == alert.StatusResolved {
		chunks, index, skipped = s.resolvedChunks, s.resolvedIndex, len(s.active)-s.onResolved
	}
	var small [16]uint64 // the guards that pass, for up to 1,024 rules
	bits := small[:]
	if n := (len(index.rules) + 63) / 64; n > len(small) {
		bits = make([]uint64, n)
	}
	index.passing(e, bits)
	var errs []EvalError
	for i := range chunks {
		c := &chunks[i]
		if !c.mayMatch(bits) {
			continue // every rule's guard fails: all are false
		}
		if c.program != nil {
			out, err := machine.Run(c.program, e)
			if i, ok := out.(int); err == nil && ok {
				if i >= 0 {
					return c.rules[i].decide(e, errs)
				}
				continue
			}
			// A condition failed at run time: run the rules one by one to
			// know which, and to go on past it.
		}
		for _, r := range c.rules {
			out, err := machine.Run(r.program, e)
			if err != nil {
				errs = append(errs, EvalError{Rule: r.name, Err: runtimeError(err)})
				continue
			}
			if ok, _ := out.(bool); ok {
				return r.decide(e, errs)
			}
		}
	}
	reason := "no enabled rule matched"
	if skipped > 0 {
		reason += fmt.Sprintf(" (the alert is resolved: %d rules without on_resolved: true did not consider it)", skipped)
	}
	return Match{Reason: reason + errorsSuffix(errs), Errors: errs}
}

func (r *rule) decide(e *env, errs []EvalError) Match {
	d := Match{
		Matched:  true,
		Rule:     r.name,
		Action:   r.action,
		Cooldown: r.cooldown,
		DryRun:   r.dryRun,
	}
	switch {
	case r.action == ActionIgnore:
		d.Reason = fmt.Sprintf("rule %q matched (ignore: no action): %s", r.name, r.whenText)
	case r.dryRun:
		d.Reason = fmt.Sprintf("rule %q matched (dry run): %s", r.name, r.whenText)
	default:
		d.Reason = fmt.Sprintf("rule %q matched: %s", r.name, r.whenText)
	}
	if r.action.SendsComment() {
		comment, err := r.render(e)
		if err != nil {
			errs = append(errs, EvalError{Rule: r.name, Err: err})
		}
		d.Comment = comment
	}
	d.Reason += errorsSuffix(errs)
	d.Errors = errs
	return d
}

// render renders the rule's comment. When the template fails on this alert
// (a missing label) or renders nothing, the default comment is used and the
// problem returned.
func (r *rule) render(e *env) (string, error) {
	data := CommentData{
		Alert:   e.Alert,
		Machine: e.Machine,
		Rule:    CommentRule{Name: r.name, Description: r.description},
	}
	var b strings.Builder
	err := r.comment.Execute(&b, data)
	text := strings.TrimSpace(b.String())
	if err == nil && text == "" {
		err = errors.New("comment: the template rendered an empty comment; the default comment was used")
	} else if err != nil {
		_, msg := templateError("", err)
		err = fmt.Errorf("comment: %s; the default comment was used", msg)
	}
	if err != nil {
		b.Reset()
		_ = defaultComment.Execute(&b, data) // reads .Alert.ID only: cannot fail
		text = b.String()
	}
	return capComment(text), err
}

// capComment cuts s to MaxCommentLength characters, on a rune boundary.
func capComment(s string) string {
	if len(s) <= MaxCommentLength || utf8.RuneCountInString(s) <= MaxCommentLength {
		return s
	}
	n := 0
	for i := range s {
		if n == MaxCommentLength {
			return s[:i]
		}
		n++
	}
	return s
}

// runtimeError strips expr's source snippet from an evaluation error.
func runtimeError(err error) error {
	var fe *file.Error
	if errors.As(err, &fe) {
		return errors.New("condition failed, counted as not matching: " + fe.Message)
	}
	return fmt.Errorf("condition failed, counted as not matching: %w", err)
}

func errorsSuffix(errs []EvalError) string {
	var b strings.Builder
	for _, e := range errs {
		fmt.Fprintf(&b, "; %v", e)
	}
	return b.String()
}
