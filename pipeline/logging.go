package pipeline

import (
	"context"
	"log/slog"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// riverLogger hands River's slog records at warn and above to zap, so that
// the queue's own problems appear in the responder's JSON log.
func riverLogger(logger *zap.Logger) *slog.Logger {
	return slog.New(&zapHandler{log: logger.Named("queue")})
}

type zapHandler struct {
	log   *zap.Logger
	attrs []zap.Field
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
	if ce := h.log.Check(lvl, r.Message); ce != nil {
		ce.Write(fields...)
	}
	return nil
}

func (h *zapHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	n := &zapHandler{log: h.log, attrs: append([]zap.Field(nil), h.attrs...)}
	for _, a := range attrs {
		n.attrs = append(n.attrs, zap.Any(a.Key, a.Value.Any()))
	}
	return n
}

func (h *zapHandler) WithGroup(string) slog.Handler { return h }
