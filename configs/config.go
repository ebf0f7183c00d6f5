package configs

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/tether-iot/tether/broker/rules"
	"github.com/tether-iot/tether/listeners/forwarded"
)

// Sample is configs/tether.yaml: every key with its default and a comment.
//
//go:embed tether.yaml
var Sample []byte

// Config is the whole configuration of `tether serve`.
type Config struct {
	DataDir   string    `yaml:"data_dir"`
	Log       Log       `yaml:"log"`
	MQTT      MQTT      `yaml:"mqtt"`
	HTTP      HTTP      `yaml:"http"`
	TLS       TLS       `yaml:"tls"`
	Auth      Auth      `yaml:"auth"`
	Telemetry Telemetry `yaml:"telemetry"`
	Commands  Commands  `yaml:"commands"`
	Audit     Audit     `yaml:"audit"`
	Limits    Limits    `yaml:"limits"`
	Security  Security  `yaml:"security"`
	Storage   Storage   `yaml:"storage"`
	Cluster   Cluster   `yaml:"cluster"`
}

// Storage says where the registry and the stores beside it live.
type Storage struct {
	// PostgresURL, when set, keeps the registry, users, API tokens,
	// commands, twins, telemetry history and the audit log in this
	// PostgreSQL database (shared by a cluster's nodes) instead of
	// data_dir's SQLite file. A postgres:// URL or a libpq
	// "key=value" string.
	PostgresURL string `yaml:"postgres_url"`
}

// Log configures the process log.
type Log struct {
	Level  string `yaml:"level"`  // debug, info, warn, error
	Format string `yaml:"format"` // text or json
}

// MQTT configures the MQTT listeners and the engine's capabilities.
type MQTT struct {
	Addr            string `yaml:"addr"`
	TLSAddr         string `yaml:"tls_addr"`
	MaxPacketSize   uint32 `yaml:"max_packet_size"`
	ClientQueueSize int32  `yaml:"client_queue_size"`
	// ClientQueueBytes and ClientQueueTotalBytes: bytes of large QoS 0
	// messages (payload of 8 KiB or more) one client's send queue, and
	// all clients' together, may hold, and of large QoS 1/2 messages
	// unacknowledged (a client stuck past them is disconnected); 0 = no
	// bound.
	ClientQueueBytes      int64         `yaml:"client_queue_bytes"`
	ClientQueueTotalBytes int64         `yaml:"client_queue_total_bytes"`
	ReceiveMaximum        uint16        `yaml:"receive_maximum"`
	MaxInflight           uint16        `yaml:"max_inflight"`
	BackpressureWait      time.Duration `yaml:"backpressure_wait"`
	MaxSessionExpiry      time.Duration `yaml:"max_session_expiry"`
	// Offline queues of persistent sessions, on disk (SPEC §9).
	MaxQueuedMessages  int           `yaml:"max_queued_messages"`
	MaxQueuedBytes     int64         `yaml:"max_queued_bytes"`
	MaxQueueStoreBytes int64         `yaml:"max_queue_store_bytes"`
	MaxMessageExpiry   time.Duration `yaml:"max_message_expiry"`
	SysInterval        time.Duration `yaml:"sys_interval"`
	ConnectTimeout     time.Duration `yaml:"connect_timeout"`
	MaxKeepalive       time.Duration `yaml:"max_keepalive"`
	ShutdownGrace      time.Duration `yaml:"shutdown_grace"`
	ReadBufferSize     int           `yaml:"read_buffer_size"`
	WriteBufferSize    int           `yaml:"write_buffer_size"`
	// ProxyProtocolFrom: addresses whose PROXY protocol header is read.
	ProxyProtocolFrom []string `yaml:"proxy_protocol_from"`

	// Retained messages, all together and per device (each its own
	// messages still retained), count and bytes; 0 = unlimited.
	MaxRetainedMessages          int64 `yaml:"max_retained_messages"`
	MaxRetainedBytes             int64 `yaml:"max_retained_bytes"`
	MaxRetainedMessagesPerDevice int64 `yaml:"max_retained_messages_per_device"`
	MaxRetainedBytesPerDevice    int64 `yaml:"max_retained_bytes_per_device"`
	// MaxSubscriptionsPerClient: subscriptions one client's session may
	// hold; 0 = unlimited.
	MaxSubscriptionsPerClient int `yaml:"max_subscriptions_per_client"`
	// MaxSubscriptionLevelsPerClient: levels of the topic index one
	// client's session's filters may need, each prefix once; 0 =
	// unlimited.
	MaxSubscriptionLevelsPerClient int `yaml:"max_subscription_levels_per_client"`
	// MaxTopicLevels: levels a topic name or filter may have; 0 =
	// unlimited.
	MaxTopicLevels int `yaml:"max_topic_levels"`
	// MaxSessionsPerUser: persistent sessions a viewer or an operator may
	// hold; 0 = unlimited.
	MaxSessionsPerUser int `yaml:"max_sessions_per_user"`
}

// HTTP configures the HTTP(S) server: dashboard, API, /mqtt, /metrics.
type HTTP struct {
	Addr             string        `yaml:"addr"`
	HTTPSAddr        string        `yaml:"https_addr"`
	AllowedOrigins   []string      `yaml:"allowed_origins"`
	TrustedProxies   []string      `yaml:"trusted_proxies"`
	PublicURL        string        `yaml:"public_url"`
	HandshakeTimeout time.Duration `yaml:"handshake_timeout"`
	// WSCompression is permessage-deflate on /mqtt: off, no_context or
	// context (see docs/PERFORMANCE.md for what each costs).
	WSCompression string `yaml:"ws_compression"`
}

// TLS names the certificate and key for the TLS and HTTPS listeners.
type TLS struct {
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
	// ReloadInterval: how often the files are checked for a renewal.
	ReloadInterval time.Duration `yaml:"reload_interval"`
}

// Auth configures who may connect.
type Auth struct {
	AllowAnonymous bool          `yaml:"allow_anonymous"`
	TokenTTL       time.Duration `yaml:"token_ttl"`
	// Rules are checked in order before the built-in access rules; the
	// first that matches decides (rules.go). Reloaded on SIGHUP.
	Rules []Rule `yaml:"rules"`
}

// Telemetry configures the telemetry history.
type Telemetry struct {
	Retention       time.Duration `yaml:"retention"`
	RollupRetention time.Duration `yaml:"rollup_retention"`
	FlushInterval   time.Duration `yaml:"flush_interval"`
	QueueSize       int           `yaml:"queue_size"`
	// QueueBytes bounds the memory of the points waiting to be written,
	// beside their number.
	QueueBytes int64 `yaml:"queue_bytes"`
	// DeviceValuesRate bounds the metric values each device may have
	// stored, a second, in bursts of DeviceValuesBurst; 0 = no bound.
	DeviceValuesRate  int `yaml:"device_values_rate"`
	DeviceValuesBurst int `yaml:"device_values_burst"`
	// RetentionSize bounds the history's size on disk, in bytes; 0 =
	// no bound.
	RetentionSize int64 `yaml:"retention_size"`
	// RollupRetentionSize bounds the rollups' size on disk, in bytes; 0
	// = no bound (rollup_retention alone).
	RollupRetentionSize int64 `yaml:"rollup_retention_size"`
	// Topics map other topics to a device's telemetry (rules.go).
	// Reloaded on SIGHUP.
	Topics []TelemetryTopic `yaml:"topics"`
}

// Commands configures the command history (SPEC §7).
type Commands struct {
	// MaxPerDevice bounds the commands kept for one device: beyond it
	// the oldest are deleted, whatever their status. 0 = no bound.
	MaxPerDevice int `yaml:"max_per_device"`
}

// Audit configures the audit log (GET /api/v1/audit).
type Audit struct {
	Retention time.Duration `yaml:"retention"`
}

// Security configures intrusion detection: temporary bans of addresses
// and identities that are refused too often (failed logins, ACL denials).
type Security struct {
	// BanThreshold refusals within BanWindow ban an address, or an
	// identity at an address, for BanDuration. 0 turns bans off.
	BanThreshold int           `yaml:"ban_threshold"`
	BanWindow    time.Duration `yaml:"ban_window"`
	BanDuration  time.Duration `yaml:"ban_duration"`
	// BanExempt are addresses (IPs or CIDRs) never banned as a whole;
	// http.trusted_proxies never are either.
	BanExempt []string `yaml:"ban_exempt"`
}

// Cluster joins this node to others over NATS (SPEC §10, docs/cluster.md).
// With neither Listen nor NATSURL set the node is alone and nothing
// starts.
type Cluster struct {
	// Node names this node among the others: unique, [A-Za-z0-9_-], at
	// most 64 characters; empty means the host name.
	Node string `yaml:"node"`
	// Listen is the embedded NATS server's route address (host:port);
	// Peers are the other nodes' route addresses (this node's own may be
	// in the list: the same list serves every node).
	Listen string   `yaml:"listen"`
	Peers  []string `yaml:"peers"`
	// Secret, the same on every node, is the password of the routes
	// between embedded NATS servers: a node without it cannot join.
	Secret string `yaml:"secret"`
	// TLSCert and TLSKey (PEM files) are this node's certificate on the
	// routes, TLSCA the CA that signed every node's: the routes are then
	// TLS, and a server without a certificate from that CA cannot join.
	// All three or none.
	TLSCert string `yaml:"tls_cert"`
	TLSKey  string `yaml:"tls_key"`
	TLSCA   string `yaml:"tls_ca"`
	// NATSURL is an external NATS (nats://host:port, comma-separated for
	// several servers) instead of the embedded one.
	NATSURL string `yaml:"nats_url"`
}

// Enabled reports whether the node joins a cluster.
func (c Cluster) Enabled() bool { return c.Listen != "" || c.NATSURL != "" }

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// nodeName is what cluster.node may be: it is part of NATS subjects.
var nodeName = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

func validateCluster(c Cluster, bad func(key, format string, a ...any)) {
	if c.Node != "" && !nodeName.MatchString(c.Node) {
		bad("cluster.node", "%q is not 1 to 64 letters, digits, '-' or '_'", c.Node)
	}
	if c.Listen != "" {
		if err := checkAddr(c.Listen); err != nil {
			bad("cluster.listen", "%q is not host:port (%v)", c.Listen, err)
		}
	}
	for _, p := range c.Peers {
		if host, _, err := net.SplitHostPort(p); err != nil || host == "" {
			bad("cluster.peers", "%q is not host:port", p)
		} else if err := checkAddr(p); err != nil {
			bad("cluster.peers", "%q is not host:port (%v)", p, err)
		}
	}
	if len(c.Peers) > 0 && c.Listen == "" {
		bad("cluster.peers", "needs cluster.listen (this node's own route address)")
	}
	if set := btoi(c.TLSCert != "") + btoi(c.TLSKey != "") + btoi(c.TLSCA != ""); set > 0 {
		switch {
		case set < 3:
			bad("cluster.tls_cert", "cluster.tls_cert, cluster.tls_key and cluster.tls_ca go together")
		case c.Listen == "":
			bad("cluster.tls_cert", "secures the embedded NATS routes: needs cluster.listen (an external NATS's TLS is its own: tls:// in cluster.nats_url)")
		}
	}
	if c.Secret != "" && len(c.Secret) < 16 {
		bad("cluster.secret", "too short (at least 16 characters; e.g. openssl rand -hex 16)")
	}
	if c.NATSURL != "" {
		if c.Secret != "" {
			bad("cluster.secret", "is the embedded routes' password; give an external NATS's credentials in cluster.nats_url")
		}
		if c.Listen != "" || len(c.Peers) > 0 {
			bad("cluster.nats_url", "an external NATS excludes the embedded one (cluster.listen, cluster.peers)")
		}
		for _, s := range strings.Split(c.NATSURL, ",") {
			u, err := url.Parse(strings.TrimSpace(s))
			if err != nil || (u.Scheme != "nats" && u.Scheme != "tls") || u.Host == "" {
				bad("cluster.nats_url", "%q is not nats://host:port or tls://host:port", s)
			}
		}
	}
}

// Limits keep one client from hurting the others. 0 means unlimited.
type Limits struct {
	MaxConnections      int `yaml:"max_connections"`
	MaxConnectionsPerIP int `yaml:"max_connections_per_ip"`
	// ConnectionRatePerIP: new MQTT connections per second from one
	// address (a burst of as many is allowed).
	ConnectionRatePerIP int `yaml:"connection_rate_per_ip"`
	// MaxPendingConnectionsPerIP: connections from one address that are
	// not a logged-in MQTT client: MQTT until the broker has answered its
	// CONNECT, HTTP ones unless they carry MQTT over WebSocket.
	MaxPendingConnectionsPerIP int `yaml:"max_pending_connections_per_ip"`
	// PublishRatePerClient: PUBLISH packets per second from one client;
	// a faster client is slowed down, not disconnected.
	PublishRatePerClient int `yaml:"publish_rate_per_client"`
	// DevicePublishRate: PUBLISH packets per second from one device
	// connection, with bursts of DevicePublishBurst; a faster device is
	// slowed down. People and admins are not held to it.
	DevicePublishRate  int `yaml:"device_publish_rate"`
	DevicePublishBurst int `yaml:"device_publish_burst"`
	// HTTPMaxBodyBytes: the largest HTTP request body accepted (413 beyond).
	HTTPMaxBodyBytes int64 `yaml:"http_max_body_bytes"`
	// HTTPReadTimeout: time allowed to read a whole HTTP request, headers
	// and body.
	HTTPReadTimeout time.Duration `yaml:"http_read_timeout"`
	// WriteTimeout: how long a write to a connection (MQTT over every
	// transport, HTTP) may make no progress before the connection is
	// closed: a client that stops reading would otherwise block, for good,
	// every publisher of a message it subscribes to at QoS 1/2.
	WriteTimeout time.Duration `yaml:"write_timeout"`
}

// Default returns the built-in defaults; configs/tether.yaml states the same.
func Default() Config {
	return Config{
		DataDir: "./data",
		Log:     Log{Level: "info", Format: "text"},
		MQTT: MQTT{
			Addr:            ":1883",
			TLSAddr:         ":8883",
			MaxPacketSize:   1 << 20,
			ClientQueueSize: 256,
			// 8 MiB of large QoS 0 messages per client's send queue,
			// 256 MiB for all together: 256 slots of 1 MiB messages
			// were 256 MiB per subscriber that stops reading.
			ClientQueueBytes:      8 << 20,
			ClientQueueTotalBytes: 256 << 20,
			ReceiveMaximum:        256,
			MaxInflight:           1024,
			BackpressureWait:      time.Second,
			MaxSessionExpiry:      7 * 24 * time.Hour,
			// 100,000 messages or 64 MiB per session; 1 GiB for all
			// queues together, so that they cannot fill a small disk.
			MaxQueuedMessages:  100_000,
			MaxQueuedBytes:     64 << 20,
			MaxQueueStoreBytes: 1 << 30,
			MaxMessageExpiry:   0,
			SysInterval:        time.Second,
			ConnectTimeout:     10 * time.Second,
			MaxKeepalive:       0,
			ShutdownGrace:      10 * time.Second,
			ReadBufferSize:     2048,
			WriteBufferSize:    2048,
			ProxyProtocolFrom:  []string{},

			// Retained messages live in memory (about 1.4 KB each
			// besides topic and payload) and are all reloaded at
			// start-up: bounds a fleet does not reach (a device retains
			// a few topics, a bridge a few thousand) that keep one
			// device, and all of them, from filling the broker.
			MaxRetainedMessages:          1_000_000,
			MaxRetainedBytes:             512 << 20,
			MaxRetainedMessagesPerDevice: 10_000,
			MaxRetainedBytesPerDevice:    16 << 20,
			// The dashboard holds a dozen or so, a device two; each
			// costs a session about 3 KB.
			MaxSubscriptionsPerClient: 1000,
			// 1,000 filters of 8 levels none of which another shares:
			// each level is a node of the broker's topic tree, some
			// 645 bytes, so about 5 MB.
			MaxSubscriptionLevelsPerClient: 8000,
			// Real topics have a handful of levels; each level of a
			// filter or retained topic costs the engine about 600 bytes.
			MaxTopicLevels: 32,
			// A person's scripts and integrations have a few; each
			// may hold 1,000 subscriptions needing 8,000 levels, some
			// 5.5 MB at worst.
			MaxSessionsPerUser: 10,
		},
		HTTP: HTTP{
			Addr:             ":8080",
			HTTPSAddr:        ":8443",
			AllowedOrigins:   []string{},
			TrustedProxies:   []string{},
			HandshakeTimeout: 10 * time.Second,
			WSCompression:    WSCompressionNoContext, // docs/PERFORMANCE.md
		},
		TLS:  TLS{ReloadInterval: 10 * time.Second},
		Auth: Auth{TokenTTL: 12 * time.Hour, Rules: []Rule{}},
		Telemetry: Telemetry{Retention: 7 * 24 * time.Hour, RollupRetention: 400 * 24 * time.Hour, FlushInterval: time.Second, QueueSize: 262144, QueueBytes: 64 << 20,
			DeviceValuesRate: 1000, DeviceValuesBurst: 10000, RetentionSize: 10 << 30, RollupRetentionSize: 100 << 30, Topics: []TelemetryTopic{}},
		Commands: Commands{MaxPerDevice: 1000},
		Audit:    Audit{Retention: 90 * 24 * time.Hour},
		Limits: Limits{HTTPMaxBodyBytes: 1 << 20, HTTPReadTimeout: 30 * time.Second, WriteTimeout: 10 * time.Second,
			MaxPendingConnectionsPerIP: 1024,
			DevicePublishRate:          100, DevicePublishBurst: 500},
		Security: Security{BanThreshold: 20, BanWindow: 5 * time.Minute, BanDuration: 15 * time.Minute,
			BanExempt: []string{"127.0.0.0/8", "::1"}},
		Cluster: Cluster{Peers: []string{}},
	}
}

// Off is the address value that disables a listener.
const Off = "off"

// Parse reads YAML from r over the defaults. Unknown keys are an error.
// Errors name the key and its line, such as
// "mqtt.max_packet_size (line 12): cannot unmarshal !!str `lots` into uint32".
func Parse(r io.Reader) (Config, error) {
	c := Default()
	data, err := io.ReadAll(r)
	if err != nil {
		return c, fmt.Errorf("config: read: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(withDays(data)))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return c, fmt.Errorf("config: %w", syntaxLine(data, nameKeys(data, err)))
	}
	var more yaml.Node
	if err := dec.Decode(&more); !errors.Is(err, io.EOF) {
		return c, errors.New("config: more than one YAML document (remove the second ---)")
	}
	return c, nil
}

// ParseFile reads the YAML file at path over the defaults.
func ParseFile(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Default(), fmt.Errorf("config: %w", err)
	}
	c, err := Parse(bytes.NewReader(b))
	if err != nil {
		return c, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Validate reports every bad value, each naming its key.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: "+format, append([]any{key}, a...)...))
	}
	if c.DataDir == "" {
		bad("data_dir", "must not be empty")
	}
	if u := c.Storage.PostgresURL; u != "" && !strings.HasPrefix(u, "postgres://") && !strings.HasPrefix(u, "postgresql://") && !strings.Contains(u, "=") {
		bad("storage.postgres_url", "must be a postgres:// URL or a key=value connection string")
	}
	switch strings.ToLower(c.Log.Level) {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level", "%q is not one of debug, info, warn, error", c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		bad("log.format", "%q is not one of text, json", c.Log.Format)
	}
	for _, a := range []struct{ key, addr string }{
		{"mqtt.addr", c.MQTT.Addr}, {"mqtt.tls_addr", c.MQTT.TLSAddr},
		{"http.addr", c.HTTP.Addr}, {"http.https_addr", c.HTTP.HTTPSAddr},
	} {
		key, addr := a.key, a.addr
		if addr == Off {
			continue
		}
		if err := checkAddr(addr); err != nil {
			bad(key, "%q is not host:port or %q (%v)", addr, Off, err)
		}
	}
	if c.MQTT.Addr == Off && c.HTTP.Addr == Off && (!c.TLSEnabled() || c.MQTT.TLSAddr == Off && c.HTTP.HTTPSAddr == Off) {
		bad("mqtt.addr", "every listener is off (mqtt.addr, http.addr, and mqtt.tls_addr, http.https_addr or the certificate): nothing could connect")
	}
	switch c.HTTP.WSCompression {
	case WSCompressionOff, WSCompressionNoContext, WSCompressionContext:
	default:
		bad("http.ws_compression", "%q is not one of off, no_context, context", c.HTTP.WSCompression)
	}
	if (c.TLS.Cert == "") != (c.TLS.Key == "") {
		bad("tls", "cert and key must be given together (cert %q, key %q)", c.TLS.Cert, c.TLS.Key)
	}
	if c.MQTT.MaxPacketSize != 0 && c.MQTT.MaxPacketSize < 64 {
		bad("mqtt.max_packet_size", "%d is too small (at least 64 bytes, or 0 for the MQTT maximum)", c.MQTT.MaxPacketSize)
	}
	if c.MQTT.ClientQueueSize < 1 {
		bad("mqtt.client_queue_size", "must be at least 1")
	}
	if c.MQTT.ClientQueueBytes < 0 {
		bad("mqtt.client_queue_bytes", "must not be negative (0 = no bound)")
	}
	if c.MQTT.ClientQueueTotalBytes < 0 {
		bad("mqtt.client_queue_total_bytes", "must not be negative (0 = no bound)")
	} else if c.MQTT.ClientQueueTotalBytes > 0 && c.MQTT.ClientQueueTotalBytes < c.MQTT.ClientQueueBytes {
		bad("mqtt.client_queue_total_bytes", "must be at least mqtt.client_queue_bytes (%d), or 0 for no bound", c.MQTT.ClientQueueBytes)
	}
	if c.MQTT.ReceiveMaximum < 1 {
		bad("mqtt.receive_maximum", "must be at least 1")
	}
	if c.MQTT.MaxSessionExpiry < 0 || c.MQTT.MaxSessionExpiry > time.Duration(1<<32-1)*time.Second {
		bad("mqtt.max_session_expiry", "must be between 0 and 136y")
	}
	if c.MQTT.MaxQueuedMessages < 1 {
		bad("mqtt.max_queued_messages", "must be at least 1")
	}
	if c.MQTT.MaxQueuedBytes < 1024 {
		bad("mqtt.max_queued_bytes", "must be at least 1024")
	}
	if c.MQTT.MaxQueueStoreBytes < c.MQTT.MaxQueuedBytes {
		bad("mqtt.max_queue_store_bytes", "must be at least mqtt.max_queued_bytes (%d)", c.MQTT.MaxQueuedBytes)
	}
	for _, n := range []struct {
		key string
		v   int64
	}{
		{"mqtt.max_retained_messages", c.MQTT.MaxRetainedMessages},
		{"mqtt.max_retained_bytes", c.MQTT.MaxRetainedBytes},
		{"mqtt.max_retained_messages_per_device", c.MQTT.MaxRetainedMessagesPerDevice},
		{"mqtt.max_retained_bytes_per_device", c.MQTT.MaxRetainedBytesPerDevice},
		{"mqtt.max_subscriptions_per_client", int64(c.MQTT.MaxSubscriptionsPerClient)},
		{"mqtt.max_subscription_levels_per_client", int64(c.MQTT.MaxSubscriptionLevelsPerClient)},
		{"mqtt.max_topic_levels", int64(c.MQTT.MaxTopicLevels)},
		{"mqtt.max_sessions_per_user", int64(c.MQTT.MaxSessionsPerUser)},
		{"commands.max_per_device", int64(c.Commands.MaxPerDevice)},
	} {
		if n.v < 0 {
			bad(n.key, "must not be negative (0 = unlimited)")
		}
	}
	if c.MQTT.BackpressureWait < 0 {
		bad("mqtt.backpressure_wait", "must not be negative (0 turns backpressure off)")
	}
	if c.MQTT.MaxMessageExpiry < 0 {
		bad("mqtt.max_message_expiry", "must not be negative (0 keeps messages until their own expiry)")
	}
	if k := c.MQTT.MaxKeepalive; k < 0 || k > 65535*time.Second || k%time.Second != 0 {
		bad("mqtt.max_keepalive", "must be whole seconds between 0s (the client's choice) and 65535s")
	} else if k > 0 && k < 5*time.Second {
		bad("mqtt.max_keepalive", "%v is too short for real networks (at least 5s, or 0 for the client's choice)", k)
	}
	if c.MQTT.SysInterval < time.Second {
		bad("mqtt.sys_interval", "must be at least 1s")
	}
	for _, d := range []struct {
		key string
		d   time.Duration
	}{
		{"mqtt.connect_timeout", c.MQTT.ConnectTimeout}, {"mqtt.shutdown_grace", c.MQTT.ShutdownGrace},
		{"http.handshake_timeout", c.HTTP.HandshakeTimeout}, {"auth.token_ttl", c.Auth.TokenTTL},
		{"tls.reload_interval", c.TLS.ReloadInterval},
		{"telemetry.flush_interval", c.Telemetry.FlushInterval}, {"telemetry.retention", c.Telemetry.Retention},
		{"audit.retention", c.Audit.Retention},
		{"telemetry.rollup_retention", c.Telemetry.RollupRetention},
		{"limits.write_timeout", c.Limits.WriteTimeout},
	} {
		if d.d <= 0 {
			bad(d.key, "must be a positive duration such as 10s")
		}
	}
	if c.Telemetry.RollupRetention > 0 && c.Telemetry.RollupRetention < c.Telemetry.Retention {
		bad("telemetry.rollup_retention", "%s is shorter than telemetry.retention (%s): the rollups outlive the raw points", c.Telemetry.RollupRetention, c.Telemetry.Retention)
	}
	if c.MQTT.ReadBufferSize < 512 {
		bad("mqtt.read_buffer_size", "%d is too small (at least 512)", c.MQTT.ReadBufferSize)
	}
	if c.MQTT.WriteBufferSize < 512 {
		bad("mqtt.write_buffer_size", "%d is too small (at least 512)", c.MQTT.WriteBufferSize)
	}
	if c.Telemetry.QueueSize < 1 {
		bad("telemetry.queue_size", "must be at least 1")
	}
	if c.Telemetry.QueueBytes < 1<<20 {
		bad("telemetry.queue_bytes", "%d is too small (at least 1048576: one 64 KiB payload must fit many times over)", c.Telemetry.QueueBytes)
	}
	if c.Telemetry.DeviceValuesRate < 0 {
		bad("telemetry.device_values_rate", "%d is negative (0 = no bound)", c.Telemetry.DeviceValuesRate)
	}
	if c.Telemetry.DeviceValuesRate > 0 && c.Telemetry.DeviceValuesBurst < 256 {
		bad("telemetry.device_values_burst", "%d is too small (at least 256: a payload of 256 metrics must fit)", c.Telemetry.DeviceValuesBurst)
	}
	if c.Telemetry.RetentionSize < 0 || (c.Telemetry.RetentionSize > 0 && c.Telemetry.RetentionSize < 64<<20) {
		bad("telemetry.retention_size", "%d is not a size in bytes of at least 67108864 (64 MiB), or 0 for no bound", c.Telemetry.RetentionSize)
	}
	if c.Telemetry.RollupRetentionSize < 0 || (c.Telemetry.RollupRetentionSize > 0 && c.Telemetry.RollupRetentionSize < 64<<20) {
		bad("telemetry.rollup_retention_size", "%d is not a size in bytes of at least 67108864 (64 MiB), or 0 for no bound", c.Telemetry.RollupRetentionSize)
	}
	rules.Check(c.Auth.Rules, bad)
	validateCluster(c.Cluster, bad)
	validateTelemetryTopics(c.Telemetry.Topics, bad)
	for _, p := range c.HTTP.TrustedProxies {
		if _, err := forwarded.ParseCIDROrIP(p); err != nil {
			bad("http.trusted_proxies", "%q: %v", p, err)
		}
	}
	for _, p := range c.MQTT.ProxyProtocolFrom {
		if _, err := forwarded.ParseCIDROrIP(p); err != nil {
			bad("mqtt.proxy_protocol_from", "%q: %v", p, err)
		}
	}
	if c.HTTP.PublicURL != "" {
		if _, err := forwarded.ParsePublicURL(c.HTTP.PublicURL); err != nil {
			bad("http.public_url", "%v", err)
		}
	}
	if c.Limits.MaxConnections < 0 {
		bad("limits.max_connections", "must not be negative")
	}
	if c.Limits.MaxConnectionsPerIP < 0 {
		bad("limits.max_connections_per_ip", "must not be negative")
	}
	if c.Limits.MaxPendingConnectionsPerIP < 0 {
		bad("limits.max_pending_connections_per_ip", "must not be negative (0 = unlimited)")
	}
	if c.Limits.ConnectionRatePerIP < 0 {
		bad("limits.connection_rate_per_ip", "must not be negative (0 = unlimited)")
	}
	if c.Limits.PublishRatePerClient < 0 {
		bad("limits.publish_rate_per_client", "must not be negative (0 = unlimited)")
	}
	if c.Limits.DevicePublishRate < 0 {
		bad("limits.device_publish_rate", "must not be negative (0 = unlimited)")
	}
	if c.Limits.DevicePublishBurst < 0 {
		bad("limits.device_publish_burst", "must not be negative")
	} else if c.Limits.DevicePublishRate > 0 && c.Limits.DevicePublishBurst == 0 {
		bad("limits.device_publish_burst", "must be at least 1 when limits.device_publish_rate is set")
	}
	if c.Limits.HTTPMaxBodyBytes < 1024 {
		bad("limits.http_max_body_bytes", "%d is too small (at least 1024)", c.Limits.HTTPMaxBodyBytes)
	}
	if c.Security.BanThreshold < 0 {
		bad("security.ban_threshold", "must not be negative (0 turns bans off)")
	} else if c.Security.BanThreshold > 0 {
		if c.Security.BanWindow <= 0 {
			bad("security.ban_window", "must be a positive duration such as 5m")
		}
		if c.Security.BanDuration <= 0 {
			bad("security.ban_duration", "must be a positive duration such as 15m")
		}
	}
	for _, p := range c.Security.BanExempt {
		if _, err := forwarded.ParseCIDROrIP(p); err != nil {
			bad("security.ban_exempt", "%q: %v", p, err)
		}
	}
	if c.Limits.HTTPReadTimeout <= 0 {
		bad("limits.http_read_timeout", "must be a positive duration such as 30s")
	}
	return errors.Join(errs...)
}

// hostName is what a listener's host may be when it is not an IP address.
var hostName = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$`)

// checkAddr checks a listener address ("host:port", ":port") without
// resolving or binding it.
func checkAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || (n == 0 && port != "0") {
		return fmt.Errorf("port %q is not a number from 0 to 65535", port)
	}
	if host != "" && net.ParseIP(host) == nil && !hostName.MatchString(host) {
		return fmt.Errorf("host %q is not an IP address or a host name", host)
	}
	return nil
}

// Values of http.ws_compression.
const (
	WSCompressionOff       = "off"
	WSCompressionNoContext = "no_context"
	WSCompressionContext   = "context"
)

// TLSEnabled reports whether a certificate and key are configured.
func (c *Config) TLSEnabled() bool { return c.TLS.Cert != "" && c.TLS.Key != "" }
