package main

import (
	"reflect"
	"testing"

	"github.com/tether-iot/tether/broker"
	"github.com/tether-iot/tether/configs"
)

// TestBrokerOptionsDefaults: the broker's own defaults are the
// configuration's, so a broker built in a test behaves as a served one.
func TestBrokerOptionsDefaults(t *testing.T) {
	got := brokerOptions(configs.Default())
	want := broker.DefaultOptions()
	want.TCPAddr, want.TLSAddr, want.WebSocket, want.SecureWebSocket = ":1883", ":8883", true, true
	for _, l := range []*[]string{&got.ProxyProtocolFrom, &got.TrustedProxies, &got.AllowedOrigins} {
		if len(*l) == 0 {
			*l = nil
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("brokerOptions(configs.Default()) = %+v\nbroker.DefaultOptions() = %+v", got, want)
	}
	if got, want := retainedLimits(configs.Default()), broker.DefaultRetainedLimitOptions(); !reflect.DeepEqual(got, want) {
		t.Fatalf("retainedLimits(configs.Default()) = %+v\nbroker.DefaultRetainedLimitOptions() = %+v", got, want)
	}
	c := configs.Default()
	c.MQTT.Addr, c.HTTP.HTTPSAddr = configs.Off, configs.Off
	if o := brokerOptions(c); o.TCPAddr != "" || o.SecureWebSocket || !o.WebSocket {
		t.Fatalf("off listeners: %+v", o)
	}
}
