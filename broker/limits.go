package broker

import (
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"
)

// PublishLimit holds each client to a PUBLISH rate (limits.
// publish_rate_per_client), with a burst of one second's worth.
//
// A client over its rate is slowed down, not punished: OnPublish runs on
// the client's own reading goroutine, so waiting there until the rate
// allows the packet means the broker reads nothing more from that client
// meanwhile, its socket buffers fill, and TCP pushes back on the sender.
// Nothing is dropped, no acknowledgement is withheld or faked, nobody is
// disconnected, and other clients are not affected (each has its own
// goroutine). Each delayed packet is counted in
// tether_publish_throttled_total. The broker's own (inline) publishes are
// not limited.
type PublishLimit struct {
	mqtt.HookBase
	rate    float64
	clients sync.Map // *mqtt.Client -> *pubBucket

	throttled, delay prometheus.Counter
}

type pubBucket struct {
	mu     sync.Mutex
	tokens float64
	last   time.Time
}

// NewPublishLimit returns the hook for perSecond PUBLISH packets per
// client; 0 means unlimited (the hook then does nothing).
func NewPublishLimit(perSecond int) *PublishLimit {
	return &PublishLimit{
		rate: float64(perSecond),
		throttled: prometheus.NewCounter(prometheus.CounterOpts{Name: "tether_publish_throttled_total",
			Help: "PUBLISH packets delayed because their client was over limits.publish_rate_per_client."}),
		delay: prometheus.NewCounter(prometheus.CounterOpts{Name: "tether_publish_throttle_seconds_total",
			Help: "Time clients were held back by limits.publish_rate_per_client."}),
	}
}

// ID implements mqtt.Hook.
func (l *PublishLimit) ID() string { return "tether-publish-limit" }

// Provides implements mqtt.Hook.
func (l *PublishLimit) Provides(b byte) bool {
	return l.rate > 0 && (b == mqtt.OnPublish || b == mqtt.OnDisconnect)
}

// OnPublish waits until cl's rate allows pk.
func (l *PublishLimit) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil
	}
	if d := l.take(cl, time.Now()); d > 0 {
		l.throttled.Inc()
		l.delay.Add(d.Seconds())
		time.Sleep(d)
	}
	return pk, nil
}

// take spends one token of cl's bucket at now and returns how long the
// caller must wait for it.
func (l *PublishLimit) take(cl *mqtt.Client, now time.Time) time.Duration {
	v, ok := l.clients.Load(cl)
	if !ok {
		v, _ = l.clients.LoadOrStore(cl, &pubBucket{tokens: l.rate, last: now})
	}
	b := v.(*pubBucket)
	b.mu.Lock()
	defer b.mu.Unlock()
	if now.After(b.last) {
		b.tokens = min(l.rate, b.tokens+now.Sub(b.last).Seconds()*l.rate)
		b.last = now
	}
	b.tokens--
	if b.tokens >= 0 {
		return 0
	}
	// Owe the token: it is paid for by the time we wait.
	d := time.Duration(-b.tokens / l.rate * float64(time.Second))
	b.tokens = 0
	b.last = now.Add(d)
	return d
}

// OnDisconnect forgets cl's bucket.
func (l *PublishLimit) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	l.clients.Delete(cl)
}

// Describe implements prometheus.Collector.
func (l *PublishLimit) Describe(ch chan<- *prometheus.Desc) {
	l.throttled.Describe(ch)
	l.delay.Describe(ch)
}

// Collect implements prometheus.Collector.
func (l *PublishLimit) Collect(ch chan<- prometheus.Metric) {
	l.throttled.Collect(ch)
	l.delay.Collect(ch)
}
