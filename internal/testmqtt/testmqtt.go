package testmqtt

import (
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// CheckFor polls cond until it returns nil, failing the test with cond's
// last error once d has passed.
func CheckFor(t testing.TB, d time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v", d, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// WaitToken waits for a paho operation and fails the test if it does not
// succeed within 10 s.
func WaitToken(t testing.TB, what string, tok paho.Token) {
	t.Helper()
	WaitTokenFor(t, what, tok, 10*time.Second)
}

// WaitTokenFor is WaitToken with a bound of d, for an operation that
// waits for much before it (thousands of publishes ahead of it), whose
// time a loaded machine under the race detector stretches.
func WaitTokenFor(t testing.TB, what string, tok paho.Token, d time.Duration) {
	t.Helper()
	if !tok.WaitTimeout(d) {
		t.Fatalf("%s: timed out after %s", what, d)
	}
	if err := tok.Error(); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// Logger discards the log unless TETHER_TEST_LOG is set.
func Logger() *slog.Logger {
	if os.Getenv("TETHER_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// Client connects a 3.1.1 client over TCP; clean=false makes its session
// persistent. ordered runs onMsg on paho's router goroutine in arrival
// order. It is disconnected when the test ends. It waits up to 20 s for
// the CONNACK: a broker under the race detector on a loaded 2-core
// machine has taken over 5 s to answer. A publish may wait up to 2 minutes
// for the client to take it: a broker holding publishers back (backpressure,
// the cluster's credit window) under the race detector on a loaded machine
// has kept one waiting past paho's default of 30 s (TestClusterFlowControl,
// "publish was broken by timeout" at load 13), which the tests do not
// measure: they check what is delivered.
func Client(t *testing.T, addr, id string, clean, ordered bool, onMsg func(paho.Message)) paho.Client {
	t.Helper()
	o := paho.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).SetProtocolVersion(4).
		SetCleanSession(clean).SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectTimeout(20 * time.Second).SetWriteTimeout(2 * time.Minute).SetOrderMatters(ordered)
	if onMsg != nil {
		o.SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { onMsg(m) })
	}
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", id, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return c
}

// Received counts payloads, safe for paho's goroutines.
type Received struct {
	mu  sync.Mutex
	got map[string]int
}

// Add counts m's payload.
func (r *Received) Add(m paho.Message) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.got == nil {
		r.got = map[string]int{}
	}
	r.got[string(m.Payload())]++
}

// Distinct is how many different payloads arrived.
func (r *Received) Distinct() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.got)
}

// Counter returns c's value.
func Counter(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// CloseEngine closes srv as its Server.Close does, without the hang that
// can: mochi v2.7.9's Close looks each listener's clients up with
// Clients.GetByListener, which takes the clients' read lock twice (the
// second time through Len), so a client's Clients.Delete waiting for the
// write lock between the two (a test's client ending as the test closes
// the engine) deadlocks it for good (docs/upstream.md item 20; a cluster
// test's clean-up hung 22 minutes on it). Here each listener is closed
// with its clients taken from Clients.GetAll (one read lock), and then
// removed, so that Server.Close finds no listener to look up.
func CloseEngine(srv *mqtt.Server) {
	var ids []string
	srv.Listeners.CloseAll(func(id string) {
		ids = append(ids, id)
		for _, cl := range srv.Clients.GetAll() {
			if cl.Net.Listener == id && !cl.Closed() {
				_ = srv.DisconnectClient(cl, packets.ErrServerShuttingDown)
			}
		}
	})
	for _, id := range ids {
		srv.Listeners.Delete(id)
	}
	_ = srv.Close()
}
