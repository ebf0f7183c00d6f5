package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	paho3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/tether-iot/tether/broker/sessions"
)

// DELETE /api/v1/sessions/{clientId} (SPEC §6): an admin ends a stale or
// squatted session, whoever owns it.

// listedSession is a session as GET /sessions shows it.
type listedSession struct {
	ClientID string `json:"client_id"`
	Owner    string `json:"owner"`
	Online   bool   `json:"online"`
	Queued   int    `json:"queued"`
}

// sessionsListed returns GET /sessions as a map by client id.
func sessionsListed(t *testing.T, s *apiSession) map[string]listedSession {
	t.Helper()
	var out struct {
		Sessions []listedSession `json:"sessions"`
	}
	if code := s.do(t, "GET", "/sessions?limit=1000", nil, &out); code != http.StatusOK {
		t.Fatalf("GET /sessions: %d", code)
	}
	m := map[string]listedSession{}
	for _, se := range out.Sessions {
		m[se.ClientID] = se
	}
	return m
}

// deleteSession sends DELETE /sessions/{clientId} with the client id
// percent-encoded (raw: escaped already) and returns the status and, for
// an error, its code and message.
func deleteSession(t *testing.T, s *apiSession, id string, raw bool) (status int, errCode, errMsg string) {
	t.Helper()
	if !raw {
		id = url.PathEscape(id)
	}
	req, err := http.NewRequest("DELETE", s.base+"/api/v1/sessions/"+id, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.token != "" {
		req.Header.Set("Authorization", "Bearer "+s.token)
	}
	res, err := s.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode == http.StatusNoContent {
		if len(body) != 0 {
			t.Fatalf("204 with a body: %q", body)
		}
		return res.StatusCode, "", ""
	}
	var eb struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&eb); err != nil || eb.Error.Code == "" || eb.Error.Message == "" {
		t.Fatalf("DELETE /sessions/%s: %d: not an error body: %q", id, res.StatusCode, body)
	}
	return res.StatusCode, eb.Error.Code, eb.Error.Message
}

// sessionRows counts what sessions.db holds for client id, table by
// table, read through a connection of its own while the server runs.
func sessionRows(t *testing.T, dataDir, id string) map[string]int {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dataDir, sessions.FileName)+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	out := map[string]int{}
	for table, col := range map[string]string{"mqtt_clients": "id", "mqtt_subscriptions": "client_id",
		"mqtt_inflight": "client_id", "mqtt_queue": "client_id"} {
		var n int
		if err := db.QueryRow(`SELECT count(*) FROM `+table+` WHERE `+col+` = ?`, id).Scan(&n); err != nil {
			t.Fatalf("count %s: %v", table, err)
		}
		out[table] = n
	}
	return out
}

// roleSession creates a user with role and logs them in.
func roleSession(t *testing.T, a *app, admin *apiSession, name, role string) *apiSession {
	t.Helper()
	pw := name + "-password-1"
	if code := admin.do(t, "POST", "/users", map[string]string{"username": name, "password": pw, "role": role}, nil); code != http.StatusCreated {
		t.Fatalf("create %s %s: %d", role, name, code)
	}
	return login(t, a, name, pw)
}

// An offline persistent session with queued QoS 1 messages: viewers,
// operators and the anonymous are refused and change nothing; bad client
// ids get 400, an unknown one 404; an admin's DELETE answers 204 once the
// session is gone from the engine and from sessions.db, is in the audit
// log, and a restart does not bring the session back: the client's
// reconnection (clean session off) gets session present 0 and none of the
// queued messages.
func TestDeleteSessionOffline(t *testing.T) {
	t.Setenv("TETHER_ADMIN_PASSWORD", simAdminPassword)
	cfg := testConfig(t)
	cfg.MQTT.TLSAddr, cfg.HTTP.HTTPSAddr = "off", "off"
	a, err := startApp(cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := a.shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	}
	t.Cleanup(stop)

	const id = "stale-sub"
	var early payloadSet
	sub := crashSub3(t, a.mqttAddr(), id, &early)
	if tok := sub.Subscribe("del/#", 1, nil); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	sub.Disconnect(100)
	waitSessionOffline(t, a, id)
	pub := crashPub3(t, a.mqttAddr(), "del-pub")
	for i := range 3 {
		if tok := pub.Publish("del/x", 1, false, fmt.Sprintf("queued-%d", i)); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("publish %d: %v", i, tok.Error())
		}
	}
	pub.Disconnect(0)

	admin := login(t, a, "admin", simAdminPassword)
	viewer := roleSession(t, a, admin, "vic", "viewer")
	operator := roleSession(t, a, admin, "otto", "operator")
	anon := &apiSession{base: admin.base, client: admin.client}
	if se := sessionsListed(t, admin)[id]; se.Online || se.Queued != 3 {
		t.Fatalf("before: session %+v, want offline with 3 queued", se)
	}
	if n := sessionRows(t, cfg.DataDir, id); n["mqtt_clients"] != 1 || n["mqtt_subscriptions"] != 1 || n["mqtt_queue"] != 3 {
		t.Fatalf("before: sessions.db holds %v for it", n)
	}

	for _, c := range []struct {
		who  string
		s    *apiSession
		want int
	}{{"viewer", viewer, http.StatusForbidden}, {"operator", operator, http.StatusForbidden}, {"nobody", anon, http.StatusUnauthorized}} {
		if code, _, _ := deleteSession(t, c.s, id, false); code != c.want {
			t.Errorf("DELETE as %s: %d, want %d", c.who, code, c.want)
		}
	}
	for _, raw := range []string{"%FF", "bad%C3", "nul%00byte"} {
		if code, ecode, _ := deleteSession(t, admin, raw, true); code != http.StatusBadRequest || ecode != "invalid" {
			t.Errorf("DELETE /sessions/%s: %d %s, want 400 invalid", raw, code, ecode)
		}
	}
	if code, ecode, msg := deleteSession(t, admin, "nobody-here", false); code != http.StatusNotFound || ecode != "not_found" {
		t.Errorf("DELETE an unknown client id: %d %s %q, want 404 not_found", code, ecode, msg)
	}
	if se := sessionsListed(t, admin)[id]; se.Online || se.Queued != 3 {
		t.Fatalf("after refused requests: session %+v, want it untouched (offline, 3 queued)", se)
	}

	if code, ecode, msg := deleteSession(t, admin, id, false); code != http.StatusNoContent {
		t.Fatalf("admin DELETE: %d %s %q", code, ecode, msg)
	}
	if _, ok := sessionsListed(t, admin)[id]; ok {
		t.Fatal("GET /sessions lists the deleted session")
	}
	// Committed before the answer: nothing left for a crash to restore.
	for table, n := range sessionRows(t, cfg.DataDir, id) {
		if n != 0 {
			t.Errorf("sessions.db: %d rows in %s for the deleted session", n, table)
		}
	}
	if code, _, _ := deleteSession(t, admin, id, false); code != http.StatusNotFound {
		t.Errorf("DELETE again: %d, want 404", code)
	}
	var audit struct {
		Entries []struct {
			Action, Actor, Target string
		} `json:"entries"`
	}
	if code := admin.do(t, "GET", "/audit?action=session_deleted", nil, &audit); code != http.StatusOK {
		t.Fatalf("GET /audit: %d", code)
	}
	if len(audit.Entries) != 1 || audit.Entries[0].Actor != "admin" || audit.Entries[0].Target != id {
		t.Fatalf("audit entries %+v, want one session_deleted by admin on %s", audit.Entries, id)
	}

	stop()
	b := startTestApp(t, cfg)
	admin = login(t, b, "admin", simAdminPassword)
	if _, ok := sessionsListed(t, admin)[id]; ok {
		t.Fatal("the deleted session is back after a restart")
	}
	var got payloadSet
	o := paho3.NewClientOptions().AddBroker("tcp://" + b.mqttAddr()).SetClientID(id).SetProtocolVersion(4).
		SetCleanSession(false).SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(5 * time.Second).
		SetDefaultPublishHandler(func(_ paho3.Client, m paho3.Message) { got.add(string(m.Payload())) })
	c := paho3.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("reconnect: %v", tok.Error())
	}
	defer c.Disconnect(0)
	if tok.(*paho3.ConnectToken).SessionPresent() {
		t.Fatal("reconnect after the delete and a restart: session present")
	}
	if tok := c.Subscribe("del/barrier", 1, nil); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	if tok := c.Publish("del/barrier", 1, false, "barrier"); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	var barrier payloadSet
	barrier.add("barrier")
	checkFor(t, 5*time.Second, func() error {
		if n, _ := got.missing(&barrier); n > 0 {
			return fmt.Errorf("no barrier")
		}
		return nil
	})
	if got.len() != 1 {
		t.Fatalf("received %d messages, want only the barrier: the deleted session's queue was delivered", got.len())
	}
}

// A live MQTT 5 client (a client id holding a '/', a space and a
// non-ASCII letter, percent-encoded in the path) with QoS 1 messages
// delivered and not acknowledged: an operator's DELETE is refused and the
// client stays; an admin's disconnects it with DISCONNECT 0x98
// (administrative action) and purges its session before the 204, so its
// reconnection gets session present 0 and is not sent the unacknowledged
// messages again.
func TestDeleteSessionLive(t *testing.T) {
	t.Setenv("TETHER_ADMIN_PASSWORD", simAdminPassword)
	cfg := testConfig(t)
	cfg.MQTT.TLSAddr, cfg.HTTP.HTTPSAddr = "off", "off"
	a := startTestApp(t, cfg)
	admin := login(t, a, "admin", simAdminPassword)
	operator := roleSession(t, a, admin, "otto", "operator")

	const id = "line/7 ü"
	expiry := uint32(3600)
	connect := func(box chan string, disconnected chan *paho.Disconnect) (*paho.Client, bool) {
		t.Helper()
		conn, err := net.DialTimeout("tcp", a.mqttAddr(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c := paho.NewClient(paho.ClientConfig{Conn: conn, EnableManualAcknowledgment: true,
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(p paho.PublishReceived) (bool, error) {
				box <- string(p.Packet.Payload) // not acknowledged
				return true, nil
			}},
			OnServerDisconnect: func(d *paho.Disconnect) { disconnected <- d },
		})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ca, err := c.Connect(ctx, &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: false,
			Properties: &paho.ConnectProperties{SessionExpiryInterval: &expiry}})
		if err != nil || ca.ReasonCode != 0 {
			t.Fatalf("connect: %v %+v", err, ca)
		}
		t.Cleanup(func() { closeSub5(c) })
		return c, ca.SessionPresent
	}
	box, disconnected := make(chan string, 10), make(chan *paho.Disconnect, 1)
	c, _ := connect(box, disconnected)
	subscribe5(t, c, "live/#")
	pub := crashPub3(t, a.mqttAddr(), "live-pub")
	defer pub.Disconnect(0)
	for i := range 2 {
		if tok := pub.Publish("live/x", 1, false, fmt.Sprintf("unacked-%d", i)); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("publish %d: %v", i, tok.Error())
		}
	}
	for range 2 {
		select {
		case <-box:
		case <-time.After(5 * time.Second):
			t.Fatal("the live client did not receive the messages")
		}
	}

	if code, _, _ := deleteSession(t, operator, id, false); code != http.StatusForbidden {
		t.Fatalf("DELETE as operator: %d, want 403", code)
	}
	if se, ok := sessionsListed(t, admin)[id]; !ok || !se.Online {
		t.Fatalf("after the operator's DELETE: session %+v listed %v, want it online", se, ok)
	}
	select {
	case d := <-disconnected:
		t.Fatalf("disconnected by a refused DELETE: %+v", d)
	default:
	}

	if code, ecode, msg := deleteSession(t, admin, id, false); code != http.StatusNoContent {
		t.Fatalf("admin DELETE: %d %s %q", code, ecode, msg)
	}
	if _, ok := sessionsListed(t, admin)[id]; ok {
		t.Fatal("GET /sessions lists the deleted session")
	}
	select {
	case d := <-disconnected:
		if d.ReasonCode != 0x98 {
			t.Fatalf("DISCONNECT reason 0x%02x, want 0x98 administrative action", d.ReasonCode)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no DISCONNECT from the server")
	}
	for table, n := range sessionRows(t, cfg.DataDir, id) {
		if n != 0 {
			t.Errorf("sessions.db: %d rows in %s for the deleted session", n, table)
		}
	}

	box2 := make(chan string, 10)
	c2, present := connect(box2, make(chan *paho.Disconnect, 1))
	if present {
		t.Fatal("reconnect after the delete: session present")
	}
	subscribe5(t, c2, "live/barrier")
	if tok := pub.Publish("live/barrier", 1, false, "barrier"); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	select {
	case got := <-box2:
		if got != "barrier" {
			t.Fatalf("the reconnection was sent %q first: the deleted session's inflight message", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no barrier")
	}
}
