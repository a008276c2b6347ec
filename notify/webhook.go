package notify

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// The webhook's headers.
const (
	HeaderEvent     = "X-Responder-Event"
	HeaderDelivery  = "X-Responder-Delivery"
	HeaderTimestamp = "X-Responder-Timestamp"
	HeaderSignature = "X-Responder-Signature"
)

// DefaultMaxSkew is how far a webhook's timestamp may be from the
// receiver's clock when Verify is given no bound.
const DefaultMaxSkew = 5 * time.Minute

// encodeWebhook renders ev as the versioned document, exactly, with its
// headers; when a secret is set, the body is signed as sent.
func (p *poster) encodeWebhook(ev Event) ([]byte, http.Header, error) {
	body, err := json.Marshal(ev)
	if err != nil {
		return nil, nil, err
	}
	h := http.Header{}
	h.Set(HeaderEvent, string(ev.Kind))
	h.Set(HeaderDelivery, ev.ID)
	if len(p.secret) > 0 {
		ts := p.now().Unix()
		h.Set(HeaderTimestamp, strconv.FormatInt(ts, 10))
		h.Set(HeaderSignature, Sign(p.secret, ts, body))
	}
	return body, h, nil
}

// signaturePrefix names the signature's algorithm.
const signaturePrefix = "sha256="

// Sign returns the webhook signature of body sent at ts (Unix seconds):
// "sha256=" and the hex HMAC-SHA256 with secret of "<ts>.<body>".
func Sign(secret []byte, ts int64, body []byte) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(strconv.FormatInt(ts, 10)))
	mac.Write([]byte{'.'})
	mac.Write(body)
	return signaturePrefix + hex.EncodeToString(mac.Sum(nil))
}

// The errors of Verify; read them with errors.Is.
var (
	// ErrNoSecret: Verify was given an empty secret.
	ErrNoSecret = errors.New("no signing secret")
	// ErrBadTimestamp: the timestamp header is missing or not Unix seconds.
	ErrBadTimestamp = errors.New("malformed timestamp")
	// ErrStaleTimestamp: the timestamp is further from now than allowed
	// (a replayed or delayed delivery).
	ErrStaleTimestamp = errors.New("timestamp outside the allowed skew")
	// ErrBadSignature: the signature is missing, malformed or does not
	// match the body.
	ErrBadSignature = errors.New("signature does not match")
)

// Verify checks a webhook delivery, for receivers written in Go and for
// tests: tsHeader and sigHeader are the X-Responder-Timestamp and
// X-Responder-Signature headers, body the raw body. The timestamp must be
// within maxSkew of now (DefaultMaxSkew when maxSkew <= 0); the signature
// is compared in constant time.
func Verify(secret []byte, tsHeader, sigHeader string, body []byte, now time.Time, maxSkew time.Duration) error {
	if len(secret) == 0 {
		return ErrNoSecret
	}
	if maxSkew <= 0 {
		maxSkew = DefaultMaxSkew
	}
	ts, err := strconv.ParseInt(strings.TrimSpace(tsHeader), 10, 64)
	if err != nil {
		return fmt.Errorf("verify webhook: %w", ErrBadTimestamp)
	}
	skew := now.Sub(time.Unix(ts, 0))
	if skew < -maxSkew || skew > maxSkew {
		return fmt.Errorf("verify webhook: %w (%s off, at most %s)", ErrStaleTimestamp, skew.Round(time.Second), maxSkew)
	}
	sig, ok := strings.CutPrefix(strings.TrimSpace(sigHeader), signaturePrefix)
	if !ok {
		return fmt.Errorf("verify webhook: %w: want %s<hex>", ErrBadSignature, signaturePrefix)
	}
	got, err := hex.DecodeString(sig)
	if err != nil {
		return fmt.Errorf("verify webhook: %w: not hex", ErrBadSignature)
	}
	want, _ := hex.DecodeString(strings.TrimPrefix(Sign(secret, ts, body), signaturePrefix))
	if !hmac.Equal(got, want) {
		return fmt.Errorf("verify webhook: %w", ErrBadSignature)
	}
	return nil
}
