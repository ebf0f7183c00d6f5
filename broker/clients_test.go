package broker

import (
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

func TestClientClockKeysOnConnection(t *testing.T) {
	c := newClientClock()
	t0 := time.Unix(1000, 0)
	c.now = func() time.Time { return t0 }
	old, taker := &mqtt.Client{ID: "same"}, &mqtt.Client{ID: "same"}
	c.OnSessionEstablish(old, packets.Packet{})
	t0 = t0.Add(time.Minute)
	c.OnSessionEstablish(taker, packets.Packet{})
	// The old connection of a taken-over session goes; the new one stays.
	c.OnDisconnect(old, nil, false)
	if _, ok := c.since(old); ok {
		t.Fatal("old connection still known")
	}
	if got, ok := c.since(taker); !ok || !got.Equal(time.Unix(1060, 0)) {
		t.Fatalf("taker since %v %v", got, ok)
	}
	c.OnDisconnect(taker, nil, true)
	if _, ok := c.since(taker); ok {
		t.Fatal("disconnected client still known")
	}
}
