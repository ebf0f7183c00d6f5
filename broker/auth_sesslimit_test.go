package broker

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"
	paho3 "github.com/eclipse/paho.mqtt.golang"
)

// connack5 connects an MQTT 5 client with Session Expiry Interval expiry
// (clean start when 0) and returns the CONNACK's reason code; the client
// disconnects at once when it is accepted.
func connack5(t *testing.T, addr, id, user, pass string, expiry uint32) byte {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := paho5.NewClient(paho5.ClientConfig{Conn: conn})
	cp := &paho5.Connect{ClientID: id, KeepAlive: 30, CleanStart: expiry == 0, Username: user, UsernameFlag: true,
		Password: []byte(pass), PasswordFlag: true, Properties: &paho5.ConnectProperties{SessionExpiryInterval: &expiry}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ca, err := c.Connect(ctx, cp)
	if ca == nil {
		t.Fatalf("connect %s: no CONNACK: %v", id, err)
	}
	if ca.ReasonCode == 0 {
		_ = c.Disconnect(&paho5.Disconnect{})
		<-c.Done()
	}
	return ca.ReasonCode
}

// TestSessionsPerUser: at the default mqtt.max_sessions_per_user (10), a
// viewer holds 10 persistent sessions, online or offline: one more under a new client id
// is refused with 0x97 (3.1.1: 0x03) and leaves no session, while taking
// over one of its own, a session that ends with its connection, another
// user's sessions, an admin's and a device's are allowed; a session that
// ends makes room.
func TestSessionsPerUser(t *testing.T) {
	o := DefaultOptions()
	n := o.MaxSessionsPerUser
	if n != 10 {
		t.Fatalf("mqtt.max_sessions_per_user defaults to %d, README says 10", n)
	}
	e := startLimitEnv(t, t.TempDir(), o, RetainedLimitOptions{})
	vpass, opass, apass := e.user(t, "vi", "viewer"), e.user(t, "op", "operator"), e.user(t, "ad", "admin")

	for i := range n {
		if code := connack5(t, e.tcp, fmt.Sprint("vi-", i), "vi", vpass, 3600); code != 0 {
			t.Fatalf("session %d: CONNACK 0x%02x", i, code)
		}
	}
	live, _ := dial5(t, e.tcp, "vi-1", "vi", vpass, 3600) // its own, online again
	if code := connack5(t, e.tcp, fmt.Sprint("vi-", n), "vi", vpass, 3600); code != 0x97 {
		t.Fatalf("one persistent session past the bound: CONNACK 0x%02x, want 0x97", code)
	}
	if _, ok := e.b.Server.Clients.Get(fmt.Sprint("vi-", n)); ok {
		t.Fatal("the refused CONNECT left a session")
	}
	c3 := paho3.NewClient(paho3.NewClientOptions().AddBroker("tcp://" + e.tcp).SetClientID(fmt.Sprint("vi-", n+1)).
		SetUsername("vi").SetPassword(vpass).SetProtocolVersion(4).SetCleanSession(false).
		SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(5 * time.Second))
	tok := c3.Connect()
	if !tok.WaitTimeout(10*time.Second) || tok.(*paho3.ConnectToken).ReturnCode() != 0x03 {
		t.Fatalf("a 3.1.1 persistent session past the bound: %v, return code %d, want 3", tok.Error(), tok.(*paho3.ConnectToken).ReturnCode())
	}
	for i := range n {
		if code := connack5(t, e.tcp, fmt.Sprint("ad-", i), "ad", apass, 3600); code != 0 {
			t.Fatalf("admin's session %d: CONNACK 0x%02x", i, code)
		}
	}
	for _, c := range []struct {
		what, id, user, pass string
		expiry               uint32
	}{
		{"its own offline session", "vi-2", "vi", vpass, 3600},
		{"a session that ends with its connection", "vi-clean", "vi", vpass, 0},
		{"another user's", "op-0", "op", opass, 3600},
		{"an admin's one past the bound", fmt.Sprint("ad-", n), "ad", apass, 3600},
		{"a device's", "dv", "dv", e.device(t, "dv"), 3600},
	} {
		if code := connack5(t, e.tcp, c.id, c.user, c.pass, c.expiry); code != 0 {
			t.Fatalf("%s: CONNACK 0x%02x", c.what, code)
		}
	}
	// vi-0 comes back with a session that ends with its connection: room
	// for one more.
	if code := connack5(t, e.tcp, "vi-0", "vi", vpass, 0); code != 0 {
		t.Fatalf("vi-0 without expiry: CONNACK 0x%02x", code)
	}
	if code := connack5(t, e.tcp, fmt.Sprint("vi-", n), "vi", vpass, 3600); code != 0 {
		t.Fatalf("after a session ended: CONNACK 0x%02x", code)
	}
	live.close()
	if n := authCount(t, e.auth.m.failures.WithLabelValues("session_limit", "tcp")); n != 2 {
		t.Fatalf("tether_auth_failures_total{reason=session_limit} %v, want 2", n)
	}
}

// heldIDs returns the client ids the session index holds under name.
func heldIDs(a *Auth, name string) map[string]bool {
	a.held.mu.Lock()
	defer a.held.mu.Unlock()
	got := map[string]bool{}
	if s := a.held.sets[name]; s != nil {
		for id := range s.ids {
			got[id] = true
		}
	}
	return got
}

// waitHeld polls until the session index holds exactly ids under name.
func waitHeld(t *testing.T, a *Auth, name string, ids ...string) {
	t.Helper()
	checkFor(t, 10*time.Second, func() error {
		got := heldIDs(a, name)
		if len(got) != len(ids) {
			return fmt.Errorf("index of %s: %v, want %v", name, got, ids)
		}
		for _, id := range ids {
			if !got[id] {
				return fmt.Errorf("index of %s: %v, want %v", name, got, ids)
			}
		}
		return nil
	})
}

// fillSessions connects n persistent sessions of user under ids
// prefix-0.., each accepted.
func fillSessions(t *testing.T, addr, prefix, user, pass string, from, n int) []string {
	t.Helper()
	var ids []string
	for i := from; i < from+n; i++ {
		id := fmt.Sprint(prefix, i)
		if code := connack5(t, addr, id, user, pass, 3600); code != 0 {
			t.Fatalf("session %s: CONNACK 0x%02x", id, code)
		}
		ids = append(ids, id)
	}
	return ids
}

// TestSessionsPerUserTransitions: the per-user count of persistent
// sessions (an index, not a walk over every client) follows each way a
// session comes and goes: taken over under its client id (still one),
// replaced by a clean start (room for one more), expired (room), restored
// at a restart (still counted), its user deleted (the name starts at
// none). A device's sessions are not indexed.
func TestSessionsPerUserTransitions(t *testing.T) {
	o := DefaultOptions()
	n := o.MaxSessionsPerUser
	dir := t.TempDir()
	e := startLimitEnv(t, dir, o, RetainedLimitOptions{})
	vpass := e.user(t, "vi", "viewer")
	dpass := e.device(t, "dv")
	if code := connack5(t, e.tcp, "dv", "dv", dpass, 3600); code != 0 {
		t.Fatalf("device: CONNACK 0x%02x", code)
	}
	waitHeld(t, e.auth, "dv") // a device's session is not indexed

	// Taken over again and again under one client id: one session.
	for range 2 * n {
		if code := connack5(t, e.tcp, "vi-same", "vi", vpass, 3600); code != 0 {
			t.Fatalf("vi-same again: CONNACK 0x%02x", code)
		}
	}
	waitHeld(t, e.auth, "vi", "vi-same")
	ids := append([]string{"vi-same"}, fillSessions(t, e.tcp, "vi-", "vi", vpass, 1, n-1)...)
	if code := connack5(t, e.tcp, "vi-over", "vi", vpass, 3600); code != 0x97 {
		t.Fatalf("past the bound: CONNACK 0x%02x, want 0x97", code)
	}
	waitHeld(t, e.auth, "vi", ids...)

	// A clean start under vi-same replaces its persistent session.
	if code := connack5(t, e.tcp, "vi-same", "vi", vpass, 0); code != 0 {
		t.Fatalf("clean start: CONNACK 0x%02x", code)
	}
	waitHeld(t, e.auth, "vi", ids[1:]...)
	if code := connack5(t, e.tcp, "vi-short", "vi", vpass, 1); code != 0 {
		t.Fatalf("after the clean start: CONNACK 0x%02x", code)
	}
	if code := connack5(t, e.tcp, "vi-over", "vi", vpass, 3600); code != 0x97 {
		t.Fatalf("past the bound again: CONNACK 0x%02x, want 0x97", code)
	}

	// vi-short's session expires a second after it disconnected.
	waitHeld(t, e.auth, "vi", ids[1:]...)
	if _, ok := e.b.Server.Clients.Get("vi-short"); ok {
		t.Fatal("the engine still holds the expired session")
	}
	ids = append(ids[1:], "vi-new")
	if code := connack5(t, e.tcp, "vi-new", "vi", vpass, 3600); code != 0 {
		t.Fatalf("after the expiry: CONNACK 0x%02x", code)
	}

	// A restart restores the sessions, and they count.
	e.stop(t)
	e = startLimitEnv(t, dir, o, RetainedLimitOptions{})
	waitHeld(t, e.auth, "vi", ids...)
	if _, ok := e.b.Server.Clients.Get("dv"); !ok {
		t.Fatal("the device's session was not restored")
	}
	waitHeld(t, e.auth, "dv")
	if code := connack5(t, e.tcp, "vi-over", "vi", vpass, 3600); code != 0x97 {
		t.Fatalf("past the bound after a restart: CONNACK 0x%02x, want 0x97", code)
	}
	if code := connack5(t, e.tcp, ids[0], "vi", vpass, 3600); code != 0 {
		t.Fatalf("its own restored session: CONNACK 0x%02x", code)
	}

	// The user deleted: its sessions go, and the name created again
	// starts with none.
	if err := e.reg.DeleteUser(context.Background(), "vi"); err != nil {
		t.Fatal(err)
	}
	waitHeld(t, e.auth, "vi")
	vpass = e.user(t, "vi", "viewer")
	fillSessions(t, e.tcp, "vi-again-", "vi", vpass, 0, n)
}
