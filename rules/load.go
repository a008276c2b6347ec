package rules

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/ast"
	"github.com/expr-lang/expr/file"
	"github.com/expr-lang/expr/vm"

	"github.com/responder-dev/responder/alert"
	"github.com/responder-dev/responder/internal/yamlx"
	"github.com/responder-dev/responder/metrics"
)

// LoadFiles reads, validates and compiles the rule files, merged in the
// order given. It reports every problem of every file at once, as a
// yamlx.Errors list of "file:line:col: path: message" sorted by file (in the
// order given), line and column.
func LoadFiles(paths ...string) (*Set, error) {
	srcs, err := readSources(paths)
	if err != nil {
		return nil, err
	}
	return compileSources(srcs, time.Now())
}

// LoadSource validates and compiles one rule file's content, named name in
// its errors (the replay API's request body).
func LoadSource(name string, data []byte) (*Set, error) {
	return compileSources([]source{newSource(name, data)}, time.Now())
}

// source is the content of one rule file.
type source struct {
	path string
	data []byte
	hash string
}

func newSource(path string, data []byte) source {
	sum := sha256.Sum256(data)
	return source{path: path, data: data, hash: hex.EncodeToString(sum[:])}
}

func readSources(paths []string) ([]source, error) {
	if len(paths) == 0 {
		return nil, errors.New("no rule files given")
	}
	var errs yamlx.Errors
	srcs := make([]source, 0, len(paths))
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			errs = append(errs, &yamlx.Error{Pos: yamlx.Position{File: p, Line: 1, Col: 1}, Msg: "cannot read the file: " + pathErrorText(err)})
			continue
		}
		srcs = append(srcs, newSource(p, data))
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return srcs, nil
}

// pathErrorText drops the path from an *fs.PathError, which the position
// already names.
func pathErrorText(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

// env is what a `when` condition sees: alert.* and machine.*, by the expr
// names of alert.Alert and alert.Machine (SPEC 5.1 and 6.2). Conditions are
// checked against it and run on it.
type env struct {
	Alert   alert.Alert   `expr:"alert"`
	Machine alert.Machine `expr:"machine"`

	cache fieldCache // of the accelerated programs (fast.go)
}

// CommentData is what a comment template sees: {{ .Alert.ID }},
// {{ .Machine.Name }}, {{ .Rule.Name }}. Fields use their Go names.
type CommentData struct {
	Alert   alert.Alert
	Machine alert.Machine
	Rule    CommentRule
}

// CommentRule is the rule a comment template is rendered for.
type CommentRule struct {
	Name        string
	Description string
}

var (
	nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)

	// defaultComment renders DefaultComment; it is also the fallback when a
	// rule's own template fails on an alert.
	defaultComment = template.Must(template.New("comment").Option("missingkey=error").Parse(DefaultComment))

	alertFields   = exprFields(reflect.TypeFor[alert.Alert]())
	machineFields = exprFields(reflect.TypeFor[alert.Machine]())

	hasNoFieldRE    = regexp.MustCompile(`^type alert\.(Alert|Machine) has no field (\S+)$`)
	unknownNameRE   = regexp.MustCompile(`^unknown name (\S+)$`)
	templateLineRE  = regexp.MustCompile(`^template: [^:]*:(\d+):(?:(\d+):)? (.*)$`)
	templateExecRE  = regexp.MustCompile(`^executing "[^"]*" at <([^>]*)>: (.*)$`)
	templateFieldRE = regexp.MustCompile(`^can't evaluate field (\S+) in type (\S+)$`)

	// goFields are the names a comment template can use, by type name.
	goFields = map[string][]string{
		"alert.Alert":       goFieldNames(reflect.TypeFor[alert.Alert]()),
		"alert.Machine":     goFieldNames(reflect.TypeFor[alert.Machine]()),
		"rules.CommentRule": goFieldNames(reflect.TypeFor[CommentRule]()),
		"rules.CommentData": goFieldNames(reflect.TypeFor[CommentData]()),
	}
)

func exprFields(t reflect.Type) []string {
	var out []string
	for f := range t.Fields() {
		if tag := f.Tag.Get("expr"); tag != "" && tag != "-" && f.IsExported() {
			out = append(out, tag)
		}
	}
	return out
}

func goFieldNames(t reflect.Type) []string {
	var out []string
	for f := range t.Fields() {
		if f.IsExported() {
			out = append(out, f.Name)
		}
	}
	return out
}

// compiler collects the problems of one load.
type compiler struct {
	errs  yamlx.Errors
	order map[string]int // file -> index, for sorting the problems
	names map[string]yamlx.Position
}

func (c *compiler) add(pos yamlx.Position, path, format string, args ...any) {
	c.errs = append(c.errs, &yamlx.Error{Pos: pos, Path: path, Msg: fmt.Sprintf(format, args...)})
}

func (c *compiler) err() error {
	if len(c.errs) == 0 {
		return nil
	}
	sort.SliceStable(c.errs, func(i, j int) bool {
		a, b := c.errs[i].Pos, c.errs[j].Pos
		if c.order[a.File] != c.order[b.File] {
			return c.order[a.File] < c.order[b.File]
		}
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Col < b.Col
	})
	return c.errs
}

// compileSources turns rule files into a Set, or reports every problem.
func compileSources(srcs []source, now time.Time) (*Set, error) {
	if len(srcs) == 0 {
		return nil, errors.New("no rule files given")
	}
	c := &compiler{order: map[string]int{}, names: map[string]yamlx.Position{}}
	for i, s := range srcs {
		if _, ok := c.order[s.path]; !ok {
			c.order[s.path] = i
		}
	}
	set := &Set{}
	for _, s := range srcs {
		set.files = append(set.files, FileInfo{Path: s.path, SHA256: s.hash, LoadedAt: now})
		c.file(set, s)
	}
	if err := c.err(); err != nil {
		return nil, err
	}
	var resolved []*rule
	for _, r := range set.rules {
		if !r.enabled {
			continue
		}
		set.active = append(set.active, r)
		set.needsMachine = set.needsMachine || r.readsMachine
		if r.onResolved {
			resolved = append(resolved, r)
		}
	}
	set.onResolved = len(resolved)
	set.acceptsResolved = len(resolved) > 0
	set.activeChunks = compileChunks(set.active)
	set.resolvedChunks = compileChunks(resolved)
	set.activeIndex = newGuardIndex(set.activeChunks)
	set.resolvedIndex = newGuardIndex(set.resolvedChunks)
	return set, nil
}

// fileDefaults are the resolved defaults of one file.
type fileDefaults struct {
	action   Action
	cooldown time.Duration
	comment  *template.Template
}

func (c *compiler) file(set *Set, s source) {
	var fc FileConfig
	pos, err := yamlx.Decode(s.path, s.data, &fc)
	if err != nil {
		var es yamlx.Errors
		if !errors.As(err, &es) {
			c.add(yamlx.Position{File: s.path, Line: 1, Col: 1}, "", "%v", err)
			return
		}
		c.errs = append(c.errs, es...)
	}
	lines := splitLines(s.data)

	d := fileDefaults{action: ActionCollect, cooldown: DefaultCooldown, comment: defaultComment}
	if fc.Defaults.Action != nil {
		d.action = *fc.Defaults.Action
	}
	if fc.Defaults.Cooldown != nil {
		if *fc.Defaults.Cooldown < 0 {
			c.add(pos.Lookup(s.path, "defaults.cooldown"), "defaults.cooldown", "must not be negative")
		} else {
			d.cooldown = *fc.Defaults.Cooldown
		}
	}
	if fc.Defaults.Comment != nil {
		if t := c.template(lines, pos, s.path, "defaults.comment", *fc.Defaults.Comment); t != nil {
			d.comment = t
		}
	}

	for i, rc := range fc.Rules {
		path := fmt.Sprintf("rules[%d]", i)
		if r := c.rule(lines, pos, s.path, path, rc, d); r != nil {
			set.rules = append(set.rules, r)
		}
	}
}

func (c *compiler) rule(lines [][]rune, pos yamlx.Positions, fname, path string, rc RuleConfig, d fileDefaults) *rule {
	ok := true
	at := func(key string) (yamlx.Position, string) {
		p := path + "." + key
		if _, set := pos[p]; !set {
			// An absent key: point at the rule's first key.
			return keyStart(lines, pos.Lookup(fname, path)), p
		}
		return pos[p], p
	}

	name := strings.TrimSpace(rc.Name)
	namePos, namePath := at("name")
	switch {
	case name == "":
		c.add(namePos, namePath, "a rule needs a name (letters, digits, '_', '.' and '-')")
		ok = false
	case !nameRE.MatchString(name):
		c.add(namePos, namePath, "invalid rule name %q (use letters, digits, '_', '.' and '-', starting with a letter or digit)", rc.Name)
		ok = false
	case name == metrics.NoRule:
		c.add(namePos, namePath, "rule name %q is reserved (it labels the decisions no rule took)", name)
		ok = false
	default:
		if first, dup := c.names[name]; dup {
			c.add(namePos, namePath, "duplicate rule name %q (first defined at %s)", name, first)
			ok = false
		} else {
			c.names[name] = namePos
		}
	}

	r := &rule{
		name:        name,
		description: strings.TrimSpace(rc.Description),
		file:        fname,
		line:        pos.Lookup(fname, path).Line,
		when:        rc.When,
		whenText:    strings.Join(strings.Fields(rc.When), " "),
		action:      d.action,
		cooldown:    d.cooldown,
		comment:     d.comment,
		dryRun:      rc.DryRun,
		enabled:     rc.Enabled == nil || *rc.Enabled,
		onResolved:  rc.OnResolved,
	}
	if rc.Action != nil {
		r.action = *rc.Action
	}
	if rc.Cooldown != nil {
		if *rc.Cooldown < 0 {
			p, pp := at("cooldown")
			c.add(p, pp, "must not be negative")
			ok = false
		} else {
			r.cooldown = *rc.Cooldown
		}
	}
	if rc.Comment != nil {
		if t := c.template(lines, pos, fname, path+".comment", *rc.Comment); t != nil {
			r.comment = t
		} else {
			ok = false
		}
	}

	whenPos, whenPath := at("when")
	if _, set := pos[whenPath]; !set {
		c.add(whenPos, whenPath, "missing: a rule needs a condition, e.g. 'alert.severity == \"high\"'")
		return nil
	}
	if strings.TrimSpace(rc.When) == "" {
		c.add(whenPos, whenPath, "empty condition: a rule needs one, e.g. 'alert.severity == \"high\"'")
		return nil
	}
	smap := mapScalar(lines, whenPos, rc.When)
	program, err := compileWhen(rc.When)
	if err != nil {
		var fe *file.Error
		if errors.As(err, &fe) {
			c.add(smap.at(fe.From), whenPath, "%s", exprMessage(fe.Message))
		} else {
			c.add(smap.at(0), whenPath, "the condition must be true or false (%v)", err)
		}
		return nil
	}
	r.reference = program
	r.program = compileFast(rc.When, program)
	r.guard = compileGuard(rc.When)
	r.readsMachine = readsMachine(program.Node())
	if !ok {
		return nil
	}
	return r
}

// keyStart moves p, the position yamlx gives a block mapping, to the start of
// the mapping's first key: after the indentation and a "- " list marker.
func keyStart(lines [][]rune, p yamlx.Position) yamlx.Position {
	if p.Line < 1 || p.Line > len(lines) {
		return p
	}
	line := lines[p.Line-1]
	c := 0
	for c < len(line) && (line[c] == ' ' || line[c] == '\t' || line[c] == '-') {
		c++
	}
	if c < len(line) && c+1 < p.Col {
		p.Col = c + 1
	}
	return p
}

// compileWhen compiles a condition against env. A field of a named string
// type (alert.source is an alert.Source) reads as a plain string, so that
// alert.source == "graph" and alert.source in [...] type-check.
func compileWhen(text string) (*vm.Program, error) {
	return expr.Compile(text, expr.Env(env{}), expr.AsBool(), expr.Patch(plainStrings{}))
}

// plainStrings wraps every value of a named string type in string().
type plainStrings struct{}

func (plainStrings) Visit(node *ast.Node) {
	m, ok := (*node).(*ast.MemberNode)
	if !ok {
		return
	}
	if t := m.Type(); t == nil || t.Kind() != reflect.String || t == reflect.TypeFor[string]() {
		return
	}
	ast.Patch(node, &ast.BuiltinNode{Name: "string", Arguments: []ast.Node{m}})
}

// exprMessage makes expr's compile messages speak the rule author's names.
func exprMessage(msg string) string {
	if m := hasNoFieldRE.FindStringSubmatch(msg); m != nil {
		obj, fields := "alert", alertFields
		if m[1] == "Machine" {
			obj, fields = "machine", machineFields
		}
		if s := closest(m[2], fields); s != "" {
			return fmt.Sprintf("unknown field %s.%s (did you mean %s.%s?)", obj, m[2], obj, s)
		}
		return fmt.Sprintf("unknown field %s.%s (%s has: %s)", obj, m[2], obj, strings.Join(fields, ", "))
	}
	if m := unknownNameRE.FindStringSubmatch(msg); m != nil {
		if s := closest(m[1], []string{"alert", "machine"}); s != "" {
			return fmt.Sprintf("unknown name %s (did you mean %s?)", m[1], s)
		}
		return fmt.Sprintf("unknown name %s (a condition reads alert.* and machine.*)", m[1])
	}
	return msg
}

// closest returns the candidate nearest to s (case-insensitively), if it is
// near enough to be a likely typo.
func closest(s string, candidates []string) string {
	best, bestDist := "", 3
	ls := strings.ToLower(s)
	for _, cand := range candidates {
		lc := strings.ToLower(cand)
		if lc == ls {
			return cand
		}
		if d := levenshtein(ls, lc); d < bestDist {
			best, bestDist = cand, d
		}
	}
	return best
}

func levenshtein(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur := make([]int, len(rb)+1)
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(rb)]
}

// readsMachine reports whether a compiled condition reads machine.*. It
// walks the checked AST: an identifier `machine`, `$env.machine` or
// `$env[expr]`, or a bare `$env` (which may read anything) means the
// machine is needed.
func readsMachine(node ast.Node) bool {
	if node == nil {
		return false
	}
	v := &machineVisitor{member: map[*ast.IdentifierNode]bool{}}
	ast.Walk(&node, v)
	for _, id := range v.env {
		if !v.member[id] {
			return true
		}
	}
	return v.found
}

type machineVisitor struct {
	found  bool
	env    []*ast.IdentifierNode        // every $env identifier
	member map[*ast.IdentifierNode]bool // $env identifiers read as $env.<constant>
}

func (v *machineVisitor) Visit(node *ast.Node) {
	switch n := (*node).(type) {
	case *ast.MemberNode:
		if id, ok := n.Node.(*ast.IdentifierNode); ok && id.Value == "$env" {
			v.member[id] = true
			if s, ok := n.Property.(*ast.StringNode); !ok || s.Value == "machine" {
				v.found = true
			}
		}
	case *ast.IdentifierNode:
		switch n.Value {
		case "machine":
			v.found = true
		case "$env":
			v.env = append(v.env, n)
		}
	}
}

// template parses a comment template and runs it once on a sample alert, so
// that a misspelled field is a load error.
func (c *compiler) template(lines [][]rune, pos yamlx.Positions, file, path, text string) *template.Template {
	p := pos.Lookup(file, path)
	smap := mapScalar(lines, p, text)
	report := func(err error) {
		where, msg := templateError(text, err)
		c.add(smap.at(where), path, "%s", msg)
	}
	t, err := template.New("comment").Option("missingkey=error").Parse(text)
	if err != nil {
		report(err)
		return nil
	}
	// missingkey=error would reject {{ .Alert.Labels.team }} on the empty
	// sample; this check is about field names, so map keys may be missing.
	check, err := template.New("comment").Parse(text)
	if err != nil {
		report(err)
		return nil
	}
	if err := check.Execute(&strings.Builder{}, sampleData()); err != nil {
		report(err)
		return nil
	}
	return t
}

// sampleData is a CommentData with every list holding one element, so that
// {{ index .Alert.MitreTechniques 0 }} passes the load-time check.
func sampleData() CommentData {
	return CommentData{
		Alert: alert.Alert{
			MitreTechniques: []string{""},
			Labels:          map[string]string{},
			Annotations:     map[string]string{},
		},
		Machine: alert.Machine{Tags: []string{""}},
	}
}

// templateError turns a text/template error into the rune offset it names
// within text and a message without the template's own prefix.
func templateError(text string, err error) (int, string) {
	msg := err.Error()
	m := templateLineRE.FindStringSubmatch(msg)
	if m == nil {
		return 0, "template: " + msg
	}
	line, _ := strconv.Atoi(m[1])
	col := 0
	if m[2] != "" {
		col, _ = strconv.Atoi(m[2])
	}
	rest := m[3]
	if e := templateExecRE.FindStringSubmatch(rest); e != nil {
		rest = e[2]
		if f := templateFieldRE.FindStringSubmatch(rest); f != nil {
			if s := closest(f[1], goFields[f[2]]); s != "" {
				rest = fmt.Sprintf("%s has no field %s (did you mean %s?)", f[2], f[1], s)
			} else if names := goFields[f[2]]; names != nil {
				rest = fmt.Sprintf("%s has no field %s (it has: %s)", f[2], f[1], strings.Join(names, ", "))
			}
		}
		rest = e[1] + ": " + rest
	}
	return runeOffset(text, line, col), "template: " + rest
}
