package wsframe

import "encoding/binary"

// Opcodes (RFC 6455 5.2).
const (
	OpContinuation byte = 0x0
	OpText         byte = 0x1
	OpBinary       byte = 0x2
	OpClose        byte = 0x8
	OpPing         byte = 0x9
	OpPong         byte = 0xa
)

// MaxHeader is the longest frame header: 2 bytes, a 64-bit length and a
// masking key.
const MaxHeader = 14

// MaxControlPayload is the longest payload of a control frame (5.5).
const MaxControlPayload = 125

// Header is a frame's header.
type Header struct {
	Fin    bool
	RSV    byte // the three reserved bits, in place (0x70); 0 without extensions
	Op     byte
	Masked bool
	Key    [4]byte // the masking key, if Masked
	Len    uint64  // the payload's length
}

// IsControl reports whether the frame is a control frame (close, ping,
// pong or a reserved control opcode).
func (h *Header) IsControl() bool { return h.Op&0x8 != 0 }

// Parse reads the header at the start of b. n is its length in bytes;
// ok is false when b does not hold all of it yet. It does not judge the
// header: a 64-bit length with its top bit set (not allowed) is returned
// as it is, for the caller to refuse.
func Parse(b []byte) (h Header, n int, ok bool) {
	if len(b) < 2 {
		return h, 0, false
	}
	h.Fin = b[0]&0x80 != 0
	h.RSV = b[0] & 0x70
	h.Op = b[0] & 0x0f
	h.Masked = b[1]&0x80 != 0
	n = 2
	switch l := b[1] & 0x7f; l {
	case 126:
		n = 4
	case 127:
		n = 10
	default:
		h.Len = uint64(l)
	}
	if h.Masked {
		n += 4
	}
	if len(b) < n {
		return Header{}, 0, false
	}
	switch b[1] & 0x7f {
	case 126:
		h.Len = uint64(binary.BigEndian.Uint16(b[2:4]))
	case 127:
		h.Len = binary.BigEndian.Uint64(b[2:10])
	}
	if h.Masked {
		copy(h.Key[:], b[n-4:n])
	}
	return h, n, true
}

// AppendHeader appends the header of a final, unmasked frame of opcode
// op and n payload bytes, with the shortest length form: a server's
// frame.
func AppendHeader(b []byte, op byte, n int) []byte {
	switch {
	case n < 126:
		return append(b, 0x80|op, byte(n))
	case n <= 0xffff:
		return append(b, 0x80|op, 126, byte(n>>8), byte(n))
	}
	return binary.BigEndian.AppendUint64(append(b, 0x80|op, 127), uint64(n))
}

// AppendMaskedHeader appends the header of a final frame of opcode op
// and n payload bytes masked with key: a client's frame. The payload is
// to be masked with Mask and the same key.
func AppendMaskedHeader(b []byte, op byte, n int, key [4]byte) []byte {
	i := len(b)
	b = AppendHeader(b, op, n)
	b[i+1] |= 0x80
	return append(b, key[:]...)
}

// Mask copies src to dst (len(dst) >= len(src); they may be the same
// slice, or dst may start before src in the same array) XORed with key
// from the key's first byte, 8 bytes at a time: it masks a payload, and
// unmasks one (RFC 6455 5.3).
func Mask(dst, src []byte, key [4]byte) {
	k4 := binary.LittleEndian.Uint32(key[:])
	k8 := uint64(k4) | uint64(k4)<<32
	dst = dst[:len(src)]
	i := 0
	for ; i+8 <= len(src); i += 8 {
		binary.LittleEndian.PutUint64(dst[i:], binary.LittleEndian.Uint64(src[i:])^k8)
	}
	for ; i < len(src); i++ {
		dst[i] = src[i] ^ key[i&3]
	}
}
