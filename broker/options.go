package broker

import (
	"crypto/tls"
	"log/slog"
	"math"
	"time"

	"github.com/coder/websocket"
	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/tether-iot/tether/listeners"
)

// Options configure a Broker: its listeners, the engine's limits and the
// hooks it runs. The broker knows nothing of the configuration file;
// cmd/tether maps a configs.Config onto Options (brokerOptions), and
// DefaultOptions holds the same defaults as configs.Default. Each field
// names the configuration key it comes from.
type Options struct {
	// Logger receives the broker's log; nil means slog.Default().
	Logger *slog.Logger
	// TLS is the server certificate configuration for the TLS and WSS
	// listeners; nil disables both.
	TLS *tls.Config
	// TLSNames returns the names in the served certificate, which the
	// /mqtt origin check knows the server by; nil for none.
	TLSNames func() []string
	// Hooks are added to the engine after the broker's own, in order.
	// None may refuse a client in OnConnect (return an error): they run
	// after Access, and the engine then calls no hook's OnDisconnect, so
	// Access would keep the client (its claim on the client id). Access
	// alone refuses.
	Hooks []mqtt.Hook
	// Access decides who connects and what they may touch. Nil means the
	// policy of AllowAnonymous: everyone when set, else nobody.
	Access mqtt.Hook
	// AllowAnonymous is auth.allow_anonymous, for the policy used when
	// Access is nil.
	AllowAnonymous bool

	// TCPAddr is mqtt.addr; "" disables MQTT over TCP.
	TCPAddr string
	// TLSAddr is mqtt.tls_addr; "" (or a nil TLS) disables MQTT over TLS.
	TLSAddr string
	// WebSocket serves /mqtt on the HTTP server (http.addr is on).
	WebSocket bool
	// SecureWebSocket serves /mqtt on the HTTPS server (http.https_addr is
	// on and TLS is set).
	SecureWebSocket bool

	// MaxPacketSize is mqtt.max_packet_size in bytes; 0 for no limit.
	MaxPacketSize uint32
	// ClientQueueSize is mqtt.client_queue_size: packets waiting to be
	// written to one client.
	ClientQueueSize int32
	// ClientQueueBytes and ClientQueueTotalBytes are
	// mqtt.client_queue_bytes and mqtt.client_queue_total_bytes: bytes of
	// large QoS 0 messages one client's send queue, and all clients'
	// together, may hold, and of large QoS 1/2 messages unacknowledged
	// (sendqueue.go, sendqueue_qos12.go); 0 for no bound.
	ClientQueueBytes      int64
	ClientQueueTotalBytes int64
	// ReceiveMaximum is mqtt.receive_maximum.
	ReceiveMaximum uint16
	// MaxInflight is mqtt.max_inflight.
	MaxInflight uint16
	// MaxSessionExpiry is mqtt.max_session_expiry.
	MaxSessionExpiry time.Duration
	// MaxMessageExpiry is mqtt.max_message_expiry; 0 for none.
	MaxMessageExpiry time.Duration
	// SysInterval is mqtt.sys_interval, how often $SYS is published.
	SysInterval time.Duration
	// ConnectTimeout is mqtt.connect_timeout.
	ConnectTimeout time.Duration
	// WriteTimeout is limits.write_timeout: how long a write to an MQTT
	// client over TCP or TLS may make no progress before the client is
	// dropped; 0 for none. (WebSocket clients: the HTTP listeners, which
	// cmd/tether wraps with listeners.WriteTimeoutListener.)
	WriteTimeout time.Duration
	// MaxSubscriptionsPerClient is mqtt.max_subscriptions_per_client: the
	// subscriptions one client's session may hold; 0 for no limit. The
	// access hook enforces it (Auth; auth_subs.go).
	MaxSubscriptionsPerClient int
	// MaxSubscriptionLevelsPerClient is
	// mqtt.max_subscription_levels_per_client: the levels of the engine's
	// topic index one client's session's filters may need, each prefix
	// once; 0 for no limit. The access hook enforces it (Auth;
	// auth_sublevels.go).
	MaxSubscriptionLevelsPerClient int
	// MaxSessionsPerUser is mqtt.max_sessions_per_user: the persistent
	// sessions a viewer or an operator may hold; 0 for no limit. The
	// access hook enforces it (Auth; auth_sesslimit.go).
	MaxSessionsPerUser int
	// MaxTopicLevels is mqtt.max_topic_levels: the levels a topic name or
	// filter may have; 0 for no limit. The gate enforces it (levels.go).
	MaxTopicLevels int
	// MaxKeepalive is mqtt.max_keepalive; 0 for no maximum.
	MaxKeepalive time.Duration
	// ReadBufferSize and WriteBufferSize are mqtt.read_buffer_size and
	// mqtt.write_buffer_size, per connection.
	ReadBufferSize, WriteBufferSize int

	// Limits are limits.max_connections, max_connections_per_ip and
	// connection_rate_per_ip.
	Limits listeners.LimitOptions
	// ProxyProtocolFrom is mqtt.proxy_protocol_from: IPs or CIDRs.
	ProxyProtocolFrom []string
	// TrustedProxies is http.trusted_proxies: IPs or CIDRs.
	TrustedProxies []string
	// PublicURL is http.public_url; "" for none.
	PublicURL string
	// AllowedOrigins is http.allowed_origins.
	AllowedOrigins []string
	// WSCompression is http.ws_compression: permessage-deflate on /mqtt.
	WSCompression websocket.CompressionMode
}

// DefaultOptions returns the defaults of configs.Default, with every
// listener off.
func DefaultOptions() Options {
	return Options{
		MaxPacketSize:         1 << 20,
		ClientQueueSize:       256,
		ClientQueueBytes:      8 << 20,
		ClientQueueTotalBytes: 256 << 20,
		ReceiveMaximum:        256,
		MaxInflight:           1024,
		MaxSessionExpiry:      7 * 24 * time.Hour,
		SysInterval:           time.Second,
		ConnectTimeout:        10 * time.Second,
		WriteTimeout:          10 * time.Second,
		ReadBufferSize:        2048,
		WriteBufferSize:       2048,
		WSCompression:         websocket.CompressionNoContextTakeover,

		// Far above the dashboard's dozen or so and a device's two; a
		// thousand filters cost a session about 3 MB.
		MaxSubscriptionsPerClient: 1000,
		// 1,000 filters of 8 levels none of which another shares; each
		// level costs about 645 bytes: some 5 MB.
		MaxSubscriptionLevelsPerClient: 8000,
		// Real topics have a handful; each level of a filter or retained
		// topic is a node of the engine's tree, about 600 bytes.
		MaxTopicLevels: 32,
		// A person's scripts and integrations have a few persistent
		// sessions; each may hold 1,000 subscriptions needing up to
		// 8,000 levels, some 5.5 MB at worst.
		MaxSessionsPerUser: 10,
		// Connections from one address not yet answered (MQTT) or open
		// (HTTP): an address may not hold the server's descriptors.
		Limits: listeners.LimitOptions{MaxPendingPerIP: 1024},
	}
}

// Capabilities returns the engine capabilities that o asks for. The
// engine's own defaults are not safe for a server: no packet size limit,
// retained messages deleted after 24 h, an 8,192-slot send queue per client.
func Capabilities(o Options) *mqtt.Capabilities {
	c := mqtt.NewDefaultServerCapabilities()
	c.MaximumPacketSize = o.MaxPacketSize
	c.MaximumClientWritesPending = o.ClientQueueSize
	c.ReceiveMaximum = o.ReceiveMaximum
	c.MaximumInflight = o.MaxInflight
	c.MaximumSessionExpiryInterval = uint32(min(o.MaxSessionExpiry/time.Second, math.MaxUint32))
	// 0: no broker-imposed expiry; a message (retained ones too) lives
	// until its own MQTT 5 Message Expiry Interval, if any.
	c.MaximumMessageExpiryInterval = int64(o.MaxMessageExpiry / time.Second)
	// Topic aliases cost memory per client; keep them modest.
	c.TopicAliasMaximum = 64
	// An acknowledgement carries only a reason string and the broker's
	// own user properties, never the PUBLISH's [MQTT-3.4.2.2]: mochi
	// copies them over unless told not to, and strict clients then
	// reject the PUBACK, PUBREC, PUBREL or PUBCOMP as malformed.
	c.Compatibilities.NoInheritedPropertiesOnAck = true
	return c
}
