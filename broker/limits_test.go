package broker

import (
	"bytes"
	"fmt"
	"net"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/tether-iot/tether/configs"
)

func TestPublishLimitTake(t *testing.T) {
	l := NewPublishLimit(10)
	cl := &mqtt.Client{}
	now := time.Now()
	for i := range 10 { // the burst
		if d := l.take(cl, now); d != 0 {
			t.Fatalf("packet %d of the burst delayed %v", i, d)
		}
	}
	if d := l.take(cl, now); d != 100*time.Millisecond {
		t.Fatalf("11th packet delayed %v, want 100ms", d)
	}
	// The next one waits for the one after: the caller slept 100ms.
	if d := l.take(cl, now.Add(100*time.Millisecond)); d != 100*time.Millisecond {
		t.Fatalf("12th packet delayed %v, want 100ms", d)
	}
	// A second later the bucket is full again.
	if d := l.take(cl, now.Add(1300*time.Millisecond)); d != 0 {
		t.Fatalf("after a pause: delayed %v", d)
	}
	if NewPublishLimit(0).Provides(mqtt.OnPublish) {
		t.Error("a rate of 0 must not hook OnPublish")
	}
}

// A client publishing as fast as it can is held to its rate, and another
// client's messages keep flowing meanwhile.
func TestPublishLimitFlooder(t *testing.T) {
	cfg := configs.Default()
	cfg.MQTT.Addr = "127.0.0.1:0"
	cfg.MQTT.TLSAddr, cfg.HTTP.Addr, cfg.HTTP.HTTPSAddr = configs.Off, configs.Off, configs.Off
	cfg.Auth.AllowAnonymous = true
	lim := NewPublishLimit(100)
	b, err := New(cfg, Options{Logger: storeLogger(), Hooks: []mqtt.Hook{lim}})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	defer b.Shutdown(t.Context())
	addr := b.TCP.Address()

	var flood, calm received
	watcher := storeClient(t, addr, "watcher", true, func(m paho3.Message) {
		if m.Topic() == "flood" {
			flood.add(m)
		} else {
			calm.add(m)
		}
	})
	waitToken(t, "subscribe", watcher.Subscribe("#", 0, nil))
	// The flooder writes all its packets at once on a raw connection.
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var buf bytes.Buffer
	buf.Write([]byte{0x10, 18, 0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 60, 0, 6, 'f', 'l', 'o', 'o', 'd', 'r'})
	for i := range 300 {
		p := fmt.Sprintf("%03d", i)
		buf.Write([]byte{0x30, byte(2 + 5 + len(p)), 0, 5, 'f', 'l', 'o', 'o', 'd'})
		buf.WriteString(p)
	}
	start := time.Now()
	go conn.Write(buf.Bytes())
	// Meanwhile a well-behaved client is served at once.
	calmPub := storeClient(t, addr, "calm", true, nil)
	for i := range 20 {
		sent := time.Now()
		waitToken(t, "calm publish", calmPub.Publish("calm", 1, false, fmt.Sprint(i)))
		if d := time.Since(sent); d > 500*time.Millisecond {
			t.Errorf("calm publish %d took %v during the flood", i, d)
		}
	}
	checkFor(t, 10*time.Second, func() error {
		if flood.distinct() < 300 || calm.distinct() < 20 {
			return fmt.Errorf("flood %d/300, calm %d/20", flood.distinct(), calm.distinct())
		}
		return nil
	})
	// 300 packets at 100/s with a burst of 100 need at least 2 s.
	if el := time.Since(start); el < 1900*time.Millisecond {
		t.Errorf("flooder delivered 300 packets in %v: not held to 100/s", el)
	}
	// About 200 are delayed; fewer when the broker is slow enough (race
	// detector, busy machine) for the bucket to refill as it reads.
	if n := testCounter(t, lim.throttled); n < 1 {
		t.Errorf("no packet was throttled")
	}
}
