package alert

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"testing"
)

// FuzzPlainString checks that the fast path for plain JSON strings returns
// exactly what encoding/json returns, whenever it takes the input.
func FuzzPlainString(f *testing.F) {
	for _, s := range []string{`"da637472900382838869_1364969609"`, `"caf\u00e9"`, `"a\"b"`, `"\u0000"`, `""`, `"é"`, "\"\xff\"", ` "x" `} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		got, ok := plainString(raw)
		if !ok {
			return
		}
		var want string
		if err := json.Unmarshal(raw, &want); err != nil {
			t.Fatalf("plainString took %q, which encoding/json refuses: %v", raw, err)
		}
		if got != want {
			t.Fatalf("plainString(%q) = %q, encoding/json %q", raw, got, want)
		}
	})
}

// FuzzSplitObject checks splitObject, and objectMembers, its fallback,
// against encoding/json on valid JSON: an object whose member names are all
// distinct gives exactly the members encoding/json gives (keys unescaped,
// values as their raw bytes); a duplicate is reported exactly when
// encoding/json's map has fewer entries than the object has members, as
// counted by a token walk, and it names one of those keys.
func FuzzSplitObject(f *testing.F) {
	for _, s := range []string{
		`{"id":"da1","machineId":"1e5b","n":-12.5e3,"t":true,"x":null,"a":[1,{"b":"]}"}],"o":{"k":"v\"}"}}`,
		`{}`, ` { "a" : 1 , "a" : 2 } `, `{"k\u00e9y":"v","k\\":"\\"}`, `{"":""}`, "{\"\xff\":1}",
		`{"id":"da6","\u0069d":"da7"}`, "{\"\xff\":1,\"\\ufffd\":2}", `{"a":{"b":1,"b":2}}`,
		`{"a":{"a":1},"b":[{"a":1,"b":2}],"c":"a"}`, `{"":1,"":2}`, `{"a":1,"A":2}`, `null`, `[{"a":1}]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		if !json.Valid(raw) {
			return // callers only pass validated JSON
		}
		if kindOf(raw) != "object" {
			if m, err := splitObject(raw); err == nil {
				t.Fatalf("splitObject took %q, which is no object: %v", raw, m)
			}
			return // callers only pass objects
		}
		var want map[string]json.RawMessage
		if err := json.Unmarshal(raw, &want); err != nil {
			t.Fatalf("encoding/json refuses the valid object %q: %v", raw, err)
		}
		count := countMembers(t, raw)
		check := func(name string, got members, err error) {
			t.Helper()
			var dup *duplicateError
			switch {
			case errors.As(err, &dup):
				if len(want) == count {
					t.Fatalf("%s(%q): reports duplicate %q, but its %d members have distinct names", name, raw, dup.key, count)
				}
				if _, ok := want[dup.key]; !ok {
					t.Fatalf("%s(%q): reports duplicate %q, which encoding/json does not see", name, raw, dup.key)
				}
			case err != nil:
				t.Fatalf("%s(%q): %v", name, raw, err)
			default:
				if len(want) != count {
					t.Fatalf("%s(%q): no duplicate reported, but %d members have %d distinct names", name, raw, count, len(want))
				}
				if len(got) != len(want) {
					t.Fatalf("%s(%q): %d members, encoding/json %d", name, raw, len(got), len(want))
				}
				for k, v := range want {
					if g, _ := got.lookup(k); string(g) != string(v) {
						t.Fatalf("%s(%q): member %q = %s, encoding/json %s", name, raw, k, g, v)
					}
				}
			}
		}
		if got, err := splitObject(raw); !errors.Is(err, errNotSplit) {
			check("splitObject", got, err)
		}
		got, err := objectMembers(raw)
		check("objectMembers", got, err)
	})
}

// countMembers counts the members of the valid JSON object raw, duplicates
// included, with a json.Decoder token walk: at depth 1 the tokens alternate
// between a member name and its value.
func countMembers(t *testing.T, raw []byte) int {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(raw))
	depth, n, name := 0, 0, false
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return n
		}
		if err != nil {
			t.Fatalf("token walk of %q: %v", raw, err)
		}
		switch tok {
		case json.Delim('{'), json.Delim('['):
			depth++
			if depth <= 2 { // a name follows the opening brace, and a value of the object
				name = true
			}
		case json.Delim('}'), json.Delim(']'):
			depth--
		default:
			if depth == 1 {
				if name {
					n++
				}
				name = !name
			}
		}
	}
}

// asMap returns the members as a map, to compare or print them.
func asMap(ms members) map[string]json.RawMessage {
	m := make(map[string]json.RawMessage, len(ms))
	for _, mb := range ms {
		m[string(mb.name)] = mb.value
	}
	return m
}

// TestObjectMembers checks the fallback of splitObject, which valid bodies
// never reach through decodeObject.
func TestObjectMembers(t *testing.T) {
	t.Parallel()
	tests := []struct {
		raw  string
		want string // the members as JSON, or the error
	}{
		{` {"id":"da6", "n" : [1, {"id":2}] , "o":{"a":null}} `, `{"id":"da6","n":[1,{"id":2}],"o":{"a":null}}`},
		{`{}`, `{}`},
		{`{"id":"da6","id":"da7"}`, `duplicate member "id"`},
		{`{"id":"da6","\u0069d":"da7"}`, `duplicate member "id"`},
		{`{"a":{"b":1,"b":2}}`, `{"a":{"b":1,"b":2}}`}, // nested objects are checked when decoded
		{`[1]`, `expected an object, got [`},
		{`{"a":1} {}`, `unexpected data after the object`},
	}
	for _, tt := range tests {
		members, err := objectMembers(json.RawMessage(tt.raw))
		got := ""
		if err != nil {
			got = err.Error()
		} else {
			b, err := json.Marshal(asMap(members))
			if err != nil {
				t.Fatal(err)
			}
			got = string(b)
		}
		if got != tt.want {
			t.Errorf("objectMembers(%s) = %s, want %s", tt.raw, got, tt.want)
		}
	}
}

// TestDecodeObjectDuplicates checks that both paths of decodeObject turn a
// duplicate into the same *DecodeError with the object's path.
func TestDecodeObjectDuplicates(t *testing.T) {
	t.Parallel()
	raw := json.RawMessage(`{"id":"da6","machineId":"x","\u0069d":"da7"}`)
	want := `value[2]: duplicate member "id"`
	if _, err := splitObject(raw); err == nil || err.Error() != `duplicate member "id"` {
		t.Errorf("splitObject: got %v, want the duplicate", err)
	}
	_, err := decodeObject(raw, "value[2]")
	var de *DecodeError
	if !errors.As(err, &de) || err.Error() != want {
		t.Errorf("decodeObject: got %v, want *DecodeError %q", err, want)
	}
	if _, err := decodeObject(json.RawMessage(`{"a":1,"a":1}`), ""); err == nil || err.Error() != `body: duplicate member "a"` {
		t.Errorf("decodeObject of the body: got %v", err)
	}
}

// TestSplitObjectManyMembers checks the duplicate check on both sides of
// smallObject: names compared one by one, then kept in a map, with the
// second occurrence before, at and after the switch.
func TestSplitObjectManyMembers(t *testing.T) {
	t.Parallel()
	object := func(n, dupOf, dupAt int) json.RawMessage {
		var b strings.Builder
		b.WriteByte('{')
		for i := range n {
			if i > 0 {
				b.WriteByte(',')
			}
			name := i
			if i == dupAt {
				name = dupOf
			}
			fmt.Fprintf(&b, `"m%d":%d`, name, i)
		}
		b.WriteByte('}')
		return json.RawMessage(b.String())
	}
	for _, n := range []int{smallObject - 1, smallObject, smallObject + 1, 4 * smallObject} {
		ms, err := splitObject(object(n, -1, -1))
		if err != nil || len(ms) != n {
			t.Fatalf("%d distinct members: got %d members, error %v", n, len(ms), err)
		}
		for i := range n {
			if v, ok := ms.lookup(fmt.Sprintf("m%d", i)); !ok || string(v) != strconv.Itoa(i) {
				t.Fatalf("%d members: m%d = %s, %v", n, i, v, ok)
			}
		}
		for _, dup := range [][2]int{{0, 1}, {0, n - 1}, {n - 2, n - 1}, {smallObject / 2, min(smallObject, n-1)}} {
			_, err := splitObject(object(n, dup[0], dup[1]))
			want := fmt.Sprintf(`duplicate member "m%d"`, dup[0])
			if err == nil || err.Error() != want {
				t.Errorf("%d members, member %d named as member %d: got %v, want %s", n, dup[1], dup[0], err, want)
			}
		}
	}
}

// FuzzSplitArray checks that splitting a valid JSON array gives exactly the
// elements encoding/json gives, as their raw bytes.
func FuzzSplitArray(f *testing.F) {
	for _, s := range []string{
		`[{"id":"da1","a":[1,{"b":"]}"}]},"x",-1.5e3,true,null,[]]`,
		`[]`, ` [ 1 , 2 ] `, `["a\"]",{"k":"v"}]`, `[[[]]]`, "[\"\xff\"]",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		if !json.Valid(raw) {
			return // callers only pass validated JSON
		}
		var want []json.RawMessage
		wantErr := json.Unmarshal(raw, &want)
		got, ok := splitArray(raw)
		if !ok {
			return
		}
		if wantErr != nil {
			t.Fatalf("splitArray took %q, which encoding/json refuses: %v", raw, wantErr)
		}
		if len(got) != len(want) {
			t.Fatalf("%q: %d elements, encoding/json %d", raw, len(got), len(want))
		}
		for i := range want {
			if string(got[i]) != string(want[i]) {
				t.Fatalf("%q: element %d = %s, encoding/json %s", raw, i, got[i], want[i])
			}
		}
	})
}

// FuzzParseBody checks that the body parser accepts exactly what
// encoding/json accepts as one value, and returns that value's bytes.
func FuzzParseBody(f *testing.F) {
	for _, s := range []string{`{"a":1}`, ` [1] `, "{\"a\":1}\n", `{"a":1}{}`, `{`, ``, `  `, `"x" y`, "\xff"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		got, err := parseBody(body)
		var want json.RawMessage
		wantErr := json.Unmarshal(body, &want)
		if (err == nil) != (wantErr == nil) {
			t.Fatalf("parseBody(%q) error %v, encoding/json %v", body, err, wantErr)
		}
		if err == nil && string(got) != string(want) {
			t.Fatalf("parseBody(%q) = %q, encoding/json %q", body, got, want)
		}
	})
}

// TestExactText: a string literal is exact unless encoding/json would put
// U+FFFD in place of something: an invalid byte sequence or an unpaired
// surrogate escape. Escaped backslashes and real U+FFFD are exact.
func TestExactText(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		raw  string
		want bool
	}{
		{`"da637472900382838869_1364969609"`, true},
		{`"café"`, true},
		{`"caf\u00e9"`, true},
		{`"\ud83d\ude00"`, true},      // a surrogate pair
		{`"\uD83D\uDE00 x"`, true},    // upper-case hex
		{"\"\xef\xbf\xbd\"", true},    // a real U+FFFD
		{`"\ufffd"`, true},            // the same, escaped
		{`"\\ud800"`, true},           // an escaped backslash, then text
		{`"a\"\\\/\b\f\n\r\t"`, true}, // every short escape
		{` "x" `, true},
		{"\"\xff\"", false},
		{"\"da1\xc3\x28\"", false},  // a broken two-byte sequence
		{"\"\xed\xa0\x80\"", false}, // a surrogate encoded in UTF-8
		{`"\ud800"`, false},
		{`"\ud800x"`, false},
		{`"\ud800\u0041"`, false}, // a high surrogate, then not a low one
		{`"\udc00"`, false},
		{`"\ude00\ud83d"`, false}, // a pair in the wrong order
		{`"\\\ud800"`, false},     // an escaped backslash, then a lone surrogate
	} {
		if got := exactText(json.RawMessage(c.raw)); got != c.want {
			t.Errorf("exactText(%q) = %v, want %v", c.raw, got, c.want)
		}
		// The oracle: encoding/json gives U+FFFD for each lossy case.
		var s string
		if err := json.Unmarshal([]byte(c.raw), &s); err != nil {
			t.Fatalf("%q is not a JSON string: %v", c.raw, err)
		}
		if !c.want && !bytes.ContainsRune([]byte(s), 0xFFFD) {
			t.Errorf("%q decodes to %q, without U+FFFD", c.raw, s)
		}
	}
}
