package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"testing"
)

// clientFrom is an HTTP client whose connections come from the loopback
// address local (any of 127.0.0.0/8), to stand for another address.
func clientFrom(local string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return d.DialContext(ctx, network, addr)
		},
	}}
}

// httpLogin posts a login from local and returns the status.
func httpLogin(t *testing.T, a *app, local, user, pass string) int {
	t.Helper()
	b, _ := json.Marshal(map[string]string{"username": user, "password": pass})
	c := clientFrom(local)
	defer c.CloseIdleConnections()
	resp, err := c.Post("http://"+a.httpAddr()+"/api/v1/auth/login", "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// mqttLogin connects over MQTT 5 from local and returns the CONNACK code.
func mqttLogin(t *testing.T, a *app, local, user, pass string) byte {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	c, err := d.Dial("tcp", a.mqttAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(rawConnectAuth(5, "login-"+user, user, pass))
	first, body, err := readRawPacket(c)
	if err != nil || first != 0x20 || len(body) < 2 {
		t.Fatalf("CONNACK %#x %v %v", first, body, err)
	}
	return body[1]
}

// TestOneLoginLimiter: MQTT and HTTP failures count against one limiter
// (SPEC §5), keyed by name and address and by address: failures from one
// address for a user do not delay the user's correct login from another.
func TestOneLoginLimiter(t *testing.T) {
	a := startAuthApp(t)
	const x, y = "127.0.0.2", "127.0.0.3"
	// Three wrong passwords over MQTT and two over HTTP, all from x.
	for range 3 {
		if code := mqttLogin(t, a, x, "admin", "wrong-password"); code != 0x86 {
			t.Fatalf("MQTT wrong password: CONNACK %#x", code)
		}
	}
	for range 2 {
		if code := httpLogin(t, a, x, "admin", "wrong-password"); code != http.StatusUnauthorized {
			t.Fatalf("HTTP wrong password: %d", code)
		}
	}
	// Five failures of the pair: HTTP from x is now closed, even for the
	// right password...
	if code := httpLogin(t, a, x, "admin", simAdminPassword); code != http.StatusTooManyRequests {
		t.Fatalf("HTTP right password from the failing address: %d, want 429", code)
	}
	// ...and not from y, over either protocol.
	if code := httpLogin(t, a, y, "admin", simAdminPassword); code != http.StatusOK {
		t.Fatalf("HTTP right password from another address: %d", code)
	}
	if code := mqttLogin(t, a, y, "admin", simAdminPassword); code != 0 {
		t.Fatalf("MQTT right password from another address: CONNACK %#x", code)
	}
}
