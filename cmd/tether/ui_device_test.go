package main

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/fetch"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/tether-iot/tether/configs"
)

// TestUIDeviceHistoryErrors: when the device page's history query fails
// (the server answers 503, a proxy in front answers 502 with its own HTML
// page, the network drops the request), the page says so above the
// charts, and says nothing once a query succeeds. The failures are made
// in the browser's network layer (DevTools Fetch domain), as a proxy or a
// dropped connection would make them, for the history queries only.
func TestUIDeviceHistoryErrors(t *testing.T) {
	a := uiApp(t, t.TempDir())
	ctx := uiBrowser(t)
	base := "http://" + a.httpAddr()
	admin := uiLogin(t, base, "admin", uiAdminPassword)
	var dev registered
	admin.do("POST", "/devices", map[string]any{"id": "hist-1", "type": "meter"}, &dev)
	d := connectDevice(t, a.mqttAddr(), dev.ID, dev.Secret)
	now := time.Now()
	for i := 20; i > 0; i-- {
		d.publish(map[string]any{"ts": now.Add(-time.Duration(i) * time.Minute).UnixMilli(), "power": 100 + i})
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		var h struct {
			Buckets []json.RawMessage `json:"buckets"`
		}
		admin.do("GET", "/devices/hist-1/telemetry?step=1m", nil, &h)
		if len(h.Buckets) >= 20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("history: %d buckets, want 20", len(h.Buckets))
		}
		time.Sleep(100 * time.Millisecond) // polling the API with a deadline
	}

	// mode says how the browser's history queries end: passed on to the
	// server, answered 503 by it (the body Tether sends), 502 by a proxy,
	// or dropped.
	var mode atomic.Value
	mode.Store("503")
	if err := chromedp.Listen(ctx, func(ev any) {
		e, ok := ev.(*fetch.EventRequestPaused)
		if !ok {
			return
		}
		// A command may not be sent from the listener's goroutine.
		go func() {
			var err error
			switch mode.Load().(string) {
			case "503":
				_, err = chromedp.Call(ctx, fetch.FulfillRequest, fetch.FulfillRequestParams{RequestID: e.RequestID, ResponseCode: 503,
					ResponseHeaders: []*fetch.HeaderEntry{{Name: "Content-Type", Value: "application/json"}},
					Body:            []byte(`{"error":{"code":"unavailable","message":"telemetry history is not available"}}`)})
			case "502":
				_, err = chromedp.Call(ctx, fetch.FulfillRequest, fetch.FulfillRequestParams{RequestID: e.RequestID, ResponseCode: 502,
					ResponseHeaders: []*fetch.HeaderEntry{{Name: "Content-Type", Value: "text/html"}},
					Body:            []byte(`<html><body><h1>502 Bad Gateway</h1></body></html>`)})
			case "drop":
				_, err = chromedp.Call(ctx, fetch.FailRequest, fetch.FailRequestParams{RequestID: e.RequestID, ErrorReason: network.ErrorReasonConnectionReset})
			default:
				_, err = chromedp.Call(ctx, fetch.ContinueRequest, fetch.ContinueRequestParams{RequestID: e.RequestID})
			}
			if err != nil && ctx.Err() == nil {
				t.Errorf("answer %s: %v", e.Request.URL, err)
			}
		}()
	}); err != nil {
		t.Fatal(err)
	}
	step(t, ctx, "log in", loginSteps(base, "admin", uiAdminPassword)...)
	if _, err := chromedp.Call(ctx, fetch.Enable, fetch.EnableParams{Patterns: []*fetch.RequestPattern{
		{URLPattern: "*/api/v1/devices/hist-1/telemetry?*", RequestStage: fetch.RequestStageRequest}}}); err != nil {
		t.Fatal(err)
	}

	errText := `(document.querySelector('#history-error') || {}).textContent || ''`
	shown := func(want string) string {
		return fmt.Sprintf(`!document.querySelector('#history-error').hidden && (%s).includes(%s)`, errText, jsString(want))
	}
	points := `(document.querySelector('.chart[data-metric="power"] .chart-body') || {uplot: {data: [[]]}}).uplot.data[0].length`
	rangeButton := func(label string) chromedp.Action[chromedp.Void] {
		return chromedp.Click(chromedp.CSS(fmt.Sprintf(`#chart-range button[data-range=%q]`, label)))
	}
	step(t, ctx, "the server answers 503 as the page opens", chromedp.Navigate(base+"/#/devices/hist-1"),
		chromedp.WaitVisible(chromedp.CSS("#commands")),
		waitJS(shown("The history could not be loaded: telemetry history is not available")))
	mode.Store("pass")
	step(t, ctx, "a query that succeeds clears the error", rangeButton("24 h"),
		waitJS(`document.querySelector('#history-error').hidden && `+errText+` === ''`),
		waitJS(points+` >= 4`)) // 20 minutes in 5-minute buckets
	mode.Store("502")
	step(t, ctx, "a proxy's 502 page", rangeButton("7 d"), waitJS(shown("502")))
	mode.Store("drop")
	step(t, ctx, "the network drops the query", rangeButton("30 d"), waitJS(shown("The server cannot be reached.")))
	mode.Store("pass")
	step(t, ctx, "and it succeeds again", rangeButton("1 h"),
		waitJS(`document.querySelector('#history-error').hidden`), waitJS(points+` >= 20`))
}

// TestUIDeviceNotStored: a device over telemetry.device_values_rate has
// samples routed but not stored; its page says how many, to a viewer
// too, and when the last was; a device under it shows nothing of the
// kind.
func TestUIDeviceNotStored(t *testing.T) {
	a := uiApp(t, t.TempDir(), func(c *configs.Config) { c.Telemetry.DeviceValuesRate, c.Telemetry.DeviceValuesBurst = 1, 256 })
	ctx := uiBrowser(t)
	base := "http://" + a.httpAddr()
	admin := uiLogin(t, base, "admin", uiAdminPassword)
	admin.do("POST", "/users", map[string]string{"username": "vera", "password": "vera-password-1", "role": "viewer"}, nil)
	var flood, calm registered
	admin.do("POST", "/devices", map[string]any{"id": "flood-1", "type": "meter"}, &flood)
	admin.do("POST", "/devices", map[string]any{"id": "calm-1", "type": "meter"}, &calm)
	many := make(map[string]any, 200)
	for i := range 200 {
		many[fmt.Sprintf("m%03d", i)] = i
	}
	d := connectDevice(t, a.mqttAddr(), flood.ID, flood.Secret)
	for range 3 { // 200 values fit the burst of 256; the next two samples do not
		d.publish(many)
	}
	connectDevice(t, a.mqttAddr(), calm.ID, calm.Secret).publish(map[string]any{"t": 1})
	checkFor(t, 10*time.Second, func() error {
		var got struct {
			NotStored struct {
				Samples int `json:"samples"`
			} `json:"telemetry_not_stored"`
		}
		admin.do("GET", "/devices/flood-1", nil, &got)
		if got.NotStored.Samples != 2 {
			return fmt.Errorf("samples not stored: %d, want 2", got.NotStored.Samples)
		}
		return nil
	})

	notStored := `(document.querySelector('#telemetry-not-stored') || {}).textContent || ''`
	step(t, ctx, "log in as a viewer", loginSteps(base, "vera", "vera-password-1")...)
	step(t, ctx, "the page of the device over its rate", chromedp.Navigate(base+"/#/devices/flood-1"),
		chromedp.WaitVisible(chromedp.CSS("#commands")),
		waitJS(notStored+`.includes('2 samples over the stored-values rate (telemetry.device_values_rate)')`),
		waitJS(notStored+`.includes('the last just now') || `+notStored+`.includes(' s ago')`))
	step(t, ctx, "the page of a device under it", chromedp.Navigate(base+"/#/devices/calm-1"),
		chromedp.WaitVisible(chromedp.CSS("#commands")),
		waitJS(`document.querySelector('#device-details').textContent.includes('Registered')`))
	shown, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`!!document.querySelector('#telemetry-not-stored')`))
	if err != nil {
		t.Fatal(err)
	}
	if shown {
		t.Error("calm-1's page shows samples not stored")
	}
}

// TestUIDeviceHostileTelemetry: the broker routes telemetry the server
// refuses to store (here 2,000 metrics in one message, a 1 MB string), so
// the device page bounds what it shows: 1,024 metric names at most (the
// most the server keeps for a device), charts for 64, values cut at 256
// characters, and says so; the page stays usable (before, a message of
// 10,000 metrics froze it for six minutes and left 10,000 charts). A metric named
// __proto__ is shown like any other.
func TestUIDeviceHostileTelemetry(t *testing.T) {
	a := uiApp(t, t.TempDir())
	ctx := uiBrowser(t)
	base := "http://" + a.httpAddr()
	admin := uiLogin(t, base, "admin", uiAdminPassword)
	var dev registered
	admin.do("POST", "/devices", map[string]any{"id": "noisy-1", "type": "meter"}, &dev)
	d := connectDevice(t, a.mqttAddr(), dev.ID, dev.Secret)
	d.publish(map[string]any{"__proto__": 7, "temp": 21.5}) // within the limits: stored
	// The page shows what is stored when it opens (and what comes live
	// after it subscribes): wait for the writer (a flush a second, later
	// on a loaded machine) before opening it.
	checkFor(t, 30*time.Second, func() error {
		var got struct {
			LastValues map[string]any `json:"last_values"`
		}
		admin.do("GET", "/devices/noisy-1", nil, &got)
		if got.LastValues["__proto__"] != 7.0 {
			return fmt.Errorf("last values %v", got.LastValues)
		}
		return nil
	})

	step(t, ctx, "log in", loginSteps(base, "admin", uiAdminPassword)...)
	step(t, ctx, "device page", chromedp.Navigate(base+"/#/devices/noisy-1"),
		chromedp.WaitVisible(chromedp.CSS("#commands")),
		waitJS(`(document.querySelector('#latest-values [data-metric="__proto__"] .v') || {}).textContent === '7'`),
		waitJS(`window.tetherLive.client.connected && window.tetherLive.subs.has('devices/noisy-1/telemetry')`))

	many := make(map[string]any, 2000)
	for i := range 2000 {
		many[fmt.Sprintf("m%05d", i)] = i
	}
	long := map[string]any{"text": strings.Repeat("x", 1<<20-100)}
	// Each published until the page shows it (its subscription may be
	// granted a moment after the page asked for it): the long text first,
	// as the page keeps no new names once it has 1,024.
	stop := make(chan struct{})
	wg := d.publishUntil(long, stop)
	step(t, ctx, "a 1 MB value is cut",
		waitJS(`(document.querySelector('#latest-values [data-metric="text"] .v') || {}).textContent === 'x'.repeat(256) + '…'`))
	close(stop)
	wg.Wait()
	stop = make(chan struct{})
	wg = d.publishUntil(many, stop)
	defer func() { close(stop); wg.Wait() }()
	type pageState struct {
		Metrics, Charts, Height int
		ValuesNote, ChartsNote  bool
		Text                    string
	}
	var st pageState
	checkFor(t, 30*time.Second, func() (err error) {
		st, err = chromedp.Run(ctx, chromedp.Evaluate[pageState](`({metrics: document.querySelectorAll('#latest-values .metric').length,
			charts: document.querySelectorAll('#charts .chart').length, height: document.body.scrollHeight,
			valuesNote: !document.querySelector('#values-note').hidden, chartsNote: !document.querySelector('#charts-note').hidden,
			text: (document.querySelector('#latest-values [data-metric="text"] .v') || {textContent: ''}).textContent})`))
		if err != nil {
			return err
		}
		if st.Metrics != 1024 || st.Charts != 64 || !st.ValuesNote || !st.ChartsNote || st.Text != strings.Repeat("x", 256)+"…" {
			return fmt.Errorf("the page shows %d metrics, %d charts, notes %v and %v, a text of %d characters; want 1024, 64, true, true, 257",
				st.Metrics, st.Charts, st.ValuesNote, st.ChartsNote, len([]rune(st.Text)))
		}
		return nil
	})
	t.Logf("device page: %d metrics, %d charts, %d px high", st.Metrics, st.Charts, st.Height)
	// The page is still there to use.
	step(t, ctx, "another range", chromedp.Click(chromedp.CSS(`#chart-range button[data-range="24 h"]`)),
		waitJS(`document.querySelector('#chart-range button[data-range="24 h"]').getAttribute('aria-pressed') === 'true'`))
	step(t, ctx, "send a command", chromedp.SendKeys(chromedp.CSS("#cmd-name"), "reboot"),
		chromedp.Click(chromedp.CSS("#cmd-send")),
		chromedp.WaitVisible(chromedp.CSS(`#command-rows tr[data-id]`)))
	step(t, ctx, "the device answers it", chromedp.WaitVisible(chromedp.CSS(`#command-rows tr[data-status="succeeded"]`)))
}

// TestUIDeviceRetainedResponses: a device's retained messages on its
// responses/+ topics (it may set up to 10,000) name commands that do not
// exist; the device page fetches a command's record only for a command it
// shows. Before, each view of the page fetched every one of them: 2,000
// retained messages made one view send 2,000 requests.
func TestUIDeviceRetainedResponses(t *testing.T) {
	a := uiApp(t, t.TempDir())
	ctx := uiBrowser(t)
	base := "http://" + a.httpAddr()
	admin := uiLogin(t, base, "admin", uiAdminPassword)
	var dev registered
	admin.do("POST", "/devices", map[string]any{"id": "resp-1", "type": "meter"}, &dev)
	d := connectDevice(t, a.mqttAddr(), dev.ID, dev.Secret)
	const junk = 300 // within limits.device_publish_burst: not slowed down
	for i := range junk {
		tok := d.c.Publish(fmt.Sprintf("devices/resp-1/responses/junk-%03d", i), 1, true, `{"status":"ok"}`)
		if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("retained response %d: %v", i, tok.Error())
		}
	}
	// fetched counts the page's requests for single commands' records.
	fetched := func() (n int) {
		for _, line := range strings.Split(httpGet(t, base+"/metrics"), "\n") {
			if strings.HasPrefix(line, "tether_http_requests_total{") && strings.Contains(line, `route="GET /api/v1/commands/{cmdId}"`) {
				v, _ := strconv.Atoi(line[strings.LastIndexByte(line, ' ')+1:])
				n += v
			}
		}
		return n
	}
	step(t, ctx, "log in", loginSteps(base, "admin", uiAdminPassword)...)
	step(t, ctx, "device page", chromedp.Navigate(base+"/#/devices/resp-1"),
		chromedp.WaitVisible(chromedp.CSS("#commands")),
		waitJS(`window.tetherLive.client.connected && window.tetherLive.subs.has('devices/resp-1/responses/+')`))
	// The retained messages come when the page subscribes, before the
	// command it sends now and its response.
	step(t, ctx, "send a command", chromedp.SendKeys(chromedp.CSS("#cmd-name"), "reboot"),
		chromedp.Click(chromedp.CSS("#cmd-send")),
		chromedp.WaitVisible(chromedp.CSS(`#command-rows tr[data-status="succeeded"]`)))
	// The command's own record is fetched once a second while it is open:
	// a few times, however slow the machine, against one per junk id.
	if n := fetched(); n >= junk/10 {
		t.Fatalf("the page fetched %d command records for 1 command and %d retained responses", n, junk)
	}
}
