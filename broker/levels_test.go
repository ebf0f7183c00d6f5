package broker

import (
	"context"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"
	mqtt "github.com/mochi-mqtt/server/v2"
)

// deepTopic is prefix followed by levels made up to n levels in all.
func deepTopic(prefix string, n int) string {
	return prefix + strings.Repeat("a/", n-strings.Count(prefix, "/")-1) + "x"
}

// TestTopicLevels: at the defaults (mqtt.max_topic_levels 32), a device
// may subscribe to and publish on its own topics of 32 levels but not 33:
// a deeper SUBSCRIBE filter gets 0x8F (3.1.1: 0x80) while the packet's
// other filters are granted, a deeper PUBLISH 0x90 (3.1.1 at QoS 1:
// disconnected), retained or not, and is neither retained nor routed; a
// will CONNACK 0x90. Admins are held to it too. The engine adds nothing
// for what is refused (a filter or retained topic of 30,000 levels cost it
// 19 MB), and the refusals are counted, not as ACL denials. The same
// whether the gate checks a PUBLISH in its own OnPublish or in the
// publish rates' hook's, as tether serve has it.
func TestTopicLevels(t *testing.T) {
	t.Run("gate", func(t *testing.T) { testTopicLevels(t) })
	t.Run("publish-rates", func(t *testing.T) {
		testTopicLevels(t, NewPublishLimit(PublishLimitOptions{DeviceRate: 100, PerClient: 1000}))
	})
}

// TestTopicLevelsOneCall: with the hooks in tether serve's order (the
// publish rates first, then the retained bounds), the levels of a
// PUBLISH are checked in the publish rates' OnPublish: the gate adds no
// OnPublish call of its own (some 55 ns a message), nor does the publish
// rates' hook with no rate.
func TestTopicLevelsOneCall(t *testing.T) {
	for _, c := range []struct {
		name string
		pl   PublishLimitOptions
	}{{"rates", PublishLimitOptions{DeviceRate: 100}}, {"no-rates", PublishLimitOptions{}}} {
		t.Run(c.name, func(t *testing.T) {
			pl := NewPublishLimit(c.pl)
			e := startLimitEnv(t, t.TempDir(), DefaultOptions(), DefaultRetainedLimitOptions(), pl)
			var got []string
			for _, en := range e.b.set.on[mqtt.OnPublish] { // the hooks the engine's one calls (hookSet)
				if en.h.Provides(mqtt.OnPublish) {
					got = append(got, en.h.ID())
				}
			}
			// The retained bounds' and the session store's follow.
			if len(got) == 0 || got[0] != "tether-publish-limit" || slices.Contains(got, "tether-gate") {
				t.Fatalf("hooks called on each PUBLISH: %q, want the publish rates' first and not the gate's", got)
			}
			c3, lost := dial3(t, e.tcp, "lv", "lv", e.device(t, "lv"), true)
			c3.Publish(deepTopic("devices/lv/responses/", 33), 1, true, "1")
			waitLost(t, lost, "a 3.1.1 publish of 33 levels at QoS 1")
			if p := e.b.levelsRefused.publish.Load(); p != 1 {
				t.Fatalf("refused publishes: %d, want 1", p)
			}
		})
	}
}

func testTopicLevels(t *testing.T, first ...mqtt.Hook) {
	e := startLimitEnv(t, t.TempDir(), DefaultOptions(), DefaultRetainedLimitOptions(), first...)
	if got := len(strings.Split(deepTopic("devices/lv/commands/", 32), "/")); got != 32 {
		t.Fatalf("deepTopic made %d levels", got)
	}
	watch, _ := dial5(t, e.tcp, "watch", "root", e.user(t, "root", "admin"), 0)
	if got := watch.sub(t, "devices/lv/responses/#"); !slices.Equal(got, []byte{1}) {
		t.Fatalf("admin's subscription: SUBACK %x", got)
	}
	c, _ := dial5(t, e.tcp, "lv", "lv", e.device(t, "lv"), 0)
	denied := authCount(t, e.auth.m.denied.WithLabelValues("subscribe"))

	cmd32, cmd33 := deepTopic("devices/lv/commands/", 32), deepTopic("devices/lv/commands/", 33)
	huge := deepTopic("devices/lv/commands/", 30000)
	got := c.sub(t, cmd32, cmd33, huge, "$share/g/"+cmd33, "$share/g/"+cmd32, "devices/lv/commands/#")
	if want := []byte{1, 0x8F, 0x8F, 0x8F, 0x87, 1}; !slices.Equal(got, want) {
		t.Fatalf("SUBACK %x, want %x", got, want) // a device may not share (0x87)
	}
	if n := engineSubs(e.b, "lv"); n != 2 {
		t.Fatalf("engine holds %d subscriptions for the device, want 2", n)
	}
	if got := watch.sub(t, deepTopic("a/", 33), deepTopic("$share/g/a/", 35), deepTopic("$share/g/a/", 34)); !slices.Equal(got, []byte{0x8F, 0x8F, 1}) {
		t.Fatalf("admin's deep filters: SUBACK %x, want 8f 8f 01", got)
	}
	if n := authCount(t, e.auth.m.denied.WithLabelValues("subscribe")); n != denied+1 {
		t.Fatalf("ACL denials %v, was %v: only the device's shared subscription is one", n, denied)
	}

	resp32, resp33 := deepTopic("devices/lv/responses/", 32), deepTopic("devices/lv/responses/", 33)
	for _, retain := range []bool{false, true} {
		for _, qos := range []byte{1, 2} {
			if code := c.pub(t, resp33, []byte("1"), qos, retain); code != 0x90 {
				t.Fatalf("publish of 33 levels, QoS %d, retain %v: 0x%02x, want 0x90", qos, retain, code)
			}
		}
		if code := c.pub(t, deepTopic("devices/lv/responses/", 30000), []byte("1"), 1, retain); code != 0x90 {
			t.Fatalf("publish of 30,000 levels, retain %v: 0x%02x, want 0x90", retain, code)
		}
	}
	for _, topic := range []string{resp33, deepTopic("devices/lv/responses/", 30000)} {
		if _, ok := e.b.Server.Topics.Retained.Get(topic); ok {
			t.Fatalf("a refused publish was retained (%d levels)", strings.Count(topic, "/")+1)
		}
	}
	if code := c.pub(t, resp32, []byte("ok"), 1, false); code != 0 {
		t.Fatalf("publish of 32 levels: 0x%02x", code)
	}
	select {
	case p := <-watch.got:
		if p.Topic != resp32 {
			t.Fatalf("delivered %q, want only the 32-level message", p.Topic)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the 32-level message was not delivered")
	}

	// A will of 33 levels.
	conn, err := net.DialTimeout("tcp", e.tcp, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	w := paho5.NewClient(paho5.ClientConfig{Conn: conn})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ca, _ := w.Connect(ctx, &paho5.Connect{ClientID: "lw", KeepAlive: 30, CleanStart: true,
		Username: "lw", UsernameFlag: true, Password: []byte(e.device(t, "lw")), PasswordFlag: true,
		WillMessage: &paho5.WillMessage{Topic: deepTopic("devices/lw/responses/", 33), Payload: []byte("gone"), Retain: true}})
	if ca == nil || ca.ReasonCode != 0x90 {
		t.Fatalf("CONNACK %+v, want 0x90", ca)
	}

	r := &e.b.levelsRefused
	if s, p, wl := r.subscribe.Load(), r.publish.Load(), r.will.Load(); s != 5 || p != 6 || wl != 1 {
		t.Fatalf("refused: subscribe %d, publish %d, will %d; want 5, 6, 1", s, p, wl)
	}

	t.Run("mqtt311", func(t *testing.T) {
		c3, lost := dial3(t, e.tcp, "lv3", "lv3", e.device(t, "lv3"), true)
		got := sub3(t, c3, deepTopic("devices/lv3/commands/", 33), deepTopic("devices/lv3/commands/", 32))
		if got[deepTopic("devices/lv3/commands/", 33)] != 0x80 || got[deepTopic("devices/lv3/commands/", 32)] != 1 {
			t.Fatalf("SUBACK %v, want 0x80 for 33 levels and 1 for 32", got)
		}
		c3.Publish(deepTopic("devices/lv3/responses/", 33), 1, true, "1")
		waitLost(t, lost, "a 3.1.1 publish of 33 levels at QoS 1")
		if _, ok := e.b.Server.Topics.Retained.Get(deepTopic("devices/lv3/responses/", 33)); ok {
			t.Fatal("a refused 3.1.1 publish was retained")
		}
	})
}
