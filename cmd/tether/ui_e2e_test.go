package main

// Browser tests of the web dashboard: the whole app in-process on
// 127.0.0.1:0, Debian's chromium driven by chromedp, and paho clients as
// devices. Locally they skip when there is no browser; in CI (CI=true) a
// missing browser fails them.
//
//	go test ./cmd/tether -run TestUI -v
//	TETHER_SCREENSHOTS=1 go test ./cmd/tether -run TestUIEndToEnd   # rewrites docs/screenshots/*.png
//	TETHER_UI_LOAD=1000 TETHER_UI_LOAD_FOR=5m go test ./cmd/tether -run TestUILoad -v -timeout 30m

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/performance"
	"github.com/chromedp/chromedp"
	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/tether-iot/tether/configs"
)

const uiAdminPassword = "admin-e2e-password"

// uiBrowser returns a chromedp context on a fresh headless chromium, or
// skips (fails in CI) when there is none. extra options are added to the
// defaults (e.g. a host resolver rule).
func uiBrowser(t *testing.T, extra ...chromedp.ExecAllocatorOption) context.Context {
	t.Helper()
	path := os.Getenv("TETHER_CHROMIUM")
	if path == "" {
		for _, p := range []string{"/usr/bin/chromium", "/usr/bin/chromium-browser"} {
			if _, err := os.Stat(p); err == nil {
				path = p
				break
			}
		}
	}
	if path == "" {
		if p, err := exec.LookPath("chromium"); err == nil {
			path = p
		}
	}
	if path == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("chromium is not installed (apt-get install -y chromium); CI requires the browser tests")
		}
		t.Skip("chromium not installed; skipping the browser tests")
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-background-timer-throttling", true),
		chromedp.Flag("disable-renderer-backgrounding", true),
		chromedp.Flag("metrics-recording-only", true),
		chromedp.Flag("no-proxy-server", true),
	}
	opts = append(opts, extra...)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	if err := chromedp.Do(ctx); err != nil { // start the browser now
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

// uiApp starts Tether on 127.0.0.1:0 with a data dir in t.TempDir();
// tweaks change the configuration first.
func uiApp(t *testing.T, dataDir string, tweaks ...func(*configs.Config)) *app {
	t.Helper()
	t.Setenv("TETHER_ADMIN_PASSWORD", uiAdminPassword)
	cfg := configs.Default()
	cfg.DataDir = dataDir
	cfg.MQTT.Addr = "127.0.0.1:0"
	cfg.MQTT.TLSAddr = configs.Off
	cfg.HTTP.Addr = "127.0.0.1:0"
	cfg.HTTP.HTTPSAddr = configs.Off
	cfg.MQTT.ShutdownGrace = 2 * time.Second
	for _, f := range tweaks {
		f(&cfg)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() && os.Getenv("TETHER_UI_LOG") != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	a, err := startApp(cfg, log)
	if err != nil {
		t.Fatalf("startApp: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = a.shutdown(ctx)
	})
	// Until the API is part of the app, there is nothing to drive.
	res, err := http.Get("http://" + a.httpAddr() + "/api/v1/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode == http.StatusNotFound {
		t.Skip("the JSON API is not wired into startApp yet")
	}
	return a
}

// apiClient calls the JSON API as one user.
type apiClient struct {
	t     *testing.T
	base  string
	token string
	// hc is the HTTP client; nil means http.DefaultClient.
	hc *http.Client
}

func (c *apiClient) client() *http.Client {
	if c.hc != nil {
		return c.hc
	}
	return http.DefaultClient
}

func uiLogin(t *testing.T, base, user, password string) *apiClient {
	t.Helper()
	c := &apiClient{t: t, base: base}
	var r struct{ Token string }
	c.do("POST", "/auth/login", map[string]string{"username": user, "password": password}, &r)
	if r.Token == "" {
		t.Fatalf("login %s: no token", user)
	}
	c.token = r.Token
	return c
}

func (c *apiClient) do(method, path string, body, out any) {
	c.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, c.base+"/api/v1"+path, rd)
	req.Header.Set("Content-Type", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	res, err := c.client().Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode >= 300 {
		c.t.Fatalf("%s %s: %s: %s", method, path, res.Status, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			c.t.Fatalf("%s %s: decode %s: %v", method, path, b, err)
		}
	}
}

// uiDevice is a paho device that answers commands and records desired
// twin states.
type uiDevice struct {
	id      string
	c       paho.Client
	desired chan map[string]any
}

func connectDevice(t *testing.T, mqttAddr, id, secret string) *uiDevice {
	t.Helper()
	return connectDeviceURL(t, "tcp://"+mqttAddr, nil, id, secret)
}

// connectDeviceURL connects a device to a broker URL (tcp://, ssl://,
// ws://, wss://), with tlsConf for the secure ones.
func connectDeviceURL(t *testing.T, broker string, tlsConf *tls.Config, id, secret string) *uiDevice {
	t.Helper()
	d := &uiDevice{id: id, desired: make(chan map[string]any, 16)}
	opts := paho.NewClientOptions().AddBroker(broker).SetTLSConfig(tlsConf).
		SetClientID(id).SetUsername(id).SetPassword(secret).
		SetCleanSession(true).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second)
	opts.SetOnConnectHandler(func(c paho.Client) {
		c.Subscribe("devices/"+id+"/commands/#", 1, func(c paho.Client, m paho.Message) {
			var cmd struct {
				ID     string         `json:"id"`
				Params map[string]any `json:"params"`
			}
			if json.Unmarshal(m.Payload(), &cmd) != nil || cmd.ID == "" {
				return
			}
			name := m.Topic()[strings.LastIndex(m.Topic(), "/")+1:]
			resp, _ := json.Marshal(map[string]any{"status": "ok", "result": map[string]any{"done": name, "params": cmd.Params}})
			c.Publish("devices/"+id+"/responses/"+cmd.ID, 1, false, resp)
		})
		c.Subscribe("devices/"+id+"/twin/desired", 1, func(c paho.Client, m paho.Message) {
			var st map[string]any
			if json.Unmarshal(m.Payload(), &st) == nil {
				select {
				case d.desired <- st:
				default:
				}
			}
		})
	})
	d.c = paho.NewClient(opts)
	if tok := d.c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("device %s: connect: %v", id, tok.Error())
	}
	t.Cleanup(func() { d.c.Disconnect(100) })
	return d
}

func (d *uiDevice) publish(v map[string]any) {
	b, _ := json.Marshal(v)
	d.c.Publish("devices/"+d.id+"/telemetry", 1, false, b).WaitTimeout(2 * time.Second)
}

// publishUntil publishes v every 200 ms until stop is closed, so a page
// that subscribes late still sees a value arrive.
func (d *uiDevice) publishUntil(v map[string]any, stop <-chan struct{}) *sync.WaitGroup {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			d.publish(v)
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	return &wg
}

// step runs actions with a deadline and fails the test with what it was doing.
func step(t *testing.T, ctx context.Context, what string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := chromedp.Do(sctx, actions...); err != nil {
		// Kept after the test, unlike t.TempDir().
		if b, err2 := chromedp.Run(ctx, chromedp.FullScreenshot(100)); err2 == nil {
			if f, err3 := os.CreateTemp("", "tether-ui-failure-*.png"); err3 == nil {
				_, _ = f.Write(b)
				f.Close()
				t.Logf("screenshot of the failure: %s", f.Name())
			}
		}
		t.Fatalf("%s: %v", what, err)
	}
}

// waitJS polls a JavaScript expression until it is truthy.
func waitJS(expr string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := chromedp.Poll[any](expr, chromedp.WithPollingInterval(100*time.Millisecond))(ctx, t)
		return err
	})
}

func loginSteps(base, user, password string) []chromedp.Action[chromedp.Void] {
	return []chromedp.Action[chromedp.Void]{
		chromedp.Navigate(base + "/#/login"),
		chromedp.WaitVisible(chromedp.CSS("#login-form")),
		chromedp.SendKeys(chromedp.CSS(`input[name=username]`), user),
		chromedp.SendKeys(chromedp.CSS(`input[name=password]`), password),
		chromedp.Click(chromedp.CSS("#login-submit")),
		chromedp.WaitVisible(chromedp.CSS("#n-online")),
		waitJS(`document.querySelector('#conn').dataset.state === 'online'`),
	}
}

func jsString(s string) string { b, _ := json.Marshal(s); return string(b) }

// evalJS runs a JavaScript expression for its effect.
func evalJS(expr string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := chromedp.Evaluate[any](expr, chromedp.EvalIgnoreExceptions)(ctx, t)
		return err
	})
}

// setValue sets a form field's value as typing would.
func setValue(sel, v string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := chromedp.Evaluate[any](fmt.Sprintf(`(() => { const e = document.querySelector(%s); e.value = %s; e.dispatchEvent(new Event('input', {bubbles: true})); return true })()`,
			jsString(sel), jsString(v)))(ctx, t)
		return err
	})
}

// screenshots saves the current page as docs/screenshots/NAME-light.png
// and NAME-dark.png when TETHER_SCREENSHOTS=1.
func screenshots(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	if os.Getenv("TETHER_SCREENSHOTS") != "1" {
		return
	}
	dir := filepath.Join("..", "..", "docs", "screenshots")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, scheme := range []string{"light", "dark"} {
		var b []byte
		err := chromedp.Do(ctx,
			chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
				_, err := chromedp.Call(ctx, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
					Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: scheme}},
				})
				return err
			}),
			chromedp.Sleep(400*time.Millisecond), // let charts repaint in the new colours; a screenshot, not a wait for state
			chromedp.Func(func(ctx context.Context, tg *chromedp.Target) (err error) {
				b, err = chromedp.FullScreenshot(100)(ctx, tg)
				return err
			}),
		)
		if err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
		if err := os.WriteFile(filepath.Join(dir, name+"-"+scheme+".png"), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	_, _ = chromedp.Call(ctx, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{})
}

type registered struct {
	ID     string `json:"id"`
	Secret string `json:"secret"`
}

// TestUIEndToEnd logs in, watches a device come online, sees its
// telemetry on the chart and in the latest values, sends a command the
// device answers, sets desired twin state the device receives, and checks
// that a viewer sees no controls it may not use.
func TestUIEndToEnd(t *testing.T) {
	a := uiApp(t, t.TempDir())
	ctx := uiBrowser(t)
	base := "http://" + a.httpAddr()

	admin := uiLogin(t, base, "admin", uiAdminPassword)
	admin.do("POST", "/users", map[string]string{"username": "vera", "password": "viewer-password", "role": "viewer"}, nil)
	var dev registered
	admin.do("POST", "/devices", map[string]any{"id": "boiler-7", "name": "Boiler room 7", "type": "thermostat",
		"labels": map[string]string{"site": "berlin", "floor": "2"}}, &dev)
	meters := make([]registered, 12) // some neighbours for the list
	for i := range meters {
		admin.do("POST", "/devices", map[string]any{"id": fmt.Sprintf("meter-%02d", i), "type": "meter",
			"labels": map[string]string{"site": []string{"berlin", "hamburg"}[i%2]}}, &meters[i])
	}

	step(t, ctx, "login page", chromedp.Navigate(base+"/#/login"), chromedp.WaitVisible(chromedp.CSS("#login-form")))
	screenshots(t, ctx, "login")
	step(t, ctx, "log in as admin", loginSteps(base, "admin", uiAdminPassword)...)

	// A device comes online: the list and the overview show it.
	step(t, ctx, "device list", chromedp.Navigate(base+"/#/devices"),
		chromedp.WaitVisible(chromedp.CSS(`#device-rows tr[data-id="boiler-7"][data-online="false"]`)))
	d := connectDevice(t, a.mqttAddr(), dev.ID, dev.Secret)
	step(t, ctx, "device comes online in the list",
		chromedp.WaitVisible(chromedp.CSS(`#device-rows tr[data-id="boiler-7"][data-online="true"]`)))
	step(t, ctx, "filters", setValue("#f-q", "meter"),
		waitJS(`document.querySelector('#device-count').textContent.startsWith('12 of 13')`),
		setValue("#f-q", ""), waitJS(`document.querySelectorAll('#device-rows tr[data-id]').length === 13`),
		setValue("#f-label", "site=hamburg"), waitJS(`document.querySelectorAll('#device-rows tr[data-id]').length === 6`),
		setValue("#f-label", ""), waitJS(`document.querySelectorAll('#device-rows tr[data-id]').length === 13`))
	step(t, ctx, "overview counts", chromedp.Navigate(base+"/#/"),
		waitJS(`document.querySelector('#n-online').textContent === '1' && document.querySelector('#n-total').textContent.startsWith('13')`),
		waitJS(`document.querySelector('#rate-in').textContent !== '— /s'`))

	// Half the meters come online and chatter, for a livelier overview.
	fleetStop := make(chan struct{})
	var fleetWG sync.WaitGroup
	defer func() { close(fleetStop); fleetWG.Wait() }()
	for i, m := range meters[:6] {
		md := connectDevice(t, a.mqttAddr(), m.ID, m.Secret)
		fleetWG.Add(1)
		go func() {
			defer fleetWG.Done()
			tick := time.NewTicker(time.Duration(150+40*i) * time.Millisecond)
			defer tick.Stop()
			for k := 0; ; k++ {
				md.publish(map[string]any{"power": 100 + 20*math.Sin(float64(k)/8+float64(i))})
				select {
				case <-fleetStop:
					return
				case <-tick.C:
				}
			}
		}()
	}
	step(t, ctx, "meters online", waitJS(`document.querySelector('#n-online').textContent === '7'`))
	if os.Getenv("TETHER_SCREENSHOTS") == "1" {
		step(t, ctx, "some rates for the chart", waitJS(`window.tetherSys.rate.t.length >= 15`))
	}
	screenshots(t, ctx, "overview")
	step(t, ctx, "device list with the meters", chromedp.Navigate(base+"/#/devices"),
		waitJS(`document.querySelectorAll('#device-rows tr[data-online="true"]').length === 7`))
	screenshots(t, ctx, "devices")

	// The last half hour of boiler-7, as a device that was offline would
	// send it late: the page loads it from the history API.
	now := time.Now()
	for i := 60; i > 0; i-- {
		ts := now.Add(-time.Duration(i) * 30 * time.Second)
		d.publish(map[string]any{"ts": ts.UnixMilli(), "temperature": math.Round((20.5+math.Sin(float64(i)/9))*10) / 10,
			"humidity": 40 + (i % 7)})
	}
	// And a few from ten days ago, for the 30-day chart.
	for i := range 5 {
		d.publish(map[string]any{"ts": now.Add(-10*24*time.Hour + time.Duration(i)*time.Hour).UnixMilli(), "temperature": 18 + i})
	}
	// They are stored within a flush interval: both kinds, which may come
	// in different batches (the 30-day step below failed once in a loaded
	// full-suite run when the page asked before the old ones were
	// written, and a range's history is loaded once).
	for deadline := time.Now().Add(10 * time.Second); ; {
		var h, old struct {
			Buckets []json.RawMessage `json:"buckets"`
		}
		admin.do("GET", "/devices/boiler-7/telemetry?step=1m&from="+now.Add(-time.Hour).UTC().Format(time.RFC3339), nil, &h)
		admin.do("GET", "/devices/boiler-7/telemetry?step=1h&from="+now.Add(-11*24*time.Hour).UTC().Format(time.RFC3339)+
			"&to="+now.Add(-9*24*time.Hour).UTC().Format(time.RFC3339), nil, &old)
		if len(h.Buckets) >= 20 && len(old.Buckets) >= 5 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("history: %d buckets of the last hour, want 20 or more; %d of ten days ago, want 5", len(h.Buckets), len(old.Buckets))
		}
		time.Sleep(100 * time.Millisecond) // polling the API with a deadline
	}

	// Telemetry reaches the latest values and the chart.
	stop := make(chan struct{})
	wg := d.publishUntil(map[string]any{"temperature": 21.5, "humidity": 40}, stop)
	step(t, ctx, "device page shows telemetry", chromedp.Navigate(base+"/#/devices/boiler-7"),
		waitJS(`(document.querySelector('#latest-values [data-metric="temperature"] .v') || {}).textContent === '21.5'`),
		chromedp.WaitVisible(chromedp.CSS(`.chart[data-metric="temperature"] canvas`)),
		waitJS(`(document.querySelector('.chart[data-metric="temperature"] h3 .muted') || {}).textContent === '21.5'`),
		// The value is among the chart's points, not only in its caption.
		waitJS(`document.querySelector('.chart[data-metric="temperature"] .chart-body').uplot.data[1].includes(21.5)`),
		// And the history (from the API, half an hour back) came before it.
		waitJS(`document.querySelector('.chart[data-metric="temperature"] .chart-body').uplot.data[0][0] < Date.now() / 1000 - 1200`))
	// The 30-day range reaches back to the points of ten days ago (from
	// the hourly rollups); 1 h again drops them.
	step(t, ctx, "30-day chart", chromedp.Click(chromedp.CSS(`#chart-range button[data-range="30 d"]`)),
		waitJS(`document.querySelector('#chart-range button[data-range="30 d"]').getAttribute('aria-pressed') === 'true'`),
		waitJS(`document.querySelector('.chart[data-metric="temperature"] .chart-body').uplot.data[0][0] < Date.now() / 1000 - 9 * 86400`),
		chromedp.Click(chromedp.CSS(`#chart-range button[data-range="1 h"]`)),
		waitJS(`document.querySelector('.chart[data-metric="temperature"] .chart-body').uplot.data[0][0] > Date.now() / 1000 - 3700`))
	close(stop)
	wg.Wait()

	// A command the device answers goes to succeeded.
	step(t, ctx, "send a command", chromedp.WaitVisible(chromedp.CSS("#command-form")),
		chromedp.SendKeys(chromedp.CSS("#cmd-name"), "reboot"),
		setValue("#cmd-params", `{"delay": 1}`),
		chromedp.Click(chromedp.CSS("#cmd-send")),
		chromedp.WaitVisible(chromedp.CSS(`#command-rows tr[data-status="succeeded"]`)))

	// Desired twin state reaches the device.
	step(t, ctx, "set desired state", chromedp.WaitVisible(chromedp.CSS("#twin-save")),
		waitJS(`document.querySelector('#twin-desired').value.trim() === '{}'`),
		setValue("#twin-desired", `{"setpoint": 22.5, "mode": "eco"}`),
		chromedp.Click(chromedp.CSS("#twin-save")),
		waitJS(`document.querySelector('#twin-delta').textContent.includes('setpoint')`))
	deadline := time.After(10 * time.Second)
	for got := false; !got; {
		select {
		case st := <-d.desired:
			got = st["setpoint"] == 22.5 && st["mode"] == "eco"
		case <-deadline:
			t.Fatal("the device did not receive the desired state")
		}
	}
	d.c.Publish("devices/boiler-7/twin/reported", 1, false, []byte(`{"setpoint": 22.5, "mode": "eco", "firmware": "1.4.2"}`)).Wait()
	step(t, ctx, "reported state appears", waitJS(`document.querySelector('#twin-reported').textContent.includes('1.4.2')`))
	d.publish(map[string]any{"temperature": 22.1, "humidity": 41})
	step(t, ctx, "scroll to top", evalJS(`window.scrollTo(0, 0)`))
	screenshots(t, ctx, "device")
	if os.Getenv("TETHER_SCREENSHOTS") == "1" {
		step(t, ctx, "phone width", chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2)), chromedp.WaitVisible(chromedp.CSS("#twin")))
		screenshots(t, ctx, "device-phone")
		step(t, ctx, "desktop width", chromedp.ResetViewport())
	}

	// A viewer sees no command, twin or admin controls.
	step(t, ctx, "log out", chromedp.Click(chromedp.CSS("#logout")), chromedp.WaitVisible(chromedp.CSS("#login-form")))
	step(t, ctx, "log in as viewer", loginSteps(base, "vera", "viewer-password")...)
	step(t, ctx, "viewer's device page", chromedp.Navigate(base+"/#/devices/boiler-7"),
		chromedp.WaitVisible(chromedp.CSS("#commands")), chromedp.WaitVisible(chromedp.CSS("#twin-reported")))
	var controls int
	controls, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll('#command-form, #cmd-send, #twin-save, textarea#twin-desired, #dev-delete, #dev-rotate, #dev-toggle').length +
		[...document.querySelectorAll('#nav a[data-role]')].filter((a) => !a.hidden).length`))
	if err != nil || controls != 0 {
		t.Fatalf("viewer sees %d controls it may not use (%v)", controls, err)
	}
	// And the broker would refuse the viewer's command anyway.
	viewer := uiLogin(t, base, "vera", "viewer-password")
	if code := viewer.status("POST", "/devices/boiler-7/commands", map[string]any{"name": "reboot"}); code != http.StatusForbidden {
		t.Errorf("viewer's command: status %d, want 403", code)
	}
}

func (c *apiClient) status(method, path string, body any) int {
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(method, c.base+"/api/v1"+path, bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+c.token)
	res, err := c.client().Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	res.Body.Close()
	return res.StatusCode
}

// TestUIReconnects restarts the broker under an open page: the indicator
// shows the loss, the page reconnects and resubscribes by itself, and
// telemetry flows again.
func TestUIReconnects(t *testing.T) {
	dir := t.TempDir()
	a := uiApp(t, dir)
	ctx := uiBrowser(t)
	base := "http://" + a.httpAddr()
	admin := uiLogin(t, base, "admin", uiAdminPassword)
	var dev registered
	admin.do("POST", "/devices", map[string]any{"id": "pump-1", "type": "pump"}, &dev)

	step(t, ctx, "log in", loginSteps(base, "admin", uiAdminPassword)...)
	step(t, ctx, "device page", chromedp.Navigate(base+"/#/devices/pump-1"), chromedp.WaitVisible(chromedp.CSS("#commands")))

	// Restart on the same ports and data dir.
	httpAddr, mqttAddr := a.httpAddr(), a.mqttAddr()
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	if err := a.shutdown(sctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	cancel()
	step(t, ctx, "indicator shows the loss", waitJS(`document.querySelector('#conn').dataset.state !== 'online'`))
	t.Setenv("TETHER_ADMIN_PASSWORD", uiAdminPassword)
	cfg := configs.Default()
	cfg.DataDir = dir
	cfg.MQTT.Addr, cfg.HTTP.Addr = mqttAddr, httpAddr
	cfg.MQTT.TLSAddr, cfg.HTTP.HTTPSAddr = configs.Off, configs.Off
	var b *app
	for deadline := time.Now().Add(10 * time.Second); ; {
		var err error
		if b, err = startApp(cfg, slog.New(slog.NewTextHandler(io.Discard, nil))); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("restart: %v", err)
		}
		time.Sleep(100 * time.Millisecond) // the port may linger a moment
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = b.shutdown(ctx)
	})
	step(t, ctx, "page reconnects", waitJS(`document.querySelector('#conn').dataset.state === 'online'`))
	d := connectDevice(t, b.mqttAddr(), dev.ID, dev.Secret)
	stop := make(chan struct{})
	wg := d.publishUntil(map[string]any{"rpm": 1450}, stop)
	step(t, ctx, "telemetry after the restart",
		waitJS(`(document.querySelector('#latest-values [data-metric="rpm"] .v') || {}).textContent === '1,450'`),
		chromedp.WaitVisible(chromedp.CSS(`#device-status .pill.online`)))
	close(stop)
	wg.Wait()
}

// TestUILoad measures the page under a fleet: TETHER_UI_LOAD devices each
// publish once per second for TETHER_UI_LOAD_FOR (default 5m) on the
// overview, then as long on one device's page. It logs the main thread's
// busy share and the JS heap.
func TestUILoad(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("TETHER_UI_LOAD"))
	if n <= 0 {
		t.Skip("set TETHER_UI_LOAD=1000 (and TETHER_UI_LOAD_FOR=5m) to measure the dashboard under load")
	}
	dur := 5 * time.Minute
	if v := os.Getenv("TETHER_UI_LOAD_FOR"); v != "" {
		var err error
		if dur, err = time.ParseDuration(v); err != nil {
			t.Fatal(err)
		}
	}
	a := uiApp(t, t.TempDir())
	ctx := uiBrowser(t)
	base := "http://" + a.httpAddr()
	admin := uiLogin(t, base, "admin", uiAdminPassword)
	var devs []registered
	for i := 0; i < n; i += 1000 {
		var req struct {
			Devices []map[string]any `json:"devices"`
		}
		for j := i; j < min(n, i+1000); j++ {
			req.Devices = append(req.Devices, map[string]any{"id": fmt.Sprintf("sim-%05d", j), "type": "sensor",
				"labels": map[string]string{"rack": strconv.Itoa(j % 20)}})
		}
		var res struct{ Devices []registered }
		admin.do("POST", "/devices/bulk", req, &res)
		devs = append(devs, res.Devices...)
	}

	// The fleet: n paho clients, each publishing once per second.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var sent atomic.Int64
	clients := make([]paho.Client, len(devs))
	for i, d := range devs {
		opts := paho.NewClientOptions().AddBroker("tcp://" + a.mqttAddr()).SetClientID(d.ID).
			SetUsername(d.ID).SetPassword(d.Secret).SetAutoReconnect(false).SetConnectTimeout(10 * time.Second)
		c := paho.NewClient(opts)
		if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("device %s: %v", d.ID, tok.Error())
		}
		clients[i] = c
	}
	t.Cleanup(func() {
		for _, c := range clients {
			c.Disconnect(0)
		}
	})
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			topic := "devices/" + devs[i].ID + "/telemetry"
			// Spread the fleet over the second.
			select {
			case <-stop:
				return
			case <-time.After(time.Duration(i) * time.Second / time.Duration(len(clients))):
			}
			tick := time.NewTicker(time.Second)
			defer tick.Stop()
			for k := 0; ; k++ {
				c.Publish(topic, 0, false, fmt.Sprintf(`{"temperature":%.2f,"load":%d}`, 20+float64(k%50)/10, k%100))
				sent.Add(1)
				select {
				case <-stop:
					return
				case <-tick.C:
				}
			}
		}()
	}
	defer func() { close(stop); wg.Wait() }()

	step(t, ctx, "log in", loginSteps(base, "admin", uiAdminPassword)...)
	if _, err := chromedp.Call(ctx, performance.Enable, performance.EnableParams{}); err != nil {
		t.Fatal(err)
	}
	measure := func(page, url, ready string) {
		step(t, ctx, page, chromedp.Navigate(url), waitJS(ready))
		before := perfMetrics(t, ctx)
		start := time.Now()
		time.Sleep(dur) // measuring a period, not waiting for a condition
		after := perfMetrics(t, ctx)
		wall := time.Since(start).Seconds()
		busy := (after["TaskDuration"] - before["TaskDuration"]) / wall
		script := (after["ScriptDuration"] - before["ScriptDuration"]) / wall
		layout := (after["LayoutDuration"] + after["RecalcStyleDuration"] - before["LayoutDuration"] - before["RecalcStyleDuration"]) / wall
		recv, _ := chromedp.Run(ctx, chromedp.Evaluate[float64](`window.tetherLive.received`))
		statuses, _ := chromedp.Run(ctx, chromedp.Evaluate[float64](`window.tetherFleet.statuses`))
		t.Logf("%s, %d devices at 1 msg/s, %s: main thread busy %.1f%% (script %.1f%%, style+layout %.1f%%), JS heap used %.1f MiB of %.1f MiB, DOM nodes %.0f, messages received by the page %.0f (device statuses %.0f)",
			page, n, dur, busy*100, script*100, layout*100, after["JSHeapUsedSize"]/(1<<20), after["JSHeapTotalSize"]/(1<<20), after["Nodes"], recv, statuses)
	}
	measure("overview", base+"/#/", `document.querySelector('#n-online').textContent === '`+formatThousands(n)+`'`)
	measure("device page", base+"/#/devices/"+devs[0].ID, `!!document.querySelector('.chart[data-metric="temperature"] canvas')`)
	if os.Getenv("TETHER_UI_LOAD_LIST") != "" {
		measure("device list", base+"/#/devices", `document.querySelectorAll('#device-rows tr[data-id]').length === 50`)
	}
	t.Logf("fleet published %d messages", sent.Load())
	// The page kept one connection all along (keepalive pings flow).
	if n, err := chromedp.Run(ctx, chromedp.Evaluate[int](`window.tetherLive.connects`)); err != nil || n != 1 {
		t.Errorf("the page connected %d times (%v), want once", n, err)
	}
}

func perfMetrics(t *testing.T, ctx context.Context) map[string]float64 {
	t.Helper()
	res, err := chromedp.Call(ctx, performance.GetMetrics, cdp.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]float64{}
	for _, x := range res.Metrics {
		m[x.Name] = x.Value
	}
	return m
}

func formatThousands(n int) string {
	s := strconv.Itoa(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
