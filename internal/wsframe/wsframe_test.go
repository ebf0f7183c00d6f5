package wsframe

import (
	"bytes"
	"testing"
)

var sizes = []int{0, 1, 125, 126, 127, 0xffff, 0x10000, 70000}

// A header written is read back as written, in the shortest length form
// (2, 4 or 10 bytes, and 4 more with a key), and no prefix of it parses.
func TestHeaderRoundTrip(t *testing.T) {
	key := [4]byte{1, 2, 3, 4}
	for _, masked := range []bool{false, true} {
		for _, n := range sizes {
			var b []byte
			if masked {
				b = AppendMaskedHeader([]byte{0xee}, OpBinary, n, key)
			} else {
				b = AppendHeader([]byte{0xee}, OpBinary, n)
			}
			b = b[1:] // appended after what was there
			want := 2
			switch {
			case n > 0xffff:
				want = 10
			case n > 125:
				want = 4
			}
			if masked {
				want += 4
			}
			if len(b) != want {
				t.Fatalf("masked %v, %d bytes: header of %d bytes, want %d", masked, n, len(b), want)
			}
			for i := range b {
				if _, _, ok := Parse(b[:i]); ok {
					t.Fatalf("masked %v, %d bytes: %d of the header's %d bytes parsed", masked, n, i, len(b))
				}
			}
			h, hl, ok := Parse(append(b, 0xff, 0xff))
			if !ok || hl != want || !h.Fin || h.RSV != 0 || h.Op != OpBinary || h.Masked != masked || h.Len != uint64(n) {
				t.Fatalf("masked %v, %d bytes: parsed %+v, %d, %v", masked, n, h, hl, ok)
			}
			if masked && h.Key != key {
				t.Fatalf("key %x, want %x", h.Key, key)
			}
		}
	}
}

// Parse reports each field of a header written by hand: RSV bits, a
// control opcode, FIN clear, and a 64-bit length with its top bit set
// (returned for the caller to refuse).
func TestParseFields(t *testing.T) {
	h, n, ok := Parse([]byte{0x79, 0x85, 9, 8, 7, 6})
	if !ok || n != 6 || h.Fin || h.RSV != 0x70 || h.Op != OpPing || !h.IsControl() || !h.Masked || h.Len != 5 || h.Key != [4]byte{9, 8, 7, 6} {
		t.Fatalf("%+v %d %v", h, n, ok)
	}
	h, n, ok = Parse([]byte{0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 1})
	if !ok || n != 10 || h.Len != 1<<63|1 || h.IsControl() {
		t.Fatalf("%+v %d %v", h, n, ok)
	}
}

// Mask is the byte-at-a-time XOR of RFC 6455 5.3 at every length, undoes
// itself, and may work in place or move the payload towards the start
// of its array (as the listener unmasks over a frame's header).
func TestMask(t *testing.T) {
	key := [4]byte{0x12, 0x34, 0x56, 0x78}
	for n := range 40 {
		src := make([]byte, n)
		want := make([]byte, n)
		for i := range src {
			src[i] = byte(i * 7)
			want[i] = src[i] ^ key[i%4]
		}
		got := make([]byte, n)
		Mask(got, src, key)
		if !bytes.Equal(got, want) {
			t.Fatalf("len %d: %x, want %x", n, got, want)
		}
		Mask(got, got, key)
		if !bytes.Equal(got, src) {
			t.Fatalf("len %d: masked twice %x, want %x", n, got, src)
		}
		buf := append(make([]byte, 6), src...)
		Mask(buf, buf[6:], key)
		if !bytes.Equal(buf[:n], want) {
			t.Fatalf("len %d: moved %x, want %x", n, buf[:n], want)
		}
	}
}
