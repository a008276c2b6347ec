package config

import (
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/responder-dev/responder/internal/yamlx"
)

// readmeRow is one row of the README's configuration table.
type readmeRow struct {
	line         int
	keys         []string
	defaultValue string // the first `...` of the default cell
	env          string // the env cell, as written
}

var backticked = regexp.MustCompile("`([^`]*)`")

// readmeConfigTable parses the rows of the table under "| key | default |
// env | meaning |" in the README.
func readmeConfigTable(t *testing.T) []readmeRow {
	t.Helper()
	data, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(data), "\n")
	start := -1
	for i, l := range lines {
		if strings.TrimSpace(l) == "| key | default | env | meaning |" {
			start = i + 2 // after the |---| line
			break
		}
	}
	if start < 0 {
		t.Fatal("README has no | key | default | env | meaning | table")
	}
	var rows []readmeRow
	for i := start; i < len(lines) && strings.HasPrefix(lines[i], "|"); i++ {
		cells := strings.Split(strings.ReplaceAll(lines[i], `\|`, "\x00"), "|")
		if len(cells) != 6 {
			t.Fatalf("README.md:%d: want 4 cells, got %d", i+1, len(cells)-2)
		}
		row := readmeRow{line: i + 1, env: cells[3]}
		for _, m := range backticked.FindAllStringSubmatch(cells[1], -1) {
			row.keys = append(row.keys, m[1])
		}
		m := backticked.FindStringSubmatch(cells[2])
		if len(row.keys) == 0 || m == nil {
			t.Fatalf("README.md:%d: want `key` and `default` cells: %q", i+1, lines[i])
		}
		row.defaultValue = m[1]
		rows = append(rows, row)
	}
	return rows
}

// field returns the value of a key path in c, found by the yaml tags.
func field(c *Config, path string) (reflect.Value, bool) {
	v := reflect.ValueOf(c).Elem()
	for _, name := range strings.Split(path, ".") {
		found := false
		for i := 0; i < v.NumField(); i++ {
			tag, _, _ := strings.Cut(v.Type().Field(i).Tag.Get("yaml"), ",")
			if tag == name {
				v, found = v.Field(i), true
				break
			}
		}
		if !found {
			return reflect.Value{}, false
		}
	}
	return v, true
}

// parseReadmeDefault decodes a default as written in the README into a new
// value of t: `""` is the empty string, `[a, b]` a list; anything else is
// read as the environment would read it (durations take d and w).
func parseReadmeDefault(t reflect.Type, s string) (reflect.Value, error) {
	v := reflect.New(t).Elem()
	switch {
	case t.Kind() == reflect.Slice:
		inner := strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
		for _, item := range strings.Split(inner, ",") {
			if item = strings.TrimSpace(item); item != "" {
				v = reflect.Append(v, reflect.ValueOf(item))
			}
		}
		return v, nil
	case s == `""`:
		return v, nil
	}
	return v, yamlx.SetScalar(v, s)
}

// TestReadmeConfigTable: every key of the configuration has one row in the
// README's table, with its environment variable, and the default the table
// states is config.Default()'s (itself the owners' constants).
func TestReadmeConfigTable(t *testing.T) {
	t.Parallel()
	def := Default()
	keys := map[string]bool{}
	for _, k := range Keys() {
		keys[k] = true
	}
	seen := map[string]int{}
	for _, row := range readmeConfigTable(t) {
		for _, key := range row.keys {
			if !keys[key] {
				t.Errorf("README.md:%d: %s is not a configuration key", row.line, key)
				continue
			}
			if prev, ok := seen[key]; ok {
				t.Errorf("README.md:%d: %s has a row already (line %d)", row.line, key, prev)
			}
			seen[key] = row.line
			if len(row.keys) == 1 && !strings.Contains(row.env, "`"+EnvName(key)+"`") {
				t.Errorf("README.md:%d: %s: env cell %q does not name %s", row.line, key, row.env, EnvName(key))
			}
			want, _ := field(def, key)
			got, err := parseReadmeDefault(want.Type(), row.defaultValue)
			if err != nil {
				t.Errorf("README.md:%d: %s: default %q: %v", row.line, key, row.defaultValue, err)
				continue
			}
			if want.Kind() == reflect.Slice && want.Len() == 0 && got.Len() == 0 {
				continue
			}
			if !reflect.DeepEqual(got.Interface(), want.Interface()) {
				t.Errorf("README.md:%d: %s: default %q is %v, but config.Default() has %v", row.line, key, row.defaultValue, got, want)
			}
		}
	}
	for _, k := range Keys() {
		if _, ok := seen[k]; !ok {
			t.Errorf("README's configuration table has no row for %s", k)
		}
	}
}
