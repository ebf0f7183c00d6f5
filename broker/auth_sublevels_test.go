package broker

import (
	"bytes"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tether-iot/tether/internal/testlog"
	"github.com/tether-iot/tether/internal/testmqtt"
)

// levelsOptions are the defaults with
// mqtt.max_subscription_levels_per_client n.
func levelsOptions(n int) Options {
	o := DefaultOptions()
	o.MaxSubscriptionLevelsPerClient = n
	return o
}

// deepFilterOf is a filter of levels levels under prefix, the first of
// them name: prefix/name/1/2/...
func deepFilterOf(prefix, name string, levels int) string {
	parts := []string{prefix, name}
	for i := 1; len(strings.Split(strings.Join(parts, "/"), "/")) < levels; i++ {
		parts = append(parts, fmt.Sprint(i))
	}
	return strings.Join(parts, "/")
}

// TestSubscriptionLevelLimit: with mqtt.max_subscription_levels_per_client
// 20, a device's filters under devices/{id}/commands/ need 20 levels of
// the topic index, each prefix once: a filter that would need more gets
// 0x97 (3.1.1: 0x80) and the packet's other filters are granted, a held
// filter is granted again for nothing, an UNSUBSCRIBE frees the levels
// no other filter needs. Refusals are counted, not as ACL denials.
func TestSubscriptionLevelLimit(t *testing.T) {
	e := startLimitEnv(t, t.TempDir(), levelsOptions(20), RetainedLimitOptions{})

	t.Run("mqtt5", func(t *testing.T) {
		c, _ := dial5(t, e.tcp, "v5", "v5", e.device(t, "v5"), 0)
		p := "devices/v5/commands"
		a := deepFilterOf(p, "a", 12) // devices, v5, commands, a, 1..8: 12
		b := deepFilterOf(p, "b", 10) // b, 1..6 new: 19 (shared prefixes count once)
		if got := c.sub(t, a, b); !slices.Equal(got, []byte{1, 1}) {
			t.Fatalf("a and b: SUBACK %x", got)
		}
		// c needs 2 more (21), a is held, d needs 1 more (20).
		cf, d := deepFilterOf(p, "c", 5), p+"/d"
		got := c.sub(t, cf, a, d, "devices/other/commands/x")
		if want := []byte{0x97, 1, 1, 0x87}; !slices.Equal(got, want) {
			t.Fatalf("SUBACK %x, want %x", got, want)
		}
		if n := engineSubs(e.b, "v5"); n != 3 {
			t.Fatalf("engine holds %d subscriptions, want 3", n)
		}
		before := atomic.LoadInt64(&e.b.Server.Info.Subscriptions)
		denied := authCount(t, e.auth.m.denied.WithLabelValues("subscribe"))
		var flood []string
		for i := range 200 {
			flood = append(flood, fmt.Sprintf("%s/x%d", p, i))
		}
		for i, code := range c.sub(t, flood...) {
			if code != packets.ErrQuotaExceeded.Code {
				t.Fatalf("flood filter %d: 0x%02x, want 0x97", i, code)
			}
		}
		if n, all := engineSubs(e.b, "v5"), atomic.LoadInt64(&e.b.Server.Info.Subscriptions); n != 3 || all != before {
			t.Fatalf("after the flood the engine holds %d for the client and %d in all (was %d)", n, all, before)
		}
		if n := authCount(t, e.auth.m.levelsRefused); n != 201 {
			t.Fatalf("tether_mqtt_subscription_levels_refused_total %v, want 201", n)
		}
		if n := authCount(t, e.auth.m.subsRefused); n != 0 {
			t.Fatalf("tether_mqtt_subscriptions_refused_total %v, want 0", n)
		}
		if n := authCount(t, e.auth.m.denied.WithLabelValues("subscribe")); n != denied {
			t.Fatalf("quota refusals counted as ACL denials: %v, was %v", n, denied)
		}
		// b's own 7 levels go; its prefixes shared with a stay.
		c.unsub(t, b)
		if got := c.sub(t, cf, deepFilterOf(p, "e", 7)); !slices.Equal(got, []byte{1, 1}) {
			t.Fatalf("after an UNSUBSCRIBE (13 levels): SUBACK %x, want c (15) and e (19) granted", got)
		}
		if got := c.sub(t, p+"/f/1"); !slices.Equal(got, []byte{0x97}) {
			t.Fatalf("at 19 levels, a filter needing 2 more: SUBACK %x", got)
		}
	})

	t.Run("mqtt311", func(t *testing.T) {
		c, _ := dial3(t, e.tcp, "v3", "v3", e.device(t, "v3"), true)
		p := "devices/v3/commands"
		a, b := deepFilterOf(p, "a", 19), p+"/b/1"
		got := sub3(t, c, a, b)
		if got[a] != 1 || got[b] != 0x80 {
			t.Fatalf("SUBACK %v, want a 1 and b 0x80", got)
		}
		if got := sub3(t, c, a, p+"/c"); got[a] != 1 || got[p+"/c"] != 1 {
			t.Fatalf("SUBACK %v, want both granted (a held, c the 20th level)", got)
		}
		if n := engineSubs(e.b, "v3"); n != 2 {
			t.Fatalf("engine holds %d subscriptions, want 2", n)
		}
	})
}

// viewerFilters are n filters of 16 levels for a viewer, none sharing a
// level past devices/: the first needs 16 levels, each other 15.
func viewerFilters(from, n int) []string {
	var fs []string
	for i := from; i < from+n; i++ {
		fs = append(fs, deepFilterOf("devices", fmt.Sprintf("d%04d", i), 16))
	}
	return fs
}

// levelsGranted is how many filters of viewerFilters fit 8,000 levels:
// 16 + 532 × 15 = 7,996.
const levelsGranted = 533

// TestSubscriptionLevelLimitViewer: at the defaults (8,000 levels, 1,000
// filters of up to 32 levels) a viewer's persistent session holds 533
// filters of 16 levels; the 534th is refused, though the 1,000 filters'
// bound is far. The levels are counted from what the engine holds: a
// session restored at start-up, one taken over by a second connection,
// and one deleted by an admin or expired (the next starts clean) count
// right.
func TestSubscriptionLevelLimitViewer(t *testing.T) {
	dir := t.TempDir()
	e := startLimitEnv(t, dir, DefaultOptions(), DefaultRetainedLimitOptions())
	pass := e.user(t, "eve", "viewer")
	c, _ := dial5(t, e.tcp, "eve-1", "eve", pass, 3600)
	filters := viewerFilters(0, 600)
	got := c.sub(t, filters...)
	for i, code := range got {
		if want := byte(1); i < levelsGranted && code != want || i >= levelsGranted && code != 0x97 {
			t.Fatalf("filter %d: 0x%02x", i, code)
		}
	}
	if n := engineSubs(e.b, "eve-1"); n != levelsGranted {
		t.Fatalf("engine holds %d, want %d", n, levelsGranted)
	}
	if got := c.sub(t, filters[7], filters[levelsGranted+50]); !slices.Equal(got, []byte{1, 0x97}) {
		t.Fatalf("re-subscribe and a new filter at the bound: SUBACK %x", got)
	}
	c.close()
	e.stop(t)

	// Restored at start-up: the session's filters still count.
	e = startLimitEnv(t, dir, DefaultOptions(), DefaultRetainedLimitOptions())
	if n := engineSubs(e.b, "eve-1"); n != levelsGranted {
		t.Fatalf("restored session holds %d subscriptions, want %d", n, levelsGranted)
	}
	c, ca := dial5(t, e.tcp, "eve-1", "eve", pass, 3600)
	if !ca.SessionPresent {
		t.Fatal("session not present after the restart")
	}
	if got := c.sub(t, filters[levelsGranted], filters[3]); !slices.Equal(got, []byte{0x97, 1}) {
		t.Fatalf("after the restart: SUBACK %x, want 97 01", got)
	}

	// Taken over by a second connection: it inherits the filters and
	// their levels.
	c2, ca := dial5(t, e.tcp, "eve-1", "eve", pass, 3600)
	if !ca.SessionPresent {
		t.Fatal("session not present on the take-over")
	}
	if got := c2.sub(t, filters[levelsGranted+1]); !slices.Equal(got, []byte{0x97}) {
		t.Fatalf("after the take-over: SUBACK %x, want 97", got)
	}
	// An UNSUBSCRIBE frees one filter's 15 levels: one new filter fits.
	c2.unsub(t, filters[0])
	if got := c2.sub(t, filters[levelsGranted+1], filters[levelsGranted+2]); !slices.Equal(got, []byte{1, 0x97}) {
		t.Fatalf("after an UNSUBSCRIBE: SUBACK %x, want 01 97", got)
	}

	// Deleted by an admin: the next connection starts clean.
	if !e.auth.DeleteSession("eve-1") {
		t.Fatal("DeleteSession: not found")
	}
	<-c2.c.Done()
	c3, ca := dial5(t, e.tcp, "eve-1", "eve", pass, 3600)
	if ca.SessionPresent {
		t.Fatal("session present after its deletion")
	}
	wantBound := func(what string, got []byte) {
		t.Helper()
		for i, code := range got {
			if want := byte(1); i < levelsGranted && code != want || i >= levelsGranted && code != 0x97 {
				t.Fatalf("%s, filter %d: 0x%02x", what, i, code)
			}
		}
	}
	wantBound("after the deletion", c3.sub(t, viewerFilters(1000, 600)...))

	// Expired: the next connection starts clean.
	c4, _ := dial5(t, e.tcp, "eve-2", "eve", pass, 1)
	wantBound("a session of 1 s", c4.sub(t, filters...))
	c4.close()
	checkFor(t, 10*time.Second, func() error {
		if n := engineSubs(e.b, "eve-2"); n != -1 {
			return fmt.Errorf("session eve-2 holds %d subscriptions, not expired yet", n)
		}
		return nil
	})
	c4, ca = dial5(t, e.tcp, "eve-2", "eve", pass, 1)
	if ca.SessionPresent {
		t.Fatal("session present after its expiry")
	}
	wantBound("after the expiry", c4.sub(t, viewerFilters(2000, 600)...))
}

// TestSubscriptionLevelRefusalLogShort: the line that logs a filter
// refused over mqtt.max_subscription_levels_per_client holds the filter
// shortened (logtext.Short), not its 20 KB a client may send every
// minute.
func TestSubscriptionLevelRefusalLogShort(t *testing.T) {
	var buf testlog.Buffer
	e := startLimitEnvLog(t, t.TempDir(), levelsOptions(20), RetainedLimitOptions{},
		slog.New(slog.NewTextHandler(&buf, nil)))
	c, _ := dial5(t, e.tcp, "v5", "v5", e.device(t, "v5"), 0)
	long := deepFilterOf("devices/v5/commands", strings.Repeat("x", 20_000), 30)
	if got := c.sub(t, long); !slices.Equal(got, []byte{0x97}) {
		t.Fatalf("SUBACK %x", got)
	}
	testmqtt.CheckFor(t, 10*time.Second, func() error {
		if !strings.Contains(buf.String(), "subscription refused") {
			return fmt.Errorf("not logged yet: %q", buf.String())
		}
		return nil
	})
	for _, line := range strings.Split(buf.String(), "\n") {
		if strings.Contains(line, "subscription refused") && (len(line) > 1000 || !strings.Contains(line, "bytes)")) {
			t.Fatalf("refusal logged with the filter whole (%d bytes): %.300s", len(line), line)
		}
	}
}

// TestRestoredSessionOverSubscriptionBound: persistent sessions that
// subscribed under the default bounds are restored after a restart with
// lower ones (mqtt.max_subscriptions_per_client 4,
// max_subscription_levels_per_client 40, max_topic_levels 8): each keeps
// its filters, a held one is granted again, a new one (however short)
// is refused with 0x97, and each is counted in
// tether_mqtt_sessions_over_subscription_bound_total{limit}. The session
// over the level bound holds 3 filters: at 8 levels a filter, 4 could
// not need more than 40, but its restored ones are deeper than 8.
func TestRestoredSessionOverSubscriptionBound(t *testing.T) {
	dir := t.TempDir()
	e := startLimitEnv(t, dir, DefaultOptions(), RetainedLimitOptions{})
	deepSecret, manySecret := e.device(t, "deep"), e.device(t, "many")
	p, q := "devices/deep/commands", "devices/many/commands"
	deep := []string{deepFilterOf(p, "a", 30), deepFilterOf(p, "b", 30), p + "/s"} // 58 levels
	many := []string{q + "/a", q + "/b", q + "/c", q + "/d", q + "/e"}             // 5 filters
	for _, s := range []struct {
		id, secret string
		filters    []string
	}{{"deep", deepSecret, deep}, {"many", manySecret, many}} {
		c, _ := dial5(t, e.tcp, s.id, s.id, s.secret, 3600)
		if got := c.sub(t, s.filters...); bytes.Count(got, []byte{1}) != len(s.filters) {
			t.Fatalf("%s under the default bounds: SUBACK %x", s.id, got)
		}
		c.close()
	}
	e.stop(t)

	o := DefaultOptions()
	o.MaxSubscriptionsPerClient, o.MaxSubscriptionLevelsPerClient, o.MaxTopicLevels = 4, 40, 8
	e = startLimitEnv(t, dir, o, RetainedLimitOptions{})
	for _, limit := range []string{"max_subscriptions_per_client", "max_subscription_levels_per_client"} {
		if n := authCount(t, e.auth.m.overBound.WithLabelValues(limit)); n != 1 {
			t.Errorf("tether_mqtt_sessions_over_subscription_bound_total{limit=%q} = %v, want 1", limit, n)
		}
	}
	for _, s := range []struct {
		id, secret, held, fresh string
		n                       int
	}{{"deep", deepSecret, p + "/s", p + "/z", 3}, {"many", manySecret, q + "/c", q + "/z", 5}} {
		if n := engineSubs(e.b, s.id); n != s.n {
			t.Fatalf("restored session %s holds %d subscriptions, want %d", s.id, n, s.n)
		}
		c, ca := dial5(t, e.tcp, s.id, s.id, s.secret, 3600)
		if !ca.SessionPresent {
			t.Fatalf("%s: session not present after the restart", s.id)
		}
		if got := c.sub(t, s.held, s.fresh); !slices.Equal(got, []byte{1, 0x97}) {
			t.Fatalf("%s: a held filter again and a new one: SUBACK %x, want 01 97", s.id, got)
		}
		if n := engineSubs(e.b, s.id); n != s.n {
			t.Fatalf("%s holds %d subscriptions, want %d", s.id, n, s.n)
		}
	}
}
