package main

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestMeasureIdleMemory is TestMeasureIdleClients run in-process, to say
// where an idle connection's bytes go: it connects raw MQTT clients (no
// client goroutines, no client buffers: a socket each) to the app started
// in this process, collects garbage, and reports per client the heap in
// use, the goroutine stacks and the goroutines the broker holds. A
// measurement, not a test with a threshold:
//
//	TETHER_MEASURE=1 go test -run TestMeasureIdleMemory -v ./cmd/tether
//
// TETHER_MEASURE_CLIENTS sets the number of clients (default 10000);
// TETHER_MEASURE_TRANSPORTS which to measure (default "tcp,ws"; "proxy" is
// TCP with a PROXY protocol v1 header from a trusted load balancer);
// TETHER_MEASURE_PROFILE=PREFIX writes PREFIX-tcp.heap and PREFIX-ws.heap
// (`go tool pprof -sample_index=inuse_space`) and the goroutine dumps.
func TestMeasureIdleMemory(t *testing.T) {
	if os.Getenv("TETHER_MEASURE") == "" {
		t.Skip("a measurement: set TETHER_MEASURE=1 to run it")
	}
	n := 10000
	if s := os.Getenv("TETHER_MEASURE_CLIENTS"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	prefix := os.Getenv("TETHER_MEASURE_PROFILE")
	if prefix != "" {
		runtime.MemProfileRate = 4096
	}
	raiseFileLimit(t, 2*uint64(n)+1000)
	transports := "tcp,ws"
	if s := os.Getenv("TETHER_MEASURE_TRANSPORTS"); s != "" {
		transports = s
	}
	for _, transport := range strings.Split(transports, ",") {
		t.Run(transport, func(t *testing.T) {
			cfg := testConfig(t)
			if transport == "proxy" {
				cfg.MQTT.ProxyProtocolFrom = []string{"127.0.0.1"}
			}
			a := startTestApp(t, cfg)
			before := memNow()
			conns := make([]net.Conn, n)
			var wg sync.WaitGroup
			sem := make(chan struct{}, 32)
			for i := range conns {
				wg.Add(1)
				sem <- struct{}{}
				go func() {
					defer wg.Done()
					defer func() { <-sem }()
					var err error
					switch transport {
					case "ws":
						conns[i], err = rawWSIdleClient(a.httpAddr(), i)
					case "proxy":
						conns[i], err = rawTCPIdleClient(a.mqttAddr(), i, []byte("PROXY TCP4 192.0.2.1 127.0.0.1 40000 1883\r\n")...)
					default:
						conns[i], err = rawTCPIdleClient(a.mqttAddr(), i)
					}
					if err != nil {
						t.Errorf("client %d: %v", i, err)
					}
				}()
			}
			wg.Wait()
			after := memNow()
			per := func(a, b uint64) float64 { return (float64(a) - float64(b)) / float64(n) }
			t.Logf("MEASURE-MEM transport=%s clients=%d heap_inuse_per_client=%.0f stack_inuse_per_client=%.0f goroutines_per_client=%.2f heap_objects_per_client=%.1f rss_per_client=%.0f (rss includes the client sockets' own objects, about 0.5 KB)",
				transport, n, per(after.heap, before.heap), per(after.stack, before.stack),
				float64(after.goroutines-before.goroutines)/float64(n), per(after.objects, before.objects), per(after.rss, before.rss))
			if prefix != "" {
				writeProfile(t, prefix+"-"+transport+".heap", "heap", 0)
				writeProfile(t, prefix+"-"+transport+".goroutines", "goroutine", 1)
			}
			for _, c := range conns {
				if c != nil {
					c.Close()
				}
			}
		})
	}
}

type memSample struct {
	heap, stack, objects, rss uint64
	goroutines                int
}

// memNow collects garbage twice, returns freed memory to the OS and reads
// the runtime's figures and the process's RSS.
func memNow() memSample {
	runtime.GC()
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	s := memSample{heap: ms.HeapInuse, stack: ms.StackInuse, objects: ms.HeapObjects, goroutines: runtime.NumGoroutine()}
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
				kib, _ := strconv.ParseUint(strings.Fields(v)[0], 10, 64)
				s.rss = kib * 1024
			}
		}
	}
	return s
}

func writeProfile(t *testing.T, path, name string, debugLevel int) {
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := pprof.Lookup(name).WriteTo(f, debugLevel); err != nil {
		t.Fatal(err)
	}
}

// rawTCPIdleClient connects an MQTT 3.1.1 client with keep-alive 0,
// sending first the bytes of header, if any.
func rawTCPIdleClient(addr string, i int, header ...byte) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, 30*time.Second)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write(append(header, rawConnect(4, fmt.Sprintf("idle-%d", i))...)); err != nil {
		return nil, err
	}
	if first, _, err := readRawPacket(c); err != nil || first != 0x20 {
		return nil, fmt.Errorf("CONNACK %#x %v", first, err)
	}
	return c, nil
}

// rawWSIdleClient upgrades to WebSocket by hand (no client library, so no
// client goroutines) and sends CONNECT in one masked binary frame.
func rawWSIdleClient(addr string, i int) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, 30*time.Second)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	defer c.SetDeadline(time.Time{})
	req := "GET /mqtt HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
	if _, err := io.WriteString(c, req); err != nil {
		return nil, err
	}
	var head []byte
	one := make([]byte, 1)
	for !bytes.HasSuffix(head, []byte("\r\n\r\n")) {
		if _, err := io.ReadFull(c, one); err != nil {
			return nil, err
		}
		head = append(head, one[0])
	}
	if !bytes.HasPrefix(head, []byte("HTTP/1.1 101")) {
		return nil, fmt.Errorf("upgrade refused: %q", head)
	}
	payload := rawConnect(4, fmt.Sprintf("idle-%d", i))
	frame := []byte{0x82, 0x80 | byte(len(payload)), 0, 0, 0, 0}
	_, _ = rand.Read(frame[2:6])
	for j, b := range payload {
		frame = append(frame, b^frame[2+j%4])
	}
	if _, err := c.Write(frame); err != nil {
		return nil, err
	}
	hdr := make([]byte, 2)
	if _, err := io.ReadFull(c, hdr); err != nil {
		return nil, err
	}
	body := make([]byte, hdr[1]&0x7f)
	if _, err := io.ReadFull(c, body); err != nil {
		return nil, err
	}
	if hdr[0] != 0x82 || len(body) < 1 || body[0] != 0x20 {
		return nil, fmt.Errorf("CONNACK frame %x %x", hdr, body)
	}
	return c, nil
}
