package broker

import (
	"testing"

	"github.com/tether-iot/tether/devices"
)

func TestWithin(t *testing.T) {
	tests := []struct {
		filter, pattern string
		want            bool
	}{
		{"devices/a/telemetry", "devices/a/telemetry", true},
		{"devices/a/telemetry/x", "devices/a/telemetry", false},
		{"devices/a", "devices/a/telemetry", false},
		{"devices/a/commands", "devices/a/commands/#", true},
		{"devices/a/commands/reboot", "devices/a/commands/#", true},
		{"devices/a/commands/+", "devices/a/commands/#", true},
		{"devices/a/commands/#", "devices/a/commands/#", true},
		{"devices/+/commands/#", "devices/a/commands/#", false},
		{"devices/#", "devices/a/commands/#", false},
		{"#", "devices/a/commands/#", false},
		{"+/a/commands/x", "devices/a/commands/#", false},
		{"devices/b/commands/x", "devices/+/commands/#", true},
		{"devices/+/commands/x", "devices/+/commands/#", true},
		{"devices/b/twin/desired", "devices/+/commands/#", false},
		{"devices//commands/x", "devices/a/commands/#", false},
		{"$SYS/broker/uptime", "$SYS/#", true},
		{"$SYS/#", "devices/#", false},
	}
	for _, tt := range tests {
		if got := within(tt.filter, tt.pattern); got != tt.want {
			t.Errorf("within(%q, %q) = %v, want %v", tt.filter, tt.pattern, got, tt.want)
		}
	}
}

func TestACLRules(t *testing.T) {
	dev := func(id string) *conn {
		pub, sub := devicePatterns(id)
		c := &conn{id: devices.Identity{Kind: devices.KindDevice, Name: id}, clientID: id, acl: &aclBox{}}
		c.acl.p.Store(&connACL{pub: splitAll(pub), sub: splitAll(sub)})
		return c
	}
	user := func(role string) *conn {
		return &conn{id: devices.Identity{Kind: devices.KindUser, Name: "u", Role: role}}
	}
	const pub, sub = true, false
	tests := []struct {
		name  string
		c     *conn
		topic string
		write bool
		want  bool
	}{
		{"device own telemetry", dev("a"), "devices/a/telemetry", pub, true},
		{"device own reported", dev("a"), "devices/a/twin/reported", pub, true},
		{"device own response", dev("a"), "devices/a/responses/c1", pub, true},
		{"device own status", dev("a"), "devices/a/status", pub, false},
		{"device own desired", dev("a"), "devices/a/twin/desired", pub, false},
		{"device own command", dev("a"), "devices/a/commands/x", pub, false},
		{"device other telemetry", dev("a"), "devices/b/telemetry", pub, false},
		{"device other response", dev("a"), "devices/b/responses/c1", pub, false},
		{"device elsewhere", dev("a"), "plain/topic", pub, false},
		{"device sub own commands", dev("a"), "devices/a/commands/#", sub, true},
		{"device sub own desired", dev("a"), "devices/a/twin/desired", sub, true},
		{"device sub own telemetry", dev("a"), "devices/a/telemetry", sub, false},
		{"device sub other commands", dev("a"), "devices/b/commands/#", sub, false},
		{"device sub all commands", dev("a"), "devices/+/commands/#", sub, false},
		{"device sub devices/#", dev("a"), "devices/#", sub, false},
		{"device sub #", dev("a"), "#", sub, false},
		{"device sub shared own", dev("a"), "$share/g/devices/a/commands/#", sub, false}, // no role above viewer
		{"viewer joins shared group", user(devices.RoleViewer), "$share/g/devices/#", sub, false},
		{"operator joins shared group", user(devices.RoleOperator), "$share/g/devices/+/telemetry", sub, true},
		{"operator shared outside its reach", user(devices.RoleOperator), "$share/g/plain/#", sub, false},
		{"admin publishes $SYS", user(devices.RoleAdmin), "$SYS/broker/uptime", pub, false},
		{"admin publishes $sys", user(devices.RoleAdmin), "$sys/broker/uptime", pub, false},
		{"admin publishes $share", user(devices.RoleAdmin), "$share/g/devices/a/commands/x", pub, false},
		{"operator publishes $share command", user(devices.RoleOperator), "$share/g/devices/a/commands/x", pub, false},
		{"anonymous publishes $SYS", &conn{anonymous: true}, "$SYS/x", pub, false},
		{"device sub shared other", dev("a"), "$share/g/devices/b/commands/#", sub, false},
		{"device sub $SYS", dev("a"), "$SYS/#", sub, false},
		{"device prefix id", dev("a"), "devices/ab/commands/x", sub, false},
		{"viewer reads devices", user(devices.RoleViewer), "devices/#", sub, true},
		{"viewer reads $SYS", user(devices.RoleViewer), "$SYS/#", sub, true},
		{"viewer reads #", user(devices.RoleViewer), "#", sub, false},
		{"viewer reads other", user(devices.RoleViewer), "plain/topic", sub, false},
		{"viewer sends command", user(devices.RoleViewer), "devices/a/commands/x", pub, false},
		{"viewer publishes telemetry", user(devices.RoleViewer), "devices/a/telemetry", pub, false},
		{"operator sends command", user(devices.RoleOperator), "devices/a/commands/x", pub, true},
		{"operator reads", user(devices.RoleOperator), "devices/+/responses/#", sub, true},
		{"operator sets desired", user(devices.RoleOperator), "devices/a/twin/desired", pub, false},
		{"operator fakes status", user(devices.RoleOperator), "devices/a/status", pub, false},
		{"operator fakes telemetry", user(devices.RoleOperator), "devices/a/telemetry", pub, false},
		{"admin anything", user(devices.RoleAdmin), "#", sub, true},
		{"admin publishes anywhere", user(devices.RoleAdmin), "devices/a/twin/desired", pub, true},
		{"anonymous (allowed)", &conn{anonymous: true}, "#", sub, true},
		{"revoked admin", &conn{id: devices.Identity{Kind: devices.KindUser, Role: devices.RoleAdmin}, revoked: true}, "x", pub, false},
		{"user without role", user(""), "devices/#", sub, false},
	}
	for _, tt := range tests {
		if got := tt.c.allows(tt.topic, tt.write); got != tt.want {
			t.Errorf("%s: allows(%q, write=%v) = %v, want %v", tt.name, tt.topic, tt.write, got, tt.want)
		}
	}
}

// TestPublishSharePrefixRefused: a PUBLISH to "$share" or "$share/{group}"
// (in any case) is refused with PUBACK 0x87 like any other $share/...
// topic (SPEC §5: never silently dropped); the engine dropped it before
// its access check, with no PUBACK, and the client waited forever.
func TestPublishSharePrefixRefused(t *testing.T) {
	e := startLimitEnv(t, t.TempDir(), DefaultOptions(), RetainedLimitOptions{})
	c, _ := dial5(t, e.tcp, "sp", "root", e.user(t, "root", "admin"), 0)
	for _, topic := range []string{"$share", "$share/g", "$SHARE/g", "$share/g/x", "$SYS/x"} {
		if code := c.pub(t, topic, []byte("x"), 1, false); code != 0x87 {
			t.Fatalf("publish %q: PUBACK 0x%02x, want 0x87", topic, code)
		}
	}
	if code := c.pub(t, "a/b", []byte("x"), 1, false); code != 0 {
		t.Fatalf("then a/b: PUBACK 0x%02x", code)
	}
}
