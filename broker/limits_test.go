package broker

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tether-iot/tether/devices"
)

// TestPublishLimitKinds: devices get the device rate and burst, everyone
// else publish_rate_per_client; 0 is unlimited.
func TestPublishLimitKinds(t *testing.T) {
	dev, person := &mqtt.Client{}, &mqtt.Client{}
	identity := func(cl *mqtt.Client) (devices.Identity, bool) {
		if cl == dev {
			return devices.Identity{Kind: devices.KindDevice, Name: "d1"}, true
		}
		return devices.Identity{Kind: devices.KindUser, Name: "admin"}, true
	}
	l := NewPublishLimit(PublishLimitOptions{DeviceRate: 100, DeviceBurst: 500, Identity: identity})
	lim, kind := l.limiter(dev)
	if lim == nil || kind != "device" || lim.Limit() != 100 || lim.Burst() != 500 {
		t.Fatalf("device: %v %q", lim, kind)
	}
	if lim, kind := l.limiter(person); lim != nil || kind != "other" {
		t.Fatalf("person limited: %v %q", lim, kind)
	}
	l = NewPublishLimit(PublishLimitOptions{PerClient: 20, Identity: identity})
	if lim, _ := l.limiter(dev); lim != nil {
		t.Fatalf("device rate 0 limited the device: %v", lim)
	}
	if lim, _ := l.limiter(person); lim == nil || lim.Limit() != 20 || lim.Burst() != 20 {
		t.Fatalf("per-client rate: %v", lim)
	}
	if NewPublishLimit(PublishLimitOptions{}).Provides(mqtt.OnPublish) {
		t.Error("all rates 0 must not hook OnPublish")
	}
}

// A client publishing as fast as it can is held to its rate, and another
// client's messages keep flowing meanwhile.
func TestPublishLimitFlooder(t *testing.T) {
	o := DefaultOptions()
	o.TCPAddr = "127.0.0.1:0"
	o.AllowAnonymous = true
	lim := NewPublishLimit(PublishLimitOptions{PerClient: 100})
	o.Logger, o.Hooks = storeLogger(), []mqtt.Hook{lim}
	b, err := New(o)
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
	if n := testCounter(t, lim.throttled.WithLabelValues("other")); n < 1 {
		t.Errorf("no packet was throttled")
	}
}

// TestPublishLimitNoAlloc: the publish rates' OnPublish, which checks a
// PUBLISH's levels (mqtt.max_topic_levels) for the gate when it is the
// first hook after it (broker.New), allocates nothing for a PUBLISH let
// through, whether the client is held to a rate or not. The check through
// a func value made the packet escape: 896 bytes per PUBLISH.
func TestPublishLimitNoAlloc(t *testing.T) {
	for _, c := range []struct {
		name string
		o    PublishLimitOptions
	}{{"levels only", PublishLimitOptions{}}, {"rated", PublishLimitOptions{PerClient: 1_000_000_000}}} {
		t.Run(c.name, func(t *testing.T) {
			o := DefaultOptions()
			o.AllowAnonymous = true
			l := NewPublishLimit(c.o)
			o.Logger, o.Hooks = storeLogger(), []mqtt.Hook{l}
			b, err := New(o)
			if err != nil {
				t.Fatal(err)
			}
			if o.MaxTopicLevels <= 0 || !l.Provides(mqtt.OnPublish) {
				t.Fatalf("the levels are not checked in the rates' OnPublish (max %d)", o.MaxTopicLevels)
			}
			cl := b.Server.NewClient(nil, "tcp", "pub", false)
			pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "devices/d1/telemetry", Payload: []byte(`{"t":1}`)}
			if _, err := l.OnPublish(cl, pk); err != nil {
				t.Fatal(err)
			}
			if n := testing.AllocsPerRun(1000, func() {
				if _, err := l.OnPublish(cl, pk); err != nil {
					t.Fatal(err)
				}
			}); n != 0 {
				t.Errorf("OnPublish allocates %v times per PUBLISH, want 0", n)
			}
			deep := pk
			deep.TopicName = strings.Repeat("a/", o.MaxTopicLevels) + "a"
			if _, err := l.OnPublish(cl, deep); !errors.Is(err, packets.ErrRejectPacket) {
				t.Errorf("a PUBLISH with too many levels: %v, want it refused", err)
			}
		})
	}
}
