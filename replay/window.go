package replay

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/responder-dev/responder/alert"
	"github.com/responder-dev/responder/internal/yamlx"
	"github.com/responder-dev/responder/store"
)

// DefaultSince is the window replayed when none is given.
const DefaultSince = "7d"

// WindowError is a window or source that cannot be replayed: the message
// says what and why, in one line, for the command line and the API alike.
type WindowError struct {
	Msg string
	err error
}

func (e *WindowError) Error() string { return e.Msg }

func (e *WindowError) Unwrap() error { return e.err }

// IsBadInput reports whether err is the caller's mistake (a bad window, an
// empty one) rather than a failure of the store.
func IsBadInput(err error) bool {
	var we *WindowError
	return errors.As(err, &we)
}

// ParseWindow reads the window of a replay: since (a duration before now:
// "7d", "36h") or from and to (RFC 3339; to defaults to now), and a source
// ("" for all). The command line and POST /api/v1/replay both use it.
func ParseWindow(since, from, to, source string, now time.Time) (store.ReplayWindow, error) {
	w := store.ReplayWindow{Source: source}
	if source != "" && !slices.Contains(alert.Sources, alert.Source(source)) {
		return w, &WindowError{Msg: fmt.Sprintf("unknown source %q: use one of %v", source, alert.Sources)}
	}
	if since != "" && (from != "" || to != "") {
		return w, &WindowError{Msg: "give either since or from/to, not both"}
	}
	if from == "" && to != "" {
		return w, &WindowError{Msg: "to needs from"}
	}
	w.To = now
	if from == "" {
		if since == "" {
			since = DefaultSince
		}
		d, err := yamlx.ParseDuration(since)
		if err != nil || d <= 0 {
			return w, &WindowError{Msg: fmt.Sprintf("since %q is not a positive duration (e.g. 7d, 36h, 90m)", since)}
		}
		w.From = now.Add(-d)
		return w, nil
	}
	var err error
	if w.From, err = time.Parse(time.RFC3339, from); err != nil {
		return w, &WindowError{Msg: fmt.Sprintf("from %q is not an RFC 3339 time (e.g. 2026-12-01T00:00:00Z)", from)}
	}
	if to != "" {
		if w.To, err = time.Parse(time.RFC3339, to); err != nil {
			return w, &WindowError{Msg: fmt.Sprintf("to %q is not an RFC 3339 time (e.g. 2026-12-08T00:00:00Z)", to)}
		}
	}
	if !w.From.Before(w.To) {
		return w, &WindowError{Msg: fmt.Sprintf("from (%s) is not before to (%s)", w.From.UTC().Format(time.RFC3339), w.To.UTC().Format(time.RFC3339))}
	}
	return w, nil
}
