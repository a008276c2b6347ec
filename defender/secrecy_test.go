package defender

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/responder-dev/responder/alert"
)

// TestSecretsNeverLeak runs the error paths with a known client secret,
// access token and package URL token, and asserts that no error text and no
// log line (at debug level, every field) contains any of them. The error
// paths include write-back's, whose Graph token is a second access token.
func TestSecretsNeverLeak(t *testing.T) {
	t.Parallel()
	const (
		accessToken = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.SECRET-ACCESS-TOKEN-payload.c2lnbmF0dXJl"
		urlToken    = "PKG-URL-TOKEN-77c1e0"
	)
	secrets := []string{testSecret, accessToken, urlToken, "Bearer " + accessToken[:20]}

	var errs []error
	var bundles []*bundle

	// The API paths: each machine id selects an answer. Servers echo what
	// they received where a careless one might.
	answers := []func(w http.ResponseWriter, r *http.Request){
		func(w http.ResponseWriter, r *http.Request) {
			writeError(w, 400, "ActiveRequestAlreadyExists", "Action is already in progress")
		},
		func(w http.ResponseWriter, r *http.Request) {
			writeError(w, 401, "Unauthorized", "token "+strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")+" was refused")
		},
		func(w http.ResponseWriter, r *http.Request) {
			writeError(w, 403, "Forbidden", "header was "+r.Header.Get("Authorization"))
		},
		func(w http.ResponseWriter, r *http.Request) {
			writeError(w, 404, "ResourceNotFound", "Machine was not found")
		},
		func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Retry-After", "5")
			writeError(w, 429, "TooManyRequests", "quota")
		},
		func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(500)
			_, _ = w.Write([]byte("<html>" + r.Header.Get("Authorization") + "</html>"))
		},
		func(w http.ResponseWriter, r *http.Request) {
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				_ = conn.Close()
			}
		},
		func(w http.ResponseWriter, r *http.Request) {
			// The server notices a client that gave up only once the body is read.
			_, _ = io.Copy(io.Discard, r.Body)
			<-r.Context().Done()
		},
	}
	machine := func(i int) string { return fmt.Sprintf("%040x", i) }
	alertID := func(i int) string { return fmt.Sprintf("leak-%d-alert", i) }
	tokens := &tokenServer{answer: func(w http.ResponseWriter, n int64) {
		writeV2Token(w, fmt.Sprintf("%s-%d", accessToken, n))
	}}
	var api *bundle
	api = setup(t, func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasSuffix(r.URL.Path, "/getPackageUri"):
			writeJSON(w, 200, `{"value":"\"`+api.srv.URL+`/safedownload/WDATP_Investigation_Package.zip?token=`+urlToken+`\""}`)
			return
		case strings.HasPrefix(r.URL.Path, "/safedownload/forbidden"):
			w.WriteHeader(403)
			_, _ = w.Write([]byte("<Error><Code>AuthenticationFailed</Code><Message>" + r.URL.String() + "</Message></Error>"))
			return
		case strings.HasPrefix(r.URL.Path, "/safedownload/drop"):
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				_ = conn.Close()
			}
			return
		case strings.HasPrefix(r.URL.Path, "/safedownload/hang"):
			<-r.Context().Done()
			return
		case strings.HasPrefix(r.URL.Path, "/safedownload/redirect"):
			// To a host outside the package hosts, the link's token along.
			http.Redirect(w, r, "https://evil.example.com/steal?"+r.URL.RawQuery, http.StatusTemporaryRedirect)
			return
		case strings.HasPrefix(r.URL.Path, "/safedownload/huge"):
			w.Header().Set("Content-Length", "3000000000")
			return
		}
		for i, answer := range answers {
			if strings.Contains(r.URL.Path, machine(i)) || strings.Contains(r.URL.Path, "/"+alertID(i)) {
				answer(w, r)
				return
			}
		}
		writeJSON(w, 200, `{"value":[]}`)
	}, setupOpts{tokens: tokens, cfg: func(c *Config) {
		// Short, for the paths that hang, but long enough for the others
		// on a loaded machine.
		c.Timeout = time.Second
		c.DownloadTimeout = time.Second
		// Write-back: the Graph calls go to the same server, with a
		// second token from the same token server.
		c.WriteBack, c.GraphURL = true, c.APIURL
	}})
	bundles = append(bundles, api)
	ctx := context.Background()
	for i := range answers {
		_, err := api.client.CollectInvestigationPackage(ctx, machine(i), "Collect forensics due to alert "+testAlertID)
		errs = append(errs, err)
		_, err = api.client.GetMachine(ctx, machine(i))
		errs = append(errs, err)
		errs = append(errs, api.client.CommentAlert(ctx, AlertRef{Source: alert.SourceDefender, ID: alertID(i)}, "Collected"))
		errs = append(errs, api.client.CommentAlert(ctx, AlertRef{Source: alert.SourceGraph, ID: alertID(i)}, "Collected"))
		api.clock.Advance(time.Minute) // past the throttle a 429 answer sets
	}
	uri, err := api.client.GetPackageURI(ctx, testAction)
	if err != nil || !strings.Contains(uri, urlToken) {
		t.Fatalf("GetPackageURI: %v", err)
	}
	dir := t.TempDir()
	for _, u := range []string{
		strings.Replace(uri, "/safedownload/", "/safedownload/forbidden/", 1),
		strings.Replace(uri, "/safedownload/", "/safedownload/drop/", 1),
		strings.Replace(uri, "/safedownload/", "/safedownload/hang/", 1),
		strings.Replace(uri, "/safedownload/", "/safedownload/redirect/", 1),
		strings.Replace(uri, "/safedownload/", "/safedownload/huge/", 1),
		strings.Replace(uri, api.srv.URL, "https://evil.example.com", 1),
		strings.Replace(uri, api.srv.URL, "http://storage.example.com", 1),
		strings.Replace(uri, api.srv.URL, "ftp://storage.example.com", 1),
		strings.Replace(uri, api.srv.URL, "https://[::1", 1),
		strings.Replace(uri, api.srv.URL, "http://127.0.0.1:1", 1), // nothing listens
	} {
		_, _, err := api.client.DownloadPackage(ctx, u, filepath.Join(dir, "p.zip"))
		errs = append(errs, err)
	}

	// The login endpoint refuses, echoing the secret in its description.
	refused := setup(t, nil, setupOpts{tokens: &tokenServer{answer: func(w http.ResponseWriter, _ int64) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(401)
		fmt.Fprintf(w, `{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided: %s"}`, testSecret)
	}}, cfg: func(c *Config) { c.WriteBack, c.GraphURL = true, c.APIURL }})
	bundles = append(bundles, refused)
	_, err = refused.client.CollectInvestigationPackage(ctx, testMachine, "c")
	errs = append(errs, err)
	errs = append(errs, refused.client.CommentAlert(ctx, AlertRef{Source: alert.SourceGraph, ID: testAlertID}, "c"))
	errs = append(errs, refused.client.CheckGraphToken(ctx))
	gateway := setup(t, nil, setupOpts{tokens: &tokenServer{answer: func(w http.ResponseWriter, _ int64) {
		w.WriteHeader(502)
		fmt.Fprintf(w, "<html>upstream said client_secret=%s</html>", testSecret)
	}}})
	bundles = append(bundles, gateway)
	_, err = gateway.client.GetMachine(ctx, testMachine)
	errs = append(errs, err)
	// The login endpoint redirects to a plain-http server: not followed.
	thief := newRecorder(t, false)
	redirected := setup(t, nil, setupOpts{tokens: &tokenServer{answer: func(w http.ResponseWriter, _ int64) {
		http.Redirect(w, &http.Request{Method: http.MethodPost}, thief.srv.URL+"/steal", http.StatusTemporaryRedirect)
	}}})
	bundles = append(bundles, redirected)
	_, err = redirected.client.GetMachine(ctx, testMachine)
	errs = append(errs, err)
	if thief.count() != 0 {
		t.Errorf("the token redirect was followed: %q", thief.bodys)
	}

	var texts []string
	for i, err := range errs {
		if err == nil {
			t.Errorf("error path %d succeeded", i)
			continue
		}
		texts = append(texts, err.Error(), fmt.Sprintf("%+v", err))
	}
	for _, b := range bundles {
		texts = append(texts, logText(b.logs)...)
	}
	if len(texts) < 40 {
		t.Fatalf("only %d texts captured", len(texts))
	}
	for _, text := range texts {
		for _, s := range secrets {
			if strings.Contains(text, s) {
				t.Errorf("%q leaks %q", text, s)
			}
		}
	}
}
