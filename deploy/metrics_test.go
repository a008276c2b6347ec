package deploy_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// family is one row of the metrics table of SPEC section 9.
type family struct {
	typ    dto.MetricType
	labels []string // label names, sorted; "le" of histograms excluded
}

// specMetrics is SPEC section 9's table and section 16's store gauges: every
// responder_* family, its type and its label names. The exposition must have
// exactly these.
var specMetrics = map[string]family{
	"responder_webhook_requests_total":                      {dto.MetricType_COUNTER, []string{"code", "source"}},
	"responder_alerts_received_total":                       {dto.MetricType_COUNTER, []string{"outcome", "source"}},
	"responder_decisions_total":                             {dto.MetricType_COUNTER, []string{"decision", "rule"}},
	"responder_collections_total":                           {dto.MetricType_COUNTER, []string{"outcome"}},
	"responder_machine_actions_finished_total":              {dto.MetricType_COUNTER, []string{"status"}},
	"responder_machine_action_duration_seconds":             {dto.MetricType_HISTOGRAM, []string{"status"}},
	"responder_defender_requests_total":                     {dto.MetricType_COUNTER, []string{"code", "operation"}},
	"responder_defender_request_duration_seconds":           {dto.MetricType_HISTOGRAM, []string{"operation"}},
	"responder_defender_rate_limit_wait_seconds":            {dto.MetricType_HISTOGRAM, nil},
	"responder_queue_jobs":                                  {dto.MetricType_GAUGE, []string{"kind", "state"}},
	"responder_circuit_open":                                {dto.MetricType_GAUGE, nil},
	"responder_rules_loaded":                                {dto.MetricType_GAUGE, nil},
	"responder_rules_last_reload_successful":                {dto.MetricType_GAUGE, nil},
	"responder_rules_last_reload_success_timestamp_seconds": {dto.MetricType_GAUGE, nil},
	"responder_build_info":                                  {dto.MetricType_GAUGE, []string{"goversion", "version"}},
	// SPEC section 13.
	"responder_notifications_total":           {dto.MetricType_COUNTER, []string{"event", "notifier", "outcome"}},
	"responder_notification_delivery_seconds": {dto.MetricType_HISTOGRAM, []string{"notifier"}},
	// SPEC section 16.
	"responder_store_rows":  {dto.MetricType_GAUGE, []string{"table"}},
	"responder_store_bytes": {dto.MetricType_GAUGE, nil},
}

// specValues are the closed label value sets SPEC section 9 spells out; all
// of them exist at 0 from the start.
var specValues = map[[2]string][]string{
	{"responder_alerts_received_total", "outcome"}:          {"accepted", "duplicate", "ignored", "invalid"},
	{"responder_decisions_total", "decision"}:               {"collect", "ignore", "no_match", "cooldown", "circuit_open", "paused", "dry_run"},
	{"responder_collections_total", "outcome"}:              {"created", "already_running", "machine_not_found", "forbidden", "failed"},
	{"responder_machine_actions_finished_total", "status"}:  {"Succeeded", "Failed", "TimeOut", "Cancelled", "Untracked"},
	{"responder_machine_action_duration_seconds", "status"}: {"Succeeded", "Failed", "TimeOut", "Cancelled", "Untracked"},
	{"responder_store_rows", "table"}:                       {"alert", "audit", "cooldown", "quota", "notification", "job"},
}

// TestMetricsContract scrapes a freshly started `responder serve --dev` and
// compares the exposition with SPEC section 9.
func TestMetricsContract(t *testing.T) {
	t.Parallel()
	promtool := tool(t, "promtool")
	r := startResponder(t)

	raw := scrape(t, r.admin)
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("parsing the exposition: %v", err)
	}

	for name, want := range specMetrics {
		f, ok := families[name]
		if !ok {
			t.Errorf("%s: missing from the exposition", name)
			continue
		}
		if f.GetType() != want.typ {
			t.Errorf("%s: type %s, SPEC says %s", name, f.GetType(), want.typ)
		}
		if len(f.GetMetric()) == 0 {
			t.Errorf("%s: no series; SPEC: label combinations exist at 0 from start", name)
		}
		for _, m := range f.GetMetric() {
			var got []string
			for _, lp := range m.GetLabel() {
				got = append(got, lp.GetName())
			}
			sort.Strings(got)
			if !slices.Equal(got, want.labels) {
				t.Errorf("%s: series with labels %v, SPEC says %v", name, got, want.labels)
				break
			}
		}
		help := f.GetHelp()
		if help == "" || !strings.HasSuffix(help, ".") {
			t.Errorf("%s: help %q is not a sentence", name, help)
		}
	}
	for name := range families {
		if _, ok := specMetrics[name]; strings.HasPrefix(name, "responder_") && !ok {
			t.Errorf("%s: exported but not in SPEC section 9", name)
		}
	}
	for key, want := range specValues {
		got := labelValues(families[key[0]], key[1])
		if !slices.Equal(sorted(want), got) {
			t.Errorf("%s{%s}: values %v at start, SPEC says %v", key[0], key[1], got, sorted(want))
		}
	}
	for _, name := range []string{"go_goroutines", "go_memstats_alloc_bytes", "go_info", "process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"} {
		if _, ok := families[name]; !ok {
			t.Errorf("%s: missing; SPEC section 9 asks for the Go and process collectors", name)
		}
	}

	// promtool lints names, units and help texts; it must have nothing to say.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(raw)
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

// scrape fetches /metrics from the admin listener.
func scrape(t *testing.T, admin string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	// Ask for the text format, the one promtool check metrics reads.
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("scraping /metrics: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scraping /metrics: %d %v\n%s", resp.StatusCode, err, b)
	}
	return b
}

// labelValues lists the distinct values of label in f, sorted.
func labelValues(f *dto.MetricFamily, label string) []string {
	seen := map[string]bool{}
	for _, m := range f.GetMetric() {
		for _, lp := range m.GetLabel() {
			if lp.GetName() == label {
				seen[lp.GetValue()] = true
			}
		}
	}
	out := make([]string, 0, len(seen))
	for v := range seen {
		out = append(out, v)
	}
	sort.Strings(out)
	return out
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	sort.Strings(s)
	return s
}
