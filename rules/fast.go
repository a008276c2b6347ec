package rules

import (
	"fmt"
	"reflect"
	"regexp"
	"regexp/syntax"
	"slices"
	"strings"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/ast"
	"github.com/expr-lang/expr/vm"
	"github.com/expr-lang/expr/vm/runtime"

	"github.com/responder-dev/responder/alert"
)

// Evaluation speed. A set of 1,000 rules must decide an alert in well under
// 100 µs, and expr's general paths are slow for the three things rules do
// most: reading a field (reflection, and an allocation per string), testing
// membership (reflection per element) and matching a regular expression
// (Go's regexp has no literal prefilter for (?i) patterns).
//
// So each condition is compiled twice. The first compile is the reference:
// it type-checks the condition as written, gives the error positions and the
// AST that NeedsMachine reads. The second compile, of the same text, adds the
// accelerate patch, which replaces those three operations by calls of the Go
// functions below, with the same results. The functions are constants of the
// program, of signatures the VM calls directly (OpCallTyped): no reflection,
// no argument copies, and no name a rule could call. Consecutive rules are
// also compiled into one program per chunk, so that the VM's cost per run is
// paid once per chunk rather than once per rule. TestFastEquivalence checks
// the accelerated programs against the reference ones.

// cachedField is a string or []string field of alert or machine that the
// accelerated programs read through the evaluation's cache.
type cachedField struct {
	index []int // within env
	list  bool  // []string, else a string kind
}

var (
	cachedFields     []cachedField
	cachedFieldIndex = map[string]int{} // "alert.severity" -> index in cachedFields
	alertType        = reflect.TypeFor[alert.Alert]()
	machineType      = reflect.TypeFor[alert.Machine]()
)

func init() {
	et := reflect.TypeFor[env]()
	for i := range et.NumField() {
		obj := et.Field(i)
		object := obj.Tag.Get("expr")
		if object == "" || obj.Type.Kind() != reflect.Struct {
			continue
		}
		for j := range obj.Type.NumField() {
			f := obj.Type.Field(j)
			name := f.Tag.Get("expr")
			if name == "" || name == "-" || !f.IsExported() {
				continue
			}
			isString := f.Type.Kind() == reflect.String
			isList := f.Type.Kind() == reflect.Slice && f.Type.Elem().Kind() == reflect.String
			if !isString && !isList {
				continue
			}
			cachedFieldIndex[object+"."+name] = len(cachedFields)
			cachedFields = append(cachedFields, cachedField{index: []int{i, j}, list: isList})
		}
	}
	if len(cachedFields) > 64 {
		panic("rules: too many cached fields")
	}
}

// fieldCache holds the fields of one evaluation, converted once: boxed for
// the VM and, for strings, in lower case for case-insensitive prefilters.
type fieldCache struct {
	have   uint64 // bit i: values[i] is set
	folded uint64 // bit i: lower[i] is set
	values [64]any
	lower  [64]foldedString
}

// foldedString is a string with its ASCII lower case.
type foldedString struct {
	s     string
	lower string // set when ascii
	ascii bool
}

func (e *env) reset() {
	*e = env{}
}

func (e *env) field(i int) any {
	c := &e.cache
	if c.have&(1<<i) == 0 {
		v := reflect.ValueOf(e).Elem().FieldByIndex(cachedFields[i].index)
		if cachedFields[i].list {
			c.values[i] = v.Interface()
		} else {
			c.values[i] = v.String() // a named string type reads as a string
		}
		c.have |= 1 << i
	}
	return c.values[i]
}

func (e *env) foldedField(i int) *foldedString {
	c := &e.cache
	if c.folded&(1<<i) == 0 {
		s, _ := e.field(i).(string)
		c.lower[i] = foldedString{s: s, ascii: isASCII(s)}
		if c.lower[i].ascii {
			c.lower[i].lower = strings.ToLower(s)
		}
		c.folded |= 1 << i
	}
	return &c.lower[i]
}

// The functions the accelerated programs call. Their signatures are among
// those the VM calls without reflection; a panic becomes an evaluation error,
// as in the VM's own operations.

// fieldOf(env, i) reads cached field i.
func fieldOf(e, i any) any { return e.(*env).field(i.(int)) }

// foldedOf(env, i) reads cached string field i with its lower case.
func foldedOf(e, i any) any { return e.(*env).foldedField(i.(int)) }

// inFunc is `needle in hay`.
func inFunc(needle, hay any) bool {
	switch h := hay.(type) {
	case *stringSet:
		if s, ok := needle.(string); ok {
			return h.contains(s)
		}
		return runtime.In(needle, h.values)
	case []string:
		if s, ok := needle.(string); ok {
			return slices.Contains(h, s)
		}
	}
	return runtime.In(needle, hay)
}

// matchesFunc is `s matches re` for any s.
func matchesFunc(s, re any) bool {
	f := re.(*fastRegexp)
	str, ok := s.(string)
	if !ok {
		panic(fmt.Sprintf("interface conversion: interface {} is %T, not string", s))
	}
	return f.mayMatch(str) && f.re.MatchString(str)
}

// matchesFoldedFunc is `field matches re` for a cached string field.
func matchesFoldedFunc(s, re any) bool {
	f := re.(*fastRegexp)
	fs := s.(*foldedString)
	if f.fold && fs.ascii && !strings.Contains(fs.lower, f.literal) {
		return false
	}
	return f.mayMatch(fs.s) && f.re.MatchString(fs.s)
}

// stringSet is a constant list of strings, for `x in ["a", "b"]`.
type stringSet struct {
	small  []string            // short lists: a scan beats hashing
	set    map[string]struct{} // longer lists
	values []any               // the list, for needles that are not strings
}

func (s *stringSet) contains(v string) bool {
	if s.set == nil {
		return slices.Contains(s.small, v)
	}
	_, found := s.set[v]
	return found
}

func constantStrings(arr *ast.ArrayNode) *stringSet {
	set := &stringSet{}
	for _, node := range arr.Nodes {
		s, ok := node.(*ast.StringNode)
		if !ok {
			return nil
		}
		set.small = append(set.small, s.Value)
		set.values = append(set.values, s.Value)
	}
	if len(set.small) > 8 {
		set.set = make(map[string]struct{}, len(set.small))
		for _, s := range set.small {
			set.set[s] = struct{}{}
		}
	}
	return set
}

// fastRegexp is a regular expression with a literal prefilter: a literal
// every match must contain. Most inputs lack it, and looking for it is much
// cheaper than running the expression.
type fastRegexp struct {
	re      *regexp.Regexp
	literal string // "" when there is no usable literal
	fold    bool   // literal is ASCII lower case, compared case-insensitively
}

func newFastRegexp(pattern string) (*fastRegexp, error) {
	re, err := regexp.Compile(pattern)
	if err != nil {
		return nil, err
	}
	f := &fastRegexp{re: re}
	tree, err := syntax.Parse(pattern, syntax.Perl)
	if err != nil {
		return f, nil
	}
	for _, lit := range requiredLiterals(tree) {
		if len(lit.text) <= len(f.literal) {
			continue
		}
		if !lit.fold {
			f.literal, f.fold = lit.text, false
		} else if isASCII(lit.text) {
			f.literal, f.fold = strings.ToLower(lit.text), true
		}
	}
	return f, nil
}

type literal struct {
	text string
	fold bool
}

// requiredLiterals returns literals that every match of re contains.
func requiredLiterals(re *syntax.Regexp) []literal {
	switch re.Op {
	case syntax.OpLiteral:
		return []literal{{text: string(re.Rune), fold: re.Flags&syntax.FoldCase != 0}}
	case syntax.OpCapture, syntax.OpPlus:
		return requiredLiterals(re.Sub[0])
	case syntax.OpRepeat:
		if re.Min >= 1 {
			return requiredLiterals(re.Sub[0])
		}
	case syntax.OpConcat:
		var out []literal
		for _, sub := range re.Sub {
			out = append(out, requiredLiterals(sub)...)
		}
		return out
	}
	return nil
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// mayMatch reports false only when s cannot match: it lacks the literal.
func (f *fastRegexp) mayMatch(s string) bool {
	if f.literal == "" {
		return true
	}
	if !f.fold {
		return strings.Contains(s, f.literal)
	}
	// Case-insensitive: exact for ASCII input. Any other byte may fold onto
	// an ASCII letter (the Kelvin sign onto k), so let the regexp decide.
	lit := f.literal
	for i := 0; i < len(s); i++ {
		b := s[i]
		if b >= 0x80 {
			return true
		}
		if lowerASCII(b) != lit[0] || len(s)-i < len(lit) {
			continue
		}
		j := 1
		for j < len(lit) && lowerASCII(s[i+j]) == lit[j] {
			j++
		}
		if j == len(lit) {
			return true
		}
	}
	return false
}

func lowerASCII(b byte) byte {
	if 'A' <= b && b <= 'Z' {
		return b + 'a' - 'A'
	}
	return b
}

// accelerate rewrites a type-checked condition into calls of the functions
// above. It runs after plainStrings, on a tree with types.
type accelerate struct {
	fields map[ast.Node]int // calls of fieldOf it made, by cached field
}

func call(fn any, args ...ast.Node) *ast.CallNode {
	return &ast.CallNode{Callee: &ast.ConstantNode{Value: fn}, Arguments: args}
}

func (a *accelerate) Visit(node *ast.Node) {
	switch n := (*node).(type) {
	case *ast.MemberNode:
		obj, ok := n.Node.(*ast.IdentifierNode)
		prop, ok2 := n.Property.(*ast.StringNode)
		if !ok || !ok2 || n.Method || n.Optional {
			return
		}
		// The identifier must be the environment's, not a variable
		// (let alert = machine) of the same name.
		if t := obj.Type(); !(obj.Value == "alert" && t == alertType || obj.Value == "machine" && t == machineType) {
			return
		}
		i, ok := cachedFieldIndex[obj.Value+"."+prop.Value]
		if !ok {
			return
		}
		c := call(fieldOf, &ast.IdentifierNode{Value: "$env"}, &ast.IntegerNode{Value: i})
		a.fields[c] = i
		ast.Patch(node, c)
	case *ast.BinaryNode:
		switch n.Operator {
		case "in":
			right := n.Right
			if arr, ok := n.Right.(*ast.ArrayNode); ok {
				if set := constantStrings(arr); set != nil {
					right = &ast.ConstantNode{Value: set}
				}
			}
			ast.Patch(node, call(inFunc, n.Left, right))
		case "matches":
			s, ok := n.Right.(*ast.StringNode)
			if !ok {
				return
			}
			f, err := newFastRegexp(s.Value)
			if err != nil {
				return
			}
			re := &ast.ConstantNode{Value: f}
			if i, ok := a.fields[n.Left]; ok && !cachedFields[i].list {
				folded := call(foldedOf, &ast.IdentifierNode{Value: "$env"}, &ast.IntegerNode{Value: i})
				ast.Patch(node, call(matchesFoldedFunc, folded, re))
				return
			}
			ast.Patch(node, call(matchesFunc, n.Left, re))
		}
	}
}

func fastOptions(more ...expr.Option) []expr.Option {
	return append([]expr.Option{
		expr.Env(env{}),
		expr.Patch(plainStrings{}),
		expr.Patch(&accelerate{fields: map[ast.Node]int{}}),
	}, more...)
}

// compileFast compiles the accelerated program of a condition that
// compileWhen accepted. If that fails, the reference program is used.
func compileFast(text string, reference *vm.Program) *vm.Program {
	p, err := expr.Compile(text, fastOptions(expr.AsBool())...)
	if err != nil {
		return reference
	}
	return p
}

// chunkSize is how many rules share one program.
const chunkSize = 50

// chunk is a run of consecutive rules compiled into one program that gives
// the index of the first rule whose condition is true, or -1.
type chunk struct {
	program *vm.Program // nil when the rules must run one by one
	rules   []*rule
	// unguarded: a rule of the chunk has no guard, so the chunk always runs.
	unguarded bool
	// start is the position of the chunk's first rule in its list (the
	// guard index's bits).
	start int
}

// compileChunks groups rules into chunks. A chunk whose program cannot be
// built runs its rules one by one, with the same result.
func compileChunks(rules []*rule) []chunk {
	var out []chunk
	for start := 0; start < len(rules); start += chunkSize {
		rs := rules[start:min(start+chunkSize, len(rules))]
		c := chunk{program: compileChunk(rs), rules: rs}
		for _, r := range rs {
			c.unguarded = c.unguarded || len(r.guard) == 0
		}
		out = append(out, c)
	}
	return out
}

// compileChunk compiles (c0) ? 0 : ((c1) ? 1 : (... : -1)). Each condition
// compiled on its own before; the line breaks end any comment.
func compileChunk(rules []*rule) *vm.Program {
	var b strings.Builder
	for i, r := range rules {
		fmt.Fprintf(&b, "(\n%s\n) ? %d : (", r.when, i)
	}
	b.WriteString("-1")
	b.WriteString(strings.Repeat(")", len(rules)))
	p, err := expr.Compile(b.String(), fastOptions(expr.AsInt())...)
	if err != nil {
		return nil
	}
	return p
}
