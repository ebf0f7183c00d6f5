package main

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/tether-iot/tether/devices"
)

// TestUIDeviceGrants: on the device page an admin adds a topic grant and
// saves it (the API then has it), a grant the server refuses shows the
// server's reason and changes nothing, and nested telemetry shows as
// dotted metrics.
func TestUIDeviceGrants(t *testing.T) {
	ctx := uiBrowser(t)
	a := uiApp(t, t.TempDir())
	base := "http://" + a.httpAddr()
	admin := uiLogin(t, base, "admin", uiAdminPassword)
	var dev registered
	admin.do("POST", "/devices", map[string]any{"id": "tas-9", "type": "tasmota"}, &dev)
	grants := func() []devices.TopicGrant {
		var d devices.Device
		admin.do("GET", "/devices/tas-9", nil, &d)
		return d.Topics
	}

	step(t, ctx, "log in", loginSteps(base, "admin", uiAdminPassword)...)
	step(t, ctx, "device page", chromedp.Navigate(base+"/#/devices/tas-9"),
		chromedp.WaitVisible(chromedp.CSS("#grants #grant-filter")))
	step(t, ctx, "add a grant",
		setValue("#grant-filter", "tele/%c/#"), setValue("#grant-access", "publish"),
		chromedp.Click(chromedp.CSS("#grant-add")),
		waitJS(`document.querySelector('#grant-rows tr[data-filter="tele/%c/#"]') !== null`),
		chromedp.Click(chromedp.CSS("#grant-save")),
		waitJS(`document.querySelector('#grant-saved').textContent === 'saved'`))
	want := []devices.TopicGrant{{Filter: "tele/%c/#", Access: "publish"}}
	if got := grants(); !reflect.DeepEqual(got, want) {
		t.Fatalf("grants after saving: %v", got)
	}
	step(t, ctx, "a refused grant",
		setValue("#grant-filter", "devices/other/#"), setValue("#grant-access", "subscribe"),
		chromedp.Click(chromedp.CSS("#grant-add")),
		chromedp.Click(chromedp.CSS("#grant-save")),
		waitJS(`document.querySelector('#grant-error').textContent.includes('devices/%c/')`))
	if got := grants(); !reflect.DeepEqual(got, want) {
		t.Fatalf("a refused grant changed them: %v", got)
	}

	// Nested telemetry, live: the metric appears under its dotted name.
	d := connectDevice(t, a.mqttAddr(), dev.ID, dev.Secret)
	b, _ := json.Marshal(map[string]any{"AM2301": map[string]any{"Temperature": 22.1}})
	d.c.Publish("devices/tas-9/telemetry", 1, false, b).Wait()
	d.c.Publish("devices/tas-9/telemetry/rssi", 1, false, "-67").Wait()
	step(t, ctx, "nested and bare telemetry shown",
		waitJS(`document.querySelector('#latest-values [data-metric="AM2301.Temperature"]') !== null`),
		waitJS(`document.querySelector('#latest-values [data-metric="rssi"]') !== null`))
}
