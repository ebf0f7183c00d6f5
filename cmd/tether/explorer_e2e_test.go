package main

import (
	"fmt"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	paho "github.com/eclipse/paho.mqtt.golang"
)

// TestUIExplorer: an admin's topic explorer shows a device's telemetry
// topic with its payload as it flows, publishes a retained message (its
// payload shown as text, never as HTML), sees it flagged and clears it;
// the broker agrees at each step. A viewer has no explorer.
func TestUIExplorer(t *testing.T) {
	a := uiApp(t, t.TempDir())
	ctx := uiBrowser(t)
	base := "http://" + a.httpAddr()
	admin := uiLogin(t, base, "admin", uiAdminPassword)
	var dev struct{ ID, Secret string }
	admin.do("POST", "/devices", map[string]any{"id": "ex-d1", "name": "explorer device"}, &dev)
	admin.do("POST", "/users", map[string]string{"username": "vik", "password": "vik-password", "role": "viewer"}, nil)
	d := connectDevice(t, a.mqttAddr(), dev.ID, dev.Secret)
	stop := make(chan struct{})
	wg := d.publishUntil(map[string]any{"temperature": 21.5}, stop)
	t.Cleanup(func() { close(stop); wg.Wait() })

	step(t, ctx, "log in as admin", loginSteps(base, "admin", uiAdminPassword)...)
	step(t, ctx, "explorer shows the telemetry topic", chromedp.Navigate(base+"/#/explorer"),
		chromedp.WaitVisible(chromedp.CSS("#explorer-tree")),
		waitJS(`document.querySelector('#explorer-rows tr[data-topic="devices/ex-d1/telemetry"]')`),
		chromedp.Click(chromedp.CSS(`#explorer-rows tr[data-topic="devices/ex-d1/telemetry"]`)),
		waitJS(`(document.querySelector('#detail-payload') || {}).textContent === '{"temperature":21.5}'`))

	step(t, ctx, "watch another filter", setValue("#watch-filter", "devices/+/status"),
		chromedp.Click(chromedp.CSS("#watch-submit")),
		waitJS(`document.querySelector('#explorer-rows tr[data-topic="devices/ex-d1/status"] .retained')`),
		waitJS(`!document.querySelector('#explorer-rows tr[data-topic="devices/ex-d1/telemetry"]')`),
		setValue("#watch-filter", "devices/#/x"), chromedp.Click(chromedp.CSS("#watch-submit")),
		waitJS(`document.querySelector('#watch-error').textContent.includes('Not a topic filter')`),
		setValue("#watch-filter", "#"), chromedp.Click(chromedp.CSS("#watch-submit")),
		waitJS(`document.querySelector('#explorer-rows tr[data-topic="devices/ex-d1/telemetry"]')`))

	const payload = `<b id="bold">hi</b>`
	step(t, ctx, "publish a retained message", setValue("#pub-topic", "lab/ui/retained"), setValue("#pub-payload", payload),
		setValue("#pub-qos", "1"), evalJS(`document.querySelector('#pub-retain').checked = true`),
		chromedp.Click(chromedp.CSS("#pub-submit")),
		waitJS(`document.querySelector('#pub-status').textContent.startsWith('Published')`),
		waitJS(`document.querySelector('#explorer-rows tr[data-topic="lab/ui/retained"] .retained')`),
		waitJS(`document.querySelector('#retained-rows tr[data-topic="lab/ui/retained"]')`))
	html, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`!!document.querySelector('#bold') ||
		![...document.querySelectorAll('#retained-rows td')].some((td) => td.textContent === `+jsString(payload)+`)`))
	if err != nil || html {
		t.Fatalf("the payload was rendered as HTML, or not shown as text (%v)", err)
	}
	screenshots(t, ctx, "explorer")
	// The broker holds it: a new subscriber gets it, flagged retained.
	got := make(chan paho.Message, 1)
	sub := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + a.mqttAddr()).SetClientID("ex-check").
		SetUsername("admin").SetPassword(uiAdminPassword).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second))
	if tok := sub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	defer sub.Disconnect(50)
	sub.Subscribe("lab/ui/retained", 1, func(_ paho.Client, m paho.Message) {
		select {
		case got <- m:
		default:
		}
	}).WaitTimeout(5 * time.Second)
	select {
	case m := <-got:
		if !m.Retained() || string(m.Payload()) != payload {
			t.Fatalf("retained message: %v %q", m.Retained(), m.Payload())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the broker kept no retained message")
	}
	var before struct{ Retained int }
	admin.do("GET", "/broker", nil, &before)

	step(t, ctx, "clear it", chromedp.Click(chromedp.CSS(`#retained-rows tr[data-topic="lab/ui/retained"] .clear`)),
		waitJS(`document.querySelector('#pub-status').textContent.startsWith('Cleared')`),
		waitJS(`!document.querySelector('#retained-rows tr[data-topic="lab/ui/retained"]')`),
		waitJS(`!document.querySelector('#explorer-rows tr[data-topic="lab/ui/retained"] .retained')`))
	checkFor(t, 5*time.Second, func() error {
		var after struct{ Retained int }
		admin.do("GET", "/broker", nil, &after)
		if after.Retained != before.Retained-1 {
			return fmt.Errorf("retained messages %d, want %d", after.Retained, before.Retained-1)
		}
		return nil
	})

	step(t, ctx, "log out", chromedp.Click(chromedp.CSS("#logout")), chromedp.WaitVisible(chromedp.CSS("#login-form")))
	step(t, ctx, "log in as a viewer", loginSteps(base, "vik", "vik-password")...)
	hidden, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.querySelector('#nav a[data-route="explorer"]').hidden`))
	if err != nil || !hidden {
		t.Fatalf("a viewer sees the explorer link (%v)", err)
	}
	step(t, ctx, "a viewer asks for the explorer", chromedp.Navigate(base+"/#/explorer"),
		waitJS(`!document.querySelector('#explorer-tree') && !!document.querySelector('#n-online')`))
}
