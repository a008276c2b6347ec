package main

import (
	"strings"
	"testing"
)

func TestPromSamples(t *testing.T) {
	t.Parallel()
	text := `# HELP responder_decisions_total Decisions.
# TYPE responder_decisions_total counter
responder_decisions_total{decision="no_match",rule="none"} 120
responder_decisions_total{decision="dry_run",rule="critical-workstations"} 7
responder_alerts_received_total{outcome="accepted",source="defender"} 130
responder_alerts_received_total{outcome="duplicate",source="defender"} 2
responder_alerts_received_total{outcome="accepted",source="graph"} 1
responder_defender_rate_limit_wait_seconds_sum 0.25
`
	s, err := parseMetrics(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	if got := s.accepted(); got != 131 {
		t.Errorf("accepted %v, want 131", got)
	}
	if got := s.decided(); got != 127 {
		t.Errorf("decided %v, want 127", got)
	}
	if got := s.backlog(); got != 4 {
		t.Errorf("backlog %v, want 4", got)
	}
	if got := s.byLabel("responder_decisions_total", "decision"); got["dry_run"] != 7 || got["no_match"] != 120 {
		t.Errorf("by decision %v", got)
	}
	if got := s.sum("responder_defender_rate_limit_wait_seconds_sum"); got != 0.25 {
		t.Errorf("wait %v, want 0.25", got)
	}
}
