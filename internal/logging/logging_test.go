package logging

import (
	"bytes"
	"encoding/json"
	"testing"
)

// TestNewTakesWhatCheckAccepts: every listed level and format builds a
// logger, and New refuses what the checks refuse.
func TestNewTakesWhatCheckAccepts(t *testing.T) {
	t.Parallel()
	for _, level := range append([]string{"dpanic", "INFO", "verbose", ""}, Levels...) {
		for _, format := range append([]string{"text", "JSON", ""}, Formats...) {
			want := CheckLevel(level) == nil && CheckFormat(format) == nil
			_, err := New(level, format, &bytes.Buffer{})
			if (err == nil) != want {
				t.Errorf("New(%q, %q) = %v, want ok %v", level, format, err, want)
			}
		}
	}
	if err := CheckLevel(DefaultLevel); err != nil {
		t.Error(err)
	}
	if err := CheckFormat(DefaultFormat); err != nil {
		t.Error(err)
	}
}

func TestJSONLine(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	log, err := New("warn", "json", &buf)
	if err != nil {
		t.Fatal(err)
	}
	log.Info("hidden")
	log.Warn("shown")
	var line map[string]any
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
		t.Fatalf("%q: %v", buf.String(), err)
	}
	if line["msg"] != "shown" || line["level"] != "warn" || line["ts"] == nil {
		t.Fatalf("line = %v", line)
	}
}
