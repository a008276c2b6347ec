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
