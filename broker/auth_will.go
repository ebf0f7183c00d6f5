package broker

import (
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/tether-iot/tether/devices"
)

// brokerTopics are the topics whose messages the broker itself makes or
// rewrites (SPEC §4, §7): a command is recorded and rewritten as it
// passes, a desired twin and a status are the broker's alone. A will
// reaches subscribers without passing the hooks that do this, so no will
// may name them, retained or not.
var brokerTopics = []string{"devices/+/commands/#", "devices/+/twin/desired", "devices/+/status"}

// mayWill reports whether c may leave a will on topic (retained or not:
// the rules are those of a publish, SPEC §5).
func (c *conn) mayWill(topic string) bool {
	// A will's topic is a topic name [MQTT-3.1.3-11]: no wildcard, not
	// empty (nobody could publish to "#": an admin's will there reached
	// every subscriber of # and +).
	if topic == "" || strings.ContainsAny(topic, "+#") {
		return false
	}
	return !withinAny(topic, brokerTopics) && c.allows(topic, true)
}

// checkWill is the engine's OnWill, as cl goes: the will goes out as it is
// if cl's identity may still publish it (the device still registered and
// enabled, the user still there, with their role of now, the connection
// not revoked); else it is emptied — a will with no topic reaches no
// subscriber and is not retained (the engine's OnWill cannot refuse).
func (a *Auth) checkWill(cl *mqtt.Client, will mqtt.Will) mqtt.Will {
	c := a.conn(cl)
	if c != nil && !c.revoked && !c.anonymous {
		id, ok := a.reg.Lookup(c.id.Name)
		if !ok || id.Kind != c.id.Kind {
			c = nil
		} else if id.Kind == devices.KindUser && id.Role != c.id.Role {
			now := c.id
			now.Role = id.Role
			c = a.newConn(now, false, c.clientID) // rules by role of now
		}
	}
	if c != nil && c.mayWill(will.TopicName) {
		return will
	}
	a.m.wills.WithLabelValues("send").Inc()
	a.log.Info("will dropped: no longer allowed", "client", cl.ID)
	return mqtt.Will{}
}
