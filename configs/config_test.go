package configs

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// TestSampleIsDefault proves configs/tether.yaml states the defaults.
func TestSampleIsDefault(t *testing.T) {
	got, err := Parse(bytes.NewReader(Sample))
	if err != nil {
		t.Fatalf("parse the sample: %v", err)
	}
	if want := Default(); !reflect.DeepEqual(got, want) {
		t.Fatalf("the sample does not parse to Default():\n got %+v\nwant %+v", got, want)
	}
	if err := got.Validate(); err != nil {
		t.Fatalf("the defaults do not validate: %v", err)
	}
}

// TestSampleHasEveryKey walks Config and finds each key in the sample.
func TestSampleHasEveryKey(t *testing.T) {
	var doc yaml.Node
	if err := yaml.Unmarshal(Sample, &doc); err != nil {
		t.Fatal(err)
	}
	inSample := map[string]bool{}
	var collect func(n *yaml.Node, prefix string)
	collect = func(n *yaml.Node, prefix string) {
		if n.Kind == yaml.DocumentNode {
			collect(n.Content[0], prefix)
			return
		}
		if n.Kind != yaml.MappingNode {
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			key := prefix + n.Content[i].Value
			inSample[key] = true
			collect(n.Content[i+1], key+".")
		}
	}
	collect(&doc, "")
	c := Default()
	keys := map[string]reflect.Value{}
	walk(reflect.ValueOf(&c).Elem(), "", keys)
	if len(keys) < 30 {
		t.Fatalf("walk found only %d keys", len(keys))
	}
	for _, k := range sortedKeys(keys) {
		if !inSample[k] {
			t.Errorf("key %s is not documented in configs/tether.yaml", k)
		}
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		name, yaml string
		check      func(c Config) bool
		wantErr    string
	}{
		{"empty file", "", func(c Config) bool { return reflect.DeepEqual(c, Default()) }, ""},
		{"one key", "mqtt:\n  addr: 127.0.0.1:1999\n", func(c Config) bool {
			return c.MQTT.Addr == "127.0.0.1:1999" && c.HTTP.Addr == ":8080"
		}, ""},
		{"duration", "mqtt:\n  shutdown_grace: 3s\n", func(c Config) bool { return c.MQTT.ShutdownGrace == 3*time.Second }, ""},
		{"list", "http:\n  allowed_origins: [a.example.com, '*.b.example']\n", func(c Config) bool {
			return reflect.DeepEqual(c.HTTP.AllowedOrigins, []string{"a.example.com", "*.b.example"})
		}, ""},
		{"unknown key", "mqtt:\n  adr: :1\n", nil, "mqtt.adr (line 2): unknown key"},
		{"wrong type", "mqtt:\n  max_packet_size: lots\n", nil, "mqtt.max_packet_size (line 2): cannot unmarshal"},
		{"bare number as duration", "mqtt:\n  connect_timeout: 10\n", nil, `mqtt.connect_timeout (line 2): "10" is not a duration such as 10s`},
		{"days", "telemetry:\n  retention: 7d # a week\nauth:\n  token_ttl: \"1d12h\"\n", func(c Config) bool {
			return c.Telemetry.Retention == 7*24*time.Hour && c.Auth.TokenTTL == 36*time.Hour
		}, ""},
		{"days elsewhere are text", "data_dir: ./7d\n", func(c Config) bool { return c.DataDir == "./7d" }, ""},
		{"bad days", "telemetry:\n  retention: 7dd\n", nil, `telemetry.retention (line 2): "7dd" is not a duration`},
		// The parser names the line where the enclosing block began; the
		// error must name the line at fault and quote it.
		{"mis-indented key", "mqtt:\n  addr: \":1884\"\n tls_addr: x\nhttp: {}\n", nil, "line 3: did not find expected key:\n     tls_addr: x"},
		{"unclosed list", "mqtt:\n  addr: \":1884\"\n\nhttp:\n  allowed_origins: [a\nlog: {}\n", nil, "line 5: did not find expected ',' or ']'"},
		{"tab", "mqtt:\n\taddr: x\n", nil, "line 2: found character that cannot start any token"},
		{"list item", "http:\n  trusted_proxies:\n    - 10.0.0.1\n    - [x]\n", nil, "http.trusted_proxies (line 4)"},
		{"two documents", "data_dir: a\n---\ndata_dir: b\n", nil, "more than one YAML document"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse(strings.NewReader(tt.yaml))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(c) {
				t.Fatalf("unexpected config %+v", c)
			}
		})
	}
}

// TestValidate: each bad value is reported with its key.
func TestValidate(t *testing.T) {
	tests := []struct {
		key    string
		mutate func(c *Config)
	}{
		{"data_dir", func(c *Config) { c.DataDir = "" }},
		{"log.level", func(c *Config) { c.Log.Level = "loud" }},
		{"log.format", func(c *Config) { c.Log.Format = "xml" }},
		{"mqtt.addr", func(c *Config) { c.MQTT.Addr = "1883" }},
		{"mqtt.tls_addr", func(c *Config) { c.MQTT.TLSAddr = "nope" }},
		{"http.addr", func(c *Config) { c.HTTP.Addr = "localhost" }},
		{"http.https_addr", func(c *Config) { c.HTTP.HTTPSAddr = "" }},
		{"tls", func(c *Config) { c.TLS.Cert = "cert.pem" }},
		{"mqtt.max_packet_size", func(c *Config) { c.MQTT.MaxPacketSize = 10 }},
		{"mqtt.client_queue_size", func(c *Config) { c.MQTT.ClientQueueSize = 0 }},
		{"mqtt.client_queue_bytes", func(c *Config) { c.MQTT.ClientQueueBytes = -1 }},
		{"mqtt.client_queue_total_bytes", func(c *Config) { c.MQTT.ClientQueueTotalBytes = -1 }},
		{"mqtt.client_queue_total_bytes", func(c *Config) { c.MQTT.ClientQueueTotalBytes = c.MQTT.ClientQueueBytes - 1 }},
		{"mqtt.receive_maximum", func(c *Config) { c.MQTT.ReceiveMaximum = 0 }},
		{"mqtt.max_session_expiry", func(c *Config) { c.MQTT.MaxSessionExpiry = -time.Second }},
		{"mqtt.max_message_expiry", func(c *Config) { c.MQTT.MaxMessageExpiry = -time.Second }},
		{"mqtt.max_subscription_levels_per_client", func(c *Config) { c.MQTT.MaxSubscriptionLevelsPerClient = -1 }},
		{"mqtt.sys_interval", func(c *Config) { c.MQTT.SysInterval = time.Millisecond }},
		{"mqtt.connect_timeout", func(c *Config) { c.MQTT.ConnectTimeout = 0 }},
		{"mqtt.shutdown_grace", func(c *Config) { c.MQTT.ShutdownGrace = -1 }},
		{"mqtt.read_buffer_size", func(c *Config) { c.MQTT.ReadBufferSize = 10 }},
		{"mqtt.write_buffer_size", func(c *Config) { c.MQTT.WriteBufferSize = 10 }},
		{"http.handshake_timeout", func(c *Config) { c.HTTP.HandshakeTimeout = 0 }},
		{"http.ws_compression", func(c *Config) { c.HTTP.WSCompression = "gzip" }},
		{"http.trusted_proxies", func(c *Config) { c.HTTP.TrustedProxies = []string{"10.0.0.0/33"} }},
		{"http.public_url", func(c *Config) { c.HTTP.PublicURL = "iot.example.com" }},
		{"http.public_url", func(c *Config) { c.HTTP.PublicURL = "https://iot.example.com/dashboard" }},
		{"http.public_url", func(c *Config) { c.HTTP.PublicURL = "https://iot.example.com:99999" }},
		{"mqtt.proxy_protocol_from", func(c *Config) { c.MQTT.ProxyProtocolFrom = []string{"lb.example"} }},
		{"auth.token_ttl", func(c *Config) { c.Auth.TokenTTL = 0 }},
		{"telemetry.retention", func(c *Config) { c.Telemetry.Retention = 0 }},
		{"telemetry.rollup_retention", func(c *Config) { c.Telemetry.RollupRetention = 0 }},
		{"telemetry.rollup_retention", func(c *Config) { c.Telemetry.RollupRetention = time.Hour }},
		{"telemetry.flush_interval", func(c *Config) { c.Telemetry.FlushInterval = 0 }},
		{"telemetry.queue_size", func(c *Config) { c.Telemetry.QueueSize = 0 }},
		{"limits.max_connections", func(c *Config) { c.Limits.MaxConnections = -1 }},
		{"limits.max_connections_per_ip", func(c *Config) { c.Limits.MaxConnectionsPerIP = -1 }},
		{"telemetry.queue_bytes", func(c *Config) { c.Telemetry.QueueBytes = 1000 }},
		{"telemetry.device_values_rate", func(c *Config) { c.Telemetry.DeviceValuesRate = -1 }},
		{"telemetry.device_values_burst", func(c *Config) { c.Telemetry.DeviceValuesBurst = 255 }},
		{"telemetry.retention_size", func(c *Config) { c.Telemetry.RetentionSize = -1 }},
		{"telemetry.retention_size", func(c *Config) { c.Telemetry.RetentionSize = 10 }},
		{"telemetry.rollup_retention_size", func(c *Config) { c.Telemetry.RollupRetentionSize = -1 }},
		{"telemetry.rollup_retention_size", func(c *Config) { c.Telemetry.RollupRetentionSize = 64<<20 - 1 }},
		{"limits.device_publish_rate", func(c *Config) { c.Limits.DevicePublishRate = -1 }},
		{"limits.device_publish_burst", func(c *Config) { c.Limits.DevicePublishBurst = 0 }},
		{"cluster.node", func(c *Config) { c.Cluster.Node = "a.b" }},
		{"cluster.node", func(c *Config) { c.Cluster.Node = strings.Repeat("n", 65) }},
		{"cluster.listen", func(c *Config) { c.Cluster.Listen = "6222" }},
		{"cluster.peers", func(c *Config) { c.Cluster.Listen, c.Cluster.Peers = ":6222", []string{":6222"} }},
		{"cluster.peers", func(c *Config) { c.Cluster.Peers = []string{"b:6222"} }},
		{"cluster.nats_url", func(c *Config) { c.Cluster.NATSURL = "http://nats:4222" }},
		{"cluster.secret", func(c *Config) { c.Cluster.Listen, c.Cluster.Secret = ":6222", "short" }},
		{"cluster.secret", func(c *Config) { c.Cluster.NATSURL, c.Cluster.Secret = "nats://n:4222", "0123456789abcdef" }},
		{"cluster.nats_url", func(c *Config) { c.Cluster.NATSURL, c.Cluster.Listen = "nats://nats:4222", ":6222" }},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			c := Default()
			tt.mutate(&c)
			err := c.Validate()
			if err == nil || !strings.HasPrefix(err.Error(), tt.key+":") {
				t.Fatalf("Validate() = %v, want an error starting %q", err, tt.key+":")
			}
		})
	}
	t.Run("cluster", func(t *testing.T) {
		c := Default()
		c.Cluster = Cluster{Node: "node-1", Listen: "0.0.0.0:6222", Peers: []string{"node-1:6222", "10.0.0.2:6222"}}
		if err := c.Validate(); err != nil || !c.Cluster.Enabled() {
			t.Fatalf("Validate() = %v, enabled %v", err, c.Cluster.Enabled())
		}
		c.Cluster = Cluster{NATSURL: "nats://a:4222,tls://b:4222"}
		if err := c.Validate(); err != nil || !c.Cluster.Enabled() {
			t.Fatalf("Validate() = %v, enabled %v", err, c.Cluster.Enabled())
		}
		if Default().Cluster.Enabled() {
			t.Fatal("a cluster by default")
		}
	})
	t.Run("off disables", func(t *testing.T) {
		c := Default()
		c.MQTT.Addr = Off
		if err := c.Validate(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("no listener", func(t *testing.T) {
		c := Default()
		c.MQTT.Addr, c.HTTP.Addr = Off, Off // and no certificate: TLS and HTTPS are off too
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "every listener is off") {
			t.Fatalf("Validate() = %v, want every listener is off", err)
		}
		c.TLS.Cert, c.TLS.Key = "cert.pem", "key.pem"
		if err := c.Validate(); err != nil {
			t.Fatalf("with TLS on: %v", err)
		}
	})
	for _, addr := range []string{":99999", ":http", "local host:1883", "-x:1", ":-1", "[::1:1883"} {
		t.Run("bad address "+addr, func(t *testing.T) {
			c := Default()
			c.MQTT.Addr = addr
			if err := c.Validate(); err == nil || !strings.HasPrefix(err.Error(), "mqtt.addr:") {
				t.Fatalf("Validate() = %v, want mqtt.addr refused", err)
			}
		})
	}
	for _, addr := range []string{":0", "127.0.0.1:1883", "[::1]:1883", "localhost:8080", "broker.example.com:1"} {
		c := Default()
		c.MQTT.Addr = addr
		if err := c.Validate(); err != nil {
			t.Errorf("%s: %v", addr, err)
		}
	}
}

func TestApplyEnv(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		check   func(c Config) bool
		wantErr string
	}{
		{"long name", map[string]string{"TETHER_MQTT_ADDR": "127.0.0.1:1"},
			func(c Config) bool { return c.MQTT.Addr == "127.0.0.1:1" }, ""},
		{"alias", map[string]string{"TETHER_ALLOW_ANONYMOUS": "true"},
			func(c Config) bool { return c.Auth.AllowAnonymous }, ""},
		{"alias wins over long name", map[string]string{"TETHER_AUTH_ALLOW_ANONYMOUS": "false", "TETHER_ALLOW_ANONYMOUS": "true"},
			func(c Config) bool { return c.Auth.AllowAnonymous }, ""},
		{"tls aliases", map[string]string{"TETHER_TLS_ADDR": ":1", "TETHER_HTTPS_ADDR": ":2", "TETHER_TLS_CERT": "c", "TETHER_TLS_KEY": "k"},
			func(c Config) bool {
				return c.MQTT.TLSAddr == ":1" && c.HTTP.HTTPSAddr == ":2" && c.TLS.Cert == "c" && c.TLS.Key == "k"
			}, ""},
		{"duration", map[string]string{"TETHER_MQTT_SHUTDOWN_GRACE": "2s"},
			func(c Config) bool { return c.MQTT.ShutdownGrace == 2*time.Second }, ""},
		{"list", map[string]string{"TETHER_HTTP_TRUSTED_PROXIES": "10.0.0.1, 192.168.0.0/16"},
			func(c Config) bool {
				return reflect.DeepEqual(c.HTTP.TrustedProxies, []string{"10.0.0.1", "192.168.0.0/16"})
			}, ""},
		{"subscription levels", map[string]string{"TETHER_MQTT_MAX_SUBSCRIPTION_LEVELS_PER_CLIENT": "0"},
			func(c Config) bool { return c.MQTT.MaxSubscriptionLevelsPerClient == 0 }, ""},
		{"data dir", map[string]string{"TETHER_DATA_DIR": "/var/lib/tether"},
			func(c Config) bool { return c.DataDir == "/var/lib/tether" }, ""},
		{"other TETHER_ variables are not keys", map[string]string{"TETHER_TOKEN": "x", "TETHER_ADMIN_PASSWORD": "y"},
			func(c Config) bool { return reflect.DeepEqual(c, Default()) }, ""},
		{"bad bool", map[string]string{"TETHER_ALLOW_ANONYMOUS": "yes please"}, nil, "TETHER_ALLOW_ANONYMOUS (auth.allow_anonymous)"},
		{"bad number", map[string]string{"TETHER_MQTT_MAX_PACKET_SIZE": "-1"}, nil, "TETHER_MQTT_MAX_PACKET_SIZE (mqtt.max_packet_size)"},
		{"bad duration", map[string]string{"TETHER_MQTT_CONNECT_TIMEOUT": "10"}, nil, "TETHER_MQTT_CONNECT_TIMEOUT (mqtt.connect_timeout)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Default()
			err := c.ApplyEnv(func(k string) (string, bool) { v, ok := tt.env[k]; return v, ok })
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(c) {
				t.Fatalf("unexpected config %+v", c)
			}
		})
	}
}

func TestParseDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"7d": 7 * 24 * time.Hour, "1d12h": 36 * time.Hour, "1.5d": 36 * time.Hour, "90s": 90 * time.Second, " 2h ": 2 * time.Hour, "-1d": -24 * time.Hour,
	} {
		if got, err := ParseDuration(in); err != nil || got != want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "d", "7", "7dd", "7 d", "1w", "9999999d"} {
		if _, err := ParseDuration(in); err == nil {
			t.Errorf("ParseDuration(%q): no error", in)
		}
	}
	var c Config = Default()
	if err := c.ApplyEnv(func(k string) (string, bool) { return "30d", k == "TETHER_TELEMETRY_RETENTION" }); err != nil || c.Telemetry.Retention != 30*24*time.Hour {
		t.Errorf("TETHER_TELEMETRY_RETENTION=30d: %v, %v", c.Telemetry.Retention, err)
	}
	if err := c.Set("auth.token_ttl", "2d"); err != nil || c.Auth.TokenTTL != 48*time.Hour {
		t.Errorf("Set auth.token_ttl 2d: %v, %v", c.Auth.TokenTTL, err)
	}
	if v, _ := c.Get("auth.token_ttl"); v != "48h0m0s" {
		t.Errorf("Get auth.token_ttl = %q", v)
	}
}

func TestSet(t *testing.T) {
	c := Default()
	if err := c.Set("mqtt.addr", "off"); err != nil || c.MQTT.Addr != Off {
		t.Fatalf("Set mqtt.addr: %v, %q", err, c.MQTT.Addr)
	}
	if err := c.Set("no.such", "1"); err == nil {
		t.Fatal("Set of an unknown key succeeded")
	}
	if err := c.Set("mqtt.receive_maximum", "70000"); err == nil || !strings.HasPrefix(err.Error(), "mqtt.receive_maximum:") {
		t.Fatalf("Set of a value out of range: %v", err)
	}
}
