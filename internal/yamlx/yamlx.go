// Package yamlx decodes YAML strictly into Go structs and reports every
// problem as "file:line:col: path: message".
//
// It exists because the common YAML libraries either lose strictness in custom
// unmarshalers (go-yaml/yaml#460) or drop the position of errors that do not
// come from the parser itself (a bad duration, an unknown enum). Config and
// rule files are written by people, so each mistake must point at its line and
// column, and all mistakes of a file must be reported at once.
package yamlx

import (
	"encoding"
	"errors"
	"fmt"
	"math"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"
)

// Position is a place in a YAML file. Line and Col start at 1.
type Position struct {
	File string
	Line int
	Col  int
}

// String formats the position as file:line:col.
func (p Position) String() string {
	return fmt.Sprintf("%s:%d:%d", p.File, p.Line, p.Col)
}

// Error is one problem found in a YAML file.
type Error struct {
	Pos  Position
	Path string // key path in YAML spelling, e.g. "server.tls_cert_file" or "rules[2].when"
	Msg  string
}

// Error formats the problem as "file:line:col: path: message".
func (e *Error) Error() string {
	if e.Path == "" {
		return fmt.Sprintf("%s: %s", e.Pos, e.Msg)
	}
	return fmt.Sprintf("%s: %s: %s", e.Pos, e.Path, e.Msg)
}

// Errors is a list of problems, sorted by position.
type Errors []*Error

// Error joins the problems, one per line.
func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap exposes each problem to errors.As.
func (es Errors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}

// Sort orders the problems by file, line and column.
func (es Errors) Sort() {
	sort.SliceStable(es, func(i, j int) bool {
		a, b := es[i].Pos, es[j].Pos
		if a.File != b.File {
			return a.File < b.File
		}
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Col < b.Col
	})
}

// Err returns nil for an empty list and the sorted list otherwise.
func (es Errors) Err() error {
	if len(es) == 0 {
		return nil
	}
	es.Sort()
	return es
}

// Positions maps each decoded key path to the position of its value.
type Positions map[string]Position

// Lookup returns the position of path, or of its closest decoded parent, or
// line 1 column 1 of file when none was decoded (an absent key).
func (p Positions) Lookup(file, path string) Position {
	for path != "" {
		if pos, ok := p[path]; ok {
			return pos
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			break
		}
		path = path[:i]
	}
	if pos, ok := p[""]; ok {
		return pos
	}
	return Position{File: file, Line: 1, Col: 1}
}

// Unmarshaler is implemented by types that decode themselves from a scalar.
// The error it returns is reported at the scalar's position.
type Unmarshaler interface {
	UnmarshalYAMLScalar(value string) error
}

var (
	durationType    = reflect.TypeFor[time.Duration]()
	unmarshalerType = reflect.TypeFor[Unmarshaler]()
	textType        = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// Decode parses data (named file in messages) and stores it in out, which
// must be a pointer to a struct. Keys are matched against `yaml` struct tags;
// an unknown key is an error. It decodes as much as it can and returns every
// problem found, as Errors.
func Decode(file string, data []byte, out any) (Positions, error) {
	d := &decoder{file: file, pos: Positions{}, anchors: map[string]ast.Node{}}
	f, err := parser.ParseBytes(data, 0)
	if err != nil {
		return d.pos, d.syntaxError(err)
	}
	rv := reflect.ValueOf(out)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return d.pos, fmt.Errorf("yamlx: decode target must be a non-nil pointer, got %T", out)
	}
	d.pos[""] = Position{File: file, Line: 1, Col: 1}
	var body ast.Node
	for _, doc := range f.Docs {
		if doc.Body == nil {
			continue
		}
		if body != nil {
			d.errorf(doc.Body, "", "only one YAML document is allowed per file")
			break
		}
		body = doc.Body
	}
	if body != nil {
		d.decode(body, "", rv.Elem())
	}
	return d.pos, d.errs.Err()
}

// DecodeValue decodes one already parsed node into out. Unlike Decode it
// records positions into pos under prefix.
func DecodeValue(file string, n ast.Node, prefix string, out any, pos Positions) error {
	d := &decoder{file: file, pos: pos, anchors: map[string]ast.Node{}}
	d.decode(n, prefix, reflect.ValueOf(out).Elem())
	return d.errs.Err()
}

type decoder struct {
	file    string
	pos     Positions
	errs    Errors
	anchors map[string]ast.Node
}

func (d *decoder) position(n ast.Node) Position {
	tk := n.GetToken()
	if tk == nil || tk.Position == nil {
		return Position{File: d.file, Line: 1, Col: 1}
	}
	return Position{File: d.file, Line: tk.Position.Line, Col: tk.Position.Column}
}

func (d *decoder) errorf(n ast.Node, path, format string, args ...any) {
	d.errs = append(d.errs, &Error{Pos: d.position(n), Path: path, Msg: fmt.Sprintf(format, args...)})
}

func (d *decoder) syntaxError(err error) error {
	var se *yaml.SyntaxError
	if errors.As(err, &se) && se.Token != nil && se.Token.Position != nil {
		return Errors{{Pos: Position{File: d.file, Line: se.Token.Position.Line, Col: se.Token.Position.Column}, Msg: "syntax error: " + se.Message}}
	}
	return Errors{{Pos: Position{File: d.file, Line: 1, Col: 1}, Msg: "syntax error: " + err.Error()}}
}

// resolve follows anchors, aliases and tags down to the node that holds data.
func (d *decoder) resolve(n ast.Node) ast.Node {
	for i := 0; i < 16; i++ {
		switch v := n.(type) {
		case *ast.AnchorNode:
			if name := v.Name.String(); name != "" {
				d.anchors[name] = v.Value
			}
			n = v.Value
		case *ast.AliasNode:
			target, ok := d.anchors[v.Value.String()]
			if !ok {
				return n
			}
			n = target
		case *ast.TagNode:
			n = v.Value
		default:
			return n
		}
	}
	return n
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func describe(n ast.Node) string {
	switch n.(type) {
	case *ast.MappingNode, *ast.MappingValueNode:
		return "a mapping"
	case *ast.SequenceNode:
		return "a list"
	case *ast.NullNode:
		return "null"
	default:
		return "a scalar"
	}
}

func (d *decoder) decode(n ast.Node, path string, v reflect.Value) {
	n = d.resolve(n)
	if _, ok := n.(*ast.AliasNode); ok {
		d.errorf(n, path, "unknown alias %q", n.String())
		return
	}
	switch n.(type) {
	case *ast.MappingNode, *ast.MappingValueNode:
		// A mapping is best pointed at by its key (recorded by the caller).
		if _, ok := d.pos[path]; !ok {
			d.pos[path] = d.position(n)
		}
	default:
		d.pos[path] = d.position(n)
	}
	if _, ok := n.(*ast.NullNode); ok {
		// An explicit null leaves the default in place.
		return
	}
	if v.Kind() == reflect.Pointer {
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		if v.Type().Implements(unmarshalerType) || v.Type().Implements(textType) {
			d.decodeScalarInto(n, path, v)
			return
		}
		d.decode(n, path, v.Elem())
		return
	}
	if v.CanAddr() && (v.Addr().Type().Implements(unmarshalerType) || v.Addr().Type().Implements(textType)) {
		d.decodeScalarInto(n, path, v.Addr())
		return
	}
	switch v.Kind() {
	case reflect.Struct:
		d.decodeStruct(n, path, v)
	case reflect.Slice:
		d.decodeSlice(n, path, v)
	case reflect.Map:
		d.decodeMap(n, path, v)
	case reflect.Interface:
		val, ok := d.anyValue(n, path)
		if ok && val != nil {
			v.Set(reflect.ValueOf(val))
		}
	default:
		d.decodeScalar(n, path, v)
	}
}

func (d *decoder) mapping(n ast.Node, path string) ([]*ast.MappingValueNode, bool) {
	switch m := n.(type) {
	case *ast.MappingNode:
		return m.Values, true
	case *ast.MappingValueNode:
		return []*ast.MappingValueNode{m}, true
	}
	d.errorf(n, path, "expected a mapping, got %s", describe(n))
	return nil, false
}

type fieldInfo struct {
	index []int
	name  string
}

func structFields(t reflect.Type) []fieldInfo {
	var out []fieldInfo
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("yaml")
		name, opts, _ := strings.Cut(tag, ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if strings.Contains(opts, "inline") && f.Type.Kind() == reflect.Struct {
			for _, sub := range structFields(f.Type) {
				out = append(out, fieldInfo{index: append([]int{i}, sub.index...), name: sub.name})
			}
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		out = append(out, fieldInfo{index: []int{i}, name: name})
	}
	return out
}

func (d *decoder) decodeStruct(n ast.Node, path string, v reflect.Value) {
	values, ok := d.mapping(n, path)
	if !ok {
		return
	}
	fields := structFields(v.Type())
	seen := map[string]bool{}
	for _, mv := range values {
		key, ok := d.key(mv)
		if !ok {
			continue
		}
		if key == "<<" {
			d.errorf(mv.Key, path, "merge keys (<<) are not supported")
			continue
		}
		kpath := join(path, key)
		if seen[key] {
			d.errorf(mv.Key, kpath, "key is set twice")
			continue
		}
		seen[key] = true
		d.pos[kpath] = d.position(mv.Key)
		var fi *fieldInfo
		for i := range fields {
			if fields[i].name == key {
				fi = &fields[i]
				break
			}
		}
		if fi == nil {
			d.errorf(mv.Key, kpath, "unknown key%s", suggest(key, fields))
			continue
		}
		d.decode(mv.Value, kpath, v.FieldByIndex(fi.index))
	}
}

func suggest(key string, fields []fieldInfo) string {
	best, bestDist := "", 3
	for _, f := range fields {
		if dist := levenshtein(key, f.name); dist < bestDist {
			best, bestDist = f.name, dist
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

func (d *decoder) key(mv *ast.MappingValueNode) (string, bool) {
	k := d.resolve(mv.Key)
	if mk, ok := k.(*ast.MappingKeyNode); ok {
		k = d.resolve(mk.Value)
	}
	s, ok := scalarText(k)
	if !ok {
		d.errorf(mv.Key, "", "mapping keys must be scalars")
		return "", false
	}
	return s, true
}

func (d *decoder) decodeSlice(n ast.Node, path string, v reflect.Value) {
	seq, ok := n.(*ast.SequenceNode)
	if !ok {
		d.errorf(n, path, "expected a list, got %s", describe(n))
		return
	}
	out := reflect.MakeSlice(v.Type(), len(seq.Values), len(seq.Values))
	for i, item := range seq.Values {
		d.decode(item, fmt.Sprintf("%s[%d]", path, i), out.Index(i))
	}
	v.Set(out)
}

func (d *decoder) decodeMap(n ast.Node, path string, v reflect.Value) {
	values, ok := d.mapping(n, path)
	if !ok {
		return
	}
	if v.Type().Key().Kind() != reflect.String {
		d.errorf(n, path, "internal: map key type %s is not supported", v.Type().Key())
		return
	}
	if v.IsNil() {
		v.Set(reflect.MakeMap(v.Type()))
	}
	seen := map[string]bool{}
	for _, mv := range values {
		key, ok := d.key(mv)
		if !ok {
			continue
		}
		kpath := join(path, key)
		if seen[key] {
			d.errorf(mv.Key, kpath, "key is set twice")
			continue
		}
		seen[key] = true
		d.pos[kpath] = d.position(mv.Key)
		elem := reflect.New(v.Type().Elem()).Elem()
		d.decode(mv.Value, kpath, elem)
		v.SetMapIndex(reflect.ValueOf(key).Convert(v.Type().Key()), elem)
	}
}

// scalarText returns the text of a scalar node as written (without quotes).
func scalarText(n ast.Node) (string, bool) {
	switch s := n.(type) {
	case *ast.StringNode:
		return s.Value, true
	case *ast.LiteralNode:
		return s.Value.Value, true
	case *ast.IntegerNode, *ast.FloatNode, *ast.BoolNode, *ast.InfinityNode, *ast.NanNode:
		return n.GetToken().Value, true
	case *ast.NullNode:
		return "", true
	}
	return "", false
}

func (d *decoder) decodeScalarInto(n ast.Node, path string, ptr reflect.Value) {
	text, ok := scalarText(n)
	if !ok {
		d.errorf(n, path, "expected a scalar, got %s", describe(n))
		return
	}
	var err error
	switch u := ptr.Interface().(type) {
	case Unmarshaler:
		err = u.UnmarshalYAMLScalar(text)
	case encoding.TextUnmarshaler:
		err = u.UnmarshalText([]byte(text))
	}
	if err != nil {
		d.errorf(n, path, "%v", err)
	}
}

func (d *decoder) decodeScalar(n ast.Node, path string, v reflect.Value) {
	text, ok := scalarText(n)
	if !ok {
		d.errorf(n, path, "expected %s, got %s", kindName(v.Type()), describe(n))
		return
	}
	if err := SetScalar(v, text); err != nil {
		d.errorf(n, path, "%v", err)
	}
}

func kindName(t reflect.Type) string {
	if t == durationType {
		return "a duration"
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "a boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	}
	return t.String()
}

// SetScalar parses text into v according to v's type. It is shared with the
// environment-variable overrides so that both accept the same syntax.
func SetScalar(v reflect.Value, text string) error {
	if v.Type() == durationType {
		dur, err := ParseDuration(strings.TrimSpace(text))
		if err != nil {
			return fmt.Errorf("invalid duration %q (use a number and a unit such as 90s, 5m, 24h, 90d or 2w, or several: 1d12h)", text)
		}
		v.SetInt(int64(dur))
		return nil
	}
	if v.CanAddr() {
		switch u := v.Addr().Interface().(type) {
		case Unmarshaler:
			return u.UnmarshalYAMLScalar(text)
		case encoding.TextUnmarshaler:
			return u.UnmarshalText([]byte(text))
		}
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(text)
	case reflect.Bool:
		b, err := strconv.ParseBool(strings.TrimSpace(text))
		if err != nil {
			return fmt.Errorf("invalid boolean %q (use true or false)", text)
		}
		v.SetBool(b)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		i, err := strconv.ParseInt(strings.TrimSpace(text), 10, v.Type().Bits())
		if err != nil {
			return fmt.Errorf("invalid integer %q", text)
		}
		v.SetInt(i)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		i, err := strconv.ParseUint(strings.TrimSpace(text), 10, v.Type().Bits())
		if err != nil {
			return fmt.Errorf("invalid non-negative integer %q", text)
		}
		v.SetUint(i)
	case reflect.Float32, reflect.Float64:
		f, err := strconv.ParseFloat(strings.TrimSpace(text), v.Type().Bits())
		if err != nil || math.IsNaN(f) {
			return fmt.Errorf("invalid number %q", text)
		}
		v.SetFloat(f)
	case reflect.Slice:
		if v.Type().Elem().Kind() != reflect.String {
			return fmt.Errorf("cannot set %s from text", v.Type())
		}
		// Environment form of a list: comma separated.
		var items []string
		for _, s := range strings.Split(text, ",") {
			if s = strings.TrimSpace(s); s != "" {
				items = append(items, s)
			}
		}
		out := reflect.MakeSlice(v.Type(), len(items), len(items))
		for i, s := range items {
			out.Index(i).SetString(s)
		}
		v.Set(out)
	default:
		return fmt.Errorf("cannot set %s from text", v.Type())
	}
	return nil
}

// anyValue converts a node into plain Go values (map[string]any, []any,
// string, int64, float64, bool, nil), as encoding/json would produce.
func (d *decoder) anyValue(n ast.Node, path string) (any, bool) {
	n = d.resolve(n)
	d.pos[path] = d.position(n)
	switch s := n.(type) {
	case *ast.MappingNode, *ast.MappingValueNode:
		values, _ := d.mapping(n, path)
		m := make(map[string]any, len(values))
		for _, mv := range values {
			key, ok := d.key(mv)
			if !ok {
				return nil, false
			}
			val, ok := d.anyValue(mv.Value, join(path, key))
			if !ok {
				return nil, false
			}
			m[key] = val
		}
		return m, true
	case *ast.SequenceNode:
		out := make([]any, 0, len(s.Values))
		for i, item := range s.Values {
			val, ok := d.anyValue(item, fmt.Sprintf("%s[%d]", path, i))
			if !ok {
				return nil, false
			}
			out = append(out, val)
		}
		return out, true
	case *ast.NullNode:
		return nil, true
	case *ast.BoolNode:
		return s.Value, true
	case *ast.IntegerNode:
		switch i := s.Value.(type) {
		case int64:
			return float64(i), true
		case uint64:
			return float64(i), true
		}
		return s.GetToken().Value, true
	case *ast.FloatNode:
		return s.Value, true
	case *ast.StringNode:
		return s.Value, true
	case *ast.LiteralNode:
		return s.Value.Value, true
	}
	d.errorf(n, path, "unsupported YAML value")
	return nil, false
}

// ParseDuration parses a duration in Go syntax (time.ParseDuration: "90s",
// "1h30m", "-5m") with two more units, d (24h) and w (7d), so that the
// periods people write for retention and cooldowns read as they are said:
// "90d", "1d12h", "2w", "1.5d". A day is always 24 hours: these are
// durations, not calendar dates. Every duration of the config and the rule
// files goes through it.
func ParseDuration(s string) (time.Duration, error) {
	orig := s
	neg := false
	if s != "" && (s[0] == '-' || s[0] == '+') {
		neg = s[0] == '-'
		s = s[1:]
	}
	if s == "0" {
		return 0, nil
	}
	if s == "" {
		return 0, fmt.Errorf("invalid duration %q", orig)
	}
	var total time.Duration
	for s != "" {
		// One component: a number (digits and at most one point), then
		// its unit (everything up to the next digit or point).
		i := 0
		for i < len(s) && (s[i] == '.' || ('0' <= s[i] && s[i] <= '9')) {
			i++
		}
		j := i
		for j < len(s) && s[j] != '.' && (s[j] < '0' || s[j] > '9') {
			j++
		}
		num, unit := s[:i], s[i:j]
		s = s[j:]
		if num == "" || unit == "" {
			return 0, fmt.Errorf("invalid duration %q", orig)
		}
		var d time.Duration
		switch unit {
		case "d", "w":
			// The number read as hours, then scaled: exact for every
			// decimal Go accepts ("1.5h" is 90 minutes exactly).
			h, err := time.ParseDuration(num + "h")
			if err != nil {
				return 0, fmt.Errorf("invalid duration %q", orig)
			}
			mult := time.Duration(24)
			if unit == "w" {
				mult = 24 * 7
			}
			if h > math.MaxInt64/mult {
				return 0, fmt.Errorf("invalid duration %q: too long", orig)
			}
			d = h * mult
		default:
			var err error
			if d, err = time.ParseDuration(num + unit); err != nil {
				return 0, fmt.Errorf("invalid duration %q", orig)
			}
		}
		if total > math.MaxInt64-d {
			return 0, fmt.Errorf("invalid duration %q: too long", orig)
		}
		total += d
	}
	if neg {
		total = -total
	}
	return total, nil
}
