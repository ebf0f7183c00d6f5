package main

// Deployed behind proxies and load balancers: the /mqtt origin check with
// forwarding headers, refused upgrades counted and logged, the PROXY
// protocol on the TCP and TLS listeners, and certificate renewal without
// a restart. The tests through a real nginx and Caddy are in
// e2e_deploy_test.go.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/tether-iot/tether/configs"
	"github.com/tether-iot/tether/internal/testlog"
)

// startLoggedApp starts the app with its log (debug and up) in a buffer.
func startLoggedApp(t *testing.T, cfg configs.Config) (*app, *testlog.Buffer) {
	t.Helper()
	buf := &testlog.Buffer{}
	a, err := startApp(cfg, slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatalf("startApp: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = a.shutdown(ctx)
	})
	return a, buf
}

// TestRefusedUpgradeLoggedAndCounted: a refused upgrade says why in its
// body, is counted by reason, and is logged once a minute per reason with
// the origin, host, peer and the setting that would allow it.
func TestRefusedUpgradeLoggedAndCounted(t *testing.T) {
	cfg := testConfig(t)
	a, logs := startLoggedApp(t, cfg)
	host := a.httpAddr()
	upgrade := func(hostHdr, origin string) string {
		return "GET /mqtt HTTP/1.1\r\nHost: " + hostHdr + "\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
			"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: mqtt\r\n" +
			"Origin: " + origin + "\r\n\r\n"
	}
	for range 3 {
		resp, body := rawHTTP(t, host, upgrade(host, "https://evil.example"))
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "http.allowed_origins") {
			t.Fatalf("foreign origin: %d %q", resp.StatusCode, body)
		}
	}
	// DNS rebinding: Host and Origin both a name the server is not known by.
	resp, body := rawHTTP(t, host, upgrade("evil.example:1883", "http://evil.example:1883"))
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "DNS rebinding") {
		t.Fatalf("rebinding: %d %q", resp.StatusCode, body)
	}
	if v := metricValue(t, a, `tether_ws_handshake_failures_total{reason="origin"}`); v != "3" {
		t.Errorf("origin refusals counted %q, want 3", v)
	}
	if v := metricValue(t, a, `tether_ws_handshake_failures_total{reason="host"}`); v != "1" {
		t.Errorf("host refusals counted %q, want 1", v)
	}
	text := logs.String()
	var lines []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, "websocket upgrade of /mqtt refused") && strings.Contains(l, "reason=origin") {
			lines = append(lines, l)
		}
	}
	if len(lines) != 1 {
		t.Fatalf("%d log lines for 3 origin refusals, want 1 (rate-limited):\n%s", len(lines), text)
	}
	for _, want := range []string{"origin=https://evil.example", "host=" + host, "peer=127.0.0.1:", "allow_with=", "http.allowed_origins"} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("log line lacks %q: %s", want, lines[0])
		}
	}
	// The dashboard's question: would this page's origin be let in?
	for _, tt := range []struct {
		origin string
		ok     bool
	}{{"http://" + host, true}, {"https://evil.example", false}} {
		res, err := http.Get("http://" + host + "/mqtt?origin=" + tt.origin)
		if err != nil {
			t.Fatal(err)
		}
		var ans struct {
			OK      bool   `json:"ok"`
			Reason  string `json:"reason"`
			Message string `json:"message"`
			Setting string `json:"setting"`
		}
		err = json.NewDecoder(res.Body).Decode(&ans)
		res.Body.Close()
		if err != nil || ans.OK != tt.ok || (!tt.ok && (ans.Reason != "origin" || ans.Setting == "")) {
			t.Errorf("probe %s: %+v %v", tt.origin, ans, err)
		}
	}
	if v := metricValue(t, a, `tether_ws_handshake_failures_total{reason="origin"}`); v != "3" {
		t.Errorf("the probe counted as a refusal: %q", v)
	}
}

// TestOriginBehindProxy: the browser's upgrade as nginx forwards it (Host
// without the port, X-Forwarded-Proto) passes from a trusted proxy and
// not from anyone else; http.public_url names the origin outright.
func TestOriginBehindProxy(t *testing.T) {
	cfg := testConfig(t)
	cfg.HTTP.TrustedProxies = []string{"127.0.0.1"}
	a := startTestApp(t, cfg)
	up := "GET /mqtt HTTP/1.1\r\nHost: iot.example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: mqtt\r\n" +
		"Origin: https://iot.example.com:443\r\nX-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\n\r\n"
	if resp, body := rawHTTP(t, a.httpAddr(), up); resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("through a trusted proxy: %d %q", resp.StatusCode, body)
	}

	cfg = testConfig(t)
	cfg.HTTP.TrustedProxies = []string{"10.0.0.0/8"} // not us
	b := startTestApp(t, cfg)
	if resp, body := rawHTTP(t, b.httpAddr(), up); resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "http.trusted_proxies") {
		t.Fatalf("forwarding headers from an untrusted peer: %d %q", resp.StatusCode, body)
	}

	cfg = testConfig(t)
	cfg.HTTP.PublicURL = "https://iot.example.com"
	c := startTestApp(t, cfg)
	if resp, body := rawHTTP(t, c.httpAddr(), up); resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("with http.public_url: %d %q", resp.StatusCode, body)
	}
}

// proxyV1 is a PROXY protocol version 1 line.
func proxyV1(src string, sport int) []byte {
	return []byte("PROXY TCP4 " + src + " 127.0.0.1 " + itoa(sport) + " 1883\r\n")
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

// proxyV2Header is a PROXY protocol version 2 header for an IPv4 client.
func proxyV2Header(src string, sport uint16) []byte {
	b := []byte("\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c")
	b = append(b, net.ParseIP(src).To4()...)
	b = append(b, 127, 0, 0, 1)
	b = binary.BigEndian.AppendUint16(b, sport)
	return binary.BigEndian.AppendUint16(b, 8883)
}

// TestProxyProtocol: behind a TCP load balancer that sends the PROXY
// protocol, the broker, its limits and its log see the device's address;
// a PROXY header from an address not in mqtt.proxy_protocol_from is not
// believed.
func TestProxyProtocol(t *testing.T) {
	cfg := testConfig(t)
	withTLS(t, &cfg)
	cfg.MQTT.ProxyProtocolFrom = []string{"127.0.0.1"}
	cfg.Limits.MaxConnectionsPerIP = 1
	a, logs := startLoggedApp(t, cfg)
	remoteOf := func(id string) string {
		cl, ok := a.broker.Server.Clients.Get(id)
		if !ok {
			t.Fatalf("client %s not known", id)
		}
		return cl.Net.Remote
	}

	c1 := dialTCP(t, a.mqttAddr())
	c1.Write(proxyV1("203.0.113.7", 40001))
	rawHandshake(t, c1, 4, "pp-v1")
	if got := remoteOf("pp-v1"); got != "203.0.113.7:40001" {
		t.Errorf("v1: remote %s", got)
	}
	// A second device behind the same balancer is another address, so
	// max_connections_per_ip 1 lets it in ...
	c2 := dialTCP(t, a.mqttAddr())
	c2.Write(proxyV1("198.51.100.2", 40002))
	rawHandshake(t, c2, 4, "pp-v1b")
	// ... and a second connection of the first device's address is refused.
	c3 := dialTCP(t, a.mqttAddr())
	c3.Write(proxyV1("203.0.113.7", 40003))
	c3.Write(rawConnect(4, "pp-v1c"))
	if b := expectClosed(t, c3, 5*time.Second); len(b) != 0 {
		t.Errorf("over the per-address limit: got %x, want the connection closed", b)
	}
	checkFor(t, 5*time.Second, func() error {
		if !strings.Contains(logs.String(), "remote=203.0.113.7:40003") {
			return errString("the refusal's log line does not name the device's address")
		}
		return nil
	})

	// Version 2 on the TLS listener: the header comes before the TLS handshake.
	raw := dialTCP(t, a.tlsAddr())
	raw.Write(proxyV2Header("192.0.2.55", 50000))
	tc := tls.Client(raw, &tls.Config{InsecureSkipVerify: true})
	rawHandshake(t, tc, 4, "pp-v2-tls")
	if got := remoteOf("pp-v2-tls"); got != "192.0.2.55:50000" {
		t.Errorf("v2 over TLS: remote %s", got)
	}
	// A device straight from an allowed address without a header is taken
	// as direct.
	direct := dialTCP(t, a.mqttAddr())
	rawHandshake(t, direct, 4, "pp-direct")
	if got := remoteOf("pp-direct"); !strings.HasPrefix(got, "127.0.0.1:") {
		t.Errorf("direct: remote %s", got)
	}

	// From an address not in the list, a PROXY header is garbage.
	cfg = testConfig(t)
	cfg.MQTT.ProxyProtocolFrom = []string{"10.0.0.0/8"}
	b := startTestApp(t, cfg)
	spoof := dialTCP(t, b.mqttAddr())
	spoof.Write(append(proxyV1("203.0.113.7", 1), rawConnect(4, "spoof")...))
	if got := expectClosed(t, spoof, 5*time.Second); len(got) != 0 {
		t.Errorf("a PROXY header from an untrusted peer: got %x, want the connection closed", got)
	}
	if _, ok := b.broker.Server.Clients.Get("spoof"); ok {
		t.Error("the spoofing client was let in")
	}
	assertServing(t, b)
}

type errString string

func (e errString) Error() string { return string(e) }

// writePair writes a new development certificate and key into dir.
func writePair(t *testing.T, dir string) (serial string) {
	t.Helper()
	certPEM, keyPEM, err := devCertificate(time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	writeAtomic(t, filepath.Join(dir, "key.pem"), keyPEM)
	writeAtomic(t, filepath.Join(dir, "cert.pem"), certPEM)
	return serialOf(t, certPEM)
}

func serialOf(t *testing.T, certPEM []byte) string {
	blk, _ := pem.Decode(certPEM)
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c.SerialNumber.Text(16)
}

// writeAtomic replaces path as certbot and cert-manager do: a new file
// renamed over the old.
func writeAtomic(t *testing.T, path string, b []byte) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// servedSerial connects to a TLS address and returns the serial of the
// certificate it is given.
func servedSerial(addr string) (string, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		return "", err
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber.Text(16), nil
}

// TestCertificateRenewal: the real binary serves a renewed certificate
// to new connections on SIGHUP and when the files change, keeps the old
// connections, and keeps the old pair when the new one is bad.
func TestCertificateRenewal(t *testing.T) {
	dir := t.TempDir()
	first := writePair(t, dir)
	p := startProcess(t, "TETHER_TLS_CERT="+filepath.Join(dir, "cert.pem"), "TETHER_TLS_KEY="+filepath.Join(dir, "key.pem"),
		"TETHER_TLS_ADDR=127.0.0.1:0", "TETHER_HTTPS_ADDR=127.0.0.1:0", "TETHER_TLS_RELOAD_INTERVAL=100ms")
	var tlsAddr, httpsAddr string
	checkFor(t, 10*time.Second, func() error {
		for _, line := range strings.Split(p.logText(), "\n") {
			var l struct {
				Msg     string `json:"msg"`
				MQTTTLS string `json:"mqtt_tls"`
				HTTPS   string `json:"https"`
			}
			if json.Unmarshal([]byte(line), &l) != nil || !strings.HasPrefix(l.Msg, "tether ready") {
				continue
			}
			tlsAddr = strings.TrimPrefix(l.MQTTTLS, "tls://")
			httpsAddr = strings.TrimSuffix(strings.TrimPrefix(l.HTTPS, "https://"), "/")
		}
		if tlsAddr == "" || httpsAddr == "" {
			return errString("no TLS and HTTPS addresses in the ready line")
		}
		return nil
	})
	expectSerial := func(what, want string) {
		t.Helper()
		for _, addr := range []string{tlsAddr, httpsAddr} {
			checkFor(t, 10*time.Second, func() error {
				got, err := servedSerial(addr)
				if err != nil {
					return err
				}
				if got != want {
					return errString(what + ": " + addr + " serves " + got + ", want " + want)
				}
				return nil
			})
		}
	}
	expectSerial("at start", first)
	old := tls.Client(dialTCP(t, tlsAddr), &tls.Config{InsecureSkipVerify: true})
	rawHandshake(t, old, 4, "renewal-old")

	// A bad pair (the new certificate with the old key): logged, old kept.
	certPEM, _, err := devCertificate(time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	writeAtomic(t, filepath.Join(dir, "cert.pem"), certPEM)
	p.cmd.Process.Signal(syscall.SIGHUP)
	checkFor(t, 10*time.Second, func() error {
		if !strings.Contains(p.logText(), "the new certificate does not load") {
			return errString("a bad pair was not logged")
		}
		return nil
	})
	expectSerial("after a bad pair", first)

	// SIGHUP with a good pair.
	second := writePair(t, dir)
	p.cmd.Process.Signal(syscall.SIGHUP)
	expectSerial("after SIGHUP", second)

	// A renewal without a signal: the files change.
	third := writePair(t, dir)
	expectSerial("after the files changed", third)

	// The connection opened before still works.
	old.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := old.Write([]byte{0xc0, 0}); err != nil { // PINGREQ
		t.Fatal(err)
	}
	if typ, body, err := readRawPacket(old); err != nil || typ != 0xd0 || len(body) != 0 {
		t.Fatalf("the old connection after renewals: %#x %x %v", typ, body, err)
	}
	if s := old.ConnectionState().PeerCertificates[0].SerialNumber.Text(16); s != first {
		t.Fatalf("old connection's certificate %s", s)
	}
}

// TestUIShowsRefusedUpgrade: a page the server refuses to upgrade (here a
// name it is not known by, as DNS rebinding would bring) says why, not
// "Reconnecting…" forever.
func TestUIShowsRefusedUpgrade(t *testing.T) {
	a := uiApp(t, t.TempDir())
	ctx := uiBrowser(t, chromedp.Flag("host-resolver-rules", "MAP rebind.example 127.0.0.1"))
	base := "http://rebind.example:" + port(a.httpAddr())
	step(t, ctx, "log in", chromedp.Navigate(base+"/#/login"),
		chromedp.WaitVisible(chromedp.CSS("#login-form")),
		chromedp.SendKeys(chromedp.CSS(`input[name=username]`), "admin"),
		chromedp.SendKeys(chromedp.CSS(`input[name=password]`), uiAdminPassword),
		chromedp.Click(chromedp.CSS("#login-submit")),
		chromedp.WaitVisible(chromedp.CSS("#n-online")))
	step(t, ctx, "the reason is shown",
		waitJS(`(document.querySelector('#conn-reason') || {}).textContent?.includes('DNS rebinding')`),
		waitJS(`document.querySelector('#conn').textContent.includes('Not connected')`),
		waitJS(`document.querySelector('#conn-reason').textContent.includes('http.public_url')`))
}
