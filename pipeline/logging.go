package pipeline

import (
	"context"
	"log/slog"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/responder-dev/responder/internal/logsample"
)

// logSampleWindow is the least time between two log lines of a kind that
// repeats (see logsample).
const logSampleWindow = 10 * time.Second

// riverLogger hands River's slog records at warn and above to zap, so that
// the queue's own problems appear in the responder's JSON log. A repeating
// one is written once per logSampleWindow with a count: with the store down,
// every queue of every replica logs a failed fetch at each poll.
func riverLogger(logger *zap.Logger) *slog.Logger {
	return slog.New(&zapHandler{log: logger.Named("queue"), sample: logsample.New(logSampleWindow, nil)})
}

type zapHandler struct {
	log    *zap.Logger
	sample *logsample.Sampler
	attrs  []zap.Field
}

func (h *zapHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }

func (h *zapHandler) Handle(_ context.Context, r slog.Record) error {
	fields := append([]zap.Field(nil), h.attrs...)
	r.Attrs(func(a slog.Attr) bool {
		fields = append(fields, zap.Any(a.Key, a.Value.Any()))
		return true
	})
	lvl := zapcore.WarnLevel
	if r.Level >= slog.LevelError {
		lvl = zapcore.ErrorLevel
	}
	h.sample.Write(h.log, lvl, r.Message, r.Message, fields...)
	return nil
}

func (h *zapHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	n := &zapHandler{log: h.log, sample: h.sample, attrs: append([]zap.Field(nil), h.attrs...)}
	for _, a := range attrs {
		n.attrs = append(n.attrs, zap.Any(a.Key, a.Value.Any()))
	}
	return n
}

func (h *zapHandler) WithGroup(string) slog.Handler { return h }
