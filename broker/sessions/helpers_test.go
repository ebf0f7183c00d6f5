package sessions

import (
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tether-iot/tether/internal/testmqtt"
)

// The helpers shared with other packages' tests live in internal/testmqtt;
// these names keep the tests short.

func checkFor(t testing.TB, d time.Duration, cond func() error) {
	t.Helper()
	testmqtt.CheckFor(t, d, cond)
}

func waitToken(t testing.TB, what string, tok paho.Token) {
	t.Helper()
	testmqtt.WaitToken(t, what, tok)
}

func storeLogger() *slog.Logger { return testmqtt.Logger() }

// storeClient connects a 3.1.1 client; clean=false makes it persistent.
func storeClient(t *testing.T, addr, id string, clean bool, onMsg func(paho.Message)) paho.Client {
	t.Helper()
	return testmqtt.Client(t, addr, id, clean, true, onMsg)
}

// received counts payloads, safe for paho's goroutines.
type received struct{ testmqtt.Received }

func (r *received) add(m paho.Message) { r.Add(m) }
func (r *received) distinct() int      { return r.Distinct() }

func testCounter(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	return testmqtt.Counter(t, c)
}

// orderedPayloads keeps the payloads in the order they arrived (first
// copy of each).
type orderedPayloads struct {
	mu   sync.Mutex
	seen map[string]bool
	all  []string
}

func (o *orderedPayloads) add(m paho.Message) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.seen == nil {
		o.seen = map[string]bool{}
	}
	if p := string(m.Payload()); !o.seen[p] {
		o.seen[p] = true
		o.all = append(o.all, p)
	}
}

func (o *orderedPayloads) list() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.all...)
}

// waitOffline waits until the broker has seen session id go offline.
func waitOffline(t testing.TB, st *Store, id string) {
	t.Helper()
	checkFor(t, 5*time.Second, func() error {
		for _, s := range st.Sessions() {
			if s.ClientID == id && !s.Online {
				return nil
			}
		}
		return fmt.Errorf("session %s not offline", id)
	})
}
