package notify

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// clean makes a string that may come from an attacker (an alert title is
// whatever the malware named itself) safe to show on one line: control
// characters and line or paragraph separators become spaces, invalid UTF-8
// becomes U+FFFD, and the bidirectional controls that could make text read
// backwards are dropped.
func clean(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		i += size
		switch {
		case r == utf8.RuneError && size <= 1:
			b.WriteRune(utf8.RuneError)
		case isBidiControl(r):
		case unicode.IsControl(r), r == '\u2028', r == '\u2029':
			b.WriteByte(' ')
		default:
			b.WriteRune(r)
		}
	}
	return strings.TrimSpace(b.String())
}

func isBidiControl(r rune) bool {
	return (r >= '\u202a' && r <= '\u202e') || (r >= '\u2066' && r <= '\u2069') || r == '\u200e' || r == '\u200f' || r == '\u061c'
}

// clip cleans s and caps it at max runes, the last being "…" when cut.
func clip(s string, max int) string {
	s = clean(s)
	if utf8.RuneCountInString(s) <= max {
		return s
	}
	var b strings.Builder
	n := 0
	for _, r := range s {
		if n == max-1 {
			break
		}
		b.WriteRune(r)
		n++
	}
	return strings.TrimRightFunc(b.String(), unicode.IsSpace) + "…"
}

// escapeCapped escapes s rune by rune with escape and stops before the
// result would pass max runes, ending with "…" when cut: an entity or escape
// sequence is never cut in half.
func escapeCapped(s string, max int, escape func(r rune) string) string {
	var b strings.Builder
	n := 0
	for _, r := range s {
		piece := escape(r)
		n += utf8.RuneCountInString(piece)
		b.WriteString(piece)
	}
	if n <= max {
		return b.String()
	}
	b.Reset()
	n = 0
	for _, r := range s {
		piece := escape(r)
		pn := utf8.RuneCountInString(piece)
		if n+pn > max-1 {
			break
		}
		b.WriteString(piece)
		n += pn
	}
	return b.String() + "…"
}

// slackEscape escapes the three characters Slack's mrkdwn reads as markup:
// with them escaped no <url|text> link, <!channel> mention or <@user> can be
// formed from the text.
func slackEscape(r rune) string {
	switch r {
	case '&':
		return "&amp;"
	case '<':
		return "&lt;"
	case '>':
		return "&gt;"
	}
	return string(r)
}

// slackEscaped cleans s for a mrkdwn text of at most max characters.
func slackEscaped(s string, max int) string {
	return escapeCapped(clean(s), max, slackEscape)
}

// teamsEscape neutralises the Markdown link syntax of Adaptive Card text
// (TextBlock, Fact.Title and Fact.Value all read Markdown in Teams): square
// brackets become their full-width forms, so that [text](url) cannot form
// whatever the renderer's escaping rules, and angle brackets likewise, for
// the <url> autolink. The text still reads the same to a person.
func teamsEscape(r rune) string {
	switch r {
	case '[':
		return "［"
	case ']':
		return "］"
	case '<':
		return "＜"
	case '>':
		return "＞"
	}
	return string(r)
}

// teamsEscaped cleans s for Adaptive Card text of at most max characters.
func teamsEscaped(s string, max int) string {
	return escapeCapped(clean(s), max, teamsEscape)
}
