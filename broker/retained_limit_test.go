package broker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tether-iot/tether/devices"
)

// retainedTopics returns the topics the engine retains under prefix,
// sorted.
func retainedTopics(b *Broker, prefix string) []string {
	var out []string
	for topic := range b.Server.Topics.Retained.GetAll() {
		if strings.HasPrefix(topic, prefix) {
			out = append(out, topic)
		}
	}
	slices.Sort(out)
	return out
}

func refusedCount(t *testing.T, l *RetainedLimit, limit string) float64 {
	t.Helper()
	return testCounter(t, l.refused.WithLabelValues(limit))
}

// usage fails the test unless owner's retained messages are count and
// size bytes (topics, payloads, properties), besides their levels:
// retainedLevelCost for each prefix their topics need (levelBytes).
func usage(t *testing.T, l *RetainedLimit, owner string, count, size int64) {
	t.Helper()
	topics := l.Owned(owner)
	if owner == "" {
		topics = nil
		for topic, pk := range l.srv.Load().Topics.Retained.GetAll() {
			if len(pk.Payload) > 0 && !isSysTopic(topic) {
				topics = append(topics, topic)
			}
		}
	}
	size += levelBytes(topics...)
	if c, b := l.RetainedUsage(owner); c != count || b != size {
		t.Fatalf("retained of %q: %d messages, %d bytes; want %d, %d (%d of levels)", owner, c, b, count, size, levelBytes(topics...))
	}
}

// levelBytes is what the levels of topics count for: retainedLevelCost
// for each distinct prefix (a, a/b, a/b/c for a/b/c).
func levelBytes(topics ...string) int64 {
	prefixes := map[string]bool{}
	for _, topic := range topics {
		for i := range len(topic) {
			if topic[i] == '/' {
				prefixes[topic[:i]] = true
			}
		}
		prefixes[topic] = true
	}
	return int64(len(prefixes)) * retainedLevelCost
}

// received collects a watcher's payloads until a marker arrives.
func drain(t *testing.T, l *lim5, marker string) []string {
	t.Helper()
	var got []string
	deadline := time.After(10 * time.Second)
	for {
		select {
		case p := <-l.got:
			if string(p.Payload) == marker {
				return got
			}
			got = append(got, string(p.Payload))
		case <-deadline:
			t.Fatalf("no %q after 10s (got %q)", marker, got)
		}
	}
}

// TestRetainedLimitDevice: with mqtt.max_retained_messages_per_device 3
// and mqtt.max_retained_bytes_per_device 1,000 besides six levels (its
// topics devices/r5/responses/{n} need 3 levels and 1 each), an MQTT 5 device's
// retained publishes past either bound get PUBACK or PUBREC 0x97 and are
// neither retained nor routed; replacing its own message with one no
// larger, and deleting, always work, and a deletion frees room.
func TestRetainedLimitDevice(t *testing.T) {
	e := startLimitEnv(t, t.TempDir(), DefaultOptions(),
		RetainedLimitOptions{DeviceMessages: 3, DeviceBytes: 1000 + 6*retainedLevelCost})
	watcher, _ := dial5(t, e.tcp, "watcher", "root", e.user(t, "root", devices.RoleAdmin), 0)
	watcher.sub(t, "devices/r5/responses/#")
	d, _ := dial5(t, e.tcp, "r5", "r5", e.device(t, "r5"), 0)
	topic := func(i int) string { return fmt.Sprint("devices/r5/responses/", i) }
	small := []byte(`{"status":"ok"}`) // 15 bytes; 37 with its topic
	for i := 1; i <= 3; i++ {
		if code := d.pub(t, topic(i), small, 1, true); code != 0 {
			t.Fatalf("retained %d: 0x%02x", i, code)
		}
	}
	if code := d.pub(t, topic(4), []byte("refused-q1"), 1, true); code != 0x97 {
		t.Fatalf("4th retained, QoS 1: PUBACK 0x%02x, want 0x97", code)
	}
	if code := d.pub(t, topic(4), []byte("refused-q2"), 2, true); code != 0x97 {
		t.Fatalf("4th retained, QoS 2: PUBREC 0x%02x, want 0x97", code)
	}
	d.pub(t, topic(4), []byte("refused-q0"), 0, true)
	if code := d.pub(t, topic(1), []byte(`{"status":"error"}`), 1, true); code != 0 {
		t.Fatalf("replacing its own message at the bound: 0x%02x", code)
	}
	if code := d.pub(t, topic(5), []byte("not retained"), 1, false); code != 0 {
		t.Fatalf("a message not retained at the bound: 0x%02x", code)
	}
	d.pub(t, topic(9), []byte("end"), 1, false)
	// The broker's own retained status of the device counts for nobody.
	status, _ := e.b.Server.Topics.Retained.Get(StatusTopic("r5"))
	got := drain(t, watcher, "end")
	for _, p := range got {
		if strings.HasPrefix(p, "refused") {
			t.Fatalf("a refused message was routed: %q", got)
		}
	}
	if len(got) != 5 {
		t.Fatalf("watcher got %q, want the 3 retained, the replacement and the plain message", got)
	}
	want := []string{topic(1), topic(2), topic(3)}
	if got := retainedTopics(e.b, "devices/r5/responses/"); !slices.Equal(got, want) {
		t.Fatalf("engine retains %q, want %q", got, want)
	}
	usage(t, e.lim, "r5", 3, 37+40+37)
	if n := refusedCount(t, e.lim, limitDeviceMessages); n != 3 {
		t.Fatalf("refused device_messages %v, want 3", n)
	}

	// A deletion is always allowed and frees room.
	if code := d.pub(t, topic(2), nil, 1, true); code != 0 {
		t.Fatalf("delete: 0x%02x", code)
	}
	if code := d.pub(t, topic(4), small, 1, true); code != 0 {
		t.Fatalf("after a deletion: 0x%02x", code)
	}
	usage(t, e.lim, "r5", 3, 37+40+37)

	// Bytes: 114 held (40, 37, 37), and six levels. Replacing its own
	// 37-byte message by 22+850 stays within 1,000 (949), by 22+930 does
	// not (1,029); with one deleted (912 held, and five levels), a new
	// 120-byte message on a new level does not either.
	big := bytes.Repeat([]byte("x"), 1000)
	if code := d.pub(t, topic(3), big[:850], 1, true); code != 0 {
		t.Fatalf("own replacement within the bytes bound: 0x%02x", code)
	}
	if code := d.pub(t, topic(3), big[:930], 1, true); code != 0x97 {
		t.Fatalf("own replacement past the bytes bound: 0x%02x", code)
	}
	d.pub(t, topic(4), nil, 1, true)
	if code := d.pub(t, "devices/r5/telemetry", big[:100], 1, true); code != 0x97 {
		t.Fatalf("past the bytes bound: 0x%02x", code)
	}
	if n := refusedCount(t, e.lim, limitDeviceBytes); n != 2 {
		t.Fatalf("refused device_bytes %v, want 2", n)
	}
	usage(t, e.lim, "r5", 2, 40+(22+850))
	usage(t, e.lim, "", 3, 40+(22+850)+retainedSize(status)) // and its status
}

// TestRetainedLimit311: a 3.1.1 device past its bound has a QoS 0
// retained message dropped (its connection stays) and is disconnected for
// a QoS 1 one; neither is retained.
func TestRetainedLimit311(t *testing.T) {
	e := startLimitEnv(t, t.TempDir(), DefaultOptions(), RetainedLimitOptions{DeviceMessages: 1})
	c, lost := dial3(t, e.tcp, "v3", "v3", e.device(t, "v3"), true)
	waitToken(t, "first", c.Publish("devices/v3/responses/1", 1, true, "ok"))
	waitToken(t, "qos 0 past the bound", c.Publish("devices/v3/responses/2", 0, true, "dropped"))
	waitToken(t, "after it", c.Publish("devices/v3/telemetry", 1, false, `{"t":1}`))
	if !c.IsConnected() {
		t.Fatal("disconnected for a QoS 0 message")
	}
	c.Publish("devices/v3/responses/3", 1, true, "refused")
	waitLost(t, lost, "QoS 1 retained past the bound")
	if got := retainedTopics(e.b, "devices/v3/responses/"); !slices.Equal(got, []string{"devices/v3/responses/1"}) {
		t.Fatalf("engine retains %q", got)
	}
	if n := refusedCount(t, e.lim, limitDeviceMessages); n != 2 {
		t.Fatalf("refused %v, want 2", n)
	}
}

// TestRetainedOwnership: a device's retained message replaced by another
// device or a person, or deleted by anyone, no longer counts for it; the
// broker's own messages count for nobody.
func TestRetainedOwnership(t *testing.T) {
	e := startLimitEnv(t, t.TempDir(), DefaultOptions(), RetainedLimitOptions{DeviceMessages: 2})
	grant := devices.TopicGrant{Filter: "shared/#", Access: devices.AccessPublish}
	a, _ := dial5(t, e.tcp, "own-a", "own-a", e.device(t, "own-a", grant), 0)
	b, _ := dial5(t, e.tcp, "own-b", "own-b", e.device(t, "own-b", grant), 0)
	admin, _ := dial5(t, e.tcp, "admin-1", "root", e.user(t, "root", devices.RoleAdmin), 0)
	pub := func(c *lim5, topic, payload string, want byte) {
		t.Helper()
		if code := c.pub(t, topic, []byte(payload), 1, true); code != want {
			t.Fatalf("%s: 0x%02x, want 0x%02x", topic, code, want)
		}
	}
	pub(a, "shared/1", "a", 0)
	pub(a, "shared/2", "a", 0)
	pub(a, "shared/3", "a", 0x97)
	usage(t, e.lim, "own-a", 2, 2*9)
	pub(b, "shared/1", "b", 0) // B takes it over
	usage(t, e.lim, "own-a", 1, 9)
	usage(t, e.lim, "own-b", 1, 9)
	pub(a, "shared/3", "a", 0)
	pub(admin, "shared/2", "admin", 0) // a person takes it over
	usage(t, e.lim, "own-a", 1, 9)
	pub(a, "shared/4", "a", 0)
	pub(a, "shared/5", "a", 0x97)
	pub(b, "shared/3", "", 0) // anyone's deletion frees A's room
	usage(t, e.lim, "own-a", 1, 9)
	pub(a, "shared/5", "a", 0)
	// The broker's own messages belong to nobody (a device's status).
	if err := e.b.Server.Publish("devices/own-a/status", []byte(`{"online":true}`), true, 1); err != nil {
		t.Fatal(err)
	}
	usage(t, e.lim, "own-a", 2, 18)
	usage(t, e.lim, "inline", 0, 0)
	if c, _ := e.lim.RetainedUsage(""); c != int64(e.b.Server.Topics.Retained.Len()-sysRetained(e.b)) {
		t.Fatalf("counted %d retained messages, the engine holds %d besides $SYS", c, e.b.Server.Topics.Retained.Len()-sysRetained(e.b))
	}
}

func sysRetained(b *Broker) int { return len(retainedTopics(b, "$SYS/")) }

// TestRetainedLimitGlobal: mqtt.max_retained_messages and
// mqtt.max_retained_bytes bound everyone's retained messages together,
// people's too; replacing a message by one no larger still works, and
// the broker's own messages are never refused.
func TestRetainedLimitGlobal(t *testing.T) {
	// 5: the device's status, 2 of the device's, 2 of the admin's.
	const maxBytes = 10_000 // some 6,000 of levels in the end
	e := startLimitEnv(t, t.TempDir(), DefaultOptions(), RetainedLimitOptions{MaxMessages: 5, MaxBytes: maxBytes})
	g1, _ := dial5(t, e.tcp, "g1", "g1", e.device(t, "g1"), 0)
	admin, _ := dial5(t, e.tcp, "admin-1", "root", e.user(t, "root", devices.RoleAdmin), 0)
	for i, c := range []*lim5{g1, g1, admin, admin} {
		topic := fmt.Sprint("devices/g1/responses/", i)
		if c == admin {
			topic = fmt.Sprint("config/", i)
		}
		if code := c.pub(t, topic, []byte("v"), 1, true); code != 0 {
			t.Fatalf("%s: 0x%02x", topic, code)
		}
	}
	if code := g1.pub(t, "devices/g1/telemetry", []byte("v"), 1, true); code != 0x97 {
		t.Fatalf("device past the global count: 0x%02x", code)
	}
	if code := admin.pub(t, "config/9", []byte("v"), 1, true); code != 0x97 {
		t.Fatalf("admin past the global count: 0x%02x", code)
	}
	if code := admin.pub(t, "config/2", []byte("w"), 1, true); code != 0 {
		t.Fatalf("replacement at the global count: 0x%02x", code)
	}
	if n := refusedCount(t, e.lim, limitMessages); n != 2 {
		t.Fatalf("refused messages %v, want 2", n)
	}
	// The broker's own are taken beyond it (and count).
	if err := e.b.Server.Publish("devices/g1/twin/desired", []byte(`{"version":1}`), true, 1); err != nil {
		t.Fatal(err)
	}
	if got := retainedTopics(e.b, "devices/g1/twin/desired"); len(got) != 1 {
		t.Fatal("the broker's desired twin refused")
	}
	if c, _ := e.lim.RetainedUsage(""); c != 6 {
		t.Fatalf("counted %d, want 6", c)
	}
	// Bytes: deleting three makes room for messages, not for 10,000
	// bytes; config/big needs two levels again.
	for _, topic := range []string{"config/2", "config/3", "devices/g1/twin/desired"} {
		admin.pub(t, topic, nil, 1, true)
	}
	_, held := e.lim.RetainedUsage("")
	room := maxBytes - held - int64(len("config/big")) - 2*retainedLevelCost
	if code := admin.pub(t, "config/big", bytes.Repeat([]byte("x"), int(room)+1), 1, true); code != 0x97 {
		t.Fatalf("past the global bytes: 0x%02x", code)
	}
	if code := admin.pub(t, "config/big", bytes.Repeat([]byte("x"), int(room)), 1, true); code != 0 {
		t.Fatalf("within the global bytes: 0x%02x", code)
	}
	if c, b := e.lim.RetainedUsage(""); c != 4 || b != maxBytes {
		t.Fatalf("retained: %d messages, %d bytes, want 4, %d", c, b, maxBytes)
	}
	if n := refusedCount(t, e.lim, limitBytes); n != 1 {
		t.Fatalf("refused bytes %v, want 1", n)
	}
}

// TestRetainedLimitRestart: the counts are rebuilt from the retained
// messages reloaded at start-up: a device at its bound is still held to
// it after a restart, and a deletion still frees room.
func TestRetainedLimitRestart(t *testing.T) {
	dir := t.TempDir()
	rl := RetainedLimitOptions{DeviceMessages: 3, MaxMessages: 100}
	e := startLimitEnv(t, dir, DefaultOptions(), rl)
	secret := e.device(t, "rs")
	d, _ := dial5(t, e.tcp, "rs", "rs", secret, 0)
	for i := range 4 {
		want := byte(0)
		if i == 3 {
			want = 0x97
		}
		if code := d.pub(t, fmt.Sprint("devices/rs/responses/", i), []byte("v"), 1, true); code != want {
			t.Fatalf("%d: 0x%02x", i, code)
		}
	}
	d.close()
	e.stop(t)

	e = startLimitEnv(t, dir, DefaultOptions(), rl)
	if got := retainedTopics(e.b, "devices/rs/responses/"); len(got) != 3 {
		t.Fatalf("reloaded %q", got)
	}
	usage(t, e.lim, "rs", 3, 3*23)
	d, _ = dial5(t, e.tcp, "rs", "rs", secret, 0)
	if code := d.pub(t, "devices/rs/responses/3", []byte("v"), 1, true); code != 0x97 {
		t.Fatalf("after the restart: 0x%02x, want 0x97", code)
	}
	if code := d.pub(t, "devices/rs/responses/0", nil, 1, true); code != 0 {
		t.Fatalf("delete: 0x%02x", code)
	}
	if code := d.pub(t, "devices/rs/responses/3", []byte("v"), 1, true); code != 0 {
		t.Fatalf("after a deletion: 0x%02x", code)
	}
	usage(t, e.lim, "rs", 3, 3*23)
}

// TestRetainedWillPastBound: a retained will that would pass its device's
// bound goes out unretained: subscribers get it, it is not retained.
func TestRetainedWillPastBound(t *testing.T) {
	e := startLimitEnv(t, t.TempDir(), DefaultOptions(), RetainedLimitOptions{DeviceMessages: 1})
	watcher, _ := dial5(t, e.tcp, "watcher", "root", e.user(t, "root", devices.RoleAdmin), 0)
	watcher.sub(t, "devices/wd/#")
	secret := e.device(t, "wd")
	d, _ := dial5(t, e.tcp, "wd", "wd", secret, 0)
	d.pub(t, "devices/wd/responses/1", []byte("v"), 1, true)
	d.close()
	conn, err := net.DialTimeout("tcp", e.tcp, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c := paho5.NewClient(paho5.ClientConfig{Conn: conn})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if ca, err := c.Connect(ctx, &paho5.Connect{ClientID: "wd", KeepAlive: 30, CleanStart: true,
		Username: "wd", UsernameFlag: true, Password: []byte(secret), PasswordFlag: true,
		WillMessage: &paho5.WillMessage{Topic: "devices/wd/telemetry", Payload: []byte(`{"gone":1}`), QoS: 1, Retain: true}}); err != nil || ca.ReasonCode != 0 {
		t.Fatalf("connect with a will: %v %+v", err, ca)
	}
	conn.Close() // no DISCONNECT: the will goes
	<-c.Done()
	var got []string
	deadline := time.After(10 * time.Second)
	for !slices.Contains(got, `{"gone":1}`) {
		select {
		case p := <-watcher.got:
			got = append(got, string(p.Payload))
		case <-deadline:
			t.Fatalf("no will; got %q", got)
		}
	}
	if got := retainedTopics(e.b, "devices/wd/telemetry"); len(got) != 0 {
		t.Fatal("the will was retained past the bound")
	}
	if n := refusedCount(t, e.lim, limitDeviceMessages); n != 1 {
		t.Fatalf("refused %v, want 1", n)
	}
}

// TestRetainedLimitDefault is the black-box report at the defaults: a
// device retaining 1 MB messages on topics of its own as fast as it can
// keeps 16 of them (16 MiB); the others get 0x97 and the engine holds
// no more.
func TestRetainedLimitDefault(t *testing.T) {
	e := startLimitEnv(t, t.TempDir(), DefaultOptions(), DefaultRetainedLimitOptions())
	d, _ := dial5(t, e.tcp, "evil", "evil", e.device(t, "evil"), 0)
	payload := bytes.Repeat([]byte("x"), 1_000_000)
	accepted := 0
	for i := range 24 {
		switch code := d.pub(t, fmt.Sprintf("devices/evil/responses/r%06d", i), payload, 1, true); code {
		case 0:
			accepted++
		case packets.ErrQuotaExceeded.Code:
		default:
			t.Fatalf("publish %d: 0x%02x", i, code)
		}
	}
	if accepted != 16 {
		t.Fatalf("%d of 24 accepted, want 16 (16 MiB)", accepted)
	}
	if got := retainedTopics(e.b, "devices/evil/responses/"); len(got) != 16 {
		t.Fatalf("engine retains %d of the device's messages, want 16", len(got))
	}
	if c, b := e.lim.RetainedUsage("evil"); c != 16 || b > 16<<20 {
		t.Fatalf("device holds %d messages, %d bytes", c, b)
	}
}

// TestDeletedDeviceRetained: deleting a device deletes every retained
// message it set that is still retained, wherever the topic (its grant's,
// its will's), for good (a restart brings none back); what others set on
// the same topics stays. A device registered again under the id inherits
// none of them: its bound is whole.
// The same without bounds: the index that knows whose each message is
// is kept all the same.
func TestDeletedDeviceRetained(t *testing.T) {
	t.Run("bounded", func(t *testing.T) { testDeletedDeviceRetained(t, RetainedLimitOptions{DeviceMessages: 3}) })
	t.Run("unbounded", func(t *testing.T) { testDeletedDeviceRetained(t, RetainedLimitOptions{}) })
}

func testDeletedDeviceRetained(t *testing.T, rl RetainedLimitOptions) {
	dir := t.TempDir()
	e := startLimitEnv(t, dir, DefaultOptions(), rl)
	grant := devices.TopicGrant{Filter: "tele/%c/#", Access: devices.AccessPublish}
	secret := e.device(t, "dd", grant)
	admin, _ := dial5(t, e.tcp, "admin-1", "root", e.user(t, "root", devices.RoleAdmin), 0)
	other, _ := dial5(t, e.tcp, "dd2", "dd2", e.device(t, "dd2", grant), 0)

	// The device's will, retained on its grant's topic.
	conn, err := net.DialTimeout("tcp", e.tcp, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c := paho5.NewClient(paho5.ClientConfig{Conn: conn})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if ca, err := c.Connect(ctx, &paho5.Connect{ClientID: "dd", KeepAlive: 30, CleanStart: true,
		Username: "dd", UsernameFlag: true, Password: []byte(secret), PasswordFlag: true,
		WillMessage: &paho5.WillMessage{Topic: "tele/dd/lwt", Payload: []byte("gone"), QoS: 1, Retain: true}}); err != nil || ca.ReasonCode != 0 {
		t.Fatalf("connect with a will: %v %+v", err, ca)
	}
	conn.Close() // no DISCONNECT: the will goes
	<-c.Done()
	checkFor(t, 5*time.Second, func() error {
		if got := retainedTopics(e.b, "tele/dd/lwt"); len(got) == 0 {
			return errors.New("the will is not retained yet")
		}
		return nil
	})

	d, _ := dial5(t, e.tcp, "dd", "dd", secret, 0)
	pub := func(c *lim5, topic, payload string) {
		t.Helper()
		if code := c.pub(t, topic, []byte(payload), 1, true); code != 0 {
			t.Fatalf("%s: 0x%02x", topic, code)
		}
	}
	pub(d, "tele/dd/a", "mine")
	pub(d, "tele/dd/b", "mine")
	pub(admin, "tele/dd/b", "admin's") // taken over: no longer the device's
	pub(admin, "tele/dd/config", "admin's")
	pub(other, "tele/dd2/a", "other's")
	pub(d, "devices/dd/twin/reported", `{"v":1}`)
	pub(admin, "devices/dd/note", "admin's, under the device's topics")
	usage(t, e.lim, "dd", 3, int64(len("tele/dd/lwt")+4+len("tele/dd/a")+4+len("devices/dd/twin/reported")+7))

	if err := e.reg.DeleteDevice(context.Background(), "dd"); err != nil {
		t.Fatal(err)
	}
	gone := []string{"tele/dd/lwt", "tele/dd/a", "devices/dd/twin/reported", "devices/dd/note"}
	kept := map[string]string{"tele/dd/b": "admin's", "tele/dd/config": "admin's", "tele/dd2/a": "other's"}
	check := func(what string) {
		t.Helper()
		checkFor(t, 5*time.Second, func() error {
			for _, topic := range gone {
				if _, ok := e.b.Server.Topics.Retained.Get(topic); ok {
					return fmt.Errorf("%s: %s still retained", what, topic)
				}
			}
			return nil
		})
		for topic, want := range kept {
			if pk, ok := e.b.Server.Topics.Retained.Get(topic); !ok || string(pk.Payload) != want {
				t.Fatalf("%s: %s: %q, want %q kept", what, topic, pk.Payload, want)
			}
		}
		usage(t, e.lim, "dd", 0, 0)
	}
	check("after the deletion")

	// The deletions are in the session store: a restart brings none back.
	admin.close()
	other.close()
	e.stop(t)
	e = startLimitEnv(t, dir, DefaultOptions(), rl)
	check("after a restart")

	// Registered again: a subscriber sees none of the old device's
	// messages, and the device has its whole bound.
	secret = e.device(t, "dd", grant)
	w, _ := dial5(t, e.tcp, "watcher", "root", "pw-root-123", 0)
	w.sub(t, "tele/dd/#")
	// The engine sends a subscription's retained messages after its
	// SUBACK: the admin's two come first, so that none of the device's
	// new ones is also delivered as retained.
	var got []string
	for len(got) < 2 {
		select {
		case p := <-w.got:
			got = append(got, string(p.Payload))
		case <-time.After(10 * time.Second):
			t.Fatalf("the retained messages of tele/dd/#: %q after 10s", got)
		}
	}
	d, _ = dial5(t, e.tcp, "dd", "dd", secret, 0)
	for i := range 2 {
		pub(d, fmt.Sprintf("tele/dd/n%d", i), "new")
	}
	pub(d, "tele/dd/end", "marker") // its third: 0x97 at a bound of 3 had it inherited anything
	got = append(got, drain(t, w, "marker")...)
	slices.Sort(got)
	if want := []string{"admin's", "admin's", "new", "new"}; !slices.Equal(got, want) {
		t.Fatalf("a subscriber of tele/dd/# got %q, want %q", got, want)
	}
}

// TestRetainedLimitLevels: at the defaults, a device retaining one-byte
// messages on topics of 32 levels, each new but for the first three, is
// held to mqtt.max_retained_bytes_per_device (16 MiB) by what the
// engine's index keeps for the levels (some 20 KB a message), not
// allowed its 10,000 messages (190 MB of index); messages whose topics
// share all but their last level count one level each.
func TestRetainedLimitLevels(t *testing.T) {
	o := DefaultOptions()
	if o.MaxTopicLevels != 32 {
		t.Fatalf("mqtt.max_topic_levels defaults to %d, README says 32", o.MaxTopicLevels)
	}
	rl := DefaultRetainedLimitOptions()
	e := startLimitEnv(t, t.TempDir(), o, rl)
	d, _ := dial5(t, e.tcp, "deep", "deep", e.device(t, "deep"), 0)
	deep := func(i int, shared bool) string {
		var b strings.Builder
		b.WriteString("devices/deep/responses")
		for j := range 28 {
			if shared {
				fmt.Fprintf(&b, "/s%d", j)
			} else {
				fmt.Fprintf(&b, "/u%d-%d", i, j)
			}
		}
		fmt.Fprintf(&b, "/%d", i)
		return b.String()
	}
	accepted := 0
	for i := range 1000 {
		code := d.pub(t, deep(i, false), []byte("v"), 1, true)
		if code == packets.ErrQuotaExceeded.Code {
			break
		}
		if code != 0 {
			t.Fatalf("publish %d: 0x%02x", i, code)
		}
		accepted++
	}
	// devices, devices/deep, devices/deep/responses once; 29 levels, the
	// topic and the payload each.
	want, held := 0, int64(3*retainedLevelCost)
	for held+29*retainedLevelCost+int64(len(deep(want, false))+1) <= rl.DeviceBytes {
		held += 29*retainedLevelCost + int64(len(deep(want, false))+1)
		want++
	}
	if accepted != want {
		t.Fatalf("%d messages of 32 levels accepted, want %d (16 MiB at some 19.4 KB each)", accepted, want)
	}
	if n := refusedCount(t, e.lim, limitDeviceBytes); n != 1 {
		t.Fatalf("refused device_bytes %v, want 1", n)
	}
	topics := e.lim.Owned("deep")
	if c, b := e.lim.RetainedUsage("deep"); c != int64(accepted) || b > rl.DeviceBytes || b < levelBytes(topics...) {
		t.Fatalf("device holds %d messages, %d bytes", c, b)
	}

	// Deleted, they free their levels; sharing all but the last level,
	// 1,000 fit.
	for _, topic := range topics {
		if code := d.pub(t, topic, nil, 1, true); code != 0 {
			t.Fatalf("delete %s: 0x%02x", topic, code)
		}
	}
	usage(t, e.lim, "deep", 0, 0)
	for i := range 1000 {
		if code := d.pub(t, deep(i, true), []byte("v"), 1, true); code != 0 {
			t.Fatalf("shared publish %d: 0x%02x", i, code)
		}
	}
	var size int64
	for i := range 1000 {
		size += int64(len(deep(i, true)) + 1)
	}
	usage(t, e.lim, "deep", 1000, size)
}
