package broker

import (
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/tether-iot/tether/devices"
	"github.com/tether-iot/tether/listeners"
)

// PublishLimitOptions are the PUBLISH rates. A rate of 0 means unlimited.
type PublishLimitOptions struct {
	// DeviceRate and DeviceBurst hold each device's connection to
	// DeviceRate PUBLISH packets a second, with bursts of up to
	// DeviceBurst (limits.device_publish_rate, limits.device_publish_burst;
	// a burst below 1 means one second's worth).
	DeviceRate, DeviceBurst int
	// PerClient holds every other client (people, admins, anonymous
	// clients) to PerClient packets a second, with a burst of as many
	// (limits.publish_rate_per_client).
	PerClient int
	// Identity tells devices from the others (Auth.Identity); nil treats
	// every client as not a device.
	Identity func(*mqtt.Client) (devices.Identity, bool)
}

// PublishLimit holds each client to its PUBLISH rate (golang.org/x/time/
// rate token buckets, one per connection).
//
// A client over its rate is slowed down, not punished: OnPublish runs on
// the client's own reading goroutine, so waiting there until the bucket
// allows the packet means the broker reads nothing more from that client
// meanwhile, its socket buffers fill, and TCP pushes back on the sender.
// The reading is serial, so one packet never waits longer than one token's
// interval (10 ms at the devices' default 100/s): there is no queue of
// waiting packets to bound, and no need to refuse any. Nothing is dropped,
// no acknowledgement is withheld or faked (a QoS 1/2 PUBACK comes when the
// packet is let through), nobody is disconnected, and other clients are
// not affected (each has its own goroutine). Each delayed packet is
// counted in tether_publish_throttled_total by kind. The broker's own
// (inline) publishes are not limited.
type PublishLimit struct {
	mqtt.HookBase
	o PublishLimitOptions

	clients sync.Map // *mqtt.Client -> *rate.Limiter (nil: unlimited)
	// levels, checked before the rate in OnPublish, is the gate whose
	// check of mqtt.max_topic_levels (gate.deepPublish) this hook makes
	// when it is the first with an OnPublish after the gate (broker.New),
	// nil otherwise. A method called directly, not a func value: the
	// packet it takes by pointer then stays on the stack (through a func
	// value it escaped, 896 bytes per PUBLISH: TestPublishLimitNoAlloc).
	levels *gate

	throttled *prometheus.CounterVec
	delay     prometheus.Counter
}

// NewPublishLimit returns the hook; with every rate 0 it does nothing.
func NewPublishLimit(o PublishLimitOptions) *PublishLimit {
	if o.DeviceBurst < 1 {
		o.DeviceBurst = o.DeviceRate
	}
	return &PublishLimit{
		o: o,
		throttled: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tether_publish_throttled_total",
			Help: "PUBLISH packets delayed because their client was over its rate (limits.device_publish_rate for devices, limits.publish_rate_per_client for others), by kind (device, other)."},
			[]string{"kind"}),
		delay: prometheus.NewCounter(prometheus.CounterOpts{Name: "tether_publish_throttle_seconds_total",
			Help: "Time clients were held back by their PUBLISH rate."}),
	}
}

// ID implements mqtt.Hook.
func (l *PublishLimit) ID() string { return "tether-publish-limit" }

// Provides implements mqtt.Hook.
func (l *PublishLimit) Provides(b byte) bool {
	rated := l.o.DeviceRate > 0 || l.o.PerClient > 0
	return rated && b == mqtt.OnDisconnect || (rated || l.levels != nil) && b == mqtt.OnPublish
}

// OnPublish checks pk's levels (levels), then waits until cl's rate
// allows it.
func (l *PublishLimit) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	err := l.publish(cl, &pk)
	return pk, err
}

// publish is OnPublish on the packet in place (hookSet).
func (l *PublishLimit) publish(cl *mqtt.Client, pk *packets.Packet) error {
	if cl.Net.Inline {
		return nil
	}
	if l.levels != nil {
		if err := l.levels.deepPublish(cl, pk); err != nil {
			return err
		}
		if l.o.DeviceRate <= 0 && l.o.PerClient <= 0 {
			return nil // no rates: no bucket (OnDisconnect, which drops them, is not called)
		}
	}
	lim, kind := l.limiter(cl)
	if lim == nil {
		return nil
	}
	if lim.Allow() {
		return nil // within the rate: Allow allocates nothing (Reserve allocates its *Reservation)
	}
	if d := lim.Reserve().Delay(); d > 0 {
		l.throttled.WithLabelValues(kind).Inc()
		l.delay.Add(d.Seconds())
		listeners.FlushAcks(cl.Net.Conn) // the PUBACKs of the packets before
		time.Sleep(d)
	}
	return nil
}

type limited struct {
	lim  *rate.Limiter
	kind string
}

// limiter returns cl's bucket, made at its first PUBLISH by its identity;
// nil means unlimited.
func (l *PublishLimit) limiter(cl *mqtt.Client) (*rate.Limiter, string) {
	if v, ok := l.clients.Load(cl); ok {
		e := v.(limited)
		return e.lim, e.kind
	}
	e := limited{kind: "other"}
	if id, ok := l.identity(cl); ok && id.Kind == devices.KindDevice {
		e.kind = "device"
		if l.o.DeviceRate > 0 {
			e.lim = rate.NewLimiter(rate.Limit(l.o.DeviceRate), l.o.DeviceBurst)
		}
	} else if l.o.PerClient > 0 {
		e.lim = rate.NewLimiter(rate.Limit(l.o.PerClient), l.o.PerClient)
	}
	v, _ := l.clients.LoadOrStore(cl, e)
	e = v.(limited)
	return e.lim, e.kind
}

func (l *PublishLimit) identity(cl *mqtt.Client) (devices.Identity, bool) {
	if l.o.Identity == nil {
		return devices.Identity{}, false
	}
	return l.o.Identity(cl)
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
