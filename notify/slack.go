package notify

import (
	"encoding/json"
	"net/http"
)

// Slack's Block Kit limits (docs.slack.dev, Block Kit reference).
const (
	slackHeaderMax       = 150  // header block: plain_text
	slackTextMax         = 3000 // section text, top-level text we send
	slackFieldMax        = 2000 // one section field
	slackFieldsPerBlock  = 10
	slackContextElements = 10
)

// slackMessage is an incoming-webhook payload: text is the notification's
// fallback, blocks the message.
type slackMessage struct {
	Text   string       `json:"text"`
	Blocks []slackBlock `json:"blocks"`
}

type slackBlock struct {
	Type     string         `json:"type"`
	Text     *slackObject   `json:"text,omitempty"`
	Fields   []slackObject  `json:"fields,omitempty"`
	Elements []slackElement `json:"elements,omitempty"`
}

// slackObject is a text object. Verbatim mrkdwn keeps Slack from turning
// words into links or mentions (@channel in an alert title).
type slackObject struct {
	Type     string `json:"type"`
	Text     string `json:"text"`
	Verbatim bool   `json:"verbatim,omitempty"`
}

// slackElement is a context element (a text object) or a link button.
type slackElement struct {
	Type string `json:"type"`
	// Text is a string for a context text, a text object for a button.
	Text     any    `json:"text"`
	Verbatim bool   `json:"verbatim,omitempty"`
	URL      string `json:"url,omitempty"`
	ActionID string `json:"action_id,omitempty"`
	Style    string `json:"style,omitempty"`
}

func mrkdwn(s string) slackObject { return slackObject{Type: "mrkdwn", Text: s, Verbatim: true} }

// encodeSlack renders ev as an incoming-webhook message: a header, the
// summary with the facts as fields (ten per section), a link button to an
// approval page, and a context line. Every text is escaped, plain_text
// included: Slack reads &, < and > as control characters in all text
// objects, and decodes the entities for display.
func encodeSlack(ev Event) ([]byte, http.Header, error) {
	summary := slackEscaped(ev.Summary(), slackTextMax)
	msg := slackMessage{Text: summary}
	msg.Blocks = append(msg.Blocks, slackBlock{Type: "header", Text: &slackObject{Type: "plain_text", Text: slackEscaped(ev.headline(), slackHeaderMax)}})
	var fields []slackObject
	for _, f := range ev.facts() {
		label := "*" + f.label + "*\n"
		fields = append(fields, mrkdwn(label+slackEscaped(f.value, slackFieldMax-len(label))))
	}
	first := slackBlock{Type: "section", Text: ptr(mrkdwn(summary))}
	for len(fields) > 0 || first.Text != nil {
		n := min(len(fields), slackFieldsPerBlock)
		first.Fields = fields[:n]
		msg.Blocks = append(msg.Blocks, first)
		fields = fields[n:]
		first = slackBlock{Type: "section"}
	}
	if link := ev.approvalLink(); link != "" {
		msg.Blocks = append(msg.Blocks, slackBlock{Type: "actions", Elements: []slackElement{{
			Type: "button", Text: slackObject{Type: "plain_text", Text: "Review the approval"},
			URL: link, ActionID: "review_approval", Style: "primary",
		}}})
	}
	var context []slackElement
	for _, part := range ev.footer() {
		if len(context) == slackContextElements {
			break
		}
		context = append(context, slackElement{Type: "mrkdwn", Text: slackEscaped(part, slackTextMax), Verbatim: true})
	}
	msg.Blocks = append(msg.Blocks, slackBlock{Type: "context", Elements: context})
	body, err := json.Marshal(msg)
	return body, nil, err
}

func ptr[T any](v T) *T { return &v }
