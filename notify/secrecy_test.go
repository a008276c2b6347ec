package notify

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// The secret parts of the URLs below: a Slack-style path and a Teams
// workflow signature.
const (
	secretPath  = "/services/T0SECRET/B0SECRET/XXXXslackTOKENXXXX"
	secretQuery = "sig=WorkflowSignatureSECRETvalue"
)

// leaks returns the secret that text shows, or "".
func leaks(text, rawURL string) string {
	for _, s := range []string{rawURL, secretPath, "XXXXslackTOKENXXXX", secretQuery, "WorkflowSignatureSECRETvalue", testSecret} {
		if strings.Contains(text, s) {
			return s
		}
	}
	return ""
}

// TestSecretsNeverInErrors: whatever goes wrong (no listener, a timeout, a
// receiver that echoes the request), neither the notifier's URL nor its
// signing secret is in the error, in the answer, or in a log line that
// records the error the way callers do (zap.Error).
func TestSecretsNeverInErrors(t *testing.T) {
	t.Parallel()
	echo := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadRequest)
		// A receiver echoing the request: URL, query, unescaped query,
		// headers.
		q, _ := url.QueryUnescape(r.URL.RawQuery)
		_, _ = io.WriteString(w, "bad request to "+r.URL.String()+" path="+r.URL.Path+" query="+q+" sig="+r.Header.Get(HeaderSignature))
	}))
	t.Cleanup(echo.Close)
	release := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(slow.Close)
	t.Cleanup(func() { close(release) })
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := "http://" + l.Addr().String()
	_ = l.Close()

	for name, base := range map[string]string{"echo": echo.URL, "timeout": slow.URL, "refused": refused} {
		for _, typ := range []string{TypeSlack, TypeTeams, TypeWebhook} {
			rawURL := base + secretPath + "?" + secretQuery
			s := settingsFor(typ, rawURL)
			s.Timeout = 200 * time.Millisecond
			var logs bytes.Buffer
			logger := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(&logs), zapcore.DebugLevel))
			ans, err := send(t, mustNew(t, s, WithLogger(logger)), Sample(Failed, fixedNow))
			if err == nil {
				t.Fatalf("%s/%s: no error", name, typ)
			}
			logger.Warn("notification failed", zap.String("notifier", s.Name), zap.Error(err))
			for what, text := range map[string]string{"error": err.Error(), "answer": ans.Body, "log": logs.String()} {
				if leak := leaks(text, rawURL); leak != "" {
					t.Errorf("%s/%s: the %s shows %q: %s", name, typ, what, leak, text)
				}
			}
		}
	}
}

// TestSecretsNeverInProblems: a bad URL is described, never echoed, by
// Problems and by New.
func TestSecretsNeverInProblems(t *testing.T) {
	t.Parallel()
	for _, raw := range []string{
		"http://hooks.example.com" + secretPath,               // not https
		"ftp://hooks.example.com" + secretPath,                // not http(s)
		"https://" + secretPath,                               // no host
		"https://hooks.example.com" + secretPath + "%zz",      // bad escape
		"https://hooks.example.com" + secretPath + "\n" + "x", // control character
		"hooks.example.com" + secretPath,                      // not absolute
	} {
		s := Settings{Name: "soc", Type: TypeSlack, URL: raw}
		ps := s.Problems()
		if len(ps) != 1 || ps[0].Key != "url" {
			t.Errorf("Problems(%q) = %v, want one url problem", raw, ps)
		}
		_, err := New(s)
		if err == nil {
			t.Fatalf("New accepted %q", raw)
		}
		for _, text := range []string{err.Error(), ps[0].Msg} {
			if leak := leaks(text, raw); leak != "" {
				t.Errorf("%q shows %q", text, leak)
			}
		}
	}
}

// TestSecretsNotInMessages: no message carries the notifier's URL or the
// signing secret, whatever the kind.
func TestSecretsNotInMessages(t *testing.T) {
	t.Parallel()
	rcv := newReceiver(t, http.StatusOK, "ok")
	for _, typ := range []string{TypeSlack, TypeTeams, TypeWebhook} {
		rawURL := rcv.srv.URL + secretPath + "?" + secretQuery
		n := mustNew(t, settingsFor(typ, rawURL))
		for _, k := range Kinds() {
			if _, err := send(t, n, Sample(k, fixedNow)); err != nil {
				t.Fatal(err)
			}
			req := rcv.next(t)
			if leak := leaks(string(req.body), rawURL); leak != "" {
				t.Errorf("%s/%s: the message shows %q", typ, k, leak)
			}
		}
	}
}

// TestScrubKeepsErrorChain: scrubbing an error's text keeps errors.Is.
func TestScrubKeepsErrorChain(t *testing.T) {
	t.Parallel()
	sc := newScrubber("https://hooks.example.com"+secretPath, testSecret)
	inner := &url.Error{Op: "Post", URL: "https://hooks.example.com" + secretPath, Err: context.DeadlineExceeded}
	err := sc.err(inner)
	if leak := leaks(err.Error(), "https://hooks.example.com"+secretPath); leak != "" {
		t.Errorf("%q shows %q", err, leak)
	}
	if !strings.Contains(err.Error(), redacted) {
		t.Errorf("%q does not say what was removed", err)
	}
	if !strings.Contains(err.Error(), context.DeadlineExceeded.Error()) {
		t.Errorf("%q lost the cause", err)
	}
}
