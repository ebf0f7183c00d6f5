package listeners

import (
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	mqttl "github.com/mochi-mqtt/server/v2/listeners"

	"github.com/tether-iot/tether/internal/logtext"
	"github.com/tether-iot/tether/listeners/forwarded"
)

// Subprotocol is the WebSocket subprotocol MQTT requires [MQTT-6.0.0-3].
const Subprotocol = "mqtt"

// SubprotocolV31 is the subprotocol older clients (MQTT 3.1 era, e.g.
// Paho JavaScript before 1.1) offer; it is accepted too.
const SubprotocolV31 = "mqttv3.1"

// WebSocketOptions configures a WebSocket listener. A nil
// *WebSocketOptions means defaults: same-origin only (see OriginPolicy),
// no trusted proxies, 10 s from upgrade to CONNECT.
type WebSocketOptions struct {
	// Secure marks the listener as served over HTTPS (transport "wss").
	Secure bool
	// Origins decides which web pages may connect; nil means an
	// OriginPolicy with no options (the page's own origin, on a known host).
	Origins *forwarded.OriginPolicy
	// InsecureSkipVerify accepts every origin. Only for development.
	InsecureSkipVerify bool
	// Proxies are the trusted proxies whose X-Forwarded-For (or
	// Forwarded) is believed; nil trusts nobody.
	Proxies *forwarded.Proxies
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
	// Failures counts and logs refused upgrades; nil counts nothing.
	// Share one among a broker's WebSocket listeners.
	Failures *HandshakeFailures
	// Compression is the permessage-deflate mode offered to clients;
	// the zero value is websocket.CompressionDisabled.
	Compression websocket.CompressionMode
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
	if l.opts.Origins == nil {
		l.opts.Origins, _ = forwarded.NewOriginPolicy(forwarded.OriginOptions{Proxies: opts.Proxies})
	}
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
	l.drained.Store(true)
}

// Close is the engine's hook: it stops the listener and asks the engine to
// disconnect this listener's clients (unless CloseConns has: see
// conns.closeClients).
func (l *WebSocket) Close(closeClients mqttl.CloseFn) {
	l.Stop()
	l.closeClients(closeClients)
}

func httpError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(msg + "\n"))
}

// ServeHTTP upgrades the request and hands the connection to the engine,
// which serves it on a goroutine of its own: http.Server does not track
// hijacked connections, so this listener does (see CloseConns).
//
// A refused upgrade is answered with a status and a plain-text reason,
// counted and logged (see HandshakeFailures). A plain GET /mqtt?origin=O
// (no upgrade) answers, as JSON, whether a page of origin O would be let
// in and why not: the dashboard asks when its WebSocket fails, because a
// browser does not show a page why an upgrade was refused.
func (l *WebSocket) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// The engine starts each listener's Serve on its own goroutine; wait
	// for it rather than upgrade a connection nobody will serve.
	if !l.waitReady(r.Context().Done()) {
		return
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		l.refuse(w, r, http.StatusServiceUnavailable, RefusedShutdown, "the broker is shutting down", "")
		return
	}
	// Added under mu, so no Add can follow stop and race CloseConns' Wait.
	l.wg.Add(1)
	l.mu.Unlock()
	defer l.wg.Done()
	if !headerHasToken(r.Header, "Connection", "upgrade") || !headerHasToken(r.Header, "Upgrade", "websocket") {
		if r.Method == http.MethodGet && r.URL.Query().Has("origin") {
			l.probe(w, r)
			return
		}
		w.Header().Set("Upgrade", "websocket")
		w.Header().Set("Sec-WebSocket-Protocol", Subprotocol)
		l.refuse(w, r, http.StatusUpgradeRequired, RefusedNotWebSocket,
			"this is Tether's MQTT over WebSocket endpoint: connect with an MQTT client (WebSocket subprotocol \"mqtt\"), not a plain HTTP request"+
				" (behind a reverse proxy: it must pass the Upgrade and Connection headers, see deploy/)", "")
		return
	}
	if !headerHasToken(r.Header, "Sec-WebSocket-Protocol", Subprotocol) && !headerHasToken(r.Header, "Sec-WebSocket-Protocol", SubprotocolV31) {
		l.refuse(w, r, http.StatusBadRequest, RefusedSubprotocol,
			"MQTT over WebSocket requires the WebSocket subprotocol \"mqtt\" (Sec-WebSocket-Protocol: mqtt) [MQTT-6.0.0-3]", "")
		return
	}
	if !l.opts.InsecureSkipVerify {
		if ref := l.opts.Origins.Check(r, l.opts.Secure); ref != nil {
			l.refuse(w, r, http.StatusForbidden, ref.Reason, ref.Msg+"; to allow it set "+ref.Setting, ref.Setting, "seen_as", ref.Own)
			return
		}
	}
	hw := &hijackWriter{ResponseWriter: w}
	c, err := websocket.Accept(hw, r, &websocket.AcceptOptions{
		Subprotocols: []string{Subprotocol, SubprotocolV31},
		// The origin is checked above, by the OriginPolicy.
		InsecureSkipVerify: true,
		CompressionMode:    l.opts.Compression,
	})
	if err != nil {
		// Accept has written the response.
		l.stats.Refused.Add(1)
		l.opts.Failures.refused(l.log, RefusedHandshake, l.refusalAttrs(r, "", "error", logtext.Short(err.Error()))...)
		return
	}
	if c.Subprotocol() == "" {
		c.Close(websocket.StatusPolicyViolation, "subprotocol mqtt required")
		return
	}
	if hw.conn == nil { // a ResponseWriter that could not hijack: Accept failed above
		c.CloseNow()
		return
	}
	c.SetReadLimit(-1) // MQTT packets span messages: the packet size limit applies (limitConn, the engine)
	conn := &wsConn{ws: c, raw: hw.conn, remote: l.remoteAddr(r, hw.conn.RemoteAddr()), br: hw.br, src: hw.src, out: hw.out}
	if hw.deflate {
		// permessage-deflate: a message's bytes in the buffer are not its
		// length, and coder/websocket reads every frame.
		conn.br, conn.src = nil, nil
	}
	// The engine serves the connection on a goroutine of its own and this
	// handler returns: net/http is done with a hijacked connection, so its
	// goroutine (whose stack grew through the handler chain to 32 KiB),
	// the request and the response are freed instead of being held for
	// the connection's lifetime. An idle WebSocket client costs about
	// 15 KiB less (TestMeasureIdleMemory, docs/PERFORMANCE.md).
	// It is MQTT from here on: its place among its address's HTTP
	// connections goes, and hand admits it as an MQTT connection.
	releasePending(hw.conn)
	l.wg.Add(1) // ServeHTTP's own Add is still held, so CloseConns waits for this one
	go func() {
		defer l.wg.Done()
		_ = l.hand(conn)
	}()
}

// refuse answers a refused upgrade, counts and logs it.
func (l *WebSocket) refuse(w http.ResponseWriter, r *http.Request, code int, reason, msg, setting string, attrs ...any) {
	l.stats.Refused.Add(1)
	l.opts.Failures.refused(l.log, reason, l.refusalAttrs(r, setting, attrs...)...)
	httpError(w, code, msg)
}

// refusalAttrs are the log attributes of a refused upgrade: what the
// browser sent and who sent it. Header values are cut short.
func (l *WebSocket) refusalAttrs(r *http.Request, setting string, more ...any) []any {
	attrs := []any{"transport", l.id, "origin", logtext.Short(r.Header.Get("Origin")), "host", logtext.Short(r.Host),
		"peer", r.RemoteAddr, "client", l.opts.Proxies.ClientIP(r)}
	for _, k := range []string{"X-Forwarded-Host", "X-Forwarded-Proto", "Forwarded"} {
		if v := r.Header.Get(k); v != "" {
			attrs = append(attrs, strings.ToLower(k), logtext.Short(v))
		}
	}
	if setting != "" {
		attrs = append(attrs, "allow_with", setting)
	}
	return append(attrs, more...)
}

// probe answers GET /mqtt?origin=O: would an upgrade from a page of
// origin O, arriving as this request did, be let in?
func (l *WebSocket) probe(w http.ResponseWriter, r *http.Request) {
	r2 := r.Clone(r.Context())
	r2.Header.Set("Origin", r.URL.Query().Get("origin"))
	type answer struct {
		OK      bool   `json:"ok"`
		Reason  string `json:"reason,omitempty"`
		Message string `json:"message,omitempty"`
		Setting string `json:"setting,omitempty"`
	}
	a := answer{OK: true}
	if ref := l.opts.Origins.Check(r2, l.opts.Secure); ref != nil && !l.opts.InsecureSkipVerify {
		a = answer{Reason: ref.Reason, Message: ref.Msg, Setting: ref.Setting}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(a)
}

// remoteAddr is the client's address (see Proxies.ClientAddr) with the
// peer's port when the peer is the client.
func (l *WebSocket) remoteAddr(r *http.Request, peer net.Addr) net.Addr {
	a := l.opts.Proxies.ClientAddr(r)
	if !a.IsValid() || a == forwarded.PeerAddr(r) {
		return peer
	}
	return &net.TCPAddr{IP: a.AsSlice()}
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
