package simulator

import (
	"encoding/binary"
	"time"
)

// A bench payload starts with a header: the send time in Unix nanoseconds,
// the publisher's index and its message sequence number, big-endian. The
// rest up to the requested size is filler.
const headerSize = 8 + 4 + 8

// filler pads payloads; it is never written to.
var filler = func() []byte {
	b := make([]byte, 1<<20)
	for i := range b {
		b[i] = 'x'
	}
	return b
}()

// encodePayload returns a payload of size bytes (at least headerSize).
func encodePayload(size int, sent time.Time, pub uint32, seq uint64) []byte {
	b := make([]byte, headerSize, max(size, headerSize))
	binary.BigEndian.PutUint64(b[0:8], uint64(sent.UnixNano()))
	binary.BigEndian.PutUint32(b[8:12], pub)
	binary.BigEndian.PutUint64(b[12:20], seq)
	return append(b, filler[:max(size-headerSize, 0)]...)
}

// decodePayload reads a payload's header.
func decodePayload(b []byte) (sent int64, pub uint32, seq uint64, ok bool) {
	if len(b) < headerSize {
		return 0, 0, 0, false
	}
	return int64(binary.BigEndian.Uint64(b[0:8])), binary.BigEndian.Uint32(b[8:12]), binary.BigEndian.Uint64(b[12:20]), true
}
