package simulator

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// device is one simulated device: one MQTT client and one goroutine (run)
// that owns all of its state. paho's handlers only pass events to it.
type device struct {
	cred   Credential
	prof   *Profile
	fleet  *fleetRun
	rng    *rand.Rand
	client mqtt.Client
	events chan event // from paho's goroutines to run

	connMu sync.Mutex // connMu guards conn
	conn   net.Conn   // the current network connection, closed to churn

	gens     []generator
	settings map[string]any // reported twin state
	applied  float64        // desired twin version last applied
	started  time.Time
	// done holds the ids of the last commands the device acted on, so that
	// a command delivered again (QoS 1 is at least once: a reboot's
	// DISCONNECT can overtake paho's PUBACK, and the broker then resends
	// the command on the next connection) is not acted on twice.
	done []string
}

// event is something paho's goroutines hand to the device goroutine.
type event struct {
	lost    bool // the connection dropped
	topic   string
	payload []byte
}

// newDevice prepares a device; it connects when run is called.
func newDevice(f *fleetRun, cred Credential, prof *Profile, seed uint64) *device {
	d := &device{
		cred:     cred,
		prof:     prof,
		fleet:    f,
		rng:      rand.New(rand.NewPCG(seed, uint64(len(cred.ID)))),
		events:   make(chan event, 16),
		settings: make(map[string]any, len(prof.Settings)),
		started:  time.Now(),
	}
	for k, v := range prof.Settings {
		d.settings[k] = v
	}
	for i := range prof.Metrics {
		d.gens = append(d.gens, newGenerator(&prof.Metrics[i], d.rng, d.started))
	}
	spec := clientSpec{
		id: cred.ID, username: cred.ID, password: cred.Secret,
		keepAlive: f.cfg.KeepAlive,
		clean:     f.cfg.CleanSession,
		onMessage: d.onMessage,
		onLost:    func(err error) { noteBrokerFault(d.fleet.errs, err); d.send(event{lost: true}) },
		track:     d.setConn,
	}
	if w := prof.Will; w != nil {
		spec.will = &Will{
			Topic:   strings.ReplaceAll(w.Topic, "{id}", cred.ID),
			Payload: strings.ReplaceAll(w.Payload, "{id}", cred.ID),
			QoS:     w.QoS, Retain: w.Retain,
		}
	}
	d.client = newClient(f.dialer, spec)
	return d
}

func (d *device) topic(suffix string) string { return "devices/" + d.cred.ID + "/" + suffix }

// onMessage runs on paho's router goroutine: it must not block.
func (d *device) onMessage(_ mqtt.Client, m mqtt.Message) {
	d.send(event{topic: m.Topic(), payload: m.Payload()})
}

func (d *device) send(e event) {
	select {
	case d.events <- e:
	default:
		d.fleet.stats.dropped.Add(1)
	}
}

func (d *device) setConn(c net.Conn) {
	d.connMu.Lock()
	d.conn = c
	d.connMu.Unlock()
}

// dropConn closes the network connection without DISCONNECT, as a device
// losing power would, so the broker publishes its will.
func (d *device) dropConn() {
	d.connMu.Lock()
	c := d.conn
	d.connMu.Unlock()
	if c != nil {
		c.Close()
	}
}

// run connects, stays online until the connection drops, a reboot or churn
// takes the device offline, or ctx ends; then it waits and connects again.
func (d *device) run(ctx context.Context) {
	bo := backoff{min: time.Second, max: time.Minute}
	first := true
	for ctx.Err() == nil {
		if err := d.fleet.gate.connect(ctx, d.client, d.fleet.cfg.ConnectTimeout); err != nil {
			if ctx.Err() != nil {
				return
			}
			d.fleet.stats.connectFailures.Add(1)
			d.fleet.errs.note("connect", err)
			d.fleet.logf("device %s: connect: %v", d.cred.ID, err)
			sleep(ctx, bo.next())
			continue
		}
		bo.reset()
		d.fleet.stats.connects.Add(1)
		d.fleet.stats.online()
		downtime, ok := d.online(ctx, first)
		d.fleet.stats.offline()
		first = false
		if !ok {
			downtime = bo.next()
		}
		sleep(ctx, downtime)
	}
}

// online runs one connected session. It returns how long to stay offline
// and ok, or ok false when the connection was lost (the caller backs off).
func (d *device) online(ctx context.Context, first bool) (downtime time.Duration, ok bool) {
	d.drainStale()
	cfg := d.fleet.cfg
	sub := d.client.SubscribeMultiple(map[string]byte{
		d.topic("commands/#"):   1,
		d.topic("twin/desired"): 1,
	}, nil)
	if !sub.WaitTimeout(cfg.ConnectTimeout) || sub.Error() != nil {
		d.fleet.stats.connectFailures.Add(1)
		d.fleet.errs.note("subscribe", orTimeout(sub.Error()))
		d.client.Disconnect(100)
		return 0, false
	}
	d.reportTwin(d.settings)

	interval := d.interval()
	wait := interval
	if first {
		wait = time.Duration(d.rng.Int64N(int64(interval))) // spread the fleet's first samples
	}
	tick := time.NewTimer(wait)
	defer tick.Stop()
	churn := d.churnTimer()
	defer churn.Stop()

	for {
		select {
		case <-ctx.Done():
			d.client.Disconnect(250)
			return 0, true
		case <-tick.C:
			d.publishTelemetry()
			tick.Reset(d.jittered(interval))
		case <-churn.C:
			d.fleet.stats.churned.Add(1)
			d.dropConn()
			d.awaitLost(ctx)
			return d.jittered(cfg.ChurnDowntime), true
		case e := <-d.events:
			if e.lost {
				if d.client.IsConnectionOpen() {
					continue // left over from an earlier session
				}
				d.fleet.stats.connectionsLost.Add(1)
				return 0, false
			}
			if reboot := d.handle(e); reboot > 0 {
				d.fleet.stats.reboots.Add(1)
				d.client.Disconnect(250)
				return reboot, true
			}
		}
	}
}

// drainStale drops events left from an earlier session.
func (d *device) drainStale() {
	for {
		select {
		case <-d.events:
		default:
			return
		}
	}
}

// awaitLost waits (bounded) for paho to notice a dropped connection.
func (d *device) awaitLost(ctx context.Context) {
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	for {
		select {
		case e := <-d.events:
			if e.lost {
				return
			}
		case <-t.C:
			d.client.Disconnect(0)
			return
		case <-ctx.Done():
			d.client.Disconnect(0) // nothing else will: run ends
			return
		}
	}
}

// handle acts on one inbound message and returns a reboot's downtime, if
// the message asked for one.
func (d *device) handle(e event) time.Duration {
	switch {
	case strings.HasPrefix(e.topic, d.topic("commands/")):
		return d.command(strings.TrimPrefix(e.topic, d.topic("commands/")), e.payload)
	case e.topic == d.topic("twin/desired"):
		d.followTwin(e.payload)
	}
	return 0
}

// interval is the telemetry period: --interval if set, else the profile's.
func (d *device) interval() time.Duration {
	if d.fleet.cfg.Interval > 0 {
		return d.fleet.cfg.Interval
	}
	return d.prof.Interval
}

// jittered spreads d by ± the configured jitter.
func (d *device) jittered(v time.Duration) time.Duration {
	j := d.fleet.cfg.Jitter
	if j <= 0 || v <= 0 {
		return v
	}
	return time.Duration(float64(v) * (1 + j*(2*d.rng.Float64()-1)))
}

// churnTimer fires when this device should drop off: an exponential wait
// with the rate that makes Churn of the fleet drop per minute. It never
// fires when churn is off.
func (d *device) churnTimer() *time.Timer {
	rate := d.fleet.cfg.Churn / 60 // per device per second
	if rate <= 0 {
		t := time.NewTimer(time.Hour)
		t.Stop()
		return t
	}
	wait := time.Duration(d.rng.ExpFloat64() / rate * float64(time.Second))
	return time.NewTimer(min(wait, 24*time.Hour))
}

// publishTelemetry samples every metric and publishes one JSON object.
func (d *device) publishTelemetry() {
	now := time.Now()
	values := make(map[string]any, len(d.gens)+1)
	for _, g := range d.gens {
		g.sample(now, d.settings, values)
	}
	values["ts"] = now.UnixMilli()
	d.publish(d.topic("telemetry"), values, d.fleet.cfg.QoS)
}

// publish sends v as JSON and counts the outcome.
func (d *device) publish(topic string, v any, qos byte) bool {
	payload, err := json.Marshal(v)
	if err != nil {
		d.fleet.stats.publishErrors.Add(1)
		return false
	}
	t := d.client.Publish(topic, qos, false, payload)
	if !t.WaitTimeout(d.fleet.cfg.ConnectTimeout) || t.Error() != nil {
		d.fleet.stats.publishErrors.Add(1)
		d.fleet.errs.note("publish", orTimeout(t.Error()))
		return false
	}
	d.fleet.stats.published.Add(1)
	return true
}
