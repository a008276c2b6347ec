package notify

import (
	"bytes"
	"encoding/json"
	"flag"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

var update = flag.Bool("update", false, "rewrite testdata/golden/* from what the notifiers send")

// TestGolden: what each format sends for the sample of each kind is the
// reviewed text in testdata/golden/<type>/<kind>.json (go test -update
// rewrites them; review the diff). The HTTP formats are read by a real
// receiver; the log format from a JSON log core.
func TestGolden(t *testing.T) {
	t.Parallel()
	for _, typ := range Types() {
		for _, k := range Kinds() {
			t.Run(typ+"/"+string(k), func(t *testing.T) {
				t.Parallel()
				got := render(t, typ, Sample(k, fixedNow))
				path := filepath.Join("testdata", "golden", typ, string(k)+".json")
				if *update {
					if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
						t.Fatal(err)
					}
					if err := os.WriteFile(path, got, 0o644); err != nil {
						t.Fatal(err)
					}
					return
				}
				want, err := os.ReadFile(path)
				if err != nil {
					t.Fatalf("%v (run go test ./notify -update to create it)", err)
				}
				if !bytes.Equal(got, want) {
					t.Errorf("%s differs from what is sent now (go test ./notify -update, then review the diff):\ngot:\n%s", path, got)
				}
			})
		}
	}
}

// render sends ev through a notifier of type typ and returns what the
// receiver got, indented.
func render(t *testing.T, typ string, ev Event) []byte {
	t.Helper()
	var raw []byte
	if typ == TypeLog {
		var buf bytes.Buffer
		enc := zapcore.NewJSONEncoder(zapcore.EncoderConfig{MessageKey: "msg", LevelKey: "level", EncodeLevel: zapcore.LowercaseLevelEncoder})
		logger := zap.New(zapcore.NewCore(enc, zapcore.AddSync(&buf), zapcore.DebugLevel))
		n := mustNew(t, settingsFor(TypeLog, ""), WithLogger(logger))
		if _, err := send(t, n, ev); err != nil {
			t.Fatal(err)
		}
		raw = buf.Bytes()
	} else {
		rcv := newReceiver(t, http.StatusOK, "ok")
		n := mustNew(t, settingsFor(typ, rcv.srv.URL+"/hook"))
		if _, err := send(t, n, ev); err != nil {
			t.Fatal(err)
		}
		raw = rcv.next(t).body
	}
	var out bytes.Buffer
	if err := json.Indent(&out, bytes.TrimSpace(raw), "", "  "); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, raw)
	}
	out.WriteByte('\n')
	return out.Bytes()
}
