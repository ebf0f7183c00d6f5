package broker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/tether-iot/tether/broker/rules"
	"github.com/tether-iot/tether/devices"
)

func mustRules(t testing.TB, rs ...rules.Rule) *Rules {
	t.Helper()
	c, err := CompileRules(rs)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestAuthRulesDecide(t *testing.T) {
	e := startAuthEnv(t, true)
	ctx := context.Background()
	if _, _, err := e.reg.CreateDevice(ctx, devices.NewDevice{ID: "tas1", Type: "tasmota"}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.reg.CreateDevice(ctx, devices.NewDevice{ID: "shelly1", Type: "shelly"}); err != nil {
		t.Fatal(err)
	}
	e.auth.SetRules(mustRules(t,
		rules.Rule{Effect: "deny", Access: "subscribe", Topic: "test/nosubscribe"},
		rules.Rule{Effect: "allow", Access: "publish", Topic: "homeassistant/#", Who: "type:tasmota"},
		rules.Rule{Effect: "allow", Access: "all", Topic: "clients/%c/#"},
		rules.Rule{Effect: "deny", Access: "publish", Topic: "private/%u/#"},
		rules.Rule{Effect: "deny", Access: "subscribe", Topic: "$SYS/#", Who: "role:viewer"},
		rules.Rule{Effect: "allow", Access: "publish", Topic: "a/b"},
		rules.Rule{Effect: "deny", Access: "publish", Topic: "a/#"},
		rules.Rule{Effect: "allow", Access: "subscribe", Topic: "+/x", Who: "user:vic"},
		rules.Rule{Effect: "deny", Access: "all", Topic: "secret/#", Who: "anonymous"},
		rules.Rule{Effect: "allow", Access: "publish", Topic: "$SYS/#"},
		rules.Rule{Effect: "allow", Access: "publish", Topic: "fw/shelly1/#", Who: "device:shelly1"},
		rules.Rule{Effect: "deny", Access: "publish", Topic: "#", Who: "user:locked"},
	))
	user := func(name, role, clientID string) *conn {
		return e.auth.newConn(devices.Identity{Kind: devices.KindUser, Name: name, Role: role}, false, clientID)
	}
	dev := func(id string) *conn {
		return e.auth.newConn(devices.Identity{Kind: devices.KindDevice, Name: id}, false, id)
	}
	admin, viewer, op := user("root", devices.RoleAdmin, "root-1"), user("vic", devices.RoleViewer, "v1"), user("olga", devices.RoleOperator, "o1")
	anon := e.auth.newConn(devices.Identity{}, true, "anon-1")
	const pub, sub = true, false
	for _, tt := range []struct {
		name  string
		c     *conn
		topic string
		write bool
		want  bool
	}{
		{"deny narrows admin", admin, "test/nosubscribe", sub, false},
		{"overlapping filter left to deliveries", admin, "test/#", sub, true},
		{"admin elsewhere", admin, "test/other", sub, true},
		{"type rule", dev("tas1"), "homeassistant/sensor/tas1/config", pub, true},
		{"type rule other type", dev("shelly1"), "homeassistant/sensor/x/config", pub, false},
		{"device rule", dev("shelly1"), "fw/shelly1/update", pub, true},
		{"device rule other device", dev("tas1"), "fw/shelly1/update", pub, false},
		{"%c own", viewer, "clients/v1/x", pub, true},
		{"%c other", viewer, "clients/v2/x", pub, false},
		{"%c device", dev("tas1"), "clients/tas1/state", sub, true},
		{"%u denies own name", admin, "private/root/x", pub, false},
		{"%u other name", admin, "private/bob/x", pub, true},
		{"role rule", viewer, "$SYS/broker/uptime", sub, false},
		{"role rule other role", op, "$SYS/broker/uptime", sub, true},
		{"first match wins: allow", viewer, "a/b", pub, true},
		{"first match wins: deny", admin, "a/c", pub, false},
		{"wildcard-first rule, topic", viewer, "foo/x", sub, true},
		{"wildcard-first rule, + filter", viewer, "+/x", sub, true},
		{"wildcard-first rule, # filter", viewer, "#", sub, false},
		{"user rule other user", op, "foo/x", sub, false},
		{"anonymous rule", anon, "secret/a", sub, false},
		{"anonymous elsewhere", anon, "open/a", sub, true},
		{"anonymous rule, shared", anon, "$share/g/secret/#", sub, false},
		{"anonymous rule, shared in capitals", anon, "$SHARE/g/secret/#", sub, false},
		{"anonymous rule, shared in mixed case", anon, "$Share/g/secret/a", sub, false},
		{"shared in capitals, operator", op, "$SHARE/g/devices/#", sub, true},
		{"anonymous rule not for users", admin, "secret/a", sub, true},
		{"rules cannot open $SYS publishing", admin, "$SYS/x", pub, false},
		{"rules cannot open $share publishing", admin, "$share/g/x", pub, false},
		{"shared group still needs a role", viewer, "$share/g/clients/v1/x", sub, false},
		{"user:locked", user("locked", devices.RoleAdmin, "l1"), "anything", pub, false},
	} {
		e.auth.fresh(tt.c) // not connected: SetRules did not reach it
		if got := tt.c.allows(tt.topic, tt.write); got != tt.want {
			t.Errorf("%s: allows(%q, write=%v) = %v, want %v", tt.name, tt.topic, tt.write, got, tt.want)
		}
	}

	// A client id that would change the filter's shape: an allow rule
	// does not bind it, a deny rule binds it widened.
	bad := user("root", devices.RoleAdmin, "x/#")
	if bad.allows("clients/x/#", pub) != true { // admin: built-in
		t.Error("admin lost its built-in rights")
	}
	if v := user("vic", devices.RoleViewer, "x/#"); v.allows("clients/x/#", sub) {
		t.Errorf("allow clients/%%c/# bound client id x/#")
	}
	// Nor one that would make the first level devices/ or $...: a rule
	// on %c/# is not every device's topics for a client id "devices".
	e.auth.SetRules(mustRules(t, rules.Rule{Effect: "allow", Access: "all", Topic: "%c/#"}))
	for _, id := range []string{"devices", "$SYS"} {
		v := user("vic", devices.RoleViewer, id)
		if v.allows(id+"/d1/twin/reported", pub) {
			t.Errorf("allow %%c/# bound client id %q", id)
		}
	}
	if v := user("vic", devices.RoleViewer, "v1"); !v.allows("v1/x", pub) {
		t.Errorf("allow %%c/# did not bind client id v1")
	}
	e.auth.SetRules(mustRules(t, rules.Rule{Effect: "deny", Access: "publish", Topic: "private/%c/#"}))
	e.auth.fresh(bad)
	e.auth.fresh(admin)
	if bad.allows("private/anyone/x", pub) {
		t.Errorf("deny private/%%c/# did not bind client id x/# widened")
	}
	if !admin.allows("private/else/x", pub) {
		t.Errorf("deny private/%%c/# bound another client id")
	}
	e.auth.SetRules(nil)
	e.auth.fresh(admin)
	if !admin.allows("test/nosubscribe", sub) {
		t.Error("rules still applied after SetRules(nil)")
	}
}

func TestCompileRulesErrors(t *testing.T) {
	_, err := CompileRules([]rules.Rule{
		{Effect: "allow", Access: "publish", Topic: "a/#"},
		{Effect: "permit", Access: "publish", Topic: "a/#/b", Who: "role:boss"},
	})
	if err == nil {
		t.Fatal("bad rules compiled")
	}
	for _, want := range []string{"auth.rules[1].effect", "auth.rules[1].topic", "auth.rules[1].who"} {
		if !contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	if contains(err.Error(), "auth.rules[0]") {
		t.Errorf("error names the good rule: %v", err)
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// TestDeviceGrantsLive: a device with grants uses its firmware's own
// topics and nothing of another device's, and a change to its grants
// applies to its live connection without a reconnection.
func TestDeviceGrantsLive(t *testing.T) {
	e := startAuthEnv(t, false)
	ctx := context.Background()
	d, secret, err := e.reg.CreateDevice(ctx, devices.NewDevice{ID: "t1", Type: "tasmota", Topics: []devices.TopicGrant{
		{Filter: "tele/%c/#", Access: "publish"}, {Filter: "cmnd/%c/#", Access: "subscribe"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Topics) != 2 {
		t.Fatalf("topics %v", d.Topics)
	}
	e.device(t, "t2")
	admin := e.user(t, "root", devices.RoleAdmin)
	var all authInbox
	w := authMustClient(t, "tcp://"+e.tcp, "watcher", "root", admin)
	waitToken(t, "subscribe", w.Subscribe("#", 1, all.handler))

	lost := make(chan struct{}, 1)
	c, err := authClient(t, "tcp://"+e.tcp, "t1", "t1", secret, func() { lost <- struct{}{} })
	if err != nil {
		t.Fatal(err)
	}
	var in authInbox
	for f, want := range map[string]byte{"cmnd/t1/#": 1, "cmnd/t2/#": 0x80, "cmnd/+/#": 0x80, "tele/t1/#": 0x80} {
		var h paho.MessageHandler // one route only: paho routes by its own filters
		if want == 1 {
			h = in.handler
		}
		tok := c.Subscribe(f, 1, h)
		waitToken(t, "subscribe "+f, tok)
		if got := tok.(*paho.SubscribeToken).Result()[f]; got != want {
			t.Errorf("subscribe %s: SUBACK %#x, want %#x", f, got, want)
		}
	}
	waitToken(t, "publish other", c.Publish("tele/t2/SENSOR", 0, false, "forged"))
	waitToken(t, "publish own", c.Publish("tele/t1/SENSOR", 1, false, `{"T":1}`))
	waitToken(t, "command", w.Publish("cmnd/t1/POWER", 1, false, "ON"))
	checkFor(t, 5*time.Second, func() error {
		if len(all.payloads("tele/t1/SENSOR")) == 0 || len(in.payloads("cmnd/t1/POWER")) == 0 {
			return fmt.Errorf("own telemetry or command not delivered")
		}
		return nil
	})
	if p := all.payloads("tele/t2/SENSOR"); len(p) != 0 {
		t.Errorf("t1 published as t2: %v", p)
	}

	// The grants change: tele/ is no longer t1's, stat/ is; cmnd/ is no
	// longer delivered though the subscription stays.
	if _, err := e.reg.UpdateDevice(ctx, "t1", devices.DevicePatch{Topics: &[]devices.TopicGrant{{Filter: "stat/%c/#", Access: "publish"}}}); err != nil {
		t.Fatal(err)
	}
	waitToken(t, "publish revoked", c.Publish("tele/t1/SENSOR", 0, false, "after"))
	waitToken(t, "command after", w.Publish("cmnd/t1/POWER", 1, false, "OFF"))
	waitToken(t, "publish granted", c.Publish("stat/t1/RESULT", 1, false, "ok"))
	checkFor(t, 5*time.Second, func() error {
		if len(all.payloads("stat/t1/RESULT")) == 0 {
			return fmt.Errorf("newly granted publish not delivered")
		}
		return nil
	})
	waitToken(t, "marker", w.Publish("cmnd/t1/marker", 1, false, "m"))
	waitToken(t, "resubscribe", c.Subscribe("devices/t1/commands/#", 1, in.handler))
	waitToken(t, "own command", w.Publish("devices/t1/commands/ping", 1, false, `{}`))
	checkFor(t, 5*time.Second, func() error {
		if len(in.payloads("devices/t1/commands/ping")) == 0 {
			return fmt.Errorf("own command not delivered")
		}
		return nil
	})
	if p := all.payloads("tele/t1/SENSOR"); len(p) != 1 {
		t.Errorf("tele/t1/SENSOR after its grant went: %v", p)
	}
	if p := in.payloads("cmnd/t1/POWER"); len(p) != 1 {
		t.Errorf("cmnd/t1/POWER delivered after its grant went: %v", p)
	}
	select {
	case <-lost:
		t.Error("the device was disconnected by a change of its grants")
	default:
	}
}

// TestAuthRulesReloadKeepsConnections: new rules apply to connected
// clients at once, and nobody is disconnected.
func TestAuthRulesReloadKeepsConnections(t *testing.T) {
	e := startAuthEnv(t, false)
	admin := e.user(t, "root", devices.RoleAdmin)
	lost := make(chan struct{}, 2)
	var in authInbox
	w, err := authClient(t, "tcp://"+e.tcp, "watcher", "root", admin, func() { lost <- struct{}{} })
	if err != nil {
		t.Fatal(err)
	}
	waitToken(t, "subscribe", w.Subscribe("test/#", 1, in.handler))
	p, err := authClient(t, "tcp://"+e.tcp, "pub", "root", admin, func() { lost <- struct{}{} })
	if err != nil {
		t.Fatal(err)
	}
	waitToken(t, "before", p.Publish("test/nosubscribe", 1, false, "before"))
	checkFor(t, 5*time.Second, func() error {
		if len(in.payloads("test/nosubscribe")) != 1 {
			return fmt.Errorf("not delivered before the rules")
		}
		return nil
	})
	e.auth.SetRules(mustRules(t, rules.Rule{Effect: "deny", Access: "subscribe", Topic: "test/nosubscribe"}))
	waitToken(t, "after", p.Publish("test/nosubscribe", 1, false, "after"))
	waitToken(t, "marker", p.Publish("test/ok", 1, false, "ok"))
	checkFor(t, 5*time.Second, func() error {
		if len(in.payloads("test/ok")) != 1 {
			return fmt.Errorf("marker not delivered")
		}
		return nil
	})
	if got := in.payloads("test/nosubscribe"); len(got) != 1 {
		t.Errorf("delivered after a deny rule: %v", got)
	}
	select {
	case <-lost:
		t.Error("a connection was dropped by the reload")
	default:
	}
}

// TestWillsFollowGrantsAndRules: Tasmota's retained LWT on tele/%c/LWT is
// a will a device with that grant may leave; a deny rule refuses it; and
// no grant or rule opens the broker's own topics to a will.
func TestWillsFollowGrantsAndRules(t *testing.T) {
	e := startAuthEnv(t, false)
	ctx := context.Background()
	if _, _, err := e.reg.CreateDevice(ctx, devices.NewDevice{ID: "t1", Type: "tasmota",
		Topics: []devices.TopicGrant{{Filter: "tele/%c/#", Access: "publish"}}}); err != nil {
		t.Fatal(err)
	}
	e.device(t, "plain")
	t1 := e.auth.newConn(devices.Identity{Kind: devices.KindDevice, Name: "t1"}, false, "t1")
	plain := e.auth.newConn(devices.Identity{Kind: devices.KindDevice, Name: "plain"}, false, "plain")
	if !t1.mayWill("tele/t1/LWT") {
		t.Error("a granted will refused")
	}
	if plain.mayWill("tele/plain/LWT") || t1.mayWill("tele/t2/LWT") {
		t.Error("a will outside the grants allowed")
	}
	e.auth.SetRules(mustRules(t,
		rules.Rule{Effect: "deny", Access: "publish", Topic: "tele/+/LWT", Who: "type:tasmota"},
		rules.Rule{Effect: "allow", Access: "publish", Topic: "devices/+/status"}))
	e.auth.fresh(t1)
	if t1.mayWill("tele/t1/LWT") {
		t.Error("a will under a deny rule allowed")
	}
	if t1.mayWill("devices/t1/status") {
		t.Error("a rule opened the broker's status topic to a will")
	}

	// A will's topic is a topic name: no wildcard, whoever the client.
	pass := e.user(t, "root", devices.RoleAdmin)
	admin := e.auth.newConn(devices.Identity{Kind: devices.KindUser, Name: "root", Role: devices.RoleAdmin}, false, "root-1")
	for _, topic := range []string{"#", "a/+/b", "a/#", ""} {
		if admin.mayWill(topic) {
			t.Errorf("an admin's will on %q allowed", topic)
		}
	}
	if !admin.mayWill("a/b") {
		t.Error("an admin's will on a/b refused")
	}
	o := paho.NewClientOptions().AddBroker("tcp://"+e.tcp).SetClientID("root-1").SetUsername("root").SetPassword(pass).
		SetProtocolVersion(4).SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(10*time.Second).
		SetWill("#", "gone", 0, false)
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(15 * time.Second) {
		t.Fatal("connect with a will on #: timeout")
	}
	if tok.Error() == nil {
		c.Disconnect(0)
		t.Error("an admin connected with a will on #")
	} else if rc := tok.(*paho.ConnectToken).ReturnCode(); rc != 0x05 {
		t.Errorf("will on #: CONNACK %#x, want 0x05", rc)
	}
}

// TestGrantNamingAllDevicesRefused: %c/# is devices/# for a device whose
// id is "devices". The registry refuses it, and a grant stored before it
// did is not given.
func TestGrantNamingAllDevicesRefused(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	db, err := devices.OpenDB(dir)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := devices.OpenRegistry(ctx, db, authLogger())
	if err != nil {
		t.Fatal(err)
	}
	grant := []devices.TopicGrant{{Filter: "%c/#", Access: "all"}}
	var ie *devices.InvalidError
	if _, _, err := reg.CreateDevice(ctx, devices.NewDevice{ID: "devices", Topics: grant}); !errors.As(err, &ie) {
		t.Fatalf("device devices with %%c/#: %v, want an InvalidError", err)
	}
	_, secret, err := reg.CreateDevice(ctx, devices.NewDevice{ID: "devices", Topics: []devices.TopicGrant{{Filter: "%c/%c/x", Access: "publish"}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.UpdateDevice(ctx, "devices", devices.DevicePatch{Topics: &grant}); !errors.As(err, &ie) {
		t.Fatalf("PATCH to %%c/#: %v, want an InvalidError", err)
	}
	// As a release without the check would have stored it.
	if _, err := db.W.ExecContext(ctx, `UPDATE devices SET topics = '[{"filter":"%c/#","access":"all"},{"filter":"%c/%c/x","access":"publish"}]' WHERE id = 'devices'`); err != nil {
		t.Fatal(err)
	}
	reg.Close()
	db.Close()

	e := startAuthEnvIn(t, dir, false, false)
	victim := e.device(t, "d1")
	admin := e.user(t, "root", devices.RoleAdmin)
	var all authInbox
	w := authMustClient(t, "tcp://"+e.tcp, "watcher", "root", admin)
	waitToken(t, "subscribe", w.Subscribe("#", 1, all.handler))
	c := authMustClient(t, "tcp://"+e.tcp, "devices", "devices", secret)
	tok := c.Subscribe("devices/#", 1, nil)
	waitToken(t, "subscribe devices/#", tok)
	if got := tok.(*paho.SubscribeToken).Result()["devices/#"]; got != 0x80 {
		t.Errorf("subscribe devices/#: SUBACK %#x, want 0x80", got)
	}
	waitToken(t, "forged reported", c.Publish("devices/d1/twin/reported", 0, false, `{"fw":"evil"}`))
	waitToken(t, "own grant", c.Publish("devices/devices/x", 1, false, "kept"))
	checkFor(t, 5*time.Second, func() error {
		if len(all.payloads("devices/devices/x")) == 0 {
			return fmt.Errorf("the grant that is its own not given")
		}
		return nil
	})
	if p := all.payloads("devices/d1/twin/reported"); len(p) != 0 {
		t.Errorf("device devices published as d1: %v", p)
	}
	_ = victim
}

// TestACLSplitsOnlyForRules: a topic is split into levels only for an
// identity that has rules for the access checked, or a device's patterns:
// an anonymous client's or a user's check with no rule binding it takes
// the topic whole, and allocates nothing even for a topic deeper than the
// 16 levels split without allocating. The answers are those of the rules.
func TestACLSplitsOnlyForRules(t *testing.T) {
	e := startAuthEnv(t, true)
	anon := e.auth.newConn(devices.Identity{}, true, "anon-1")
	viewer := e.auth.newConn(devices.Identity{Kind: devices.KindUser, Name: "v1", Role: devices.RoleViewer}, false, "v1")
	deep := "devices/d1/" + strings.Repeat("x/", 20) + "telemetry"
	for _, c := range []struct {
		name  string
		c     *conn
		write bool
		want  bool
	}{{"anonymous publish", anon, true, true}, {"anonymous delivery", anon, false, true},
		{"viewer publish", viewer, true, false}, {"viewer delivery", viewer, false, true}} {
		if got := c.c.allows(deep, c.write); got != c.want {
			t.Errorf("%s: allowed %v, want %v", c.name, got, c.want)
		}
		if n := testing.AllocsPerRun(100, func() { c.c.allows(deep, c.write) }); n != 0 {
			t.Errorf("%s: %v allocations per check, want 0 (the topic split into levels)", c.name, n)
		}
	}
	// With rules for the access, they decide, on the topic's levels.
	e.auth.SetRules(mustRules(t, rules.Rule{Effect: "deny", Access: "subscribe", Topic: "devices/d1/#"},
		rules.Rule{Effect: "allow", Access: "publish", Topic: "devices/+/x/#", Who: "role:viewer"}))
	e.auth.fresh(anon) // as the access check does (these two are not connected)
	e.auth.fresh(viewer)
	for _, c := range []struct {
		name  string
		c     *conn
		write bool
		want  bool
	}{{"anonymous publish", anon, true, true}, {"anonymous delivery", anon, false, false},
		{"viewer publish", viewer, true, true}, {"viewer delivery", viewer, false, false}} {
		if got := c.c.allows(deep, c.write); got != c.want {
			t.Errorf("with rules: %s: allowed %v, want %v", c.name, got, c.want)
		}
	}
}
