package dashboard

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/tether-iot/tether/broker"
	"github.com/tether-iot/tether/broker/info"
	"github.com/tether-iot/tether/devices"
)

// startBroker starts a real broker on 127.0.0.1:0 that lets anyone in.
func startBroker(t *testing.T) *broker.Broker {
	t.Helper()
	return startBrokerWith(t, nil)
}

// startBrokerWith starts a real broker on 127.0.0.1:0 with access as its
// access hook (nil: anyone may connect).
func startBrokerWith(t *testing.T, access mqtt.Hook) *broker.Broker {
	t.Helper()
	o := broker.DefaultOptions()
	o.TCPAddr, o.AllowAnonymous = "127.0.0.1:0", true
	o.Access, o.Logger = access, slog.New(slog.DiscardHandler)
	b, err := broker.New(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := b.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	})
	return b
}

func connect(t *testing.T, addr, id string, version uint) paho.Client {
	t.Helper()
	c, err := dial(addr, id, "user-"+id, "", version)
	if err != nil {
		t.Fatalf("connect %s: %v", id, err)
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return c
}

// dial connects an MQTT client over TCP.
func dial(addr, id, username, password string, version uint) (paho.Client, error) {
	o := paho.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).SetUsername(username).SetPassword(password).
		SetProtocolVersion(version).SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(20 * time.Second)
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(30 * time.Second) {
		return nil, fmt.Errorf("connect %s: timed out", id)
	}
	return c, tok.Error()
}

func TestClientsAndBrokerStats(t *testing.T) {
	b := startBroker(t)
	e := newAPIEnv(t, func(o *APIOptions) { o.Broker = b })
	for i := 0; i < 5; i++ {
		connect(t, b.TCP.Address(), fmt.Sprintf("c%d", i), uint(3+i%2))
	}
	// Page through the clients two at a time.
	var all []info.Client
	cursor := ""
	deadline := time.Now().Add(5 * time.Second)
	for {
		res, body := e.do("GET", "/clients?limit=2&cursor="+cursor, e.tokens["viewer"], nil)
		e.mustStatus(res, body, http.StatusOK)
		l := decode[clientList](t, body)
		if len(l.Clients) > 2 {
			t.Fatalf("page of %d", len(l.Clients))
		}
		all = append(all, l.Clients...)
		if cursor = l.NextCursor; cursor == "" {
			attached := len(all) == 5
			for _, c := range all {
				// The clock records a session once the engine has
				// established it, just after it is listed.
				attached = attached && c.ConnectedSince != nil
			}
			if attached || time.Now().After(deadline) {
				break
			}
			all = nil // a session was still attaching: list again
		}
	}
	if len(all) != 5 {
		t.Fatalf("listed %d clients: %+v", len(all), all)
	}
	for i, c := range all {
		if c.ID != fmt.Sprintf("c%d", i) || c.Username != "user-"+c.ID || c.Transport != "tcp" || c.Remote == "" ||
			c.ConnectedSince == nil || time.Since(*c.ConnectedSince) > time.Minute {
			t.Fatalf("client %d: %+v", i, c)
		}
		if want := map[int]int{0: 3, 1: 4}[i%2]; c.ProtocolVersion != want {
			t.Fatalf("client %s: protocol %d, want %d", c.ID, c.ProtocolVersion, want)
		}
	}

	res, body := e.do("GET", "/broker", e.tokens["viewer"], nil)
	e.mustStatus(res, body, http.StatusOK)
	info := decode[brokerInfo](t, body)
	if info.ClientsConnected < 5 || info.Version == "" || len(info.Listeners) != 1 || info.Listeners[0].Transport != "tcp" ||
		info.Listeners[0].Open < 5 || info.Started.IsZero() {
		t.Fatalf("broker %s", body)
	}
	for _, q := range []string{"limit=0", "cursor=%%%", "x=1"} {
		res, body := e.do("GET", "/clients?"+q, e.tokens["viewer"], nil)
		e.mustStatus(res, body, http.StatusBadRequest)
	}
}

// TestBulkDevicesAllConnect registers 1,000 devices with one bulk call,
// then connects them all at once with the secrets the API returned,
// through the broker's real access hook, and sees them in /clients and
// online in /devices.
func TestBulkDevicesAllConnect(t *testing.T) {
	if testing.Short() {
		t.Skip("1,000 MQTT connections")
	}
	var b *broker.Broker
	e := newAPIEnv(t, func(o *APIOptions) {
		b = startBrokerWith(t, broker.NewAuth(broker.AuthOptions{Registry: o.Registry}))
		o.Broker = b
	})
	const n = 1000
	var req bulkRequest
	for i := 0; i < n; i++ {
		req.Devices = append(req.Devices, devices.NewDevice{ID: fmt.Sprintf("fleet-%04d", i), Type: "sensor"})
	}
	res, body := e.do("POST", "/devices/bulk", e.tokens["admin"], req)
	e.mustStatus(res, body, http.StatusCreated)
	out := decode[bulkResponse](t, body)

	clients := make([]paho.Client, n)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i, d := range out.Devices {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := dial(b.TCP.Address(), d.ID, d.ID, d.Secret, 4)
			clients[i] = c
			if err != nil {
				errs <- fmt.Errorf("%s: %w", d.ID, err)
			}
		}()
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, c := range clients {
			if c != nil {
				c.Disconnect(0)
			}
		}
	})
	close(errs)
	failed := 0
	for err := range errs {
		if failed++; failed <= 5 {
			t.Error(err)
		}
	}
	if failed > 0 {
		t.Fatalf("%d of %d devices failed to connect", failed, n)
	}
	// A wrong secret is still refused.
	if c, err := dial(b.TCP.Address(), "fleet-0000-x", out.Devices[0].ID, out.Devices[1].Secret, 4); err == nil {
		c.Disconnect(0)
		t.Fatal("a device connected with another device's secret")
	}

	deadline := time.Now().Add(20 * time.Second)
	for {
		res, body = e.do("GET", "/clients?limit=1000", e.tokens["viewer"], nil)
		e.mustStatus(res, body, http.StatusOK)
		cl := decode[clientList](t, body)
		res, body = e.do("GET", "/devices?status=online&limit=1000", e.tokens["viewer"], nil)
		e.mustStatus(res, body, http.StatusOK)
		online := decode[deviceList](t, body)
		if len(cl.Clients) == n && len(online.Devices) == n {
			if d := online.Devices[0]; d.Transport != "tcp" || d.LastSeen == nil {
				t.Fatalf("online device %+v", d)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d clients listed, %d devices online; want %d", len(cl.Clients), len(online.Devices), n)
		}
		time.Sleep(50 * time.Millisecond) // polling interval, not a wait for a condition
	}
}
