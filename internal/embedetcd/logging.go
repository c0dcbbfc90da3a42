package embedetcd

import (
	"context"
	"log/slog"
	"maps"
	"slices"
	"sync/atomic"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// newZapLogger returns a zap logger for etcd that forwards its error-level (and worse) entries to
// logger and drops the rest: etcd logs several lines per request at info and warns about things a
// single loopback member does by design (no TLS, one port for HTTP and gRPC).
// Once closing is set (Server.Close), errors become debug lines: etcd logs its listeners failing
// as they are closed under it.
func newZapLogger(logger *slog.Logger, closing *atomic.Bool) *zap.Logger {
	return zap.New(&slogCore{logger: logger, min: zapcore.ErrorLevel, closing: closing})
}

// slogCore is a zapcore.Core writing to a slog.Logger.
type slogCore struct {
	closing *atomic.Bool
	logger  *slog.Logger
	min     zapcore.Level
	fields  []zapcore.Field
}

func (c *slogCore) Enabled(l zapcore.Level) bool { return l >= c.min }

func (c *slogCore) With(fields []zapcore.Field) zapcore.Core {
	return &slogCore{closing: c.closing, logger: c.logger, min: c.min, fields: append(c.fields[:len(c.fields):len(c.fields)], fields...)}
}

func (c *slogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *slogCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range c.fields {
		f.AddTo(enc)
	}
	for _, f := range fields {
		f.AddTo(enc)
	}
	attrs := make([]slog.Attr, 0, len(enc.Fields)+1)
	if e.LoggerName != "" {
		attrs = append(attrs, slog.String("logger", e.LoggerName))
	}
	for _, k := range slices.Sorted(maps.Keys(enc.Fields)) {
		attrs = append(attrs, slog.Any(k, enc.Fields[k]))
	}
	level := slog.LevelError
	switch {
	case e.Level < zapcore.InfoLevel:
		level = slog.LevelDebug
	case e.Level < zapcore.WarnLevel:
		level = slog.LevelInfo
	case e.Level < zapcore.ErrorLevel:
		level = slog.LevelWarn
	}
	if c.closing != nil && c.closing.Load() {
		level = slog.LevelDebug
	}
	c.logger.LogAttrs(context.Background(), level, e.Message, attrs...)
	return nil
}

func (c *slogCore) Sync() error { return nil }
