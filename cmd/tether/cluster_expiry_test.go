package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tether-iot/tether/internal/testpg"
)

// TestClusterPostgresCredentialExpiry: two real nodes on one PostgreSQL
// and one bus, sessions lasting 2 s (auth.token_ttl, lowered: the test is
// about that limit). A user logs in through node A's API and creates an
// API token there with a ttl of 2 s; MQTT 5 connections to node B made
// with the session and with the token are ended by B when each stops
// being accepted (DISCONNECT 0xA0 maximum connect time), and refused at
// their next CONNECT; B's connection made with the password stays and
// keeps receiving.
func TestClusterPostgresCredentialExpiry(t *testing.T) {
	pg := testpg.New(t)
	url := pg.NewDatabase(t)
	bin := tetherBinary(t)
	routes := []string{freeAddr(t), freeAddr(t)}
	nodes := make([]*tetherProc, 2)
	for i := range nodes {
		nodes[i] = newTetherProc(t, bin, "TETHER_ADMIN_PASSWORD="+accessAdminPassword, "TETHER_AUTH_TOKEN_TTL=2s",
			fmt.Sprintf("TETHER_CLUSTER_NODE=ex%d", i+1), "TETHER_CLUSTER_LISTEN="+routes[i],
			"TETHER_CLUSTER_PEERS="+strings.Join(routes, ","), "TETHER_CLUSTER_SECRET="+testClusterSecret)
		nodes[i].args = []string{"--allow-anonymous=false", "--postgres", url}
		nodes[i].start(t) // one after the other: the first creates the schema and admin
	}
	a, b := nodes[0], nodes[1]
	pw := accessUser(t, a, accessLogin(t, a, "admin", accessAdminPassword), "ex-op", "operator")
	session := accessLogin(t, a, "ex-op", pw)
	var tok struct{ Token string }
	if code := accessAPI(t, a, "POST", "/tokens", session, map[string]any{"name": "short", "ttl": 2}, &tok); code != 201 || tok.Token == "" {
		t.Fatalf("create token on A: HTTP %d", code)
	}

	stays := mustMQ(t, b.mqtt, mqOpts{id: "ex-pw", user: "ex-op", pass: pw})
	stays.sub(t, "devices/#")
	creds := []struct{ name, pass string }{{"token", tok.Token}, {"session", session}}
	var ending []*mq
	for _, c := range creds {
		m := mustMQ(t, b.mqtt, mqOpts{id: "ex-" + c.name, user: "ex-op", pass: c.pass})
		m.sub(t, "devices/#")
		ending = append(ending, m)
	}
	for i, c := range creds {
		select {
		case d := <-ending[i].ended:
			if d.ReasonCode != 0xA0 {
				t.Fatalf("%s: DISCONNECT 0x%02x from B, want 0xa0", c.name, d.ReasonCode)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("%s: B kept the connection past the credential's expiry\nB:\n%s", c.name, b.log())
		}
		if _, code := dialMQ(t, b.mqtt, mqOpts{id: "ex-" + c.name + "-again", user: "ex-op", pass: c.pass}); code != 0x86 {
			t.Fatalf("%s expired: CONNACK 0x%02x on B, want 0x86", c.name, code)
		}
	}
	if code := stays.pub(t, "devices/ex-dev/commands/ping", "{}"); code >= 0x80 {
		t.Fatalf("password connection: PUBACK 0x%02x", code)
	}
	stays.waitFor(t, onTopic("devices/ex-dev/commands/ping"), nil)
}
