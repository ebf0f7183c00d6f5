package main

import (
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	paho "github.com/eclipse/paho.mqtt.golang"
)

// TestUITwinFrequentReports: a device reporting its twin every 30 ms for
// as long as the test runs. The twin panel shows a value the device
// reported after the test started waiting (before, each report put the
// panel's reload off by another 100 ms, so it never came).
func TestUITwinFrequentReports(t *testing.T) {
	a := uiApp(t, t.TempDir())
	ctx := uiBrowser(t)
	base := "http://" + a.httpAddr()
	admin := uiLogin(t, base, "admin", uiAdminPassword)
	var dev registered
	admin.do("POST", "/devices", map[string]any{"id": "chatty-1", "type": "meter"}, &dev)
	d := connectDevice(t, a.mqttAddr(), dev.ID, dev.Secret)

	step(t, ctx, "log in", loginSteps(base, "admin", uiAdminPassword)...)
	step(t, ctx, "device page", chromedp.Navigate(base+"/#/devices/chatty-1"),
		chromedp.WaitVisible(chromedp.CSS("#twin-reported")),
		waitJS(`window.tetherLive.client.connected && window.tetherLive.subs.has('devices/chatty-1/twin/reported')`))

	var n atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(30 * time.Millisecond)
		defer tick.Stop()
		for {
			k := n.Add(1)
			d.c.Publish("devices/chatty-1/twin/reported", 0, false, []byte(`{"n":`+strconv.FormatInt(k, 10)+`}`))
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	defer func() { close(stop); wg.Wait() }()
	shown := `(JSON.parse(document.querySelector('#twin-reported').textContent || '{}').n || 0)`
	// Three times over, so that a pause in the stream that let the old
	// panel reload once does not pass it.
	for round := range 3 {
		want := n.Load() + 10
		step(t, ctx, fmt.Sprintf("round %d: the panel shows a report of %d or later while reports go on", round, want),
			waitJS(fmt.Sprintf(`%s >= %d`, shown, want)))
	}
}

// TestUIFleetUnknownStatuses: statuses published for ids the registry
// does not have (an admin may publish there), over and over, become one
// request per id, not one per id every half second; many such ids become
// one load of the registry, not a request each. A device registered
// meanwhile still shows up when it connects.
func TestUIFleetUnknownStatuses(t *testing.T) {
	a := uiApp(t, t.TempDir())
	ctx := uiBrowser(t)
	base := "http://" + a.httpAddr()
	admin := uiLogin(t, base, "admin", uiAdminPassword)

	step(t, ctx, "log in", loginSteps(base, "admin", uiAdminPassword)...)
	step(t, ctx, "fleet loaded and following statuses",
		waitJS(`window.tetherFleet.loaded && window.tetherLive.subs.has('devices/+/status')`),
		evalJS(`performance.setResourceTimingBufferSize(100000)`))

	opts := paho.NewClientOptions().AddBroker("tcp://" + a.mqttAddr()).
		SetClientID("ghost-writer").SetUsername("admin").SetPassword(uiAdminPassword).SetAutoReconnect(false)
	pub := paho.NewClient(opts)
	if tok := pub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("admin connect: %v", tok.Error())
	}
	defer pub.Disconnect(100)
	// flood publishes a status for each of n ids named prefix-i every 50
	// ms until stop is closed.
	flood := func(prefix string, n int, stop <-chan struct{}) *sync.WaitGroup {
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(50 * time.Millisecond)
			defer tick.Stop()
			for {
				since := time.Now().UTC().Format(time.RFC3339)
				for i := range n {
					pub.Publish(fmt.Sprintf("devices/%s-%d/status", prefix, i), 0, false,
						`{"online":true,"since":"`+since+`","transport":"tcp"}`)
				}
				select {
				case <-stop:
					return
				case <-tick.C:
				}
			}
		}()
		return &wg
	}
	// requests counts the page's requests whose path matches re.
	requests := func(re string) int {
		t.Helper()
		n, err := chromedp.Run(ctx, chromedp.Evaluate[int](fmt.Sprintf(
			`performance.getEntriesByType('resource').filter((e) => /%s/.test(new URL(e.name).pathname + new URL(e.name).search)).length`, re)))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	perID := func(prefix string) map[string]int {
		t.Helper()
		m, err := chromedp.Run(ctx, chromedp.Evaluate[map[string]int](fmt.Sprintf(`(() => {
			const m = {};
			for (const e of performance.getEntriesByType('resource')) {
				const p = new URL(e.name).pathname;
				if (p.startsWith('/api/v1/devices/%s-')) m[p] = (m[p] || 0) + 1;
			}
			return m;
		})()`, prefix)))
		if err != nil {
			t.Fatal(err)
		}
		return m
	}

	// A few ids, with the registry loaded just now: each is asked about,
	// found missing, and not asked about again however often its status
	// comes.
	stop := make(chan struct{})
	wg := flood("ghost", 20, stop)
	step(t, ctx, "each ghost asked about", waitJS(`performance.getEntriesByType('resource').filter((e) => e.name.includes('/api/v1/devices/ghost-')).length >= 20`))
	statuses := func() int {
		n, err := chromedp.Run(ctx, chromedp.Evaluate[int](`window.tetherFleet.statuses`))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	// Forty more rounds of statuses reach the page (two seconds' worth).
	from := statuses()
	step(t, ctx, "the statuses go on", waitJS(fmt.Sprintf(`window.tetherFleet.statuses >= %d`, from+40*20)))
	close(stop)
	wg.Wait()
	for id, k := range perID("ghost") {
		if k != 1 {
			t.Errorf("%s asked about %d times, want once", id, k)
		}
	}
	if n := len(perID("ghost")); n != 20 {
		t.Errorf("%d ghosts asked about, want 20", n)
	}

	// Many ids, the registry loaded a while ago: one load of the registry
	// answers them all.
	loads := requests(`^\/api\/v1\/devices\?`)
	step(t, ctx, "the last load a minute ago", evalJS(`window.tetherFleet.loadedAt -= 60000`))
	stop = make(chan struct{})
	wg = flood("phantom", 300, stop)
	from = statuses()
	step(t, ctx, "phantoms' statuses come", waitJS(fmt.Sprintf(`window.tetherFleet.statuses >= %d`, from+300*20)))
	close(stop)
	wg.Wait()
	step(t, ctx, "no phantom shown", waitJS(`![...window.tetherFleet.byId.keys()].some((id) => id.startsWith('phantom-'))`))
	if n := len(perID("phantom")); n > 10 {
		t.Errorf("%d phantoms asked about one by one, want at most 10 (one interval's worth)", n)
	}
	if n := requests(`^\/api\/v1\/devices\?`) - loads; n < 1 || n > 2 {
		t.Errorf("the registry was loaded %d times for the phantoms, want once", n)
	}

	// The page has read what the flood left queued for it: a status
	// published after it (again until one arrives: the broker drops QoS 0
	// messages for a reader 256 behind, and would drop the real device's
	// too) has been looked up and found missing.
	caughtUp := make(chan struct{})
	stopCaughtUp := sync.OnceFunc(func() { close(caughtUp) })
	defer stopCaughtUp()
	go func() {
		for {
			pub.Publish("devices/caught-up/status", 0, false, `{"online":true}`)
			select {
			case <-caughtUp:
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	step(t, ctx, "the page caught up", waitJS(`window.tetherFleet.missing.has('caught-up')`))
	stopCaughtUp()

	// A device registered elsewhere is still found when it connects.
	var dev registered
	admin.do("POST", "/devices", map[string]any{"id": "real-1", "type": "meter"}, &dev)
	connectDevice(t, a.mqttAddr(), dev.ID, dev.Secret)
	step(t, ctx, "a real device shows", waitJS(`(window.tetherFleet.byId.get('real-1') || {}).type === 'meter' && window.tetherFleet.byId.get('real-1').online`))

	// One whose lookup fails (the network; the fault made in the page) is
	// asked about again, and shows.
	step(t, ctx, "lookups of real-2 fail once", evalJS(`(() => {
		const f = window.fetch;
		let failed = 0;
		window.fetch = (url, opts) => {
			if (String(url).endsWith('/api/v1/devices/real-2') && failed++ === 0) return Promise.reject(new TypeError('Failed to fetch'));
			return f(url, opts);
		};
		window.realTwoFailed = () => failed;
	})()`))
	admin.do("POST", "/devices", map[string]any{"id": "real-2", "type": "pump"}, &dev)
	connectDevice(t, a.mqttAddr(), dev.ID, dev.Secret)
	step(t, ctx, "a device whose lookup failed shows", waitJS(`window.realTwoFailed() >= 2 && (window.tetherFleet.byId.get('real-2') || {}).type === 'pump' && window.tetherFleet.byId.get('real-2').online`))
	if n := len(perID("ghost")) + len(perID("phantom")); n > 30 {
		t.Errorf("%d ids asked about in all", n)
	}
}

// TestUIFleetDeviceRegisteredAgain: a device deleted while the fleet page
// watches leaves the page (its retained status is deleted), and registered
// again under the same id and connected shows with its new registration.
// Then the same when a late status of the deleted device (a node's that
// saw it disconnect before it learnt of the deletion; here an admin's) had
// the page look the id up, find it missing and remember it as missing for
// a minute: the new registration's status, online where the last said
// offline, is looked up again at once.
func TestUIFleetDeviceRegisteredAgain(t *testing.T) {
	a := uiApp(t, t.TempDir())
	ctx := uiBrowser(t)
	base := "http://" + a.httpAddr()
	admin := uiLogin(t, base, "admin", uiAdminPassword)
	var dev registered
	admin.do("POST", "/devices", map[string]any{"id": "again-1", "type": "meter"}, &dev)
	d := connectDevice(t, a.mqttAddr(), dev.ID, dev.Secret)

	step(t, ctx, "log in", loginSteps(base, "admin", uiAdminPassword)...)
	step(t, ctx, "devices page", chromedp.Navigate(base+"/#/devices"), evalJS(`performance.setResourceTimingBufferSize(100000)`))
	step(t, ctx, "the device shows online", waitJS(`(window.tetherFleet.byId.get('again-1') || {}).online === true`))

	admin.do("DELETE", "/devices/again-1", nil, nil)
	step(t, ctx, "the deleted device leaves the page", waitJS(`!window.tetherFleet.byId.has('again-1')`))
	admin.do("POST", "/devices", map[string]any{"id": "again-1", "type": "pump"}, &dev)
	d.c.Disconnect(100)
	d = connectDevice(t, a.mqttAddr(), dev.ID, dev.Secret)
	step(t, ctx, "registered again, it shows", waitJS(`(window.tetherFleet.byId.get('again-1') || {}).type === 'pump' && window.tetherFleet.byId.get('again-1').online`))

	opts := paho.NewClientOptions().AddBroker("tcp://" + a.mqttAddr()).
		SetClientID("late-status").SetUsername("admin").SetPassword(uiAdminPassword).SetAutoReconnect(false)
	pub := paho.NewClient(opts)
	if tok := pub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("admin connect: %v", tok.Error())
	}
	defer pub.Disconnect(100)
	admin.do("DELETE", "/devices/again-1", nil, nil)
	step(t, ctx, "deleted again, it leaves the page", waitJS(`!window.tetherFleet.byId.has('again-1')`))
	since := time.Now().UTC().Format(time.RFC3339)
	if tok := pub.Publish("devices/again-1/status", 1, false, `{"online":false,"since":"`+since+`","transport":"tcp"}`); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	step(t, ctx, "the late status's id looked up and remembered missing", waitJS(`window.tetherFleet.missing.has('again-1') && !window.tetherFleet.byId.has('again-1')`))
	admin.do("POST", "/devices", map[string]any{"id": "again-1", "type": "valve"}, &dev)
	d.c.Disconnect(100)
	connectDevice(t, a.mqttAddr(), dev.ID, dev.Secret)
	// The step's deadline, 20 s, is well within the minute.
	step(t, ctx, "registered again within the minute, it shows", waitJS(`(window.tetherFleet.byId.get('again-1') || {}).type === 'valve' && window.tetherFleet.byId.get('again-1').online`))

	// Statuses for a made-up id that flip between offline, online and
	// deleted, 60 of them, each taken in (and looked up, if it is) before
	// the next, are still not as many requests: the id is looked up once,
	// and once more early.
	from, err := chromedp.Run(ctx, chromedp.Evaluate[int](`window.tetherFleet.statuses`))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 60 {
		payload := []string{`{"online":false,"since":"` + since + `"}`, `{"online":true,"since":"` + since + `"}`, ``}[i%3]
		if tok := pub.Publish("devices/flip-1/status", 1, false, payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
		step(t, ctx, "the status reaches the page, and its lookups are done",
			waitJS(fmt.Sprintf(`window.tetherFleet.statuses >= %d && !window.tetherFleet.fetchTimer`, from+i+1)))
	}
	n, err := chromedp.Run(ctx, chromedp.Evaluate[int](
		`performance.getEntriesByType('resource').filter((e) => new URL(e.name).pathname === '/api/v1/devices/flip-1').length`))
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		m, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`JSON.stringify(window.tetherFleet.missing.get('flip-1'))`))
		t.Errorf("flip-1 looked up %d times, want 2 (missing %s)", n, m)
	}
}
