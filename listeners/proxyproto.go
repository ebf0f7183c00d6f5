package listeners

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// The PROXY protocol (HAProxy's, versions 1 and 2) lets a TCP load
// balancer that does not terminate MQTT (HAProxy with send-proxy or
// send-proxy-v2, an AWS NLB, ...) tell the server who the client is: a
// short header before the client's first byte. It is read only from the
// addresses in mqtt.proxy_protocol_from; from any other peer the first
// bytes are MQTT (or TLS), and a PROXY header there is refused as bad
// MQTT like any other garbage.
//
// No maintained module for it was among the ones this project may use,
// so it is written here; FuzzProxyHeader keeps it honest.

// proxyV2Sig starts every version 2 header.
var proxyV2Sig = []byte("\r\n\r\n\x00\r\nQUIT\n")

const (
	proxyV1Max = 107  // the longest version 1 line, CRLF included
	proxyV2Max = 2048 // the most address and TLV bytes accepted after the fixed 16
)

// errProxyHeader is wrapped by every malformed-header error.
var errProxyHeader = errors.New("bad PROXY protocol header")

// readProxyHeader reads a PROXY protocol header from the start of br, if
// there is one. It returns the client's address (nil when the header
// names none: a LOCAL health check, UNKNOWN or a non-IP family, where the
// peer's own address stands) and whether a header was there. Without one
// nothing is consumed.
func readProxyHeader(br *bufio.Reader) (net.Addr, bool, error) {
	first, err := br.Peek(1)
	if err != nil {
		return nil, false, err
	}
	switch first[0] {
	case 'P':
		b, err := br.Peek(6)
		if err != nil || string(b) != "PROXY " {
			return nil, false, nil // not a header (and not MQTT either: the engine says so)
		}
		a, err := readProxyV1(br)
		return a, true, err
	case '\r':
		b, err := br.Peek(len(proxyV2Sig))
		if err != nil || !bytes.Equal(b, proxyV2Sig) {
			return nil, false, nil
		}
		a, err := readProxyV2(br)
		return a, true, err
	}
	return nil, false, nil
}

// readProxyV1 reads "PROXY TCP4 SRC DST SPORT DPORT\r\n" (TCP6 alike) or
// "PROXY UNKNOWN ...\r\n".
func readProxyV1(br *bufio.Reader) (net.Addr, error) {
	var line []byte
	for len(line) < proxyV1Max {
		c, err := br.ReadByte()
		if err != nil {
			return nil, fmt.Errorf("%w: v1: %v", errProxyHeader, err)
		}
		line = append(line, c)
		if c == '\n' {
			break
		}
	}
	if !bytes.HasSuffix(line, []byte("\r\n")) {
		return nil, fmt.Errorf("%w: v1 line not ended by CRLF within %d bytes", errProxyHeader, proxyV1Max)
	}
	f := strings.Split(string(line[:len(line)-2]), " ")
	if len(f) >= 2 && f[1] == "UNKNOWN" {
		return nil, nil
	}
	if len(f) != 6 || (f[1] != "TCP4" && f[1] != "TCP6") {
		return nil, fmt.Errorf("%w: v1: want PROXY TCP4|TCP6 SRC DST SPORT DPORT", errProxyHeader)
	}
	src, err1 := netip.ParseAddr(f[2])
	dst, err2 := netip.ParseAddr(f[3])
	sport, err3 := parsePort(f[4])
	_, err4 := parsePort(f[5])
	if err := errors.Join(err1, err2, err3, err4); err != nil {
		return nil, fmt.Errorf("%w: v1: %v", errProxyHeader, err)
	}
	if want4 := f[1] == "TCP4"; src.Is4() != want4 || dst.Is4() != want4 || src.Zone() != "" {
		return nil, fmt.Errorf("%w: v1: addresses do not match %s", errProxyHeader, f[1])
	}
	return net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, sport)), nil
}

// parsePort parses a decimal port without sign or leading zeros.
func parsePort(s string) (uint16, error) {
	if s == "" || len(s) > 5 || (len(s) > 1 && s[0] == '0') || s[0] == '+' || s[0] == '-' {
		return 0, fmt.Errorf("bad port %q", s)
	}
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		return 0, fmt.Errorf("bad port %q", s)
	}
	return uint16(n), nil
}

// readProxyV2 reads the binary version 2 header: the signature, version
// and command, family and transport, length, addresses, and TLVs (which
// are skipped).
func readProxyV2(br *bufio.Reader) (net.Addr, error) {
	var hdr [16]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		return nil, fmt.Errorf("%w: v2: %v", errProxyHeader, err)
	}
	if hdr[12]>>4 != 2 {
		return nil, fmt.Errorf("%w: v2: version %d", errProxyHeader, hdr[12]>>4)
	}
	cmd := hdr[12] & 0x0f
	if cmd > 1 {
		return nil, fmt.Errorf("%w: v2: command %d", errProxyHeader, cmd)
	}
	n := int(binary.BigEndian.Uint16(hdr[14:16]))
	if n > proxyV2Max {
		return nil, fmt.Errorf("%w: v2: %d bytes of addresses and TLVs (at most %d)", errProxyHeader, n, proxyV2Max)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(br, body); err != nil {
		return nil, fmt.Errorf("%w: v2: %v", errProxyHeader, err)
	}
	if cmd == 0 {
		return nil, nil // LOCAL: the balancer's own connection (a health check)
	}
	family, proto := hdr[13]>>4, hdr[13]&0x0f
	if family == 0 {
		return nil, nil // UNSPEC
	}
	if proto != 1 {
		return nil, fmt.Errorf("%w: v2: transport %d is not a stream", errProxyHeader, proto)
	}
	var size int
	switch family {
	case 1: // INET
		size = 4
	case 2: // INET6
		size = 16
	case 3: // UNIX: no address of use
		if n < 216 {
			return nil, fmt.Errorf("%w: v2: %d bytes for unix addresses", errProxyHeader, n)
		}
		return nil, nil
	default:
		return nil, fmt.Errorf("%w: v2: family %d", errProxyHeader, family)
	}
	if n < 2*size+4 {
		return nil, fmt.Errorf("%w: v2: %d bytes for %d-byte addresses", errProxyHeader, n, size)
	}
	src, _ := netip.AddrFromSlice(body[:size])
	port := binary.BigEndian.Uint16(body[2*size:])
	return net.TCPAddrFromAddrPort(netip.AddrPortFrom(src.Unmap(), port)), nil
}

// proxiedConn is a connection whose first bytes (a PROXY header) have
// been read through r, and whose client is remote. Once what r read past
// the header is consumed, r is dropped and reads go to the connection: a
// connection behind a load balancer does not keep a 4 KiB buffer for life.
type proxiedConn struct {
	net.Conn
	r      *bufio.Reader // nil once drained; only the reading goroutine touches it
	remote net.Addr
}

func (c *proxiedConn) Read(p []byte) (int, error) {
	if c.r == nil {
		return c.Conn.Read(p)
	}
	if c.r.Buffered() == 0 {
		c.r = nil
		return c.Conn.Read(p)
	}
	return c.r.Read(p)
}

func (c *proxiedConn) RemoteAddr() net.Addr { return c.remote }
