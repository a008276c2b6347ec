// Package metrics defines every Prometheus metric of the responder (SPEC
// section 9) in one place. Metrics are registered on an injected
// prometheus.Registerer, never on the global registry, and every label takes
// its values from a closed set: never a machine id or an alert id.
package metrics

import (
	"runtime"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/responder-dev/responder/audit"
)

const namespace = "responder"

// Closed label values. They are initialised at 0 so that every series exists
// from the start and dashboards and alerts never see "no data".
var (
	// WebhookSources are the webhook endpoints.
	WebhookSources = []string{"defender", "alertmanager"}
	// WebhookCodes are the answers a webhook endpoint gives.
	WebhookCodes = []string{"202", "400", "401", "405", "413", "415", "500", "503"}
	// AlertSources are the normalised alert sources.
	AlertSources = []string{"defender", "graph", "alertmanager", "grafana"}
	// AlertOutcomes are what becomes of a received alert.
	AlertOutcomes = []string{"accepted", "duplicate", "ignored", "invalid"}
	// Decisions are the decisions taken for an alert and machine.
	Decisions = labels(audit.Decisions())
	// CollectionOutcomes are the outcomes of a collection request to MDE.
	CollectionOutcomes = labels(audit.Outcomes())
	// ActionStatuses are the final states of a tracked machine action.
	ActionStatuses = labels(audit.Finals())
	// NoRule is the rule label of a decision that no rule took (no_match).
	NoRule = "none"
	// StoreTables are the tables counted by responder_store_rows: the
	// responder's alerts, audit entries, cooldowns, quota log and
	// notifications, and the queue's jobs.
	// NotificationOutcomes are what becomes of one attempt to deliver a
	// notification: sent; retried (it failed and is tried again);
	// failed (the receiver refused it for good); gave_up (still failing a
	// day after the event); dropped (its notifier was removed).
	NotificationOutcomes = []string{"sent", "retried", "failed", "gave_up", "dropped"}
	StoreTables          = []string{"alert", "audit", "cooldown", "quota", "notification", "job"}
)

// labels turns a closed set typed in audit into label values.
func labels[T ~string](set []T) []string {
	out := make([]string, len(set))
	for i, v := range set {
		out[i] = string(v)
	}
	return out
}

// Metrics holds every metric of the responder.
type Metrics struct {
	WebhookRequests    *prometheus.CounterVec
	AlertsReceived     *prometheus.CounterVec
	Decisions          *prometheus.CounterVec
	Collections        *prometheus.CounterVec
	ActionsFinished    *prometheus.CounterVec
	ActionDuration     *prometheus.HistogramVec
	DefenderRequests   *prometheus.CounterVec
	DefenderDuration   *prometheus.HistogramVec
	RateLimitWait      prometheus.Histogram
	QueueJobs          *prometheus.GaugeVec
	CircuitOpen        prometheus.Gauge
	RulesLoaded        prometheus.Gauge
	RulesReloadOK      prometheus.Gauge
	RulesReloadSuccess prometheus.Gauge
	BuildInfo          *prometheus.GaugeVec
	StoreRows          *prometheus.GaugeVec
	StoreBytes         prometheus.Gauge
	Notifications      *prometheus.CounterVec
	NotificationDelay  *prometheus.HistogramVec
}

// New registers every metric on reg. A nil reg gives working metrics that are
// registered nowhere, which suits tests and CLI verbs.
func New(reg prometheus.Registerer) *Metrics {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	f := promauto.With(reg)
	m := &Metrics{
		WebhookRequests: f.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "webhook_requests_total",
			Help: "Webhook requests received, by endpoint and HTTP status code answered.",
		}, []string{"source", "code"}),
		AlertsReceived: f.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "alerts_received_total",
			Help: "Alerts received per machine named, by alert source and what became of them.",
		}, []string{"source", "outcome"}),
		Decisions: f.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "decisions_total",
			Help: "Decisions taken for an alert and machine, by deciding rule and decision.",
		}, []string{"rule", "decision"}),
		Collections: f.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "collections_total",
			Help: "Investigation package collection requests sent to Defender, by outcome.",
		}, []string{"outcome"}),
		ActionsFinished: f.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "machine_actions_finished_total",
			Help: "Tracked machine actions that ended, by final status (Untracked when tracking gave up).",
		}, []string{"status"}),
		ActionDuration: f.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "machine_action_duration_seconds",
			Help:    "Time from a machine action's creation to its final status, by final status.",
			Buckets: []float64{60, 300, 600, 1200, 1800, 3600, 7200, 14400, 43200, 86400, 259200},
		}, []string{"status"}),
		DefenderRequests: f.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "defender_requests_total",
			Help: "Requests sent to the Defender API and login endpoint, by operation and HTTP status code (error when no answer came).",
		}, []string{"operation", "code"}),
		DefenderDuration: f.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "defender_request_duration_seconds",
			Help:    "Duration of requests to the Defender API and login endpoint, by operation.",
			Buckets: []float64{.025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"operation"}),
		RateLimitWait: f.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Name: "defender_rate_limit_wait_seconds",
			Help:    "Time a Defender call waited for the quota limiter before it was sent.",
			Buckets: []float64{.001, .01, .1, .5, 1, 5, 15, 30, 60, 300, 900, 3600},
		}),
		QueueJobs: f.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Name: "queue_jobs",
			Help: "Jobs in the durable queue, by job kind and state.",
		}, []string{"kind", "state"}),
		CircuitOpen: f.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "circuit_open",
			Help: "1 while the safety circuit breaker suppresses collections, else 0.",
		}),
		RulesLoaded: f.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "rules_loaded",
			Help: "Number of rules in the rule set in force.",
		}),
		RulesReloadOK: f.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "rules_last_reload_successful",
			Help: "1 if the last rules reload succeeded, 0 if it failed and the previous rules stay in force.",
		}),
		RulesReloadSuccess: f.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "rules_last_reload_success_timestamp_seconds",
			Help: "Unix time of the last successful rules load.",
		}),
		BuildInfo: f.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Name: "build_info",
			Help: "Always 1; labels carry the responder version and the Go version it was built with.",
		}, []string{"version", "goversion"}),
		StoreRows: f.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Name: "store_rows",
			Help: "Rows in the store, by table (PostgreSQL: an estimate for tables over 100000 rows).",
		}, []string{"table"}),
		Notifications: f.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "notifications_total",
			Help: "Notification delivery attempts, by notifier, event and outcome (sent, retried, failed, gave_up, dropped).",
		}, []string{"notifier", "event", "outcome"}),
		NotificationDelay: f.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "notification_delivery_seconds",
			Help:    "Time from an event to its delivery to a notifier, retries included, by notifier.",
			Buckets: []float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400},
		}, []string{"notifier"}),
		StoreBytes: f.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "store_bytes",
			Help: "Size of the store: the SQLite database and its WAL, or the responder's and the queue's PostgreSQL tables with their indexes.",
		}),
	}
	for _, s := range WebhookSources {
		for _, c := range WebhookCodes {
			m.WebhookRequests.WithLabelValues(s, c)
		}
	}
	for _, s := range AlertSources {
		for _, o := range AlertOutcomes {
			m.AlertsReceived.WithLabelValues(s, o)
		}
	}
	for _, o := range CollectionOutcomes {
		m.Collections.WithLabelValues(o)
	}
	for _, s := range ActionStatuses {
		m.ActionsFinished.WithLabelValues(s)
		m.ActionDuration.WithLabelValues(s)
	}
	for _, t := range StoreTables {
		m.StoreRows.WithLabelValues(t)
	}
	m.InitRules(nil)
	return m
}

// InitRules creates the decision series of the given rule names at 0. It is
// called on every rules load; series of removed rules are kept, since
// dropping a counter would read as a reset.
func (m *Metrics) InitRules(names []string) {
	for _, d := range Decisions {
		m.Decisions.WithLabelValues(NoRule, d)
	}
	for _, name := range names {
		for _, d := range Decisions {
			m.Decisions.WithLabelValues(name, d)
		}
	}
}

// InitNotifiers creates the notification series of the given notifiers
// and events at 0. It is called whenever the notifiers are (re)loaded;
// series of removed notifiers are kept, as for rules.
func (m *Metrics) InitNotifiers(names, events []string) {
	for _, n := range names {
		for _, e := range events {
			for _, o := range NotificationOutcomes {
				m.Notifications.WithLabelValues(n, e, o)
			}
		}
		m.NotificationDelay.WithLabelValues(n)
	}
}

// InitDefenderOperation creates the request series of one Defender operation
// at 0 for its success code and the codes every operation can meet.
func (m *Metrics) InitDefenderOperation(operation string, successCode string) {
	for _, c := range []string{successCode, "400", "401", "403", "404", "429", "500", "503", "error"} {
		m.DefenderRequests.WithLabelValues(operation, c)
	}
	m.DefenderDuration.WithLabelValues(operation)
}

// SetBuildInfo sets responder_build_info for version.
func (m *Metrics) SetBuildInfo(version string) {
	m.BuildInfo.WithLabelValues(version, runtime.Version()).Set(1)
}
