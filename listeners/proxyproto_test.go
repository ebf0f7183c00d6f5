package listeners

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
)

// proxyV2 builds a version 2 header.
func proxyV2(cmd, famProto byte, addrs []byte, tlvs []byte) []byte {
	b := append([]byte{}, proxyV2Sig...)
	b = append(b, 0x20|cmd, famProto)
	b = binary.BigEndian.AppendUint16(b, uint16(len(addrs)+len(tlvs)))
	b = append(b, addrs...)
	return append(b, tlvs...)
}

func inet4(src, dst string, sport, dport uint16) []byte {
	b := append(net.ParseIP(src).To4(), net.ParseIP(dst).To4()...)
	b = binary.BigEndian.AppendUint16(b, sport)
	return binary.BigEndian.AppendUint16(b, dport)
}

func inet6(src, dst string, sport, dport uint16) []byte {
	b := append(net.ParseIP(src).To16(), net.ParseIP(dst).To16()...)
	b = binary.BigEndian.AppendUint16(b, sport)
	return binary.BigEndian.AppendUint16(b, dport)
}

var mqttConnect = []byte{0x10, 0x0c, 0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 60, 0, 0}

func TestReadProxyHeader(t *testing.T) {
	tests := []struct {
		name    string
		in      []byte
		present bool
		addr    string // "" = none named
		bad     bool
	}{
		{"no header: MQTT", mqttConnect, false, "", false},
		{"no header: TLS", []byte{0x16, 3, 1, 0, 5}, false, "", false},
		{"v1 tcp4", []byte("PROXY TCP4 203.0.113.7 10.0.0.1 51234 1883\r\n"), true, "203.0.113.7:51234", false},
		{"v1 tcp6", []byte("PROXY TCP6 2001:db8::7 2001:db8::1 51234 1883\r\n"), true, "[2001:db8::7]:51234", false},
		{"v1 unknown", []byte("PROXY UNKNOWN\r\n"), true, "", false},
		{"v1 unknown with addresses", []byte("PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n"), true, "", false},
		{"v1 family mismatch", []byte("PROXY TCP4 2001:db8::7 10.0.0.1 1 2\r\n"), true, "", true},
		{"v1 bad port", []byte("PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n"), true, "", true},
		{"v1 leading zero", []byte("PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n"), true, "", true},
		{"v1 bare LF", []byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"), true, "", true},
		{"v1 too long", []byte("PROXY TCP4 " + strings.Repeat("1", 200) + "\r\n"), true, "", true},
		{"v1 truncated", []byte("PROXY TCP4 1.2.3.4"), true, "", true},
		{"v1 too few fields", []byte("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"), true, "", true},
		{"v2 inet", proxyV2(1, 0x11, inet4("198.51.100.9", "10.0.0.1", 40000, 8883), nil), true, "198.51.100.9:40000", false},
		{"v2 inet with TLVs", proxyV2(1, 0x11, inet4("198.51.100.9", "10.0.0.1", 40000, 8883), []byte{0xEA, 0, 3, 'v', 'p', 'c'}), true, "198.51.100.9:40000", false},
		{"v2 inet6", proxyV2(1, 0x21, inet6("2001:db8::9", "2001:db8::1", 40000, 8883), nil), true, "[2001:db8::9]:40000", false},
		{"v2 local (health check)", proxyV2(0, 0x00, nil, nil), true, "", false},
		{"v2 unspec", proxyV2(1, 0x00, nil, nil), true, "", false},
		{"v2 unix", proxyV2(1, 0x31, make([]byte, 216), nil), true, "", false},
		{"v2 unix short", proxyV2(1, 0x31, make([]byte, 10), nil), true, "", true},
		{"v2 dgram", proxyV2(1, 0x12, inet4("1.2.3.4", "5.6.7.8", 1, 2), nil), true, "", true},
		{"v2 short addresses", proxyV2(1, 0x11, []byte{1, 2, 3}, nil), true, "", true},
		{"v2 bad version", append(append([]byte{}, proxyV2Sig...), 0x11, 0x11, 0, 0), true, "", true},
		{"v2 bad command", proxyV2(2, 0x11, inet4("1.2.3.4", "5.6.7.8", 1, 2), nil), true, "", true},
		{"v2 bad family", proxyV2(1, 0x41, inet4("1.2.3.4", "5.6.7.8", 1, 2), nil), true, "", true},
		{"v2 too long", append(append([]byte{}, proxyV2Sig...), 0x21, 0x11, 0xff, 0xff), true, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			br := bufio.NewReader(bytes.NewReader(append(append([]byte{}, tt.in...), mqttConnect...)))
			addr, present, err := readProxyHeader(br)
			if tt.bad {
				if err == nil || !errors.Is(err, errProxyHeader) {
					t.Fatalf("err %v, want a bad header", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if present != tt.present {
				t.Fatalf("present %v, want %v", present, tt.present)
			}
			got := ""
			if addr != nil {
				got = addr.String()
			}
			if got != tt.addr {
				t.Fatalf("address %q, want %q", got, tt.addr)
			}
			rest, _ := io.ReadAll(br)
			want := mqttConnect
			if !tt.present {
				want = append(append([]byte{}, tt.in...), mqttConnect...)
			}
			if !bytes.Equal(rest, want) {
				t.Fatalf("after the header: %q, want %q", rest, want)
			}
		})
	}
}

func TestReadProxyHeaderTruncated(t *testing.T) {
	full := proxyV2(1, 0x11, inet4("1.2.3.4", "5.6.7.8", 1, 2), nil)
	for _, in := range [][]byte{full[:20], full[:15], []byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r")} {
		if _, _, err := readProxyHeader(bufio.NewReader(bytes.NewReader(in))); !errors.Is(err, errProxyHeader) {
			t.Errorf("%q: err %v, want a bad header", in, err)
		}
	}
}

// FuzzProxyHeader: any input either is no header (nothing consumed), a
// header followed by exactly the remaining bytes, or an errProxyHeader;
// never a panic, never more than the header's bound read.
func FuzzProxyHeader(f *testing.F) {
	f.Add([]byte("PROXY TCP4 203.0.113.7 10.0.0.1 51234 1883\r\n"))
	f.Add([]byte("PROXY TCP6 2001:db8::7 2001:db8::1 51234 1883\r\n"))
	f.Add([]byte("PROXY UNKNOWN\r\n"))
	f.Add(proxyV2(1, 0x11, inet4("198.51.100.9", "10.0.0.1", 40000, 8883), []byte{0xEA, 0, 3, 'v', 'p', 'c'}))
	f.Add(proxyV2(1, 0x21, inet6("2001:db8::9", "2001:db8::1", 40000, 8883), nil))
	f.Add(proxyV2(0, 0, nil, nil))
	f.Add(mqttConnect)
	f.Fuzz(func(t *testing.T, in []byte) {
		tail := []byte("\x10TAIL")
		br := bufio.NewReader(bytes.NewReader(append(append([]byte{}, in...), tail...)))
		addr, present, err := readProxyHeader(br)
		if err != nil {
			if !errors.Is(err, errProxyHeader) {
				t.Fatalf("error %v is not a header error", err)
			}
			return
		}
		rest, _ := io.ReadAll(br)
		if !present {
			if addr != nil || !bytes.Equal(rest, append(append([]byte{}, in...), tail...)) {
				t.Fatal("no header, yet something was consumed or an address returned")
			}
			return
		}
		if used := len(in) + len(tail) - len(rest); used > 16+proxyV2Max || used <= 0 {
			t.Fatalf("header of %d bytes", used)
		}
		if addr != nil {
			if a, ok := addr.(*net.TCPAddr); !ok || a.IP == nil {
				t.Fatalf("address %v", addr)
			}
		}
	})
}

// TestProxiedConnDropsItsBuffer: what the header's reader read past the
// header comes first, then the connection's later bytes, read straight
// from the connection once the reader is drained (its buffer is let go).
func TestProxiedConnDropsItsBuffer(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	defer server.Close()
	go func() {
		_, _ = client.Write([]byte("PROXY TCP4 192.0.2.1 127.0.0.1 40000 1883\r\nabc"))
		_, _ = client.Write([]byte("def"))
	}()
	br := bufio.NewReader(server)
	if _, _, err := readProxyHeader(br); err != nil {
		t.Fatal(err)
	}
	pc := &proxiedConn{Conn: server, r: br}
	var got []byte
	buf := make([]byte, 16)
	for len(got) < 6 {
		n, err := pc.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, buf[:n]...)
	}
	if string(got) != "abcdef" {
		t.Fatalf("read %q, want abcdef", got)
	}
	if pc.r != nil {
		t.Fatal("the header's reader is still held after it was drained")
	}
}
