package notify

import (
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// TestLogNotifier: the log type writes one Info line "notification" with
// the keys notifier, event and message (the document), answers 200
// "logged", and keeps the approval link (a credential) out of the log.
func TestLogNotifier(t *testing.T) {
	t.Parallel()
	core, logs := observer.New(zapcore.DebugLevel)
	n := mustNew(t, settingsFor(TypeLog, ""), WithLogger(zap.New(core)))
	ev := Sample(ApprovalRequested, fixedNow)
	ans, err := send(t, n, ev)
	if err != nil || ans != (Answer{Status: 200, Body: "logged"}) {
		t.Fatalf("Send = %+v, %v", ans, err)
	}
	entries := logs.All()
	if len(entries) != 1 {
		t.Fatalf("%d log lines, want 1", len(entries))
	}
	e := entries[0]
	if e.Level != zapcore.InfoLevel || e.Message != "notification" {
		t.Errorf("line %s %q", e.Level, e.Message)
	}
	fields := e.ContextMap()
	if fields["notifier"] != "test-log" || fields["event"] != "approval_requested" {
		t.Errorf("fields %v", fields)
	}
	msg, ok := fields["message"].(Event)
	if !ok {
		t.Fatalf("message is %T", fields["message"])
	}
	if msg.ID != ev.ID || msg.Version != Version || msg.Approval == nil || msg.Approval.URL != redacted {
		t.Errorf("message %+v (approval %+v)", msg, msg.Approval)
	}
	if ev.Approval.URL == redacted {
		t.Error("Send changed the caller's event")
	}
}
