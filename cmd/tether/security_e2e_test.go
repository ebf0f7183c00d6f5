package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/coder/websocket"
	"github.com/eclipse/paho.golang/paho"

	"github.com/tether-iot/tether/configs"
)

// Intrusion detection end to end (SECURITY.md, bans): real MQTT clients
// and HTTP requests from several loopback addresses (Linux routes all of
// 127/8 to lo), against the whole app.

const secAdminPassword = "admin-security-pw"

// secApp starts Tether with bans after 5 refusals; loopback is not
// exempt here (every test client is on loopback) except 127.0.0.4, and
// 127.0.0.5 is a trusted proxy.
func secApp(t *testing.T, tweaks ...func(*configs.Config)) (*app, *apiClient) {
	t.Helper()
	t.Setenv("TETHER_ADMIN_PASSWORD", secAdminPassword)
	cfg := testConfig(t)
	cfg.Auth.AllowAnonymous = false
	cfg.Security.BanThreshold = 5
	cfg.Security.BanExempt = []string{"127.0.0.4"}
	cfg.HTTP.TrustedProxies = []string{"127.0.0.5"}
	for _, f := range tweaks {
		f(&cfg)
	}
	a := startTestApp(t, cfg)
	return a, uiLogin(t, "http://"+a.httpAddr(), "admin", secAdminPassword)
}

// dialFrom opens a TCP connection to addr from the loopback address from.
func dialFrom(from, addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	return d.Dial("tcp", addr)
}

// connackFrom sends a CONNECT (MQTT 3.1.1 for version 4, 5 for 5) from
// the address from and returns the CONNACK's code, or ok false when the
// connection is closed without one (closed at accept).
func connackFrom(t *testing.T, from, addr string, version byte, id, user, pass string) (code byte, ok bool) {
	t.Helper()
	c, err := dialFrom(from, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	_, _ = c.Write(rawConnectAuth(version, id, user, pass))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil {
		return 0, false
	}
	if buf[0] != 0x20 {
		t.Fatalf("from %s: not a CONNACK: % x", from, buf)
	}
	return buf[3], true
}

// mq5From connects an MQTT 5 client from the address from; it fails the
// test unless the CONNACK is a success.
func mq5From(t *testing.T, from, addr, id, user, pass string) *client5 {
	t.Helper()
	conn, err := dialFrom(from, addr)
	if err != nil {
		t.Fatal(err)
	}
	cl := &client5{box: make(chan message, 100), disconnected: make(chan *paho.Disconnect, 1)}
	cl.c = paho.NewClient(paho.ClientConfig{Conn: conn,
		OnServerDisconnect: func(d *paho.Disconnect) { cl.disconnected <- d }})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ca, err := cl.c.Connect(ctx, &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: true,
		Username: user, UsernameFlag: true, Password: []byte(pass), PasswordFlag: true})
	if err != nil || ca.ReasonCode != 0 {
		conn.Close()
		t.Fatalf("connect %s from %s: %v %+v", id, from, err, ca)
	}
	t.Cleanup(cl.close)
	return cl
}

// httpFrom is an HTTP client whose connections come from the address from.
func httpFrom(from string) *http.Client {
	d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
}

// loginFrom posts a login from the address from (with X-Forwarded-For
// when xff is set) and returns the status and error code.
func loginFrom(t *testing.T, a *app, from, xff, user, pass string) (int, string) {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"username": user, "password": pass})
	req, _ := http.NewRequest("POST", "http://"+a.httpAddr()+"/api/v1/auth/login", strings.NewReader(string(body)))
	req.Header.Set("Content-Type", "application/json")
	if xff != "" {
		req.Header.Set("X-Forwarded-For", xff)
	}
	res, err := httpFrom(from).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var e struct{ Error struct{ Code string } }
	_ = json.NewDecoder(res.Body).Decode(&e)
	return res.StatusCode, e.Error.Code
}

type securityBody struct {
	Enabled   bool
	Threshold int
	Bans      []struct{ Key, Kind, Address, Identity string }
	Refusals  []struct{ Kind, Address, Identity, Detail string }
	Offenders []struct {
		Key           string
		Recent, Total int
		Banned        bool
	}
}

func (s securityBody) banned(key string) bool {
	for _, b := range s.Bans {
		if b.Key == key {
			return true
		}
	}
	return false
}

// metricValue reads one sample of /metrics (0 when absent).
func metricValue(t *testing.T, a *app, sample string) string {
	t.Helper()
	res, err := http.Get("http://" + a.httpAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			return v
		}
	}
	return ""
}

// TestBanFailedLogins: refused MQTT and HTTP logins from one address ban
// it: its MQTT connections are closed at accept and its HTTP logins get
// 403, while a correct login from another address goes on; /metrics,
// GET /security and the audit log show it; an admin lifts it (a viewer
// may not) and the address logs in again.
func TestBanFailedLogins(t *testing.T) {
	a, admin := secApp(t)
	base := "http://" + a.httpAddr()
	var dev struct{ ID, Secret string }
	admin.do("POST", "/devices", map[string]any{"id": "sec-d1", "name": "d1"}, &dev)
	admin.do("POST", "/users", map[string]string{"username": "vera", "password": "vera-password", "role": "viewer"}, nil)
	admin.do("POST", "/users", map[string]string{"username": "otto", "password": "otto-password", "role": "operator"}, nil)

	// 3 refused MQTT logins (3.1.1 and 5) and 2 refused HTTP ones, each a
	// different name: the limiter's pair keys stay open.
	for i, v := range []byte{4, 5, 4} {
		code, ok := connackFrom(t, "127.0.0.2", a.mqttAddr(), v, fmt.Sprintf("guess-%d", i), fmt.Sprintf("guess-%d", i), "wrong-password")
		if !ok || (code != 0x05 && code != 0x86) {
			t.Fatalf("wrong password %d: CONNACK %#x %v", i, code, ok)
		}
	}
	for i := range 2 {
		if st, _ := loginFrom(t, a, "127.0.0.2", "", fmt.Sprintf("http-guess-%d", i), "wrong-password"); st != http.StatusUnauthorized {
			t.Fatalf("wrong HTTP login: %d", st)
		}
	}
	// Banned: a correct device login from 127.0.0.2 is closed at accept,
	// a correct HTTP login gets 403; from 127.0.0.1 both go on.
	if code, ok := connackFrom(t, "127.0.0.2", a.mqttAddr(), 5, dev.ID, dev.ID, dev.Secret); ok {
		t.Fatalf("a banned address got a CONNACK %#x", code)
	}
	if st, code := loginFrom(t, a, "127.0.0.2", "", "admin", secAdminPassword); st != http.StatusForbidden || code != "banned" {
		t.Fatalf("banned address, correct HTTP login: %d %s", st, code)
	}
	if code, ok := connackFrom(t, "127.0.0.1", a.mqttAddr(), 4, dev.ID, dev.ID, dev.Secret); !ok || code != 0 {
		t.Fatalf("correct login from another address: %#x %v", code, ok)
	}
	if st, _ := loginFrom(t, a, "127.0.0.1", "", "admin", secAdminPassword); st != http.StatusOK {
		t.Fatalf("correct HTTP login from another address: %d", st)
	}
	if v := metricValue(t, a, `tether_bans_total{kind="address"}`); v != "1" {
		t.Fatalf("tether_bans_total{kind=address} = %q", v)
	}
	if v := metricValue(t, a, `tether_banned`); v != "1" {
		t.Fatalf("tether_banned = %q", v)
	}
	if v := metricValue(t, a, `tether_connections_limited_total{limit="banned"}`); v != "1" {
		t.Fatalf("tether_connections_limited_total{limit=banned} = %q", v)
	}

	var s securityBody
	admin.do("GET", "/security", nil, &s)
	if !s.Enabled || s.Threshold != 5 || !s.banned("ip:127.0.0.2") || len(s.Refusals) < 5 ||
		len(s.Offenders) == 0 || s.Offenders[0].Key != "ip:127.0.0.2" || !s.Offenders[0].Banned {
		t.Fatalf("GET /security: %+v", s)
	}
	for _, r := range s.Refusals {
		if strings.Contains(r.Detail, "wrong-password") || strings.Contains(r.Identity, "wrong-password") {
			t.Fatalf("a password in the refusals: %+v", r)
		}
	}
	// A lesser identity is refused both routes.
	vera := uiLogin(t, base, "vera", "vera-password")
	otto := uiLogin(t, base, "otto", "otto-password")
	for _, c := range []*apiClient{vera, otto} {
		if st := c.status("GET", "/security", nil); st != http.StatusForbidden {
			t.Fatalf("GET /security as a lesser role: %d", st)
		}
		if st := c.status("DELETE", "/security/bans/ip:127.0.0.2", nil); st != http.StatusForbidden {
			t.Fatalf("DELETE /security/bans as a lesser role: %d", st)
		}
	}
	if st := (&apiClient{t: t, base: base}).status("GET", "/security", nil); st != http.StatusUnauthorized {
		t.Fatalf("GET /security without credentials: %d", st)
	}
	if st := admin.status("DELETE", "/security/bans/ip:127.0.0.9", nil); st != http.StatusNotFound {
		t.Fatalf("lifting a ban that is not there: %d", st)
	}
	if code, ok := connackFrom(t, "127.0.0.2", a.mqttAddr(), 5, dev.ID, dev.ID, dev.Secret); ok {
		t.Fatalf("still banned after the lesser identities tried: CONNACK %#x", code)
	}

	admin.do("DELETE", "/security/bans/ip:127.0.0.2", nil, nil)
	if code, ok := connackFrom(t, "127.0.0.2", a.mqttAddr(), 5, dev.ID, dev.ID, dev.Secret); !ok || code != 0 {
		t.Fatalf("after the lift: %#x %v", code, ok)
	}
	if st, _ := loginFrom(t, a, "127.0.0.2", "", "admin", secAdminPassword); st != http.StatusOK {
		t.Fatalf("HTTP login after the lift: %d", st)
	}
	if v := metricValue(t, a, `tether_banned`); v != "0" {
		t.Fatalf("tether_banned after the lift = %q", v)
	}
	auditHas(t, admin, "banned ip:127.0.0.2", "ban_lifted ip:127.0.0.2")
}

// TestBanACLDenials: a device that keeps asking for what it may not have
// is disconnected and banned at its address: its CONNECTs from there get
// 0x8A (3.1.1: 0x05), while other identities at that address, and the
// device from elsewhere, connect (its sins are its own, not its
// neighbours' behind one NAT).
func TestBanACLDenials(t *testing.T) {
	a, admin := secApp(t)
	var d1, d2 struct{ ID, Secret string }
	admin.do("POST", "/devices", map[string]any{"id": "acl-d1", "name": "d1"}, &d1)
	admin.do("POST", "/devices", map[string]any{"id": "acl-d2", "name": "d2"}, &d2)
	admin.do("POST", "/users", map[string]string{"username": "olga", "password": "olga-password", "role": "operator"}, nil)

	// d1 from 127.0.0.3 subscribes to another device's commands 5 times.
	c := mq5From(t, "127.0.0.3", a.mqttAddr(), d1.ID, d1.ID, d1.Secret)
	for range 5 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		sa, err := c.c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "devices/acl-d2/commands/#", QoS: 1}}})
		cancel()
		if err != nil && sa == nil {
			break // disconnected by the ban
		}
		if sa.Reasons[0] != 0x87 {
			t.Fatalf("SUBACK %#x, want 0x87", sa.Reasons[0])
		}
	}
	select {
	case <-c.c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the banned device is still connected")
	}
	if code, ok := connackFrom(t, "127.0.0.3", a.mqttAddr(), 5, d1.ID, d1.ID, d1.Secret); !ok || code != 0x8A {
		t.Fatalf("banned identity, MQTT 5: CONNACK %#x %v, want 0x8a", code, ok)
	}
	if code, ok := connackFrom(t, "127.0.0.3", a.mqttAddr(), 4, d1.ID, d1.ID, d1.Secret); !ok || code != 0x05 {
		t.Fatalf("banned identity, MQTT 3.1.1: CONNACK %#x %v, want 0x05", code, ok)
	}
	if code, ok := connackFrom(t, "127.0.0.3", a.mqttAddr(), 5, "olga-1", "olga", "olga-password"); !ok || code != 0 {
		t.Fatalf("another identity at the banned device's address: %#x %v", code, ok)
	}
	mq5From(t, "127.0.0.1", a.mqttAddr(), d1.ID, d1.ID, d1.Secret) // from elsewhere: fine
	// mosquitto_sub says so too, in both MQTT versions.
	host, port, _ := net.SplitHostPort(a.mqttAddr())
	for _, v := range []struct{ version, want string }{{"mqttv5", "Banned"}, {"mqttv311", "not authorised"}} {
		out, _ := exec.Command(mosquitto(t, "mosquitto_sub"), "-A", "127.0.0.3", "-h", host, "-p", port, "-V", v.version,
			"-i", d1.ID, "-u", d1.ID, "-P", d1.Secret, "-t", "devices/acl-d1/commands/#", "-C", "1", "-W", "5").CombinedOutput()
		if !strings.Contains(string(out), v.want) {
			t.Fatalf("mosquitto_sub %s as the banned device: %q, want %q", v.version, out, v.want)
		}
	}

	// d2 from 127.0.0.4 publishes where it may not.
	c2 := mq5From(t, "127.0.0.4", a.mqttAddr(), d2.ID, d2.ID, d2.Secret)
	for range 5 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		pr, err := c2.c.Publish(ctx, &paho.Publish{Topic: "devices/acl-d1/telemetry", Payload: []byte(`{"t":1}`), QoS: 1})
		cancel()
		if err != nil && pr == nil {
			break
		}
		if pr.ReasonCode != 0x87 {
			t.Fatalf("PUBACK %#x, want 0x87", pr.ReasonCode)
		}
	}
	select {
	case <-c2.c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the banned device is still connected")
	}
	if code, ok := connackFrom(t, "127.0.0.4", a.mqttAddr(), 5, d2.ID, d2.ID, d2.Secret); !ok || code != 0x8A {
		t.Fatalf("banned identity at an exempt address: CONNACK %#x %v, want 0x8a", code, ok)
	}
	if code, ok := connackFrom(t, "127.0.0.1", a.mqttAddr(), 5, d2.ID, d2.ID, d2.Secret); !ok || code != 0 {
		t.Fatalf("the banned device from another address: %#x %v", code, ok)
	}
	var s securityBody
	admin.do("GET", "/security", nil, &s)
	if s.banned("ip:127.0.0.3") || !s.banned("id:acl-d1@127.0.0.3") || !s.banned("id:acl-d2@127.0.0.4") || s.banned("ip:127.0.0.4") {
		t.Fatalf("bans: %+v", s.Bans)
	}
	acl := false
	for _, r := range s.Refusals {
		acl = acl || (r.Kind == "acl" && r.Identity == "acl-d2" && r.Detail == "publish devices/acl-d1/telemetry")
	}
	if !acl {
		t.Fatalf("no ACL refusal of acl-d2 in %+v", s.Refusals)
	}
	if v := metricValue(t, a, `tether_bans_total{kind="identity"}`); v != "2" {
		t.Fatalf("tether_bans_total{kind=identity} = %q", v)
	}
	auditHas(t, admin, "banned id:acl-d2@127.0.0.4")
}

// TestBanNotForDeliveries: deliveries an auth rule refuses within a
// granted subscription are nobody's doing: the subscriber is not banned.
func TestBanNotForDeliveries(t *testing.T) {
	a, admin := secApp(t, func(c *configs.Config) {
		c.Auth.Rules = []configs.Rule{{Effect: "deny", Access: "subscribe", Topic: "lab/secret"}}
	})
	sub := mq5From(t, "127.0.0.6", a.mqttAddr(), "adm-sub", "admin", secAdminPassword)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	sa, err := sub.c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "lab/#", QoS: 1}}})
	cancel()
	if err != nil || sa.Reasons[0] >= 0x80 {
		t.Fatalf("subscribe lab/#: %v %+v", err, sa)
	}
	pub := mq5From(t, "127.0.0.1", a.mqttAddr(), "adm-pub", "admin", secAdminPassword)
	for range 10 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := pub.c.Publish(ctx, &paho.Publish{Topic: "lab/secret", Payload: []byte("x"), QoS: 1})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}
	// A message after them arrives: the subscriber is still connected.
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	_, err = pub.c.Publish(ctx, &paho.Publish{Topic: "lab/open", Payload: []byte("y"), QoS: 1})
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-sub.c.Done():
		t.Fatal("the subscriber was disconnected")
	case <-time.After(0):
	}
	var s securityBody
	admin.do("GET", "/security", nil, &s)
	if len(s.Bans) != 0 {
		t.Fatalf("bans for refused deliveries: %+v", s.Bans)
	}
	for _, r := range s.Refusals {
		if r.Kind == "acl" {
			t.Fatalf("a refused delivery counted: %+v", r)
		}
	}
	if code, ok := connackFrom(t, "127.0.0.6", a.mqttAddr(), 5, "adm-again", "admin", secAdminPassword); !ok || code != 0 {
		t.Fatalf("the subscriber's address after refused deliveries: %#x %v", code, ok)
	}
}

// TestBanBehindTrustedProxy: the sins of clients behind a trusted proxy
// ban their own address (X-Forwarded-For), never the proxy's: the
// proxy's other clients, and the proxy itself, log in.
func TestBanBehindTrustedProxy(t *testing.T) {
	a, _ := secApp(t)
	for i := range 5 {
		if st, _ := loginFrom(t, a, "127.0.0.5", "203.0.113.7", fmt.Sprintf("spray-%d", i), "wrong-password"); st != http.StatusUnauthorized {
			t.Fatalf("wrong login through the proxy: %d", st)
		}
	}
	if st, code := loginFrom(t, a, "127.0.0.5", "203.0.113.7", "admin", secAdminPassword); st != http.StatusForbidden || code != "banned" {
		t.Fatalf("the banned client through the proxy: %d %s", st, code)
	}
	if st, _ := loginFrom(t, a, "127.0.0.5", "198.51.100.2", "admin", secAdminPassword); st != http.StatusOK {
		t.Fatalf("another client of the proxy: %d", st)
	}
	if st, _ := loginFrom(t, a, "127.0.0.5", "", "admin", secAdminPassword); st != http.StatusOK {
		t.Fatalf("the proxy itself: %d", st)
	}
	// MQTT over WebSocket through the proxy: the banned client is closed
	// at accept, another client of the proxy gets its CONNACK.
	if _, ok := wsConnackVia(t, a, "127.0.0.5", "203.0.113.7"); ok {
		t.Fatal("the banned client got a CONNACK over WebSocket through the proxy")
	}
	if code, ok := wsConnackVia(t, a, "127.0.0.5", "198.51.100.2"); !ok || code != 0 {
		t.Fatalf("another client of the proxy over WebSocket: %#x %v", code, ok)
	}
	// Unknown clients' failures at the proxy ban no address at all.
	for i := range 6 {
		loginFrom(t, a, "127.0.0.5", "", fmt.Sprintf("spray2-%d", i), "wrong-password")
	}
	if st, _ := loginFrom(t, a, "127.0.0.5", "198.51.100.3", "admin", secAdminPassword); st != http.StatusOK {
		t.Fatalf("the proxy's clients after failures without X-Forwarded-For: %d", st)
	}
	if code, ok := connackFrom(t, "127.0.0.5", a.mqttAddr(), 5, "adm-1", "admin", secAdminPassword); !ok || code != 0 {
		t.Fatalf("MQTT from the proxy's address: %#x %v", code, ok)
	}
}

// wsConnackVia sends an admin's MQTT 5 CONNECT over WebSocket from the
// address from, as a proxy forwarding for xff, and returns the CONNACK's
// code, or ok false when the connection closes without one.
func wsConnackVia(t *testing.T, a *app, from, xff string) (code byte, ok bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, wsURL(a), &websocket.DialOptions{Subprotocols: []string{"mqtt"},
		HTTPClient: httpFrom(from), HTTPHeader: http.Header{"X-Forwarded-For": {xff}}})
	if err != nil {
		t.Fatalf("websocket dial via %s for %s: %v", from, xff, err)
	}
	c := websocket.NetConn(ctx, ws, websocket.MessageBinary)
	defer c.Close()
	if _, err := c.Write(rawConnectAuth(5, "ws-"+xff, "admin", secAdminPassword)); err != nil {
		return 0, false
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || buf[0] != 0x20 {
		return 0, false
	}
	return buf[3], true
}

// TestBanConfig: the keys and their variables, and 0 turns bans off.
func TestBanConfig(t *testing.T) {
	cfg := configs.Default()
	if cfg.Security.BanThreshold != 20 || cfg.Security.BanWindow != 5*time.Minute || cfg.Security.BanDuration != 15*time.Minute {
		t.Fatalf("defaults: %+v", cfg.Security)
	}
	env := map[string]string{"TETHER_SECURITY_BAN_THRESHOLD": "0", "TETHER_SECURITY_BAN_EXEMPT": "10.0.0.0/8,::1"}
	if err := cfg.ApplyEnv(func(k string) (string, bool) { v, ok := env[k]; return v, ok }); err != nil {
		t.Fatal(err)
	}
	if cfg.Security.BanThreshold != 0 || len(cfg.Security.BanExempt) != 2 || newBans(cfg, nil, "").Enabled() {
		t.Fatalf("from the environment: %+v", cfg.Security)
	}
	cfg.Security.BanThreshold = 3
	cfg.Security.BanWindow = 0
	cfg.Security.BanExempt = []string{"nonsense"}
	err := cfg.Validate()
	for _, key := range []string{"security.ban_window", "security.ban_exempt"} {
		if err == nil || !strings.Contains(err.Error(), key) {
			t.Fatalf("validation does not name %s: %v", key, err)
		}
	}
}

// TestUISecurity: an admin's Security page lists a ban with the refusals
// behind it (client-chosen names shown as text, never run as HTML) and
// lifts it; the address logs in again. A viewer has no Security page.
func TestUISecurity(t *testing.T) {
	a := uiApp(t, t.TempDir(), func(c *configs.Config) {
		c.Security.BanThreshold = 3
		c.Security.BanExempt = nil
	})
	ctx := uiBrowser(t)
	base := "http://" + a.httpAddr()
	admin := uiLogin(t, base, "admin", uiAdminPassword)
	admin.do("POST", "/users", map[string]string{"username": "vic", "password": "vic-password", "role": "viewer"}, nil)
	const evil = `<img src=x onerror="window.pwned=1">`
	for _, name := range []string{evil, "guess-1", "guess-2"} {
		if _, ok := connackFrom(t, "127.0.0.2", a.mqttAddr(), 5, "x-"+fmt.Sprint(len(name)), name, "wrong-password"); !ok {
			t.Fatal("refused before the ban")
		}
	}
	if st, code := loginFrom(t, a, "127.0.0.2", "", "admin", uiAdminPassword); st != http.StatusForbidden || code != "banned" {
		t.Fatalf("not banned: %d %s", st, code)
	}

	step(t, ctx, "log in as admin", loginSteps(base, "admin", uiAdminPassword)...)
	step(t, ctx, "security page", chromedp.Navigate(base+"/#/security"),
		chromedp.WaitVisible(chromedp.CSS("#ban-table")),
		waitJS(`document.querySelector('#ban-rows tr[data-key="ip:127.0.0.2"]')`),
		waitJS(`document.querySelector('#offender-rows tr[data-key="ip:127.0.0.2"]')`),
		waitJS(`[...document.querySelectorAll('#refusal-rows td')].some((td) => td.textContent === `+jsString(evil)+`)`))
	pwned, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`window.pwned === 1 || !!document.querySelector('#refusal-rows img')`))
	if err != nil || pwned {
		t.Fatalf("a refused name was rendered as HTML (%v)", err)
	}
	screenshots(t, ctx, "security")
	step(t, ctx, "lift the ban", chromedp.Click(chromedp.CSS(`#ban-rows tr[data-key="ip:127.0.0.2"] .lift`)),
		waitJS(`!document.querySelector('#ban-rows tr[data-key="ip:127.0.0.2"]')`),
		waitJS(`document.querySelector('#security-error').textContent === ''`))
	if st, _ := loginFrom(t, a, "127.0.0.2", "", "admin", uiAdminPassword); st != http.StatusOK {
		t.Fatalf("login after the lift in the dashboard: %d", st)
	}
	auditHas(t, admin, "banned ip:127.0.0.2", "ban_lifted ip:127.0.0.2")

	step(t, ctx, "log out", chromedp.Click(chromedp.CSS("#logout")), chromedp.WaitVisible(chromedp.CSS("#login-form")))
	step(t, ctx, "log in as a viewer", loginSteps(base, "vic", "vic-password")...)
	hidden, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.querySelector('#nav a[data-route="security"]').hidden`))
	if err != nil || !hidden {
		t.Fatalf("a viewer sees the Security link (%v)", err)
	}
	step(t, ctx, "a viewer asks for the page", chromedp.Navigate(base+"/#/security"),
		waitJS(`!document.querySelector('#ban-table') && !!document.querySelector('#n-online')`))
}

// TestBanIPv6By64: an IPv6 client owns its /64, so refused logins from
// addresses of one /64 (here through the trusted proxy, as X-Forwarded-
// For) ban the /64 ("ip:2001:db8:1:2::/64"): a fresh address of it is
// refused, another /64 logs in; GET /security and the audit log name
// the /64, and an admin lifts it by that key, its "/" escaped as %2F.
func TestBanIPv6By64(t *testing.T) {
	a, admin := secApp(t)
	for i := range 5 {
		xff := fmt.Sprintf("2001:db8:1:2::%x", i+1)
		if st, _ := loginFrom(t, a, "127.0.0.5", xff, fmt.Sprintf("spray6-%d", i), "wrong-password"); st != http.StatusUnauthorized {
			t.Fatalf("wrong login from %s: %d", xff, st)
		}
	}
	if st, code := loginFrom(t, a, "127.0.0.5", "2001:db8:1:2:ffff::9", "admin", secAdminPassword); st != http.StatusForbidden || code != "banned" {
		t.Fatalf("a fresh address of the banned /64: %d %s", st, code)
	}
	if st, _ := loginFrom(t, a, "127.0.0.5", "2001:db8:1:3::1", "admin", secAdminPassword); st != http.StatusOK {
		t.Fatalf("another /64: %d", st)
	}
	const key = "ip:2001:db8:1:2::/64"
	var s securityBody
	admin.do("GET", "/security", nil, &s)
	if !s.banned(key) || len(s.Bans) != 1 || s.Bans[0].Address != "2001:db8:1:2::/64" {
		t.Fatalf("GET /security: %+v", s.Bans)
	}
	admin.do("DELETE", "/security/bans/ip:2001:db8:1:2::%2F64", nil, nil)
	if st, _ := loginFrom(t, a, "127.0.0.5", "2001:db8:1:2::1", "admin", secAdminPassword); st != http.StatusOK {
		t.Fatalf("after the lift: %d", st)
	}
	auditHas(t, admin, "banned "+key, "ban_lifted "+key)
}
