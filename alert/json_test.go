package alert

import (
	"encoding/json"
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

// FuzzSplitObject checks that splitting a valid JSON object gives exactly
// the members encoding/json gives (keys unescaped, later duplicates winning,
// values as their raw bytes).
func FuzzSplitObject(f *testing.F) {
	for _, s := range []string{
		`{"id":"da1","machineId":"1e5b","n":-12.5e3,"t":true,"x":null,"a":[1,{"b":"]}"}],"o":{"k":"v\"}"}}`,
		`{}`, ` { "a" : 1 , "a" : 2 } `, `{"k\u00e9y":"v","k\\":"\\"}`, `{"":""}`, "{\"\xff\":1}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		if !json.Valid(raw) {
			return // callers only pass validated JSON
		}
		var want map[string]json.RawMessage
		wantErr := json.Unmarshal(raw, &want)
		got, ok := splitObject(raw)
		if !ok {
			return
		}
		if wantErr != nil {
			t.Fatalf("splitObject took %q, which encoding/json refuses: %v", raw, wantErr)
		}
		if len(got) != len(want) {
			t.Fatalf("%q: %d members, encoding/json %d", raw, len(got), len(want))
		}
		for k, v := range want {
			if string(got[k]) != string(v) {
				t.Fatalf("%q: member %q = %s, encoding/json %s", raw, k, got[k], v)
			}
		}
	})
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
