package simulator

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// clientSpec describes one MQTT client the simulator or bench runs.
type clientSpec struct {
	id, username, password string
	keepAlive              time.Duration
	clean                  bool
	will                   *Will
	onMessage              mqtt.MessageHandler // every message, subscribed or not
	onLost                 func(error)         // the connection dropped
	track                  func(net.Conn)      // the connection was opened
}

// newClient returns a paho client for spec that never reconnects or
// retries on its own: the caller owns reconnects, so that a backoff with
// jitter and the connect gate bound the load a fleet puts on a broker after
// an outage (no reconnect storm).
func newClient(d *dialer, spec clientSpec) mqtt.Client {
	o := mqtt.NewClientOptions().
		AddBroker(d.ep.URL()).
		SetCustomOpenConnectionFn(d.openFn(spec.track)).
		SetClientID(spec.id).
		SetUsername(spec.username).
		SetPassword(spec.password).
		SetProtocolVersion(4).
		SetCleanSession(spec.clean).
		SetKeepAlive(spec.keepAlive).
		SetPingTimeout(10 * time.Second).
		SetConnectTimeout(d.timeout).
		SetWriteTimeout(d.timeout).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetResumeSubs(false).
		SetOrderMatters(true). // handlers run on paho's router goroutine and must not block
		SetDefaultPublishHandler(spec.onMessage)
	if spec.will != nil {
		o.SetWill(spec.will.Topic, spec.will.Payload, spec.will.QoS, spec.will.Retain)
	}
	if spec.onLost != nil {
		lost := spec.onLost
		o.SetConnectionLostHandler(func(_ mqtt.Client, err error) { lost(err) })
	}
	return mqtt.NewClient(o)
}

// errTimeout reports an MQTT operation that did not complete in time.
var errTimeout = errors.New("timed out")

// gate bounds how many clients connect at the same time.
type gate chan struct{}

func newGate(n int) gate {
	if n < 1 {
		n = 1
	}
	return make(gate, n)
}

// acquire waits for a slot or for ctx to end.
func (g gate) acquire(ctx context.Context) error {
	select {
	case g <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (g gate) release() { <-g }

// connect connects c through the gate and waits at most timeout. A
// connection the broker closed before its CONNACK is explained
// (explainClosed).
func (g gate) connect(ctx context.Context, c mqtt.Client, timeout time.Duration) error {
	if err := g.acquire(ctx); err != nil {
		return err
	}
	defer g.release()
	t := c.Connect()
	if !t.WaitTimeout(timeout + time.Second) {
		return errTimeout
	}
	return explainClosed(t.Error(), cap(g))
}

// backoff is an exponential backoff with full jitter.
type backoff struct {
	min, max time.Duration
	attempt  int
}

// next returns the wait before the next attempt.
func (b *backoff) next() time.Duration {
	d := b.min << min(b.attempt, 20)
	if d > b.max || d <= 0 {
		d = b.max
	}
	b.attempt++
	return d/2 + rand.N(d/2+1)
}

func (b *backoff) reset() { b.attempt = 0 }

// sleep waits for d or for ctx to end, and reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
