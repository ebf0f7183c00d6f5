package listeners

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Reasons a WebSocket upgrade of /mqtt is refused: the label of
// tether_ws_handshake_failures_total.
const (
	RefusedNotWebSocket = "not_websocket" // a plain HTTP request (426)
	RefusedSubprotocol  = "subprotocol"   // no "mqtt" or "mqttv3.1" offered (400)
	RefusedOrigin       = "origin"        // a page of another origin (403)
	RefusedHost         = "host"          // a name the server is not known by: DNS rebinding (403)
	RefusedHandshake    = "handshake"     // a malformed WebSocket handshake
	RefusedShutdown     = "shutting_down" // the broker is stopping (503)
)

var refusalReasons = []string{RefusedNotWebSocket, RefusedSubprotocol, RefusedOrigin, RefusedHost, RefusedHandshake, RefusedShutdown}

// refusalLogEvery is how often one reason is logged at most; the refusals
// in between are counted in the next line's "suppressed".
const refusalLogEvery = time.Minute

// HandshakeFailures counts refused WebSocket upgrades by reason and logs
// them, at most one line per reason per minute. One is shared by a
// broker's WebSocket listeners; it is the Prometheus collector of
// tether_ws_handshake_failures_total. A nil *HandshakeFailures counts and
// logs nothing.
type HandshakeFailures struct {
	counts map[string]*atomic.Int64
	desc   *prometheus.Desc
	now    func() time.Time

	// mu guards the fields below.
	mu         sync.Mutex
	lastLog    map[string]time.Time
	suppressed map[string]int
}

// NewHandshakeFailures returns an empty counter.
func NewHandshakeFailures() *HandshakeFailures {
	h := &HandshakeFailures{
		counts:     map[string]*atomic.Int64{},
		now:        time.Now,
		lastLog:    map[string]time.Time{},
		suppressed: map[string]int{},
		desc: prometheus.NewDesc("tether_ws_handshake_failures_total",
			"WebSocket upgrades of /mqtt refused, by reason.", []string{"reason"}, nil),
	}
	for _, r := range refusalReasons {
		h.counts[r] = &atomic.Int64{}
	}
	return h
}

// Count returns the refusals for reason so far.
func (h *HandshakeFailures) Count(reason string) int64 {
	if h == nil || h.counts[reason] == nil {
		return 0
	}
	return h.counts[reason].Load()
}

// refused counts a refusal and logs it unless the reason was logged within
// the last minute. attrs say who and what; never credentials.
func (h *HandshakeFailures) refused(log *slog.Logger, reason string, attrs ...any) {
	if h == nil {
		return
	}
	if c := h.counts[reason]; c != nil {
		c.Add(1)
	}
	now := h.now()
	h.mu.Lock()
	if last, ok := h.lastLog[reason]; ok && now.Sub(last) < refusalLogEvery {
		h.suppressed[reason]++
		h.mu.Unlock()
		return
	}
	n := h.suppressed[reason]
	h.lastLog[reason] = now
	h.suppressed[reason] = 0
	h.mu.Unlock()
	level := slog.LevelWarn
	if reason == RefusedNotWebSocket || reason == RefusedShutdown {
		level = slog.LevelInfo
	}
	log.Log(context.Background(), level, "websocket upgrade of /mqtt refused", append([]any{"reason", reason, "suppressed", n}, attrs...)...)
}

// Describe implements prometheus.Collector.
func (h *HandshakeFailures) Describe(ch chan<- *prometheus.Desc) { ch <- h.desc }

// Collect implements prometheus.Collector.
func (h *HandshakeFailures) Collect(ch chan<- prometheus.Metric) {
	for _, r := range refusalReasons {
		ch <- prometheus.MustNewConstMetric(h.desc, prometheus.CounterValue, float64(h.counts[r].Load()), r)
	}
}
