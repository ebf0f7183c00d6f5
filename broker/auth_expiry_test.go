package broker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	pahopackets "github.com/eclipse/paho.golang/packets"
	paho5 "github.com/eclipse/paho.golang/paho"
	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tether-iot/tether/devices"
)

// expClient is an MQTT 5 client (paho.golang) over TCP or, with ws, over
// WebSocket as the dashboard's; disconnects get the server's DISCONNECT,
// lost is closed when the connection ends, msgs gets each PUBLISH's topic.
type expClient struct {
	c           *paho5.Client
	disconnects chan *paho5.Disconnect
	lost        chan struct{}
	msgs        chan string
}

func connectExp(t *testing.T, e *authEnv, ws bool, id, user, pass string) *expClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var conn net.Conn
	if ws {
		wc, _, err := websocket.Dial(ctx, e.ws, &websocket.DialOptions{Subprotocols: []string{"mqtt"}})
		if err != nil {
			t.Fatal(err)
		}
		conn = websocket.NetConn(context.Background(), wc, websocket.MessageBinary)
	} else {
		var err error
		if conn, err = net.DialTimeout("tcp", e.tcp, 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	c5 := &expClient{disconnects: make(chan *paho5.Disconnect, 1), lost: make(chan struct{}), msgs: make(chan string, 100)}
	// paho writes a packet in several Writes: the lock keeps concurrent
	// packets from interleaving.
	c5.c = paho5.NewClient(paho5.ClientConfig{Conn: pahopackets.NewThreadSafeConn(conn),
		OnServerDisconnect: func(d *paho5.Disconnect) { c5.disconnects <- d },
		OnClientError:      func(error) {},
		OnPublishReceived: []func(paho5.PublishReceived) (bool, error){func(p paho5.PublishReceived) (bool, error) {
			select {
			case c5.msgs <- p.Packet.Topic:
			default:
			}
			return true, nil
		}}})
	ca, err := c5.c.Connect(ctx, &paho5.Connect{ClientID: id, KeepAlive: 60, CleanStart: true,
		Username: user, UsernameFlag: true, Password: []byte(pass), PasswordFlag: true})
	if err != nil || ca.ReasonCode != 0 {
		t.Fatalf("connect %s: %v %+v", id, err, ca)
	}
	go func() { <-c5.c.Done(); close(c5.lost) }()
	t.Cleanup(func() { _ = c5.c.Disconnect(&paho5.Disconnect{}) })
	if _, err := c5.c.Subscribe(ctx, &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: "devices/#"}}}); err != nil {
		t.Fatalf("subscribe %s: %v", id, err)
	}
	return c5
}

// A live connection made with a session or an API token ends when the
// token stops being accepted, whatever the transport and MQTT version:
// MQTT 5 clients are told DISCONNECT 0xA0 (maximum connect time), 3.1.1
// clients' connections are closed, and the same token is refused at the
// next CONNECT. Connections made with a password, or with a token that
// does not expire, stay and keep receiving the fleet's traffic.
func TestAuthCredentialExpiry(t *testing.T) {
	e := startAuthEnv(t, false)
	ctx := context.Background()
	pass := e.user(t, "ann", devices.RoleOperator)
	secret := e.device(t, "d1")
	u, _ := e.reg.User(ctx, "ann")
	jwt, exp, err := e.reg.IssueSession(ctx, u, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	token, _, err := e.reg.CreateToken(ctx, "ann", "short", 1500*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	forever, _, err := e.reg.CreateToken(ctx, "ann", "forever", 0)
	if err != nil {
		t.Fatal(err)
	}

	dash := connectExp(t, e, true, "dash", "ann", jwt)     // the dashboard: MQTT 5 over WebSocket
	script := connectExp(t, e, false, "script", "", token) // a token alone, no user name
	var lost3 [2]chan struct{}
	for i, pw := range []string{jwt, token} {
		ch := make(chan struct{})
		lost3[i] = ch
		if _, err := authClient(t, []string{e.ws, "tcp://" + e.tcp}[i], fmt.Sprintf("v3-%d", i), "ann", pw, func() { close(ch) }); err != nil {
			t.Fatal(err)
		}
	}
	stays := []*expClient{connectExp(t, e, false, "pw", "ann", pass), connectExp(t, e, false, "forever", "ann", forever)}

	dev := authMustClient(t, "tcp://"+e.tcp, "d1", "d1", secret)
	waitToken(t, "publish", dev.Publish("devices/d1/telemetry", 0, false, `{"t":1}`))
	for _, c := range []*expClient{dash, script} {
		select {
		case <-c.msgs:
		case <-time.After(10 * time.Second):
			t.Fatal("no telemetry before the expiry")
		}
	}

	for name, c := range map[string]*expClient{"token": script, "session": dash} {
		select {
		case d := <-c.disconnects:
			if d.ReasonCode != packets.ErrMaxConnectTime.Code {
				t.Fatalf("%s: DISCONNECT reason 0x%02x, want 0xa0", name, d.ReasonCode)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("%s: the connection outlived its credential's expiry", name)
		}
		<-c.lost
	}
	if time.Now().Before(exp.Add(5 * time.Second)) {
		t.Fatalf("the session's connection ended before the session did (%v)", exp)
	}
	for i, ch := range lost3 {
		select {
		case <-ch:
		case <-time.After(30 * time.Second):
			t.Fatalf("3.1.1 connection %d outlived its credential's expiry", i)
		}
	}
	// Counted once the cut is done, which the client may see first (3 of
	// 4 read at once, at load average 14).
	checkFor(t, 10*time.Second, func() error {
		if n := authCount(t, e.auth.m.expired); n != 4 {
			return fmt.Errorf("tether_auth_expired_disconnects_total = %v, want 4", n)
		}
		return nil
	})

	// The others still get the fleet's traffic.
	waitToken(t, "publish", dev.Publish("devices/d1/telemetry", 0, false, `{"t":2}`))
	for i, c := range stays {
		select {
		case <-c.msgs:
		case <-c.lost:
			t.Fatalf("connection %d that does not expire was closed", i)
		case <-time.After(10 * time.Second):
			t.Fatalf("connection %d gets no more telemetry", i)
		}
	}
	if got := authRawConnect(t, e.tcp, 5, "dash2", "ann", jwt); got != 0x86 {
		t.Fatalf("expired session: CONNACK %#x", got)
	}
	if got := authRawConnect(t, e.tcp, 5, "script2", "ann", token); got != 0x86 {
		t.Fatalf("expired token: CONNACK %#x", got)
	}
}

// Connections made with a token that expires cost an entry in the expiry
// heap while they last, none once they have ended.
func TestAuthExpiryForgetsEndedConnections(t *testing.T) {
	e := startAuthEnv(t, false)
	e.user(t, "ann", devices.RoleViewer)
	token, _, err := e.reg.CreateToken(context.Background(), "ann", "day", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	entries := func() int {
		e.auth.expiry.mu.Lock()
		defer e.auth.expiry.mu.Unlock()
		if len(e.auth.expiry.h) != len(e.auth.expiry.by) {
			t.Fatalf("heap %d entries, index %d", len(e.auth.expiry.h), len(e.auth.expiry.by))
		}
		return len(e.auth.expiry.h)
	}
	for i := range 20 {
		c := authMustClient(t, "tcp://"+e.tcp, fmt.Sprintf("c%d", i), "ann", token)
		if n := entries(); n != 1 {
			t.Fatalf("connected: %d entries, want 1", n)
		}
		c.Disconnect(0)
		checkFor(t, 5*time.Second, func() error {
			if n := entries(); n != 0 {
				return fmt.Errorf("%d entries after the disconnection", n)
			}
			return nil
		})
	}
}

// stalledClient connects an MQTT 5 client over raw TCP as user with
// pass, subscribed to flood/#, that reads nothing after its SUBACK's
// request: once flood/# has filled its socket, every write to it blocks.
func stalledClient(t *testing.T, e *authEnv, id, user, pass string) *mqtt.Client {
	t.Helper()
	code, conn := authRawConnectConn(t, e.tcp, 5, id, user, pass)
	if code != 0 {
		t.Fatalf("%s: CONNACK %#x", id, code)
	}
	t.Cleanup(func() { conn.Close() })
	var buf bytes.Buffer
	sub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, ProtocolVersion: 5, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: "flood/#"}}}
	if err := sub.SubscribeEncode(&buf); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	var cl *mqtt.Client
	checkFor(t, 10*time.Second, func() error {
		var ok bool
		if cl, ok = e.b.Server.Clients.Get(id); !ok {
			return fmt.Errorf("%s not listed", id)
		}
		if _, ok := cl.State.Subscriptions.Get("flood/#"); !ok {
			return fmt.Errorf("%s not subscribed yet", id)
		}
		return nil
	})
	return cl
}

// flood publishes on flood/x as pub until the engine queues for each of
// cls: their sockets are full.
func flood(t *testing.T, pub paho.Client, cls ...*mqtt.Client) {
	t.Helper()
	payload := strings.Repeat("x", 64<<10)
	checkFor(t, 60*time.Second, func() error {
		for _, cl := range cls {
			if queueLen(cl) < 10 {
				for range 20 {
					pub.Publish("flood/x", 0, false, payload)
				}
				return fmt.Errorf("the writes to %s do not block", cl.ID)
			}
		}
		return nil
	})
}

// An MQTT 5 client that reads nothing, whose credential expires together
// with another's, does not hold up the other's disconnection: the
// DISCONNECT written to it is bounded.
func TestAuthExpiryNotHeldByStalledClient(t *testing.T) {
	e := startAuthEnv(t, false)
	ctx := context.Background()
	pass := e.user(t, "root", devices.RoleAdmin)
	// Both connections use one token: one expiry, ended in one pass, the
	// stalled client (connected first) first.
	token, _, err := e.reg.CreateToken(ctx, "root", "short", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	cl := stalledClient(t, e, "stalled", "root", token)
	other := connectExp(t, e, false, "other", "root", token)
	flood(t, authMustClient(t, "tcp://"+e.tcp, "pub", "root", pass), cl)
	if n := authCount(t, e.auth.m.expired); n != 0 {
		t.Fatal("the token expired before the stalled client's socket was full: the machine is too slow for this test")
	}

	select {
	case d := <-other.disconnects:
		if d.ReasonCode != packets.ErrMaxConnectTime.Code {
			t.Fatalf("DISCONNECT reason 0x%02x, want 0xa0", d.ReasonCode)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the expired connection was not ended: held up by the stalled client's DISCONNECT")
	}
	checkFor(t, 10*time.Second, func() error {
		if !cl.Closed() {
			return errors.New("the stalled client is still connected")
		}
		return nil
	})
}

// TestAuthStalledClientsCutTogether: eight MQTT 5 clients that read
// nothing (their sockets full), whose credential expires, or is revoked,
// at one moment, are all ended within 4 s of it, not one after another
// (each DISCONNECT's write waits up to 1 s: about 8 s in a row).
func TestAuthStalledClientsCutTogether(t *testing.T) {
	for _, how := range []string{"expiry", "revocation"} {
		t.Run(how, func(t *testing.T) {
			e := startAuthEnv(t, false)
			ctx := context.Background()
			pass := e.user(t, "root", devices.RoleAdmin)
			ttl := time.Duration(0)
			if how == "expiry" {
				ttl = 15 * time.Second
			}
			token, tk, err := e.reg.CreateToken(ctx, "root", "short", ttl)
			if err != nil {
				t.Fatal(err)
			}
			var cls []*mqtt.Client
			for i := range 8 {
				cls = append(cls, stalledClient(t, e, fmt.Sprintf("stalled-%d", i), "root", token))
			}
			flood(t, authMustClient(t, "tcp://"+e.tcp, "pub", "root", pass), cls...)
			at := time.Now()
			if how == "expiry" {
				if n := authCount(t, e.auth.m.expired); n != 0 {
					t.Fatal("the token expired before the stalled clients' sockets were full: the machine is too slow for this test")
				}
				at = *tk.ExpiresAt
			} else if err := e.reg.RevokeToken(ctx, tk.ID); err != nil {
				t.Fatal(err)
			}
			checkFor(t, time.Until(at)+20*time.Second, func() error {
				for _, cl := range cls {
					if !cl.Closed() {
						return fmt.Errorf("%s is still connected", cl.ID)
					}
				}
				return nil
			})
			if took := time.Since(at); took > 4*time.Second {
				t.Fatalf("the 8 stalled clients were ended %v after their %s, one after another", took.Round(100*time.Millisecond), how)
			}
		})
	}
}
