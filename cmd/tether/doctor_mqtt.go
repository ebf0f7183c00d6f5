package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// mqttConnect is the MQTT step: CONNECT, then the CONNACK's reason in
// words. On success it sends DISCONNECT, leaving no session behind (clean
// start, no session expiry).
func (d *doctor) mqttConnect(conn net.Conn, transport string) error {
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: d.opts.protocol,
		Connect: packets.ConnectParams{
			ProtocolName: []byte("MQTT"),
			Clean:        true,
			// 10 s puts a '\n' (0x0A) early in the packet: an HTTP
			// server on this port takes the bytes before it for a request
			// line and answers 400 at once instead of waiting for one.
			Keepalive:        10,
			ClientIdentifier: d.opts.clientID,
		},
	}
	if d.opts.username != "" {
		pk.Connect.UsernameFlag, pk.Connect.Username = true, []byte(d.opts.username)
	}
	if d.opts.password != "" {
		pk.Connect.PasswordFlag, pk.Connect.Password = true, []byte(d.opts.password)
	}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		return &stepFailure{step: "MQTT", why: "encode CONNECT: " + err.Error()}
	}
	_ = conn.SetDeadline(time.Now().Add(d.opts.timeout))
	if _, err := conn.Write(buf.Bytes()); err != nil {
		return &stepFailure{step: "MQTT", why: "sending CONNECT failed: " + err.Error(),
			fix: "the broker closed the connection at once: it may refuse this address (connection limits, a ban)"}
	}
	ack, err := readConnack(bufio.NewReader(conn), d.opts.protocol, transport, d.opts.timeout)
	if err != nil {
		if f := d.clientCertificateWanted(err); f != nil {
			return f
		}
		var f *stepFailure
		if transport == "tcp" && errors.As(err, &f) && f.silent && d.speaksTLS() {
			f.why += ", and the port completes a TLS handshake: it is a TLS port"
			f.fix = "use tls:// (mqtts://) for this port, or wss:// if it serves HTTPS; or the broker's plain MQTT port (Tether: 1883)"
		}
		return err
	}
	who := "anonymous"
	if d.opts.username != "" {
		who = fmt.Sprintf("user %q", d.opts.username)
	}
	version := map[byte]string{4: "MQTT 3.1.1", 5: "MQTT 5"}[d.opts.protocol]
	if ack.ReasonCode != 0 {
		return connackFailure(ack, d.opts, who, version)
	}
	d.line("ok", "MQTT", fmt.Sprintf("CONNACK: connection accepted (%s, client id %q, %s)", version, d.opts.clientID, who))
	if p := ack.Properties; d.opts.protocol == 5 {
		var facts []string
		if p.AssignedClientID != "" {
			facts = append(facts, "assigned client id "+quote(p.AssignedClientID))
		}
		if p.ServerKeepAliveFlag {
			facts = append(facts, fmt.Sprintf("keep-alive %ds", p.ServerKeepAlive))
		}
		if p.MaximumPacketSize > 0 {
			facts = append(facts, fmt.Sprintf("maximum packet size %d bytes", p.MaximumPacketSize))
		}
		if p.ReceiveMaximum > 0 {
			facts = append(facts, fmt.Sprintf("receive maximum %d", p.ReceiveMaximum))
		}
		if p.MaximumQosFlag {
			facts = append(facts, fmt.Sprintf("maximum QoS %d", p.MaximumQos))
		}
		if len(facts) > 0 {
			d.detail("the broker says: " + strings.Join(facts, ", "))
		}
	}
	dis := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}, ProtocolVersion: d.opts.protocol}
	buf.Reset()
	if err := dis.DisconnectEncode(&buf); err == nil {
		_, _ = conn.Write(buf.Bytes())
	}
	return nil
}

// readConnack reads the broker's first packet, which must be a CONNACK,
// and recognises the answers of a port that is not an MQTT one.
func readConnack(r *bufio.Reader, protocol byte, transport string, timeout time.Duration) (*packets.Packet, error) {
	first, err := r.Peek(1)
	if err != nil {
		f := &stepFailure{step: "MQTT", why: "the broker closed the connection without answering CONNECT", silent: true, cause: err,
			fix: "the broker refused the connection before MQTT (it may limit connections per address), or this port expects TLS (try tls://) or is not an MQTT port; the broker's log says which"}
		if isTimeout(err) {
			f.why = fmt.Sprintf("no CONNACK arrived within %v", timeout)
			f.fix = "the server does not speak MQTT on this port, or it is overloaded"
		}
		return nil, f
	}
	head, _ := r.Peek(min(5, r.Buffered())) // a 3.1.1 CONNACK is 4 bytes: never wait for a fifth
	switch {
	case bytes.HasPrefix(head, []byte("HTTP/")):
		f := &stepFailure{step: "MQTT", why: "the port answered in HTTP: it is a web port, not an MQTT over TCP one",
			fix: "use ws://HOST:PORT/mqtt for this port, or the broker's MQTT port (Tether: 1883)"}
		if transport == "tls" {
			f.why = "the port answered in HTTPS: it is a web port, not an MQTT over TLS one"
			f.fix = "use wss://HOST:PORT/mqtt for this port, or the broker's MQTT over TLS port (Tether: 8883)"
		}
		return nil, f
	case first[0] == 0x15 || first[0] == 0x16:
		return nil, &stepFailure{step: "MQTT", why: "the port answered with TLS: it expects an encrypted connection",
			fix: "use tls:// (mqtts://) for this port, or wss:// if it serves HTTPS"}
	case first[0]>>4 != packets.Connack:
		return nil, &stepFailure{step: "MQTT", why: fmt.Sprintf("the broker's first packet is not a CONNACK (byte 0x%02x)", first[0]),
			fix: "this is not an MQTT broker, or it does not follow the protocol"}
	}
	pk := &packets.Packet{ProtocolVersion: protocol}
	hb, _ := r.ReadByte()
	if err := pk.FixedHeader.Decode(hb); err != nil {
		return nil, &stepFailure{step: "MQTT", why: "malformed CONNACK: " + err.Error()}
	}
	n, _, err := packets.DecodeLength(r)
	if err != nil || n > 1<<16 {
		return nil, &stepFailure{step: "MQTT", why: "malformed CONNACK length"}
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, &stepFailure{step: "MQTT", why: "the connection ended inside the CONNACK: " + err.Error()}
	}
	pk.FixedHeader.Remaining = n
	if err := pk.ConnackDecode(body); err != nil {
		return nil, &stepFailure{step: "MQTT", why: "malformed CONNACK: " + err.Error()}
	}
	return pk, nil
}

// connackReasons words the CONNACK reason codes of MQTT 5 [MQTT-3.2.2.2]
// and the return codes of MQTT 3.1.1 (keyed 0x100+code).
var connackReasons = map[int]string{
	0x80: "unspecified error", 0x81: "malformed packet", 0x82: "protocol error",
	0x83: "implementation specific error", 0x84: "unsupported protocol version",
	0x85: "client identifier not valid", 0x86: "bad user name or password",
	0x87: "not authorized", 0x88: "server unavailable", 0x89: "server busy",
	0x8A: "banned", 0x8C: "bad authentication method", 0x90: "topic name invalid",
	0x95: "packet too large", 0x97: "quota exceeded", 0x99: "payload format invalid",
	0x9A: "retain not supported", 0x9B: "QoS not supported", 0x9C: "use another server",
	0x9D: "server moved", 0x9F: "connection rate exceeded",
	0x101: "unacceptable protocol version", 0x102: "identifier rejected",
	0x103: "server unavailable", 0x104: "bad user name or password", 0x105: "not authorized",
}

// connackFailure explains a refused CONNECT and what to change.
func connackFailure(ack *packets.Packet, o doctorOptions, who, version string) *stepFailure {
	code := int(ack.ReasonCode)
	key := code
	if o.protocol == 4 {
		key = 0x100 + code
	}
	words, ok := connackReasons[key]
	if !ok {
		words = "unknown reason"
	}
	f := &stepFailure{step: "MQTT", why: fmt.Sprintf("the broker refused the connection (%s): CONNACK 0x%02X %s (%s)", who, code, words, version)}
	if rs := ack.Properties.ReasonString; rs != "" {
		f.details = append(f.details, "the broker said: "+printable(rs))
	}
	switch words {
	case "bad user name or password":
		if o.username == "" {
			f.fix = "the broker needs credentials: pass --username and --password (a device: its id and its secret; a person: their name and password or an API token)"
		} else {
			f.fix = "check --username and --password: a device's password is the secret shown when it was registered or rotated (`tether devices rotate ID` issues a new one); a person's is their password or an API token. Repeated failures slow down further attempts from this address"
		}
	case "not authorized":
		f.fix = "the identity may not connect: a disabled device, anonymous access off (auth.allow_anonymous), or a rule that denies it; `tether devices show ID` and the broker's log say which"
		if o.protocol == 4 {
			f.fix = "a wrong user name or password (MQTT 3.1.1 has no code of its own for it that brokers agree on: Tether answers 0x05 too; --mqtt-version 5 tells them apart), a disabled device, or a rule that denies it"
		}
		if o.username == "" {
			f.fix = "anonymous clients are not allowed: pass --username and --password, or enable auth.allow_anonymous on the broker"
		}
	case "client identifier not valid", "identifier rejected":
		f.fix = "a device must use its id as client id (the default when --username is given), and a client id that holds another identity's persistent session is refused: choose another --client-id"
	case "unsupported protocol version", "unacceptable protocol version":
		f.fix = "the broker does not speak " + version + ": try --mqtt-version 3.1.1"
	case "server unavailable", "server busy":
		f.fix = "the broker is starting, shutting down or overloaded: try again shortly, and check its /readyz"
		if o.protocol == 4 {
			f.fix += "; Tether also answers 0x03 to a login from a name and address that failed too often (MQTT 5: 0x9F): get the credentials right, then wait"
		}
	case "banned":
		f.fix = "this address or identity is banned for a while after repeated failures: wait, or ask an admin to lift the ban"
	case "connection rate exceeded", "quota exceeded":
		f.fix = "this name failed to log in from this address too often (or this address did, or it connects too often): the broker keeps such logins closed for 1 s, doubling up to 5 min; get the credentials right, then wait before retrying"
	case "use another server", "server moved":
		f.fix = "connect to the server the broker names: " + ack.Properties.ServerReference
	case "packet too large":
		f.fix = "the CONNECT exceeds the broker's mqtt.max_packet_size"
	default:
		f.fix = "see the reason above and the broker's log"
	}
	return f
}

// speaksTLS reports whether the broker's port completes a TLS handshake on
// a second connection: the explanation of a plain CONNECT that was closed
// unanswered.
func (d *doctor) speaksTLS() bool {
	conn, err := net.DialTimeout("tcp", d.ep.Host, d.opts.timeout)
	if err != nil {
		return false
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(d.opts.timeout))
	tc := tls.Client(conn, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}) // only asks whether TLS answers
	return tc.Handshake() == nil
}
