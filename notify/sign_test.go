package notify

import (
	"errors"
	"strconv"
	"testing"
	"time"
)

// TestSign: the signature is HMAC-SHA256 over "<ts>.<body>", checked
// against a value computed with openssl:
// printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac secret
func TestSign(t *testing.T) {
	t.Parallel()
	got := Sign([]byte("secret"), 1700000000, []byte(`{"a":1}`))
	if want := "sha256=49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686"; got != want {
		t.Errorf("Sign = %s, want %s", got, want)
	}
}

// TestVerify: Verify accepts exactly a fresh delivery signed with the
// secret over the body as sent.
func TestVerify(t *testing.T) {
	t.Parallel()
	secret := []byte(testSecret)
	body := []byte(`{"version":"1","event":"collected"}`)
	ts := fixedNow.Unix()
	sig := Sign(secret, ts, body)
	tsh := strconv.FormatInt(ts, 10)
	for _, tc := range []struct {
		name    string
		secret  []byte
		ts, sig string
		body    string
		now     time.Time
		maxSkew time.Duration
		wantErr error
	}{
		{name: "valid", secret: secret, ts: tsh, sig: sig, body: string(body), now: fixedNow},
		{name: "valid within skew, late", secret: secret, ts: tsh, sig: sig, body: string(body), now: fixedNow.Add(5 * time.Minute)},
		{name: "valid within skew, early", secret: secret, ts: tsh, sig: sig, body: string(body), now: fixedNow.Add(-5 * time.Minute)},
		{name: "default skew", secret: secret, ts: tsh, sig: sig, body: string(body), now: fixedNow.Add(4 * time.Minute), maxSkew: -1},
		{name: "stale", secret: secret, ts: tsh, sig: sig, body: string(body), now: fixedNow.Add(5*time.Minute + time.Second), wantErr: ErrStaleTimestamp},
		{name: "from the future", secret: secret, ts: tsh, sig: sig, body: string(body), now: fixedNow.Add(-6 * time.Minute), wantErr: ErrStaleTimestamp},
		{name: "tight skew", secret: secret, ts: tsh, sig: sig, body: string(body), now: fixedNow.Add(2 * time.Second), maxSkew: time.Second, wantErr: ErrStaleTimestamp},
		{name: "tampered body", secret: secret, ts: tsh, sig: sig, body: `{"version":"1","event":"failed"}`, now: fixedNow, wantErr: ErrBadSignature},
		{name: "body with a trailing newline", secret: secret, ts: tsh, sig: sig, body: string(body) + "\n", now: fixedNow, wantErr: ErrBadSignature},
		{name: "timestamp changed", secret: secret, ts: strconv.FormatInt(ts+1, 10), sig: sig, body: string(body), now: fixedNow, wantErr: ErrBadSignature},
		{name: "other secret", secret: []byte("another-secret-of-16+"), ts: tsh, sig: sig, body: string(body), now: fixedNow, wantErr: ErrBadSignature},
		{name: "no prefix", secret: secret, ts: tsh, sig: sig[len("sha256="):], body: string(body), now: fixedNow, wantErr: ErrBadSignature},
		{name: "not hex", secret: secret, ts: tsh, sig: "sha256=zz", body: string(body), now: fixedNow, wantErr: ErrBadSignature},
		{name: "truncated", secret: secret, ts: tsh, sig: sig[:len(sig)-2], body: string(body), now: fixedNow, wantErr: ErrBadSignature},
		{name: "no signature", secret: secret, ts: tsh, body: string(body), now: fixedNow, wantErr: ErrBadSignature},
		{name: "no timestamp", secret: secret, sig: sig, body: string(body), now: fixedNow, wantErr: ErrBadTimestamp},
		{name: "timestamp not a number", secret: secret, ts: "yesterday", sig: sig, body: string(body), now: fixedNow, wantErr: ErrBadTimestamp},
		{name: "no secret", ts: tsh, sig: sig, body: string(body), now: fixedNow, wantErr: ErrNoSecret},
	} {
		err := Verify(tc.secret, tc.ts, tc.sig, []byte(tc.body), tc.now, tc.maxSkew)
		if tc.wantErr == nil && err != nil || tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
			t.Errorf("%s: Verify = %v, want %v", tc.name, err, tc.wantErr)
		}
	}
}
