// Package wsframe reads and writes the frame headers of WebSocket
// (RFC 6455 5.2) and masks payloads (5.3): the one implementation shared
// by the broker's WebSocket listener (listeners, which frames the
// engine's writes itself) and the simulator's WebSocket client
// (simulator, which frames both ways itself).
//
// It knows the wire format only: which frames a side accepts (masked or
// not, which opcodes, fragments) is the caller's rule.
package wsframe
