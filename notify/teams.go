package notify

import (
	"encoding/json"
	"net/http"
	"strings"
)

// The Adaptive Card a Teams workflow (Power Automate) webhook posts.
const (
	teamsContentType = "application/vnd.microsoft.card.adaptive"
	teamsSchema      = "http://adaptivecards.io/schemas/adaptive-card.json"
	teamsCardVersion = "1.4"
	// teamsTitleMax and teamsSummaryMax cap the card's texts; Teams refuses
	// a message over about 28 KB.
	teamsTitleMax   = 200
	teamsSummaryMax = 1000
	teamsFactMax    = 600
)

type teamsMessage struct {
	Type        string            `json:"type"`
	Attachments []teamsAttachment `json:"attachments"`
}

type teamsAttachment struct {
	ContentType string    `json:"contentType"`
	ContentURL  *string   `json:"contentUrl"` // always null: the card is inline
	Content     teamsCard `json:"content"`
}

type teamsCard struct {
	Schema  string         `json:"$schema"`
	Type    string         `json:"type"`
	Version string         `json:"version"`
	Body    []teamsElement `json:"body"`
	Actions []teamsAction  `json:"actions,omitempty"`
}

// teamsElement is a TextBlock or a FactSet.
type teamsElement struct {
	Type     string      `json:"type"`
	Text     string      `json:"text,omitempty"`
	Weight   string      `json:"weight,omitempty"`
	Size     string      `json:"size,omitempty"`
	IsSubtle bool        `json:"isSubtle,omitempty"`
	Wrap     bool        `json:"wrap,omitempty"`
	Facts    []teamsFact `json:"facts,omitempty"`
}

type teamsFact struct {
	Title string `json:"title"`
	Value string `json:"value"`
}

type teamsAction struct {
	Type  string `json:"type"`
	Title string `json:"title"`
	URL   string `json:"url"`
}

// encodeTeams renders ev as a workflow webhook message: one Adaptive Card
// with a title, the summary, the facts, a small footer and, for an
// approval, a button to its page.
func encodeTeams(ev Event) ([]byte, http.Header, error) {
	card := teamsCard{Schema: teamsSchema, Type: "AdaptiveCard", Version: teamsCardVersion}
	card.Body = append(card.Body,
		teamsElement{Type: "TextBlock", Text: teamsEscaped(ev.headline(), teamsTitleMax), Weight: "Bolder", Size: "Medium", Wrap: true},
		teamsElement{Type: "TextBlock", Text: teamsEscaped(ev.Summary(), teamsSummaryMax), Wrap: true},
	)
	var facts []teamsFact
	for _, f := range ev.facts() {
		facts = append(facts, teamsFact{Title: f.label, Value: teamsEscaped(f.value, teamsFactMax)})
	}
	if len(facts) > 0 {
		card.Body = append(card.Body, teamsElement{Type: "FactSet", Facts: facts})
	}
	card.Body = append(card.Body, teamsElement{Type: "TextBlock", Text: teamsEscaped(strings.Join(ev.footer(), " · "), teamsSummaryMax), Size: "Small", IsSubtle: true, Wrap: true})
	if link := ev.approvalLink(); link != "" {
		card.Actions = []teamsAction{{Type: "Action.OpenUrl", Title: "Review the approval", URL: link}}
	}
	msg := teamsMessage{Type: "message", Attachments: []teamsAttachment{{ContentType: teamsContentType, Content: card}}}
	body, err := json.Marshal(msg)
	return body, nil, err
}
