package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	paho3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/tether-iot/tether/simulator"
)

// TestMeasureWSCompression measures permessage-deflate on /mqtt for each
// http.ws_compression mode, side by side in one run: bytes on the wire per
// message, the server's CPU per message and its memory per WebSocket
// connection, with the simulator's own JSON telemetry. It is a
// measurement, not a test with a threshold, and runs only when asked:
//
//	TETHER_MEASURE=1 go test -run TestMeasureWSCompression -v -timeout 20m ./cmd/tether
//
// TETHER_MEASURE_CLIENTS (default 200) WebSocket clients each subscribe to
// a topic of their own and publish TETHER_MEASURE_MESSAGES (default 200)
// telemetry payloads to it, so every message crosses the wire twice:
// compressed by the client on the way in, by the server on the way out.
// Clients offer the mode the server is set to. TETHER_MEASURE_BATCH=k
// (default 1) sends JSON arrays of k readings instead, as devices that
// batch their readings do.
func TestMeasureWSCompression(t *testing.T) {
	if os.Getenv("TETHER_MEASURE") == "" {
		t.Skip("a measurement: set TETHER_MEASURE=1 to run it")
	}
	n, m := 200, 200
	if s := os.Getenv("TETHER_MEASURE_CLIENTS"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	if s := os.Getenv("TETHER_MEASURE_MESSAGES"); s != "" {
		m, _ = strconv.Atoi(s)
	}
	batch := 1
	if s := os.Getenv("TETHER_MEASURE_BATCH"); s != "" {
		batch, _ = strconv.Atoi(s)
	}
	raiseFileLimit(t, uint64(n)+1000)
	payloads := batchPayloads(simPayloads(t, 1000), batch)
	var raw int
	for _, p := range payloads {
		raw += len(p)
	}
	t.Logf("%d sim telemetry payloads, %d bytes on average", len(payloads), raw/len(payloads))
	modes := map[string]websocket.CompressionMode{
		"off": websocket.CompressionDisabled, "no_context": websocket.CompressionNoContextTakeover, "context": websocket.CompressionContextTakeover,
	}
	for _, mode := range []string{"off", "no_context", "context"} {
		t.Run(mode, func(t *testing.T) {
			p := startProcess(t, "TETHER_HTTP_WS_COMPRESSION="+mode)
			pid := p.cmd.Process.Pid
			time.Sleep(2 * time.Second) // let start-up allocations settle
			rss0 := rssKiB(t, pid)
			clients := make([]*measureClient, n)
			var wg sync.WaitGroup
			sem := make(chan struct{}, 32)
			for i := range clients {
				wg.Add(1)
				sem <- struct{}{}
				go func() {
					defer wg.Done()
					defer func() { <-sem }()
					clients[i] = dialMeasureClient(t, p.http, modes[mode], i)
				}()
			}
			wg.Wait()
			if t.Failed() {
				return
			}
			var in0, out0 int64
			for _, c := range clients {
				in0 += c.counter.read.Load()
				out0 += c.counter.written.Load()
			}
			cpu0 := cpuTicks(t, pid)
			start := time.Now()
			for i, c := range clients {
				wg.Add(1)
				go func() {
					defer wg.Done()
					c.exchange(t, payloads, i*m, m)
				}()
			}
			wg.Wait()
			took := time.Since(start)
			cpu := cpuTicks(t, pid) - cpu0
			var in, out int64
			for _, c := range clients {
				in += c.counter.read.Load()
				out += c.counter.written.Load()
			}
			in, out = in-in0, out-out0
			time.Sleep(2 * time.Second)
			rss := rssKiB(t, pid)
			msgs := float64(n * m)
			var payloadBytes int
			for i := range n * m {
				payloadBytes += len(payloads[i%len(payloads)])
			}
			perMsgCPU := float64(cpu) * 1e6 / clockTicks / msgs // µs
			t.Logf("MEASURE mode=%s clients=%d messages=%d took=%v payload_bytes_per_msg=%.0f wire_to_server_per_msg=%.1f wire_to_client_per_msg=%.1f server_cpu_us_per_msg=%.1f rss_per_conn_kib=%.1f",
				mode, n, n*m, took.Round(time.Millisecond), float64(payloadBytes)/msgs, float64(out)/msgs, float64(in)/msgs,
				perMsgCPU, float64(rss-rss0)/float64(n))
			fmt.Printf("{\"mode\":%q,\"clients\":%d,\"messages\":%d,\"payload_bytes_per_msg\":%.0f,\"wire_to_server_per_msg\":%.1f,\"wire_to_client_per_msg\":%.1f,\"server_cpu_us_per_msg\":%.1f,\"rss_per_conn_kib\":%.1f}\n",
				mode, n, n*m, float64(payloadBytes)/msgs, float64(out)/msgs, float64(in)/msgs, perMsgCPU, float64(rss-rss0)/float64(n))
			for _, c := range clients {
				c.conn.Close()
			}
		})
	}
}

// clockTicks is the kernel's USER_HZ, the unit of /proc/PID/stat times.
const clockTicks = 100

// cpuTicks is the user plus system time of pid in clock ticks.
func cpuTicks(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the command name, which is in parentheses.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return ut + st
}

// simPayloads runs the simulator's default fleet (its three profiles)
// against an in-process broker and returns n telemetry payloads it
// published.
func simPayloads(t *testing.T, n int) [][]byte {
	t.Helper()
	a := startTestApp(t, testConfig(t))
	got := make(chan []byte, n)
	o := paho3.NewClientOptions().AddBroker("tcp://" + a.mqttAddr()).SetClientID("capture")
	c := paho3.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	defer c.Disconnect(0)
	c.Subscribe("devices/+/telemetry", 0, func(_ paho3.Client, msg paho3.Message) {
		select {
		case got <- append([]byte(nil), msg.Payload()...):
		default:
		}
	}).Wait()
	ep, err := simulator.ParseEndpoint("tcp://"+a.mqttAddr(), "", "")
	if err != nil {
		t.Fatal(err)
	}
	fleet, err := simulator.LoadFleet("")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := simulator.RunSim(ctx, simulator.SimConfig{Endpoint: ep, Fleet: fleet, Devices: 30,
			Interval: 50 * time.Millisecond, Progress: -1, CleanSession: true}, &strings.Builder{})
		done <- err
	}()
	out := make([][]byte, 0, n)
	timeout := time.After(60 * time.Second)
	for len(out) < n {
		select {
		case p := <-got:
			out = append(out, p)
		case <-timeout:
			t.Fatalf("captured %d of %d payloads", len(out), n)
		}
	}
	cancel()
	<-done
	return out
}

// byteCounter counts the bytes a TCP connection carries.
type byteCounter struct{ read, written atomic.Int64 }

type countingConn struct {
	net.Conn
	c *byteCounter
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.c.read.Add(int64(n))
	return n, err
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.c.written.Add(int64(n))
	return n, err
}

// measureClient is one MQTT 3.1.1 client over WebSocket, subscribed to a
// topic of its own.
type measureClient struct {
	conn    net.Conn
	counter *byteCounter
	topic   string
}

func dialMeasureClient(t *testing.T, httpAddr string, mode websocket.CompressionMode, i int) *measureClient {
	c := &measureClient{counter: &byteCounter{}, topic: fmt.Sprintf("m/%d", i)}
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &countingConn{Conn: conn, c: c.counter}, nil
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "ws://"+httpAddr+"/mqtt", &websocket.DialOptions{
		HTTPClient: &http.Client{Transport: tr}, Subprotocols: []string{"mqtt"}, CompressionMode: mode,
	})
	if err != nil {
		t.Errorf("client %d: %v", i, err)
		return nil
	}
	ws.SetReadLimit(-1)
	c.conn = websocket.NetConn(context.Background(), ws, websocket.MessageBinary)
	c.conn.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := c.conn.Write(rawConnect(4, fmt.Sprintf("cmp-%d", i))); err != nil {
		t.Errorf("client %d: %v", i, err)
	}
	if first, _, err := readRawPacket(c.conn); err != nil || first != 0x20 {
		t.Errorf("client %d: CONNACK %#x %v", i, first, err)
	}
	if _, err := c.conn.Write(rawSubscribe(4, c.topic)); err != nil {
		t.Errorf("client %d: %v", i, err)
	}
	if first, _, err := readRawPacket(c.conn); err != nil || first != 0x90 {
		t.Errorf("client %d: SUBACK %#x %v", i, first, err)
	}
	return c
}

// exchange publishes m payloads, from payloads[from:] on, to the client's
// own topic and reads each back.
func (c *measureClient) exchange(t *testing.T, payloads [][]byte, from, m int) {
	c.conn.SetDeadline(time.Now().Add(5 * time.Minute))
	errc := make(chan error, 1)
	go func() {
		for range m {
			if first, _, err := readRawPacket(c.conn); err != nil || first&0xf0 != 0x30 {
				errc <- fmt.Errorf("read PUBLISH: %#x %v", first, err)
				return
			}
		}
		errc <- nil
	}()
	for j := range m {
		if _, err := c.conn.Write(rawPublish(4, c.topic, payloads[(from+j)%len(payloads)])); err != nil {
			t.Errorf("%s: publish: %v", c.topic, err)
			return
		}
	}
	if err := <-errc; err != nil {
		t.Errorf("%s: %v", c.topic, err)
	}
}

// batchPayloads joins each run of k payloads into one JSON array.
func batchPayloads(ps [][]byte, k int) [][]byte {
	if k <= 1 {
		return ps
	}
	var out [][]byte
	for i := 0; i+k <= len(ps); i += k {
		b := []byte{'['}
		for j, p := range ps[i : i+k] {
			if j > 0 {
				b = append(b, ',')
			}
			b = append(b, p...)
		}
		out = append(out, append(b, ']'))
	}
	return out
}

// TestWSCompression checks each http.ws_compression mode end to end: what
// the upgrade negotiates with a client that offers permessage-deflate, that
// MQTT packets arrive intact through it, and that a large repetitive
// payload takes fewer bytes on the wire when compression is on.
func TestWSCompression(t *testing.T) {
	big := []byte(`{"readings":[` + strings.Repeat(`{"temperature":21.5,"humidity":48,"battery":97},`, 80) + `{}]}`)
	for _, tc := range []struct {
		mode      string
		extension string // what the server's Sec-WebSocket-Extensions holds ("" for none)
	}{
		{"off", ""},
		{"no_context", "permessage-deflate; client_no_context_takeover; server_no_context_takeover"},
		{"context", "permessage-deflate"},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			cfg := testConfig(t)
			cfg.HTTP.WSCompression = tc.mode
			a := startTestApp(t, cfg)
			counter := &byteCounter{}
			tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
				if err != nil {
					return nil, err
				}
				return &countingConn{Conn: conn, c: counter}, nil
			}}
			defer tr.CloseIdleConnections()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			ws, res, err := websocket.Dial(ctx, wsURL(a), &websocket.DialOptions{
				HTTPClient: &http.Client{Transport: tr}, Subprotocols: []string{"mqtt"},
				CompressionMode: websocket.CompressionContextTakeover, // offers permessage-deflate
			})
			if err != nil {
				t.Fatal(err)
			}
			if got := res.Header.Get("Sec-WebSocket-Extensions"); got != tc.extension {
				t.Errorf("Sec-WebSocket-Extensions %q, want %q", got, tc.extension)
			}
			ws.SetReadLimit(-1)
			conn := websocket.NetConn(context.Background(), ws, websocket.MessageBinary)
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			for _, pk := range [][]byte{rawConnect(4, "cmp"), rawSubscribe(4, "cmp/t")} {
				if _, err := conn.Write(pk); err != nil {
					t.Fatal(err)
				}
				if _, _, err := readRawPacket(conn); err != nil {
					t.Fatal(err)
				}
			}
			for _, payload := range [][]byte{[]byte(`{"t":1}`), big} {
				before := counter.read.Load()
				if _, err := conn.Write(rawPublish(4, "cmp/t", payload)); err != nil {
					t.Fatal(err)
				}
				first, body, err := readRawPacket(conn)
				if err != nil || first&0xf0 != 0x30 {
					t.Fatalf("PUBLISH: %#x %v", first, err)
				}
				if got := body[2+len("cmp/t"):]; string(got) != string(payload) {
					t.Fatalf("payload changed on the way: %d bytes, want %d", len(got), len(payload))
				}
				wire := counter.read.Load() - before
				if len(payload) == len(big) {
					compressed := wire < int64(len(big))/4
					if compressed != (tc.mode != "off") {
						t.Errorf("a %d-byte payload took %d bytes on the wire", len(big), wire)
					}
				}
			}
		})
	}
}
