package broker

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/crypto/bcrypt"

	"github.com/tether-iot/tether/devices"
)

// authEnv is a broker with the access hook on a fresh registry, MQTT over
// TCP on 127.0.0.1 and over WebSocket on an httptest server.
type authEnv struct {
	b     *Broker
	auth  *Auth
	reg   *devices.Registry
	tcp   string // host:port
	ws    string // ws://host:port/mqtt
	clock *loginClock
}

// loginClock is the login limiter's clock in an auth environment: the
// real one until frozen, then the instant it was frozen at, so that
// whether an attempt finds its key closed does not depend on how soon
// it follows the failure before (a loaded machine).
type loginClock struct{ frozen atomic.Pointer[time.Time] }

func (c *loginClock) now() time.Time {
	if f := c.frozen.Load(); f != nil {
		return *f
	}
	return time.Now()
}

func (c *loginClock) freeze() {
	n := time.Now()
	c.frozen.Store(&n)
}

func authLogger() *slog.Logger {
	if os.Getenv("TETHER_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func startAuthEnv(t testing.TB, anonymous bool) *authEnv {
	t.Helper()
	return startAuthEnvOpts(t, anonymous, false)
}

// startAuthEnvOpts with baseline runs the broker without the access hook
// (everyone allowed), for comparison.
func startAuthEnvOpts(t testing.TB, anonymous, baseline bool) *authEnv {
	t.Helper()
	return startAuthEnvIn(t, t.TempDir(), anonymous, baseline)
}

// startAuthEnvIn is startAuthEnvOpts on the data directory dir.
func startAuthEnvIn(t testing.TB, dir string, anonymous, baseline bool) *authEnv {
	t.Helper()
	ctx := context.Background()
	db, err := devices.OpenDB(dir)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := devices.OpenRegistry(ctx, db, authLogger())
	if err != nil {
		db.Close()
		t.Fatal(err)
	}
	reg.SetPasswordCost(bcrypt.MinCost)
	o := DefaultOptions()
	o.TCPAddr = "127.0.0.1:0"
	o.WebSocket = true // the WS listener; served by httptest below
	o.AllowAnonymous = anonymous
	clock := &loginClock{}
	auth := NewAuth(AuthOptions{Registry: reg, AllowAnonymous: anonymous, Logger: authLogger(),
		Logins: devices.NewLoginLimiter(&devices.LoginLimitOptions{Base: 20 * time.Millisecond, Max: 100 * time.Millisecond, Now: clock.now})})
	o.Logger, o.Access = authLogger(), auth
	if baseline {
		o.AllowAnonymous = true
		o.Access = nil
	}
	b, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(b.WebSocketHandler())
	e := &authEnv{b: b, auth: auth, reg: reg, tcp: b.TCP.Address(),
		ws: "ws" + strings.TrimPrefix(hs.URL, "http") + "/mqtt", clock: clock}
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = b.Shutdown(sctx)
		hs.Close()
		reg.Close()
		db.Close()
	})
	return e
}

// device registers a device and returns its secret.
func (e *authEnv) device(t testing.TB, id string) string {
	t.Helper()
	_, secret, err := e.reg.CreateDevice(context.Background(), devices.NewDevice{ID: id})
	if err != nil {
		t.Fatal(err)
	}
	return secret
}

func (e *authEnv) user(t testing.TB, name, role string) string {
	t.Helper()
	pass := "pw-" + name + "-123"
	if _, err := e.reg.CreateUser(context.Background(), name, pass, role); err != nil {
		t.Fatal(err)
	}
	return pass
}

// client connects a paho 3.1.1 client over url (tcp:// or ws://).
func authClient(t testing.TB, url, id, user, pass string, lost func()) (paho.Client, error) {
	t.Helper()
	o := paho.NewClientOptions().AddBroker(url).SetClientID(id).SetUsername(user).SetPassword(pass).
		SetProtocolVersion(4).SetAutoReconnect(false).SetConnectRetry(false).SetCleanSession(true).
		SetConnectTimeout(10 * time.Second).SetOrderMatters(false)
	if lost != nil {
		o.SetConnectionLostHandler(func(paho.Client, error) { lost() })
	}
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(15 * time.Second) {
		return nil, fmt.Errorf("connect %s: timeout", id)
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return c, nil
}

func authMustClient(t testing.TB, url, id, user, pass string) paho.Client {
	t.Helper()
	c, err := authClient(t, url, id, user, pass, nil)
	if err != nil {
		t.Fatalf("connect %s: %v", id, err)
	}
	return c
}

// authInbox collects messages by topic.
type authInbox struct {
	mu   sync.Mutex
	msgs []paho.Message
}

func (b *authInbox) handler(_ paho.Client, m paho.Message) {
	b.mu.Lock()
	b.msgs = append(b.msgs, m)
	b.mu.Unlock()
}

// payloads returns the payloads received on topic, in order.
func (b *authInbox) payloads(topic string) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for _, m := range b.msgs {
		if m.Topic() == topic {
			out = append(out, string(m.Payload()))
		}
	}
	return out
}

// authRawConnect sends one CONNECT of MQTT version (4 = 3.1.1, 5) and returns
// the CONNACK's return or reason code.
func authRawConnect(t testing.TB, addr string, version byte, clientID, user, pass string) byte {
	t.Helper()
	code, c := authRawConnectConn(t, addr, version, clientID, user, pass)
	c.Close()
	return code
}

func authRawConnectConn(t testing.TB, addr string, version byte, clientID, user, pass string) (byte, net.Conn) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	code, err := authRawHandshake(c, version, clientID, user, pass)
	if err != nil {
		c.Close()
		t.Fatal(err)
	}
	return code, c
}

func authRawHandshake(c net.Conn, version byte, clientID, user, pass string) (byte, error) {
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: version,
		Connect: packets.ConnectParams{
			ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 60, ClientIdentifier: clientID,
			UsernameFlag: user != "", Username: []byte(user),
			PasswordFlag: pass != "", Password: []byte(pass),
		},
	}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		return 0, err
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write(buf.Bytes()); err != nil {
		return 0, err
	}
	r := bufio.NewReader(c)
	h, err := r.ReadByte()
	if err != nil {
		return 0, fmt.Errorf("read CONNACK: %w", err)
	}
	if h != 0x20 {
		return 0, fmt.Errorf("got packet type %#x, want CONNACK", h)
	}
	n, mul := 0, 1
	for {
		b, err := r.ReadByte()
		if err != nil {
			return 0, err
		}
		n += int(b&0x7f) * mul
		mul *= 128
		if b < 0x80 {
			break
		}
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return 0, err
	}
	return body[1], nil
}

func TestAuthConnack(t *testing.T) {
	e := startAuthEnv(t, false)
	ctx := context.Background()
	good := e.device(t, "dev-ok")
	off := e.device(t, "dev-off")
	f := false
	if _, err := e.reg.UpdateDevice(ctx, "dev-off", devices.DevicePatch{Enabled: &f}); err != nil {
		t.Fatal(err)
	}
	pass := e.user(t, "alice", devices.RoleViewer)
	token, _, err := e.reg.CreateToken(ctx, "alice", "t", 0)
	if err != nil {
		t.Fatal(err)
	}
	alice, _ := e.reg.User(ctx, "alice")
	session, _, err := e.reg.IssueSession(ctx, alice, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name               string
		client, user, pass string
		v5, v3             byte // CONNACK reason code (MQTT 5) and return code (3.1.1)
	}{
		{"device with its secret", "dev-ok", "dev-ok", good, 0x00, 0x00},
		{"wrong secret", "dev-ok", "dev-ok", good + "x", 0x86, 0x05},
		{"another device's secret", "dev-off", "dev-off", good, 0x86, 0x05},
		{"unknown id", "dev-nope", "dev-nope", good, 0x86, 0x05},
		{"disabled device", "dev-off", "dev-off", off, 0x86, 0x05},
		{"client id is not the device id", "other", "dev-ok", good, 0x85, 0x02},
		{"no credentials", "anon", "", "", 0x87, 0x05},
		{"name without password", "anon", "dev-ok", "", 0x87, 0x05},
		{"user password", "alice-1", "alice", pass, 0x00, 0x00},
		{"user wrong password", "alice-1", "alice", "wrong-password", 0x86, 0x05},
		{"user api token", "alice-2", "alice", token, 0x00, 0x00},
		{"user session jwt", "alice-3", "alice", session, 0x00, 0x00},
		{"session jwt of someone else", "bob-3", "bob", session, 0x86, 0x05},
		{"user takes a device's client id", "dev-ok", "alice", pass, 0x85, 0x02},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := authRawConnect(t, e.tcp, 5, tt.client, tt.user, tt.pass); got != tt.v5 {
				t.Errorf("MQTT 5: CONNACK %#x, want %#x", got, tt.v5)
			}
			if got := authRawConnect(t, e.tcp, 4, tt.client, tt.user, tt.pass); got != tt.v3 {
				t.Errorf("MQTT 3.1.1: CONNACK %#x, want %#x", got, tt.v3)
			}
		})
	}
	if n := authCount(t, e.auth.m.failures.WithLabelValues("bad_credentials", "tcp")); n != 12 {
		t.Errorf("tether_auth_failures_total{bad_credentials} = %v, want 12", n)
	}
}

func TestAuthAnonymousAllowed(t *testing.T) {
	e := startAuthEnv(t, true)
	secret := e.device(t, "d1")
	if got := authRawConnect(t, e.tcp, 5, "anon", "", ""); got != 0 {
		t.Fatalf("anonymous: %#x", got)
	}
	// Credentials that are sent are still checked.
	if got := authRawConnect(t, e.tcp, 5, "d1", "d1", secret+"x"); got != 0x86 {
		t.Fatalf("wrong secret with anonymous allowed: %#x", got)
	}
	c := authMustClient(t, "tcp://"+e.tcp, "anon-1", "", "")
	waitToken(t, "subscribe #", c.Subscribe("#", 1, nil))
	// Not under a device's client id.
	if got := authRawConnect(t, e.tcp, 5, "d1", "", ""); got != 0x85 {
		t.Errorf("anonymous with a device's client id: MQTT 5 CONNACK %#x, want 0x85", got)
	}
	if got := authRawConnect(t, e.tcp, 4, "d1", "", ""); got != 0x02 {
		t.Errorf("anonymous with a device's client id: MQTT 3.1.1 CONNACK %#x, want 0x02", got)
	}
}

// TestDeviceEvictsSquatter: a client that took an id before a device was
// registered under it (anonymous here; a person the same) is
// disconnected when the device connects, and its session purged: the
// device gets in, without its subscriptions or messages.
func TestDeviceEvictsSquatter(t *testing.T) {
	e := startAuthEnv(t, true)
	lost := make(chan struct{}, 1)
	o := paho.NewClientOptions().AddBroker("tcp://" + e.tcp).SetClientID("lock-7").
		SetProtocolVersion(4).SetAutoReconnect(false).SetCleanSession(false).SetConnectTimeout(10 * time.Second).
		SetConnectionLostHandler(func(paho.Client, error) { lost <- struct{}{} })
	sq := paho.NewClient(o)
	waitToken(t, "squatter connect", sq.Connect())
	t.Cleanup(func() { sq.Disconnect(0) })
	waitToken(t, "squatter subscribe", sq.Subscribe("devices/lock-7/commands/#", 1, nil))

	secret := e.device(t, "lock-7")
	if got := authRawConnect(t, e.tcp, 4, "lock-7", "", ""); got != 0x02 {
		t.Fatalf("anonymous reconnecting under the now registered id: CONNACK %#x, want 0x02", got)
	}
	select {
	case <-lost:
		t.Fatal("the squatter was disconnected by a refused connection")
	default:
	}
	// The device connects with clean=false: it must get in, and find no
	// session (the squatter's subscription is not its).
	do := paho.NewClientOptions().AddBroker("tcp://" + e.tcp).SetClientID("lock-7").SetUsername("lock-7").SetPassword(secret).
		SetProtocolVersion(4).SetAutoReconnect(false).SetCleanSession(false).SetConnectTimeout(10 * time.Second)
	dev := paho.NewClient(do)
	tok := dev.Connect()
	waitToken(t, "device connect", tok)
	t.Cleanup(func() { dev.Disconnect(0) })
	if tok.(*paho.ConnectToken).SessionPresent() {
		t.Error("the device inherited the squatter's session")
	}
	select {
	case <-lost:
	case <-time.After(10 * time.Second):
		t.Fatal("the squatter is still connected")
	}
	admin := e.user(t, "root", devices.RoleAdmin)
	w := authMustClient(t, "tcp://"+e.tcp, "watcher", "root", admin)
	var in authInbox
	sub := authMustClient(t, "tcp://"+e.tcp, "anon-w", "", "")
	waitToken(t, "watch", sub.Subscribe("devices/lock-7/commands/#", 1, in.handler))
	waitToken(t, "command", w.Publish("devices/lock-7/commands/open", 1, false, `{}`))
	checkFor(t, 5*time.Second, func() error {
		if len(in.payloads("devices/lock-7/commands/open")) == 0 {
			return fmt.Errorf("command not routed")
		}
		return nil
	})
	if n := e.b.Server.Topics.Subscribers("devices/lock-7/commands/open").Subscriptions; len(n) != 1 {
		t.Errorf("%d subscribers of the device's commands, want 1 (the watcher): the squatter's subscription stayed", len(n))
	}
}

func TestAuthDeviceOverWebSocket(t *testing.T) {
	e := startAuthEnv(t, false)
	secret := e.device(t, "ws-dev")
	admin := e.user(t, "root", devices.RoleAdmin)
	var in authInbox
	w := authMustClient(t, "tcp://"+e.tcp, "watcher", "root", admin)
	waitToken(t, "subscribe", w.Subscribe("devices/#", 1, in.handler))

	c := authMustClient(t, e.ws, "ws-dev", "ws-dev", secret)
	waitToken(t, "publish", c.Publish("devices/ws-dev/telemetry", 1, false, `{"t":1}`))
	checkFor(t, 5*time.Second, func() error {
		if len(in.payloads("devices/ws-dev/telemetry")) == 0 {
			return fmt.Errorf("telemetry not seen")
		}
		st := in.payloads("devices/ws-dev/status")
		if len(st) == 0 || !strings.Contains(st[len(st)-1], `"transport":"ws"`) {
			return fmt.Errorf("status %v", st)
		}
		return nil
	})
	if _, err := authClient(t, e.ws, "ws-dev", "ws-dev", secret+"x", nil); err == nil {
		t.Fatal("wrong secret over WebSocket accepted")
	}
	// The dashboard: a user with its session JWT over WebSocket.
	u, _ := e.reg.User(context.Background(), "root")
	jwt, _, err := e.reg.IssueSession(context.Background(), u, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	authMustClient(t, e.ws, "dash-1", "root", jwt)
}

func TestAuthDeviceIsolation(t *testing.T) {
	e := startAuthEnv(t, false)
	sa, sb := e.device(t, "a"), e.device(t, "b")
	admin := e.user(t, "root", devices.RoleAdmin)
	var in authInbox
	w := authMustClient(t, "tcp://"+e.tcp, "watcher", "root", admin)
	waitToken(t, "subscribe", w.Subscribe("#", 1, in.handler))

	var bIn authInbox
	b := authMustClient(t, "tcp://"+e.tcp, "b", "b", sb)
	waitToken(t, "b subscribes", b.Subscribe("devices/b/commands/#", 1, bIn.handler))
	a := authMustClient(t, "tcp://"+e.tcp, "a", "a", sa)

	// Subscriptions to anything of b, or to everything, are refused.
	for _, f := range []string{"devices/b/commands/#", "devices/b/twin/desired", "devices/+/commands/#", "devices/#", "#", "devices/b/telemetry"} {
		tok := a.Subscribe(f, 1, nil)
		waitToken(t, "subscribe "+f, tok)
		if code := tok.(*paho.SubscribeToken).Result()[f]; code != 0x80 {
			t.Errorf("device a subscribing %q: SUBACK %#x, want 0x80", f, code)
		}
	}
	tok := a.Subscribe("devices/a/commands/#", 1, nil)
	waitToken(t, "subscribe own", tok)
	if code := tok.(*paho.SubscribeToken).Result()["devices/a/commands/#"]; code != 1 {
		t.Errorf("own commands: SUBACK %#x", code)
	}
	// Publishing as b is dropped (QoS 0; QoS 1 would close a 3.1.1
	// client); a's own telemetry after it arrives, so the first was not
	// just late.
	for _, topic := range []string{"devices/b/telemetry", "devices/b/responses/x", "devices/b/commands/x", "devices/a/status"} {
		waitToken(t, "publish", a.Publish(topic, 0, false, "forged"))
	}
	waitToken(t, "publish own", a.Publish("devices/a/telemetry", 1, false, "mine"))
	checkFor(t, 5*time.Second, func() error {
		if len(in.payloads("devices/a/telemetry")) == 0 {
			return fmt.Errorf("own telemetry not delivered")
		}
		return nil
	})
	for _, topic := range []string{"devices/b/telemetry", "devices/b/responses/x", "devices/b/commands/x"} {
		if p := in.payloads(topic); len(p) != 0 {
			t.Errorf("a's publish to %s delivered: %v", topic, p)
		}
	}
	for _, p := range in.payloads("devices/a/status") {
		if p == "forged" {
			t.Error("a forged its status")
		}
	}
	if n := len(bIn.payloads("devices/b/commands/x")); n != 0 {
		t.Errorf("b received %d commands from a", n)
	}
}

func TestAuthRoles(t *testing.T) {
	e := startAuthEnv(t, false)
	secret := e.device(t, "pump")
	vp := e.user(t, "vera", devices.RoleViewer)
	op := e.user(t, "otto", devices.RoleOperator)
	var cmds authInbox
	d := authMustClient(t, "tcp://"+e.tcp, "pump", "pump", secret)
	waitToken(t, "device subscribes", d.Subscribe("devices/pump/commands/#", 1, cmds.handler))

	lost := make(chan struct{})
	var once sync.Once
	v, err := authClient(t, "tcp://"+e.tcp, "vera-1", "vera", vp, func() { once.Do(func() { close(lost) }) })
	if err != nil {
		t.Fatal(err)
	}
	var seen authInbox
	waitToken(t, "viewer reads", v.Subscribe("devices/#", 1, seen.handler))
	// A viewer's command (QoS 1, 3.1.1) is refused by closing the
	// connection: 3.1.1 has no negative PUBACK.
	v.Publish("devices/pump/commands/reboot", 1, false, `{"id":"c1"}`)
	select {
	case <-lost:
	case <-time.After(5 * time.Second):
		t.Fatal("viewer's command did not close its connection")
	}
	o := authMustClient(t, "tcp://"+e.tcp, "otto-1", "otto", op)
	waitToken(t, "operator command", o.Publish("devices/pump/commands/reboot", 1, false, `{"id":"c2"}`))
	checkFor(t, 5*time.Second, func() error {
		got := cmds.payloads("devices/pump/commands/reboot")
		if len(got) != 1 || got[0] != `{"id":"c2"}` {
			return fmt.Errorf("device got %v, want only the operator's command", got)
		}
		return nil
	})
	// Operators do not set desired state over MQTT (the API does).
	var desired authInbox
	waitToken(t, "device desired", d.Subscribe("devices/pump/twin/desired", 1, desired.handler))
	waitToken(t, "desired", o.Publish("devices/pump/twin/desired", 0, false, `{}`))
	waitToken(t, "sentinel", o.Publish("devices/pump/commands/ping", 1, false, `{"id":"c3"}`))
	checkFor(t, 5*time.Second, func() error {
		if len(cmds.payloads("devices/pump/commands/ping")) == 0 {
			return fmt.Errorf("sentinel not delivered")
		}
		return nil
	})
	if len(desired.payloads("devices/pump/twin/desired")) != 0 {
		t.Fatal("operator's desired state reached the device")
	}
}

// authStatuses decodes the status payloads seen on topic.
func authStatuses(t testing.TB, in *authInbox, id string) []Status {
	t.Helper()
	var out []Status
	for _, p := range in.payloads(StatusTopic(id)) {
		var s Status
		if p == "" { // retained status cleared: the device was deleted
			out = append(out, Status{Since: "deleted"})
			continue
		}
		if err := json.Unmarshal([]byte(p), &s); err != nil {
			t.Fatalf("status %q: %v", p, err)
		}
		out = append(out, s)
	}
	return out
}

func TestPresenceTakeoverDoesNotFlap(t *testing.T) {
	e := startAuthEnv(t, false)
	ctx := context.Background()
	secret := e.device(t, "t1")
	admin := e.user(t, "root", devices.RoleAdmin)
	var in authInbox
	w := authMustClient(t, "tcp://"+e.tcp, "watcher", "root", admin)
	waitToken(t, "subscribe", w.Subscribe("devices/t1/#", 1, in.handler))

	lost := make(chan struct{})
	if _, err := authClient(t, "tcp://"+e.tcp, "t1", "t1", secret, func() { close(lost) }); err != nil {
		t.Fatal(err)
	}
	// (The status may come twice: live, and as the retained message when
	// it is stored while the engine is still sending the watcher's
	// retained messages for its subscription.)
	checkFor(t, 5*time.Second, func() error {
		s := authStatuses(t, &in, "t1")
		if len(s) == 0 || !s[0].Online || s[0].Transport != "tcp" {
			return fmt.Errorf("authStatuses %+v", s)
		}
		if _, err := time.Parse(time.RFC3339, s[0].Since); err != nil {
			return err
		}
		d, _ := e.reg.Device(ctx, "t1")
		if !d.Online || d.Transport != "tcp" || d.ProtocolVersion != 4 || d.RemoteAddr == "" {
			return fmt.Errorf("registry %+v", d)
		}
		return nil
	})

	// The same device connects again: the first session is taken over.
	authMustClient(t, "tcp://"+e.tcp, "t1", "t1", secret)
	select {
	case <-lost:
	case <-time.After(5 * time.Second):
		t.Fatal("old connection not closed by the takeover")
	}
	// Wait until the engine has finished with the old connection (the
	// hook forgets it in OnDisconnect), then push a sentinel through the
	// watcher's queue: any offline status would have come before it.
	checkFor(t, 5*time.Second, func() error {
		n := 0
		e.auth.clients.Range(func(k, v any) bool { n++; return true })
		if n != 2 { // watcher and the new t1
			return fmt.Errorf("%d clients known", n)
		}
		return nil
	})
	waitToken(t, "sentinel", w.Publish("devices/t1/status-sentinel", 1, false, "x"))
	checkFor(t, 5*time.Second, func() error {
		if len(in.payloads("devices/t1/status-sentinel")) == 0 {
			return fmt.Errorf("no sentinel (watcher connected %v; statuses %+v)", w.IsConnected(), authStatuses(t, &in, "t1"))
		}
		return nil
	})
	for _, s := range authStatuses(t, &in, "t1") {
		if !s.Online {
			t.Fatalf("status flapped to offline during takeover: %+v", authStatuses(t, &in, "t1"))
		}
	}
	d, _ := e.reg.Device(ctx, "t1")
	if !d.Online {
		t.Fatalf("registry says offline after takeover")
	}
}

func TestPresenceOfflineAndRevoke(t *testing.T) {
	e := startAuthEnv(t, false)
	ctx := context.Background()
	tests := []struct {
		name   string
		revoke func(id string) error
	}{
		{"disable", func(id string) error {
			f := false
			_, err := e.reg.UpdateDevice(ctx, id, devices.DevicePatch{Enabled: &f})
			return err
		}},
		{"delete", func(id string) error { return e.reg.DeleteDevice(ctx, id) }},
		{"rotate", func(id string) error { _, _, err := e.reg.RotateSecret(ctx, id); return err }},
	}
	admin := e.user(t, "root", devices.RoleAdmin)
	var in authInbox
	w := authMustClient(t, "tcp://"+e.tcp, "watcher", "root", admin)
	waitToken(t, "subscribe", w.Subscribe("devices/+/status", 1, in.handler))
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := fmt.Sprint("r", i)
			secret := e.device(t, id)
			lost := make(chan struct{})
			if _, err := authClient(t, "tcp://"+e.tcp, id, id, secret, func() { close(lost) }); err != nil {
				t.Fatal(err)
			}
			checkFor(t, 5*time.Second, func() error {
				if s := authStatuses(t, &in, id); len(s) == 0 || !s[len(s)-1].Online {
					return fmt.Errorf("authStatuses %+v", s)
				}
				return nil
			})
			start := time.Now()
			if err := tt.revoke(id); err != nil {
				t.Fatal(err)
			}
			select {
			case <-lost:
			case <-time.After(5 * time.Second):
				t.Fatal("device still connected")
			}
			t.Logf("disconnected %v after the registry change", time.Since(start))
			checkFor(t, 5*time.Second, func() error {
				s := authStatuses(t, &in, id)
				if len(s) < 2 || s[len(s)-1].Online || (s[len(s)-1].Since == "deleted") != (tt.name == "delete") {
					return fmt.Errorf("authStatuses %+v", s)
				}
				return nil
			})
			if got := authRawConnect(t, e.tcp, 5, id, id, secret); got != 0x86 {
				t.Fatalf("reconnect after %s: %#x", tt.name, got)
			}
		})
	}
	// An orderly disconnect says offline too.
	secret := e.device(t, "plain")
	c := authMustClient(t, "tcp://"+e.tcp, "plain", "plain", secret)
	checkFor(t, 5*time.Second, func() error {
		if s := authStatuses(t, &in, "plain"); len(s) == 0 {
			return fmt.Errorf("authStatuses %+v", s)
		}
		return nil
	})
	c.Disconnect(100)
	checkFor(t, 5*time.Second, func() error {
		if s := authStatuses(t, &in, "plain"); len(s) < 2 || s[len(s)-1].Online {
			return fmt.Errorf("authStatuses %+v", s)
		}
		if d, _ := e.reg.Device(ctx, "plain"); d.Online || d.LastSeen == nil {
			return fmt.Errorf("registry: %+v", d)
		}
		return nil
	})
	// Deleting a device that is not connected clears its status too, and
	// every retained message under its topics (its desired and reported
	// twin, what it retained), so that a device registered again under
	// the id starts clean. Another device's, whose id starts alike, stay.
	desired := "devices/plain/twin/desired"
	if err := e.b.Server.Publish(desired, []byte(`{"version":1,"mode":"eco"}`), true, 1); err != nil {
		t.Fatal(err)
	}
	gone := []string{desired, "devices/plain/twin/reported", "devices/plain/telemetry", "devices/plain/a/b"}
	kept := "devices/plainx/telemetry"
	for _, topic := range append(gone[1:], kept) {
		if err := e.b.Server.Publish(topic, []byte(`{"lat":48.1}`), true, 1); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.reg.DeleteDevice(ctx, "plain"); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 5*time.Second, func() error {
		if s := authStatuses(t, &in, "plain"); s[len(s)-1].Since != "deleted" {
			return fmt.Errorf("authStatuses %+v", s)
		}
		for _, topic := range gone {
			if _, ok := e.b.Server.Topics.Retained.Get(topic); ok {
				return fmt.Errorf("retained %s still held", topic)
			}
		}
		return nil
	})
	if _, ok := e.b.Server.Topics.Retained.Get(kept); !ok {
		t.Errorf("retained %s of another device went with plain", kept)
	}
}

// authCount reads a counter.
func authCount(t testing.TB, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func TestAuthLogoutAndTokenRevokeDisconnect(t *testing.T) {
	e := startAuthEnv(t, false)
	ctx := context.Background()
	pass := e.user(t, "ann", devices.RoleOperator)
	u, _ := e.reg.User(ctx, "ann")
	jwt, _, err := e.reg.IssueSession(ctx, u, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	token, tok, err := e.reg.CreateToken(ctx, "ann", "script", 0)
	if err != nil {
		t.Fatal(err)
	}
	lost := map[string]chan struct{}{"dash": make(chan struct{}), "script": make(chan struct{}), "cli": make(chan struct{})}
	connect := func(url, id, pw string) {
		if _, err := authClient(t, url, id, "ann", pw, func() { close(lost[id]) }); err != nil {
			t.Fatalf("%s: %v", id, err)
		}
	}
	connect(e.ws, "dash", jwt)
	connect("tcp://"+e.tcp, "script", token)
	connect("tcp://"+e.tcp, "cli", pass)
	gone := func(id string) bool {
		select {
		case <-lost[id]:
			return true
		case <-time.After(5 * time.Second):
			return false
		}
	}
	still := func(id string) bool {
		select {
		case <-lost[id]:
			return false
		default:
			return true
		}
	}
	// Logout closes the dashboard's connection, and only that one.
	if err := e.reg.RevokeSession(ctx, jwt); err != nil {
		t.Fatal(err)
	}
	if !gone("dash") {
		t.Fatal("dashboard connection survived logout")
	}
	if err := e.reg.RevokeToken(ctx, tok.ID); err != nil {
		t.Fatal(err)
	}
	if !gone("script") {
		t.Fatal("token connection survived its revocation")
	}
	if !still("cli") {
		t.Fatal("password connection closed by a session or token revocation")
	}
	if got := authRawConnect(t, e.tcp, 5, "dash2", "ann", jwt); got != 0x86 {
		t.Fatalf("logged-out session: CONNACK %#x", got)
	}
	if got := authRawConnect(t, e.tcp, 5, "script2", "ann", token); got != 0x86 {
		t.Fatalf("revoked token: CONNACK %#x", got)
	}
}

func TestPresenceStaleStatusCleared(t *testing.T) {
	e := startAuthEnv(t, false)
	secret := e.device(t, "live")
	e.device(t, "dead")
	// What a killed broker leaves behind: retained statuses saying online.
	for _, id := range []string{"live", "dead"} {
		b, _ := json.Marshal(Status{Online: true, Since: "2026-01-01T00:00:00Z", Transport: "tcp"})
		if err := e.b.Server.Publish(StatusTopic(id), b, true, 1); err != nil {
			t.Fatal(err)
		}
	}
	authMustClient(t, "tcp://"+e.tcp, "live", "live", secret)
	e.auth.OnStarted()
	admin := e.user(t, "root", devices.RoleAdmin)
	var in authInbox
	w := authMustClient(t, "tcp://"+e.tcp, "w", "root", admin)
	waitToken(t, "subscribe", w.Subscribe("devices/+/status", 1, in.handler))
	checkFor(t, 5*time.Second, func() error {
		dead, live := authStatuses(t, &in, "dead"), authStatuses(t, &in, "live")
		if len(dead) != 1 || dead[0].Online {
			return fmt.Errorf("dead: %+v", dead)
		}
		if len(live) != 1 || !live[0].Online || live[0].Since == "2026-01-01T00:00:00Z" {
			return fmt.Errorf("live: %+v", live)
		}
		return nil
	})
}
