package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// mqttAnswers reports whether an MQTT CONNECT from ip is answered with a
// successful CONNACK (false: the connection was closed first).
func mqttAnswers(t *testing.T, ip, addr, id string) bool {
	t.Helper()
	c, err := dialFrom(ip, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(rawConnect(4, id)); err != nil {
		return false
	}
	first, body, err := readRawPacket(c)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("CONNECT from %s neither answered nor refused within 5s", ip)
	}
	return err == nil && first == 0x20 && len(body) == 2 && body[1] == 0
}

// httpAnswers reports whether GET /healthz from ip is answered.
func httpAnswers(t *testing.T, ip, addr string) bool {
	t.Helper()
	c, err := dialFrom(ip, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		return false
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("GET from %s neither answered nor refused within 5s", ip)
	}
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// One address holding idle HTTP keep-alive connections (2 minutes each,
// after one cheap request) and MQTT connections that never send CONNECT
// (10 s each) filled the server's file descriptors: 167 new connections a
// second from one machine kept every device and the dashboard out, on
// every listener. At the defaults such connections are held to
// limits.max_pending_connections_per_ip (1,024) per address: the next
// one from that address is closed at once, another address is served,
// and a logged-in client no longer counts.
func TestPendingConnectionsPerAddress(t *testing.T) {
	cfg := testConfig(t) // the defaults, on 127.0.0.1
	a := startTestApp(t, cfg)
	const bound = 1024 // configs.Default().Limits.MaxPendingConnectionsPerIP
	if got := cfg.Limits.MaxPendingConnectionsPerIP; got != bound {
		t.Fatalf("default max_pending_connections_per_ip %d, want %d", got, bound)
	}

	// A device logged in from the address does not count.
	dev := dialTCP(t, a.mqttAddr())
	rawHandshake(t, dev, 4, "logged-in")

	// The attacker: idle keep-alive HTTP connections (MQTT ones that never
	// send CONNECT count the same, but the connect timeout ends them).
	var held []net.Conn
	t.Cleanup(func() {
		for _, c := range held {
			c.Close()
		}
	})
	for i := range bound {
		c, err := dialFrom("127.0.0.1", a.httpAddr())
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("HTTP connection %d: %v", i, err)
		}
		resp.Body.Close()
		_ = c.SetDeadline(time.Time{})
	}

	// The next connection from there is closed, whatever its listener.
	if mqttAnswers(t, "127.0.0.1", a.mqttAddr(), "same-address") {
		t.Errorf("a CONNECT from the address holding %d connections not logged in is answered", bound)
	}
	if httpAnswers(t, "127.0.0.1", a.httpAddr()) {
		t.Errorf("an HTTP request from the address holding %d connections not logged in is answered", bound)
	}
	// Another address is served.
	if !mqttAnswers(t, "127.0.0.2", a.mqttAddr(), "other-address") {
		t.Error("a CONNECT from another address is refused")
	}
	if !httpAnswers(t, "127.0.0.2", a.httpAddr()) {
		t.Error("an HTTP request from another address is refused")
	}
	// The device logged in before is still served.
	_ = dev.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := dev.Write([]byte{0xC0, 0}); err != nil { // PINGREQ
		t.Fatal(err)
	}
	if first, _, err := readRawPacket(dev); err != nil || first != 0xD0 {
		t.Fatalf("the logged-in device: PINGRESP %#x %v", first, err)
	}

	// One of them goes: the address gets a place again.
	held[0].Close()
	checkFor(t, 5*time.Second, func() error {
		if !mqttAnswers(t, "127.0.0.1", a.mqttAddr(), "after-close") {
			return fmt.Errorf("a CONNECT from the address is still refused after one of its connections closed")
		}
		return nil
	})
}
