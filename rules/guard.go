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

// mayMatch reports false only when no rule of the chunk can match e: each
// has a guard, and each guard fails.
func (c *chunk) mayMatch(e *env) bool {
	if c.unguarded {
		return true
	}
	for _, r := range c.rules {
		if r.guard.pass(e) {
			return true
		}
	}
	return false
}
