package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	mqttl "github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tether-iot/tether/internal/logevery"
	"github.com/tether-iot/tether/listeners"
	"github.com/tether-iot/tether/listeners/forwarded"
)

// Broker is the MQTT engine with Tether's listeners and hooks.
type Broker struct {
	// Server is the engine. Its inline client is enabled, so the broker
	// can publish (status, desired twins, commands) as itself.
	Server *mqtt.Server

	opts Options
	log  *slog.Logger

	// The listeners; nil when disabled.
	TCP *listeners.TCP
	TLS *listeners.TCP
	WS  *listeners.WebSocket
	WSS *listeners.WebSocket
	// Limits is the connection limiter all listeners share; it is also
	// the Prometheus collector of its refusals.
	Limits *listeners.Limiter
	// Handshakes counts and logs refused WebSocket upgrades; it is the
	// Prometheus collector of tether_ws_handshake_failures_total.
	Handshakes *listeners.HandshakeFailures

	clock *clientClock // when each client connected (Clients)
	// set is Tether's hooks (addHook), which the engine has as one
	// (hookSet).
	set *hookSet
	// hooks are the engine's hooks in its order (the set), for the
	// benchmarks that call them as the engine does
	// (BenchmarkRoutedQoS0Hooks).
	hooks []mqtt.Hook
	// sendq counts the bytes of large QoS 0 messages in the clients'
	// send queues (sendqueue.go); nil when both bounds are off.
	sendq *sendQueue

	// levelsRefused and levelsLogged: topics refused for
	// mqtt.max_topic_levels (levels.go).
	levelsRefused topicLevelsRefused
	levelsLogged  *logevery.Keys
	closing       atomic.Bool
	shutdown      sync.Once
	done          chan struct{}
	err           error
}

// New assembles a broker; nothing listens until Start.
func New(opts Options) (*Broker, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	srv := mqtt.New(&mqtt.Options{
		Capabilities:             Capabilities(opts),
		ClientNetWriteBufferSize: opts.WriteBufferSize,
		ClientNetReadBufferSize:  opts.ReadBufferSize,
		// No payloads, no passwords, repeats folded; the engine's
		// lifecycle lines at Debug.
		Logger:                 slog.New(newEngineLog(quietLifecycle{log.With("component", "mqtt").Handler()}, 0)),
		SysTopicResendInterval: int64(opts.SysInterval / time.Second),
		InlineClient:           true,
	})
	b := &Broker{Server: srv, opts: opts, log: log.With("component", "broker"), done: make(chan struct{}), clock: newClientClock(),
		levelsLogged: logevery.New(topicLevelsLogEvery), set: newHookSet(srv.Log)}

	g := &gate{b: b}
	if err := b.addHook(g); err != nil {
		return nil, fmt.Errorf("broker: add gate hook: %w", err)
	}
	if err := b.addHook(b.clock); err != nil {
		return nil, fmt.Errorf("broker: add client clock hook: %w", err)
	}
	if err := b.addHook(&connackWatch{srv: srv}); err != nil {
		return nil, fmt.Errorf("broker: add connack watch hook: %w", err)
	}
	access := opts.Access
	if access == nil {
		access = &policy{allow: opts.AllowAnonymous, srv: srv}
	}
	if h, ok := access.(interface{ bind(*mqtt.Server) }); ok {
		h.bind(srv) // the access hook refuses and publishes through the engine
	}
	if h, ok := access.(interface{ limitSubscriptions(int) }); ok {
		h.limitSubscriptions(opts.MaxSubscriptionsPerClient) // it refuses the filters beyond
	}
	if h, ok := access.(interface{ limitSubscriptionLevels(levels, topicLevels int) }); ok {
		h.limitSubscriptionLevels(opts.MaxSubscriptionLevelsPerClient, opts.MaxTopicLevels) // and the levels beyond
	}
	if h, ok := access.(interface{ limitSessions(int) }); ok {
		h.limitSessions(opts.MaxSessionsPerUser) // it refuses the persistent sessions beyond
	}
	for _, h := range opts.Hooks {
		if l, ok := h.(*RetainedLimit); ok {
			if a, ok := access.(interface{ indexRetained(*RetainedLimit) }); ok {
				a.indexRetained(l) // a deleted device's retained messages are found there
			}
		}
	}
	if h, ok := access.(interface {
		readFirst(func(*mqtt.Client, packets.Packet) packets.Packet)
	}); ok {
		h.readFirst(g.read) // in its OnPacketRead, which it has anyway: one hook call less per packet
	} else {
		g.reads = true
	}
	hook := access // the access hook, with a Diverter in front if there is one
	for _, h := range opts.Hooks {
		if d, ok := h.(Diverter); ok {
			inner := hook
			d.SetACL(func(cl *mqtt.Client, topic string) bool {
				return inner.Provides(mqtt.OnACLCheck) && inner.OnACLCheck(cl, topic, false)
			})
			hook = &diverted{Hook: inner, d: d}
		}
	}
	if opts.ClientQueueBytes > 0 || opts.ClientQueueTotalBytes > 0 {
		b.sendq = newSendQueue(srv, b.log, opts.ClientQueueBytes, opts.ClientQueueTotalBytes)
		hook = &queuedACL{Hook: hook, q: b.sendq}
		for _, h := range opts.Hooks {
			if bp, ok := h.(*Backpressure); ok {
				bp.sendq = b.sendq // what it queues itself is counted too
				b.sendq.wait = bp.maxWait
			}
		}
	}
	if err := b.addHook(hook); err != nil {
		return nil, fmt.Errorf("broker: add access hook: %w", err)
	}
	if opts.MaxTopicLevels > 0 {
		// The levels of a PUBLISH are checked in the first OnPublish:
		// the publish rates' when it comes first after the gate (the
		// hooks between have none), in its OnPublish, which it has
		// anyway; else the gate's own.
		if pl, ok := firstHook(opts.Hooks).(*PublishLimit); ok && !hook.Provides(mqtt.OnPublish) {
			pl.levels = g
		} else {
			g.published = true
		}
	}
	for _, h := range opts.Hooks {
		if err := b.addHook(h); err != nil {
			return nil, fmt.Errorf("broker: add hook %s: %w", h.ID(), err)
		}
	}
	if h, ok := access.(interface{ tail() mqtt.Hook }); ok {
		// The access hook's last word (wills, purges): after every other
		// hook, the session store included.
		if err := b.addHook(h.tail()); err != nil {
			return nil, fmt.Errorf("broker: add access tail hook: %w", err)
		}
	}
	if b.sendq != nil {
		// The last OnPublish: it records a message as the engine routes it.
		sqh := &sendQueueHook{q: b.sendq}
		if err := b.addHook(sqh); err != nil {
			return nil, fmt.Errorf("broker: add send queue hook: %w", err)
		}
		for _, h := range opts.Hooks {
			if d, ok := h.(interface{ AddDeliveries(...mqtt.Hook) }); ok {
				d.AddDeliveries(sqh) // the QoS 1/2 messages it hands out are counted too
			}
		}
	}
	// Every hook has its settings now: the engine gets them as one.
	b.set.build()
	if err := srv.AddHook(b.set, nil); err != nil {
		return nil, fmt.Errorf("broker: add hooks: %w", err)
	}
	b.hooks = append(b.hooks, b.set)

	ct, mps := opts.ConnectTimeout, opts.MaxPacketSize
	b.Limits = listeners.NewLimiter(opts.Limits)
	lim := b.Limits
	balancers, err := forwarded.ParseProxies(opts.ProxyProtocolFrom)
	if err != nil {
		return nil, fmt.Errorf("broker: mqtt.proxy_protocol_from: %w", err)
	}
	if opts.TCPAddr != "" {
		b.TCP = listeners.NewTCP(opts.TCPAddr, &listeners.TCPOptions{ConnectTimeout: ct, MaxPacketSize: mps, Limits: lim, ProxyProtocolFrom: balancers, WriteTimeout: opts.WriteTimeout})
	}
	if opts.TLS != nil && opts.TLSAddr != "" {
		b.TLS = listeners.NewTCP(opts.TLSAddr, &listeners.TCPOptions{TLS: opts.TLS, ConnectTimeout: ct, MaxPacketSize: mps, Limits: lim, ProxyProtocolFrom: balancers, WriteTimeout: opts.WriteTimeout})
	}
	proxies, err := forwarded.ParseProxies(opts.TrustedProxies)
	if err != nil {
		return nil, fmt.Errorf("broker: http.trusted_proxies: %w", err)
	}
	origins, err := forwarded.NewOriginPolicy(forwarded.OriginOptions{
		PublicURL: opts.PublicURL, AllowedOrigins: opts.AllowedOrigins, Proxies: proxies, Names: opts.TLSNames,
	})
	if err != nil {
		return nil, fmt.Errorf("broker: http.public_url: %w", err)
	}
	b.Handshakes = listeners.NewHandshakeFailures()
	wsOpts := listeners.WebSocketOptions{
		Compression:    opts.WSCompression,
		Origins:        origins,
		Proxies:        proxies,
		ConnectTimeout: ct,
		MaxPacketSize:  mps,
		Limits:         lim,
		Failures:       b.Handshakes,
	}
	if opts.WebSocket {
		o := wsOpts
		b.WS = listeners.NewWebSocket(&o)
	}
	if opts.TLS != nil && opts.SecureWebSocket {
		o := wsOpts
		o.Secure = true
		b.WSS = listeners.NewWebSocket(&o)
	}
	for _, l := range b.listeners() {
		if err := srv.AddListener(l); err != nil {
			return nil, fmt.Errorf("broker: listener %s on %s: %w", l.ID(), l.Address(), err)
		}
	}
	return b, nil
}

// listener is what the broker needs of each of its listeners.
type listener interface {
	mqttl.Listener
	Stop()
	CloseConns()
	Stats() *listeners.Stats
}

// listeners returns the enabled listeners.
func (b *Broker) listeners() []listener {
	var out []listener
	if b.TCP != nil {
		out = append(out, b.TCP)
	}
	if b.TLS != nil {
		out = append(out, b.TLS)
	}
	if b.WS != nil {
		out = append(out, b.WS)
	}
	if b.WSS != nil {
		out = append(out, b.WSS)
	}
	return out
}

// Start binds the listeners and starts the engine. A listener that cannot
// bind stops start-up with the reason.
func (b *Broker) Start() error {
	if err := b.Server.Serve(); err != nil {
		return fmt.Errorf("broker: start: %w", err)
	}
	for _, l := range b.listeners() {
		if l.Protocol() == listeners.TCPTransport || l.Protocol() == listeners.TLSTransport {
			b.log.Debug("mqtt listening", "transport", l.ID(), "addr", l.Address())
		}
	}
	return nil
}

// Abort releases the sockets New bound, when Start was never called or
// failed; a started broker is stopped with Shutdown instead.
func (b *Broker) Abort() {
	b.closing.Store(true)
	for _, l := range b.listeners() {
		l.Stop()
	}
}

// Closing reports whether Shutdown has begun.
func (b *Broker) Closing() bool { return b.closing.Load() }

// Shutdown stops the broker in an order that keeps clear of the engine's
// races around Server.Close (mochi-mqtt issues 508 and 541). Close waits on
// a WaitGroup that each connection's goroutine Adds to itself, in
// attachClient, so a connection still being established when Close runs
// can Add during that Wait (a documented WaitGroup misuse that can panic),
// and clients the engine does not know yet are never disconnected, so the
// Wait can hang. Hence:
//
//  1. the gate hook refuses every new CONNECT (CONNACK "server
//     unavailable"), and each listener stops accepting (sockets closed,
//     /mqtt answers 503), so no connection starts attaching from now on;
//  2. every connected MQTT 5 client is sent DISCONNECT 0x8B (server
//     shutting down) [MQTT-3.14.2-1]; 3.1.1 clients, which have no such
//     packet, are simply closed. Clients that were attaching while step 1
//     ran show up in the engine a moment later; the wait below rescans and
//     disconnects them too;
//  3. whatever is still open when ctx ends is closed by the listeners,
//     which then wait until the engine has returned from every connection
//     they handed it (so the engine's WaitGroup is back at zero for good);
//  4. only then Server.Close runs: it has nothing left to wait for, and it
//     stops the hooks, which flush what they hold to SQLite.
//
// Shutdown is idempotent; later calls wait for the first and return its
// error.
func (b *Broker) Shutdown(ctx context.Context) error {
	b.shutdown.Do(func() {
		defer close(b.done)
		b.closing.Store(true)
		for _, l := range b.listeners() {
			l.Stop()
		}
		// The DISCONNECTs go out from a goroutine of their own: a client
		// that reads nothing can block a write, and ctx must still end
		// the wait below, whose CloseConns then unblocks that write.
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			b.disconnectAll(stop)
		}()
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
	wait:
		for b.openConns() > 0 {
			select {
			case <-ctx.Done():
				b.log.Warn("shutdown grace over: closing remaining connections", "open", b.openConns())
				break wait
			case <-tick.C:
			}
		}
		close(stop)
		for _, l := range b.listeners() {
			l.CloseConns()
		}
		wg.Wait()
		if err := b.Server.Close(); err != nil {
			b.err = fmt.Errorf("broker: close: %w", err)
		}
	})
	<-b.done
	return b.err
}

// disconnectAll disconnects every connected client, and again each one
// that appears later, until stop is closed.
func (b *Broker) disconnectAll(stop <-chan struct{}) {
	told := map[*mqtt.Client]bool{}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		for _, cl := range b.Server.Clients.GetAll() {
			select {
			case <-stop:
				return
			default:
			}
			if cl.Net.Inline || cl.Net.Conn == nil || told[cl] || cl.Closed() {
				continue
			}
			told[cl] = true
			if cl.Properties.ProtocolVersion == 5 {
				// Bound the write: a client that reads nothing must not
				// hold up the others' DISCONNECT.
				_ = cl.Net.Conn.SetWriteDeadline(time.Now().Add(time.Second))
				_ = b.Server.DisconnectClient(cl, packets.ErrServerShuttingDown)
			} else {
				cl.Stop(packets.ErrServerShuttingDown)
			}
		}
		select {
		case <-stop:
			return
		case <-tick.C:
		}
	}
}

func (b *Broker) openConns() int64 {
	var n int64
	for _, l := range b.listeners() {
		n += l.Stats().Open.Load()
	}
	return n
}

// WebSocketHandler is the /mqtt handler for the HTTP server, or nil when
// the HTTP listener is off.
func (b *Broker) WebSocketHandler() http.Handler {
	if b.WS == nil {
		return nil
	}
	return b.WS
}

// SecureWebSocketHandler is the /mqtt handler for the HTTPS server, or nil.
func (b *Broker) SecureWebSocketHandler() http.Handler {
	if b.WSS == nil {
		return nil
	}
	return b.WSS
}

// Transport returns the transport ("tcp", "tls", "ws", "wss") a client
// connected over.
func Transport(cl *mqtt.Client) string { return cl.Net.Listener }

// errShuttingDown refuses a CONNECT that arrives during shutdown.
var errShuttingDown = errors.New("broker shutting down")

// addHook adds h to Tether's hooks (b.set), after those added before.
func (b *Broker) addHook(h mqtt.Hook) error { return b.set.add(b.Server, h) }

// firstHook is the first of hooks, nil if none.
func firstHook(hooks []mqtt.Hook) mqtt.Hook {
	if len(hooks) == 0 {
		return nil
	}
	return hooks[0]
}
