package rules

import (
	"slices"
	"strings"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/ast"
	"github.com/expr-lang/expr/checker"
	"github.com/expr-lang/expr/conf"
)

// Guards. Most rules of a large set do not match most alerts, and say so in
// their first terms: `alert.category == "Ransomware" && ...`. A guard is
// those leading terms, tested in Go before any program runs: when every
// rule of a chunk has a guard that fails, the chunk is skipped, its rules
// being false. With 1,000 rules that saves most of the VM's work per alert
// (replay decides a million alerts this way).
//
// A guard holds only terms of four forms that cannot fail at run time,
// taken from the start of the condition's top-level conjunction and no
// further than the first term of another form: && evaluates left to right,
// so when a guard term is false the condition is false, and no term before
// it could have failed. The decision and the errors reported stay exactly
// those of the programs (TestFastEquivalence checks it).

// guard is the leading cheap terms of a condition; empty when it has none.
type guard []guardTerm

type guardKind int

const (
	guardEqual    guardKind = iota // field == "literal"
	guardIn                        // field in ["a", "b"]
	guardHas                       // "literal" in list field
	guardMayMatch                  // field matches "re" with a required literal
)

type guardTerm struct {
	kind  guardKind
	field int // cached field index
	value string
	set   *stringSet
	re    *fastRegexp
}

// pass reports false only when the condition cannot be true for e.
func (g guard) pass(e *env) bool {
	for i := range g {
		if !g[i].pass(e) {
			return false
		}
	}
	return true
}

func (t *guardTerm) pass(e *env) bool {
	switch t.kind {
	case guardEqual:
		s, _ := e.field(t.field).(string)
		return s == t.value
	case guardIn:
		s, _ := e.field(t.field).(string)
		return t.set.contains(s)
	case guardHas:
		l, _ := e.field(t.field).([]string)
		return slices.Contains(l, t.value)
	case guardMayMatch:
		fs := e.foldedField(t.field)
		if t.re.fold && fs.ascii {
			return strings.Contains(fs.lower, t.re.literal)
		}
		return t.re.mayMatch(fs.s)
	}
	return true
}

// compileGuard returns the guard of a condition that compiled.
func compileGuard(when string) guard {
	// Checked as the programs are: named string types read as strings.
	c := conf.CreateNew()
	for _, opt := range []expr.Option{expr.Env(env{}), expr.Patch(plainStrings{})} {
		opt(c)
	}
	tree, err := checker.ParseCheck(when, c)
	if err != nil {
		return nil
	}
	var g guard
	for _, term := range conjunction(tree.Node) {
		t, ok := guardOf(term)
		if !ok {
			break
		}
		g = append(g, t)
	}
	return g
}

// conjunction returns the terms of a top-level && chain, in evaluation
// order (the node itself when it is not one).
func conjunction(n ast.Node) []ast.Node {
	if b, ok := n.(*ast.BinaryNode); ok && (b.Operator == "&&" || b.Operator == "and") {
		return append(conjunction(b.Left), conjunction(b.Right)...)
	}
	return []ast.Node{n}
}

// guardOf returns the guard term of n, when n is one of the four forms.
func guardOf(n ast.Node) (guardTerm, bool) {
	b, ok := n.(*ast.BinaryNode)
	if !ok {
		return guardTerm{}, false
	}
	switch b.Operator {
	case "==":
		left, right := b.Left, b.Right
		if _, isField := cachedFieldOf(right); isField {
			left, right = right, left
		}
		i, isField := cachedFieldOf(left)
		lit, isString := right.(*ast.StringNode)
		if isField && isString && !cachedFields[i].list {
			return guardTerm{kind: guardEqual, field: i, value: lit.Value}, true
		}
	case "in":
		if i, ok := cachedFieldOf(b.Left); ok && !cachedFields[i].list {
			if arr, ok := b.Right.(*ast.ArrayNode); ok {
				if set := constantStrings(arr); set != nil {
					return guardTerm{kind: guardIn, field: i, set: set}, true
				}
			}
		}
		if lit, ok := b.Left.(*ast.StringNode); ok {
			if i, ok := cachedFieldOf(b.Right); ok && cachedFields[i].list {
				return guardTerm{kind: guardHas, field: i, value: lit.Value}, true
			}
		}
	case "matches":
		i, isField := cachedFieldOf(b.Left)
		pattern, isString := b.Right.(*ast.StringNode)
		if !isField || !isString || cachedFields[i].list {
			break
		}
		if re, err := newFastRegexp(pattern.Value); err == nil && re.literal != "" {
			return guardTerm{kind: guardMayMatch, field: i, re: re}, true
		}
	}
	return guardTerm{}, false
}

// cachedFieldOf returns the cached field n reads, when n is alert.<name> or
// machine.<name> of the environment (not a variable of the same name).
func cachedFieldOf(n ast.Node) (int, bool) {
	if b, ok := n.(*ast.BuiltinNode); ok && b.Name == "string" && len(b.Arguments) == 1 {
		n = b.Arguments[0] // plainStrings' string() around a named string type
	}
	m, ok := n.(*ast.MemberNode)
	if !ok || m.Method || m.Optional {
		return 0, false
	}
	obj, ok := m.Node.(*ast.IdentifierNode)
	prop, ok2 := m.Property.(*ast.StringNode)
	if !ok || !ok2 {
		return 0, false
	}
	if t := obj.Type(); !(obj.Value == "alert" && t == alertType || obj.Value == "machine" && t == machineType) {
		return 0, false
	}
	i, ok := cachedFieldIndex[obj.Value+"."+prop.Value]
	return i, ok
}

// guardIndex finds, for one evaluation, the rules of a chunk list whose
// guards pass, without testing every guard: each guarded rule is filed
// under the values its first indexable term (==, in, or a literal in a
// list) admits, and only the rules filed under the alert's values, and
// those without such a term, are tested.
type guardIndex struct {
	rules   []*rule // by position in the chunk list
	fields  []int   // string fields with indexed terms
	lists   []int   // list fields with indexed terms
	byValue map[guardKey][]int32
	scan    []int32 // guarded rules without an indexable term
}

type guardKey struct {
	field int
	value string
}

func newGuardIndex(chunks []chunk) *guardIndex {
	x := &guardIndex{byValue: map[guardKey][]int32{}}
	fields, lists := map[int]bool{}, map[int]bool{}
	spread := valueSpread(chunks)
	for i := range chunks {
		chunks[i].start = len(x.rules)
		for _, r := range chunks[i].rules {
			pos := int32(len(x.rules))
			x.rules = append(x.rules, r)
			if len(r.guard) == 0 {
				continue
			}
			t, ok := r.guard.indexable(spread)
			if !ok {
				x.scan = append(x.scan, pos)
				continue
			}
			var values []string
			switch t.kind {
			case guardEqual, guardHas:
				values = []string{t.value}
			case guardIn:
				values = t.set.strings()
			}
			for _, v := range values {
				k := guardKey{t.field, v}
				if l := x.byValue[k]; len(l) == 0 || l[len(l)-1] != pos { // a value listed twice
					x.byValue[k] = append(l, pos)
				}
			}
			if t.kind == guardHas {
				lists[t.field] = true
			} else {
				fields[t.field] = true
			}
		}
	}
	for f := range fields {
		x.fields = append(x.fields, f)
	}
	for f := range lists {
		x.lists = append(x.lists, f)
	}
	slices.Sort(x.fields)
	slices.Sort(x.lists)
	return x
}

// indexable returns the guard's term that names the values it admits
// and is likely to admit the fewest alerts: the one on the field whose
// terms name the most distinct values across the set (a rule's
// detection_source rather than its severity).
func (g guard) indexable(spread map[int]int) (guardTerm, bool) {
	best, found := guardTerm{}, false
	for _, t := range g {
		if t.kind != guardEqual && t.kind != guardIn && t.kind != guardHas {
			continue
		}
		if !found || spread[t.field] > spread[best.field] {
			best, found = t, true
		}
	}
	return best, found
}

// valueSpread counts, per field, the distinct values the guard terms of
// the chunks name.
func valueSpread(chunks []chunk) map[int]int {
	seen := map[guardKey]bool{}
	spread := map[int]int{}
	for _, c := range chunks {
		for _, r := range c.rules {
			for _, t := range r.guard {
				values := t.set.strings()
				if t.kind == guardEqual || t.kind == guardHas {
					values = []string{t.value}
				}
				for _, v := range values {
					if k := (guardKey{t.field, v}); !seen[k] {
						seen[k] = true
						spread[t.field]++
					}
				}
			}
		}
	}
	return spread
}

// passing marks in bits the guarded rules whose guards pass for e.
func (x *guardIndex) passing(e *env, bits []uint64) {
	test := func(pos int32) {
		if bits[pos>>6]&(1<<(pos&63)) == 0 && x.rules[pos].guard.pass(e) {
			bits[pos>>6] |= 1 << (pos & 63)
		}
	}
	for _, f := range x.fields {
		s, _ := e.field(f).(string)
		for _, pos := range x.byValue[guardKey{f, s}] {
			test(pos)
		}
	}
	for _, f := range x.lists {
		l, _ := e.field(f).([]string)
		for _, v := range l {
			for _, pos := range x.byValue[guardKey{f, v}] {
				test(pos)
			}
		}
	}
	for _, pos := range x.scan {
		test(pos)
	}
}

// strings returns the strings of the set (none for a nil set).
func (s *stringSet) strings() []string {
	if s == nil {
		return nil
	}
	return s.small
}

// mayMatch reports false only when no rule of c can match: each has a
// guard, and none passes (bits, from passing).
func (c *chunk) mayMatch(bits []uint64) bool {
	if c.unguarded {
		return true
	}
	for pos := c.start; pos < c.start+len(c.rules); pos++ {
		if bits[pos>>6]&(1<<(pos&63)) != 0 {
			return true
		}
	}
	return false
}
