package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	paho3 "github.com/eclipse/paho.mqtt.golang"
)

// Black-box tests of the access rules (SPEC §5, §7) against the built
// binary, as a hostile client would try them: each asserts what the
// attacker sees.

const accessAdminPassword = "admin-password-1"

// accessServer starts the binary with anonymous access off and user
// "admin" with a known password, and returns it with an admin token.
func accessServer(t *testing.T) (*tetherProc, string) {
	t.Helper()
	p := newTetherProc(t, tetherBinary(t), "TETHER_ADMIN_PASSWORD="+accessAdminPassword)
	p.args = []string{"--allow-anonymous=false"}
	p.start(t)
	return p, accessLogin(t, p, "admin", accessAdminPassword)
}

func accessLogin(t *testing.T, p *tetherProc, user, password string) string {
	t.Helper()
	var out struct{ Token string }
	if code := accessAPI(t, p, "POST", "/auth/login", "", map[string]string{"username": user, "password": password}, &out); code != 200 {
		t.Fatalf("login %s: HTTP %d", user, code)
	}
	return out.Token
}

// accessAPI calls /api/v1 and decodes the answer into out (if not nil).
func accessAPI(t *testing.T, p *tetherProc, method, path, token string, body, out any) int {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://"+p.http+"/api/v1"+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode < 300 {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %v: %s", method, path, err, b)
		}
	}
	if out, ok := out.(*string); ok && resp.StatusCode >= 300 {
		*out = string(b)
	}
	return resp.StatusCode
}

// accessDevice registers device id and returns its secret.
func accessDevice(t *testing.T, p *tetherProc, admin, id string) string {
	t.Helper()
	var d struct{ Secret string }
	if code := accessAPI(t, p, "POST", "/devices", admin, map[string]string{"id": id}, &d); code != 201 {
		t.Fatalf("register %s: HTTP %d", id, code)
	}
	return d.Secret
}

// accessUser creates a user whose password is name+"-password-1".
func accessUser(t *testing.T, p *tetherProc, admin, name, role string) string {
	t.Helper()
	pw := name + "-password-1"
	if code := accessAPI(t, p, "POST", "/users", admin, map[string]string{"username": name, "password": pw, "role": role}, nil); code != 201 {
		t.Fatalf("create user %s: HTTP %d", name, code)
	}
	return pw
}

// accessCommand sends a command through the API and returns its id.
func accessCommand(t *testing.T, p *tetherProc, token, device, name, params string) string {
	t.Helper()
	var c struct{ ID string }
	body := map[string]any{"name": name, "params": json.RawMessage(params), "timeout": 600}
	if code := accessAPI(t, p, "POST", "/devices/"+device+"/commands", token, body, &c); code != 201 && code != 200 && code != 202 {
		t.Fatalf("send %s to %s: HTTP %d", name, device, code)
	}
	return c.ID
}

func accessCommandStatus(t *testing.T, p *tetherProc, token, id string) string {
	t.Helper()
	var c struct{ Status string }
	if code := accessAPI(t, p, "GET", "/commands/"+id, token, nil, &c); code != 200 {
		t.Fatalf("GET /commands/%s: HTTP %d", id, code)
	}
	return c.Status
}

// mq is an MQTT 5 client (paho.golang) with what its CONNACK said, and
// the server's DISCONNECT, if one came (ended).
type mq struct {
	c       *paho.Client
	conn    net.Conn
	box     chan message
	present bool
	ended   chan *paho.Disconnect
}

// mqOpts: a persistent session when expiry > 0 (clean start false).
type mqOpts struct {
	id, user, pass string
	expiry         uint32
	will           *message
}

// dialMQ connects an MQTT 5 client; it returns the CONNACK reason code, and
// the client when it was accepted.
func dialMQ(t *testing.T, addr string, o mqOpts) (*mq, byte) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	m := &mq{box: make(chan message, 100), conn: conn, ended: make(chan *paho.Disconnect, 1)}
	m.c = paho.NewClient(paho.ClientConfig{
		Conn:               conn,
		OnServerDisconnect: func(d *paho.Disconnect) { m.ended <- d },
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(p paho.PublishReceived) (bool, error) {
			m.box <- message{p.Packet.Topic, string(p.Packet.Payload), p.Packet.QoS, p.Packet.Retain}
			return true, nil
		}},
	})
	cp := &paho.Connect{ClientID: o.id, KeepAlive: 30, CleanStart: o.expiry == 0,
		Username: o.user, UsernameFlag: o.user != "", Password: []byte(o.pass), PasswordFlag: o.pass != ""}
	if o.expiry > 0 {
		cp.Properties = &paho.ConnectProperties{SessionExpiryInterval: &o.expiry}
	}
	if o.will != nil {
		cp.WillMessage = &paho.WillMessage{Topic: o.will.topic, Payload: []byte(o.will.payload), QoS: o.will.qos, Retain: o.will.retain}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ca, err := m.c.Connect(ctx, cp)
	if ca == nil {
		conn.Close()
		t.Fatalf("connect %s: %v", o.id, err)
	}
	if ca.ReasonCode >= 0x80 {
		conn.Close()
		return nil, ca.ReasonCode
	}
	m.present = ca.SessionPresent
	t.Cleanup(m.close)
	return m, ca.ReasonCode
}

// mustMQ connects and fails the test unless the CONNACK says success.
func mustMQ(t *testing.T, addr string, o mqOpts) *mq {
	t.Helper()
	m, code := dialMQ(t, addr, o)
	if m == nil {
		t.Fatalf("connect %s as %q: CONNACK 0x%02x", o.id, o.user, code)
	}
	return m
}

func (m *mq) sub(t *testing.T, filter string) byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sa, err := m.c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1}}})
	if err != nil && sa == nil {
		t.Fatalf("subscribe %s: %v", filter, err)
	}
	return sa.Reasons[0]
}

// unsub unsubscribes from filter and waits for the UNSUBACK.
func (m *mq) unsub(t *testing.T, filter string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := m.c.Unsubscribe(ctx, &paho.Unsubscribe{Topics: []string{filter}}); err != nil {
		t.Fatalf("unsubscribe %s: %v", filter, err)
	}
}

// pub publishes at QoS 1 and returns the PUBACK reason code.
func (m *mq) pub(t *testing.T, topic, payload string) byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pr, err := m.c.Publish(ctx, &paho.Publish{Topic: topic, Payload: []byte(payload), QoS: 1})
	if pr == nil {
		t.Fatalf("publish %s: %v (no PUBACK)", topic, err)
	}
	return pr.ReasonCode
}

// drop closes the socket without DISCONNECT, so the will goes.
func (m *mq) drop() { _ = m.conn.Close(); <-m.c.Done() }

func (m *mq) close() {
	select {
	case <-m.c.Done():
	default:
		_ = m.c.Disconnect(&paho.Disconnect{ReasonCode: 0})
	}
	<-m.c.Done()
}

// waitFor returns the first message on m's box that ok accepts, failing
// the test if a message forbidden accepts comes first or nothing comes.
func (m *mq) waitFor(t *testing.T, ok, forbidden func(message) bool) message {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case got := <-m.box:
			if forbidden != nil && forbidden(got) {
				t.Fatalf("received %+v", got)
			}
			if ok(got) {
				return got
			}
		case <-timeout:
			t.Fatal("no message after 10s")
		}
	}
}

func onTopic(topic string) func(message) bool {
	return func(m message) bool { return m.topic == topic }
}

func contains(s string) func(message) bool {
	return func(m message) bool { return strings.Contains(m.payload, s) }
}

// connect3Code connects an MQTT 3.1.1 client and returns its CONNACK
// return code (0 accepted); the client is closed.
func connect3Code(t *testing.T, addr, id, user, pass string, clean bool, will *message) byte {
	t.Helper()
	o := paho3.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).SetProtocolVersion(4).
		SetUsername(user).SetPassword(pass).SetCleanSession(clean).SetAutoReconnect(false).
		SetConnectRetry(false).SetConnectTimeout(5 * time.Second)
	if will != nil {
		o.SetBinaryWill(will.topic, []byte(will.payload), will.qos, will.retain)
	}
	c := paho3.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		t.Fatalf("3.1.1 connect %s: no CONNACK", id)
	}
	code := tok.(*paho3.ConnectToken).ReturnCode()
	if c.IsConnected() {
		c.Disconnect(0)
	}
	return code
}

// TestAccessWills: a will is a publish like any other (SPEC §5). A device
// or a viewer cannot leave a forged command or a retained desired twin for
// device B; nobody can leave a will on the broker's own topics; and a will
// whose identity is deleted before it goes is not sent.
func TestAccessWills(t *testing.T) {
	p, admin := accessServer(t)
	secretA := accessDevice(t, p, admin, "dev-a")
	secretB := accessDevice(t, p, admin, "dev-b")
	viewerPW := accessUser(t, p, admin, "vic", "viewer")
	evePW := accessUser(t, p, admin, "eve", "admin")

	b := mustMQ(t, p.mqtt, mqOpts{id: "dev-b", user: "dev-b", pass: secretB})
	b.sub(t, "devices/dev-b/commands/#")
	b.sub(t, "devices/dev-b/twin/desired")
	watch := mustMQ(t, p.mqtt, mqOpts{id: "watch", user: "admin", pass: accessAdminPassword})
	watch.sub(t, "#")

	desired := &message{topic: "devices/dev-b/twin/desired", payload: `{"version":99,"unlock":true}`, qos: 1, retain: true}
	command := &message{topic: "devices/dev-b/commands/unlock", payload: `{"id":"forged-1","params":{"pin":"0000"}}`, qos: 1}
	for _, tc := range []struct {
		name, id, user, pass string
		will                 *message
	}{
		{"device forges desired twin", "dev-a", "dev-a", secretA, desired},
		{"device forges command", "dev-a", "dev-a", secretA, command},
		{"viewer forges command", "vic-1", "vic", viewerPW, command},
		{"viewer forges desired twin", "vic-1", "vic", viewerPW, desired},
		{"admin leaves a will on the broker's desired twin", "eve-1", "eve", evePW, desired},
		{"admin leaves a will on $SYS", "eve-1", "eve", evePW, &message{topic: "$SYS/broker/uptime", payload: "0", qos: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if m, code := dialMQ(t, p.mqtt, mqOpts{id: tc.id, user: tc.user, pass: tc.pass, will: tc.will}); m != nil || code != 0x87 {
				if m != nil {
					m.drop()
				}
				t.Fatalf("MQTT 5 CONNACK 0x%02x, want 0x87 not authorized", code)
			}
			if code := connect3Code(t, p.mqtt, tc.id, tc.user, tc.pass, true, tc.will); code != 0x05 {
				t.Fatalf("MQTT 3.1.1 CONNACK %d, want 5 not authorized", code)
			}
		})
	}

	// A will allowed at CONNECT whose identity is gone when it would be
	// sent: deleting device dev-c disconnects it; its will does not go.
	secretC := accessDevice(t, p, admin, "dev-c")
	mustMQ(t, p.mqtt, mqOpts{id: "dev-c", user: "dev-c", pass: secretC, expiry: 600,
		will: &message{topic: "devices/dev-c/telemetry", payload: `{"gone":1}`, qos: 1, retain: true}})
	if code := accessAPI(t, p, "DELETE", "/devices/dev-c", admin, nil, nil); code != 204 && code != 200 {
		t.Fatalf("DELETE /devices/dev-c: HTTP %d", code)
	}
	// A device's own will on its own topic still goes when it drops.
	a := mustMQ(t, p.mqtt, mqOpts{id: "dev-a", user: "dev-a", pass: secretA,
		will: &message{topic: "devices/dev-a/telemetry", payload: `{"will":1}`, qos: 1}})
	a.drop()
	watch.waitFor(t, onTopic("devices/dev-a/telemetry"), func(m message) bool {
		return strings.Contains(m.payload, "forged") || strings.Contains(m.payload, "unlock") || m.topic == "devices/dev-c/telemetry"
	})
	// The barrier below was published after everything above: what did not
	// arrive before it never will.
	barrier := mustMQ(t, p.mqtt, mqOpts{id: "barrier", user: "admin", pass: accessAdminPassword})
	barrier.pub(t, "devices/dev-b/commands/barrier", `{"params":{}}`)
	b.waitFor(t, onTopic("devices/dev-b/commands/barrier"), func(m message) bool {
		return strings.Contains(m.payload, "forged") || strings.Contains(m.payload, "unlock")
	})

	// After a restart: no forged desired twin, retained or in the API, and
	// no retained will of the deleted device.
	p.stop(t)
	p.start(t)
	admin = accessLogin(t, p, "admin", accessAdminPassword)
	var twin struct{ Desired map[string]any }
	if code := accessAPI(t, p, "GET", "/devices/dev-b/twin", admin, nil, &twin); code != 200 || len(twin.Desired) != 0 {
		t.Fatalf("GET /devices/dev-b/twin: HTTP %d, desired %v, want {}", code, twin.Desired)
	}
	look := mustMQ(t, p.mqtt, mqOpts{id: "look", user: "admin", pass: accessAdminPassword})
	look.sub(t, "devices/dev-b/twin/desired")
	look.sub(t, "devices/dev-c/#")
	look.sub(t, "alerts/#")
	look.pub(t, "alerts/barrier", "x")
	look.waitFor(t, onTopic("alerts/barrier"), func(m message) bool {
		return strings.Contains(m.payload, "unlock") || strings.Contains(m.payload, "gone")
	})
}

// TestAccessSessionOwner: a viewer who reuses the client id of an admin's
// persistent session is refused, offline or live, before and after a
// restart, and receives nothing; the admin keeps the session and its
// queued messages.
func TestAccessSessionOwner(t *testing.T) {
	p, admin := accessServer(t)
	accessDevice(t, p, admin, "door-1")
	viewerPW := accessUser(t, p, admin, "vic", "viewer")
	console := mqOpts{id: "console", user: "admin", pass: accessAdminPassword, expiry: 3600}
	thief := mqOpts{id: "console", user: "vic", pass: viewerPW, expiry: 3600}

	c := mustMQ(t, p.mqtt, console)
	c.sub(t, "devices/+/commands/#")
	c.close()
	accessCommand(t, p, admin, "door-1", "unlock", `{"pin":"4711"}`) // queued for the offline console

	refused := func(when string) {
		t.Helper()
		if m, code := dialMQ(t, p.mqtt, thief); m != nil || code != 0x85 {
			t.Fatalf("%s: viewer on the admin's client id: MQTT 5 CONNACK 0x%02x, want 0x85", when, code)
		}
		for _, clean := range []bool{false, true} {
			if code := connect3Code(t, p.mqtt, "console", "vic", viewerPW, clean, nil); code != 0x02 {
				t.Fatalf("%s: viewer on the admin's client id (3.1.1, clean %v): CONNACK %d, want 2", when, clean, code)
			}
		}
	}
	refused("offline session")

	// Live: the owner is not kicked off by the attempt.
	c = mustMQ(t, p.mqtt, console)
	if !c.present {
		t.Fatal("admin's own reconnection: session present false")
	}
	c.waitFor(t, contains("4711"), nil)
	refused("live session")
	if code := c.pub(t, "devices/door-1/commands/ping", `{"params":{}}`); code != 0 {
		t.Fatalf("admin's connection after the attempts: PUBACK 0x%02x", code)
	}
	c.waitFor(t, onTopic("devices/door-1/commands/ping"), nil)
	c.close()

	// Ownership survives a restart.
	accessCommand(t, p, admin, "door-1", "unlock", `{"pin":"1234"}`)
	p.stop(t)
	p.start(t)
	admin = accessLogin(t, p, "admin", accessAdminPassword)
	refused("after a restart")
	c = mustMQ(t, p.mqtt, console)
	if !c.present {
		t.Fatal("admin after a restart: session present false")
	}
	c.waitFor(t, contains("1234"), nil)
}

// TestAccessDeletedDevicePurged: deleting a device purges its session: a
// viewer connecting with its client id, and the device registered again,
// start clean and never see the old owner's queued command; likewise
// after disabling a device and after deleting a user.
func TestAccessDeletedDevicePurged(t *testing.T) {
	p, admin := accessServer(t)
	secret := accessDevice(t, p, admin, "lock-7")
	viewerPW := accessUser(t, p, admin, "vic", "viewer")

	d := mustMQ(t, p.mqtt, mqOpts{id: "lock-7", user: "lock-7", pass: secret, expiry: 3600})
	d.sub(t, "devices/lock-7/commands/#")
	d.close()
	accessCommand(t, p, admin, "lock-7", "wipe", `{"confirm":"yes"}`)
	if code := accessAPI(t, p, "DELETE", "/devices/lock-7", admin, nil, nil); code != 204 && code != 200 {
		t.Fatalf("DELETE /devices/lock-7: HTTP %d", code)
	}

	v := mustMQ(t, p.mqtt, mqOpts{id: "lock-7", user: "vic", pass: viewerPW, expiry: 3600})
	if v.present {
		t.Fatal("viewer on a deleted device's client id: session present")
	}
	v.sub(t, "devices/lock-7/#")
	v.close()
	// The viewer's session under the device's id (a squatter's) is no
	// obstacle to the device registered again: it goes when the device
	// connects.

	// A restart brings nothing back.
	p.stop(t)
	p.start(t)
	admin = accessLogin(t, p, "admin", accessAdminPassword)
	secret = accessDevice(t, p, admin, "lock-7")
	d = mustMQ(t, p.mqtt, mqOpts{id: "lock-7", user: "lock-7", pass: secret, expiry: 3600})
	if d.present {
		t.Fatal("device registered again: session present")
	}
	d.sub(t, "devices/lock-7/commands/#")
	accessCommand(t, p, admin, "lock-7", "hello", `{"n":1}`)
	d.waitFor(t, contains(`"n":1`), contains("confirm"))

	// Disabling purges too.
	d.close()
	accessCommand(t, p, admin, "lock-7", "wipe", `{"confirm":"again"}`)
	if code := accessAPI(t, p, "PATCH", "/devices/lock-7", admin, map[string]any{"enabled": false}, nil); code != 200 {
		t.Fatalf("PATCH enabled false: HTTP %d", code)
	}
	if code := accessAPI(t, p, "PATCH", "/devices/lock-7", admin, map[string]any{"enabled": true}, nil); code != 200 {
		t.Fatalf("PATCH enabled true: HTTP %d", code)
	}
	d = mustMQ(t, p.mqtt, mqOpts{id: "lock-7", user: "lock-7", pass: secret, expiry: 3600})
	if d.present {
		t.Fatal("device disabled and enabled again: session present")
	}
	d.sub(t, "devices/lock-7/commands/#")
	accessCommand(t, p, admin, "lock-7", "hello", `{"n":2}`)
	d.waitFor(t, contains(`"n":2`), contains("confirm"))
}

// TestAccessDeletedDeviceRetained: DELETE /devices/{id} deletes the
// retained messages the device set on its grant's topics and its retained
// will, for good (a restart brings none back); an admin's on the same
// topics stay. The device registered again passes none of the old ones to
// a new subscriber.
func TestAccessDeletedDeviceRetained(t *testing.T) {
	p, admin := accessServer(t)
	register := func() string {
		t.Helper()
		var d struct{ Secret string }
		body := map[string]any{"id": "tas-9", "topics": []map[string]string{{"filter": "tele/%c/#", "access": "publish"}}}
		if code := accessAPI(t, p, "POST", "/devices", admin, body, &d); code != 201 {
			t.Fatalf("register tas-9: HTTP %d", code)
		}
		return d.Secret
	}
	secret := register()
	d := mustMQ(t, p.mqtt, mqOpts{id: "tas-9", user: "tas-9", pass: secret,
		will: &message{topic: "tele/tas-9/LWT", payload: "Offline", qos: 1, retain: true}})
	for _, topic := range []string{"tele/tas-9/STATE", "tele/tas-9/SENSOR"} {
		if code := d.retain(t, topic, `{"old":1}`); code != 0 {
			t.Fatalf("retain %s: 0x%02x", topic, code)
		}
	}
	d.drop() // its will, retained
	console := mustMQ(t, p.mqtt, mqOpts{id: "console", user: "admin", pass: accessAdminPassword})
	if code := console.retain(t, "tele/tas-9/CONFIG", `{"admin":1}`); code != 0 {
		t.Fatalf("retain CONFIG: 0x%02x", code)
	}
	// The will is retained before the deletion.
	w := mustMQ(t, p.mqtt, mqOpts{id: "watch-1", user: "admin", pass: accessAdminPassword})
	w.sub(t, "tele/tas-9/LWT")
	w.waitFor(t, contains("Offline"), nil)
	w.close()
	console.close()

	if code := accessAPI(t, p, "DELETE", "/devices/tas-9", admin, nil, nil); code != 204 && code != 200 {
		t.Fatalf("DELETE /devices/tas-9: HTTP %d", code)
	}
	p.stop(t)
	p.start(t)
	admin = accessLogin(t, p, "admin", accessAdminPassword)
	secret = register()
	w = mustMQ(t, p.mqtt, mqOpts{id: "watch-2", user: "admin", pass: accessAdminPassword})
	w.sub(t, "tele/#")
	d = mustMQ(t, p.mqtt, mqOpts{id: "tas-9", user: "tas-9", pass: secret})
	old := func(m message) bool { return strings.Contains(m.payload, "old") || m.payload == "Offline" }
	w.waitFor(t, contains(`"admin":1`), old) // retained messages come with the SUBACK
	d.pub(t, "tele/tas-9/barrier", "barrier")
	w.waitFor(t, contains("barrier"), old)
}

// TestAccessResponsesOwnDevice: device A answering B's command on
// devices/A/responses/{B's command id} closes nothing; B's own answer does.
func TestAccessResponsesOwnDevice(t *testing.T) {
	p, admin := accessServer(t)
	secretA := accessDevice(t, p, admin, "dev-a")
	secretB := accessDevice(t, p, admin, "dev-b")
	b := mustMQ(t, p.mqtt, mqOpts{id: "dev-b", user: "dev-b", pass: secretB})
	b.sub(t, "devices/dev-b/commands/#")
	id := accessCommand(t, p, admin, "dev-b", "open", `{}`)
	b.waitFor(t, contains(id), nil)
	checkFor(t, 10*time.Second, func() error {
		if s := accessCommandStatus(t, p, admin, id); s != "delivered" {
			return fmt.Errorf("status %s", s)
		}
		return nil
	})

	a := mustMQ(t, p.mqtt, mqOpts{id: "dev-a", user: "dev-a", pass: secretA})
	if code := a.pub(t, "devices/dev-a/responses/"+id, `{"status":"ok","result":{"forged":true}}`); code >= 0x80 {
		t.Fatalf("device's own responses topic: PUBACK 0x%02x", code)
	}
	if code := a.pub(t, "devices/dev-b/responses/"+id, `{"status":"ok"}`); code != 0x87 {
		t.Fatalf("another device's responses topic: PUBACK 0x%02x, want 0x87", code)
	}
	checkFor(t, 10*time.Second, func() error {
		resp, err := http.Get("http://" + p.http + "/metrics")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if !strings.Contains(string(body), `tether_command_responses_ignored_total{reason="other_device"} 1`) {
			return fmt.Errorf("metric not counted")
		}
		return nil
	})
	if s := accessCommandStatus(t, p, admin, id); s != "delivered" {
		t.Fatalf("after device A's forged response: status %s, want delivered", s)
	}
	b.pub(t, "devices/dev-b/responses/"+id, `{"status":"ok"}`)
	checkFor(t, 10*time.Second, func() error {
		if s := accessCommandStatus(t, p, admin, id); s != "succeeded" {
			return fmt.Errorf("status %s", s)
		}
		return nil
	})
}

// TestAccessReservedTopics: publishes to $SYS/... and $share/... are
// refused (MQTT 5: PUBACK 0x87; 3.1.1: the connection is closed) and never
// routed; a viewer cannot join a shared subscription group, an operator
// can.
func TestAccessReservedTopics(t *testing.T) {
	p, admin := accessServer(t)
	viewerPW := accessUser(t, p, admin, "vic", "viewer")
	opPW := accessUser(t, p, admin, "olga", "operator")

	watch := mustMQ(t, p.mqtt, mqOpts{id: "watch", user: "admin", pass: accessAdminPassword})
	watch.sub(t, "$SYS/#")
	watch.sub(t, "barrier")
	pub := mustMQ(t, p.mqtt, mqOpts{id: "pub", user: "admin", pass: accessAdminPassword})
	for _, topic := range []string{"$SYS/broker/uptime", "$sys/x", "$share/g/devices/d/commands/x"} {
		if code := pub.pub(t, topic, "forged"); code != 0x87 {
			t.Fatalf("publish %s: PUBACK 0x%02x, want 0x87", topic, code)
		}
	}
	pub.pub(t, "barrier", "after")
	watch.waitFor(t, onTopic("barrier"), contains("forged"))

	o3 := paho3.NewClient(paho3.NewClientOptions().AddBroker("tcp://" + p.mqtt).SetClientID("pub3").
		SetUsername("admin").SetPassword(accessAdminPassword).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second))
	if tok := o3.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("3.1.1 connect: %v", tok.Error())
	}
	o3.Publish("$SYS/broker/uptime", 1, false, "forged").WaitTimeout(5 * time.Second)
	checkFor(t, 10*time.Second, func() error {
		if o3.IsConnectionOpen() {
			return fmt.Errorf("3.1.1 publisher to $SYS still connected")
		}
		return nil
	})

	v := mustMQ(t, p.mqtt, mqOpts{id: "vic-1", user: "vic", pass: viewerPW})
	if code := v.sub(t, "$share/g/devices/#"); code != 0x87 {
		t.Fatalf("viewer joins $share/g/devices/#: SUBACK 0x%02x, want 0x87", code)
	}
	if code := v.sub(t, "devices/#"); code != 1 {
		t.Fatalf("viewer subscribes devices/#: SUBACK 0x%02x, want 1", code)
	}
	o := mustMQ(t, p.mqtt, mqOpts{id: "olga-1", user: "olga", pass: opPW})
	if code := o.sub(t, "$share/g/devices/#"); code != 1 {
		t.Fatalf("operator joins $share/g/devices/#: SUBACK 0x%02x, want 1", code)
	}
}

// TestAccessTokenShapedPasswords: a password MQTT and the API would read as
// a token can never log in, so creating a user with one is refused with a
// message that says why.
func TestAccessTokenShapedPasswords(t *testing.T) {
	p, admin := accessServer(t)
	for _, pw := range []string{"tth_password-1", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"} {
		var msg string
		code := accessAPI(t, p, "POST", "/users", admin, map[string]string{"username": "tok", "password": pw, "role": "viewer"}, &msg)
		if code != 400 || !strings.Contains(msg, "password") {
			t.Fatalf("password %q: HTTP %d %s, want 400 naming the password", pw, code, msg)
		}
	}
	if code := accessAPI(t, p, "GET", "/users/tok", admin, nil, nil); code != 404 {
		t.Fatalf("GET /users/tok after refusals: HTTP %d, want 404", code)
	}
}
