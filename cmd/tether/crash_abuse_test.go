package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"
)

// crashAbuse runs, all at once against one server: 10,000 connections
// from one address (capped at 100 per address), a slow-loris on CONNECT
// and one on the WebSocket handshake, a client that subscribes to a busy
// topic and never reads its socket, and a publisher flooding at full speed
// (held to 1,000 messages/s). A well-behaved publisher/subscriber pair
// measures its round-trip latency before and during the abuse.
func crashAbuse(t *testing.T, bin string) {
	p := newTetherProc(t, bin,
		"TETHER_LIMITS_MAX_CONNECTIONS_PER_IP=100",
		"TETHER_LIMITS_PUBLISH_RATE_PER_CLIENT=1000",
		"TETHER_MQTT_CONNECT_TIMEOUT=2s",
		"TETHER_HTTP_HANDSHAKE_TIMEOUT=2s")
	p.start(t)
	defer p.stop(t)

	before := crashProbe(t, p.mqtt, "before", 200)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var flooded atomic.Int64
	// The flooder, and a subscriber to its topic that never reads.
	neverReader := crashRawSubscribe(t, p.mqtt, "never-reader", "flood/#")
	defer neverReader.Close()
	flooder := crashPub3(t, p.mqtt, "flooder")
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer flooder.Disconnect(0)
		payload := make([]byte, 1024)
		for {
			select {
			case <-stop:
				return
			default:
			}
			flooder.Publish("flood/x", 0, false, payload)
			flooded.Add(1)
		}
	}()
	// Slow-loris on CONNECT and on the WebSocket handshake: each must be
	// closed by the server after its timeout (2 s).
	lorisClosed := make(chan time.Duration, 400)
	loris := func(addr, local string, first []byte) {
		defer wg.Done()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 5 * time.Second}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			return
		}
		defer c.Close()
		start := time.Now()
		_, _ = c.Write(first)
		_ = c.SetReadDeadline(time.Now().Add(15 * time.Second))
		_, _ = io.Copy(io.Discard, c) // until the server closes
		lorisClosed <- time.Since(start)
	}
	for range 200 {
		wg.Add(2)
		go loris(p.mqtt, "127.0.0.3", []byte{0x10, 0x30, 0x00})
		go loris(p.http, "127.0.0.4", []byte("GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"))
	}
	// 10,000 connections from one address.
	var served, refused atomic.Int64
	var keep []net.Conn
	var keepMu sync.Mutex
	jobs := make(chan int)
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				c, ok := crashTryConnect(p.mqtt, "127.0.0.2", fmt.Sprintf("flood-conn-%d", i))
				if ok {
					served.Add(1)
					keepMu.Lock()
					keep = append(keep, c)
					keepMu.Unlock()
				} else {
					refused.Add(1)
				}
			}
		}()
	}
	go func() {
		for i := range 10000 {
			jobs <- i
		}
		close(jobs)
	}()

	during := crashProbe(t, p.mqtt, "during", 200)
	close(stop)
	wg.Wait()
	keepMu.Lock()
	for _, c := range keep {
		c.Close()
	}
	keepMu.Unlock()
	close(lorisClosed)

	t.Logf("well-behaved round trip, QoS 1: before p50 %v p99 %v; during abuse p50 %v p99 %v",
		before.p50, before.p99, during.p50, during.p99)
	t.Logf("10,000 connections from one address: %d served, %d refused; flooder sent %d packets",
		served.Load(), refused.Load(), flooded.Load())
	if served.Load() > 100 {
		t.Errorf("%d connections from one address served, cap is 100", served.Load())
	}
	if during.p99 > time.Second {
		t.Errorf("p99 round trip during abuse %v: well-behaved clients not served", during.p99)
	}
	var lorisN int
	for d := range lorisClosed {
		lorisN++
		if d > 8*time.Second {
			t.Errorf("a slow-loris connection lived %v (timeout 2s)", d)
		}
	}
	if lorisN < 400 {
		t.Errorf("%d of 400 slow-loris connections closed by the server", lorisN)
	}
	metrics := "http://" + p.http + "/metrics"
	if n := scrapeCounter(t, metrics, `tether_connections_limited_total{limit="max_connections_per_ip"}`); n < 9900 {
		t.Errorf("connections refused by the per-address cap counted %v, want >= 9900", n)
	}
	if n := scrapeCounter(t, metrics, `tether_publish_throttled_total{kind="other"}`); n == 0 {
		t.Error("the flooder was never throttled")
	}
}

type crashLatencies struct{ p50, p99 time.Duration }

// crashProbe sends n QoS 1 messages, one each 5 ms, from a publisher to
// a subscriber and returns the round-trip percentiles.
func crashProbe(t *testing.T, addr, name string, n int) crashLatencies {
	t.Helper()
	var mu sync.Mutex
	var rtts []time.Duration
	done := make(chan struct{})
	o := paho3.NewClientOptions().AddBroker("tcp://" + addr).SetClientID("probe-sub-" + name).
		SetCleanSession(true).SetAutoReconnect(false).SetOrderMatters(false).
		SetDefaultPublishHandler(func(_ paho3.Client, m paho3.Message) {
			sent, _ := strconv.ParseInt(string(m.Payload()), 10, 64)
			mu.Lock()
			rtts = append(rtts, time.Since(time.Unix(0, sent)))
			if len(rtts) == n {
				close(done)
			}
			mu.Unlock()
		})
	sub := paho3.NewClient(o)
	if tok := sub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("probe connect: %v", tok.Error())
	}
	defer sub.Disconnect(0)
	if tok := sub.Subscribe("probe/"+name, 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("probe subscribe: %v", tok.Error())
	}
	pub := crashPub3(t, addr, "probe-pub-"+name)
	defer pub.Disconnect(0)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for range n {
		<-tick.C
		pub.Publish("probe/"+name, 1, false, strconv.FormatInt(time.Now().UnixNano(), 10))
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		mu.Lock()
		t.Fatalf("probe %s: %d of %d messages came back", name, len(rtts), n)
	}
	mu.Lock()
	defer mu.Unlock()
	slices.Sort(rtts)
	return crashLatencies{p50: rtts[len(rtts)/2], p99: rtts[len(rtts)*99/100]}
}

// crashMQTTString is an MQTT UTF-8 string: a two-byte length, then the bytes.
func crashMQTTString(s string) []byte {
	return append(binary.BigEndian.AppendUint16(nil, uint16(len(s))), s...)
}

// crashPacket returns an MQTT crashPacket with a one-byte remaining length.
func crashPacket(header byte, body []byte) []byte {
	return append([]byte{header, byte(len(body))}, body...)
}

func crashConnectPacket(id string) []byte {
	body := append(crashMQTTString("MQTT"), 4, 0x02, 0, 60) // 3.1.1, clean session, keep-alive 60 s
	return crashPacket(0x10, append(body, crashMQTTString(id)...))
}

// crashTryConnect dials from local and reports whether the server answered
// CONNECT with a CONNACK; a connection that got one is returned open.
func crashTryConnect(addr, local, id string) (net.Conn, bool) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, false
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	ack := make([]byte, 4)
	if _, err := c.Write(crashConnectPacket(id)); err != nil {
		c.Close()
		return nil, false
	}
	if _, err := io.ReadFull(c, ack); err != nil || ack[0] != 0x20 || ack[3] != 0 {
		c.Close()
		return nil, false
	}
	_ = c.SetDeadline(time.Time{})
	return c, true
}

// crashRawSubscribe connects and subscribes with hand-made packets, and then
// never reads the socket.
func crashRawSubscribe(t *testing.T, addr, id, filter string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	sub := append([]byte{0, 1}, crashMQTTString(filter)...)
	if _, err := c.Write(append(crashConnectPacket(id), crashPacket(0x82, append(sub, 0))...)); err != nil {
		t.Fatal(err)
	}
	return c
}
