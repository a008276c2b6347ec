package defendertest

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// fieldKind is the type of a filterable property.
type fieldKind int

const (
	kindString     fieldKind = iota // compared case-sensitively
	kindStringFold                  // compared case-insensitively (DNS names)
	kindTime
	kindNumber
	kindList // string collection, filtered with any()
)

// predicate evaluates a compiled $filter against the property values of an entity.
type predicate func(values map[string]any) bool

// filterError is a $filter the simulator (and, we assume, MDE) does not accept.
type filterError struct{ msg string }

func (e *filterError) Error() string { return e.msg }

// parseFilter compiles the OData subset MDE documents: comparisons (eq, ne, gt, ge, lt, le)
// of a property with a literal, startswith/endswith/contains, list/any(x: x eq '...'),
// and, or, not and parentheses. Properties outside fields are rejected.
func parseFilter(src string, fields map[string]fieldKind) (predicate, error) {
	toks, err := lexFilter(src)
	if err != nil {
		return nil, err
	}
	p := &filterParser{toks: toks, fields: fields}
	pred, err := p.parseOr()
	if err != nil {
		return nil, err
	}
	if p.pos != len(p.toks) {
		return nil, &filterError{fmt.Sprintf("syntax error at position %d: unexpected '%s'", p.toks[p.pos].pos, p.toks[p.pos].text)}
	}
	return pred, nil
}

type tokKind int

const (
	tokIdent tokKind = iota
	tokString
	tokNumber
	tokTime
	tokPunct
)

type token struct {
	kind tokKind
	text string // identifier, unquoted string, number, time, or one of ( ) , :
	pos  int
}

func lexFilter(src string) ([]token, error) {
	var toks []token
	for i := 0; i < len(src); {
		c := src[i]
		switch {
		case c == ' ' || c == '\t':
			i++
		case c == '(' || c == ')' || c == ',' || c == ':':
			toks = append(toks, token{tokPunct, string(c), i})
			i++
		case c == '\'':
			var b strings.Builder
			j := i + 1
			for {
				if j >= len(src) {
					return nil, &filterError{fmt.Sprintf("syntax error: unterminated string literal at position %d", i)}
				}
				if src[j] == '\'' {
					if j+1 < len(src) && src[j+1] == '\'' { // '' escapes a quote
						b.WriteByte('\'')
						j += 2
						continue
					}
					break
				}
				b.WriteByte(src[j])
				j++
			}
			toks = append(toks, token{tokString, b.String(), i})
			i = j + 1
		case c >= '0' && c <= '9' || c == '-':
			j := i + 1
			for j < len(src) && strings.IndexByte("0123456789-:.TZ+", src[j]) >= 0 {
				j++
			}
			text := src[i:j]
			if _, err := strconv.ParseInt(text, 10, 64); err == nil {
				toks = append(toks, token{tokNumber, text, i})
			} else if _, ok := parseFilterTime(text); ok {
				toks = append(toks, token{tokTime, text, i})
			} else {
				return nil, &filterError{fmt.Sprintf("syntax error: invalid literal '%s' at position %d", text, i)}
			}
			i = j
		case isIdentByte(c):
			j := i + 1
			for j < len(src) && (isIdentByte(src[j]) || src[j] >= '0' && src[j] <= '9' || src[j] == '/' || src[j] == '.') {
				j++
			}
			toks = append(toks, token{tokIdent, src[i:j], i})
			i = j
		default:
			return nil, &filterError{fmt.Sprintf("syntax error: unexpected character '%c' at position %d", c, i)}
		}
	}
	return toks, nil
}

func isIdentByte(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' }

func parseFilterTime(s string) (time.Time, bool) {
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02Z", "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, true
		}
	}
	return time.Time{}, false
}

type filterParser struct {
	toks   []token
	pos    int
	fields map[string]fieldKind
}

func (p *filterParser) peek() (token, bool) {
	if p.pos >= len(p.toks) {
		return token{}, false
	}
	return p.toks[p.pos], true
}

func (p *filterParser) keyword(word string) bool {
	t, ok := p.peek()
	if ok && t.kind == tokIdent && t.text == word {
		p.pos++
		return true
	}
	return false
}

func (p *filterParser) punct(c string) error {
	t, ok := p.peek()
	if !ok || t.kind != tokPunct || t.text != c {
		return p.errorf("expected '%s'", c)
	}
	p.pos++
	return nil
}

func (p *filterParser) errorf(format string, args ...any) error {
	where := "at end of input"
	if t, ok := p.peek(); ok {
		where = fmt.Sprintf("at position %d ('%s')", t.pos, t.text)
	}
	return &filterError{"syntax error " + where + ": " + fmt.Sprintf(format, args...)}
}

func (p *filterParser) parseOr() (predicate, error) {
	left, err := p.parseAnd()
	if err != nil {
		return nil, err
	}
	for p.keyword("or") {
		right, err := p.parseAnd()
		if err != nil {
			return nil, err
		}
		l := left
		left = func(v map[string]any) bool { return l(v) || right(v) }
	}
	return left, nil
}

func (p *filterParser) parseAnd() (predicate, error) {
	left, err := p.parseUnary()
	if err != nil {
		return nil, err
	}
	for p.keyword("and") {
		right, err := p.parseUnary()
		if err != nil {
			return nil, err
		}
		l := left
		left = func(v map[string]any) bool { return l(v) && right(v) }
	}
	return left, nil
}

func (p *filterParser) parseUnary() (predicate, error) {
	if p.keyword("not") {
		inner, err := p.parseUnary()
		if err != nil {
			return nil, err
		}
		return func(v map[string]any) bool { return !inner(v) }, nil
	}
	t, ok := p.peek()
	if !ok {
		return nil, p.errorf("expected an expression")
	}
	if t.kind == tokPunct && t.text == "(" {
		p.pos++
		inner, err := p.parseOr()
		if err != nil {
			return nil, err
		}
		if err := p.punct(")"); err != nil {
			return nil, err
		}
		return inner, nil
	}
	if t.kind != tokIdent {
		return nil, p.errorf("expected a property or function")
	}
	switch t.text {
	case "startswith", "endswith", "contains":
		return p.parseStringFunc(t.text)
	}
	p.pos++
	if prop, ok := strings.CutSuffix(t.text, "/any"); ok {
		return p.parseAny(prop)
	}
	kind, err := p.field(t.text)
	if err != nil {
		return nil, err
	}
	return p.parseComparison(t.text, kind)
}

func (p *filterParser) field(name string) (fieldKind, error) {
	kind, ok := p.fields[name]
	if !ok {
		return 0, &filterError{fmt.Sprintf("the property '%s' is not supported in $filter; supported: %s", name, strings.Join(sortedKeys(p.fields), ", "))}
	}
	return kind, nil
}

func sortedKeys(m map[string]fieldKind) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

var comparisonOps = []string{"eq", "ne", "gt", "ge", "lt", "le"}

func (p *filterParser) parseComparison(prop string, kind fieldKind) (predicate, error) {
	opTok, ok := p.peek()
	if !ok || opTok.kind != tokIdent || !slices.Contains(comparisonOps, opTok.text) {
		return nil, p.errorf("expected a comparison operator after '%s'", prop)
	}
	p.pos++
	op := opTok.text
	lit, ok := p.peek()
	if !ok {
		return nil, p.errorf("expected a literal")
	}
	p.pos++
	switch kind {
	case kindString, kindStringFold:
		if lit.kind == tokIdent && lit.text == "null" && (op == "eq" || op == "ne") {
			return func(v map[string]any) bool { return (v[prop].(string) == "") == (op == "eq") }, nil
		}
		if lit.kind != tokString {
			return nil, &filterError{fmt.Sprintf("the property '%s' is a string: compare it with a quoted literal", prop)}
		}
		if op != "eq" && op != "ne" {
			return nil, &filterError{fmt.Sprintf("the operator '%s' is not supported for the string property '%s'", op, prop)}
		}
		want := lit.text
		return func(v map[string]any) bool {
			got := v[prop].(string)
			eq := got == want || kind == kindStringFold && strings.EqualFold(got, want)
			return eq == (op == "eq")
		}, nil
	case kindTime:
		if lit.kind != tokTime {
			return nil, &filterError{fmt.Sprintf("the property '%s' is a DateTimeOffset: compare it with an unquoted literal such as 2024-01-31T00:00:00Z", prop)}
		}
		want, _ := parseFilterTime(lit.text)
		return func(v map[string]any) bool {
			return compareOrdered(v[prop].(time.Time).Compare(want), op)
		}, nil
	case kindNumber:
		if lit.kind != tokNumber {
			return nil, &filterError{fmt.Sprintf("the property '%s' is a number: compare it with a number", prop)}
		}
		want, _ := strconv.ParseInt(lit.text, 10, 64)
		return func(v map[string]any) bool {
			got := v[prop].(int64)
			c := 0
			if got < want {
				c = -1
			} else if got > want {
				c = 1
			}
			return compareOrdered(c, op)
		}, nil
	default: // kindList
		return nil, &filterError{fmt.Sprintf("the property '%s' is a collection: use %s/any(t: t eq '...')", prop, prop)}
	}
}

func compareOrdered(c int, op string) bool {
	switch op {
	case "eq":
		return c == 0
	case "ne":
		return c != 0
	case "gt":
		return c > 0
	case "ge":
		return c >= 0
	case "lt":
		return c < 0
	default: // le
		return c <= 0
	}
}

func (p *filterParser) parseStringFunc(name string) (predicate, error) {
	p.pos++
	if err := p.punct("("); err != nil {
		return nil, err
	}
	propTok, ok := p.peek()
	if !ok || propTok.kind != tokIdent {
		return nil, p.errorf("expected a property in %s()", name)
	}
	p.pos++
	kind, err := p.field(propTok.text)
	if err != nil {
		return nil, err
	}
	if kind != kindString && kind != kindStringFold {
		return nil, &filterError{fmt.Sprintf("%s() needs a string property; '%s' is not one", name, propTok.text)}
	}
	if err := p.punct(","); err != nil {
		return nil, err
	}
	lit, ok := p.peek()
	if !ok || lit.kind != tokString {
		return nil, p.errorf("expected a quoted string in %s()", name)
	}
	p.pos++
	if err := p.punct(")"); err != nil {
		return nil, err
	}
	prop, want := propTok.text, lit.text
	fn := map[string]func(string, string) bool{
		"startswith": strings.HasPrefix, "endswith": strings.HasSuffix, "contains": strings.Contains,
	}[name]
	return func(v map[string]any) bool {
		got := v[prop].(string)
		if kind == kindStringFold {
			return fn(strings.ToLower(got), strings.ToLower(want))
		}
		return fn(got, want)
	}, nil
}

// parseAny parses the rest of prop/any(x: x eq 'value').
func (p *filterParser) parseAny(prop string) (predicate, error) {
	kind, err := p.field(prop)
	if err != nil {
		return nil, err
	}
	if kind != kindList {
		return nil, &filterError{fmt.Sprintf("any() needs a collection property; '%s' is not one", prop)}
	}
	if err := p.punct("("); err != nil {
		return nil, err
	}
	v1, ok := p.peek()
	if !ok || v1.kind != tokIdent {
		return nil, p.errorf("expected a lambda variable")
	}
	p.pos++
	if err := p.punct(":"); err != nil {
		return nil, err
	}
	v2, ok := p.peek()
	if !ok || v2.kind != tokIdent || v2.text != v1.text {
		return nil, p.errorf("expected the lambda variable '%s'", v1.text)
	}
	p.pos++
	if !p.keyword("eq") {
		return nil, p.errorf("only 'eq' is supported inside any()")
	}
	lit, ok := p.peek()
	if !ok || lit.kind != tokString {
		return nil, p.errorf("expected a quoted string")
	}
	p.pos++
	if err := p.punct(")"); err != nil {
		return nil, err
	}
	want := lit.text
	return func(v map[string]any) bool { return slices.Contains(v[prop].([]string), want) }, nil
}
