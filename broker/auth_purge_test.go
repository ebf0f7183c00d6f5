package broker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"
	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tether-iot/tether/devices"
)

// An admin deletes a session (DELETE /sessions/{clientId}): an offline
// one with a queued QoS 1 message is purged at once; whoever connects
// next with its client id finds no session and receives nothing of it.
func TestDeleteSessionOffline(t *testing.T) {
	e := startAuthEnv(t, false)
	pass := e.user(t, "carol", devices.RoleViewer)
	var in authInbox
	c, _ := persistentClient(t, e, "carol-console", "carol", pass, &in)
	waitToken(t, "subscribe", c.Subscribe("devices/#", 1, nil))
	c.Disconnect(100)
	checkFor(t, 5*time.Second, func() error {
		if cl, ok := e.b.Server.Clients.Get("carol-console"); !ok || !cl.Closed() {
			return errors.New("carol's session is not offline yet")
		}
		return nil
	})
	if err := e.b.Server.Publish("devices/x/telemetry", []byte(`{"t":1}`), false, 1); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 5*time.Second, func() error {
		if cl, ok := e.b.Server.Clients.Get("carol-console"); !ok || cl.State.Inflight.Len() == 0 {
			return errors.New("nothing queued for the offline session")
		}
		return nil
	})
	purged := testCounter(t, e.auth.m.purged)
	if !e.auth.DeleteSession("carol-console") {
		t.Fatal("DeleteSession: not found")
	}
	if _, ok := e.b.Server.Clients.Get("carol-console"); ok {
		t.Fatal("the session is still in the engine after DeleteSession returned")
	}
	if n := testCounter(t, e.auth.m.purged); n != purged+1 {
		t.Fatalf("tether_sessions_purged_total went from %v to %v, want one more", purged, n)
	}
	var again authInbox
	c2, present := persistentClient(t, e, "carol-console", "carol", pass, &again)
	if present {
		t.Fatal("session present after it was deleted")
	}
	waitToken(t, "subscribe barrier", c2.Subscribe("devices/barrier/telemetry", 1, nil))
	if err := e.b.Server.Publish("devices/barrier/telemetry", []byte("b"), false, 1); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 5*time.Second, func() error {
		if len(again.payloads("devices/barrier/telemetry")) == 0 {
			return errors.New("no barrier")
		}
		return nil
	})
	if got := again.payloads("devices/x/telemetry"); len(got) != 0 {
		t.Fatalf("received the deleted session's queued message: %q", got)
	}
}

// A live MQTT 5 client whose session an admin deletes is sent DISCONNECT
// 0x98 (administrative action), and its session is gone by the time
// DeleteSession returns: its reconnection starts clean. A live MQTT 3.1.1
// client's connection is closed, its session purged likewise.
func TestDeleteSessionLive(t *testing.T) {
	e := startAuthEnv(t, false)
	pass := e.user(t, "dave", devices.RoleViewer)

	conn, err := net.DialTimeout("tcp", e.tcp, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	disconnected := make(chan *paho5.Disconnect, 1)
	c := paho5.NewClient(paho5.ClientConfig{Conn: conn,
		OnServerDisconnect: func(d *paho5.Disconnect) { disconnected <- d }})
	expiry := uint32(3600)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ca, err := c.Connect(ctx, &paho5.Connect{ClientID: "dave-5", KeepAlive: 30, Username: "dave", UsernameFlag: true,
		Password: []byte(pass), PasswordFlag: true, Properties: &paho5.ConnectProperties{SessionExpiryInterval: &expiry}})
	if err != nil || ca.ReasonCode != 0 {
		t.Fatalf("connect: %v %+v", err, ca)
	}
	defer func() { _ = c.Disconnect(&paho5.Disconnect{}) }()
	if _, err := c.Subscribe(ctx, &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: "devices/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	if !e.auth.DeleteSession("dave-5") {
		t.Fatal("DeleteSession: not found")
	}
	if _, ok := e.b.Server.Clients.Get("dave-5"); ok {
		t.Fatal("the session is still in the engine after DeleteSession returned")
	}
	select {
	case d := <-disconnected:
		if d.ReasonCode != packets.ErrAdministrativeAction.Code {
			t.Fatalf("DISCONNECT reason 0x%02x, want 0x98", d.ReasonCode)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no DISCONNECT from the server")
	}
	if n := e.b.Server.Topics.Subscribers("devices/x/telemetry").Subscriptions; len(n) != 0 {
		t.Fatalf("subscriptions left in the topic index: %v", n)
	}

	var in authInbox
	c3, _ := persistentClient(t, e, "dave-3", "dave", pass, &in)
	waitToken(t, "subscribe", c3.Subscribe("devices/#", 1, nil))
	if !e.auth.DeleteSession("dave-3") {
		t.Fatal("DeleteSession: not found")
	}
	checkFor(t, 5*time.Second, func() error {
		if c3.IsConnectionOpen() {
			return errors.New("the 3.1.1 client is still connected")
		}
		return nil
	})
	if _, ok := e.b.Server.Clients.Get("dave-3"); ok {
		t.Fatal("the 3.1.1 session is still in the engine after DeleteSession returned")
	}
	_, present := persistentClient(t, e, "dave-3", "dave", pass, &in)
	if present {
		t.Fatal("session present after it was deleted")
	}
}

// Nothing to delete: an unknown client id, and the broker's own client.
func TestDeleteSessionUnknown(t *testing.T) {
	e := startAuthEnv(t, false)
	if e.auth.DeleteSession("nobody") {
		t.Fatal("an unknown client id was found")
	}
	if e.auth.DeleteSession(mqtt.InlineClientId) {
		t.Fatal("the broker's own client was deleted")
	}
	if _, ok := e.b.Server.Clients.Get(mqtt.InlineClientId); !ok {
		t.Fatal("the broker's own client is gone")
	}
}

// A deleted session's connection is closed by the server, so its will goes
// out as for any such connection (MQTT 5 §3.1.2.5), still checked against
// what its identity may publish.
func TestDeleteSessionSendsWill(t *testing.T) {
	e := startAuthEnv(t, false)
	pass := e.user(t, "erin", devices.RoleAdmin)
	var watch authInbox
	w, _ := persistentClient(t, e, "erin-watch", "erin", pass, &watch)
	waitToken(t, "subscribe", w.Subscribe("alerts/#", 1, nil))
	o := paho.NewClientOptions().AddBroker("tcp://"+e.tcp).SetClientID("erin-line").SetUsername("erin").SetPassword(pass).
		SetProtocolVersion(4).SetAutoReconnect(false).SetConnectRetry(false).SetCleanSession(false).
		SetConnectTimeout(10*time.Second).SetWill("alerts/erin-line", "gone", 1, false)
	c := paho.NewClient(o)
	waitToken(t, "connect", c.Connect())
	t.Cleanup(func() { c.Disconnect(0) })
	if !e.auth.DeleteSession("erin-line") {
		t.Fatal("DeleteSession: not found")
	}
	checkFor(t, 5*time.Second, func() error {
		if len(watch.payloads("alerts/erin-line")) == 0 {
			return errors.New("no will")
		}
		return nil
	})
}

// TestDeletedWhileConnectedQueuePurged: a device deleted while connected
// with a persistent session holding QoS 1 and 2 messages it has not
// acknowledged (one inflight, the others queued in the session store
// behind its Receive Maximum of 1) loses them with its session: a
// restart restores nothing, and the device registered again under the id
// finds no session and receives none of them.
func TestDeletedWhileConnectedQueuePurged(t *testing.T) {
	dir := t.TempDir()
	e := startLimitEnv(t, dir, DefaultOptions(), RetainedLimitOptions{})
	secret := e.device(t, "q1")
	conn, err := net.DialTimeout("tcp", e.tcp, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	got := make(chan string, 64)
	c := paho5.NewClient(paho5.ClientConfig{Conn: conn, EnableManualAcknowledgment: true, // it acknowledges nothing
		OnPublishReceived: []func(paho5.PublishReceived) (bool, error){func(p paho5.PublishReceived) (bool, error) {
			got <- string(p.Packet.Payload)
			return true, nil
		}}})
	expiry, recvMax := uint32(3600), uint16(1)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if ca, err := c.Connect(ctx, &paho5.Connect{ClientID: "q1", KeepAlive: 30, Username: "q1", UsernameFlag: true,
		Password: []byte(secret), PasswordFlag: true,
		Properties: &paho5.ConnectProperties{SessionExpiryInterval: &expiry, ReceiveMaximum: &recvMax}}); err != nil || ca.ReasonCode != 0 {
		t.Fatalf("connect: %v %+v", err, ca)
	}
	if _, err := c.Subscribe(ctx, &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: "devices/q1/commands/#", QoS: 2}}}); err != nil {
		t.Fatal(err)
	}
	for i := range 6 {
		if err := e.b.Server.Publish(fmt.Sprintf("devices/q1/commands/c%d", i), []byte(fmt.Sprintf("old-%d", i)), false, byte(1+i%2)); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-got: // the first, unacknowledged: the others wait behind it
	case <-time.After(5 * time.Second):
		t.Fatal("the device received nothing")
	}
	queued := func() int {
		for _, s := range e.store.Sessions() {
			if s.ClientID == "q1" {
				return s.Queued
			}
		}
		return -1
	}
	checkFor(t, 5*time.Second, func() error {
		cl, ok := e.b.Server.Clients.Get("q1")
		if !ok || cl.State.Inflight.Len() != 1 || queued() != 5 {
			return fmt.Errorf("inflight %d, queued in the store %d; want 1, 5", cl.State.Inflight.Len(), queued())
		}
		return nil
	})

	if err := e.reg.DeleteDevice(context.Background(), "q1"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the deleted device is still connected")
	}
	checkFor(t, 5*time.Second, func() error {
		if _, ok := e.b.Server.Clients.Get("q1"); ok {
			return errors.New("the engine still holds the session")
		}
		if n := queued(); n != -1 {
			return fmt.Errorf("the store lists the session, %d queued", n)
		}
		return nil
	})

	// Nothing comes back with a restart.
	e.stop(t)
	e = startLimitEnv(t, dir, DefaultOptions(), RetainedLimitOptions{})
	if _, ok := e.b.Server.Clients.Get("q1"); ok {
		t.Fatal("a restart restored the deleted device's session")
	}
	secret = e.device(t, "q1")
	d, ca := dial5(t, e.tcp, "q1", "q1", secret, 3600)
	if ca.SessionPresent {
		t.Fatal("the device registered again: session present")
	}
	d.sub(t, "devices/q1/commands/#")
	if err := e.b.Server.Publish("devices/q1/commands/new", []byte("marker"), false, 1); err != nil {
		t.Fatal(err)
	}
	if old := drain(t, d, "marker"); len(old) != 0 {
		t.Fatalf("the device registered again received the old one's messages: %q", old)
	}
}
