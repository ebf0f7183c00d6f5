package simulator

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/tether-iot/tether/internal/wsframe"
)

// refDecode is what a client should read from a server's stream, frame by
// frame, on the whole of it at once: the payloads of the binary messages,
// up to the first frame the protocol forbids (wantErr errWSProtocol), a
// close frame (io.EOF) or the end of the stream (io.EOF between messages,
// io.ErrUnexpectedEOF inside one).
func refDecode(stream []byte) (payload []byte, wantErr error) {
	inMsg := false
	for {
		h, n, ok := wsframe.Parse(stream)
		if !ok {
			if len(stream) == 0 && !inMsg {
				return payload, io.EOF
			}
			return payload, io.ErrUnexpectedEOF
		}
		rest := uint64(len(stream) - n)
		if h.IsControl() && h.Len <= wsframe.MaxControlPayload && rest < h.Len {
			return payload, io.ErrUnexpectedEOF
		}
		if h.Masked || h.RSV != 0 || (h.IsControl() && (!h.Fin || h.Len > wsframe.MaxControlPayload)) || h.Len > 1<<63-1 {
			return payload, errWSProtocol
		}
		if h.IsControl() {
			switch h.Op {
			case wsframe.OpClose:
				return payload, io.EOF
			case wsframe.OpPing, wsframe.OpPong:
				stream = stream[n+int(h.Len):]
				continue
			}
			return payload, errWSProtocol
		}
		switch {
		case h.Op == wsframe.OpBinary && !inMsg, h.Op == wsframe.OpContinuation && inMsg:
		default:
			return payload, errWSProtocol
		}
		inMsg = !h.Fin
		if rest < h.Len {
			return append(payload, stream[n:]...), io.ErrUnexpectedEOF
		}
		payload = append(payload, stream[n:n+int(h.Len)]...)
		stream = stream[n+int(h.Len):]
	}
}

// FuzzWSClientFrames: whatever a server sends, cut into whatever reads,
// and read in whatever sizes (paho's one byte, larger than the read
// buffer), the client reads the payloads refDecode does and ends as it
// says, without a panic or a hang. Seeds: testdata/fuzz/FuzzWSClientFrames.
//
//	go test -run XXX -fuzz FuzzWSClientFrames -fuzztime 1m ./simulator/
func FuzzWSClientFrames(f *testing.F) {
	var valid []byte
	for _, fr := range [][]byte{
		serverFrame(0x82, []byte("abc")), serverFrame(0x02, []byte("de")), serverFrame(0x89, []byte("p")),
		serverFrame(0x80, []byte("f")), serverFrame(0x82, bytes.Repeat([]byte{7}, 300)), serverFrame(0x8a, nil),
		serverFrame(0x82, nil), serverFrame(0x88, []byte{3, 232}),
	} {
		valid = append(valid, fr...)
	}
	f.Add(valid, []byte{1, 2, 3, 200, 255})
	f.Add(valid[:len(valid)-5], []byte{0})
	f.Add(serverFrame(0x81, []byte("text")), []byte{5})
	f.Add([]byte{0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0}, []byte{255, 255})
	f.Fuzz(func(t *testing.T, stream, splits []byte) {
		if len(stream) > 1<<16 {
			return
		}
		want, wantErr := refDecode(stream)
		server, client := net.Pipe()
		defer server.Close()
		go func() { _, _ = io.Copy(io.Discard, server) }() // pongs, close frames
		go func() {
			defer server.Close()
			rest := stream
			for i := 0; len(rest) > 0; i++ {
				k := len(rest)
				if len(splits) > 0 {
					k = min(k, int(splits[i%len(splits)]%32)+1)
				}
				if _, err := server.Write(rest[:k]); err != nil {
					return
				}
				rest = rest[k:]
			}
		}()
		c := newWSConn(client, nil)
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		var got []byte
		var err error
		for i := 0; err == nil; i++ {
			size := 7
			if len(splits) > 0 {
				switch s := splits[(i+1)%len(splits)]; {
				case s == 255:
					size = wsClientReadBuffer + 100 // straight from the socket
				default:
					size = int(s%40) + 1
				}
			}
			p := make([]byte, size)
			var n int
			n, err = c.Read(p)
			got = append(got, p[:n]...)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("read % x, want % x", got, want)
		}
		if !errors.Is(err, wantErr) {
			t.Fatalf("ended with %v, want %v", err, wantErr)
		}
	})
}
