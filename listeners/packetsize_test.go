package listeners

import (
	"bytes"
	"errors"
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
		wantOK      int // bytes passed: all, or up to the oversized packet (and any of its header in earlier chunks)
		wantOver    bool
		wantVersion byte
	}{
		{"3.1.1 under the limit", cat(connect311, publish(100)), 100, 1000, 115, false, 4},
		{"5 under the limit", cat(connect5, publish(100)), 100, 1000, 116, false, 5},
		{"over by one", cat(connect5, publish(101)), 100, 1000, 16, true, 5},
		{"over, byte by byte", cat(connect5, publish(101)), 100, 1, 17, true, 5},
		{"over after several packets", cat(connect311, publish(50), publish(60), publish(200)), 100, 7, 15 + 50 + 60 + 1, true, 4},
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
				var ok int
				ok, over = f.scan(chunk, tt.max)
				passed += ok
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
		{"mqtt 5", connect5, disconnectPacketTooLarge},
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
