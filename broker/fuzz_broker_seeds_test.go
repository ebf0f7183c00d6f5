package broker

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
)

// TestWriteBrokerStreamSeeds writes FuzzBrokerStream's seed corpus,
// testdata/fuzz/FuzzBrokerStream/seed-*, from brokerStreamSeeds:
//
//	TETHER_WRITE_FUZZ_SEEDS=1 go test -run TestWriteBrokerStreamSeeds ./broker/
func TestWriteBrokerStreamSeeds(t *testing.T) {
	if os.Getenv("TETHER_WRITE_FUZZ_SEEDS") == "" {
		t.Skip("set TETHER_WRITE_FUZZ_SEEDS=1 to write the seed corpus")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzBrokerStream")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, s := range brokerStreamSeeds() {
		data := fmt.Sprintf("go test fuzz v1\nbyte(%q)\n[]byte(%q)\n", s.mode, s.stream)
		if err := os.WriteFile(filepath.Join(dir, "seed-"+s.name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

type brokerStreamSeed struct {
	name   string
	mode   byte
	stream []byte
}

// enc encodes pk for protocol version v with the engine's encoder.
func enc(v byte, pk packets.Packet) []byte {
	pk.ProtocolVersion = v
	var b bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&b)
	case packets.Publish:
		err = pk.PublishEncode(&b)
	case packets.Puback:
		err = pk.PubackEncode(&b)
	case packets.Pubrec:
		err = pk.PubrecEncode(&b)
	case packets.Pubrel:
		pk.FixedHeader.Qos = 1
		err = pk.PubrelEncode(&b)
	case packets.Pubcomp:
		err = pk.PubcompEncode(&b)
	case packets.Subscribe:
		pk.FixedHeader.Qos = 1
		err = pk.SubscribeEncode(&b)
	case packets.Unsubscribe:
		pk.FixedHeader.Qos = 1
		err = pk.UnsubscribeEncode(&b)
	case packets.Pingreq:
		err = pk.PingreqEncode(&b)
	case packets.Disconnect:
		err = pk.DisconnectEncode(&b)
	case packets.Auth:
		err = pk.AuthEncode(&b)
	default:
		panic(fmt.Sprintf("enc: type %d", pk.FixedHeader.Type))
	}
	if err != nil {
		panic(err)
	}
	return b.Bytes()
}

func pub(qos byte, retain bool, id uint16, topic, payload string, props packets.Properties) packets.Packet {
	return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos, Retain: retain},
		PacketID: id, TopicName: topic, Payload: []byte(payload), Properties: props}
}

func sub(id uint16, props packets.Properties, filters ...packets.Subscription) packets.Packet {
	return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe}, PacketID: id, Filters: filters, Properties: props}
}

func ack(typ byte, id uint16) packets.Packet {
	return packets.Packet{FixedHeader: packets.FixedHeader{Type: typ}, PacketID: id}
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func repeat(b []byte, n int) []byte { return bytes.Repeat(b, n) }

// brokerStreamSeeds are real packets of every type, well formed and not,
// and the classic attacks on an MQTT broker that a byte fuzzer finds
// slowly.
func brokerStreamSeeds() []brokerStreamSeed {
	const dev = "devices/" + fuzzDevice + "/"
	full := packets.Properties{
		PayloadFormat: 1, PayloadFormatFlag: true, MessageExpiryInterval: 60, ContentType: "application/json",
		ResponseTopic: dev + "responses/r1", CorrelationData: []byte{1, 2, 3},
		User: []packets.UserProperty{{Key: "trace", Val: "abc"}, {Key: "trace", Val: "def"}, {Key: "", Val: ""}},
	}
	alias := func(n uint16) packets.Properties { return packets.Properties{TopicAlias: n, TopicAliasFlag: true} }
	p5 := func(pk packets.Packet) []byte { return enc(5, pk) }
	p4 := func(pk packets.Packet) []byte { return enc(4, pk) }
	ping := []byte{0xC0, 0}
	var out []brokerStreamSeed
	add := func(name string, mode byte, stream ...[]byte) {
		out = append(out, brokerStreamSeed{name, mode, cat(stream...)})
	}

	// The device: telemetry, twins, command responses, subscriptions.
	add("device-telemetry-v5", fzV5|fzDevice,
		p5(pub(0, false, 0, dev+"telemetry", `{"temp":21.5,"hum":40,"ok":true,"s":"x"}`, packets.Properties{})),
		p5(pub(1, false, 1, dev+"telemetry", `{"temp":22}`, full)),
		p5(pub(2, false, 2, dev+"telemetry/env", `{"temp":23}`, packets.Properties{})),
		p5(ack(packets.Pubrel, 2)))
	add("device-telemetry-v311", fzV311|fzDevice,
		p4(pub(1, false, 1, dev+"telemetry", `{"a":1,"b":{"c":2},"d":[1,2],"e":null,"f":1e308,"g":-0}`, packets.Properties{})),
		p4(pub(0, false, 0, dev+"telemetry", `not json`, packets.Properties{})),
		p4(pub(0, false, 0, dev+"telemetry", ``, packets.Properties{})))
	add("device-telemetry-v31-will", fzV31|fzDevice|fzWill,
		p4(pub(1, false, 7, dev+"telemetry", `{"v":3.1}`, packets.Properties{})))
	add("device-alias-v5", fzV5|fzDevice,
		p5(pub(1, false, 1, dev+"telemetry", `{"t":1}`, alias(1))),
		p5(pub(1, false, 2, "", `{"t":2}`, alias(1))),
		p5(pub(1, false, 3, dev+"twin/reported", `{"fw":"1"}`, alias(1))), // alias 1 moves
		p5(pub(0, false, 0, "", `{"fw":"2"}`, alias(1))),
		p5(pub(1, false, 4, "", `{"t":3}`, alias(64))), // never set
		p5(pub(1, false, 5, "", `{"t":4}`, alias(65))), // over Topic Alias Maximum
		p5(pub(1, false, 6, "", `{"t":5}`, alias(60000))))
	add("admin-alias-unset-v5", fzV5|fzAdmin,
		p5(sub(1, packets.Properties{}, packets.Subscription{Filter: "#", Qos: 1})),
		p5(pub(1, false, 2, "", "by an alias never set", alias(5))),
		p5(pub(0, true, 0, "", "retained by an alias never set", alias(6))),
		p5(sub(3, packets.Properties{}, packets.Subscription{Filter: "#", Qos: 1})))
	add("device-alias-unset-v5", fzV5|fzDevice, p5(pub(1, false, 1, "", `{"t":1}`, alias(2))))
	add("device-twin-v5", fzV5|fzDevice|fzPersistent,
		p5(pub(1, true, 1, dev+"twin/reported", `{"fw":"1.2","cfg":{"a":1}}`, packets.Properties{})),
		p5(pub(1, false, 2, dev+"twin/reported", `{"fw":null}`, packets.Properties{})),
		p5(pub(1, false, 3, dev+"twin/reported", `[1,2]`, packets.Properties{})))
	add("device-response-v5", fzV5|fzDevice,
		p5(pub(1, false, 1, dev+"responses/c1", `{"status":"ok","result":{"x":1}}`, packets.Properties{CorrelationData: []byte("c1")})),
		p5(pub(1, false, 2, "devices/other/responses/c1", `{"status":"ok"}`, packets.Properties{})))
	add("device-subscribe-v5", fzV5|fzDevice|fzPersistent,
		p5(sub(1, packets.Properties{SubscriptionIdentifier: []int{7}},
			packets.Subscription{Filter: dev + "commands/#", Qos: 1, NoLocal: true, RetainAsPublished: true, RetainHandling: 2},
			packets.Subscription{Filter: dev + "twin/desired", Qos: 2, RetainHandling: 1},
			packets.Subscription{Filter: "#", Qos: 0},
			packets.Subscription{Filter: "$share/g/" + dev + "commands/#", Qos: 1})),
		p5(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe}, PacketID: 2,
			Filters: packets.Subscriptions{{Filter: dev + "twin/desired"}, {Filter: "never/subscribed"}}}))
	add("device-subscribe-v311", fzV311|fzDevice,
		subscribe311(1, dev+"commands/#", 1, dev+"twin/desired", 2, "+/+/#", 0),
		p4(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe}, PacketID: 2,
			Filters: packets.Subscriptions{{Filter: dev + "commands/#"}}}))
	add("device-acks-unknown-v5", fzV5|fzDevice,
		p5(ack(packets.Pubrel, 9)), p5(ack(packets.Puback, 3)), p5(ack(packets.Pubrec, 4)), p5(ack(packets.Pubcomp, 5)))
	add("device-acks-unknown-v311", fzV311|fzDevice,
		p4(ack(packets.Pubrel, 9)), p4(ack(packets.Puback, 3)), p4(ack(packets.Pubrec, 4)), p4(ack(packets.Pubcomp, 5)))
	add("device-qos2-flow-v311", fzV311|fzDevice,
		p4(pub(2, false, 10, dev+"telemetry", `{"q":2}`, packets.Properties{})),
		p4(pub(2, false, 10, dev+"telemetry", `{"q":2}`, packets.Properties{})), // again, before PUBREL
		p4(ack(packets.Pubrel, 10)), p4(ack(packets.Pubrel, 10)))
	add("device-auth-v5", fzV5|fzDevice,
		p5(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Auth}, ReasonCode: 0x18,
			Properties: packets.Properties{AuthenticationMethod: "SCRAM-SHA-1", AuthenticationData: []byte("data")}}))
	add("device-auth-v311", fzV311|fzDevice, []byte{0xF0, 0})
	add("device-disconnect-will-v5", fzV5|fzDevice|fzWill|fzWillRetain,
		p5(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}, ReasonCode: 0x04,
			Properties: packets.Properties{SessionExpiryInterval: 30, SessionExpiryIntervalFlag: true, ReasonString: "bye"}}))
	add("device-disconnect-expiry-raise-v5", fzV5|fzDevice, // Session Expiry 0 at CONNECT, then raised [MQTT-3.14.2-2]
		p5(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect},
			Properties: packets.Properties{SessionExpiryInterval: 30, SessionExpiryIntervalFlag: true}}))
	add("device-will-v311", fzV311|fzDevice|fzWill|fzWillRetain)
	add("device-pingreq-flood", fzV311|fzDevice, repeat(ping, 5000))
	add("device-pingreq-flood-v5", fzV5|fzDevice, repeat(ping, 5000))
	add("device-second-connect-v311", fzV311|fzDevice, connectBytes(4, fuzzDevice, fuzzDevice, fuzzSecretPlaceholder, true, "", false, false))
	add("device-second-connect-v5", fzV5|fzDevice, connectBytes(5, fuzzDevice, fuzzDevice, fuzzSecretPlaceholder, true, "", false, false))
	add("device-publish-flood-v311", fzV311|fzDevice, repeat(p4(pub(0, false, 0, dev+"telemetry", `{"n":1}`, packets.Properties{})), 300))

	// Malformed packets after a good CONNECT.
	add("oversize-remaining-length", fzV5|fzDevice, []byte{0x30, 0xFF, 0xFF, 0xFF, 0x7F}, []byte("trickle"))
	add("oversize-remaining-length-v311", fzV311|fzAdmin, []byte{0x32, 0xFF, 0xFF, 0xFF, 0x7F, 0, 1, 'a', 0, 1})
	add("malformed-length-5-bytes", fzV5|fzDevice, []byte{0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01, 0, 1, 'a'})
	add("remaining-length-past-body", fzV311|fzDevice, []byte{0x30, 0x40, 0, 1, 'a'})
	add("zero-length-topic-v311", fzV311|fzAdmin, rawFrame(0x30, []byte{0, 0, 'x'}), rawFrame(0x32, []byte{0, 0, 0, 1, 'x'}))
	add("zero-length-topic-v5", fzV5|fzAdmin, rawFrame(0x32, []byte{0, 0, 0, 1, 0, 'x'}))
	add("topic-length-past-body", fzV311|fzAdmin, rawFrame(0x30, []byte{0xFF, 0xFF, 'a'}))
	add("wildcard-topic-publish", fzV5|fzAdmin, p5(pub(1, false, 1, "a/+/b", "x", packets.Properties{})), p5(pub(0, false, 0, "a/#", "x", packets.Properties{})))
	add("nul-and-invalid-utf8-topic", fzV311|fzAdmin, rawFrame(0x30, []byte{0, 3, 'a', 0, 'b', 'x'}), rawFrame(0x30, []byte{0, 2, 0xC3, 0x28, 'x'}))
	add("subscribe-no-filters-v311", fzV311|fzDevice, rawFrame(0x82, []byte{0, 1}))
	add("subscribe-no-filters-v5", fzV5|fzDevice, rawFrame(0x82, []byte{0, 1, 0}))
	add("unsubscribe-no-filters-v5", fzV5|fzDevice, rawFrame(0xA2, []byte{0, 1, 0}))
	add("subscribe-bad-flags", fzV311|fzAdmin, rawFrame(0x80, []byte{0, 1, 0, 1, 'a', 0}))
	add("subscribe-bad-options-v5", fzV5|fzAdmin, rawFrame(0x82, []byte{0, 1, 0, 0, 1, 'a', 0xFF}), rawFrame(0x82, []byte{0, 2, 0, 0, 1, 'a', 0x33}))
	add("subscribe-shared-nolocal-v5", fzV5|fzAdmin, rawFrame(0x82, cat([]byte{0, 1, 0, 0, 11}, []byte("$share/g/x/"), []byte{0x04})))
	add("subscribe-id-zero-v5", fzV5|fzAdmin, rawFrame(0x82, []byte{0, 1, 2, 0x0B, 0, 0, 1, 'a', 1}))
	add("subscribe-empty-filter", fzV311|fzAdmin, rawFrame(0x82, []byte{0, 1, 0, 0, 0}))
	add("pubrel-bad-flags", fzV311|fzDevice, []byte{0x60, 2, 0, 1})
	add("packet-id-zero-qos1-v311", fzV311|fzDevice, rawFrame(0x32, cat([]byte{0, byte(len(dev + "telemetry"))}, []byte(dev+"telemetry"), []byte{0, 0}, []byte(`{"a":1}`))))
	add("packet-id-zero-qos1-v5", fzV5|fzAdmin, rawFrame(0x32, []byte{0, 1, 'a', 0, 0, 0, 'x'}))
	add("packet-id-zero-subscribe", fzV311|fzAdmin, rawFrame(0x82, []byte{0, 0, 0, 1, 'a', 0}))
	add("qos3-publish", fzV311|fzAdmin, rawFrame(0x36, []byte{0, 1, 'a', 0, 1, 'x'}))
	add("reserved-type-0", fzV311|fzDevice, []byte{0x00, 0})
	add("connack-from-client", fzV5|fzDevice, []byte{0x20, 3, 0, 0, 0})
	add("duplicate-session-expiry-disconnect-v5", fzV5|fzDevice|fzPersistent,
		rawFrame(0xE0, []byte{0x00, 10, 0x11, 0, 0, 0, 5, 0x11, 0, 0, 0, 9}))
	add("duplicate-payload-format-publish-v5", fzV5|fzAdmin,
		rawFrame(0x30, []byte{0, 1, 'a', 4, 0x01, 1, 0x01, 0, 'x'}))
	add("duplicate-topic-alias-publish-v5", fzV5|fzAdmin,
		rawFrame(0x30, []byte{0, 1, 'a', 6, 0x23, 0, 1, 0x23, 0, 2, 'x'}))
	add("properties-length-past-body-v5", fzV5|fzAdmin, rawFrame(0x30, []byte{0, 1, 'a', 0x7F, 0x26}))
	add("property-unknown-v5", fzV5|fzAdmin, rawFrame(0x30, []byte{0, 1, 'a', 2, 0x7E, 0, 'x'}))
	add("subscription-id-in-publish-v5", fzV5|fzAdmin, rawFrame(0x30, []byte{0, 1, 'a', 2, 0x0B, 1, 'x'}))
	add("receive-maximum-exceeded-v5", fzV5|fzAdmin, func() []byte {
		var b []byte
		for i := 1; i <= 300; i++ {
			b = append(b, p5(pub(2, false, uint16(i), "fz/rm", "x", packets.Properties{}))...)
		}
		return b
	}())

	// The operator, the admin, the viewer, the refused.
	add("operator-command-v5", fzV5|fzOperator,
		p5(pub(1, false, 1, dev+"commands/reboot", `{"id":"c1","params":{"delay":1},"timeout":5}`, packets.Properties{ResponseTopic: "fz/reply", CorrelationData: []byte("x")})),
		p5(pub(1, false, 2, dev+"commands/reboot", `{"id":"c1"}`, packets.Properties{})), // the same id again
		p5(pub(0, false, 0, dev+"commands/x", `not json`, packets.Properties{})),
		p5(pub(1, true, 3, dev+"commands/retained", `{}`, packets.Properties{})),
		p5(pub(1, false, 4, dev+"twin/desired", `{"a":1}`, packets.Properties{})))
	add("operator-command-v311", fzV311|fzOperator|fzPersistent,
		p4(pub(1, false, 1, "devices/unknown/commands/reboot", `{"params":1}`, packets.Properties{})),
		subscribe311(2, "devices/+/responses/#", 1))
	add("operator-will-v5", fzV5|fzOperator|fzWill)
	add("admin-retained-v5", fzV5|fzAdmin,
		p5(pub(1, true, 1, "fz/r/1", "kept", full)),
		p5(pub(0, true, 0, "fz/r/1", "", packets.Properties{})),
		p5(pub(1, true, 2, dev+"status", `{"online":true}`, packets.Properties{})),
		p5(pub(1, true, 3, dev+"twin/desired", `{"evil":1}`, packets.Properties{})),
		p5(sub(4, packets.Properties{}, packets.Subscription{Filter: "fz/r/#", Qos: 2})))
	add("admin-sys-v311", fzV311|fzAdmin,
		p4(pub(1, false, 1, "$SYS/broker/uptime", "1", packets.Properties{})))
	add("admin-sys-v5", fzV5|fzAdmin,
		p5(pub(1, false, 1, "$SYS/x", "1", packets.Properties{})),
		p5(pub(1, false, 2, "$share/g/x", "1", packets.Properties{})),
		p5(sub(3, packets.Properties{}, packets.Subscription{Filter: "$SYS/#"}, packets.Subscription{Filter: "#", Qos: 2})))
	add("admin-persistent-all-v5", fzV5|fzAdmin|fzPersistent|fzWill,
		p5(sub(1, packets.Properties{SubscriptionIdentifier: []int{268435455}}, packets.Subscription{Filter: "#", Qos: 2})))
	add("viewer-publish-v311", fzV311|fzViewer, p4(pub(1, false, 1, dev+"telemetry", `{"a":1}`, packets.Properties{})))
	add("viewer-subscribe-v5", fzV5|fzViewer,
		p5(sub(1, packets.Properties{}, packets.Subscription{Filter: "devices/#"}, packets.Subscription{Filter: "$share/g/devices/#"}, packets.Subscription{Filter: "private/#"})))
	add("viewer-will-v5", fzV5|fzViewer|fzWill)
	add("anonymous-v5", fzV5|fzAnonymous, p5(pub(0, false, 0, "a", "x", packets.Properties{})))
	add("anonymous-v311", fzV311|fzAnonymous, p4(pub(0, false, 0, "a", "x", packets.Properties{})))
	add("wrong-password-v5", fzV5|fzWrongPass, p5(pub(0, false, 0, dev+"telemetry", `{"a":1}`, packets.Properties{})))

	// Streams with their own CONNECT.
	ph := fuzzSecretPlaceholder
	add("raw-no-connect", fzRaw, p4(pub(0, false, 0, "a", "x", packets.Properties{})))
	add("raw-connect-v5-properties", fzRaw, p5(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect},
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: fuzzDevice,
			UsernameFlag: true, Username: []byte(fuzzDevice), PasswordFlag: true, Password: []byte(ph),
			WillFlag: true, WillQos: 1, WillRetain: true, WillTopic: dev + "telemetry", WillPayload: []byte(`{"w":1}`),
			WillProperties: packets.Properties{WillDelayInterval: 2, MessageExpiryInterval: 10, ContentType: "j",
				ResponseTopic: dev + "responses/x", CorrelationData: []byte{9}, PayloadFormat: 1, PayloadFormatFlag: true,
				User: []packets.UserProperty{{Key: "k", Val: "v"}}}},
		Properties: packets.Properties{SessionExpiryInterval: 5, SessionExpiryIntervalFlag: true, ReceiveMaximum: 1,
			MaximumPacketSize: 64, TopicAliasMaximum: 3, RequestProblemInfo: 0, RequestProblemInfoFlag: true, RequestResponseInfo: 1,
			User: []packets.UserProperty{{Key: "a", Val: "b"}}}}),
		p5(sub(1, packets.Properties{}, packets.Subscription{Filter: dev + "commands/#", Qos: 2})),
		p5(pub(1, false, 2, dev+"telemetry", `{"long":"`+string(bytes.Repeat([]byte{'x'}, 100))+`"}`, packets.Properties{})))
	add("raw-connect-v5-auth-method", fzRaw, p5(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect},
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, ClientIdentifier: "fz-admin",
			UsernameFlag: true, Username: []byte("fz-admin"), PasswordFlag: true, Password: []byte(fuzzPassword)},
		Properties: packets.Properties{AuthenticationMethod: "SCRAM", AuthenticationData: []byte("x")}}))
	add("raw-connect-v5-admin-persistent", fzRaw, p5(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect},
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), ClientIdentifier: "fz-admin-2",
			UsernameFlag: true, Username: []byte("fz-admin"), PasswordFlag: true, Password: []byte(fuzzPassword)},
		Properties: packets.Properties{SessionExpiryInterval: 0xFFFFFFFF, SessionExpiryIntervalFlag: true, TopicAliasMaximum: 65535}}),
		p5(sub(1, packets.Properties{}, packets.Subscription{Filter: "#", Qos: 1})))
	// 3.1.1 CONNECT flags that contradict each other [MQTT-3.1.2-11]
	// [MQTT-3.1.2-13] [MQTT-3.1.2-15] [MQTT-3.1.2-22] [MQTT-3.1.2-3].
	conn311 := func(flags byte, rest ...string) []byte {
		var b bytes.Buffer
		mqttStr(&b, "MQTT")
		b.Write([]byte{4, flags, 0, 60})
		for _, s := range rest {
			mqttStr(&b, s)
		}
		return rawFrame(0x10, b.Bytes())
	}
	add("raw-311-will-qos-without-will", fzRaw, conn311(0x02|0x08|0xC0, fuzzDevice, fuzzDevice, ph))
	add("raw-311-will-retain-without-will", fzRaw, conn311(0x02|0x20|0xC0, fuzzDevice, fuzzDevice, ph))
	add("raw-311-will-qos3", fzRaw, conn311(0x02|0x04|0x18|0xC0, fuzzDevice, dev+"telemetry", "{}", fuzzDevice, ph))
	add("raw-311-will-payload-no-topic", fzRaw, conn311(0x02|0x04|0xC0, fuzzDevice, "", "{}", fuzzDevice, ph))
	add("raw-311-will-wildcard", fzRaw, conn311(0x02|0x04|0xC0, "fz-admin", "fz/#", "{}", "fz-admin", fuzzPassword))
	add("raw-311-password-without-username", fzRaw, conn311(0x02|0x40, fuzzDevice, ph))
	add("raw-311-reserved-flag", fzRaw, conn311(0x02|0x01|0xC0, fuzzDevice, fuzzDevice, ph))
	add("raw-311-empty-id-persistent", fzRaw, conn311(0xC0, "", "fz-admin", fuzzPassword))
	add("raw-311-bad-protocol-name", fzRaw, rawFrame(0x10, cat([]byte{0, 4}, []byte("MQTX"), []byte{4, 2, 0, 60, 0, 1, 'a'})))
	add("raw-311-protocol-level-6", fzRaw, rawFrame(0x10, cat([]byte{0, 4}, []byte("MQTT"), []byte{6, 2, 0, 60, 0, 1, 'a'})))
	add("raw-connect-flags-nonzero-header", fzRaw, append([]byte{0x11}, conn311(0x02|0xC0, "fz-admin", "fz-admin", fuzzPassword)[1:]...))
	add("raw-connect-truncated", fzRaw, conn311(0x02|0xC0, fuzzDevice, fuzzDevice, ph)[:20])
	add("raw-duplicate-session-expiry-connect-v5", fzRaw, rawFrame(0x10, cat([]byte{0, 4}, []byte("MQTT"),
		[]byte{5, 0x02, 0, 60, 10, 0x11, 0, 0, 0, 5, 0x11, 0, 0, 0, 9, 0, 3}, []byte("fza"))))
	add("raw-oversize-connect", fzRaw, []byte{0x10, 0xFF, 0xFF, 0xFF, 0x7F, 0, 4, 'M', 'Q', 'T', 'T'})
	return out
}
