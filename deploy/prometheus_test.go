package deploy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/responder-dev/responder/defender/defendertest"
	"github.com/responder-dev/responder/internal/testkit"
)

// TestPromtool runs promtool over the shipped Prometheus files: the config
// (which also checks the rules file it names), the rules and their unit tests.
func TestPromtool(t *testing.T) {
	t.Parallel()
	promtool := tool(t, "promtool")
	for _, args := range [][]string{
		{"check", "config", repoPath("deploy", "prometheus", "prometheus.yml")},
		{"check", "rules", repoPath("deploy", "prometheus", "alerts.yml")},
		{"test", "rules", repoPath("deploy", "prometheus", "alerts_test.yml")},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		out, err := exec.CommandContext(ctx, promtool, args...).CombinedOutput()
		cancel()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// TestDashboardOnPrometheus runs the real binary in --dev mode and a real
// Prometheus scraping it every second, drives collections, rejected requests,
// a duplicate, a cooldown, an ignore, a no-match, a pause and a rules reload
// through it, then runs every query of every dashboard panel through
// Prometheus' HTTP API: each must succeed and return data. It also checks that
// Prometheus loads the alert rules and evaluates them without error, and that
// none of them fires for this healthy responder.
func TestDashboardOnPrometheus(t *testing.T) {
	t.Parallel()
	prometheus := tool(t, "prometheus")
	dash := loadDashboard(t)
	r := startResponder(t)
	prom := startPrometheus(t, prometheus, r.admin)

	testkit.WaitFor(t, 30*time.Second, "Prometheus scraping the responder", func() (bool, string) {
		v, err := prom.query(`up{job="responder"}`)
		if err != nil {
			return false, err.Error()
		}
		return len(v) == 1 && v[0].value == 1, fmt.Sprint(v)
	})

	exercise(t, r)

	// Wait until the simulator finished both actions, then until Prometheus
	// scraped a few times more, so that every counter moved in its data.
	testkit.WaitFor(t, 60*time.Second, "both machine actions Succeeded", func() (bool, string) {
		v := metricSum(t, r.admin, "responder_machine_actions_finished_total", map[string]string{"status": "Succeeded"})
		return v >= 2, fmt.Sprintf("Succeeded=%v", v)
	})
	settled := time.Now()
	testkit.WaitFor(t, 30*time.Second, "three scrapes after the activity", func() (bool, string) {
		v, err := prom.query(`timestamp(up{job="responder"})`)
		if err != nil || len(v) != 1 {
			return false, fmt.Sprint(v, err)
		}
		return v[0].value >= float64(settled.Add(3*time.Second).UnixNano())/1e9, fmt.Sprint(v)
	})

	// instance is interpolated as Grafana does for a multi-value variable in
	// a regex matcher: regex-escaped, then escaped for a PromQL string.
	instance := strings.ReplaceAll(regexp.QuoteMeta(r.admin), `\`, `\\`)
	vars := dashboardVars(t, dash, map[string]string{
		"job":             "responder",
		"instance":        instance,
		"__rate_interval": "2m",
		"__interval":      "15s",
		"__range":         "5m",
	})
	for _, p := range dash.allPanels() {
		for _, tg := range p.Targets {
			expr, err := expandVars(tg.Expr, vars)
			if err != nil {
				t.Errorf("panel %q target %s: %v", p.Title, tg.RefID, err)
				continue
			}
			res, err := prom.query(expr)
			switch {
			case err != nil:
				t.Errorf("panel %q target %s: %v\n  query: %s", p.Title, tg.RefID, err, expr)
			case len(res) == 0:
				t.Errorf("panel %q target %s: no series\n  query: %s", p.Title, tg.RefID, expr)
			case allNaN(res):
				t.Errorf("panel %q target %s: only NaN (the panel would be empty)\n  query: %s\n  result: %v", p.Title, tg.RefID, expr, res)
			default:
				t.Logf("panel %q target %s: %d series, e.g. %v", p.Title, tg.RefID, len(res), res[0])
			}
		}
	}

	// The query variables (label_values) must find the job and the instance.
	for _, v := range dash.Templating.List {
		if v.Type != "query" {
			continue
		}
		m := labelValuesRE.FindStringSubmatch(v.Definition)
		if m == nil {
			t.Errorf("variable %s: definition %q is not label_values(selector, label)", v.Name, v.Definition)
			continue
		}
		sel, err := expandVars(m[1], vars)
		if err != nil {
			t.Errorf("variable %s: %v", v.Name, err)
			continue
		}
		got, err := prom.labelValues(m[2], sel)
		if err != nil || len(got) == 0 {
			t.Errorf("variable %s: label_values(%s, %s) = %v, %v", v.Name, sel, m[2], got, err)
		}
	}

	// The alert rules load and evaluate cleanly. The responder is healthy, so
	// none fires; ResponderPaused is pending, since the exercise paused it
	// (its expression works on the real metrics; its "for" is an hour).
	rules, err := prom.rules()
	if err != nil {
		t.Fatal(err)
	}
	if len(rules) == 0 {
		t.Error("Prometheus loaded no alert rules")
	}
	for _, rl := range rules {
		if rl.Health != "ok" {
			t.Errorf("alert rule %s: health %q: %s", rl.Name, rl.Health, rl.LastError)
		}
		want := "inactive"
		if rl.Name == "ResponderPaused" {
			want = "pending"
		}
		if rl.State != want {
			t.Errorf("alert rule %s is %s, want %s", rl.Name, rl.State, want)
		}
	}
}

// exercise sends the traffic that moves every panel: collections on two
// machines, a duplicate, a cooldown, an ignored domain controller, a
// low-severity alert no rule takes, an Alertmanager payload, a paused
// decision, a bad body, a wrong content type and a rules reload.
func exercise(t *testing.T, r *responder) {
	t.Helper()
	defender := "http://" + r.webhooks + "/webhooks/defender"
	alertmanager := "http://" + r.webhooks + "/webhooks/alertmanager"
	admin := "http://" + r.admin + "/api/v1/"
	mde := func(id, machine, severity, category string) []byte {
		return []byte(fmt.Sprintf(`{"id":%q,"machineId":%q,"severity":%q,"status":"New","category":%q,"title":"test alert","detectionSource":"WindowsDefenderAtp","alertCreationTime":"2026-11-26T10:00:00Z"}`,
			id, machine, severity, category))
	}
	am := fmt.Sprintf(`{"version":"4","status":"firing","receiver":"responder","groupLabels":{},"commonLabels":{},"commonAnnotations":{},"externalURL":"http://am","groupKey":"{}:{}","truncatedAlerts":0,"alerts":[
	  {"status":"firing","labels":{"alertname":"EDRCanary","alert_id":"canary-1","machine_id":%q,"severity":"critical","team":"security"},"annotations":{},"startsAt":"2026-11-26T10:00:00Z","endsAt":"0001-01-01T00:00:00Z","fingerprint":"a1"},
	  {"status":"firing","labels":{"alertname":"DiskFull","instance":"srv-app-07.corp.example.com:9100","severity":"warning","team":"platform"},"annotations":{},"startsAt":"2026-11-26T10:00:00Z","endsAt":"0001-01-01T00:00:00Z","fingerprint":"b2"}]}`,
		defendertest.DevServerID)

	// The alert of the curl line --dev prints, as a newcomer would send it.
	m := devCurlRE.FindStringSubmatch(r.output())
	if m == nil {
		t.Fatalf("--dev printed no curl line with a payload:\n%s", r.output())
	}
	sample := []byte(m[1])

	steps := []struct {
		what, method, url, contentType string
		body                           []byte
		want                           int
	}{
		{"the sample alert of the printed curl line (collect)", "POST", defender, "application/json", sample, 202},
		{"the same alert again (duplicate)", "POST", defender, "application/json", sample, 202},
		{"low severity on the server (no rule)", "POST", defender, "application/json", mde("da1000_2", defendertest.DevServerID, "Low", "Execution"), 202},
		{"ransomware on the domain controller (ignored)", "POST", defender, "application/json", mde("da1000_3", defendertest.DevDomainControllerID, "High", "Ransomware"), 202},
		{"Alertmanager: critical security alert on the server (collect), and a platform alert", "POST", alertmanager, "application/json", []byte(am), 202},
		{"not JSON", "POST", defender, "application/json", []byte(`{"id":`), 400},
		{"wrong content type", "POST", alertmanager, "text/plain", []byte(`hello`), 415},
		{"rules reload", "POST", admin + "reload", "", nil, 200},
	}
	for _, s := range steps {
		code, body, err := httpDo(s.method, s.url, s.contentType, s.body)
		if err != nil || code != s.want {
			t.Fatalf("%s: got %d %s %v, want %d", s.what, code, body, err, s.want)
		}
	}
	// A second ransomware alert on the workstation once the first collection
	// is recorded: cooldown.
	testkit.WaitFor(t, 30*time.Second, "two collections created", func() (bool, string) {
		v := metricSum(t, r.admin, "responder_collections_total", map[string]string{"outcome": "created"})
		return v >= 2, fmt.Sprintf("created=%v", v)
	})
	if code, body, err := httpDo("POST", defender, "application/json", mde("da1000_4", defendertest.DevWorkstationID, "Critical", "Ransomware")); err != nil || code != 202 {
		t.Fatalf("cooldown alert: %d %s %v", code, body, err)
	}
	// Pause, send an alert that a rule takes, resume once it is paused.
	if code, body, err := httpDo("POST", admin+"pause", "", nil); err != nil || code != 200 {
		t.Fatalf("pause: %d %s %v", code, body, err)
	}
	if code, body, err := httpDo("POST", defender, "application/json", mde("da1000_5", defendertest.DevStaleDuplicateID, "High", "Ransomware")); err != nil || code != 202 {
		t.Fatalf("alert while paused: %d %s %v", code, body, err)
	}
	testkit.WaitFor(t, 30*time.Second, "a paused and a cooldown decision", func() (bool, string) {
		p := metricSum(t, r.admin, "responder_decisions_total", map[string]string{"decision": "paused"})
		c := metricSum(t, r.admin, "responder_decisions_total", map[string]string{"decision": "cooldown"})
		return p >= 1 && c >= 1, fmt.Sprintf("paused=%v cooldown=%v", p, c)
	})
	if code, body, err := httpDo("POST", admin+"resume", "", nil); err != nil || code != 200 {
		t.Fatalf("resume: %d %s %v", code, body, err)
	}
	for _, d := range []string{"collect", "ignore", "no_match"} {
		if v := metricSum(t, r.admin, "responder_decisions_total", map[string]string{"decision": d}); v < 1 {
			t.Errorf("no %s decision after the exercise", d)
		}
	}
	if v := metricSum(t, r.admin, "responder_alerts_received_total", map[string]string{"outcome": "duplicate"}); v < 1 {
		t.Error("the repeated alert was not counted as a duplicate")
	}
	for _, code := range []string{"400", "415"} {
		if v := metricSum(t, r.admin, "responder_webhook_requests_total", map[string]string{"code": code}); v < 1 {
			t.Errorf("no webhook request answered %s counted", code)
		}
	}
}

// devCurlRE finds the payload of the curl line that serve --dev prints.
var devCurlRE = regexp.MustCompile(`curl .* -d '(\{.*\})' http://\S+/webhooks/defender`)

// metricSum scrapes the responder and sums the series of name whose labels
// include want.
func metricSum(t *testing.T, admin, name string, want map[string]string) float64 {
	t.Helper()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(scrape(t, admin)))
	if err != nil {
		t.Fatalf("parsing the exposition: %v", err)
	}
	sum := 0.0
	for _, m := range fams[name].GetMetric() {
		if hasLabels(m, want) {
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

func hasLabels(m *dto.Metric, want map[string]string) bool {
	n := 0
	for _, lp := range m.GetLabel() {
		if v, ok := want[lp.GetName()]; ok && v == lp.GetValue() {
			n++
		}
	}
	return n == len(want)
}

// promServer is a Prometheus started by a test.
type promServer struct {
	url string
}

// startPrometheus runs Prometheus on a free loopback port, scraping the
// responder's admin address every second and evaluating the shipped alert
// rules every second.
func startPrometheus(t *testing.T, bin, target string) *promServer {
	t.Helper()
	dir := t.TempDir()
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - %q
scrape_configs:
  - job_name: responder
    static_configs:
      - targets: [%q]
`, repoPath("deploy", "prometheus", "alerts.yml"), target)
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	// The port is free when picked but could be taken before Prometheus
	// binds it: try a few.
	for attempt := 1; ; attempt++ {
		addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		p := start(t, bin, nil, nil,
			"--config.file="+cfgPath,
			"--storage.tsdb.path="+filepath.Join(dir, fmt.Sprintf("data%d", attempt)),
			"--web.listen-address="+addr,
		)
		s := &promServer{url: "http://" + addr}
		if s.waitReady(p, 30*time.Second) {
			return s
		}
		if attempt == 3 {
			t.Fatalf("prometheus did not become ready on %s: %v\n%s", addr, p.err, p.output())
		}
		t.Logf("prometheus did not start on %s (%v); trying another port", addr, p.err)
	}
}

// waitReady polls /-/ready until it answers 200 (true), the process exits or
// timeout passes (false).
func (s *promServer) waitReady(p *process, timeout time.Duration) bool {
	deadline := time.After(timeout)
	for {
		if code, _, err := httpDo(http.MethodGet, s.url+"/-/ready", "", nil); err == nil && code == http.StatusOK {
			return true
		}
		select {
		case <-p.exited:
			return false
		case <-deadline:
			return false
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// sample is one series of a query result.
type sample struct {
	metric map[string]string
	value  float64
}

func (s sample) String() string { return fmt.Sprintf("%v=%v", s.metric, s.value) }

// query runs an instant query; a scalar result is one sample without labels.
func (s *promServer) query(q string) ([]sample, error) {
	var data struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	}
	if err := s.api("/api/v1/query?query="+url.QueryEscape(q), &data); err != nil {
		return nil, err
	}
	parse := func(v []any) (float64, error) {
		if len(v) != 2 {
			return 0, fmt.Errorf("bad sample %v", v)
		}
		str, _ := v[1].(string)
		if len(str) > 0 && str[0] == 'N' {
			return math.NaN(), nil
		}
		return strconv.ParseFloat(str, 64)
	}
	var out []sample
	switch data.ResultType {
	case "vector":
		var vec []struct {
			Metric map[string]string `json:"metric"`
			Value  []any             `json:"value"`
		}
		if err := json.Unmarshal(data.Result, &vec); err != nil {
			return nil, err
		}
		for _, e := range vec {
			f, err := parse(e.Value)
			if err != nil {
				return nil, err
			}
			out = append(out, sample{e.Metric, f})
		}
	case "scalar":
		var v []any
		if err := json.Unmarshal(data.Result, &v); err != nil {
			return nil, err
		}
		f, err := parse(v)
		if err != nil {
			return nil, err
		}
		out = append(out, sample{nil, f})
	default:
		return nil, fmt.Errorf("result type %q", data.ResultType)
	}
	return out, nil
}

func (s *promServer) labelValues(label, selector string) ([]string, error) {
	var vals []string
	err := s.api("/api/v1/label/"+url.PathEscape(label)+"/values?match[]="+url.QueryEscape(selector), &vals)
	return vals, err
}

// alertRule is an alerting rule as /api/v1/rules reports it.
type alertRule struct {
	Name      string `json:"name"`
	Type      string `json:"type"`
	Health    string `json:"health"`
	LastError string `json:"lastError"`
	State     string `json:"state"`
}

func (s *promServer) rules() ([]alertRule, error) {
	var data struct {
		Groups []struct {
			Rules []alertRule `json:"rules"`
		} `json:"groups"`
	}
	if err := s.api("/api/v1/rules?type=alert", &data); err != nil {
		return nil, err
	}
	var out []alertRule
	for _, g := range data.Groups {
		out = append(out, g.Rules...)
	}
	return out, nil
}

// api calls a Prometheus HTTP API endpoint and decodes its data.
func (s *promServer) api(path string, data any) error {
	code, body, err := httpDo(http.MethodGet, s.url+path, "", nil)
	if err != nil {
		return err
	}
	var env struct {
		Status    string          `json:"status"`
		Data      json.RawMessage `json:"data"`
		ErrorType string          `json:"errorType"`
		Error     string          `json:"error"`
	}
	if err := json.Unmarshal([]byte(body), &env); err != nil {
		return fmt.Errorf("%d: %s", code, body)
	}
	if env.Status != "success" {
		return fmt.Errorf("%s: %s", env.ErrorType, env.Error)
	}
	return json.Unmarshal(env.Data, data)
}

func allNaN(res []sample) bool {
	for _, s := range res {
		if !math.IsNaN(s.value) {
			return false
		}
	}
	return true
}

// grafanaVarRE matches $name, ${name}, ${name:format} and [[name]].
var grafanaVarRE = regexp.MustCompile(`\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]`)

// labelValuesRE parses a label_values(selector, label) variable query.
var labelValuesRE = regexp.MustCompile(`^label_values\((.+),\s*(\w+)\)$`)

// expandVars replaces Grafana variables in expr; an unknown one is an error.
func expandVars(expr string, vars map[string]string) (string, error) {
	var missing []string
	out := grafanaVarRE.ReplaceAllStringFunc(expr, func(m string) string {
		sm := grafanaVarRE.FindStringSubmatch(m)
		name := sm[1] + sm[2] + sm[3]
		v, ok := vars[name]
		if !ok {
			missing = append(missing, name)
			return m
		}
		return v
	})
	if len(missing) > 0 {
		sort.Strings(missing)
		return "", fmt.Errorf("unknown variables %v in %s", missing, expr)
	}
	return out, nil
}

// dashboardVars gives every variable of the dashboard a concrete value: the
// given ones for query variables and Grafana's built-ins, the current value
// for custom and text box variables.
func dashboardVars(t *testing.T, d *dashboard, given map[string]string) map[string]string {
	t.Helper()
	vars := map[string]string{}
	for k, v := range given {
		vars[k] = v
	}
	for _, v := range d.Templating.List {
		if _, ok := vars[v.Name]; ok || v.Type == "datasource" {
			continue
		}
		switch cur := v.Current.Value.(type) {
		case string:
			vars[v.Name] = cur
		default:
			t.Fatalf("variable %s (%s): no value given and no current value", v.Name, v.Type)
		}
	}
	return vars
}
