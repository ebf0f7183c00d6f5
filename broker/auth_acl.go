package broker

import (
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tether-iot/tether/devices"
	topicpkg "github.com/tether-iot/tether/devices/topic"
)

// The access rules of SPEC §5, as topic patterns. A request is allowed when
// the topic (publish, delivery) or the whole filter (subscribe) lies within
// one of the identity's patterns: a device subscribing to "devices/#" or
// "#" asks for more than its own and is refused.
var (
	// viewerRead: viewers, operators (and admins) read these.
	viewerRead = []string{"devices/#", "$SYS/#"}
	// operatorWrite: operators also send commands. Desired twin state is
	// published by the broker only: operators set it through the API.
	operatorWrite = []string{"devices/+/commands/#"}
)

// devicePatterns returns what device id may publish and subscribe to.
func devicePatterns(id string) (pub, sub []string) {
	own := "devices/" + id + "/"
	return []string{own + "telemetry", own + "telemetry/+", own + "twin/reported", own + "responses/#"},
		[]string{own + "commands/#", own + "twin/desired"}
}

// OnACLCheck decides a publish (write), a subscription or a delivery
// (read) from the client's identity held in memory: no SQLite query. It
// also refuses a subscription past mqtt.max_subscriptions_per_client
// (auth_subs.go). The
// engine turns a refusal into reason code 0x87 not authorized in the
// SUBACK (3.1.1: 0x80 failure) or, for a QoS 1/2 publish, the PUBACK or
// PUBREC of MQTT 5; a 3.1.1 client that publishes where it may not is
// disconnected, as 3.1.1 has no way to say no [MQTT-3.3.5-2].
func (a *Auth) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	c := a.conn(cl)
	if c == nil && !write {
		// A delivery into an offline persistent session.
		c = a.sessionConn(cl)
	}
	ok := c != nil && c.allows(topic, write)
	if ok && !write && a.overSubscriptions(cl, topic) {
		return false // a quota, not a denial: neither counted as one nor towards bans
	}
	if !ok {
		action := "subscribe"
		if write {
			action = "publish"
		}
		a.m.denied.WithLabelValues(action).Inc()
		a.aclRefused(cl, action, topic)
	}
	return ok
}

// allows applies the rules to one topic or filter: nobody publishes to a
// $SYS/... or $share/... topic, and a shared subscription needs a role
// above viewer (SPEC §5), whatever the auth rules say; then the first
// auth rule that covers the topic decides (auth_rules.go); then the
// built-in rules: a device its own topics and its grants, users by role,
// admins and anonymous clients (when allowed) everything.
func (c *conn) allows(topic string, write bool) bool {
	switch {
	case c.revoked, write && reservedTopic(topic):
		return false
	case !write && mqtt.IsSharedFilter(topic) && !c.anonymous && !c.id.Can(devices.RoleOperator):
		return false
	}
	topic = unshare(topic)
	var acl *connACL
	if c.acl != nil {
		acl = c.acl.p.Load()
	}
	if acl == nil {
		return c.builtin(topic, write, nil)
	}
	x := &acl.subRules
	if write {
		x = &acl.pubRules
	}
	device := c.id.Kind == devices.KindDevice && !c.anonymous
	if len(x.list) == 0 && !device {
		// No rule binds it for this access, and the built-in rules of an
		// anonymous client or a user take the topic whole: nothing needs
		// it in levels (TestACLSplitsOnlyForRules).
		return c.builtin(topic, write, acl)
	}
	// Split once; no allocation for up to 16 levels.
	var buf [16]string
	levels := splitTopic(topic, buf[:])
	if allow, ok := x.decide(levels); ok {
		return allow
	}
	if device {
		if write {
			return withinAnyLevels(levels, acl.pub)
		}
		return withinAnyLevels(levels, acl.sub)
	}
	return c.builtin(topic, write, acl)
}

// builtin applies the built-in rules of a user or an anonymous client (a
// device's need its compiled patterns, acl).
func (c *conn) builtin(topic string, write bool, acl *connACL) bool {
	switch {
	case c.anonymous, c.id.Kind == devices.KindUser && c.id.Role == devices.RoleAdmin:
		return true
	case c.id.Kind == devices.KindDevice:
		return false // no compiled patterns: nothing
	case write:
		return c.id.Can(devices.RoleOperator) && withinAny(topic, operatorWrite)
	}
	return c.id.Can(devices.RoleViewer) && withinAny(topic, viewerRead)
}

func splitTopic(t string, buf []string) []string { return topicpkg.Split(t, buf) }

func withinAnyLevels(filter []string, patterns [][]string) bool {
	for _, p := range patterns {
		if topicpkg.WithinLevels(filter, p) {
			return true
		}
	}
	return false
}

// reservedTopic reports whether a client may never publish to topic: the
// broker's $SYS/... statistics, or $share/..., which names shared
// subscriptions, not topics. Like the engine, it ignores case.
func reservedTopic(topic string) bool {
	return isSysTopic(topic) || mqtt.IsSharedFilter(topic)
}

func isSysTopic(topic string) bool {
	return len(topic) >= len(mqtt.SysPrefix) && strings.EqualFold(topic[:len(mqtt.SysPrefix)], mqtt.SysPrefix)
}

// OnPacketRead refuses a PUBLISH the engine would drop silently before the
// ACL, with no PUBACK, so that the client waited forever: one to $SYS/...,
// and one to "$share" or "$share/{group}" (a shared subscription's prefix
// without its filter; "$share/{group}/{filter}" reaches the ACL, which
// refuses it). Wildcards in a topic name are a protocol error the engine
// answers before. Like any
// refused publish: an MQTT 5 client gets PUBACK (QoS 1) or PUBREC (QoS 2)
// 0x87, a 3.1.1 client at QoS 1/2 is disconnected (3.1.1 cannot refuse a
// publish otherwise [MQTT-3.3.5-2]), QoS 0 is dropped. It is never routed.
//
// It has the broker's gate mend the packet first (gate.read), resolves
// topic aliases (resolveAlias), and notes the filters of a SUBSCRIBE being
// answered (auth_subs.go).
func (a *Auth) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	err := a.packetRead(cl, &pk)
	return pk, err
}

// packetRead is OnPacketRead on the packet in place (hookSet); its only
// error is packets.ErrRejectPacket.
func (a *Auth) packetRead(cl *mqtt.Client, pk *packets.Packet) error {
	if a.read != nil && readMends(pk) {
		*pk = a.read(cl, *pk)
	}
	a.noteSubscribe(cl, pk)
	if pk.FixedHeader.Type == packets.Publish && pk.Properties.TopicAliasFlag && pk.Properties.TopicAlias > 0 && !cl.Net.Inline {
		var ok bool
		if *pk, ok = a.resolveAlias(cl, *pk); !ok {
			return packets.ErrRejectPacket // the engine closes the connection
		}
	}
	if pk.FixedHeader.Type != packets.Publish || cl.Net.Inline || mqtt.IsValidFilter(pk.TopicName, true) {
		return nil
	}
	a.m.denied.WithLabelValues("publish").Inc()
	a.aclRefused(cl, "publish", pk.TopicName)
	if refusePublish(cl, *pk, packets.ErrNotAuthorized) {
		return packets.ErrRejectPacket // the engine closes the connection
	}
	return nil // the engine drops it
}

// resolveAlias applies the Topic Alias of an MQTT 5 PUBLISH before the
// engine checks access, which it does before it applies the alias itself:
// a PUBLISH sent by alias (empty topic name) would be checked as "" and
// refused. A PUBLISH with a topic name sets the alias to it [MQTT-3.3.2-12],
// even if it is then refused, as the client may reuse the alias for the
// same topic (and be refused again); one with an empty topic name gets the
// alias's topic, and the engine's own Set later finds it unchanged. An
// alias above the Topic Alias Maximum is left to the engine, which refuses
// it (DISCONNECT 0x94) without storing it. An alias the client never set
// is a protocol error: the client gets DISCONNECT 0x82 and the connection
// closes (ok false). The engine would route such a message to the empty
// topic, where nobody receives it, acknowledge it as delivered, and retain
// it there if it asked to be (docs/upstream.md).
func (a *Auth) resolveAlias(cl *mqtt.Client, pk packets.Packet) (packets.Packet, bool) {
	if pk.Properties.TopicAlias > a.srv.Options.Capabilities.TopicAliasMaximum {
		return pk, true
	}
	pk.TopicName = cl.State.TopicAliases.Inbound.Set(pk.Properties.TopicAlias, pk.TopicName)
	if pk.TopicName != "" {
		return pk, true
	}
	a.log.Debug("publish by a topic alias never set", "client", cl.ID, "alias", pk.Properties.TopicAlias)
	_ = a.srv.DisconnectClient(cl, packets.ErrProtocolViolationNoTopic)
	return pk, false
}

// unshare returns the filter of a shared subscription "$share/group/filter"
// (topic.Unshare). Like the engine (mqtt.IsSharedFilter), it takes $share
// in any case: a $SHARE/g/secret/# that the engine serves as a shared
// subscription to secret/# must be checked as secret/#, or a deny rule on
// it would not bind.
func unshare(filter string) string { return topicpkg.Unshare(filter) }

func withinAny(filter string, patterns []string) bool {
	for _, p := range patterns {
		if within(filter, p) {
			return true
		}
	}
	return false
}

// within reports whether every topic that filter matches is matched by
// pattern (topic.Within).
func within(filter, pattern string) bool { return topicpkg.Within(filter, pattern) }

// refusedAck is the PUBACK (QoS 1) or PUBREC (QoS 2) that refuses pk with
// code.
func refusedAck(pk packets.Packet, code packets.Code) packets.Packet {
	t := packets.Puback
	if pk.FixedHeader.Qos == 2 {
		t = packets.Pubrec
	}
	return packets.Packet{
		FixedHeader: packets.FixedHeader{Type: t},
		PacketID:    pk.PacketID,
		ReasonCode:  code.Code,
		Properties:  packets.Properties{ReasonString: code.Reason},
	}
}

// refusePublish answers a PUBLISH the broker refuses, the same way
// whatever the reason: an MQTT 5 client gets PUBACK (QoS 1) or PUBREC
// (QoS 2) with code; QoS 0 has nothing to answer. It reports whether the
// connection must be closed instead: a 3.1.1 client at QoS 1/2, which
// has no way to be told no [MQTT-3.3.5-2], or one the answer could not be
// written to. The caller makes sure the engine neither retains nor
// routes the message.
func refusePublish(cl *mqtt.Client, pk packets.Packet, code packets.Code) (closeConn bool) {
	switch {
	case pk.FixedHeader.Qos == 0:
		return false
	case cl.Properties.ProtocolVersion < 5:
		return true
	}
	return cl.WritePacket(refusedAck(pk, code)) != nil
}
