package rules

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/responder-dev/responder/alert"
)

// FuzzLoad feeds arbitrary rule files to the loader. Loading must never
// panic, a loaded set must evaluate without panicking, and every problem
// must carry a position inside the file.
func FuzzLoad(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/*.yaml")
	seeds = append(seeds, "../examples/rules.yaml")
	for _, s := range seeds {
		if data, err := os.ReadFile(s); err == nil {
			f.Add(data)
		}
	}
	f.Add([]byte("rules:\n  - name: a\n    when: |\n      alert.title matches \"(?i)x\"\n        && \"t\" in machine.tags\n    comment: '{{ .Alert.ID }}'\n"))
	f.Add([]byte("rules:\n  - name: b\n    when: \"\\\"x\\\" in alert.mitre_techniques\"\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		set, err := compileSources([]source{newSource("f.yaml", data)}, time.Unix(0, 0))
		if err != nil {
			for _, p := range problems(err) {
				if len(p) < 7 || p[:7] != "f.yaml:" {
					t.Fatalf("problem without a position: %q", p)
				}
			}
			return
		}
		a := testAlert()
		a.Labels = map[string]string{"team": "security"}
		set.Evaluate(a, &alert.Machine{Tags: []string{"t"}})
		a.Status = alert.StatusResolved
		set.Evaluate(a, nil)
		set.Rules()
	})
}
