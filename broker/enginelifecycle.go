package broker

import (
	"context"
	"log/slog"
)

// engineLifecycle are the engine's messages about its own assembly and
// teardown: one line per hook and listener at each start and stop. They
// say nothing a user acts on, so they are logged at Debug, not Info.
var engineLifecycle = map[string]bool{
	"added hook":                 true,
	"attached listener":          true,
	"stopping hook":              true,
	"mochi mqtt starting":        true,
	"mochi mqtt server started":  true,
	"gracefully stopping server": true,
	"mochi mqtt server stopped":  true,
}

// quietLifecycle wraps the engine's log handler so that its lifecycle
// messages at Info go out at Debug.
type quietLifecycle struct{ slog.Handler }

func (h quietLifecycle) Enabled(ctx context.Context, l slog.Level) bool {
	// The level of a record is known only in Handle: let Info through here
	// and decide there.
	return h.Handler.Enabled(ctx, l) || l == slog.LevelInfo && h.Handler.Enabled(ctx, slog.LevelDebug)
}

func (h quietLifecycle) Handle(ctx context.Context, r slog.Record) error {
	if r.Level == slog.LevelInfo && engineLifecycle[r.Message] {
		r.Level = slog.LevelDebug
	}
	if !h.Handler.Enabled(ctx, r.Level) {
		return nil
	}
	return h.Handler.Handle(ctx, r)
}

func (h quietLifecycle) WithAttrs(as []slog.Attr) slog.Handler {
	return quietLifecycle{h.Handler.WithAttrs(as)}
}

func (h quietLifecycle) WithGroup(name string) slog.Handler {
	return quietLifecycle{h.Handler.WithGroup(name)}
}
