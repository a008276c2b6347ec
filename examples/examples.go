// Package examples embeds the example rules, so that `responder serve --dev`
// works from any directory with the same rules the repository documents.
package examples

import _ "embed"

// Rules is examples/rules.yaml.
//
//go:embed rules.yaml
var Rules []byte
