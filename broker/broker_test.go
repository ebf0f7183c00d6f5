package broker

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
	)
}

// testBroker starts a broker with MQTT over TCP on a loopback port and,
// when ws is set, MQTT over WebSocket on an httptest server; it is shut
// down when the test ends.
func testBroker(t *testing.T, mutate func(*Options)) (b *Broker, wsURL string) {
	t.Helper()
	o := DefaultOptions()
	o.TCPAddr, o.WebSocket = "127.0.0.1:0", true
	o.AllowAnonymous = true
	if mutate != nil {
		mutate(&o)
	}
	o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	b, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(b.WebSocketHandler())
	t.Cleanup(func() {
		b.Shutdown(t.Context())
		srv.Close()
	})
	return b, "ws" + strings.TrimPrefix(srv.URL, "http")
}

// connectPacket is a clean-session CONNECT, keep-alive 0, for protocol
// level 4 (3.1.1) or 5.
func connectPacket(version byte, id string) []byte {
	var b bytes.Buffer
	str := func(s string) {
		_ = binary.Write(&b, binary.BigEndian, uint16(len(s)))
		b.WriteString(s)
	}
	str("MQTT")
	b.Write([]byte{version, 0x02, 0, 0})
	if version == 5 {
		b.WriteByte(0)
	}
	str(id)
	return append([]byte{0x10, byte(b.Len())}, b.Bytes()...)
}

// dialConnect connects over TCP, sends CONNECT and returns the connection
// and the first packet the broker answers with (header byte and body).
func dialConnect(t testing.TB, addr string, version byte, id string) (net.Conn, byte, []byte) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(5 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write(connectPacket(version, id)); err != nil {
		t.Fatal(err)
	}
	h := make([]byte, 2)
	if _, err := io.ReadFull(c, h); err != nil {
		t.Fatalf("read CONNACK: %v", err)
	}
	body := make([]byte, h[1])
	if _, err := io.ReadFull(c, body); err != nil {
		t.Fatal(err)
	}
	return c, h[0], body
}

func TestCapabilities(t *testing.T) {
	tests := []struct {
		name  string
		cfg   func(c *Options)
		check func(t *testing.T, got uint32, c Options)
	}{
		{"defaults", func(c *Options) {}, nil},
		{"session expiry beyond uint32 is capped", func(c *Options) { c.MaxSessionExpiry = 200 * 365 * 24 * time.Hour }, nil},
		{"message expiry", func(c *Options) { c.MaxMessageExpiry = time.Hour }, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := DefaultOptions()
			tt.cfg(&m)
			c := Capabilities(m)
			if c.MaximumPacketSize != m.MaxPacketSize || c.MaximumClientWritesPending != m.ClientQueueSize ||
				c.ReceiveMaximum != m.ReceiveMaximum || c.MaximumInflight != m.MaxInflight {
				t.Fatalf("capabilities %+v do not follow %+v", c, m)
			}
			if want := int64(m.MaxMessageExpiry / time.Second); c.MaximumMessageExpiryInterval != want {
				t.Fatalf("message expiry %d, want %d (0: retained messages never expire unless they say so)", c.MaximumMessageExpiryInterval, want)
			}
			want := uint32(min(m.MaxSessionExpiry/time.Second, math.MaxUint32))
			if c.MaximumSessionExpiryInterval != want {
				t.Fatalf("session expiry %d, want %d", c.MaximumSessionExpiryInterval, want)
			}
		})
	}
	if d := Capabilities(DefaultOptions()); d.MaximumMessageExpiryInterval != 0 || d.MaximumPacketSize != 1<<20 {
		t.Fatalf("defaults: retained expiry %d, packet size %d", d.MaximumMessageExpiryInterval, d.MaximumPacketSize)
	}
}

// TestAnonymousPolicy: without a registry, --allow-anonymous decides; a
// refusal is CONNACK "not authorized" in each protocol's terms.
func TestAnonymousPolicy(t *testing.T) {
	tests := []struct {
		allow   bool
		version byte
		want    []byte // CONNACK body
	}{
		{false, 4, []byte{0, 0x05}},
		{false, 5, []byte{0, 0x87}},
		{true, 4, []byte{0, 0}},
		{true, 5, []byte{0, 0}},
	}
	for _, tt := range tests {
		b, _ := testBroker(t, func(c *Options) { c.AllowAnonymous = tt.allow })
		c, first, body := dialConnect(t, b.TCP.Address(), tt.version, "anon")
		if first != 0x20 || len(body) < 2 || !bytes.Equal(body[:2], tt.want) {
			t.Errorf("allow=%v v%d: CONNACK %#x %x, want %x", tt.allow, tt.version, first, body, tt.want)
		}
		if !tt.allow {
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Read(make([]byte, 1)); err == nil {
				t.Errorf("allow=false v%d: connection still open after refusal", tt.version)
			}
		}
	}
}

// TestCollector: the Prometheus figures follow the connections.
func TestCollector(t *testing.T) {
	b, _ := testBroker(t, nil)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(b))
	dialConnect(t, b.TCP.Address(), 4, "metrics")
	value := func(name, transport string) float64 {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != name {
				continue
			}
			for _, m := range mf.GetMetric() {
				if transport != "" && !hasLabel(m, "transport", transport) {
					continue
				}
				if m.GetGauge() != nil {
					return m.GetGauge().GetValue()
				}
				return m.GetCounter().GetValue()
			}
		}
		t.Fatalf("no metric %s{transport=%q}", name, transport)
		return 0
	}
	if v := value("tether_connections", "tcp"); v != 1 {
		t.Errorf("tether_connections{transport=tcp} = %v, want 1", v)
	}
	if v := value("tether_connections", "ws"); v != 0 {
		t.Errorf("tether_connections{transport=ws} = %v, want 0", v)
	}
	if v := value("tether_mqtt_clients_connected", ""); v != 1 {
		t.Errorf("tether_mqtt_clients_connected = %v, want 1", v)
	}
	if v := value("tether_bytes_received_total", "tcp"); v < float64(len(connectPacket(4, "metrics"))) {
		t.Errorf("tether_bytes_received_total{transport=tcp} = %v", v)
	}
	// The listener counts what it wrote once the write has returned,
	// which may be after the client has read it.
	checkFor(t, 5*time.Second, func() error {
		if v := value("tether_bytes_sent_total", "tcp"); v < 4 {
			return fmt.Errorf("tether_bytes_sent_total{transport=tcp} = %v, want the CONNACK", v)
		}
		return nil
	})
	if v := value("tether_mqtt_packets_received_total", ""); v < 1 {
		t.Errorf("tether_mqtt_packets_received_total = %v", v)
	}
}

func hasLabel(m *dto.Metric, name, value string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == name && l.GetValue() == value {
			return true
		}
	}
	return false
}

// TestTransport: a client's listener id is its transport name.
func TestTransport(t *testing.T) {
	b, _ := testBroker(t, nil)
	dialConnect(t, b.TCP.Address(), 4, "which")
	cl, ok := b.Server.Clients.Get("which")
	if !ok || Transport(cl) != "tcp" {
		t.Fatalf("client %v, transport %q; want tcp", ok, Transport(cl))
	}
}

// TestAbort: a broker that never starts releases its sockets.
func TestAbort(t *testing.T) {
	o := DefaultOptions()
	o.TCPAddr = "127.0.0.1:0"
	o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	b, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	addr := b.TCP.Address()
	b.Abort()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("address still bound after Abort: %v", err)
	}
	l.Close()
}
