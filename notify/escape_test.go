package notify

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"unicode/utf8"
)

// hostile is an event whose attacker-reachable strings (alert title and id,
// machine name, reason) try to inject links, mentions, lines and bad bytes.
func hostile() Event {
	ev := Sample(Failed, fixedNow)
	ev.Alert.Title = "<http://evil.example|Reset your password> [Click here](http://evil.example) <!channel> @here *bold*\nsecond line\x00\u202egnp.exe"
	ev.Alert.ID = "id<@U123>[x](http://evil.example)"
	ev.Machine.Name = "ws-042 <http://evil.example|WS> [WS](http://evil.example)\xff\xfe"
	ev.Reason = strings.Repeat("<&>[]", 4000) + "\r\nend"
	ev.Tenant = "contoso"
	return ev
}

// strings walks a decoded JSON document and calls f with each string and
// the key it is under.
func walkStrings(v any, key string, f func(key, s string)) {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			walkStrings(e, k, f)
		}
	case []any:
		for _, e := range x {
			walkStrings(e, key, f)
		}
	case string:
		f(key, x)
	}
}

// TestSlackEscaping: no link, mention or markup can be formed in Slack from
// attacker text: &, < and > are escaped in every mrkdwn text, lengths stay
// within Block Kit's limits, and odd bytes do not fail the send.
func TestSlackEscaping(t *testing.T) {
	t.Parallel()
	rcv := newReceiver(t, http.StatusOK, "ok")
	if _, err := send(t, mustNew(t, settingsFor(TypeSlack, rcv.srv.URL)), hostile()); err != nil {
		t.Fatal(err)
	}
	body := rcv.next(t).body
	checkSlack(t, body)
	var doc any
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatal(err)
	}
	var all strings.Builder
	walkStrings(doc, "", func(key, s string) {
		if key != "text" {
			return
		}
		all.WriteString(s + "\n")
		if !utf8.ValidString(s) || strings.ContainsAny(s, "\x00\r\u202e") {
			t.Errorf("text holds a control or invalid character: %q", s)
		}
	})
	text := all.String()
	for _, bad := range []string{"<http", "<!channel>", "<@U123>"} {
		if strings.Contains(text, bad) {
			t.Errorf("a Slack text holds %q unescaped", bad)
		}
	}
	if !strings.Contains(text, "&lt;http://evil.example|Reset your password&gt;") {
		t.Errorf("the title is not shown escaped:\n%s", text)
	}
	if strings.Contains(text, "&amp;lt;") {
		t.Errorf("escaped twice:\n%s", text)
	}
}

// TestTeamsEscaping: no Markdown link can be formed in the Adaptive Card
// from attacker text, in text blocks or facts.
func TestTeamsEscaping(t *testing.T) {
	t.Parallel()
	rcv := newReceiver(t, http.StatusAccepted, "")
	if _, err := send(t, mustNew(t, settingsFor(TypeTeams, rcv.srv.URL)), hostile()); err != nil {
		t.Fatal(err)
	}
	body := rcv.next(t).body
	checkTeams(t, body)
	var doc any
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatal(err)
	}
	var all strings.Builder
	walkStrings(doc, "", func(key, s string) {
		if key != "text" && key != "value" && key != "title" {
			return
		}
		all.WriteString(s + "\n")
		if strings.ContainsAny(s, "[]<>") {
			t.Errorf("card text holds link syntax: %q", s)
		}
		if !utf8.ValidString(s) || strings.ContainsAny(s, "\x00\r\n\u202e") {
			t.Errorf("card text holds a control or invalid character: %q", s)
		}
	})
	if !strings.Contains(all.String(), "［Click here］(http://evil.example)") {
		t.Errorf("the title is not shown neutralised:\n%s", all.String())
	}
}

// TestWebhookCarriesRawValues: the webhook document is for programs: it
// carries the values as they are (JSON-encoded), not escaped for people.
func TestWebhookCarriesRawValues(t *testing.T) {
	t.Parallel()
	rcv := newReceiver(t, http.StatusOK, "")
	ev := hostile()
	if _, err := send(t, mustNew(t, settingsFor(TypeWebhook, rcv.srv.URL)), ev); err != nil {
		t.Fatal(err)
	}
	var got Event
	if err := json.Unmarshal(rcv.next(t).body, &got); err != nil {
		t.Fatal(err)
	}
	if got.Alert.Title != ev.Alert.Title || got.Reason != ev.Reason {
		t.Errorf("the document changed the values: %q", got.Alert.Title)
	}
	if !strings.HasPrefix(got.Machine.Name, "ws-042 <http://evil.example|WS> [WS](http://evil.example)") || !utf8.ValidString(got.Machine.Name) {
		t.Errorf("machine name %q: want the value, its bad bytes replaced", got.Machine.Name)
	}
}

// TestText: the helpers that clean, cap and escape text.
func TestText(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, got, want string
	}{
		{"clean controls", clean(" a\nb\tc\x00d\u2028e "), "a b c d e"},
		{"clean bidi", clean("abc\u202egnp.exe\u2066"), "abcgnp.exe"},
		{"clean bad bytes", clean("a\xffb"), "a\uFFFDb"},
		{"clip short", clip("abc", 3), "abc"},
		{"clip long", clip("abcdef", 4), "abc…"},
		{"clip runes", clip("éééééé", 3), "éé…"},
		{"slack plain", slackEscaped("a & b", 100), "a &amp; b"},
		{"slack link", slackEscaped("<http://x|y>", 100), "&lt;http://x|y&gt;"},
		{"slack cap keeps entities whole", slackEscaped("ab<<<", 7), "ab&lt;…"},
		{"slack cap exact", slackEscaped("a<", 5), "a&lt;"},
		{"teams link", teamsEscaped("[a](http://x)", 100), "［a］(http://x)"},
		{"teams autolink", teamsEscaped("<http://x>", 100), "＜http://x＞"},
		{"teams cap", teamsEscaped("abcdef", 4), "abc…"},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, tc.got, tc.want)
		}
	}
	if got := slackEscaped(strings.Repeat("<", 5000), 2000); utf8.RuneCountInString(got) > 2000 || !strings.HasSuffix(got, "&lt;…") {
		t.Errorf("capped escape: %d runes, ends %q", utf8.RuneCountInString(got), got[len(got)-10:])
	}
}
