package alert

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	segjson "github.com/segmentio/encoding/json"
)

// maxAlerts bounds the alerts of one body: the input alerts of an array and
// the Alerts and Problems a body decodes to (a Graph alert counts once per
// device). Beyond it the body is rejected, so that a hostile body cannot make
// the decoder hold much more than the body itself.
const maxAlerts = 10000

// noLimit is the element limit of arrays that hold no alerts: they are
// bounded by the body size alone.
const noLimit = math.MaxInt

// maxEcho caps how much of a bad value a message repeats.
const maxEcho = 64

// tooManyAlerts is the message of the DecodeError for a body over maxAlerts.
var tooManyAlerts = fmt.Sprintf("more than %d alerts in one body", maxAlerts)

// parseBody checks that body holds exactly one JSON value and returns it.
// Every problem is a *DecodeError for the body as a whole.
func parseBody(body []byte) (json.RawMessage, error) {
	trimmed := trimJSONSpace(body)
	if len(trimmed) == 0 {
		return nil, &DecodeError{Msg: "body is empty"}
	}
	// One scan without allocating for the common, valid body; the decoder
	// below runs only to locate the problem in a bad one.
	if validJSON(trimmed) {
		return json.RawMessage(trimmed), nil
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	var raw json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		var syntax *json.SyntaxError
		switch {
		case errors.As(err, &syntax):
			// Offset counts the bytes read, the offending one included.
			return nil, notJSON(body, syntax.Offset-1, syntax.Error())
		case errors.Is(err, io.ErrUnexpectedEOF):
			return nil, notJSON(body, int64(len(body)), "unexpected end of input")
		default:
			return nil, notJSON(body, dec.InputOffset(), err.Error())
		}
	}
	end := dec.InputOffset()
	if rest := body[end:]; len(trimJSONSpace(rest)) != 0 {
		start := end + int64(len(rest)-len(trimLeftJSONSpace(rest)))
		return nil, notJSON(body, start, "unexpected data after the top-level value")
	}
	return raw, nil
}

// maxNesting is how deep encoding/json lets arrays and objects nest.
const maxNesting = 10000

// validJSON reports whether b is one JSON value, exactly as json.Valid
// does. segmentio's validator takes a quarter of the time (json.Valid was
// 5 % of the responder's CPU under load) and agrees on every input but
// one kind: it does not refuse nesting deeper than maxNesting, which only
// a body with that many brackets can have.
func validJSON(b []byte) bool {
	if bytes.Count(b, []byte{'['})+bytes.Count(b, []byte{'{'}) > maxNesting {
		return json.Valid(b)
	}
	return segjson.Valid(b)
}

// notJSON builds the DecodeError for a body that is not one JSON value,
// locating the problem at the 0-based byte offset off.
func notJSON(body []byte, off int64, what string) *DecodeError {
	off = max(0, min(off, int64(len(body))))
	before := body[:off]
	line := 1 + bytes.Count(before, []byte("\n"))
	col := 1 + len(before) - (bytes.LastIndexByte(before, '\n') + 1)
	return &DecodeError{Msg: fmt.Sprintf("body is not valid JSON: %s at line %d, column %d (byte offset %d)", what, line, col, off)}
}

// trimJSONSpace removes the white space JSON allows around values.
func trimJSONSpace(b []byte) []byte {
	b = trimLeftJSONSpace(b)
	for len(b) > 0 && isJSONSpace(b[len(b)-1]) {
		b = b[:len(b)-1]
	}
	return b
}

func trimLeftJSONSpace(b []byte) []byte {
	for len(b) > 0 && isJSONSpace(b[0]) {
		b = b[1:]
	}
	return b
}

func isJSONSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }

// kindOf names the type of a JSON value as messages spell it.
func kindOf(raw json.RawMessage) string {
	raw = trimLeftJSONSpace(raw)
	if len(raw) == 0 {
		return "nothing"
	}
	switch raw[0] {
	case '{':
		return "object"
	case '[':
		return "array"
	case '"':
		return "string"
	case 't', 'f':
		return "boolean"
	case 'n':
		return "null"
	}
	return "number"
}

// typeError reports a value of the wrong JSON type at path.
func typeError(path, want string, raw json.RawMessage) *DecodeError {
	return &DecodeError{Path: where(path), Msg: fmt.Sprintf("expected %s, got %s", want, kindOf(raw))}
}

// valueError reports a value of the right type but a bad content at path.
func valueError(path, format string, args ...any) *DecodeError {
	return &DecodeError{Path: where(path), Msg: fmt.Sprintf(format, args...)}
}

// jsonError turns an error of encoding/json about the value at path into a
// DecodeError. The decoders check every type before they unmarshal, so this
// is a safety net rather than the usual way errors are reported.
func jsonError(path string, err error) *DecodeError {
	var typ *json.UnmarshalTypeError
	if errors.As(err, &typ) {
		p := path
		if typ.Field != "" {
			p = joinKey(path, typ.Field)
		}
		return &DecodeError{Path: where(p), Msg: fmt.Sprintf("expected %s, got %s", typ.Type, typ.Value)}
	}
	return &DecodeError{Path: where(path), Msg: "invalid value: " + err.Error()}
}

// where names the body as a whole when path is empty.
func where(path string) string {
	if path == "" {
		return "body"
	}
	return path
}

// joinKey appends an object key to a path: ".key" for key names made of
// letters, digits, '_', '@' and '-', `["key"]` for anything else.
func joinKey(path, key string) string {
	plain := key != ""
	for _, r := range key {
		if !(r == '_' || r == '@' || r == '-' || '0' <= r && r <= '9' || 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z') {
			plain = false
			break
		}
	}
	if !plain {
		return path + "[" + quoteCapped(key) + "]"
	}
	if path == "" {
		return key
	}
	return path + "." + key
}

// joinIndex appends an array index to a path.
func joinIndex(path string, i int) string {
	return path + "[" + strconv.Itoa(i) + "]"
}

// quoteCapped quotes s for a message, keeping at most maxEcho bytes of it
// so that a hostile value is never echoed in full.
func quoteCapped(s string) string {
	if len(s) <= maxEcho {
		return strconv.Quote(s)
	}
	cut := maxEcho
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strconv.Quote(s[:cut]) + fmt.Sprintf("... (%d bytes)", len(s))
}

// eachElement calls fn for every element of the JSON array raw, found at
// path, one at a time, and fails once there are more than limit elements.
func eachElement(raw json.RawMessage, path string, limit int, fn func(i int, elem json.RawMessage) error) error {
	if k := kindOf(raw); k != "array" {
		return typeError(path, "array", raw)
	}
	if elems, ok := splitArray(raw); ok {
		for i, elem := range elems {
			if i >= limit {
				return &DecodeError{Path: where(path), Msg: tooManyAlerts}
			}
			if err := fn(i, elem); err != nil {
				return err
			}
		}
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if _, err := dec.Token(); err != nil { // the opening bracket
		return jsonError(path, err)
	}
	for i := 0; dec.More(); i++ {
		if i >= limit {
			return &DecodeError{Path: where(path), Msg: tooManyAlerts}
		}
		var elem json.RawMessage
		if err := dec.Decode(&elem); err != nil {
			return jsonError(joinIndex(path, i), err)
		}
		if err := fn(i, elem); err != nil {
			return err
		}
	}
	return nil
}

// object is a JSON object being decoded: its members, still raw, and where
// it is in the body. A member whose value is null counts as absent.
type object struct {
	path    string
	members members
}

// member is one member of a JSON object: its name unescaped (for a name
// without escapes, which is nearly every one, the body's own bytes) and
// its value, raw.
type member struct {
	name  []byte
	value json.RawMessage
}

// members are the members of an object in document order, their names
// distinct. A slice, not a map: an alert object has a few dozen members,
// which a scan finds as fast as a hash, and a map with its name strings
// was three quarters of what decoding an alert allocated.
type members []member

// lookup returns the value of the member called name.
func (ms members) lookup(name string) (json.RawMessage, bool) {
	for i := range ms {
		if string(ms[i].name) == name {
			return ms[i].value, true
		}
	}
	return nil, false
}

// smallObject is how many members an object may have for each new name to
// be compared with the others one by one; past it, a map of the names
// keeps a body of many members from costing quadratic time.
const smallObject = 32

// nameSet finds the names seen twice among an object's members.
type nameSet struct {
	large map[string]struct{} // once there are more than smallObject
}

// add reports whether name is new among ms (the members before it), and
// remembers it.
func (n *nameSet) add(ms members, name []byte) bool {
	if n.large == nil && len(ms) < smallObject {
		for i := range ms {
			if bytes.Equal(ms[i].name, name) {
				return false
			}
		}
		return true
	}
	if n.large == nil {
		n.large = make(map[string]struct{}, 2*len(ms))
		for i := range ms {
			n.large[string(ms[i].name)] = struct{}{}
		}
	}
	if _, dup := n.large[string(name)]; dup {
		return false
	}
	n.large[string(name)] = struct{}{}
	return true
}

// decodeObject decodes the JSON object raw found at path.
//
// A member name that appears twice in the object is a *DecodeError for the
// whole body, `path: duplicate member "name"`. encoding/json keeps the last
// of the two while other parsers keep the first, so the sender's console may
// show one alert id or machine while we act on another: strict JSON (SPEC 10)
// refuses the document rather than pick one. It is the body that is
// malformed, not one alert's content, so it is handled like a value of the
// wrong type (a whole-body error at any depth) and not as a Problem, which
// is kept for a well-formed alert whose id or machine id is unusable; nor
// can a Problem say which alert an object with two ids is.
func decodeObject(raw json.RawMessage, path string) (object, error) {
	if k := kindOf(raw); k != "object" {
		return object{}, typeError(path, "object", raw)
	}
	members, err := splitObject(raw)
	if errors.Is(err, errNotSplit) {
		members, err = objectMembers(raw)
	}
	if err != nil {
		var dup *duplicateError
		if errors.As(err, &dup) {
			return object{}, &DecodeError{Path: where(path), Msg: dup.Error()}
		}
		return object{}, jsonError(path, err)
	}
	return object{path: path, members: members}, nil
}

// duplicateError reports a member name found twice in one JSON object.
type duplicateError struct {
	key string // unescaped
}

func (e *duplicateError) Error() string { return "duplicate member " + quoteCapped(e.key) }

// errNotSplit is what splitObject returns when it gives up.
var errNotSplit = errors.New("object not split")

// splitObject splits a JSON object into its members without a second
// validation pass: every object the decoders meet comes from a body that
// parseBody already validated. A member name found twice (after unescaping,
// as encoding/json compares them) is a *duplicateError. It gives up with
// errNotSplit on anything it does not expect, and the caller then uses
// objectMembers, which also reports the error; FuzzSplitObject checks that
// both agree with encoding/json whenever they take the input.
func splitObject(raw json.RawMessage) (members, error) {
	b := trimJSONSpace(raw)
	if len(b) < 2 || b[0] != '{' || b[len(b)-1] != '}' {
		return nil, errNotSplit
	}
	// Split into a buffer on the stack, then copy into a slice of the
	// exact size: one allocation per object.
	var buf [48]member
	ms := members(buf[:0])
	var names nameSet
	i := skipSpace(b, 1)
	if b[i] == '}' {
		if i != len(b)-1 {
			return nil, errNotSplit
		}
		return members{}, nil
	}
	for {
		end, ok := stringEnd(b, i)
		if !ok {
			return nil, errNotSplit
		}
		name, ok := plainName(b[i:end])
		if !ok {
			var key string
			if err := json.Unmarshal(b[i:end], &key); err != nil {
				return nil, errNotSplit
			}
			name = []byte(key)
		}
		i = skipSpace(b, end)
		if i >= len(b) || b[i] != ':' {
			return nil, errNotSplit
		}
		i = skipSpace(b, i+1)
		vend, ok := valueEnd(b, i)
		if !ok {
			return nil, errNotSplit
		}
		if !names.add(ms, name) {
			return nil, &duplicateError{key: string(name)}
		}
		ms = append(ms, member{name: name, value: json.RawMessage(b[i:vend])})
		i = skipSpace(b, vend)
		if i >= len(b) {
			return nil, errNotSplit
		}
		switch b[i] {
		case ',':
			i = skipSpace(b, i+1)
		case '}':
			if i != len(b)-1 {
				return nil, errNotSplit
			}
			return append(make(members, 0, len(ms)), ms...), nil
		default:
			return nil, errNotSplit
		}
	}
}

// objectMembers is the fallback of splitObject: a json.Decoder walk of the
// object's top level. json.Unmarshal into a map would silently keep the
// last of two members of the same name; this returns a *duplicateError.
// Other errors are encoding/json's.
func objectMembers(raw json.RawMessage) (members, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	if tok != json.Delim('{') {
		return nil, fmt.Errorf("expected an object, got %v", tok)
	}
	var ms members
	var names nameSet
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		key, ok := tok.(string)
		if !ok {
			return nil, fmt.Errorf("expected a member name, got %v", tok)
		}
		var value json.RawMessage
		if err := dec.Decode(&value); err != nil {
			return nil, err
		}
		if !names.add(ms, []byte(key)) {
			return nil, &duplicateError{key: key}
		}
		ms = append(ms, member{name: []byte(key), value: value})
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return nil, err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("unexpected data after the object")
	}
	return ms, nil
}

// splitArray splits a JSON array into its elements without a second
// validation pass, like splitObject; FuzzSplitArray checks it against
// encoding/json.
func splitArray(raw json.RawMessage) ([]json.RawMessage, bool) {
	b := trimJSONSpace(raw)
	if len(b) < 2 || b[0] != '[' || b[len(b)-1] != ']' {
		return nil, false
	}
	var elems []json.RawMessage
	i := skipSpace(b, 1)
	if b[i] == ']' {
		return elems, i == len(b)-1
	}
	for {
		end, ok := valueEnd(b, i)
		if !ok {
			return nil, false
		}
		elems = append(elems, json.RawMessage(b[i:end]))
		i = skipSpace(b, end)
		if i >= len(b) {
			return nil, false
		}
		switch b[i] {
		case ',':
			i = skipSpace(b, i+1)
		case ']':
			return elems, i == len(b)-1
		default:
			return nil, false
		}
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && isJSONSpace(b[i]) {
		i++
	}
	return i
}

// stringEnd returns the index just past the JSON string starting at b[i].
func stringEnd(b []byte, i int) (int, bool) {
	if i >= len(b) || b[i] != '"' {
		return 0, false
	}
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++
		case '"':
			return j + 1, true
		}
	}
	return 0, false
}

// valueEnd returns the index just past the JSON value starting at b[i].
func valueEnd(b []byte, i int) (int, bool) {
	if i >= len(b) {
		return 0, false
	}
	switch b[i] {
	case '"':
		return stringEnd(b, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				end, ok := stringEnd(b, j)
				if !ok {
					return 0, false
				}
				j = end - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1, true
				}
			}
		}
		return 0, false
	}
	j := i
	for j < len(b) && b[j] != ',' && b[j] != '}' && b[j] != ']' && b[j] != ' ' && b[j] != '\t' && b[j] != '\n' && b[j] != '\r' {
		j++
	}
	return j, j > i
}

// has reports whether the object has the key, even with a null value.
func (o object) has(key string) bool {
	_, ok := o.members.lookup(key)
	return ok
}

// get returns the raw value of key, and false when it is absent or null.
func (o object) get(key string) (json.RawMessage, bool) {
	raw, ok := o.members.lookup(key)
	if !ok || kindOf(raw) == "null" {
		return nil, false
	}
	return raw, true
}

// at returns the path of a member.
func (o object) at(key string) string { return joinKey(o.path, key) }

// str returns the string value of key, "" when absent.
func (o object) str(key string) (string, error) {
	raw, ok := o.get(key)
	if !ok {
		return "", nil
	}
	return decodeString(raw, o.at(key))
}

// decodeString decodes the JSON string raw found at path.
func decodeString(raw json.RawMessage, path string) (string, error) {
	if kindOf(raw) != "string" {
		return "", typeError(path, "string", raw)
	}
	if s, ok := plainString(raw); ok {
		return s, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", jsonError(path, err)
	}
	return s, nil
}

// plainString returns the text of a JSON string literal that has no escape,
// no control character and valid UTF-8 — nearly every string of an alert —
// without encoding/json's reflection; json.Unmarshal would return the same.
func plainString(raw json.RawMessage) (string, bool) {
	text, ok := plainName(raw)
	return string(text), ok
}

// plainName is plainString without the copy: the literal's text as the
// bytes of raw itself.
func plainName(raw json.RawMessage) ([]byte, bool) {
	raw = trimJSONSpace(raw)
	if len(raw) < 2 || raw[0] != '"' || raw[len(raw)-1] != '"' {
		return nil, false
	}
	inner := raw[1 : len(raw)-1]
	for _, c := range inner {
		if c < 0x20 || c == '\\' || c == '"' {
			return nil, false
		}
	}
	if !utf8.Valid(inner) {
		return nil, false
	}
	return inner, true
}

// badUTF8 ends the reason of an id refused for its encoding.
const badUTF8 = `not valid UTF-8 (an invalid byte sequence or an unpaired \uD800-\uDFFF escape)`

// exactText reports whether the JSON string literal raw decodes to exactly
// the text it spells: its bytes are valid UTF-8 and every \u escape of a
// UTF-16 surrogate is half of a pair. encoding/json replaces anything else
// with U+FFFD, so that two different raw ids would decode to one id, and
// one dedup key. raw must be a string literal from a validated body.
func exactText(raw json.RawMessage) bool {
	raw = trimJSONSpace(raw)
	if !utf8.Valid(raw) {
		return false
	}
	if !bytes.Contains(raw, []byte(`\u`)) {
		return true
	}
	for i := 1; i < len(raw)-1; i++ {
		if raw[i] != '\\' {
			continue
		}
		i++ // the escaped character
		if raw[i] != 'u' {
			continue
		}
		r, ok := hex4(raw, i+1)
		if !ok {
			return false // not from a validated body
		}
		i += 4
		switch {
		case r >= 0xDC00 && r <= 0xDFFF:
			return false // a low surrogate without its high one
		case r >= 0xD800 && r <= 0xDBFF:
			if i+6 >= len(raw) || raw[i+1] != '\\' || raw[i+2] != 'u' {
				return false
			}
			low, ok := hex4(raw, i+3)
			if !ok || low < 0xDC00 || low > 0xDFFF {
				return false
			}
			i += 6
		}
	}
	return true
}

// hex4 reads the four hexadecimal digits of a \u escape at b[i:].
func hex4(b []byte, i int) (rune, bool) {
	if i+4 > len(b) {
		return 0, false
	}
	var r rune
	for _, c := range b[i : i+4] {
		switch {
		case '0' <= c && c <= '9':
			r = r<<4 | rune(c-'0')
		case 'a' <= c && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case 'A' <= c && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	return r, true
}

// lossy reports whether decoded, the string member key of o, did not
// decode to the text the body spells (see exactText). It costs nothing
// unless decoded holds U+FFFD, the mark such a decoding leaves.
func (o object) lossy(key, decoded string) bool {
	if !strings.ContainsRune(decoded, utf8.RuneError) {
		return false
	}
	raw, ok := o.get(key)
	return ok && kindOf(raw) == "string" && !exactText(raw)
}

// lossyIn is lossy for the member name of the object under key (a label
// of an Alertmanager alert).
func (o object) lossyIn(key, name, decoded string) bool {
	if !strings.ContainsRune(decoded, utf8.RuneError) {
		return false
	}
	raw, ok := o.get(key)
	if !ok {
		return false
	}
	inner, err := decodeObject(raw, o.at(key))
	if err != nil {
		return false // decoded once already: cannot happen
	}
	return inner.lossy(name, decoded)
}

// strList returns the array of strings under key, nil when absent or empty.
func (o object) strList(key string) ([]string, error) {
	raw, ok := o.get(key)
	if !ok {
		return nil, nil
	}
	var list []string
	err := eachElement(raw, o.at(key), noLimit, func(i int, elem json.RawMessage) error {
		s, err := decodeString(elem, joinIndex(o.at(key), i))
		list = append(list, s)
		return err
	})
	if err != nil {
		return nil, err
	}
	return list, nil
}

// strMap returns the object of strings under key, nil when absent or empty.
func (o object) strMap(key string) (map[string]string, error) {
	raw, ok := o.get(key)
	if !ok {
		return nil, nil
	}
	inner, err := decodeObject(raw, o.at(key))
	if err != nil {
		return nil, err
	}
	if len(inner.members) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(inner.members))
	for _, mb := range inner.members {
		k := string(mb.name)
		s, err := decodeString(mb.value, inner.at(k))
		if err != nil {
			return nil, err
		}
		m[k] = s
	}
	return m, nil
}

// timestamp returns the RFC 3339 date-time under key in UTC, the zero time
// when absent or empty. A date-time without a zone is taken as UTC, as MDE
// sometimes writes them.
func (o object) timestamp(key string) (time.Time, error) {
	s, err := o.str(key)
	if err != nil || s == "" {
		return time.Time{}, err
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05.999999999"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, valueError(o.at(key), "expected an RFC 3339 date-time, got %s", quoteCapped(s))
}

// integerText returns the integer under key as a decimal string: MDE v1
// sends incident ids as numbers, Graph as strings; both are accepted.
func (o object) integerText(key string) (string, error) {
	raw, ok := o.get(key)
	if !ok {
		return "", nil
	}
	switch kindOf(raw) {
	case "string":
		s, err := decodeString(raw, o.at(key))
		return strings.TrimSpace(s), err
	case "number":
		text := string(trimJSONSpace(raw))
		if _, err := strconv.ParseInt(text, 10, 64); err != nil {
			if len(text) > maxEcho {
				text = text[:maxEcho] + "..." // a number literal is ASCII
			}
			return "", valueError(o.at(key), "expected an integer, got number %s", text)
		}
		return text, nil
	}
	return "", typeError(o.at(key), "integer or string", raw)
}
