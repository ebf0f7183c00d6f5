package main

// The configurations in deploy/, tested for real: the built binary behind
// Debian's nginx (TLS on nginx, the dashboard in Chromium, MQTT.js and
// paho over wss:// through it) and behind Debian's caddy (the WebSocket
// upgrade). nginx and caddy run as the current user on loopback ports
// with everything in a temporary directory.
//
// Locally a missing nginx or caddy skips; in CI (CI=true) a missing nginx
// fails (apt-get install -y nginx); a missing caddy falls back to
// `caddy validate`, then skips.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/coder/websocket"
	paho "github.com/eclipse/paho.mqtt.golang"
)

// deployCerts writes a `tether certs dev` pair (localhost, 127.0.0.1)
// into dir and returns the paths and a pool trusting it.
func deployCerts(t *testing.T, dir string) (cert, key string, pool *x509.CertPool) {
	t.Helper()
	certPEM, keyPEM, err := devCertificate(time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, key = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(cert, certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AppendCertsFromPEM(certPEM)
	return cert, key, pool
}

// renderNginx turns deploy/nginx/tether.conf into a whole nginx.conf on
// loopback ports, with nginx's pid, logs and temporary files in dir. The
// file itself is used as it is, with only these replaced: the listen
// addresses (IPv6 ones dropped), the name, the certificate paths and
// Tether's address.
func renderNginx(t *testing.T, dir, httpPort, httpsPort, cert, key, upstream string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "deploy", "nginx", "tether.conf"))
	if err != nil {
		t.Fatal(err)
	}
	conf := string(b)
	replace := func(old, new string) {
		t.Helper()
		if !strings.Contains(conf, old) {
			t.Fatalf("deploy/nginx/tether.conf no longer has %q", old)
		}
		conf = strings.ReplaceAll(conf, old, new)
	}
	conf = regexp.MustCompile(`(?m)^\s*listen \[::\]:.*\n`).ReplaceAllString(conf, "")
	replace("listen 80", "listen 127.0.0.1:"+httpPort)
	replace("listen 443", "listen 127.0.0.1:"+httpsPort)
	replace("server_name iot.example.com", "server_name localhost")
	replace("/etc/letsencrypt/live/iot.example.com/fullchain.pem", cert)
	replace("/etc/letsencrypt/live/iot.example.com/privkey.pem", key)
	replace("server 127.0.0.1:8080", "server "+upstream)
	user := ""
	if os.Geteuid() == 0 {
		user = "user root root;\n" // workers would otherwise be nobody, shut out of dir
	}
	main := fmt.Sprintf(`%sworker_processes 1;
error_log %[2]s/error.log info;
pid %[2]s/nginx.pid;
events { worker_connections 256; }
http {
    access_log %[2]s/access.log;
    client_body_temp_path %[2]s/client_body;
    proxy_temp_path %[2]s/proxy;
    fastcgi_temp_path %[2]s/fastcgi;
    uwsgi_temp_path %[2]s/uwsgi;
    scgi_temp_path %[2]s/scgi;
%s
}
`, user, dir, conf)
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(main), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// startNginx runs nginx in the foreground on conf until the test ends.
func startNginx(t *testing.T, bin, dir, conf string) {
	t.Helper()
	if out, err := exec.Command(bin, "-t", "-p", dir, "-c", conf, "-g", "daemon off;").CombinedOutput(); err != nil {
		t.Fatalf("nginx -t: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "-p", dir, "-c", conf, "-g", "daemon off;")
	logf, err := os.Create(filepath.Join(dir, "nginx.out"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt) // fast shutdown
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Logf("nginx error.log:\n%s", b)
		}
	})
}

// TestDeployNginx: the dashboard, MQTT.js and paho through Debian's nginx
// with deploy/nginx/tether.conf, TLS on nginx, all MQTT over wss://.
func TestDeployNginx(t *testing.T) {
	bin, err := exec.LookPath("nginx")
	if err != nil {
		bin, err = exec.LookPath("/usr/sbin/nginx")
	}
	requireTool(t, "nginx (apt-get install -y nginx)", err)
	dir := t.TempDir()
	cert, key, pool := deployCerts(t, dir)
	p := startProcess(t, "TETHER_ADMIN_PASSWORD="+uiAdminPassword, "TETHER_HTTP_TRUSTED_PROXIES=127.0.0.1")
	httpsPort, httpPort := port(freeAddr(t)), port(freeAddr(t))
	startNginx(t, bin, dir, renderNginx(t, dir, httpPort, httpsPort, cert, key, p.http))
	base := "https://localhost:" + httpsPort
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	t.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr}
	checkFor(t, 10*time.Second, func() error {
		res, err := client.Get(base + "/healthz")
		if err != nil {
			return err
		}
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			return fmt.Errorf("GET /healthz through nginx: %s", res.Status)
		}
		return nil
	})
	checkMetricsRestricted(t, "nginx", base, pool)
	// Plain HTTP is sent to HTTPS; a name other than Tether's gets nothing.
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	if res, err := noRedirect.Get("http://localhost:" + httpPort + "/"); err != nil || res.StatusCode != http.StatusMovedPermanently {
		t.Errorf("http:// through nginx: %v %v, want a redirect to https", res, err)
	} else {
		res.Body.Close()
	}
	if res, err := http.Get("http://127.0.0.1:" + httpPort + "/"); err == nil {
		res.Body.Close()
		t.Errorf("an unknown name through nginx got %s, want no answer", res.Status)
	}

	// The dashboard in Chromium: login, live status, live telemetry and a
	// command, its MQTT over wss:// through nginx.
	api := &apiClient{t: t, base: base, hc: client}
	var r struct{ Token string }
	api.do("POST", "/auth/login", map[string]string{"username": "admin", "password": uiAdminPassword}, &r)
	api.token = r.Token
	var dev registered
	api.do("POST", "/devices", map[string]any{"id": "gate-3", "type": "gate"}, &dev)

	ctx := uiBrowser(t, chromedp.Flag("ignore-certificate-errors", true))
	step(t, ctx, "log in through nginx", loginSteps(base, "admin", uiAdminPassword)...)
	step(t, ctx, "the page's MQTT is wss:// through nginx",
		waitJS(`window.tetherLive.client && window.tetherLive.client.options.protocol === 'wss' && window.tetherLive.client.connected`),
		// A background tab runs timers about once a minute: the keep alive
		// must outlast that (see live.js).
		waitJS(`window.tetherLive.client.options.keepalive >= 300`))
	step(t, ctx, "device page", chromedp.Navigate(base+"/#/devices/gate-3"),
		chromedp.WaitVisible(chromedp.CSS("#commands")))
	wss := "wss://localhost:" + httpsPort + "/mqtt"
	d := connectDeviceURL(t, wss, &tls.Config{RootCAs: pool}, dev.ID, dev.Secret)
	step(t, ctx, "live status", chromedp.WaitVisible(chromedp.CSS(`#device-status .pill.online`)))
	stop := make(chan struct{})
	wg := d.publishUntil(map[string]any{"angle": 42}, stop)
	step(t, ctx, "live telemetry",
		waitJS(`(document.querySelector('#latest-values [data-metric="angle"] .v') || {}).textContent === '42'`))
	close(stop)
	wg.Wait()
	step(t, ctx, "a command", chromedp.WaitVisible(chromedp.CSS("#command-form")),
		chromedp.SendKeys(chromedp.CSS("#cmd-name"), "open"),
		setValue("#cmd-params", `{"for": 5}`),
		chromedp.Click(chromedp.CSS("#cmd-send")),
		chromedp.WaitVisible(chromedp.CSS(`#command-rows tr[data-status="succeeded"]`)))

	// MQTT.js and paho (anonymous clients: the binary runs with
	// --allow-anonymous) over the same path, both ways.
	script := mqttJS(t)
	caFile := cert
	topic := nextID("deploy/js")
	s := startSubscriber(t, exec.Command("node", script, "sub", wss, topic, "--qos", "1", "--ca", caFile),
		func(l string) bool { return l == "subscribed" })
	pc := paho.NewClient(paho.NewClientOptions().AddBroker(wss).SetTLSConfig(&tls.Config{RootCAs: pool}).
		SetClientID(nextID("deploy-paho")).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second))
	if tok := pc.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("paho over wss through nginx: %v", tok.Error())
	}
	defer pc.Disconnect(100)
	if tok := pc.Publish(topic, 1, false, "from paho through nginx"); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("paho publish: %v", tok.Error())
	}
	s.expectLine(t, "from paho through nginx")
	got := make(chan string, 1)
	back := nextID("deploy/paho")
	if tok := pc.Subscribe(back, 1, func(_ paho.Client, m paho.Message) { got <- string(m.Payload()) }); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("paho subscribe: %v", tok.Error())
	}
	runClient(t, exec.Command("node", script, "pub", wss, back, "from MQTT.js through nginx", "--qos", "1", "--v5", "--ca", caFile))
	select {
	case m := <-got:
		if m != "from MQTT.js through nginx" {
			t.Fatalf("paho got %q", m)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("paho did not get MQTT.js's message")
	}

	// Tether refused nothing on the way.
	res, err := http.Get("http://" + p.http + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var m strings.Builder
	_, _ = io.Copy(&m, res.Body)
	for _, line := range strings.Split(m.String(), "\n") {
		if strings.HasPrefix(line, "tether_ws_handshake_failures_total{") && !strings.HasSuffix(line, " 0") {
			t.Errorf("a refused upgrade through nginx: %s", line)
		}
	}
}

// TestDeployCaddy: a WebSocket upgrade of /mqtt through Debian's caddy
// with deploy/caddy/Caddyfile (TLS on caddy), an MQTT round trip over it.
func TestDeployCaddy(t *testing.T) {
	bin, err := exec.LookPath("caddy")
	if err != nil {
		t.Skip("caddy not installed (apt-get install -y caddy); deploy/caddy/Caddyfile not tested")
	}
	src, err := os.ReadFile(filepath.Join("..", "..", "deploy", "caddy", "Caddyfile"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cert, key, pool := deployCerts(t, dir)
	p := startProcess(t, "TETHER_HTTP_TRUSTED_PROXIES=127.0.0.1")
	httpsPort, httpPort := port(freeAddr(t)), port(freeAddr(t))
	conf := string(src)
	for old, new := range map[string]string{
		"iot.example.com {":            fmt.Sprintf("localhost:%s {\n\ttls %s %s", httpsPort, cert, key),
		"reverse_proxy 127.0.0.1:8080": "reverse_proxy " + p.http,
	} {
		if !strings.Contains(conf, old) {
			t.Fatalf("deploy/caddy/Caddyfile no longer has %q", old)
		}
		conf = strings.Replace(conf, old, new, 1)
	}
	conf = fmt.Sprintf("{\n\tadmin off\n\thttp_port %s\n\thttps_port %s\n\tskip_install_trust\n\tstorage file_system %s\n}\n\n", httpPort, httpsPort, dir) + conf
	path := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "run", "--config", path, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	logf, _ := os.Create(filepath.Join(dir, "caddy.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("caddy log:\n%s", b)
		}
	})
	wss := "wss://localhost:" + httpsPort + "/mqtt"
	tlsConf := &tls.Config{RootCAs: pool}
	checkFor(t, 15*time.Second, func() error {
		c, err := tls.Dial("tcp", "127.0.0.1:"+httpsPort, &tls.Config{RootCAs: pool, ServerName: "localhost"})
		if err != nil {
			return err
		}
		c.Close()
		return nil
	})
	checkMetricsRestricted(t, "caddy", "https://localhost:"+httpsPort, pool)
	// A browser-like upgrade: the page's origin through Caddy passes.
	conn := dialWSOrigin(t, wss, tlsConf, "https://localhost:"+httpsPort)
	rawHandshake(t, conn, 4, nextID("caddy"))
	conn.Close()
}

// checkMetricsRestricted: through the proxy at base, /metrics answers
// this machine (127.0.0.1) and refuses anyone else with 403, however the
// path is spelt, while the rest still answers everyone. 127.0.0.2 plays
// someone else: it is loopback to Linux, but not an address the files
// allow. (Both files proxied /metrics to the world.)
func checkMetricsRestricted(t *testing.T, proxy, base string, pool *x509.CertPool) {
	t.Helper()
	from := func(ip string) *http.Client {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
		tr := &http.Transport{DialContext: d.DialContext, TLSClientConfig: &tls.Config{RootCAs: pool}}
		t.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Transport: tr, Timeout: 10 * time.Second,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	get := func(c *http.Client, path string) (int, string) {
		t.Helper()
		res, err := c.Get(base + path)
		if err != nil {
			t.Fatalf("GET %s through %s: %v", path, proxy, err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	inside, outside := from("127.0.0.1"), from("127.0.0.2")
	if code, body := get(inside, "/metrics"); code != http.StatusOK || !strings.Contains(body, "tether_build_info") {
		t.Errorf("GET /metrics through %s from 127.0.0.1: %d, want 200 with Tether's metrics", proxy, code)
	}
	for _, path := range []string{"/metrics", "//metrics", "/%6Detrics", "/metrics?format=text"} {
		if code, body := get(outside, path); code != http.StatusForbidden || strings.Contains(body, "tether_") {
			t.Errorf("GET %s through %s from 127.0.0.2: %d (Tether's metrics: %v), want 403", path, proxy, code, strings.Contains(body, "tether_"))
		}
	}
	for _, path := range []string{"/healthz", "/"} {
		if code, _ := get(outside, path); code != http.StatusOK {
			t.Errorf("GET %s through %s from 127.0.0.2: %d, want 200", path, proxy, code)
		}
	}
}

// dialWSOrigin is dialWS with an Origin header, as a browser sends.
func dialWSOrigin(t *testing.T, url string, tlsConf *tls.Config, origin string) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{
		Subprotocols: []string{"mqtt"}, HTTPHeader: http.Header{"Origin": {origin}},
		HTTPClient: &http.Client{Transport: &http.Transport{TLSClientConfig: tlsConf}},
	})
	if err != nil {
		t.Fatalf("websocket dial %s with Origin %s: %v", url, origin, err)
	}
	nc := websocket.NetConn(context.Background(), ws, websocket.MessageBinary)
	t.Cleanup(func() { nc.Close() })
	return nc
}
