package listeners

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	mqttl "github.com/mochi-mqtt/server/v2/listeners"
)

// Subprotocol is the WebSocket subprotocol MQTT requires [MQTT-6.0.0-3].
const Subprotocol = "mqtt"

// WebSocketOptions configures a WebSocket listener. A nil
// *WebSocketOptions means defaults: same-origin only, no trusted proxies,
// 10 s from upgrade to CONNECT.
type WebSocketOptions struct {
	// Secure marks the listener as served over HTTPS (transport "wss").
	Secure bool
	// OriginPatterns are the origins allowed besides the request's own
	// host, as coder/websocket's AcceptOptions.OriginPatterns.
	OriginPatterns []string
	// InsecureSkipVerify accepts every origin. Only for development.
	InsecureSkipVerify bool
	// TrustedProxies are the peers whose X-Forwarded-For is believed.
	TrustedProxies []*net.IPNet
	// ConnectTimeout bounds the time from upgrade to CONNECT. 0 means
	// 10 s; negative means none.
	ConnectTimeout time.Duration
	// MaxPacketSize is the largest MQTT packet accepted, in bytes; a larger
	// one disconnects its sender (with DISCONNECT 0x95 for MQTT 5). 0 means
	// no limit.
	MaxPacketSize uint32
	// Limits admits or refuses each new connection (see Limiter); nil
	// means no limits. Share one Limiter among a broker's listeners.
	Limits *Limiter
}

// WebSocket serves MQTT over WebSocket as an http.Handler, mounted by the
// HTTP server at /mqtt. It implements the engine's listeners.Listener; it
// opens no socket of its own.
//
// Each WebSocket message is a run of bytes in the MQTT stream: a packet may
// span several binary messages or frames and one message may hold several
// packets [MQTT-6.0.0-2]. A text message closes the connection
// [MQTT-6.0.0-1].
type WebSocket struct {
	*conns
	opts WebSocketOptions

	wg sync.WaitGroup // ServeHTTP calls in progress
}

// NewWebSocket returns a WebSocket listener.
func NewWebSocket(opts *WebSocketOptions) *WebSocket {
	if opts == nil {
		opts = &WebSocketOptions{}
	}
	id := WSTransport
	if opts.Secure {
		id = WSSTransport
	}
	l := &WebSocket{conns: newConns(id, connectTimeout(opts.ConnectTimeout), opts.MaxPacketSize), opts: *opts}
	l.limits = opts.Limits
	return l
}

// ID is the transport name, "ws" or "wss".
func (l *WebSocket) ID() string { return l.id }

// Protocol is the transport name.
func (l *WebSocket) Protocol() string { return l.id }

// Address is the path the handler is meant to be mounted at.
func (l *WebSocket) Address() string { return "/mqtt" }

// Stats returns the listener's running totals.
func (l *WebSocket) Stats() *Stats { return &l.stats }

// Init is the engine's hook; there is nothing to open.
func (l *WebSocket) Init(log *slog.Logger) error {
	if log != nil {
		l.log = log
	}
	return nil
}

// Serve is the engine's hook: it records the callback; connections arrive
// through ServeHTTP.
func (l *WebSocket) Serve(establish mqttl.EstablishFn) { l.serve(establish) }

// Stop refuses new upgrades. Idempotent.
func (l *WebSocket) Stop() { l.stop() }

// CloseConns closes every live connection and waits for the engine (and
// the HTTP handlers that carry them) to finish. Call after Stop.
func (l *WebSocket) CloseConns() {
	l.closeAll()
	l.wait()
	l.wg.Wait()
}

// Close is the engine's hook: it stops the listener and asks the engine to
// disconnect this listener's clients.
func (l *WebSocket) Close(closeClients mqttl.CloseFn) {
	l.Stop()
	closeClients(l.id)
}

func httpError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(msg + "\n"))
}

// ServeHTTP upgrades the request and hands the connection to the engine,
// blocking until it ends: http.Server does not track hijacked connections,
// so this listener does (see CloseConns).
func (l *WebSocket) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// The engine starts each listener's Serve on its own goroutine; wait
	// for it rather than upgrade a connection nobody will serve.
	if !l.waitReady(r.Context().Done()) {
		return
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		httpError(w, http.StatusServiceUnavailable, "the broker is shutting down")
		return
	}
	// Added under mu, so no Add can follow stop and race CloseConns' Wait.
	l.wg.Add(1)
	l.mu.Unlock()
	defer l.wg.Done()
	if !headerHasToken(r.Header, "Connection", "upgrade") || !headerHasToken(r.Header, "Upgrade", "websocket") {
		w.Header().Set("Upgrade", "websocket")
		w.Header().Set("Sec-WebSocket-Protocol", Subprotocol)
		httpError(w, http.StatusUpgradeRequired,
			"this is Tether's MQTT over WebSocket endpoint: connect with an MQTT client (WebSocket subprotocol \"mqtt\"), not a plain HTTP request")
		return
	}
	if !headerHasToken(r.Header, "Sec-WebSocket-Protocol", Subprotocol) {
		httpError(w, http.StatusBadRequest,
			"MQTT over WebSocket requires the WebSocket subprotocol \"mqtt\" (Sec-WebSocket-Protocol: mqtt) [MQTT-6.0.0-3]")
		return
	}
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		Subprotocols:       []string{Subprotocol},
		OriginPatterns:     l.opts.OriginPatterns,
		InsecureSkipVerify: l.opts.InsecureSkipVerify,
		CompressionMode:    websocket.CompressionDisabled,
	})
	if err != nil {
		// Accept has written the response (403 for a foreign origin).
		l.stats.Refused.Add(1)
		l.log.Debug("websocket upgrade refused", "transport", l.id, "remote", r.RemoteAddr, "origin", r.Header.Get("Origin"), "error", err)
		return
	}
	if c.Subprotocol() != Subprotocol {
		c.Close(websocket.StatusPolicyViolation, "subprotocol mqtt required")
		return
	}
	// The request's context ends when this handler returns; the
	// connection's own context ends when the connection does.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	nc := websocket.NetConn(ctx, c, websocket.MessageBinary)
	remote := l.remoteAddr(r, nc.RemoteAddr())
	_ = l.hand(&addrConn{Conn: nc, remote: remote})
}

// remoteAddr is the client's address: the peer's, or, when the peer is a
// trusted proxy, the last address in X-Forwarded-For that is not one.
func (l *WebSocket) remoteAddr(r *http.Request, peer net.Addr) net.Addr {
	if len(l.opts.TrustedProxies) == 0 {
		return peer
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil || !l.trusted(net.ParseIP(host)) {
		return peer
	}
	var hops []string
	for _, v := range r.Header.Values("X-Forwarded-For") {
		for _, h := range strings.Split(v, ",") {
			if h = strings.TrimSpace(h); h != "" {
				hops = append(hops, h)
			}
		}
	}
	for i := len(hops) - 1; i >= 0; i-- {
		ip := net.ParseIP(hops[i])
		if ip == nil {
			return peer // a malformed chain is not believed
		}
		if !l.trusted(ip) {
			return &net.TCPAddr{IP: ip}
		}
	}
	return peer
}

func (l *WebSocket) trusted(ip net.IP) bool {
	if ip == nil {
		return false
	}
	for _, n := range l.opts.TrustedProxies {
		if n.Contains(ip) {
			return true
		}
	}
	return false
}

// headerHasToken reports whether a comma-separated header holds token
// (case-insensitively).
func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// addrConn reports a chosen remote address.
type addrConn struct {
	net.Conn
	remote net.Addr
}

func (c *addrConn) RemoteAddr() net.Addr { return c.remote }
