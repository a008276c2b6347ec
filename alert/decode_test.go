package alert_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/responder-dev/responder/alert"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden.json from what the decoders return")

// decoderFor picks the decoder of a testdata file by the start of its name:
// defender-* and graph-* go to DecodeDefender, alertmanager-* and grafana-*
// to DecodeAlertmanager.
func decoderFor(t *testing.T, file string) func([]byte) (alert.Batch, error) {
	t.Helper()
	name := filepath.Base(file)
	switch {
	case strings.HasPrefix(name, "defender-"), strings.HasPrefix(name, "graph-"):
		return alert.DecodeDefender
	case strings.HasPrefix(name, "alertmanager-"), strings.HasPrefix(name, "grafana-"):
		return alert.DecodeAlertmanager
	}
	t.Fatalf("%s: no decoder for this name (want a defender-, graph-, alertmanager- or grafana- prefix)", file)
	return nil
}

// payloads lists the JSON files of dir, without the golden files.
func payloads(t *testing.T, dir string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	files = slices.DeleteFunc(files, func(f string) bool { return strings.HasSuffix(f, ".golden.json") })
	if len(files) == 0 {
		t.Fatalf("no payloads in %s", dir)
	}
	return files
}

// TestDecodeGolden decodes every payload of testdata/ and compares the whole
// Batch, as JSON, with the .golden.json file next to it. The golden files
// are the specification of the decoders: after -update, read the diff.
func TestDecodeGolden(t *testing.T) {
	t.Parallel()
	files := payloads(t, "testdata")
	for _, required := range []string{
		"defender-v1-single.json",
		"defender-v1-array.json",
		"defender-v1-value-envelope.json",
		"graph-alerts-v2-two-devices.json",
		"alertmanager-firing-resolved.json",
		"grafana-v1.json",
	} {
		if !slices.Contains(files, filepath.Join("testdata", required)) {
			t.Errorf("testdata/%s is missing", required)
		}
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			t.Parallel()
			body, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			batch, err := decoderFor(t, file)(body)
			if err != nil {
				t.Fatalf("decode %s: %v", file, err)
			}
			// The batch must refer to nothing of the body, which the
			// webhook handler reuses for the next request: spoil it.
			for i := range body {
				body[i] = 'x'
			}
			got, err := json.MarshalIndent(batch, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, '\n')
			golden := strings.TrimSuffix(file, ".json") + ".golden.json"
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./alert/ -run TestDecodeGolden -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("decode %s differs from %s (rerun with -update and read the diff):\n%s", file, golden, got)
			}
		})
	}
}

// TestDecodeErrors checks the exact message of every kind of body that is
// rejected as a whole. Every file of testdata/invalid/ must be listed.
func TestDecodeErrors(t *testing.T) {
	t.Parallel()
	tests := map[string]string{
		// Not one JSON value.
		"defender-empty.json":             `body is empty`,
		"defender-whitespace.json":        `body is empty`,
		"alertmanager-empty.json":         `body is empty`,
		"defender-not-json.json":          `body is not valid JSON: invalid character 'H' looking for beginning of value at line 1, column 55 (byte offset 54)`,
		"alertmanager-yaml-body.json":     `body is not valid JSON: invalid character 'v' looking for beginning of value at line 1, column 1 (byte offset 0)`,
		"defender-truncated.json":         `body is not valid JSON: unexpected end of input at line 5, column 1 (byte offset 111)`,
		"defender-trailing-data.json":     `body is not valid JSON: unexpected data after the top-level value at line 2, column 1 (byte offset 42)`,
		"alertmanager-trailing-data.json": `body is not valid JSON: unexpected data after the top-level value at line 3, column 1 (byte offset 32)`,

		// Not a supported schema.
		"defender-top-level-string.json":     `body: expected an alert object, an array of alerts or {"value": [...]}, got string`,
		"defender-alertmanager-payload.json": `body: expected an alert object, an array of alerts or {"value": [...]}`,
		"defender-element-not-alert.json":    `[1]: expected an MDE or Graph alert object, found none of the members id, providerAlertId, machineId, computerDnsName, alertCreationTime, createdDateTime, incidentId, @odata.type`,
		"alertmanager-top-level-array.json":  `body: expected an Alertmanager or Grafana webhook object, got array`,
		"alertmanager-unknown-version.json":  `version: unsupported webhook version "3", expected "4" (Alertmanager) or "1" (Grafana)`,
		"alertmanager-missing-version.json":  `version: missing, expected "4" (Alertmanager) or "1" (Grafana)`,
		"alertmanager-missing-alerts.json":   `alerts: missing, expected an array of alerts`,

		// A value of the wrong type or form, with its full path.
		"defender-value-not-array.json":          `value: expected array, got object`,
		"defender-element-not-object.json":       `value[1]: expected object, got string`,
		"defender-mitre-not-array.json":          `value[1].mitreTechniques: expected array, got number`,
		"defender-mitre-element-not-string.json": `[0].mitreTechniques[1]: expected string, got number`,
		"defender-machine-id-number.json":        `machineId: expected string, got number`,
		"defender-incident-id-fraction.json":     `[0].incidentId: expected an integer, got number 1126093.5`,
		"defender-incident-id-object.json":       `[0].incidentId: expected integer or string, got object`,
		"defender-bad-creation-time.json":        `alertCreationTime: expected an RFC 3339 date-time, got "26/01/2021 20:33:57"`,
		"graph-evidence-not-array.json":          `value[0].evidence: expected array, got object`,
		"graph-device-id-wrong-type.json":        `value[1].evidence[1].mdeDeviceId: expected string, got array`,
		"graph-incident-id-boolean.json":         `incidentId: expected integer or string, got boolean`,
		"alertmanager-version-number.json":       `version: expected string, got number`,
		"alertmanager-alerts-not-array.json":     `alerts: expected array, got object`,
		"alertmanager-labels-string.json":        `alerts[3].labels: expected object, got string`,
		"alertmanager-label-value-number.json":   `alerts[0].labels.severity: expected string, got number`,
		"alertmanager-annotation-odd-key.json":   `alerts[1].annotations["runbook url"]: expected string, got boolean`,
		"alertmanager-alert-null.json":           `alerts[1]: expected object, got null`,
		"grafana-bad-starts-at.json":             `alerts[0].startsAt: expected an RFC 3339 date-time, got "2024-06-11 08:15"`,
		"grafana-values-ok-status-number.json":   `alerts[0].status: expected string, got number`,

		// A member named twice in one object the decoder reads, at any depth
		// (names compared after unescaping).
		"defender-duplicate-id.json":                `value[2]: duplicate member "id"`,
		"graph-duplicate-device-evidence.json":      `value[0].evidence[1]: duplicate member "mdeDeviceId"`,
		"alertmanager-duplicate-label.json":         `alerts[1].labels: duplicate member "machine_id"`,
		"alertmanager-duplicate-version.json":       `body: duplicate member "version"`,
		"grafana-duplicate-annotation-escaped.json": `alerts[0].annotations: duplicate member "summary"`,
	}
	for _, file := range payloads(t, filepath.Join("testdata", "invalid")) {
		if _, ok := tests[filepath.Base(file)]; !ok {
			t.Errorf("%s has no expected error in this table", file)
		}
	}
	for name, want := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			file := filepath.Join("testdata", "invalid", name)
			body, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			batch, err := decoderFor(t, file)(body)
			var de *alert.DecodeError
			if !errors.As(err, &de) {
				t.Fatalf("decode %s: got error %v (%T) and %d alerts, want *alert.DecodeError %q", file, err, err, len(batch.Alerts), want)
			}
			if got := err.Error(); got != want {
				t.Errorf("decode %s:\n got %s\nwant %s", file, got, want)
			}
		})
	}
}

// TestDecodeDropped checks that alerts with a missing id or a malformed
// machine id are listed as invalid with the exact reason, their source and
// their id when it is valid, and that the rest of the body is kept. Every
// file of testdata/dropped/ must be listed.
func TestDecodeDropped(t *testing.T) {
	t.Parallel()
	const badUTF8 = `not valid UTF-8 (an invalid byte sequence or an unpaired \uD800-\uDFFF escape)`
	const (
		defender     = alert.SourceDefender
		graph        = alert.SourceGraph
		alertmanager = alert.SourceAlertmanager
	)
	tests := map[string]struct {
		invalid []alert.Problem // each dropped alert
		kept    []string        // DedupKey of each alert kept
	}{
		"defender-missing-ids.json": {
			invalid: []alert.Problem{
				{Path: "value[1].id", Reason: "missing alert id", Source: defender},
				{Path: "value[2].id", Reason: "missing alert id", Source: defender},
				{Path: "value[3].id", Reason: "missing alert id", Source: graph},
			},
			kept: []string{
				`defender|da637472900382838869_1364969609|1e5bc9d7e413ddd7902c2932e418702b84d0cc07`,
				`defender|da637472912345678901_-1234567890|name:fin-ws-0142.corp.contoso.com`,
			},
		},
		"defender-bad-machine-ids.json": {
			invalid: []alert.Problem{
				{
					Path: "[0].machineId", Reason: `not a 40-character hexadecimal MDE machine id: "1e5bc9d7e413ddd7902c2932e418702b84d0cc0"`,
					Source: defender, AlertID: "da637472900382838869_1364969609",
				},
				{
					Path: "[2].machineId", Reason: `not a 40-character hexadecimal MDE machine id: "../../api/machines/1e5bc9d7e413ddd7902c2932e418702b84d0cc07/offb"... (68 bytes)`,
					Source: defender, AlertID: "da637472900382838869_1364969611",
				},
				{
					Path: "[3].machineId", Reason: `not a 40-character hexadecimal MDE machine id: "` + strings.Repeat("a", 64) + `"... (200 bytes)`,
					Source: defender, AlertID: "da637472900382838869_1364969612",
				},
				{
					Path: "[4].machineId", Reason: `not a 40-character hexadecimal MDE machine id: "f18bd540-d5e4-46e0-8ddd-3d03a59e4e14"`,
					Source: defender, AlertID: "da637472900382838869_1364969613",
				},
			},
			kept: []string{
				`defender|da637472900382838869_1364969610|1e5bc9d7e413ddd7902c2932e418702b84d0cc07`,
				`defender|da637472900382838869_1364969614|04c99d46599f078f1c3da3783cf5b95f01ac61bb`,
			},
		},
		"graph-bad-devices.json": {
			invalid: []alert.Problem{
				{
					Path: "value[0].evidence[1].mdeDeviceId", Reason: `not a 40-character hexadecimal MDE machine id: "f18bd540-d5e4-46e0-8ddd-3d03a59e4e14"`,
					Source: graph, AlertID: "da637551227677560813_-961444813",
				},
				{
					Path: "value[1].evidence[0].mdeDeviceId", Reason: `not a 40-character hexadecimal MDE machine id: "zz5bc9d7e413ddd7902c2932e418702b84d0cc07"`,
					Source: graph, AlertID: "da637551227677560899_12",
				},
				{Path: "value[2].id", Reason: "missing alert id", Source: graph},
				// A malformed id is quoted in the reason only, never as AlertID.
				{Path: "value[3].id", Reason: `alert id contains a control character: "da637551227677560899_13\nINFO forged log line"`, Source: graph},
			},
			kept: []string{
				`graph|da637551227677560813_-961444813|1e5bc9d7e413ddd7902c2932e418702b84d0cc07`,
				`graph|da637551227677560813_-961444813|name:build-agent-03.corp.contoso.com`,
				`graph|da637551227677560813_-961444813|04c99d46599f078f1c3da3783cf5b95f01ac61bb`,
			},
		},
		"alertmanager-bad-alerts.json": {
			invalid: []alert.Problem{
				{Path: "alerts[0].labels.machine_id", Reason: `not a 40-character hexadecimal MDE machine id: "fin-ws-0142"`, Source: alertmanager, AlertID: "a-1"},
				{Path: "alerts[2]", Reason: "no alert_id label and no fingerprint", Source: alertmanager},
				{
					Path: "alerts[3].labels.device_id", Reason: `not a 40-character hexadecimal MDE machine id: "1e5bc9d7e413ddd7902c2932e418702b84d0cc07 ; rm -rf /"`,
					Source: alertmanager, AlertID: "0000000000000004",
				},
				{Path: "alerts[5].labels.alert_id", Reason: `alert id longer than 256 bytes: "` + strings.Repeat("x", 64) + `"... (300 bytes)`, Source: alertmanager},
				{Path: "alerts[6]", Reason: "no alert_id label and no fingerprint", Source: alertmanager},
			},
			kept: []string{
				`alertmanager|a-2|1e5bc9d7e413ddd7902c2932e418702b84d0cc07`,
				`alertmanager|0000000000000005|04c99d46599f078f1c3da3783cf5b95f01ac61bb|2024-05-01T10:00:00Z`,
			},
		},
		// Ids that are not valid UTF-8 would be read with U+FFFD in place
		// of the bad bytes, so [0] and [1] would share one dedup key: they
		// are refused, naming the field. A real U+FFFD, raw or escaped, and
		// a surrogate pair are text like any other.
		"defender-invalid-utf8.json": {
			invalid: []alert.Problem{
				{Path: "[0].id", Reason: "alert id is " + badUTF8, Source: defender},
				{Path: "[1].id", Reason: "alert id is " + badUTF8, Source: defender},
				{Path: "[2].id", Reason: "alert id is " + badUTF8, Source: defender},
				{Path: "[3].id", Reason: "alert id is " + badUTF8, Source: defender},
				{Path: "[5].machineId", Reason: "machine id is " + badUTF8, Source: defender, AlertID: "da637472900382838869_5"},
				{Path: "[6].computerDnsName", Reason: "machine name is " + badUTF8, Source: defender, AlertID: "da637472900382838869_6"},
				{Path: "[9].providerAlertId", Reason: "alert id is " + badUTF8, Source: graph},
				{Path: "[10].evidence[0].deviceDnsName", Reason: "machine name is " + badUTF8, Source: graph, AlertID: "da637551227677560813_10"},
			},
			kept: []string{
				"defender|da637472900382838869_4\U0001F600|1e5bc9d7e413ddd7902c2932e418702b84d0cc07",
				"defender|da637472900382838869_7\uFFFD|1e5bc9d7e413ddd7902c2932e418702b84d0cc07",
				"defender|da637472900382838869_8\uFFFD|1e5bc9d7e413ddd7902c2932e418702b84d0cc07",
				"graph|da637551227677560813_10|04c99d46599f078f1c3da3783cf5b95f01ac61bb",
			},
		},
		// The labels an id or a machine comes from are checked; labels that
		// are not used as one (instance after hostname, team) and an unused
		// fingerprint are not.
		"alertmanager-invalid-utf8.json": {
			invalid: []alert.Problem{
				{Path: "alerts[0].labels.alert_id", Reason: "alert id is " + badUTF8, Source: alertmanager},
				{Path: "alerts[1].fingerprint", Reason: "alert id is " + badUTF8, Source: alertmanager},
				{Path: "alerts[2].labels.machine_id", Reason: "machine id is " + badUTF8, Source: alertmanager, AlertID: "am-2"},
				{Path: "alerts[3].labels.hostname", Reason: "machine name is " + badUTF8, Source: alertmanager, AlertID: "am-3"},
			},
			kept: []string{
				"alertmanager|am-4|name:web-01.corp",
				"alertmanager|am-5|04c99d46599f078f1c3da3783cf5b95f01ac61bb",
			},
		},
		"grafana-bad-alerts.json": {
			invalid: []alert.Problem{
				{Path: "alerts[0].labels.mde_device_id", Reason: `not a 40-character hexadecimal MDE machine id: "web-01"`, Source: alert.SourceGrafana, AlertID: "b7e1c2d3a4f50617"},
				{Path: "alerts[1]", Reason: "no alert_id label and no fingerprint", Source: alert.SourceGrafana},
			},
			kept: []string{
				`grafana|g-1|name:web-02.corp.contoso.com`,
			},
		},
	}
	for _, file := range payloads(t, filepath.Join("testdata", "dropped")) {
		if _, ok := tests[filepath.Base(file)]; !ok {
			t.Errorf("%s has no expectation in this table", file)
		}
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			file := filepath.Join("testdata", "dropped", name)
			body, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			batch, err := decoderFor(t, file)(body)
			if err != nil {
				t.Fatalf("decode %s: %v", file, err)
			}
			var kept []string
			for _, a := range batch.Alerts {
				kept = append(kept, a.DedupKey())
			}
			if !slices.Equal(batch.Invalid, tt.invalid) {
				t.Errorf("decode %s: invalid\n got %+v\nwant %+v", file, batch.Invalid, tt.invalid)
			}
			if !slices.Equal(kept, tt.kept) {
				t.Errorf("decode %s: kept\n got %q\nwant %q", file, kept, tt.kept)
			}
		})
	}
}

// TestDecodeBounds checks that a body of 10,000 alerts decodes and one more
// is rejected, for every shape that carries a list of alerts, and that deep
// nesting is refused rather than followed.
func TestDecodeBounds(t *testing.T) {
	t.Parallel()
	const limit = 10000
	v1 := `{"id":"da637472900382838869_1364969609","machineId":"1e5bc9d7e413ddd7902c2932e418702b84d0cc07"}`
	am := `{"status":"firing","labels":{"alertname":"A"},"fingerprint":"6e2d6a5b1f0c3e71"}`
	device := `{"@odata.type":"#microsoft.graph.security.deviceEvidence","deviceDnsName":"pc%d.contoso.com"}`
	graph := func(n int) string {
		var b strings.Builder
		b.WriteString(`{"id":"da637551227677560813_-961444813","serviceSource":"microsoftDefenderForEndpoint","evidence":[`)
		for i := range n {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, device, i)
		}
		b.WriteString(`]}`)
		return b.String()
	}
	list := func(elem string, n int) string {
		return "[" + strings.TrimSuffix(strings.Repeat(elem+",", n), ",") + "]"
	}
	tests := []struct {
		name   string
		decode func([]byte) (alert.Batch, error)
		body   string
		want   string // error; "" for a batch of limit alerts
	}{
		{"DefenderArrayAtLimit", alert.DecodeDefender, list(v1, limit), ""},
		{"DefenderArrayOverLimit", alert.DecodeDefender, list(v1, limit+1), "body: more than 10000 alerts in one body"},
		{"DefenderEnvelopeOverLimit", alert.DecodeDefender, `{"value":` + list(v1, limit+1) + `}`, "value: more than 10000 alerts in one body"},
		{"GraphDevicesAtLimit", alert.DecodeDefender, graph(limit), ""},
		{"GraphDevicesOverLimit", alert.DecodeDefender, graph(limit + 1), "body: more than 10000 alerts in one body"},
		{"AlertmanagerAtLimit", alert.DecodeAlertmanager, `{"version":"4","alerts":` + list(am, limit) + `}`, ""},
		{"AlertmanagerOverLimit", alert.DecodeAlertmanager, `{"version":"4","alerts":` + list(am, limit+1) + `}`, "alerts: more than 10000 alerts in one body"},
		{"DeepBalancedArrays", alert.DecodeDefender, strings.Repeat("[", 10001) + strings.Repeat("]", 10001), "body is not valid JSON: invalid character '[' exceeded max depth at line 1, column 10001 (byte offset 10000)"},
		{"DeepArrays", alert.DecodeDefender, strings.Repeat("[", 200000), "body is not valid JSON: invalid character '[' exceeded max depth at line 1, column 10001 (byte offset 10000)"},
		{"DeepLabels", alert.DecodeAlertmanager, `{"version":"4","alerts":[{"labels":{"a":` + strings.Repeat(`{"a":`, 20000), "body is not valid JSON: invalid character '{' exceeded max depth at line 1, column 50021 (byte offset 50020)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			batch, err := tt.decode([]byte(tt.body))
			if tt.want == "" {
				if err != nil {
					t.Fatalf("decode: %v", err)
				}
				if n := len(batch.Alerts) + len(batch.Invalid); n != limit {
					t.Fatalf("decode: got %d alerts, want %d", n, limit)
				}
				return
			}
			var de *alert.DecodeError
			if !errors.As(err, &de) || err.Error() != tt.want {
				t.Fatalf("decode: got error %v, want *alert.DecodeError %q", err, tt.want)
			}
		})
	}
}

// TestDecodeFormat checks that Decode dispatches on the format.
func TestDecodeFormat(t *testing.T) {
	t.Parallel()
	tests := []struct {
		format alert.Format
		file   string
		source alert.Source
	}{
		{alert.FormatDefender, "defender-v1-single.json", alert.SourceDefender},
		{alert.FormatDefender, "graph-alerts-v2-two-devices.json", alert.SourceGraph},
		{alert.FormatAlertmanager, "alertmanager-firing-resolved.json", alert.SourceAlertmanager},
		{alert.FormatAlertmanager, "grafana-v1.json", alert.SourceGrafana},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			t.Parallel()
			body, err := os.ReadFile(filepath.Join("testdata", tt.file))
			if err != nil {
				t.Fatal(err)
			}
			batch, err := alert.Decode(tt.format, body)
			if err != nil {
				t.Fatalf("Decode(%s, %s): %v", tt.format, tt.file, err)
			}
			if len(batch.Alerts) == 0 || batch.Alerts[0].Source != tt.source {
				t.Fatalf("Decode(%s, %s): got %+v, want alerts from %s", tt.format, tt.file, batch.Alerts, tt.source)
			}
		})
	}
	if _, err := alert.Decode("syslog", []byte(`{}`)); err == nil || err.Error() != `unknown format "syslog"` {
		t.Errorf(`Decode("syslog"): got %v, want unknown format "syslog"`, err)
	}
}

// TestDecodeSameNameInOtherObjects checks that the duplicate check is per
// object: the same name in the envelope, an alert, its labels and its
// annotations is no duplicate.
func TestDecodeSameNameInOtherObjects(t *testing.T) {
	t.Parallel()
	body := `{"version":"4","status":"firing","alerts":[
		{"status":"firing","labels":{"status":"x","summary":"a","alert_id":"a-1"},"annotations":{"summary":"b","status":"y"},"fingerprint":"0000000000000001"},
		{"status":"firing","labels":{"status":"x","summary":"a","alert_id":"a-2"},"annotations":{"summary":"b"},"fingerprint":"0000000000000002"}]}`
	batch, err := alert.DecodeAlertmanager([]byte(body))
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	if len(batch.Alerts) != 2 || batch.Alerts[1].ID != "a-2" || batch.Alerts[0].Title != "b" {
		t.Fatalf("decode: got %+v", batch.Alerts)
	}
}

// TestParseFormat checks the names a user may give for a format: each
// format's own and its senders', in any case and with surrounding space.
func TestParseFormat(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		in   string
		want alert.Format
	}{
		{"defender", alert.FormatDefender},
		{"graph", alert.FormatDefender},
		{" Graph\n", alert.FormatDefender},
		{"alertmanager", alert.FormatAlertmanager},
		{"grafana", alert.FormatAlertmanager},
		{"GRAFANA", alert.FormatAlertmanager},
	} {
		got, err := alert.ParseFormat(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("ParseFormat(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
	for _, in := range []string{"", "syslog", "mde", "prometheus"} {
		want := fmt.Sprintf("unknown format %q (want defender, graph, alertmanager or grafana)", in)
		if got, err := alert.ParseFormat(in); err == nil || err.Error() != want {
			t.Errorf("ParseFormat(%q) = %q, %v; want error %s", in, got, err, want)
		}
	}
}

// TestDecodeGraphID checks that a Graph alert keeps its Graph id apart from
// its normalised ID (providerAlertId when present): Graph's comment endpoint
// takes the former. An unfit Graph id is dropped without refusing the alert.
func TestDecodeGraphID(t *testing.T) {
	t.Parallel()
	const machine = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07"
	evidence := `"evidence":[{"@odata.type":"#microsoft.graph.security.deviceEvidence","mdeDeviceId":"` + machine + `"}]`
	tests := []struct {
		name        string
		body        string
		wantID      string
		wantGraphID string
	}{
		{"ProviderIDDiffers",
			`{"id":"da0123456789_42","providerAlertId":"da637472900382838869_1364969609","serviceSource":"microsoftDefenderForEndpoint",` + evidence + `}`,
			"da637472900382838869_1364969609", "da0123456789_42"},
		{"NoProviderID",
			`{"id":"aad1f5c6e3-8a4b-4b0e-9f1a-7d2c3e4f5a6b","providerAlertId":null,"serviceSource":"azureAdIdentityProtection",` + evidence + `}`,
			"aad1f5c6e3-8a4b-4b0e-9f1a-7d2c3e4f5a6b", "aad1f5c6e3-8a4b-4b0e-9f1a-7d2c3e4f5a6b"},
		{"GraphIDTrimmed",
			`{"id":"  da0123456789_42 ","providerAlertId":"da637472900382838869_1364969609","serviceSource":"microsoftDefenderForEndpoint",` + evidence + `}`,
			"da637472900382838869_1364969609", "da0123456789_42"},
		{"GraphIDWithControlCharacterDropped",
			`{"id":"da0123456789_42\nforged","providerAlertId":"da637472900382838869_1364969609","serviceSource":"microsoftDefenderForEndpoint",` + evidence + `}`,
			"da637472900382838869_1364969609", ""},
		{"NoGraphID",
			`{"providerAlertId":"da637472900382838869_1364969609","serviceSource":"microsoftDefenderForEndpoint",` + evidence + `}`,
			"da637472900382838869_1364969609", ""},
		{"DefenderV1HasNone",
			`{"id":"da637472900382838869_1364969609","machineId":"` + machine + `"}`,
			"da637472900382838869_1364969609", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			batch, err := alert.DecodeDefender([]byte(tt.body))
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if len(batch.Alerts) != 1 || len(batch.Invalid) != 0 {
				t.Fatalf("decode: got %d alerts and %v invalid, want one alert", len(batch.Alerts), batch.Invalid)
			}
			a := batch.Alerts[0]
			if a.ID != tt.wantID || a.GraphID != tt.wantGraphID {
				t.Fatalf("decode: ID %q GraphID %q, want %q and %q", a.ID, a.GraphID, tt.wantID, tt.wantGraphID)
			}
		})
	}
}
