package listeners

import (
	"context"
	"log/slog"
	"sync"
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
	// counts are failures by reason: tether_ws_handshake_failures_total.
	counts *prometheus.CounterVec
	now    func() time.Time

	// mu guards the fields below.
	mu         sync.Mutex
	lastLog    map[string]time.Time
	suppressed map[string]int
}

// NewHandshakeFailures returns an empty counter.
func NewHandshakeFailures() *HandshakeFailures {
	h := &HandshakeFailures{
		counts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tether_ws_handshake_failures_total",
			Help: "WebSocket upgrades of /mqtt refused, by reason."}, []string{"reason"}),
		now:        time.Now,
		lastLog:    map[string]time.Time{},
		suppressed: map[string]int{},
	}
	for _, r := range refusalReasons {
		h.counts.WithLabelValues(r) // each reads 0 before its first refusal
	}
	return h
}

// refused counts a refusal and logs it unless the reason was logged within
// the last minute. attrs say who and what; never credentials.
func (h *HandshakeFailures) refused(log *slog.Logger, reason string, attrs ...any) {
	if h == nil {
		return
	}
	h.counts.WithLabelValues(reason).Inc()
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
func (h *HandshakeFailures) Describe(ch chan<- *prometheus.Desc) { h.counts.Describe(ch) }

// Collect implements prometheus.Collector.
func (h *HandshakeFailures) Collect(ch chan<- prometheus.Metric) { h.counts.Collect(ch) }
