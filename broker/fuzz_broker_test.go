package broker

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	pp "github.com/eclipse/paho.golang/packets"
	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"golang.org/x/crypto/bcrypt"

	"github.com/tether-iot/tether/broker/sessions"
	"github.com/tether-iot/tether/devices"
)

// FuzzBrokerStream feeds hostile MQTT byte streams through the whole
// broker: the engine's packet decoder and every hook that reads what a
// client sends (access, topic aliases, wills, subscription and retained
// bounds, telemetry, commands, twins, presence, the session store), over
// a real TCP connection to one broker per fuzzing process, assembled as
// tether serve assembles it (fuzzEnv).
//
// mode chooses the CONNECT the harness sends first (fuzzConnect): the
// protocol version (3.1, 3.1.1, 5), who connects (the registered device,
// an operator, an admin, a viewer, an anonymous client, which the broker
// refuses, or the device with a wrong password; or nobody: stream then
// holds the CONNECT too), a persistent session, a will. Then stream, then
// the harness half-closes the connection and reads what comes back until
// the broker closes it. Each input must:
//
//   - be answered with whole packets a server may send, well formed
//     (paho's codec for MQTT 5, not the engine's), CONNACK first and once,
//     nothing after a refusing CONNACK or a DISCONNECT (checkAnswer);
//   - end within fuzzHang of the half-close, the broker done with the
//     connection (every hook's OnDisconnect returned), its count of
//     subscriptions what its sessions hold;
//   - leave the broker working: a fresh MQTT 5 client connects, subscribes,
//     publishes and receives its own message, after every input; every
//     fuzzPahoEvery inputs a paho 3.1.1 client does the same, and the
//     goroutines are back to what they were.
//
// A panic anywhere in the broker kills the fuzzing process, which the
// fuzzer reports as a crash with the input.
//
//	go test -run XXX -fuzz FuzzBrokerStream -fuzztime 10m -parallel 1 ./broker/
//
// Seeds: testdata/fuzz/FuzzBrokerStream (TestWriteBrokerStreamSeeds
// writes them).
func FuzzBrokerStream(f *testing.F) {
	e := startFuzzEnv(f)
	f.Fuzz(func(t *testing.T, mode byte, stream []byte) {
		e.run(t, mode, stream)
	})
}

// The fuzz identities. The device's secret is random: a stream that
// holds fuzzSecretPlaceholder (as long as a secret) gets the secret in
// its place.
const (
	fuzzDevice            = "fz-dev"
	fuzzSecretPlaceholder = "FUZZ-DEVICE-SECRET-PLACEHOLDER-xxxxxxxxxxxx"
	fuzzPassword          = "fz-password-1"
	fuzzHang              = 20 * time.Second
	fuzzPahoEvery         = 50
)

// fuzzUsers are the people the harness connects as, by role.
var fuzzUsers = map[string]string{"fz-op": devices.RoleOperator, "fz-admin": devices.RoleAdmin, "fz-viewer": devices.RoleViewer}

// fuzzEnv is the broker of one fuzzing process with the hooks of tether
// serve, in its order (cmd/tether/app.go, newBroker): publish rate,
// retained bound, telemetry, commands, twins, backpressure, retained
// replies, the session store last; the access hook (with bans, a login
// throttle and the subscription bound) in front. Registry, telemetry,
// commands, twins and sessions are on SQLite files in a temporary
// directory.
type fuzzEnv struct {
	b      *Broker
	tcp    string
	secret string // fuzzDevice's

	inputs atomic.Int64
	// baseGoroutines is the goroutine count after the first paho check.
	baseGoroutines int
}

func startFuzzEnv(tb testing.TB) *fuzzEnv {
	tb.Helper()
	ctx := context.Background()
	dir, log := tb.TempDir(), authLogger()
	db, err := devices.OpenDB(dir)
	if err != nil {
		tb.Fatal(err)
	}
	reg, err := devices.OpenRegistry(ctx, db, log)
	if err != nil {
		tb.Fatal(err)
	}
	reg.SetPasswordCost(bcrypt.MinCost)
	tel, err := devices.OpenTelemetry(ctx, db, &devices.TelemetryOptions{FlushInterval: 50 * time.Millisecond, Logger: log, LastValues: reg})
	if err != nil {
		tb.Fatal(err)
	}
	reg.OnOnline(tel.RefreshNames)
	cmds, err := devices.OpenCommands(ctx, db, &devices.CommandsOptions{Logger: log})
	if err != nil {
		tb.Fatal(err)
	}
	twins, err := devices.OpenTwins(ctx, db, &devices.TwinsOptions{Logger: log})
	if err != nil {
		tb.Fatal(err)
	}
	reg.Attach(tel, cmds, twins)
	telHook, cmdHook, twinHook := NewTelemetryHook(tel, log), NewCommandHook(cmds, log), NewTwinHook(twins, log)
	store, err := sessions.Open(dir, &sessions.Options{Logger: log, Deliveries: []mqtt.Hook{cmdHook}, Refused: cmdHook.Refused})
	if err != nil {
		tb.Fatal(err)
	}
	// Bans count every ACL denial, as in production; the harness's
	// loopback address is exempt there (security.ban_exempt) and the
	// threshold is out of reach here, so that the fuzz identities stay
	// welcome.
	bans := devices.NewBans(&devices.BanOptions{Threshold: 1 << 30, Window: time.Minute, Duration: time.Minute})
	auth := NewAuth(AuthOptions{Registry: reg, Logger: log, Sessions: store, Bans: bans,
		Logins: devices.NewLoginLimiter(&devices.LoginLimitOptions{Base: 5 * time.Millisecond, Max: 20 * time.Millisecond})})
	lim := DefaultRetainedLimitOptions()
	lim.Identity, lim.Logger = auth.Identity, log
	retainLimit := NewRetainedLimit(lim)
	telHook.SetIdentify(auth.Identity)
	cmdHook.SetIdentify(auth.Identity)
	pubLimit := NewPublishLimit(PublishLimitOptions{DeviceRate: 100, DeviceBurst: 500, Identity: auth.Identity})
	bp, retained := NewBackpressure(time.Second), NewRetained()

	o := DefaultOptions()
	o.TCPAddr, o.Logger, o.Access = "127.0.0.1:0", log, auth
	o.Hooks = []mqtt.Hook{pubLimit, retainLimit, telHook, cmdHook, twinHook, bp, retained, store}
	b, err := New(o)
	if err != nil {
		tb.Fatal(err)
	}
	store.Attach(b.Server)
	bp.Attach(b.Server)
	retained.Attach(b.Server)
	retainLimit.Attach(b.Server)
	cmdHook.Attach(b.Server)
	twinHook.Attach(b.Server)
	if err := b.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = b.Shutdown(sctx)
		store.Close()
		tel.Close()
		cmds.Close()
		twins.Close()
		reg.Close()
		db.Close()
	})
	e := &fuzzEnv{b: b, tcp: b.TCP.Address()}
	if _, e.secret, err = reg.CreateDevice(ctx, devices.NewDevice{ID: fuzzDevice}); err != nil {
		tb.Fatal(err)
	}
	if len(e.secret) != len(fuzzSecretPlaceholder) {
		tb.Fatalf("a device secret has %d characters, the placeholder %d", len(e.secret), len(fuzzSecretPlaceholder))
	}
	for name, role := range fuzzUsers {
		if _, err := reg.CreateUser(ctx, name, fuzzPassword, role); err != nil {
			tb.Fatal(err)
		}
	}
	return e
}

// The bits of a fuzz input's mode: the protocol version, who connects,
// a persistent session (MQTT 5: Session Expiry Interval 600), a will (QoS
// 1, on a topic each identity may or may not use), retained or not.
const (
	fzV311, fzV5, fzV5b, fzV31         = 0, 1, 2, 3
	fzDevice, fzOperator, fzAdmin      = 0 << 2, 1 << 2, 2 << 2
	fzViewer, fzAnonymous, fzWrongPass = 3 << 2, 4 << 2, 5 << 2
	fzDevice2, fzRaw                   = 6 << 2, 7 << 2 // fzRaw: the stream has its own CONNECT
	fzPersistent, fzWill, fzWillRetain = 0x20, 0x40, 0x80
)

// fuzzConnect is the CONNECT mode asks for, or nil (the stream brings its
// own), and the protocol version the broker will speak (0: the stream's).
func (e *fuzzEnv) fuzzConnect(mode byte) ([]byte, byte) {
	version := map[byte]byte{fzV311: 4, fzV5: 5, fzV5b: 5, fzV31: 3}[mode&3]
	var id, user, pass, willTopic string
	switch mode & (7 << 2) {
	case fzDevice, fzDevice2:
		id, user, pass, willTopic = fuzzDevice, fuzzDevice, e.secret, "devices/"+fuzzDevice+"/telemetry"
	case fzOperator:
		id, user, pass, willTopic = "fz-op", "fz-op", fuzzPassword, "devices/"+fuzzDevice+"/commands/will" // refused: the broker's topic
	case fzAdmin:
		id, user, pass, willTopic = "fz-admin", "fz-admin", fuzzPassword, "fz/will"
	case fzViewer:
		id, user, pass, willTopic = "fz-viewer", "fz-viewer", fuzzPassword, "devices/"+fuzzDevice+"/telemetry" // refused: may not publish
	case fzAnonymous:
		id, willTopic = "fz-anon", "fz/will" // refused: no anonymous access
	case fzWrongPass:
		id, user, pass, willTopic = fuzzDevice, fuzzDevice, "wrong-"+fuzzPassword, "devices/"+fuzzDevice+"/telemetry"
	default:
		return nil, 0
	}
	return connectBytes(version, id, user, pass, mode&fzPersistent == 0, willTopic, mode&fzWill != 0, mode&fzWillRetain != 0), version
}

// connectBytes encodes a CONNECT of version (3: MQTT 3.1, 4: 3.1.1, 5).
func connectBytes(version byte, id, user, pass string, clean bool, willTopic string, will, willRetain bool) []byte {
	var b bytes.Buffer
	name := "MQTT"
	if version == 3 {
		name = "MQIsdp"
	}
	mqttStr(&b, name)
	b.WriteByte(version)
	var flags byte
	if clean {
		flags |= 0x02
	}
	if will {
		flags |= 0x04 | 0x08 // QoS 1
		if willRetain {
			flags |= 0x20
		}
	}
	if pass != "" {
		flags |= 0x40
	}
	if user != "" {
		flags |= 0x80
	}
	b.Write([]byte{flags, 0, 60})
	if version == 5 {
		if clean {
			b.WriteByte(0)
		} else {
			b.Write([]byte{5, 0x11, 0, 0, 0x02, 0x58}) // Session Expiry Interval 600
		}
	}
	mqttStr(&b, id)
	if will {
		if version == 5 {
			b.Write([]byte{2, 0x01, 1}) // Payload Format Indicator: UTF-8
		}
		mqttStr(&b, willTopic)
		mqttStr(&b, `{"will":1}`)
	}
	if user != "" {
		mqttStr(&b, user)
	}
	if pass != "" {
		mqttStr(&b, pass)
	}
	return rawFrame(0x10, b.Bytes())
}

// run is one fuzz input.
func (e *fuzzEnv) run(t *testing.T, mode byte, stream []byte) {
	n := e.inputs.Add(1)
	connect, version := e.fuzzConnect(mode)
	stream = bytes.ReplaceAll(stream, []byte(fuzzSecretPlaceholder), []byte(e.secret))
	if connect == nil {
		version = streamVersion(stream)
	}
	out, reset := e.exchange(t, append(connect, stream...))
	if err := checkAnswer(out, version, connect == nil, reset); err != nil {
		t.Fatalf("mode %#x: the broker's answer breaks the protocol: %v\nanswer: % x", mode, err, out)
	}
	e.waitIdle(t)
	if counted, held := e.subscriptions(); counted != held {
		t.Fatalf("mode %#x: the broker counts %d subscriptions, its sessions hold %d", mode, counted, held)
	}
	if err := e.alive(n); err != nil {
		t.Fatalf("mode %#x: the broker no longer works after this input: %v\n%s", mode, err, goroutines())
	}
	if n%fuzzPahoEvery == 1 {
		e.pahoAlive(t, n)
	}
}

// exchange writes in to a fresh connection, half-closes it, and returns
// all the broker sent until it closed the connection; reset says the
// broker reset it (it closed with bytes of in unread), so that the
// answer's tail may be lost.
func (e *fuzzEnv) exchange(t *testing.T, in []byte) ([]byte, bool) {
	c, err := net.Dial("tcp", e.tcp)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(fuzzHang))
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		_, _ = c.Write(in) // the broker may close before it has read all of it
		_ = c.(*net.TCPConn).CloseWrite()
	}()
	out, err := io.ReadAll(c)
	<-wrote
	switch {
	case err == nil:
		return out, false
	case errors.Is(err, syscall.ECONNRESET):
		return out, true
	case errors.Is(err, os.ErrDeadlineExceeded):
		t.Fatalf("the broker had not closed the connection %s after the input ended (%d bytes in, %d out)\n%s",
			fuzzHang, len(in), len(out), goroutines())
	}
	t.Fatalf("read: %v", err)
	return nil, false
}

// waitIdle waits until the broker is done with every connection: each
// hook's OnDisconnect has returned.
func (e *fuzzEnv) waitIdle(t *testing.T) {
	deadline := time.Now().Add(fuzzHang)
	for e.b.TCP.Stats().Open.Load() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the broker still holds %d connections %s after they closed\n%s", e.b.TCP.Stats().Open.Load(), fuzzHang, goroutines())
		}
		time.Sleep(time.Millisecond)
	}
}

// subscriptions returns the count of subscriptions the broker reports
// (tether_mqtt_subscriptions) and the filters its sessions hold.
func (e *fuzzEnv) subscriptions() (counted int64, held int64) {
	for _, cl := range e.b.Server.Clients.GetAll() {
		held += int64(cl.State.Subscriptions.Len())
	}
	return atomic.LoadInt64(&e.b.Server.Info.Subscriptions), held
}

// alive connects a fresh MQTT 5 client as an admin, which subscribes to a
// topic, publishes to it at QoS 1 and must get its PUBACK and its own
// message back.
func (e *fuzzEnv) alive(n int64) error {
	c, err := net.Dial("tcp", e.tcp)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(fuzzHang))
	rc := &rawClient{c: c, r: bufio.NewReader(c)}
	payload := fmt.Sprintf("alive-%d-%d", os.Getpid(), n)
	var in bytes.Buffer
	in.Write(connectBytes(5, "fz-check", "fz-admin", fuzzPassword, true, "", false, false))
	sub := pp.NewControlPacket(pp.SUBSCRIBE)
	sub.Content.(*pp.Subscribe).PacketID = 1
	sub.Content.(*pp.Subscribe).Subscriptions = []pp.SubOptions{{Topic: "fz/alive", QoS: 1}}
	sub.Content.(*pp.Subscribe).Properties = &pp.Properties{}
	pub := publish5("fz/alive", 1, 2, payload, nil)
	for _, cp := range []*pp.ControlPacket{sub, pub} {
		if _, err := cp.WriteTo(&in); err != nil {
			return err
		}
	}
	if _, err := c.Write(in.Bytes()); err != nil {
		return err
	}
	var connack, suback, puback, got bool
	for !(connack && suback && puback && got) {
		h, body, err := rc.readRaw(fuzzHang)
		if err != nil {
			return fmt.Errorf("check client: read (CONNACK %v SUBACK %v PUBACK %v message %v): %w", connack, suback, puback, got, err)
		}
		cp, err := pp.ReadPacket(bytes.NewReader(append(append([]byte{h}, vbi(len(body))...), body...)))
		if err != nil {
			return fmt.Errorf("check client: decode %#x: %w", h, err)
		}
		switch p := cp.Content.(type) {
		case *pp.Connack:
			if p.ReasonCode != 0 {
				return fmt.Errorf("check client: CONNACK %#x", p.ReasonCode)
			}
			connack = true
		case *pp.Suback:
			if len(p.Reasons) != 1 || p.Reasons[0] != 1 {
				return fmt.Errorf("check client: SUBACK % x", p.Reasons)
			}
			suback = true
		case *pp.Puback:
			if p.ReasonCode != 0 {
				return fmt.Errorf("check client: PUBACK %#x", p.ReasonCode)
			}
			puback = true
		case *pp.Publish:
			got = got || string(p.Payload) == payload
			if p.QoS == 1 {
				ack := pp.NewControlPacket(pp.PUBACK)
				ack.Content.(*pp.Puback).PacketID = p.PacketID
				_, _ = ack.WriteTo(c)
			}
		default:
			return fmt.Errorf("check client: unexpected %s", cp.PacketType())
		}
	}
	_, _ = c.Write([]byte{0xE0, 0})
	return nil
}

// pahoAlive does what alive does with a paho 3.1.1 client, and checks
// that the broker's goroutines are back to their count after the first
// check.
func (e *fuzzEnv) pahoAlive(t *testing.T, n int64) {
	topic := fmt.Sprintf("fz/paho/%d", n)
	got := make(chan struct{})
	var once sync.Once
	o := paho.NewClientOptions().AddBroker("tcp://" + e.tcp).SetClientID("fz-paho").
		SetUsername("fz-admin").SetPassword(fuzzPassword).SetProtocolVersion(4).SetCleanSession(true).
		SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(fuzzHang)
	c := paho.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(fuzzHang) || tok.Error() != nil {
		t.Fatalf("paho client: connect: %v\n%s", tok.Error(), goroutines())
	}
	defer c.Disconnect(0)
	if tok := c.Subscribe(topic, 1, func(paho.Client, paho.Message) { once.Do(func() { close(got) }) }); !tok.WaitTimeout(fuzzHang) || tok.Error() != nil {
		t.Fatalf("paho client: subscribe: %v", tok.Error())
	}
	if tok := c.Publish(topic, 1, false, "alive"); !tok.WaitTimeout(fuzzHang) || tok.Error() != nil {
		t.Fatalf("paho client: publish: %v", tok.Error())
	}
	select {
	case <-got:
	case <-time.After(fuzzHang):
		t.Fatal("paho client: its own message did not come back")
	}
	c.Disconnect(0)
	e.waitIdle(t)
	if e.baseGoroutines == 0 {
		e.baseGoroutines = runtime.NumGoroutine()
		return
	}
	// A goroutine leaked per input would show after fuzzPahoEvery inputs;
	// a few come and go (the stores' flushes, timers).
	deadline := time.Now().Add(fuzzHang)
	for runtime.NumGoroutine() > e.baseGoroutines+10 {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines after %d inputs, %d after the first: leaked\n%s", runtime.NumGoroutine(), n, e.baseGoroutines, goroutines())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// goroutines is every goroutine's stack, for a hang or a leak.
func goroutines() string {
	var b strings.Builder
	_ = pprof.Lookup("goroutine").WriteTo(&b, 1)
	return b.String()
}

// streamVersion is the protocol level of the CONNECT at the start of a
// stream, or 0.
func streamVersion(s []byte) byte {
	if len(s) < 2 || s[0]>>4 != 1 {
		return 0
	}
	i := 1
	for i < len(s) && i < 5 && s[i]&0x80 != 0 {
		i++
	}
	i++ // past the remaining length
	if i+2 > len(s) {
		return 0
	}
	at := i + 2 + (int(s[i])<<8 | int(s[i+1]))
	if at >= len(s) {
		return 0
	}
	return s[at]
}

// checkAnswer checks what the broker sent on a connection of protocol
// version v (0: unknown, the stream's CONNECT was not readable): whole
// packets of the types a server sends with their fixed flags
// [MQTT-2.1.3-1]; CONNACK first and only once [MQTT-3.2.0-1]; nothing after
// a refusing CONNACK [MQTT-3.2.2-5] [MQTT-3.2.2-7] or a DISCONNECT
// [MQTT-3.14.4-1]; PUBLISH with a topic name without wildcards
// [MQTT-3.3.2-2] (a 3.1.1 one non-empty, an MQTT 5 one non-empty unless it
// carries a Topic Alias, which a client that announced none must never
// get [MQTT-3.3.2-9]: raw streams may announce some), a packet id at QoS 1
// and 2 [MQTT-2.2.1-3]. MQTT 5 packets must decode with paho's codec.
// reset allows the last packet to be cut short.
func checkAnswer(out []byte, v byte, raw, reset bool) error {
	ended := ""
	for i, n := 0, 0; i < len(out); n++ {
		start := i
		h := out[i]
		i++
		length, mul, ok := 0, 1, false
		for k := 0; k < 4 && i < len(out); k++ {
			b := out[i]
			i++
			length += int(b&0x7f) * mul
			mul *= 128
			if b&0x80 == 0 {
				ok = true
				break
			}
		}
		if !ok || i+length > len(out) {
			if reset {
				return nil
			}
			return fmt.Errorf("packet %d (%#x) cut short at byte %d", n, h, start)
		}
		body := out[i : i+length]
		i += length
		if ended != "" {
			return fmt.Errorf("packet %d (%#x) after %s", n, h, ended)
		}
		typ, flags := h>>4, h&0x0f
		if (n == 0) != (typ == pp.CONNACK) {
			return fmt.Errorf("packet %d is of type %d: CONNACK must come first, once", n, typ)
		}
		switch typ {
		case pp.CONNACK, pp.PUBACK, pp.PUBREC, pp.PUBCOMP, pp.SUBACK, pp.UNSUBACK, pp.PINGRESP:
		case pp.DISCONNECT, pp.AUTH:
			if v != 5 {
				return fmt.Errorf("packet %d: type %d sent to an MQTT %d client", n, typ, v)
			}
		case pp.PUBREL:
			if flags != 2 {
				return fmt.Errorf("packet %d: PUBREL flags %#x", n, flags)
			}
		case pp.PUBLISH:
			if (flags>>1)&3 == 3 {
				return fmt.Errorf("packet %d: PUBLISH with QoS 3", n)
			}
		default:
			return fmt.Errorf("packet %d: type %d is not one a server sends", n, typ)
		}
		if typ != pp.PUBLISH && typ != pp.PUBREL && flags != 0 {
			return fmt.Errorf("packet %d: type %d with flags %#x", n, typ, flags)
		}
		var err error
		if v == 5 {
			err = check5(out[start:i], raw, &ended)
		} else {
			err = check311(typ, flags, body, &ended)
		}
		if err != nil {
			return fmt.Errorf("packet %d: %w", n, err)
		}
	}
	return nil
}

// check311 checks a packet of MQTT 3.1 or 3.1.1 (or an unknown version,
// which the engine answers as 3.1.1).
func check311(typ, flags byte, body []byte, ended *string) error {
	switch typ {
	case pp.CONNACK:
		if len(body) != 2 || body[0]&^1 != 0 || body[1] > 5 || (body[1] != 0 && body[0] != 0) {
			return fmt.Errorf("CONNACK % x", body)
		}
		if body[1] != 0 {
			*ended = "a refusing CONNACK"
		}
	case pp.PUBACK, pp.PUBREC, pp.PUBREL, pp.PUBCOMP, pp.UNSUBACK:
		if len(body) != 2 {
			return fmt.Errorf("type %d with %d bytes", typ, len(body))
		}
	case pp.PINGRESP:
		if len(body) != 0 {
			return fmt.Errorf("PINGRESP with %d bytes", len(body))
		}
	case pp.SUBACK:
		if len(body) < 3 {
			return fmt.Errorf("SUBACK % x", body)
		}
		for _, c := range body[2:] {
			if c > 2 && c != 0x80 {
				return fmt.Errorf("SUBACK code %#x", c)
			}
		}
	case pp.PUBLISH:
		if len(body) < 2 {
			return fmt.Errorf("PUBLISH of %d bytes", len(body))
		}
		tl := int(body[0])<<8 | int(body[1])
		if 2+tl > len(body) {
			return fmt.Errorf("PUBLISH topic length %d in %d bytes", tl, len(body))
		}
		if err := checkTopic(string(body[2:2+tl]), false); err != nil {
			return err
		}
		if qos := (flags >> 1) & 3; qos > 0 && (2+tl+2 > len(body) || body[2+tl] == 0 && body[3+tl] == 0) {
			return fmt.Errorf("QoS %d PUBLISH without a packet id", qos)
		}
	}
	return nil
}

// check5 decodes an MQTT 5 packet with paho's codec and checks it.
func check5(pkt []byte, raw bool, ended *string) error {
	cp, err := pp.ReadPacket(bytes.NewReader(pkt))
	if err != nil {
		return fmt.Errorf("does not decode: %w (% x)", err, pkt)
	}
	switch p := cp.Content.(type) {
	case *pp.Connack:
		if p.ReasonCode >= 0x80 {
			if p.SessionPresent {
				return fmt.Errorf("CONNACK %#x with session present [MQTT-3.2.2-6]", p.ReasonCode)
			}
			*ended = "a refusing CONNACK"
		}
	case *pp.Disconnect:
		*ended = "a DISCONNECT"
	case *pp.Publish:
		alias := p.Properties != nil && p.Properties.TopicAlias != nil
		if alias && !raw {
			return errors.New("PUBLISH with a Topic Alias to a client that allows none")
		}
		if p.QoS > 0 && p.PacketID == 0 {
			return fmt.Errorf("QoS %d PUBLISH without a packet id", p.QoS)
		}
		return checkTopic(p.Topic, alias)
	}
	return nil
}

// checkTopic checks the topic name of a PUBLISH the broker sent.
func checkTopic(topic string, alias bool) error {
	switch {
	case topic == "" && !alias:
		return errors.New("PUBLISH with an empty topic name")
	case strings.ContainsAny(topic, "+#"):
		return fmt.Errorf("PUBLISH to %q: wildcards in a topic name", topic)
	case !utf8.ValidString(topic) || strings.ContainsRune(topic, 0):
		return fmt.Errorf("PUBLISH to %q: not UTF-8 [MQTT-1.5.4-1] [MQTT-1.5.4-2]", topic)
	}
	return nil
}
