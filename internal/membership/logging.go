package membership

import (
	"bytes"
	"context"
	"log"
	"log/slog"
)

// slogWriter turns memberlist's log lines into slog records.
//
// Hand-written because memberlist only accepts a *log.Logger or an io.Writer (Config.Logger /
// LogOutput) and encodes the level as a text prefix ("[DEBUG] memberlist: …", "[WARN] …",
// "[ERR] …"); slog has no adapter in that direction (slog.NewLogLogger goes the other way and
// logs every line at one level). A *log.Logger with no flags makes exactly one Write per line, and
// serialises its Writes, so this needs no buffering or locking of its own.
type slogWriter struct {
	logger *slog.Logger
}

// newMemberlistLogger returns the *log.Logger to hand memberlist.
func newMemberlistLogger(l *slog.Logger) *log.Logger {
	return log.New(slogWriter{logger: l}, "", 0)
}

var levelPrefixes = []struct {
	prefix []byte
	level  slog.Level
}{
	{[]byte("[TRACE]"), slog.LevelDebug},
	{[]byte("[DEBUG]"), slog.LevelDebug},
	{[]byte("[INFO]"), slog.LevelInfo},
	{[]byte("[WARN]"), slog.LevelWarn},
	{[]byte("[ERR]"), slog.LevelError},
	{[]byte("[ERROR]"), slog.LevelError},
}

// Write logs one line. A line without a known level prefix (memberlist has a few) logs at Info.
func (w slogWriter) Write(p []byte) (int, error) {
	line := bytes.TrimRight(p, "\r\n")
	level := slog.LevelInfo
	for _, lp := range levelPrefixes {
		if bytes.HasPrefix(line, lp.prefix) {
			level = lp.level
			line = bytes.TrimLeft(line[len(lp.prefix):], " ")
			break
		}
	}
	// memberlist's gossip goroutine can still send for a moment after Shutdown closed its transport;
	// that is the node stopping, not a failure worth an error line.
	if level == slog.LevelError && bytes.Contains(line, []byte("use of closed network connection")) {
		level = slog.LevelDebug
	}
	ctx := context.Background()
	if w.logger.Enabled(ctx, level) {
		// "memberlist: " and "memberlist.net: " name the source; keep it as an attribute.
		src := "memberlist"
		if i := bytes.Index(line, []byte(": ")); i > 0 && bytes.HasPrefix(line, []byte("memberlist")) && bytes.IndexByte(line[:i], ' ') < 0 {
			src, line = string(line[:i]), line[i+2:]
		}
		w.logger.Log(ctx, level, string(line), "component", src)
	}
	return len(p), nil
}
