package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/eclipse/paho.golang/paho"
	paho3 "github.com/eclipse/paho.mqtt.golang"
)

// message is one PUBLISH a test client received.
type message struct {
	topic   string
	payload string
	qos     byte
	retain  bool
}

// testClient is what the end-to-end tests need of an MQTT client, whatever
// its protocol version and transport.
type testClient interface {
	subscribe(t testing.TB, filter string, qos byte)
	publish(t testing.TB, topic, payload string, qos byte, retain bool)
	inbox() <-chan message
	close()
}

// clientSpec names a client: protocol version 3 (3.1.1) or 5, over tcp or
// ws.
type clientSpec struct {
	version   int
	transport string
}

func (s clientSpec) String() string { return fmt.Sprintf("v%d-%s", s.version, s.transport) }

var clientID atomic.Int64

func nextID(prefix string) string { return fmt.Sprintf("%s-%d", prefix, clientID.Add(1)) }

// connectClient connects a client as spec says, with an optional will.
func connectClient(t testing.TB, a *app, spec clientSpec, will *message) testClient {
	t.Helper()
	if spec.version == 5 {
		return connect5(t, dial5(t, a, spec.transport), nextID(spec.String()), will)
	}
	return connect3(t, a, spec.transport, nextID(spec.String()), will)
}

// --- MQTT 3.1.1: github.com/eclipse/paho.mqtt.golang ---

type client3 struct {
	c    paho3.Client
	box  chan message
	conn atomic.Value // net.Conn: the connection paho opened
}

func connect3(t testing.TB, a *app, transport, id string, will *message) *client3 {
	t.Helper()
	broker := "tcp://" + a.mqttAddr()
	if transport == "ws" {
		broker = wsURL(a) // paho offers subprotocol "mqtt"
	}
	box := make(chan message, 100)
	cl := &client3{box: box}
	o := paho3.NewClientOptions().AddBroker(broker).SetClientID(id).SetProtocolVersion(4).
		SetAutoReconnect(false).SetConnectRetry(false).SetCleanSession(true).
		SetConnectTimeout(5 * time.Second).SetKeepAlive(30 * time.Second).
		SetDefaultPublishHandler(func(_ paho3.Client, m paho3.Message) {
			box <- message{m.Topic(), string(m.Payload()), m.Qos(), m.Retained()}
		})
	if will != nil {
		o.SetBinaryWill(will.topic, []byte(will.payload), will.qos, will.retain)
	}
	// paho's own dialers, kept so a test can drop the connection.
	o.SetCustomOpenConnectionFn(func(uri *url.URL, o paho3.ClientOptions) (net.Conn, error) {
		var c net.Conn
		var err error
		if uri.Scheme == "ws" {
			c, err = paho3.NewWebsocket(uri.String(), nil, 5*time.Second, nil, nil)
		} else {
			c, err = net.DialTimeout("tcp", uri.Host, 5*time.Second)
		}
		if err == nil {
			cl.conn.Store(c)
		}
		return c, err
	})
	cl.c = paho3.NewClient(o)
	if tok := cl.c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s over %s: %v", id, transport, tok.Error())
	}
	t.Cleanup(cl.close)
	return cl
}

func (c *client3) subscribe(t testing.TB, filter string, qos byte) {
	t.Helper()
	if tok := c.c.Subscribe(filter, qos, nil); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", filter, tok.Error())
	}
}

func (c *client3) publish(t testing.TB, topic, payload string, qos byte, retain bool) {
	t.Helper()
	if tok := c.c.Publish(topic, qos, retain, payload); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}

func (c *client3) inbox() <-chan message { return c.box }

func (c *client3) close() {
	if c.c.IsConnected() {
		c.c.Disconnect(250)
	}
}

// --- MQTT 5: github.com/eclipse/paho.golang ---

type client5 struct {
	c            *paho.Client
	box          chan message
	disconnected chan *paho.Disconnect
}

// dial5 opens the network connection for an MQTT 5 client: TCP, or a
// WebSocket with subprotocol mqtt (coder/websocket).
func dial5(t testing.TB, a *app, transport string) net.Conn {
	t.Helper()
	switch transport {
	case "tcp":
		return dialTCP(t, a.mqttAddr())
	case "ws":
		return atomicWrites(t, dialWS(t, wsURL(a), nil))
	}
	t.Fatalf("unknown transport %q", transport)
	return nil
}

// dialWS opens an MQTT-over-WebSocket connection as a net.Conn.
func dialWS(t testing.TB, url string, tlsConf *tls.Config) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	opts := &websocket.DialOptions{Subprotocols: []string{"mqtt"}}
	if tlsConf != nil {
		opts.HTTPClient = &http.Client{Transport: &http.Transport{TLSClientConfig: tlsConf}}
	}
	ws, _, err := websocket.Dial(ctx, url, opts)
	if err != nil {
		t.Fatalf("websocket dial %s: %v", url, err)
	}
	nc := websocket.NetConn(context.Background(), ws, websocket.MessageBinary)
	t.Cleanup(func() { nc.Close() })
	return nc
}

// atomicWrites puts a local socket pair in front of conn. paho.golang
// writes each packet as several buffers (net.Buffers) and from more than
// one goroutine (its pinger sends PINGREQ at once after CONNACK): on a TCP
// or Unix socket each packet is one atomic writev, but on a WebSocket
// net.Conn every Write is a message of its own, so two packets can
// interleave and the broker rightly rejects the stream. The socket pair
// makes each packet atomic again; its other end is pumped to conn in
// whatever chunks arrive, which the broker must (and does) accept.
func atomicWrites(t testing.TB, conn net.Conn) net.Conn {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	ends := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		ends[i], err = net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	go func() { _, _ = io.Copy(conn, ends[1]); conn.Close() }()
	go func() { _, _ = io.Copy(ends[1], conn); ends[1].Close() }()
	t.Cleanup(func() { ends[0].Close() })
	return ends[0]
}

func connect5(t testing.TB, conn net.Conn, id string, will *message) *client5 {
	t.Helper()
	cl := &client5{box: make(chan message, 100), disconnected: make(chan *paho.Disconnect, 1)}
	cl.c = paho.NewClient(paho.ClientConfig{
		Conn: conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(p paho.PublishReceived) (bool, error) {
			cl.box <- message{p.Packet.Topic, string(p.Packet.Payload), p.Packet.QoS, p.Packet.Retain}
			return true, nil
		}},
		OnServerDisconnect: func(d *paho.Disconnect) { cl.disconnected <- d },
	})
	cp := &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: true}
	if will != nil {
		cp.WillMessage = &paho.WillMessage{Topic: will.topic, Payload: []byte(will.payload), QoS: will.qos, Retain: will.retain}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ca, err := cl.c.Connect(ctx, cp)
	if err != nil {
		t.Fatalf("connect %s: %v", id, err)
	}
	if ca.ReasonCode != 0 {
		t.Fatalf("connect %s: CONNACK reason 0x%02x", id, ca.ReasonCode)
	}
	t.Cleanup(cl.close)
	return cl
}

func (c *client5) subscribe(t testing.TB, filter string, qos byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sa, err := c.c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: qos}}})
	if err != nil {
		t.Fatalf("subscribe %s: %v", filter, err)
	}
	if len(sa.Reasons) != 1 || sa.Reasons[0] != qos {
		t.Fatalf("subscribe %s: SUBACK %v", filter, sa.Reasons)
	}
}

func (c *client5) publish(t testing.TB, topic, payload string, qos byte, retain bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.c.Publish(ctx, &paho.Publish{Topic: topic, Payload: []byte(payload), QoS: qos, Retain: retain}); err != nil {
		t.Fatalf("publish %s: %v", topic, err)
	}
}

func (c *client5) inbox() <-chan message { return c.box }

func (c *client5) close() {
	select {
	case <-c.c.Done():
	default:
		_ = c.c.Disconnect(&paho.Disconnect{ReasonCode: 0})
	}
	<-c.c.Done()
}

// expectMessage waits for the next message on box and compares it.
func expectMessage(t testing.TB, box <-chan message, want message) {
	t.Helper()
	select {
	case got := <-box:
		if got != want {
			t.Fatalf("received %+v, want %+v", got, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("no message; want %+v", want)
	}
}

// expectNoMessage checks that nothing is waiting on box.
func expectNoMessage(t testing.TB, box <-chan message) {
	t.Helper()
	select {
	case got := <-box:
		t.Fatalf("unexpected message %+v", got)
	default:
	}
}
