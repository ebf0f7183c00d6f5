package broker

import (
	"fmt"
	"slices"
	"sync/atomic"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
)

// subsOptions are the defaults with mqtt.max_subscriptions_per_client n.
func subsOptions(n int) Options {
	o := DefaultOptions()
	o.MaxSubscriptionsPerClient = n
	return o
}

// TestSubscriptionLimit: with mqtt.max_subscriptions_per_client 3, a
// session holds 3 filters; a SUBSCRIBE's filters are granted in order up
// to the bound and the others get 0x97 (3.1.1: 0x80), a filter held
// already is granted again, an UNSUBSCRIBE makes room, and a flood of new
// filters leaves the engine holding 3. Refusals are counted, not as ACL
// denials.
func TestSubscriptionLimit(t *testing.T) {
	e := startLimitEnv(t, t.TempDir(), subsOptions(3), RetainedLimitOptions{})
	f := func(id, name string) string { return "devices/" + id + "/commands/" + name }

	t.Run("mqtt5", func(t *testing.T) {
		c, _ := dial5(t, e.tcp, "s5", "s5", e.device(t, "s5"), 0)
		if got := c.sub(t, f("s5", "a"), f("s5", "b")); !slices.Equal(got, []byte{1, 1}) {
			t.Fatalf("first two: SUBACK %x", got)
		}
		// The third new filter passes the bound; a held one does not count.
		got := c.sub(t, f("s5", "c"), f("s5", "d"), f("s5", "a"), "devices/other/commands/#")
		if want := []byte{1, 0x97, 1, 0x87}; !slices.Equal(got, want) {
			t.Fatalf("SUBACK %x, want %x", got, want)
		}
		if n := engineSubs(e.b, "s5"); n != 3 {
			t.Fatalf("engine holds %d subscriptions, want 3", n)
		}
		denied := authCount(t, e.auth.m.denied.WithLabelValues("subscribe"))
		before := atomic.LoadInt64(&e.b.Server.Info.Subscriptions)
		var flood []string
		for i := range 500 {
			flood = append(flood, f("s5", fmt.Sprint("x", i)))
		}
		for i, code := range c.sub(t, flood...) {
			if code != packets.ErrQuotaExceeded.Code {
				t.Fatalf("flood filter %d: 0x%02x, want 0x97", i, code)
			}
		}
		if n, all := engineSubs(e.b, "s5"), atomic.LoadInt64(&e.b.Server.Info.Subscriptions); n != 3 || all != before {
			t.Fatalf("after the flood the engine holds %d for the client and %d in all (was %d)", n, all, before)
		}
		if n := authCount(t, e.auth.m.subsRefused); n != 501 {
			t.Fatalf("tether_mqtt_subscriptions_refused_total %v, want 501", n)
		}
		if n := authCount(t, e.auth.m.denied.WithLabelValues("subscribe")); n != denied {
			t.Fatalf("quota refusals counted as ACL denials: %v, was %v", n, denied)
		}
		c.unsub(t, f("s5", "b"))
		if got := c.sub(t, f("s5", "d")); !slices.Equal(got, []byte{1}) {
			t.Fatalf("after an UNSUBSCRIBE: SUBACK %x", got)
		}
		// Messages still reach the granted filters.
		if code := c.pub(t, f("s5", "d"), nil, 1, false); code != 0x87 {
			t.Fatalf("a device publishing on its commands: 0x%02x", code) // ACL, unchanged
		}
	})

	t.Run("mqtt311", func(t *testing.T) {
		c, _ := dial3(t, e.tcp, "s3", "s3", e.device(t, "s3"), true)
		got := sub3(t, c, f("s3", "a"), f("s3", "b"), f("s3", "c"))
		for k, v := range got {
			if v != 1 {
				t.Fatalf("%s: 0x%02x", k, v)
			}
		}
		got = sub3(t, c, f("s3", "d"), f("s3", "a"))
		if got[f("s3", "d")] != 0x80 || got[f("s3", "a")] != 1 {
			t.Fatalf("SUBACK %v, want d 0x80 and a 1", got)
		}
		if n := engineSubs(e.b, "s3"); n != 3 {
			t.Fatalf("engine holds %d subscriptions, want 3", n)
		}
	})
}

// TestSubscriptionLimitDefault: at the defaults a client holds 1,000
// subscriptions: a SUBSCRIBE of 1,100 new filters gets 1,000 granted and
// 100 refused, and a filter held already is still granted.
func TestSubscriptionLimitDefault(t *testing.T) {
	e := startLimitEnv(t, t.TempDir(), DefaultOptions(), DefaultRetainedLimitOptions())
	c, _ := dial5(t, e.tcp, "watcher", "ops", e.user(t, "ops", "operator"), 0)
	var filters []string
	for i := range 1100 {
		filters = append(filters, fmt.Sprintf("devices/d%04d/telemetry", i))
	}
	got := c.sub(t, filters...)
	for i, code := range got {
		if want := byte(1); i >= 1000 && code != 0x97 || i < 1000 && code != want {
			t.Fatalf("filter %d: 0x%02x", i, code)
		}
	}
	if n := engineSubs(e.b, "watcher"); n != 1000 {
		t.Fatalf("engine holds %d, want 1000", n)
	}
	if got := c.sub(t, filters[7], "devices/+/status"); !slices.Equal(got, []byte{1, 0x97}) {
		t.Fatalf("re-subscribe and a new filter at the bound: SUBACK %x", got)
	}
}

// TestSubscriptionLimitRestart: a persistent session at its bound is
// restored at start-up with its subscriptions, which still count: a new
// filter is refused, a held one granted, and an UNSUBSCRIBE makes room.
func TestSubscriptionLimitRestart(t *testing.T) {
	dir := t.TempDir()
	e := startLimitEnv(t, dir, subsOptions(3), RetainedLimitOptions{})
	secret := e.device(t, "p1")
	f := func(name string) string { return "devices/p1/commands/" + name }
	c, _ := dial5(t, e.tcp, "p1", "p1", secret, 3600)
	if got := c.sub(t, f("a"), f("b"), f("c"), f("d")); !slices.Equal(got, []byte{1, 1, 1, 0x97}) {
		t.Fatalf("SUBACK %x", got)
	}
	c.close()
	e.stop(t)

	e = startLimitEnv(t, dir, subsOptions(3), RetainedLimitOptions{})
	if n := engineSubs(e.b, "p1"); n != 3 {
		t.Fatalf("restored session holds %d subscriptions, want 3", n)
	}
	c, ca := dial5(t, e.tcp, "p1", "p1", secret, 3600)
	if !ca.SessionPresent {
		t.Fatal("session not present after the restart")
	}
	if got := c.sub(t, f("d"), f("b")); !slices.Equal(got, []byte{0x97, 1}) {
		t.Fatalf("after the restart: SUBACK %x, want 97 01", got)
	}
	c.unsub(t, f("a"))
	if got := c.sub(t, f("d")); !slices.Equal(got, []byte{1}) {
		t.Fatalf("after an UNSUBSCRIBE: SUBACK %x", got)
	}
	if n := engineSubs(e.b, "p1"); n != 3 {
		t.Fatalf("engine holds %d, want 3", n)
	}
}
