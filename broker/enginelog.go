package broker

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tether-iot/tether/internal/logtext"
)

// engineLog is the slog.Handler the engine (and the hooks it hands a
// logger to) logs through. The engine logs whole packets ("pk", "packet")
// and wills, with their payloads and a CONNECT's password, at WARN when a
// client misbehaves; a client repeating its mistake can write hundreds of
// megabytes of log a minute. So, at every level:
//
//   - a packet becomes a one-line summary (type, packet id, QoS, topic,
//     payload length), never its payload or credentials;
//   - an attribute named like a secret or a payload (password, secret,
//     token, payload, will, auth) is replaced by "[redacted]", and one of
//     any other type the handler does not know to be safe by its type
//     name; strings (client ids are the client's to choose) are cut
//     (logtext.Short);
//
// and at WARN and above, the same message for the same client is written
// once per window (a minute): the repeats are counted and written as one
// line with "repeated" when the window ends. Keys are bounded: past
// maxFoldKeys, clients share one key per message.
type engineLog struct {
	inner slog.Handler
	fold  *folder
}

// newEngineLog wraps inner; window is the folding window (a minute when 0).
func newEngineLog(inner slog.Handler, window time.Duration) *engineLog {
	if window <= 0 {
		window = time.Minute
	}
	return &engineLog{inner: inner, fold: &folder{window: window, keys: map[foldKey]*foldEntry{}}}
}

const (
	maxFoldKeys = 1024
)

// Enabled implements slog.Handler.
func (h *engineLog) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, l)
}

// WithAttrs implements slog.Handler.
func (h *engineLog) WithAttrs(as []slog.Attr) slog.Handler {
	clean := make([]slog.Attr, len(as))
	for i, a := range as {
		clean[i] = cleanAttr(a)
	}
	return &engineLog{inner: h.inner.WithAttrs(clean), fold: h.fold}
}

// WithGroup implements slog.Handler.
func (h *engineLog) WithGroup(name string) slog.Handler {
	return &engineLog{inner: h.inner.WithGroup(name), fold: h.fold}
}

// Handle implements slog.Handler.
func (h *engineLog) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	client := ""
	r.Attrs(func(a slog.Attr) bool {
		a = cleanAttr(a)
		if a.Key == "client" {
			client = a.Value.String()
		}
		out.AddAttrs(a)
		return true
	})
	now := r.Time
	if now.IsZero() {
		now = time.Now()
	}
	for _, s := range h.fold.due(now) {
		sr := slog.NewRecord(now, s.key.level, s.key.msg, 0)
		sr.AddAttrs(slog.String("client", s.key.client), slog.Int("repeated", s.n), slog.Duration("window", h.fold.window))
		_ = h.inner.Handle(ctx, sr)
	}
	if r.Level >= slog.LevelWarn && !h.fold.first(foldKey{r.Level, r.Message, client}, now) {
		return nil
	}
	return h.inner.Handle(ctx, out)
}

// cleanAttr returns a with nothing secret or payload in it.
func cleanAttr(a slog.Attr) slog.Attr {
	a.Value = a.Value.Resolve()
	if secretKey(a.Key) {
		return slog.String(a.Key, "[redacted]")
	}
	switch a.Value.Kind() {
	case slog.KindString:
		return slog.String(a.Key, logtext.Short(a.Value.String()))
	case slog.KindGroup:
		as := a.Value.Group()
		clean := make([]any, len(as))
		for i, g := range as {
			clean[i] = cleanAttr(g)
		}
		return slog.Group(a.Key, clean...)
	case slog.KindAny:
		switch v := a.Value.Any().(type) {
		case packets.Packet:
			return slog.String(a.Key, packetSummary(&v))
		case *packets.Packet:
			return slog.String(a.Key, packetSummary(v))
		case packets.Code:
			return slog.String(a.Key, v.Error())
		case net.Addr:
			return slog.String(a.Key, v.String())
		case error:
			return slog.String(a.Key, logtext.Short(v.Error()))
		case nil:
			return a
		default:
			return slog.String(a.Key, fmt.Sprintf("[%T redacted]", v))
		}
	}
	return a // numbers, bools, durations, times
}

// secretKey reports whether an attribute's name says it holds a
// credential or a payload.
func secretKey(k string) bool {
	k = strings.ToLower(k)
	for _, s := range []string{"password", "passwd", "secret", "token", "payload", "will", "auth"} {
		if strings.Contains(k, s) {
			return true
		}
	}
	return false
}

// packetSummary describes pk without its payload or credentials.
func packetSummary(pk *packets.Packet) string {
	name, ok := packets.PacketNames[pk.FixedHeader.Type]
	if !ok {
		name = fmt.Sprintf("type %d", pk.FixedHeader.Type)
	}
	s := fmt.Sprintf("%s id=%d qos=%d", name, pk.PacketID, pk.FixedHeader.Qos)
	if pk.FixedHeader.Type == packets.Publish {
		s += fmt.Sprintf(" topic=%q payload_bytes=%d", logtext.Short(pk.TopicName), len(pk.Payload))
	}
	return s
}

// folder counts repeated records per (level, message, client) in windows.
type folder struct {
	window time.Duration

	// mu guards the fields below.
	mu    sync.Mutex
	keys  map[foldKey]*foldEntry
	swept time.Time
}

type foldKey struct {
	level  slog.Level
	msg    string
	client string
}

type foldEntry struct {
	start time.Time // the window began
	n     int       // records folded into it since
}

type foldSummary struct {
	key foldKey
	n   int
}

// first reports whether the record of key at now is the first of its
// window (write it), or a repeat (counted, not written).
func (f *folder) first(key foldKey, now time.Time) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	e := f.keys[key]
	if e == nil {
		if len(f.keys) >= maxFoldKeys {
			key.client = "*" // too many clients: they share one key
			if e = f.keys[key]; e != nil {
				e.n++
				return false
			}
		}
		f.keys[key] = &foldEntry{start: now}
		return true
	}
	e.n++
	return false
}

// due returns the windows that have ended with repeats in them, at most
// once a second, and forgets every ended window.
func (f *folder) due(now time.Time) []foldSummary {
	f.mu.Lock()
	defer f.mu.Unlock()
	if now.Sub(f.swept) < time.Second {
		return nil
	}
	f.swept = now
	var out []foldSummary
	for k, e := range f.keys {
		if now.Sub(e.start) < f.window {
			continue
		}
		if e.n > 0 {
			out = append(out, foldSummary{k, e.n})
		}
		delete(f.keys, k)
	}
	return out
}
