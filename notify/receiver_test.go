package notify

import (
	"encoding/json"
	"errors"
	"net/http"
	"reflect"
	"testing"
	"time"
	"unicode/utf8"
)

// TestSlackReceiver: every kind reaches a Slack-like receiver as an
// incoming-webhook message whose shape keeps to Block Kit's documented
// limits, and Slack's "ok" comes back as the answer.
func TestSlackReceiver(t *testing.T) {
	t.Parallel()
	for _, k := range Kinds() {
		t.Run(string(k), func(t *testing.T) {
			t.Parallel()
			rcv := newReceiver(t, http.StatusOK, "ok")
			n := mustNew(t, settingsFor(TypeSlack, rcv.srv.URL+"/services/T0/B0/x"))
			ans, err := send(t, n, Sample(k, fixedNow))
			if err != nil {
				t.Fatal(err)
			}
			if ans != (Answer{Status: 200, Body: "ok"}) {
				t.Errorf("answer %+v, want 200 ok", ans)
			}
			req := rcv.next(t)
			checkCommon(t, req, "/services/T0/B0/x")
			checkSlack(t, req.body)
		})
	}
}

// TestTeamsReceiver: every kind reaches a workflow-webhook-like receiver as
// a message with one Adaptive Card attachment of the documented shape; the
// workflow's 202 is a success.
func TestTeamsReceiver(t *testing.T) {
	t.Parallel()
	for _, k := range Kinds() {
		t.Run(string(k), func(t *testing.T) {
			t.Parallel()
			rcv := newReceiver(t, http.StatusAccepted, "")
			n := mustNew(t, settingsFor(TypeTeams, rcv.srv.URL+"/workflows/abc/triggers/manual/paths/invoke"))
			ans, err := send(t, n, Sample(k, fixedNow))
			if err != nil {
				t.Fatal(err)
			}
			if ans.Status != http.StatusAccepted {
				t.Errorf("answer %+v, want 202", ans)
			}
			req := rcv.next(t)
			checkCommon(t, req, "/workflows/abc/triggers/manual/paths/invoke")
			checkTeams(t, req.body)
		})
	}
}

// TestWebhookReceiver: every kind reaches a webhook receiver as exactly the
// Event document (version "1"), with its headers, signed so that Verify
// accepts it with the shared secret, and refuses it tampered or stale.
func TestWebhookReceiver(t *testing.T) {
	t.Parallel()
	for _, k := range Kinds() {
		t.Run(string(k), func(t *testing.T) {
			t.Parallel()
			rcv := newReceiver(t, http.StatusNoContent, "")
			n := mustNew(t, settingsFor(TypeWebhook, rcv.srv.URL+"/hooks/responder"))
			ev := Sample(k, fixedNow)
			ev.Version = "" // the sender sets it
			if _, err := send(t, n, ev); err != nil {
				t.Fatal(err)
			}
			req := rcv.next(t)
			checkCommon(t, req, "/hooks/responder")
			if got := req.header.Get(HeaderEvent); got != string(k) {
				t.Errorf("%s = %q, want %q", HeaderEvent, got, k)
			}
			if got := req.header.Get(HeaderDelivery); got != ev.ID {
				t.Errorf("%s = %q, want %q", HeaderDelivery, got, ev.ID)
			}
			ts, sig := req.header.Get(HeaderTimestamp), req.header.Get(HeaderSignature)
			if ts != "1741944413" {
				t.Errorf("%s = %q, want the clock's Unix seconds", HeaderTimestamp, ts)
			}
			if err := Verify([]byte(testSecret), ts, sig, req.body, fixedNow.Add(time.Minute), 5*time.Minute); err != nil {
				t.Errorf("Verify: %v", err)
			}
			tampered := append([]byte(nil), req.body...)
			tampered[len(tampered)/2] ^= 1
			if err := Verify([]byte(testSecret), ts, sig, tampered, fixedNow, 5*time.Minute); !errors.Is(err, ErrBadSignature) {
				t.Errorf("Verify(tampered body) = %v, want ErrBadSignature", err)
			}
			if err := Verify([]byte(testSecret), ts, sig, req.body, fixedNow.Add(6*time.Minute), 5*time.Minute); !errors.Is(err, ErrStaleTimestamp) {
				t.Errorf("Verify(6 minutes later) = %v, want ErrStaleTimestamp", err)
			}
			var got Event
			if err := json.Unmarshal(req.body, &got); err != nil {
				t.Fatalf("body is not an Event: %v", err)
			}
			ev.Version = Version
			if !reflect.DeepEqual(got, ev) {
				t.Errorf("the receiver got\n%+v\nwant\n%+v", got, ev)
			}
			var doc map[string]any
			_ = json.Unmarshal(req.body, &doc)
			if doc["version"] != "1" || doc["event"] != string(k) || doc["id"] != ev.ID {
				t.Errorf("document keys version/event/id = %v/%v/%v", doc["version"], doc["event"], doc["id"])
			}
		})
	}
}

// TestWebhookUnsigned: without a secret the webhook carries neither
// timestamp nor signature.
func TestWebhookUnsigned(t *testing.T) {
	t.Parallel()
	rcv := newReceiver(t, http.StatusOK, "")
	s := settingsFor(TypeWebhook, rcv.srv.URL)
	s.HMACSecret = ""
	if _, err := send(t, mustNew(t, s), Sample(Collected, fixedNow)); err != nil {
		t.Fatal(err)
	}
	req := rcv.next(t)
	if req.header.Get(HeaderSignature) != "" || req.header.Get(HeaderTimestamp) != "" {
		t.Errorf("unsigned webhook carries %s=%q %s=%q", HeaderSignature, req.header.Get(HeaderSignature), HeaderTimestamp, req.header.Get(HeaderTimestamp))
	}
}

// checkCommon checks what every HTTP format sends.
func checkCommon(t *testing.T, req captured, path string) {
	t.Helper()
	if req.method != http.MethodPost || req.path != path {
		t.Errorf("request %s %s, want POST %s", req.method, req.path, path)
	}
	if ct := req.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	if ua := req.header.Get("User-Agent"); ua != "responder/test" {
		t.Errorf("User-Agent %q", ua)
	}
	if !json.Valid(req.body) {
		t.Errorf("body is not JSON: %s", req.body)
	}
}

// obj and friends read a decoded JSON document, failing t on a wrong shape.
type obj = map[string]any

func field[T any](t *testing.T, o obj, key string) T {
	t.Helper()
	v, ok := o[key].(T)
	if !ok {
		var zero T
		t.Fatalf("key %q is %T (%v), want %T in %v", key, o[key], o[key], zero, o)
		return zero
	}
	return v
}

func text(t *testing.T, o obj, key string, max int) string {
	t.Helper()
	s := field[string](t, o, key)
	if s == "" || utf8.RuneCountInString(s) > max || !utf8.ValidString(s) {
		t.Errorf("%q: %d characters (want 1 to %d, valid UTF-8): %q", key, utf8.RuneCountInString(s), max, s)
	}
	return s
}

// checkSlack checks an incoming-webhook payload against Block Kit's
// documented shape and limits.
func checkSlack(t *testing.T, body []byte) {
	t.Helper()
	var msg obj
	if err := json.Unmarshal(body, &msg); err != nil {
		t.Fatal(err)
	}
	text(t, msg, "text", 3000)
	blocks := field[[]any](t, msg, "blocks")
	if len(blocks) == 0 || len(blocks) > 50 {
		t.Fatalf("%d blocks, want 1 to 50", len(blocks))
	}
	for i, b := range blocks {
		block := b.(obj)
		typ := field[string](t, block, "type")
		if i == 0 && typ != "header" {
			t.Errorf("first block is %q, want header", typ)
		}
		switch typ {
		case "header":
			to := field[obj](t, block, "text")
			if field[string](t, to, "type") != "plain_text" {
				t.Errorf("header text is not plain_text")
			}
			text(t, to, "text", 150)
		case "section":
			fields, _ := block["fields"].([]any)
			to, hasText := block["text"].(obj)
			if !hasText && len(fields) == 0 {
				t.Errorf("section %d has neither text nor fields", i)
			}
			if hasText {
				text(t, to, "text", 3000)
			}
			if len(fields) > 10 {
				t.Errorf("section %d has %d fields, at most 10", i, len(fields))
			}
			for _, f := range fields {
				fo := f.(obj)
				if field[string](t, fo, "type") != "mrkdwn" {
					t.Errorf("field type %v", fo["type"])
				}
				text(t, fo, "text", 2000)
			}
		case "context":
			els := field[[]any](t, block, "elements")
			if len(els) == 0 || len(els) > 10 {
				t.Errorf("context has %d elements, want 1 to 10", len(els))
			}
			for _, e := range els {
				text(t, e.(obj), "text", 3000)
			}
		case "actions":
			for _, e := range field[[]any](t, block, "elements") {
				eo := e.(obj)
				if field[string](t, eo, "type") != "button" {
					t.Errorf("action element %v", eo["type"])
				}
				text(t, field[obj](t, eo, "text"), "text", 75)
				text(t, eo, "url", 3000)
			}
		default:
			t.Errorf("block %d has type %q", i, typ)
		}
	}
}

// checkTeams checks a workflow webhook payload: a message with one
// Adaptive Card 1.4 attachment, a bold wrapped title and facts.
func checkTeams(t *testing.T, body []byte) {
	t.Helper()
	var msg obj
	if err := json.Unmarshal(body, &msg); err != nil {
		t.Fatal(err)
	}
	if field[string](t, msg, "type") != "message" {
		t.Errorf("type %v, want message", msg["type"])
	}
	atts := field[[]any](t, msg, "attachments")
	if len(atts) != 1 {
		t.Fatalf("%d attachments, want 1", len(atts))
	}
	att := atts[0].(obj)
	if field[string](t, att, "contentType") != "application/vnd.microsoft.card.adaptive" {
		t.Errorf("contentType %v", att["contentType"])
	}
	if v, ok := att["contentUrl"]; !ok || v != nil {
		t.Errorf("contentUrl = %v (present %v), want null", v, ok)
	}
	card := field[obj](t, att, "content")
	if card["$schema"] != "http://adaptivecards.io/schemas/adaptive-card.json" || card["type"] != "AdaptiveCard" || card["version"] != "1.4" {
		t.Errorf("card $schema/type/version = %v/%v/%v", card["$schema"], card["type"], card["version"])
	}
	els := field[[]any](t, card, "body")
	if len(els) < 2 {
		t.Fatalf("card body has %d elements", len(els))
	}
	title := els[0].(obj)
	if title["type"] != "TextBlock" || title["weight"] != "Bolder" || title["wrap"] != true {
		t.Errorf("title block %v, want a bold wrapped TextBlock", title)
	}
	facts := 0
	for _, e := range els {
		eo := e.(obj)
		switch eo["type"] {
		case "TextBlock":
			text(t, eo, "text", 2000)
		case "FactSet":
			for _, f := range field[[]any](t, eo, "facts") {
				text(t, f.(obj), "title", 100)
				text(t, f.(obj), "value", 1000)
				facts++
			}
		default:
			t.Errorf("card element type %v", eo["type"])
		}
	}
	if actions, ok := card["actions"].([]any); ok {
		for _, a := range actions {
			ao := a.(obj)
			if ao["type"] != "Action.OpenUrl" {
				t.Errorf("action type %v", ao["type"])
			}
			text(t, ao, "url", 3000)
		}
	}
	if facts == 0 {
		t.Errorf("the card has no facts")
	}
}
