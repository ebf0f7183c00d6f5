package broker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"
	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/tether-iot/tether/devices"
)

// willConn connects an MQTT 5 client that leaves a will on topic (payload
// its client id) with a Will Delay Interval of delay seconds; expiry > 0
// makes its session persistent (0: no Session Expiry Interval, as most
// clients send for a session that ends with its connection). Closing the returned connection without a
// DISCONNECT makes the will go (after its delay).
func willConn(t *testing.T, addr, id, user, pass string, expiry, delay uint32, topic string, retain bool) net.Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c := paho5.NewClient(paho5.ClientConfig{Conn: conn})
	cp := &paho5.Connect{ClientID: id, KeepAlive: 30, CleanStart: true,
		Username: user, UsernameFlag: true, Password: []byte(pass), PasswordFlag: true,
		WillMessage:    &paho5.WillMessage{Topic: topic, Payload: []byte(id), QoS: 1, Retain: retain},
		WillProperties: &paho5.WillProperties{WillDelayInterval: &delay}}
	if expiry > 0 {
		cp.Properties = &paho5.ConnectProperties{SessionExpiryInterval: &expiry}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if ca, err := c.Connect(ctx, cp); err != nil || ca.ReasonCode != 0 {
		conn.Close()
		t.Fatalf("connect %s with a will: %v %+v", id, err, ca)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// dropWill closes a willConn's connection without a DISCONNECT and waits
// until the engine has its will waiting (the access hook's OnDisconnect
// runs after the engine has taken the will).
func dropWill(t *testing.T, e *limitEnv, conn net.Conn, id string) {
	t.Helper()
	conn.Close()
	checkFor(t, 5*time.Second, func() error {
		if _, ok := e.auth.wills.Get(id); !ok {
			return fmt.Errorf("%s: no will waiting", id)
		}
		return nil
	})
}

// willsUntil returns the payloads w got before marker, sorted.
func willsUntil(t *testing.T, w *lim5, marker string) []string {
	t.Helper()
	got := drain(t, w, marker)
	slices.Sort(got)
	return got
}

// TestDelayedWillOfPurgedIdentity: a will with a Will Delay Interval
// whose identity is deleted or disabled while it waits never goes, a
// device's or a person's; nor does one whose connection was revoked
// (secret rotated) or banned. A will left the same way by an identity that
// stays goes after its delay.
func TestDelayedWillOfPurgedIdentity(t *testing.T) {
	e := startLimitEnv(t, t.TempDir(), DefaultOptions(), RetainedLimitOptions{})
	ctx := context.Background()
	grant := devices.TopicGrant{Filter: "wills/%c", Access: devices.AccessPublish}
	w, _ := dial5(t, e.tcp, "watcher", "root", e.user(t, "root", devices.RoleAdmin), 0)
	w.sub(t, "wills/#")
	const delay = 2

	// Left waiting, then their identity goes.
	type waiting struct {
		id, user string
		end      func() error
	}
	disabled := false
	bobPass := e.user(t, "bob", devices.RoleAdmin)
	var offline []waiting
	for _, wt := range []waiting{
		{"del-persistent", "del-persistent", func() error { return e.reg.DeleteDevice(ctx, "del-persistent") }},
		{"dis-persistent", "dis-persistent", func() error {
			_, err := e.reg.UpdateDevice(ctx, "dis-persistent", devices.DevicePatch{Enabled: &disabled})
			return err
		}},
		{"bob-line", "bob", func() error { return e.reg.DeleteUser(ctx, "bob") }},
	} {
		pass := bobPass
		if wt.user != "bob" {
			pass = e.device(t, wt.id, grant)
		}
		dropWill(t, e, willConn(t, e.tcp, wt.id, wt.user, pass, 3600, delay, "wills/"+wt.id, true), wt.id)
		offline = append(offline, wt)
	}
	for _, wt := range offline {
		if err := wt.end(); err != nil {
			t.Fatalf("%s: %v", wt.id, err)
		}
	}
	// Connected as their connection is revoked or banned.
	willConn(t, e.tcp, "rotated", "rotated", e.device(t, "rotated", grant), 3600, delay, "wills/rotated", true)
	if _, _, err := e.reg.RotateSecret(ctx, "rotated"); err != nil {
		t.Fatal(err)
	}
	willConn(t, e.tcp, "banned", "banned", e.device(t, "banned", grant), 3600, delay, "wills/banned", true)
	e.auth.endBanned(devices.Ban{Key: "test", Address: "127.0.0.1", Identity: "banned"})
	checkFor(t, 5*time.Second, func() error {
		for _, id := range []string{"rotated", "banned"} {
			if cl, ok := e.b.Server.Clients.Get(id); ok && !cl.Closed() {
				return fmt.Errorf("%s is still connected", id)
			}
		}
		return nil
	})

	// None waits any longer (without the fix: until its delay was over
	// and the engine had sent it), and nothing sent before a marker
	// published after that is one of theirs.
	targets := []string{"del-persistent", "dis-persistent", "bob-line", "rotated", "banned"}
	checkFor(t, 10*time.Second, func() error {
		for _, id := range targets {
			if _, ok := e.auth.wills.Get(id); ok {
				return fmt.Errorf("the will of %s still waits", id)
			}
		}
		return nil
	})
	// The control: a will left the same way by an identity that stays.
	dropWill(t, e, willConn(t, e.tcp, "control", "control", e.device(t, "control", grant), 3600, delay, "wills/control", false), "control")
	if code := w.pub(t, "wills/marker", []byte("marker"), 1, false); code != 0 {
		t.Fatalf("marker: 0x%02x", code)
	}
	got := willsUntil(t, w, "marker")
	if i := slices.Index(got, "control"); i >= 0 {
		got = slices.Delete(got, i, i+1)
	} else if more := willsUntil(t, w, "control"); len(more) != 0 {
		t.Fatalf("wills of identities gone or revoked went out: %q", more)
	}
	if len(got) != 0 {
		t.Fatalf("wills of identities gone or revoked went out: %q", got)
	}
	for _, id := range targets {
		if _, ok := e.b.Server.Topics.Retained.Get("wills/" + id); ok {
			t.Fatalf("the will of %s is retained", id)
		}
	}
}

// TestDeleteSessionSendsDelayedWill: an admin deleting a session ends it,
// and with it the wait of its will's Will Delay Interval [MQTT-3.1.2-8]:
// the will goes at once, retained as it asked, whether its connection is
// live or has already gone (the will waiting for it to come back) — by
// the time DeleteSession returns for the latter.
func TestDeleteSessionSendsDelayedWill(t *testing.T) {
	e := startLimitEnv(t, t.TempDir(), DefaultOptions(), RetainedLimitOptions{})
	w, _ := dial5(t, e.tcp, "watcher", "root", e.user(t, "root", devices.RoleAdmin), 0)
	w.sub(t, "wills/#")
	grant := devices.TopicGrant{Filter: "wills/%c", Access: devices.AccessPublish}
	const hour = 3600

	willConn(t, e.tcp, "live", "live", e.device(t, "live", grant), hour, hour, "wills/live", true)
	if !e.auth.DeleteSession("live") {
		t.Fatal("DeleteSession live: not found")
	}
	if got := drain(t, w, "live"); len(got) != 0 {
		t.Fatalf("before the live session's will: %q", got)
	}

	dropWill(t, e, willConn(t, e.tcp, "gone", "gone", e.device(t, "gone", grant), hour, hour, "wills/gone", true), "gone")
	if !e.auth.DeleteSession("gone") {
		t.Fatal("DeleteSession offline: not found")
	}
	for _, id := range []string{"live", "gone"} {
		if pk, ok := e.b.Server.Topics.Retained.Get("wills/" + id); !ok || string(pk.Payload) != id {
			t.Fatalf("the will of %s is not retained: %q", id, pk.Payload)
		}
	}
	if got := drain(t, w, "gone"); len(got) != 0 {
		t.Fatalf("before the offline session's will: %q", got)
	}
	if _, ok := e.auth.wills.Get("gone"); ok {
		t.Fatal("the offline session's will still waits")
	}
}

// TestRevokedWillNeverGoes: a revoked connection's will (secret rotated,
// banned, device deleted), MQTT 3.1.1 or 5, without a delay, never goes,
// whichever way the engine's reader meets the end of its connection (the
// access hook marks it revoked before ending it, and checkWill drops the
// will of a revoked connection). Each round, the device's status after it
// (offline, or deleted) is published after its will would have been.
func TestRevokedWillNeverGoes(t *testing.T) {
	e := startLimitEnv(t, t.TempDir(), DefaultOptions(), RetainedLimitOptions{})
	ctx := context.Background()
	w, _ := dial5(t, e.tcp, "watcher", "root", e.user(t, "root", devices.RoleAdmin), 0)
	w.sub(t, "wills/#", "devices/+/status")
	// The engine sends the retained messages of a SUBSCRIBE after its
	// SUBACK: a status retained meanwhile would come twice. The watcher's
	// next packet is read once that is done.
	if code := w.pub(t, "wills/barrier", []byte("barrier"), 1, false); code != 0 {
		t.Fatalf("barrier: 0x%02x", code)
	}
	drain(t, w, "barrier")
	grant := devices.TopicGrant{Filter: "wills/%c", Access: devices.AccessPublish}
	ends := map[string]func(id string){
		"rotate": func(id string) {
			if _, _, err := e.reg.RotateSecret(ctx, id); err != nil {
				t.Fatal(err)
			}
		},
		"ban": func(id string) { e.auth.endBanned(devices.Ban{Key: "test", Address: "127.0.0.1", Identity: id}) },
		"delete": func(id string) {
			if err := e.reg.DeleteDevice(ctx, id); err != nil {
				t.Fatal(err)
			}
		},
	}
	for round := range 8 {
		for _, how := range []string{"rotate", "ban", "delete"} {
			for _, v := range []int{4, 5} {
				id := fmt.Sprintf("%s-%d-%d", how, v, round)
				pass := e.device(t, id, grant)
				if v == 5 {
					willConn(t, e.tcp, id, id, pass, 0, 0, "wills/"+id, false)
				} else {
					o := paho.NewClientOptions().AddBroker("tcp://"+e.tcp).SetClientID(id).SetUsername(id).SetPassword(pass).
						SetProtocolVersion(4).SetAutoReconnect(false).SetConnectRetry(false).
						SetConnectTimeout(5*time.Second).SetWill("wills/"+id, id, 1, false)
					c := paho.NewClient(o)
					waitToken(t, "connect "+id, c.Connect())
					t.Cleanup(func() { c.Disconnect(0) })
				}
				status := func(what string) {
					t.Helper()
					select {
					case p := <-w.got:
						if p.Topic != StatusTopic(id) || strings.Contains(string(p.Payload), `"online":true`) != (what == "online") {
							t.Fatalf("%s: %s %q, want its status %s", id, p.Topic, p.Payload, what)
						}
					case <-time.After(10 * time.Second):
						t.Fatalf("%s: no status %s", id, what)
					}
				}
				status("online")
				ends[how](id)
				status("after " + how) // offline, or deleted: nothing before it
			}
		}
	}
}

// TestCleanSessionDelayedWill: a session without a Session Expiry
// Interval (0) ends with its connection, and so does its will's delay
// [MQTT-3.1.2-8]: the will goes at once, retained as it asked (the engine
// sent it after the delay, unretained and past the hooks: a cluster's
// other nodes never had it).
func TestCleanSessionDelayedWill(t *testing.T) {
	e := startLimitEnv(t, t.TempDir(), DefaultOptions(), RetainedLimitOptions{})
	w, _ := dial5(t, e.tcp, "watcher", "root", e.user(t, "root", devices.RoleAdmin), 0)
	w.sub(t, "wills/#")
	grant := devices.TopicGrant{Filter: "wills/%c", Access: devices.AccessPublish}
	c := willConn(t, e.tcp, "clean", "clean", e.device(t, "clean", grant), 0, 3600, "wills/clean", true)
	c.Close()
	if got := drain(t, w, "clean"); len(got) != 0 {
		t.Fatalf("before the will: %q", got)
	}
	checkFor(t, 5*time.Second, func() error {
		if pk, ok := e.b.Server.Topics.Retained.Get("wills/clean"); !ok || string(pk.Payload) != "clean" {
			return errors.New("the will is not retained")
		}
		return nil
	})
}

// TestEvictedSquatterWillGoes: a person who took a client id before a
// device was registered under it is disconnected when the device
// connects (DISCONNECT 0x8E), and its will goes, as for any connection
// the server closes [MQTT-3.1.2-8], every time: also when the engine's
// reader is busy with the squatter's packets as the connection ends
// (stopped there, the engine ended it as a normal disconnection, without
// the will, at random). Eight squatters, each publishing without pause.
func TestEvictedSquatterWillGoes(t *testing.T) {
	e := startLimitEnv(t, t.TempDir(), DefaultOptions(), RetainedLimitOptions{})
	root := e.user(t, "root", devices.RoleAdmin)
	w, _ := dial5(t, e.tcp, "watcher", "root", root, 0)
	w.sub(t, "wills/#")
	squat := e.user(t, "squat", devices.RoleAdmin)
	var missed []string
	for i := range 8 {
		id := fmt.Sprintf("lock-%d", i)
		conn := willConn(t, e.tcp, id, "squat", squat, 0, 0, "wills/"+id, false)
		// QoS 0 PUBLISHes on busy/{id}, without pause, until the
		// connection ends.
		topic := "busy/" + id
		pk := append([]byte{0x30, byte(2 + len(topic) + 1 + 1), 0, byte(len(topic))}, topic...)
		pk = append(pk, 0, 'x') // no properties; the payload
		flood := make(chan struct{})
		go func() {
			defer close(flood)
			buf := bytes.Repeat(pk, 64)
			for {
				if _, err := conn.Write(buf); err != nil {
					return
				}
			}
		}()
		secret := e.device(t, id)
		d, _ := dial5(t, e.tcp, id, id, secret, 0)
		select {
		case p := <-w.got:
			if p.Topic != "wills/"+id || string(p.Payload) != id {
				t.Fatalf("%s: got %s %q, want its squatter's will", id, p.Topic, p.Payload)
			}
		case <-time.After(5 * time.Second):
			missed = append(missed, id)
		}
		<-flood
		d.close()
	}
	if len(missed) > 0 {
		t.Fatalf("the wills of the squatters evicted from %v never went", missed)
	}
}

// TestTakenOverDelayedWillCancelled: a client with a delayed will whose
// connection is taken over by a new one with its client id, resuming its
// session (Clean Start 0), never has its will sent [MQTT-3.1.3-9]: also
// when the old connection leaves its will as it ends, after the new
// connection's CONNACK has cancelled the wills waiting (the engine stops
// the old connection, then sends the CONNACK, while the old connection's
// reader takes its will). 120 takeovers; then every old connection has
// ended and no will waits or went.
func TestTakenOverDelayedWillCancelled(t *testing.T) {
	e := startLimitEnv(t, t.TempDir(), DefaultOptions(), RetainedLimitOptions{})
	root := e.user(t, "root", devices.RoleAdmin)
	w, _ := dial5(t, e.tcp, "watcher", "root", root, 0)
	w.sub(t, "wills/#")
	grant := devices.TopicGrant{Filter: "wills/%c", Access: devices.AccessPublish}
	const rounds = 120
	for i := range rounds {
		id := fmt.Sprintf("taken-%d", i)
		secret := e.device(t, id, grant)
		willConn(t, e.tcp, id, id, secret, 3600, 1, "wills/"+id, false)
		dial5(t, e.tcp, id, id, secret, 3600) // resumes the session
	}
	// Every old connection has ended (the access hook's OnDisconnect,
	// after the engine took its will), and the wills waiting have gone.
	checkFor(t, 10*time.Second, func() error {
		n := 0
		e.auth.clients.Range(func(k, _ any) bool {
			if strings.HasPrefix(k.(*mqtt.Client).ID, "taken-") {
				n++
			}
			return true
		})
		if n != rounds {
			return fmt.Errorf("%d connections, want %d", n, rounds)
		}
		if n := e.auth.wills.Len(); n > 0 {
			return fmt.Errorf("%d wills waiting", n)
		}
		return nil
	})
	w.pub(t, "wills/marker", []byte("marker"), 1, false)
	if got := willsUntil(t, w, "marker"); len(got) > 0 {
		t.Fatalf("the wills of %d sessions resumed went: %q", len(got), got)
	}
}

// TestNewConnectionsWillOutlivesTakeover: a connection that takes a
// session over and then ends itself, leaving a delayed will, keeps that
// will waiting, even when the taken-over connection's end (its
// OnDisconnect, which cancels the taken-over connection's will) comes
// after. The test holds the old connection's OnDisconnect back (it holds
// the lock its forgetExpiry takes, before the cancel) until the new one
// has ended and its will waits; the cancel, by client id, then removed the
// new connection's will, which never went. Deleting the session sends the
// waiting will at once (as the hour's delay would have): the new
// connection's, never the old one's.
func TestNewConnectionsWillOutlivesTakeover(t *testing.T) {
	e := startLimitEnv(t, t.TempDir(), DefaultOptions(), RetainedLimitOptions{})
	root := e.user(t, "root", devices.RoleAdmin)
	w, _ := dial5(t, e.tcp, "watcher", "root", root, 0)
	w.sub(t, "wills/#")
	const id, hour = "twice", 3600
	secret := e.device(t, id, devices.TopicGrant{Filter: "wills/%c/#", Access: devices.AccessPublish})
	willConn(t, e.tcp, id, id, secret, hour, hour, "wills/"+id+"/old", false)

	x := &e.auth.expiry
	x.mu.Lock()
	held := true
	defer func() {
		if held {
			x.mu.Unlock()
		}
	}()
	newer := willConn(t, e.tcp, id, id, secret, hour, hour, "wills/"+id+"/new", false) // takes the session over
	newer.Close()                                                                      // no DISCONNECT: its will waits out its delay
	waiting := func() error {
		if pk, ok := e.auth.wills.Get(id); !ok || pk.TopicName != "wills/"+id+"/new" {
			return fmt.Errorf("the new connection's will is not waiting (%q)", pk.TopicName)
		}
		return nil
	}
	checkFor(t, 5*time.Second, waiting)
	known := func() int {
		n := 0
		e.auth.clients.Range(func(k, _ any) bool {
			if k.(*mqtt.Client).ID == id {
				n++
			}
			return true
		})
		return n
	}
	if n := known(); n != 2 {
		t.Fatalf("%d connections of %s known, want both (their OnDisconnect held)", n, id)
	}
	x.mu.Unlock() // both OnDisconnects go on
	held = false
	checkFor(t, 5*time.Second, func() error {
		if n := known(); n != 0 {
			return fmt.Errorf("%d connections of %s still known", n, id)
		}
		return nil
	})
	if err := waiting(); err != nil {
		t.Error(err)
	}
	if !e.auth.DeleteSession(id) {
		t.Fatal("DeleteSession: not found")
	}
	w.pub(t, "wills/marker", []byte("marker"), 1, false)
	var topics []string
	for !slices.Contains(topics, "wills/marker") {
		select {
		case p := <-w.got:
			topics = append(topics, p.Topic)
		case <-time.After(10 * time.Second):
			t.Fatalf("no marker after 10s (got %q)", topics)
		}
	}
	if !slices.Equal(topics, []string{"wills/" + id + "/new", "wills/marker"}) {
		t.Errorf("the watcher got %q, want the new connection's will, then the marker", topics)
	}
}
