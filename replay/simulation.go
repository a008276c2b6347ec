package replay

import (
	"container/heap"
	"sort"
	"time"

	"github.com/responder-dev/responder/audit"
	"github.com/responder-dev/responder/quota"
	"github.com/responder-dev/responder/rules"
	"github.com/responder-dev/responder/store"
)

// Report is what a replay found (SPEC 12's JSON shape; more keys than
// SPEC names may be added, none removed).
type Report struct {
	Window Window `json:"window"`
	Source string `json:"source,omitempty"`
	// Alerts is the decisions replayed.
	Alerts int `json:"alerts"`
	// Undecided is the alerts received in the window without a decision
	// yet (still in the queue): not replayed.
	Undecided int `json:"undecided"`
	// UnknownAttributes is the alerts the candidate could not evaluate:
	// its rules read machine.* and no snapshot was kept.
	UnknownAttributes int `json:"unknown_attributes"`
	// Changed is the alerts whose decision changes.
	Changed        int          `json:"changed"`
	Decisions      Decisions    `json:"decisions"`
	Transitions    []Transition `json:"transitions"`
	Rules          []RuleHits   `json:"rules"`
	NewlyCollected []Change     `json:"newly_collected"`
	NewlySpared    []Change     `json:"newly_spared"`
	Quota          Quota        `json:"quota"`
}

// Window is the time replayed.
type Window struct {
	From time.Time `json:"from"`
	To   time.Time `json:"to"`
}

// Decisions counts the decisions by name, as recorded and as the candidate
// decides.
type Decisions struct {
	Current   map[audit.Decision]int `json:"current"`
	Candidate map[audit.Decision]int `json:"candidate"`
}

// Transition counts the alerts whose decision changes from one to another.
type Transition struct {
	From  audit.Decision `json:"from"`
	To    audit.Decision `json:"to"`
	Count int            `json:"count"`
}

// RuleHits counts the alerts a rule decided, as recorded and as the
// candidate decides.
type RuleHits struct {
	Name      string `json:"name"`
	Current   int    `json:"current"`
	Candidate int    `json:"candidate"`
}

// Change is an alert newly collected or newly spared: the candidate's
// decision, rule, action and reason, and what was recorded.
type Change struct {
	Source          string         `json:"source"`
	AlertID         string         `json:"alert_id"`
	MachineID       string         `json:"machine_id"`
	MachineName     string         `json:"machine_name,omitempty"`
	Rule            string         `json:"rule"`
	Action          string         `json:"action"`
	Reason          string         `json:"reason"`
	Decision        audit.Decision `json:"decision"`
	CurrentDecision audit.Decision `json:"current_decision"`
	CurrentRule     string         `json:"current_rule"`
	DecidedAt       time.Time      `json:"decided_at"`
	AuditID         int64          `json:"audit_id"`
}

// Quota is the MDE quota of collection requests (the actions API group)
// the candidate would need: every source's, the quota being the tenant's.
type Quota struct {
	PerMinute     int `json:"per_minute"`
	PerHour       int `json:"per_hour"`
	PeakPerMinute int `json:"peak_per_minute"`
	PeakPerHour   int `json:"peak_per_hour"`
	// LateCollections would have waited for the quota; MaxDelaySeconds is
	// the longest such wait.
	LateCollections int     `json:"late_collections"`
	MaxDelaySeconds float64 `json:"max_delay_seconds"`
}

// simulation is the candidate's state on the virtual clock, and the
// report it fills.
type simulation struct {
	opts     Options
	state    *rules.Memory
	releases releases
	clock    *virtualClock
	limiter  *quota.WindowLimiter
	// lastMinute and lastHour are the candidate's collections within the
	// last minute and hour of the clock, oldest first.
	lastMinute, lastHour []time.Time

	// replayed counts every decision replayed, of any source.
	replayed    int
	report      Report
	transitions map[[2]audit.Decision]int
	hits        map[string]*RuleHits
	noRule      RuleHits // the counters of "no rule", not reported
}

func newSimulation(opts Options, undecided int) *simulation {
	clock := &virtualClock{}
	s := &simulation{
		opts:        opts,
		state:       rules.NewMemory(opts.Limits),
		clock:       clock,
		transitions: map[[2]audit.Decision]int{},
		hits:        map[string]*RuleHits{},
	}
	if opts.Quota.PerMinute > 0 && opts.Quota.PerHour > 0 {
		s.limiter = quota.NewWindowLimiter(opts.Quota.PerMinute, opts.Quota.PerHour, clock).WithSlack(opts.Quota.Slack)
	}
	s.report = Report{
		Window:         Window{From: opts.Window.From.UTC(), To: opts.Window.To.UTC()},
		Source:         opts.Window.Source,
		Undecided:      undecided,
		Decisions:      Decisions{Current: map[audit.Decision]int{}, Candidate: map[audit.Decision]int{}},
		Transitions:    []Transition{},
		Rules:          []RuleHits{},
		NewlyCollected: []Change{},
		NewlySpared:    []Change{},
		Quota:          Quota{PerMinute: opts.Quota.PerMinute, PerHour: opts.Quota.PerHour},
	}
	for _, d := range audit.Decisions() {
		s.report.Decisions.Current[d], s.report.Decisions.Candidate[d] = 0, 0
	}
	for _, r := range opts.Rules.Rules() {
		s.hits[r.Name] = &RuleHits{Name: r.Name}
	}
	return s
}

// prime starts the state from the decisions recorded before the window:
// the cooldowns they hold and the collections the circuit breaker counts.
func (s *simulation) prime(prior []store.ReplayRow, from time.Time) {
	for _, row := range prior {
		d := rules.Decision{Decision: row.Decision, Action: rules.Action(row.Action), DryRun: row.DryRun}
		s.state.Record(row.MachineID, d, row.AuditID, row.DecidedAt)
		if !row.ReleasedAt.IsZero() {
			s.scheduleRelease(row.MachineID, d, row.AuditID, row.ReleasedAt)
		}
	}
	s.releases.due(s.state, from)
}

func (s *simulation) scheduleRelease(machineID string, d rules.Decision, auditID int64, at time.Time) {
	heap.Push(&s.releases, release{at: at, machineID: machineID, key: rules.CooldownKey(d.Action, d.DryRun), auditID: auditID})
}

// settle decides the prepared alerts of p in order on the virtual clock.
func (s *simulation) settle(p *page) error {
	for i := range p.rows {
		row, it := &p.rows[i], &p.items[i]
		if it.err != nil {
			return it.err
		}
		now := row.DecidedAt
		s.releases.due(s.state, now)
		s.state.SetNow(now)
		s.clock.now = now
		d, err := it.prepared.Settle(s.state, now)
		if err != nil {
			return err
		}
		s.state.Record(it.machineID, d, row.AuditID, now)
		if d.Decision == audit.Collect {
			// The same request on the same machine would have ended as the
			// recorded one did: one that collected nothing gives the
			// candidate's cooldown back too.
			if row.Decision == audit.Collect && !row.ReleasedAt.IsZero() {
				s.scheduleRelease(it.machineID, d, row.AuditID, row.ReleasedAt)
			}
			s.collected(now)
		}
		s.replayed++
		if src := s.opts.Window.Source; src != "" && string(it.alert.Source) != src {
			continue // it made the state; the report is of src
		}
		s.count(row, it, d)
		if s.opts.Each != nil {
			s.opts.Each(Decided{AuditID: row.AuditID, AlertID: it.alert.ID, MachineID: it.machineID,
				Current: row.Decision, CurrentRule: row.Rule, Candidate: d})
		}
	}
	p.items, p.rows = nil, nil
	return nil
}

// collected accounts a candidate collection at now against the quota.
func (s *simulation) collected(now time.Time) {
	s.lastMinute = append(dropBefore(s.lastMinute, now.Add(-time.Minute)), now)
	s.lastHour = append(dropBefore(s.lastHour, now.Add(-time.Hour)), now)
	q := &s.report.Quota
	q.PeakPerMinute = max(q.PeakPerMinute, len(s.lastMinute))
	q.PeakPerHour = max(q.PeakPerHour, len(s.lastHour))
	if s.limiter == nil {
		return
	}
	if delay := s.limiter.Reserve().Sub(now); delay > 0 {
		q.LateCollections++
		q.MaxDelaySeconds = max(q.MaxDelaySeconds, delay.Seconds())
	}
}

// dropBefore drops the times not after cut from the front of ts.
func dropBefore(ts []time.Time, cut time.Time) []time.Time {
	n := 0
	for n < len(ts) && !ts[n].After(cut) {
		n++
	}
	if n == 0 {
		return ts
	}
	return append(ts[:0], ts[n:]...)
}

// count adds one alert's recorded and candidate decisions to the report.
func (s *simulation) count(row *store.ReplayRow, it *item, d rules.Decision) {
	r := &s.report
	r.Alerts++
	if it.unknown {
		r.UnknownAttributes++
	}
	r.Decisions.Current[row.Decision]++
	r.Decisions.Candidate[d.Decision]++
	s.hit(row.Rule).Current++
	s.hit(d.Rule).Candidate++
	if row.Decision == d.Decision {
		return
	}
	r.Changed++
	s.transitions[[2]audit.Decision{row.Decision, d.Decision}]++
	newly, spared := d.Decision == audit.Collect, row.Decision == audit.Collect
	if !newly && !spared {
		return
	}
	c := Change{
		Source: string(it.alert.Source), AlertID: it.alert.ID, MachineID: it.machineID, MachineName: it.alert.MachineName,
		Rule: d.Rule, Action: string(d.Action), Reason: d.Reason, Decision: d.Decision,
		CurrentDecision: row.Decision, CurrentRule: row.Rule, DecidedAt: row.DecidedAt.UTC(), AuditID: row.AuditID,
	}
	if newly {
		r.NewlyCollected = append(r.NewlyCollected, c)
	} else {
		r.NewlySpared = append(r.NewlySpared, c)
	}
}

// hit returns the counters of a rule ("" is none: not counted).
func (s *simulation) hit(name string) *RuleHits {
	if name == "" {
		return &s.noRule
	}
	h, ok := s.hits[name]
	if !ok {
		h = &RuleHits{Name: name}
		s.hits[name] = h
	}
	return h
}

// finish orders the report's lists: transitions by count, the candidate's
// rules in their order, then rules only the recorded decisions name.
func (s *simulation) finish() *Report {
	r := &s.report
	for k, n := range s.transitions {
		r.Transitions = append(r.Transitions, Transition{From: k[0], To: k[1], Count: n})
	}
	sort.Slice(r.Transitions, func(i, j int) bool {
		a, b := r.Transitions[i], r.Transitions[j]
		if a.Count != b.Count {
			return a.Count > b.Count
		}
		if a.From != b.From {
			return a.From < b.From
		}
		return a.To < b.To
	})
	seen := map[string]bool{}
	for _, info := range s.opts.Rules.Rules() {
		r.Rules = append(r.Rules, *s.hits[info.Name])
		seen[info.Name] = true
	}
	var gone []string
	for name := range s.hits {
		if !seen[name] {
			gone = append(gone, name)
		}
	}
	sort.Strings(gone)
	for _, name := range gone {
		r.Rules = append(r.Rules, *s.hits[name])
	}
	return r
}

// virtualClock is the replay's clock: the instant of the decision being
// replayed. The quota limiter reads it and never waits on it.
type virtualClock struct{ now time.Time }

func (c *virtualClock) Now() time.Time { return c.now }

func (c *virtualClock) After(time.Duration) <-chan time.Time {
	ch := make(chan time.Time, 1)
	ch <- c.now
	return ch
}
