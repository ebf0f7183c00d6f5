package listeners

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// connect311 and connect5 are minimal CONNECT packets.
var (
	connect311 = []byte{0x10, 0x0d, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x01, 'a'}
	connect5   = []byte{0x10, 0x0e, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x05, 0x02, 0x00, 0x3c, 0x00, 0x00, 0x01, 'a'}
)

// publish returns a QoS 0 PUBLISH whose total size is size bytes (>= 6).
func publish(size int) []byte {
	body := size - 2
	if body > 127 {
		body = size - 3
	}
	if body > 16383 {
		body = size - 4
	}
	var b bytes.Buffer
	b.WriteByte(0x30)
	n := body
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
	b.Write([]byte{0x00, 0x01, 't'})
	b.Write(bytes.Repeat([]byte{'x'}, body-3))
	if b.Len() != size {
		panic("publish: wrong size")
	}
	return b.Bytes()
}

func TestFramer(t *testing.T) {
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	tests := []struct {
		name        string
		stream      []byte
		max         uint32
		chunk       int // feed the stream in chunks of this size
		wantOK      int // the stream offset before which bytes may pass: all, or the oversized packet's first byte
		wantOver    bool
		wantVersion byte
	}{
		{"3.1.1 under the limit", cat(connect311, publish(100)), 100, 1000, 115, false, 4},
		{"5 under the limit", cat(connect5, publish(100)), 100, 1000, 116, false, 5},
		{"over by one", cat(connect5, publish(101)), 100, 1000, 16, true, 5},
		{"over, byte by byte", cat(connect5, publish(101)), 100, 1, 16, true, 5},
		{"over after several packets", cat(connect311, publish(50), publish(60), publish(200)), 100, 7, 15 + 50 + 60, true, 4},
		{"two-byte length at the limit", cat(connect5, publish(300)), 300, 3, 316, false, 5},
		{"three-byte length", cat(connect5, publish(20000)), 16384, 4096, 16, true, 5},
		{"no limit", cat(connect5, publish(20000)), 0, 4096, 20016, false, 5},
		{"oversized CONNECT", cat([]byte{0x10, 0xff, 0x7f}, make([]byte, 20)), 1000, 1000, 0, true, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var f framer
			passed, over := 0, false
			for i := 0; i < len(tt.stream) && !over; i += tt.chunk {
				chunk := tt.stream[i:min(i+tt.chunk, len(tt.stream))]
				free, err := f.scan(chunk, tt.max)
				passed = int(free)
				over = errors.Is(err, packets.ErrPacketTooLarge)
			}
			if over != tt.wantOver || passed != tt.wantOK {
				t.Errorf("passed %d bytes, over %v; want %d, %v", passed, over, tt.wantOK, tt.wantOver)
			}
			if f.version != tt.wantVersion {
				t.Errorf("version %d, want %d", f.version, tt.wantVersion)
			}
		})
	}
}

// TestLimitConn: the engine side reads every byte before the oversized
// packet, then ErrPacketTooLarge; closing sends DISCONNECT 0x95 to an
// MQTT 5 client only.
func TestLimitConn(t *testing.T) {
	for _, tt := range []struct {
		name    string
		connect []byte
		want    []byte // what the client reads before EOF
	}{
		{"mqtt 5", connect5, []byte{0xE0, 0x01, 0x95}},
		{"mqtt 3.1.1", connect311, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			server, client := net.Pipe()
			lc := &limitConn{Conn: server, max: 64}
			go func() {
				client.Write(append(append([]byte{}, tt.connect...), publish(65)...))
			}()
			got, err := io.ReadAll(readerFunc(lc.Read))
			if !errors.Is(err, packets.ErrPacketTooLarge) {
				t.Fatalf("read error %v, want ErrPacketTooLarge", err)
			}
			if !bytes.Equal(got, tt.connect) {
				t.Fatalf("engine read %x, want %x", got, tt.connect)
			}
			done := make(chan []byte)
			go func() {
				client.SetReadDeadline(time.Now().Add(5 * time.Second))
				b, _ := io.ReadAll(client)
				done <- b
			}()
			lc.Close()
			if b := <-done; !bytes.Equal(b, tt.want) {
				t.Fatalf("client read %x, want %x", b, tt.want)
			}
		})
	}
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

// subscribeNoOptions is an MQTT 5 SUBSCRIBE whose only filter, "a", has no
// options byte: the engine's decoder panics on it (index out of range).
var subscribeNoOptions = []byte{0x82, 0x06, 0x00, 0x01, 0x00, 0x00, 0x01, 'a'}

// TestGuard: the framer refuses a packet the engine's decoder panics on,
// passing every byte before its last, however the stream is cut; it lets
// through packets the decoder merely rejects, and what 3.1.1 decodes
// differently.
func TestGuard(t *testing.T) {
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	subscribe5 := []byte{0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, 'a', 0x01}
	subscribe311 := []byte{0x82, 0x05, 0x00, 0x01, 0x00, 0x01, 'a'} // no QoS byte: the engine returns an error
	empty5 := []byte{0x82, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00}      // an empty filter, no options
	tests := []struct {
		name   string
		stream []byte
		wantOK int
		bad    []byte // the packet refused, or nil
	}{
		{"MQTT 5 SUBSCRIBE with options", cat(connect5, subscribe5), 16 + 9, nil},
		{"MQTT 5 SUBSCRIBE without options", cat(connect5, subscribeNoOptions), 16 + 7, subscribeNoOptions},
		{"MQTT 5 SUBSCRIBE with an empty filter and no options", cat(connect5, empty5), 16 + 6, empty5},
		{"after other packets", cat(connect5, publish(40), subscribe5, subscribeNoOptions, publish(10)), 16 + 40 + 9 + 7, subscribeNoOptions},
		{"3.1.1 SUBSCRIBE without QoS", cat(connect311, subscribe311), 15 + 7, nil},
	}
	for _, tt := range tests {
		for _, chunk := range []int{1, 3, 1000} {
			t.Run(fmt.Sprintf("%s/chunks of %d", tt.name, chunk), func(t *testing.T) {
				if tt.bad != nil && !enginePanics(t, tt.bad) {
					t.Fatal("the engine does not panic on this packet: nothing to guard")
				}
				var f framer
				passed := 0
				var refused error
				for i := 0; i < len(tt.stream) && refused == nil; i += chunk {
					var free int64
					free, refused = f.scan(tt.stream[i:min(i+chunk, len(tt.stream))], 1<<20)
					passed = int(free)
				}
				if passed != tt.wantOK || (refused != nil) != (tt.bad != nil) {
					t.Fatalf("passed %d bytes, refused %v; want %d, %v", passed, refused, tt.wantOK, tt.bad != nil)
				}
				if tt.bad != nil && !errors.Is(refused, packets.ErrMalformedPacket) {
					t.Fatalf("refused with %v, want ErrMalformedPacket", refused)
				}
			})
		}
	}
}

// enginePanics reports whether the engine's SUBSCRIBE decoder panics on
// the MQTT 5 packet pkt (fixed header and a one-byte remaining length).
func enginePanics(t *testing.T, pkt []byte) (panicked bool) {
	t.Helper()
	defer func() { panicked = recover() != nil }()
	pk := packets.Packet{ProtocolVersion: 5, FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1, Remaining: len(pkt) - 2}}
	_ = pk.SubscribeDecode(pkt[2:])
	return false
}

// TestLimitConnRefusesEnginePanic: the engine reads the packets before the
// one it would panic on, but not all of that one, then
// ErrMalformedPacket; closing sends DISCONNECT 0x81 to an MQTT 5 client.
// It applies with no packet size limit too.
func TestLimitConnRefusesEnginePanic(t *testing.T) {
	server, client := net.Pipe()
	lc := &limitConn{Conn: server}
	go client.Write(append(append([]byte{}, connect5...), subscribeNoOptions...))
	got, err := io.ReadAll(readerFunc(lc.Read))
	if !errors.Is(err, packets.ErrMalformedPacket) {
		t.Fatalf("read error %v, want ErrMalformedPacket", err)
	}
	if want := append(append([]byte{}, connect5...), subscribeNoOptions[:len(subscribeNoOptions)-1]...); !bytes.Equal(got, want) {
		t.Fatalf("engine read %x, want %x", got, want)
	}
	done := make(chan []byte)
	go func() {
		client.SetReadDeadline(time.Now().Add(5 * time.Second))
		b, _ := io.ReadAll(client)
		done <- b
	}()
	lc.Close()
	if b, want := <-done, []byte{0xE0, 0x01, 0x81}; !bytes.Equal(b, want) {
		t.Fatalf("client read %x, want %x", b, want)
	}
}

// TestLimitConnNothingAfterDisconnect: what the engine writes after a
// DISCONNECT, in the same write or a later one, is not sent
// [MQTT-3.14.4-1].
func TestLimitConnNothingAfterDisconnect(t *testing.T) {
	server, client := net.Pipe()
	lc := &limitConn{Conn: server}
	disconnect := []byte{0xE0, 0x02, 0x8E, 0x00}
	got := make(chan []byte)
	go func() {
		client.SetReadDeadline(time.Now().Add(5 * time.Second))
		b, _ := io.ReadAll(client)
		got <- b
	}()
	if _, err := lc.Write(publish(20)); err != nil {
		t.Fatal(err)
	}
	if _, err := lc.Write(append(append(publish(10), disconnect...), publish(30)...)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write with packets after the DISCONNECT: %v, want net.ErrClosed", err)
	}
	if n, err := lc.Write(publish(10)); n != 0 || !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after the DISCONNECT: %d, %v; want 0, net.ErrClosed", n, err)
	}
	lc.Close()
	want := append(append(publish(20), publish(10)...), disconnect...)
	if b := <-got; !bytes.Equal(b, want) {
		t.Fatalf("client read %x, want %x", b, want)
	}
}

// bigConnect is an MQTT 5 CONNECT of about size bytes in all (a will's
// payload makes it up).
func bigConnect(t *testing.T, size int) []byte {
	t.Helper()
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: 5,
		Connect: packets.ConnectParams{
			ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 60, ClientIdentifier: "a",
			WillFlag: true, WillTopic: "w", WillPayload: make([]byte, size-25),
		},
	}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		t.Fatal(err)
	}
	if buf.Len() < size-2 || buf.Len() > size+2 {
		t.Fatalf("a CONNECT of %d bytes, want about %d", buf.Len(), size)
	}
	return buf.Bytes()
}

// TestFramerHoldsLargePackets: a CONNECT with a body over holdAbove (the
// one packet a client sends before it is logged in) is held from its
// remaining length on (its first byte goes, for the engine to check)
// until all of it has arrived; the packets after it, large or not, pass
// as they come (holding them cost a copy of each large message: the
// cluster's large-message test ran at half speed).
func TestFramerHoldsLargePackets(t *testing.T) {
	conn := bigConnect(t, 5000)
	stream := bytes.Join([][]byte{conn, publish(100), publish(5000), publish(200)}, nil)
	for _, step := range []int{700, 1, 4999} {
		var f framer
		for i := 0; i < len(stream); i += step {
			to := min(i+step, len(stream))
			free, err := f.scan(stream[i:to], 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			want := int64(to)
			if to < len(conn) {
				want = 1
			}
			if to < 3 { // its remaining length (2 bytes) not read yet: not known as large
				continue
			}
			if free != want {
				t.Fatalf("in steps of %d, after %d bytes: may pass %d, want %d", step, to, free, want)
			}
		}
	}
	var g framer
	if free, _ := g.scan([]byte{0x10, 0xFA, 0xFF, 0x3F}, 1<<20); free != 1 {
		t.Fatalf("a CONNECT header announcing 1 MiB: may pass %d bytes, want 1 (its type)", free)
	}
}

// TestLimitConnHoldsLargePackets: the engine gets none of a large CONNECT
// until all of it has arrived (the header of a 1 MiB CONNECT alone made
// it allocate 1 MiB), then all of it, and what follows.
func TestLimitConnHoldsLargePackets(t *testing.T) {
	server, client := net.Pipe()
	defer client.Close()
	lc := &limitConn{Conn: server, max: 1 << 20}
	big := bigConnect(t, 100000)
	wrote := make(chan struct{})
	go func() {
		client.Write(big[:50000]) // returns once the connection has read it all
		close(wrote)
	}()
	var early []byte // what the engine gets before the packet is whole: its type only
	buf := make([]byte, 4096)
	for done := false; !done; {
		server.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		n, _ := lc.Read(buf)
		if early = append(early, buf[:n]...); len(early) > 1 {
			t.Fatalf("the engine got %d bytes of a packet not yet whole, want its first byte only", len(early))
		}
		select {
		case <-wrote:
			done = true
		default:
		}
	}
	server.SetReadDeadline(time.Time{})
	go func() {
		client.Write(big[50000:])
		client.Write(publish(6))
	}()
	want := append(append([]byte{}, big...), publish(6)...)
	got := make([]byte, len(want)-len(early))
	if _, err := io.ReadFull(readerFunc(lc.Read), got); err != nil || !bytes.Equal(append(early, got...), want) {
		t.Fatalf("read %v: the engine did not get the packet whole and the next one", err)
	}
}
