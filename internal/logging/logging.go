// Package logging builds the service's zap logger (SPEC section 9) and owns
// the values log.level and log.format accept, so that `check` refuses
// exactly what `serve` cannot build.
package logging

import (
	"fmt"
	"io"
	"os"
	"strings"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Levels are the values of log.level, lowest first.
var Levels = []string{"debug", "info", "warn", "error"}

// Formats are the values of log.format.
var Formats = []string{"json", "console"}

// Defaults of log.level and log.format.
const (
	DefaultLevel  = "info"
	DefaultFormat = "json"
)

var levels = map[string]zapcore.Level{
	"debug": zapcore.DebugLevel, "info": zapcore.InfoLevel, "warn": zapcore.WarnLevel, "error": zapcore.ErrorLevel,
}

// CheckLevel returns why level is not a log.level, or nil.
func CheckLevel(level string) error {
	if _, ok := levels[level]; !ok {
		return fmt.Errorf("unknown level %q (want one of %s)", level, quoteList(Levels))
	}
	return nil
}

// CheckFormat returns why format is not a log.format, or nil.
func CheckFormat(format string) error {
	switch format {
	case "json", "console":
		return nil
	}
	return fmt.Errorf("unknown format %q (want one of %s)", format, quoteList(Formats))
}

// New builds the logger: one JSON object per line on w with the keys ts,
// level and msg, or a console format. When w is a file or pipe, lines
// logged together are written together (groupWriter); logger.Sync writes
// what is pending.
func New(level, format string, w io.Writer) (*zap.Logger, error) {
	if err := CheckLevel(level); err != nil {
		return nil, fmt.Errorf("log.level: %w", err)
	}
	if err := CheckFormat(format); err != nil {
		return nil, fmt.Errorf("log.format: %w", err)
	}
	enc := zapcore.EncoderConfig{
		TimeKey:        "ts",
		LevelKey:       "level",
		NameKey:        "logger",
		MessageKey:     "msg",
		StacktraceKey:  "stacktrace",
		LineEnding:     zapcore.DefaultLineEnding,
		EncodeLevel:    zapcore.LowercaseLevelEncoder,
		EncodeTime:     zapcore.RFC3339NanoTimeEncoder,
		EncodeDuration: zapcore.StringDurationEncoder,
	}
	var encoder zapcore.Encoder
	if format == "console" {
		enc.EncodeLevel = zapcore.CapitalLevelEncoder
		encoder = zapcore.NewConsoleEncoder(enc)
	} else {
		encoder = zapcore.NewJSONEncoder(enc)
	}
	var sink zapcore.WriteSyncer
	if f, ok := w.(*os.File); ok {
		// A file or pipe (stdout): one write per line would be a system
		// call per line, a large part of an alert's cost under load.
		sink = newGroupWriter(f)
	} else {
		sink = zapcore.Lock(zapcore.AddSync(w))
	}
	core := zapcore.NewCore(encoder, sink, levels[level])
	return zap.New(core, zap.AddStacktrace(zapcore.DPanicLevel)), nil
}

func quoteList(set []string) string {
	q := make([]string, len(set))
	for i, s := range set {
		q[i] = fmt.Sprintf("%q", s)
	}
	return strings.Join(q, ", ")
}
