package main

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
)

// Raw MQTT packets, for tests that must control every byte.

func mqttString(b *bytes.Buffer, s string) {
	_ = binary.Write(b, binary.BigEndian, uint16(len(s)))
	b.WriteString(s)
}

// rawPacket frames body with the fixed header byte first.
func rawPacket(first byte, body []byte) []byte {
	var b bytes.Buffer
	b.WriteByte(first)
	n := len(body)
	for {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 0x80
		}
		b.WriteByte(d)
		if n == 0 {
			break
		}
	}
	b.Write(body)
	return b.Bytes()
}

// rawConnect is a clean-session CONNECT for protocol level 4 (3.1.1) or 5,
// keep-alive 0 (no deadline from the broker).
func rawConnect(version byte, id string) []byte {
	var b bytes.Buffer
	mqttString(&b, "MQTT")
	b.WriteByte(version)
	b.WriteByte(0x02) // clean session / clean start
	b.Write([]byte{0, 0})
	if version == 5 {
		b.WriteByte(0) // no properties
	}
	mqttString(&b, id)
	return rawPacket(0x10, b.Bytes())
}

// rawSubscribe subscribes to filter at QoS 0 with packet id 1.
func rawSubscribe(version byte, filter string) []byte {
	var b bytes.Buffer
	b.Write([]byte{0, 1})
	if version == 5 {
		b.WriteByte(0)
	}
	mqttString(&b, filter)
	b.WriteByte(0)
	return rawPacket(0x82, b.Bytes())
}

// rawPublish is a QoS 0 PUBLISH.
func rawPublish(version byte, topic string, payload []byte) []byte {
	var b bytes.Buffer
	mqttString(&b, topic)
	if version == 5 {
		b.WriteByte(0)
	}
	b.Write(payload)
	return rawPacket(0x30, b.Bytes())
}

// readRawPacket reads one packet and returns its first byte and body.
func readRawPacket(r io.Reader) (byte, []byte, error) {
	h := make([]byte, 1)
	if _, err := io.ReadFull(r, h); err != nil {
		return 0, nil, err
	}
	n, mul := 0, 1
	for i := 0; i < 4; i++ {
		d := make([]byte, 1)
		if _, err := io.ReadFull(r, d); err != nil {
			return 0, nil, err
		}
		n += int(d[0]&0x7f) * mul
		mul *= 128
		if d[0]&0x80 == 0 {
			break
		}
	}
	body := make([]byte, n)
	_, err := io.ReadFull(r, body)
	return h[0], body, err
}

// rawHandshake sends CONNECT and checks for a successful CONNACK; for
// MQTT 5 it returns the CONNACK decoded.
func rawHandshake(t testing.TB, c net.Conn, version byte, id string) *packets.Connack {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write(rawConnect(version, id)); err != nil {
		t.Fatalf("write CONNECT: %v", err)
	}
	if version == 5 {
		cp, err := packets.ReadPacket(c)
		if err != nil {
			t.Fatalf("read CONNACK: %v", err)
		}
		ca, ok := cp.Content.(*packets.Connack)
		if !ok || ca.ReasonCode != 0 {
			t.Fatalf("want a successful CONNACK, got %v", cp)
		}
		return ca
	}
	first, body, err := readRawPacket(c)
	if err != nil || first != 0x20 || len(body) != 2 || body[1] != 0 {
		t.Fatalf("want a successful CONNACK, got %#x %x (%v)", first, body, err)
	}
	return nil
}

// expectClosed reads until the peer closes c, within d, and returns what
// was read.
func expectClosed(t testing.TB, c net.Conn, d time.Duration) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	b, err := io.ReadAll(c)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("connection still open after %v (read %x)", d, b)
	}
	return b
}

// assertServing proves the broker still routes messages between a TCP and
// a WebSocket client, both ways.
func assertServing(t testing.TB, a *app) {
	t.Helper()
	tcp := connectClient(t, a, clientSpec{5, "tcp"}, nil)
	ws := connectClient(t, a, clientSpec{3, "ws"}, nil)
	topic := nextID("serving")
	tcp.subscribe(t, topic+"/to-tcp", 1)
	ws.subscribe(t, topic+"/to-ws", 1)
	ws.publish(t, topic+"/to-tcp", "a", 1, false)
	tcp.publish(t, topic+"/to-ws", "b", 1, false)
	expectMessage(t, tcp.inbox(), message{topic + "/to-tcp", "a", 1, false})
	expectMessage(t, ws.inbox(), message{topic + "/to-ws", "b", 1, false})
	tcp.close()
	ws.close()
}
