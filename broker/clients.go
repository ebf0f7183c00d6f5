package broker

import (
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tether-iot/tether/broker/info"
)

// Clients lists the connected MQTT clients (not the broker's own inline
// client), in no particular order, with when each connected.
func (b *Broker) Clients() []info.Client {
	all := b.Server.Clients.GetAll()
	out := make([]info.Client, 0, len(all))
	for _, cl := range all {
		if cl.Net.Inline || cl.Closed() {
			continue
		}
		c := info.Client{
			ID:              cl.ID,
			Username:        string(cl.Properties.Username),
			Transport:       Transport(cl),
			Remote:          cl.Net.Remote,
			ProtocolVersion: int(cl.Properties.ProtocolVersion),
		}
		if t, ok := b.clock.since(cl); ok {
			t = t.UTC()
			c.ConnectedSince = &t
		}
		out = append(out, c)
	}
	return out
}

// clientClock is an MQTT hook that remembers when each connected
// client's session was established, for Clients (the engine does not
// keep it). New adds it to the engine.
//
// It keys on the *mqtt.Client, so a session taken over by a reconnect
// with the same client id gets the new connection's time.
type clientClock struct {
	mqtt.HookBase
	now func() time.Time
	// mu guards at.
	mu sync.Mutex
	at map[*mqtt.Client]time.Time
}

func newClientClock() *clientClock {
	return &clientClock{now: time.Now, at: map[*mqtt.Client]time.Time{}}
}

// ID implements mqtt.Hook.
func (c *clientClock) ID() string { return "tether-client-clock" }

// Provides implements mqtt.Hook.
func (c *clientClock) Provides(b byte) bool {
	return b == mqtt.OnSessionEstablish || b == mqtt.OnDisconnect
}

// OnSessionEstablish records the time cl connected. It runs before the
// engine sends the CONNACK, so a client that has its CONNACK is listed
// with its time (OnSessionEstablished came after the CONNACK, and a fast
// client could be listed without one). A client whose CONNACK cannot be
// written gets its OnDisconnect from connackWatch.
func (c *clientClock) OnSessionEstablish(cl *mqtt.Client, pk packets.Packet) {
	t := c.now()
	c.mu.Lock()
	c.at[cl] = t
	c.mu.Unlock()
}

// OnDisconnect forgets cl.
func (c *clientClock) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	c.mu.Lock()
	delete(c.at, cl)
	c.mu.Unlock()
}

// since returns when cl connected, if the clock saw it.
func (c *clientClock) since(cl *mqtt.Client) (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.at[cl]
	return t, ok
}
