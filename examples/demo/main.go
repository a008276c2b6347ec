// Command demo sends a few hundred realistic alerts to a responder started
// with `responder serve --dev`, so that `responder replay` has a history to
// replay (README, "Change rules safely"):
//
//	responder serve --dev &
//	go run ./examples/demo -url http://127.0.0.1:8080
//	responder replay --rules examples/rules-candidate.yaml --since 1h
//
// The alerts come from every source the responder reads (Defender API v1,
// Graph alerts_v2, Alertmanager, Grafana) and name the machines of the dev
// simulator (a finance workstation, an application server, a domain
// controller and a stale duplicate of the workstation), some by id and
// some by host name, plus hosts Defender does not know. Some are sent
// twice (a sender's retry), some several times on the same machine (the
// cooldowns), and they are spread over -duration so that the cooldowns'
// lengths matter.
//
// --dev serves its webhooks without authentication on loopback; -bearer
// sends a bearer token to a responder that wants one.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strings"
	"time"

	"github.com/responder-dev/responder/defender/defendertest"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

type options struct {
	url      string
	alerts   int
	duration time.Duration
	seed     uint64
	bearer   string
}

func run(args []string, stdout io.Writer) error {
	var o options
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.StringVar(&o.url, "url", "http://127.0.0.1:8080", "the responder's webhook listener")
	fs.IntVar(&o.alerts, "alerts", 300, "how many alerts to send")
	fs.DurationVar(&o.duration, "duration", 2*time.Minute, "how long to spread them over (0: all at once)")
	fs.Uint64Var(&o.seed, "seed", 1, "the random seed: the same seed sends the same alerts")
	fs.StringVar(&o.bearer, "bearer", os.Getenv("RESPONDER_WEBHOOKS_BEARER_TOKEN"), "webhook bearer token (--dev needs none)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.alerts <= 0 {
		return errors.New("-alerts must be positive")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	reqs := generate(o.alerts, rand.New(rand.NewPCG(o.seed, 0x5eed)), time.Now().UTC())
	fmt.Fprintf(stdout, "sending %d alerts in %d requests to %s over %s\n", o.alerts, len(reqs), o.url, o.duration)
	tally := map[string]*counts{}
	client := &http.Client{Timeout: 30 * time.Second}
	pause := o.duration / time.Duration(len(reqs))
	for i, r := range reqs {
		if i > 0 && pause > 0 {
			select {
			case <-time.After(pause):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		got, err := send(ctx, client, o, r)
		if err != nil {
			return err
		}
		c := tally[r.source]
		if c == nil {
			c = &counts{}
			tally[r.source] = c
		}
		c.add(got)
	}
	printTally(stdout, tally)
	return nil
}

// request is one webhook request: its endpoint, the source it is counted
// under, and its body.
type request struct {
	endpoint string // defender or alertmanager
	source   string
	body     []byte
}

// counts is what the responder answered (SPEC 5: 202 with these members).
type counts struct {
	Received   int `json:"received"`
	Accepted   int `json:"accepted"`
	Duplicates int `json:"duplicates"`
	Ignored    int `json:"ignored"`
}

func (c *counts) add(o counts) {
	c.Received += o.Received
	c.Accepted += o.Accepted
	c.Duplicates += o.Duplicates
	c.Ignored += o.Ignored
}

func send(ctx context.Context, client *http.Client, o options, r request) (counts, error) {
	url := strings.TrimRight(o.url, "/") + "/webhooks/" + r.endpoint
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(r.body))
	if err != nil {
		return counts{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	if o.bearer != "" {
		req.Header.Set("Authorization", "Bearer "+o.bearer)
	}
	resp, err := client.Do(req)
	if err != nil {
		return counts{}, fmt.Errorf("posting to %s: %w", url, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if resp.StatusCode != http.StatusAccepted {
		return counts{}, fmt.Errorf("%s answered %s: %s", url, resp.Status, bytes.TrimSpace(raw))
	}
	var c counts
	if err := json.Unmarshal(raw, &c); err != nil {
		return counts{}, fmt.Errorf("%s answered 202 with %q: %w", url, raw, err)
	}
	return c, nil
}

func printTally(w io.Writer, tally map[string]*counts) {
	var sources []string
	for s := range tally {
		sources = append(sources, s)
	}
	sort.Strings(sources)
	var total counts
	fmt.Fprintf(w, "%-14s %8s %8s %10s %7s\n", "source", "received", "accepted", "duplicates", "ignored")
	for _, s := range sources {
		c := tally[s]
		total.add(*c)
		fmt.Fprintf(w, "%-14s %8d %8d %10d %7d\n", s, c.Received, c.Accepted, c.Duplicates, c.Ignored)
	}
	fmt.Fprintf(w, "%-14s %8d %8d %10d %7d\n", "total", total.Received, total.Accepted, total.Duplicates, total.Ignored)
}

// host is a machine an alert can name: one of the dev simulator's, or one
// Defender does not know (id "").
type host struct {
	id, name string
}

var (
	workstation = host{defendertest.DevWorkstationID, "ws-0142.corp.example.com"}
	server      = host{defendertest.DevServerID, "srv-app-07.corp.example.com"}
	dc          = host{defendertest.DevDomainControllerID, "dc-01.corp.example.com"}
	stale       = host{defendertest.DevStaleDuplicateID, "ws-0142.corp.example.com"}
	unknown     = host{"", "build-agent-03.corp.example.com"}
)

// detection is a kind of Defender alert: its title, category, MITRE
// techniques and the severities it comes with.
type detection struct {
	title, category string
	mitre           []string
	severities      []string
}

var detections = []detection{
	{"'Emotet' malware was detected", "Malware", []string{"T1204.002"}, []string{"Medium", "High", "High"}},
	{"'Qakbot' malware was prevented", "Malware", []string{"T1055"}, []string{"Low", "Medium"}},
	{"Ransomware behavior detected in the file system", "Ransomware", []string{"T1486"}, []string{"Medium", "High", "High"}},
	{"Suspicious access to LSASS service", "CredentialAccess", []string{"T1003.001"}, []string{"High"}},
	{"Possible lateral movement using SMB/Windows Admin Shares", "LateralMovement", []string{"T1021.002"}, []string{"Medium", "High"}},
	{"Suspicious PowerShell command line", "Execution", []string{"T1059.001"}, []string{"Informational", "Low", "Medium"}},
	{"Unusual sign-in to a service account", "SuspiciousActivity", nil, []string{"Informational", "Low"}},
}

// generate builds the requests for n alerts: mostly Defender, then
// Alertmanager and Grafana; about one request in twelve repeats an earlier
// one exactly.
func generate(n int, rng *rand.Rand, now time.Time) []request {
	var out []request
	for sent := 0; sent < n; {
		if len(out) > 4 && rng.IntN(12) == 0 {
			out = append(out, out[rng.IntN(len(out))]) // a sender's retry: duplicates
			continue
		}
		var r request
		var k int
		switch p := rng.IntN(100); {
		case p < 55:
			r, k = defenderV1(rng, sent, now, min(n-sent, 1+rng.IntN(3)))
		case p < 70:
			r, k = graph(rng, sent, now)
		case p < 88:
			r, k = alertmanager(rng, sent, now)
		default:
			r, k = grafana(rng, sent, now)
		}
		out = append(out, r)
		sent += k
	}
	return out
}

func pick[T any](rng *rand.Rand, xs ...T) T { return xs[rng.IntN(len(xs))] }

// defenderHost picks a machine for a Defender alert: mostly the
// workstation, which most detections are about.
func defenderHost(rng *rand.Rand) host {
	return pick(rng, workstation, workstation, workstation, workstation, server, server, server, dc, stale)
}

// defenderID is an MDE alert id ("da" + 18 digits + "_" + a number).
func defenderID(i int, rng *rand.Rand) string {
	return fmt.Sprintf("da6386%012d_%d", 424242000+i, rng.Int32())
}

func defenderV1(rng *rand.Rand, first int, now time.Time, k int) (request, int) {
	var alerts []map[string]any
	for j := range k {
		d := pick(rng, detections...)
		h := defenderHost(rng)
		alerts = append(alerts, map[string]any{
			"id": defenderID(first+j, rng), "incidentId": 1126000 + first + j, "severity": pick(rng, d.severities...),
			"status": "New", "category": d.category, "title": d.title, "mitreTechniques": d.mitre,
			"machineId": h.id, "computerDnsName": h.name, "alertCreationTime": now.Format(time.RFC3339),
			"aadTenantId": defendertest.DevTenantID, "detectionSource": pick(rng, "WindowsDefenderAv", "WindowsDefenderAtp"),
		})
	}
	var body any = alerts[0]
	if k > 1 {
		body = alerts // an array, as a SIEM forwarding a batch sends
	}
	return request{"defender", "defender", mustJSON(body)}, k
}

func graph(rng *rand.Rand, i int, now time.Time) (request, int) {
	d := pick(rng, detections[3], detections[4], detections[0])
	devices := []host{defenderHost(rng)}
	if rng.IntN(3) == 0 {
		devices = append(devices, pick(rng, server, workstation))
	}
	if len(devices) == 2 && devices[0] == devices[1] {
		devices = devices[:1]
	}
	var evidence []map[string]any
	for _, h := range devices {
		evidence = append(evidence, map[string]any{
			"@odata.type": "#microsoft.graph.security.deviceEvidence", "mdeDeviceId": h.id, "deviceDnsName": h.name,
			"verdict": "suspicious", "roles": []string{}, "healthStatus": "active", "onboardingStatus": "onboarded",
		})
	}
	id := defenderID(i, rng)
	body := map[string]any{
		"@odata.type": "#microsoft.graph.security.alert", "id": id, "providerAlertId": id, "incidentId": fmt.Sprint(28000 + i),
		"status": "new", "severity": strings.ToLower(pick(rng, d.severities...)), "serviceSource": "microsoftDefenderForEndpoint",
		"detectionSource": "microsoftDefenderForEndpoint", "tenantId": defendertest.DevTenantID, "title": d.title,
		"category": d.category, "mitreTechniques": d.mitre, "createdDateTime": now.Format(time.RFC3339), "evidence": evidence,
	}
	return request{"defender", "graph", mustJSON(body)}, 1
}

// alertmanager sends security canaries (critical, team security, the
// machine by id or by host name) and platform alerts (team platform).
func alertmanager(rng *rand.Rand, i int, now time.Time) (request, int) {
	labels := map[string]string{"alert_id": fmt.Sprintf("am-%05d", i)}
	var summary string
	if rng.IntN(3) > 0 {
		h := pick(rng, workstation, server, server, unknown)
		labels["alertname"], labels["severity"], labels["team"] = "EDRCanaryFileTouched", pick(rng, "critical", "critical", "warning"), "security"
		if h.id != "" && rng.IntN(2) == 0 {
			labels["machine_id"] = h.id
		} else {
			labels["instance"] = h.name + ":9100"
		}
		summary = "Canary file opened on " + h.name
	} else {
		h := pick(rng, server, unknown)
		labels["alertname"], labels["severity"], labels["team"], labels["instance"] = "DiskAlmostFull", "critical", "platform", h.name+":9100"
		summary = "Disk almost full on " + h.name
	}
	status := "firing"
	if rng.IntN(8) == 0 {
		status = "resolved" // ignored: no rule sets on_resolved
	}
	body := map[string]any{
		"version": "4", "status": status, "receiver": "responder", "groupKey": "{}:{alertname=\"" + labels["alertname"] + "\"}",
		"alerts": []map[string]any{{
			"status": status, "labels": labels, "annotations": map[string]string{"summary": summary},
			"startsAt": now.Format(time.RFC3339), "endsAt": "0001-01-01T00:00:00Z",
		}},
	}
	return request{"alertmanager", "alertmanager", mustJSON(body)}, 1
}

// grafana sends Grafana-managed alerts on Defender sensor health, naming
// the machine by host name.
func grafana(rng *rand.Rand, i int, now time.Time) (request, int) {
	h := pick(rng, workstation, server, dc, unknown)
	labels := map[string]string{
		"alert_id": fmt.Sprintf("grafana-tamper-%05d", i), "alertname": "Defender sensor reports tampering",
		"hostname": h.name, "severity": pick(rng, "error", "critical", "info"), "team": "security", "category": "DefenseEvasion",
	}
	body := map[string]any{
		"version": "1", "status": "firing", "receiver": "responder", "orgId": 1,
		"alerts": []map[string]any{{
			"status": "firing", "labels": labels, "annotations": map[string]string{"summary": "Tamper protection event on " + h.name},
			"startsAt": now.Format(time.RFC3339), "endsAt": "0001-01-01T00:00:00Z",
		}},
	}
	return request{"alertmanager", "grafana", mustJSON(body)}, 1
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}
