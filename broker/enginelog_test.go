package broker

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"golang.org/x/crypto/bcrypt"

	"github.com/tether-iot/tether/devices"
)

// logBuffer collects log output; safe for concurrent writes.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startLoggedBroker runs a broker with the access hook whose log, at
// debug level, goes to the returned buffer.
func startLoggedBroker(t *testing.T) (*authEnv, *logBuffer) {
	t.Helper()
	ctx := context.Background()
	db, err := devices.OpenDB(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	reg, err := devices.OpenRegistry(ctx, db, authLogger())
	if err != nil {
		db.Close()
		t.Fatal(err)
	}
	reg.SetPasswordCost(bcrypt.MinCost)
	var buf logBuffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	o := DefaultOptions()
	o.TCPAddr = "127.0.0.1:0"
	auth := NewAuth(AuthOptions{Registry: reg, Logger: log})
	o.Logger, o.Access = log, auth
	b, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = b.Shutdown(sctx)
		reg.Close()
		db.Close()
	})
	return &authEnv{b: b, auth: auth, reg: reg, tcp: b.TCP.Address()}, &buf
}

// rawFrame frames body behind the fixed header byte first.
func rawFrame(first byte, body []byte) []byte {
	out := []byte{first}
	n := len(body)
	for {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 0x80
		}
		out = append(out, d)
		if n == 0 {
			break
		}
	}
	return append(out, body...)
}

func mqttStr(b *bytes.Buffer, s string) {
	_ = binary.Write(b, binary.BigEndian, uint16(len(s)))
	b.WriteString(s)
}

// rawConnect311 is a 3.1.1 CONNECT with credentials.
func rawConnect311(id, user, pass string) []byte {
	var b bytes.Buffer
	mqttStr(&b, "MQTT")
	b.Write([]byte{4, 0x02 | 0x80 | 0x40, 0, 60})
	mqttStr(&b, id)
	mqttStr(&b, user)
	mqttStr(&b, pass)
	return rawFrame(0x10, b.Bytes())
}

// rawPublishQoS1 is a 3.1.1 QoS 1 PUBLISH with packet id 1.
func rawPublishQoS1(topic string, payload []byte) []byte {
	var b bytes.Buffer
	mqttStr(&b, topic)
	b.Write([]byte{0, 1})
	b.Write(payload)
	return rawFrame(0x32, b.Bytes())
}

// misbehave connects as device id and sends what, then waits for the
// broker to close the connection.
func misbehave(t *testing.T, addr, id, secret string, what []byte) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(rawConnect311(id, id, secret)); err != nil {
		t.Fatal(err)
	}
	ack := make([]byte, 4)
	if _, err := c.Read(ack); err != nil || ack[0] != 0x20 || ack[3] != 0 {
		t.Fatalf("CONNACK % x: %v", ack, err)
	}
	if _, err := c.Write(what); err != nil {
		t.Fatal(err)
	}
	var sink [512]byte
	for {
		if _, err := c.Read(sink[:]); err != nil {
			return // closed by the broker
		}
	}
}

// TestEngineLogKeepsSecrets: a second CONNECT carrying a password and a
// large publish the ACL refuses (both make the engine log the packet at
// WARN) leave no password or payload byte in the log, at debug level.
func TestEngineLogKeepsSecrets(t *testing.T) {
	e, logs := startLoggedBroker(t)
	secret, secret2 := e.device(t, "d1"), e.device(t, "d1b")
	const pw = "second-connect-password-7731"
	misbehave(t, e.tcp, "d1", secret, rawConnect311("d1", "d1", pw))
	payload := bytes.Repeat([]byte("PAYLOAD-MARKER-"), 60_000) // 900 KB
	misbehave(t, e.tcp, "d1b", secret2, rawPublishQoS1("devices/other/commands/x", payload))
	checkFor(t, 5*time.Second, func() error {
		if n := strings.Count(logs.String(), "error processing packet"); n < 2 {
			return fmt.Errorf("%d packet errors logged", n)
		}
		return nil
	})
	out := logs.String()
	for _, s := range []string{pw, "PAYLOAD-MARKER", secret, secret2} {
		if strings.Contains(out, s) {
			t.Errorf("the log holds %q:\n%.2000s", s, out)
		}
	}
	if !strings.Contains(out, "payload_bytes=900000") {
		t.Errorf("the refused publish is not summarised:\n%.2000s", out)
	}
	if len(out) > 64<<10 {
		t.Errorf("%d bytes of log for two refusals", len(out))
	}
}

// TestEngineLogFoldsRepeats: a client repeating a refused publish gets one
// WARN line per window, then one line with the count.
func TestEngineLogFoldsRepeats(t *testing.T) {
	e, logs := startLoggedBroker(t)
	secret := e.device(t, "d2")
	pub := rawPublishQoS1("devices/other/commands/x", bytes.Repeat([]byte("p"), 100_000))
	const n = 50
	for range n {
		misbehave(t, e.tcp, "d2", secret, pub)
	}
	if got := strings.Count(logs.String(), "error processing packet"); got != 1 {
		t.Fatalf("%d refusals logged %d lines, want 1:\n%.3000s", n, got, logs.String())
	}
	if len(logs.String()) > 256<<10 {
		t.Fatalf("%d bytes of log for %d refusals", len(logs.String()), n)
	}
}

// TestEngineLogHandler checks the handler alone: packets summarised in
// attributes and in With, secrets redacted, long strings cut, repeats
// counted and reported when their window ends.
func TestEngineLogHandler(t *testing.T) {
	var buf logBuffer
	h := newEngineLog(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}), time.Minute)
	log := slog.New(h).With("pk", packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect},
		Connect: packets.ConnectParams{Password: []byte("with-pw-1"), Username: []byte("u")}})
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	emit := func(at time.Time, level slog.Level, msg string, args ...any) {
		r := slog.NewRecord(at, level, msg, 0)
		r.Add(args...)
		if err := log.Handler().Handle(context.Background(), r); err != nil {
			t.Fatal(err)
		}
	}
	big := strings.Repeat("c", 10_000)
	emit(t0, slog.LevelDebug, "dbg", "password", "pw-2", "packet", &packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, TopicName: "a/b", Payload: []byte("secret-payload-3")},
		"client", big, "raw", []byte("bytes-4"), "grp", slog.GroupValue(slog.String("token", "tok-5")))
	for i := range 10 {
		emit(t0.Add(time.Duration(i)*time.Second), slog.LevelWarn, "refused", "client", "c1")
	}
	emit(t0.Add(2*time.Minute), slog.LevelInfo, "later")
	out := buf.String()
	for _, s := range []string{"with-pw-1", "pw-2", "secret-payload-3", "bytes-4", "tok-5", big} {
		if strings.Contains(out, s) {
			t.Errorf("the log holds %.40q:\n%s", s, out)
		}
	}
	for _, s := range []string{`pk="Connect id=0 qos=0"`, `packet="Publish id=0 qos=1 topic=\"a/b\" payload_bytes=16"`, "repeated=9", "(10000 bytes)"} {
		if !strings.Contains(out, s) {
			t.Errorf("the log lacks %s:\n%s", s, out)
		}
	}
	if n := strings.Count(out, "msg=refused"); n != 2 { // the first, and the count
		t.Errorf("%d lines for 10 repeats:\n%s", n, out)
	}
}
