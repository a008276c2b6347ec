package rules

import (
	"fmt"
	"strings"
	"time"
)

// Action is what a rule asks for when it matches. It is a closed set.
type Action string

// The actions of SPEC section 6.1. ActionCollect is the main one; ActionIgnore
// ends evaluation with no action.
const (
	ActionCollect       Action = "collect_investigation_package"
	ActionIsolate       Action = "isolate"
	ActionAntivirusScan Action = "run_antivirus_scan"
	ActionRestrict      Action = "restrict_code_execution"
	ActionIgnore        Action = "ignore"
)

// Actions lists every valid action, in the order error messages name them.
var Actions = []Action{ActionCollect, ActionIsolate, ActionAntivirusScan, ActionRestrict, ActionIgnore}

// Valid reports whether a is one of Actions.
func (a Action) Valid() bool {
	for _, v := range Actions {
		if a == v {
			return true
		}
	}
	return false
}

// SendsComment reports whether the action is a Defender machine action, which
// carries a comment. It is true for every action but ignore.
func (a Action) SendsComment() bool { return a.Valid() && a != ActionIgnore }

// UnmarshalYAMLScalar checks the action name, so that a typo is reported at
// its position in the rule file.
func (a *Action) UnmarshalYAMLScalar(value string) error {
	v := Action(strings.TrimSpace(value))
	if !v.Valid() {
		return fmt.Errorf("unknown action %q (valid actions: %s)", value, actionList())
	}
	*a = v
	return nil
}

func actionList() string {
	names := make([]string, len(Actions))
	for i, a := range Actions {
		names[i] = string(a)
	}
	return strings.Join(names, ", ")
}

// DefaultComment is the comment template used when neither a rule nor its
// file's defaults set one. The rendered text is the one SPEC section 1 names.
const DefaultComment = "Collect forensics due to alert {{ .Alert.ID }}"

// DefaultCooldown is the cooldown used when neither a rule nor its file's
// defaults set one.
const DefaultCooldown = 24 * time.Hour

// MaxCommentLength caps a rendered comment, in characters (runes).
const MaxCommentLength = 1000

// FileConfig is one rule file as written (SPEC section 6.1).
type FileConfig struct {
	// Defaults apply to the rules of this file only.
	Defaults DefaultsConfig `yaml:"defaults"`
	// Rules are evaluated in order, after the rules of the files before.
	Rules []RuleConfig `yaml:"rules"`
}

// DefaultsConfig holds the values a rule of the same file takes when it does
// not set them.
type DefaultsConfig struct {
	// Action defaults to collect_investigation_package.
	Action *Action `yaml:"action"`
	// Cooldown per machine and action; defaults to 24h. 0 means none.
	Cooldown *time.Duration `yaml:"cooldown"`
	// Comment is a text/template; defaults to DefaultComment.
	Comment *string `yaml:"comment"`
}

// RuleConfig is one rule as written.
type RuleConfig struct {
	// Name is unique across all files and is the metric label of the rule.
	Name string `yaml:"name"`
	// Description says why the rule exists, for people and the rules API.
	Description string `yaml:"description"`
	// When is an expr-lang condition over alert.* and machine.*. Required.
	When string `yaml:"when"`
	// Action defaults to the file's defaults.action.
	Action *Action `yaml:"action"`
	// Cooldown defaults to the file's defaults.cooldown. 0 means none.
	Cooldown *time.Duration `yaml:"cooldown"`
	// Comment defaults to the file's defaults.comment.
	Comment *string `yaml:"comment"`
	// DryRun records the decision without calling Defender. Default false.
	DryRun bool `yaml:"dry_run"`
	// Enabled defaults to true; a disabled rule is skipped.
	Enabled *bool `yaml:"enabled"`
	// OnResolved lets the rule consider resolved alerts. Default false.
	OnResolved bool `yaml:"on_resolved"`
}
