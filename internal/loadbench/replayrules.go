package main

import (
	"fmt"
	"strings"

	"github.com/responder-dev/responder/internal/testkit"
)

// currentRules is the rule set the seeded store's decisions were taken
// with (the "current" side of a replay): the example rules' shape, with
// exclusions by machine tag, an ignore, collections with their cooldowns,
// and a rule on trial in dry run.
const currentRules = `defaults:
  action: collect_investigation_package
  cooldown: 24h
  comment: "Collect forensics due to alert {{ .Alert.ID }}"
rules:
  - name: never-domain-controllers
    when: '"domain-controller" in machine.tags'
    action: ignore
  - name: never-no-forensics
    when: '"no-forensics" in machine.tags'
    action: ignore
  - name: ignore-informational
    when: 'alert.severity == "informational"'
    action: ignore
  - name: ransomware
    when: 'alert.category == "Ransomware" && alert.severity in ["medium", "high", "critical"]'
    cooldown: 6h
  - name: high-malware-workstation
    when: 'alert.severity in ["high", "critical"] && alert.category == "Malware" && "workstation" in machine.tags'
  - name: credential-theft-trial
    when: '"T1003" in alert.mitre_techniques || any(alert.mitre_techniques, # startsWith "T1003.")'
    dry_run: true
`

// candidateGenerated is how many generated rules come before the current
// rules in the candidate set: with the current rules after them, the
// candidate has 1,000 rules.
const candidateGenerated = 994

// The generated rules a few seeded alerts match: late in the set, so that
// an alert that matches one still runs through nearly every rule. Their
// kinds follow testkit.GeneratedRule's cycle (regex on i%4 == 2, tag on i%4 == 3,
// detection source on i%4 == 1).
var (
	campaignRules = []int{950, 970, 990} // alert.title matches "(?i)campaign-N\b"
	tagRules      = []int{951, 971, 991} // "tag-N" in machine.tags
	sourceRules   = []int{953, 973}      // alert.detection_source in ["SourceN", "OtherN"]
)

// candidateRules is the 1,000-rule candidate set: candidateGenerated
// generated rules, which nearly every alert runs through without a match
// (a few match the late ones), then the current rules. Every alert thus
// evaluates about 1,000 rules, the worst case for the replay.
func candidateRules() string {
	var b strings.Builder
	b.WriteString(`defaults:
  action: collect_investigation_package
  cooldown: 24h
  comment: "Collect forensics due to alert {{ .Alert.ID }}"
rules:
`)
	for i := range candidateGenerated {
		fmt.Fprintf(&b, "  - name: generated-%d\n    when: '%s'\n", i, testkit.GeneratedRule(i))
	}
	_, rest, _ := strings.Cut(currentRules, "rules:\n")
	b.WriteString(rest)
	return b.String()
}
