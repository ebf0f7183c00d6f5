package simulator

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// benchRun is the state of one bench run.
type benchRun struct {
	cfg    *BenchConfig
	dialer *dialer
	gate   gate
	run    string // random id keeping client ids and topics apart from other runs
	errs   *errorKinds

	sent      []atomic.Int64 // per publisher, acknowledged (QoS 0: written)
	pubErrors atomic.Int64
	received  atomic.Int64 // unique messages, all subscribers
	lost      atomic.Int64 // connections lost during the run
	after     memory       // broker memory before disconnecting

	// Broker CPU time at the start and the end of the measured phase:
	// publishing and draining (traffic), or connecting and holding (conns).
	cpuStart, cpuEnd time.Duration
	cpuOK            bool // both were read
}

// spec returns the client spec of the bench client called name.
func (b *benchRun) spec(name string) clientSpec {
	return clientSpec{
		id:        "bench-" + b.run + "-" + name,
		username:  b.cfg.Username,
		password:  b.cfg.Password,
		keepAlive: 60 * time.Second,
		clean:     true,
		onLost:    func(err error) { b.lost.Add(1); noteBrokerFault(b.errs, err) },
	}
}

// connectAll connects the clients of specs, ConnectConcurrency at a time,
// and returns the connected ones (nil where a connect failed).
func (b *benchRun) connectAll(ctx context.Context, specs []clientSpec) ([]mqtt.Client, int64, time.Duration) {
	clients := make([]mqtt.Client, len(specs))
	var failed atomic.Int64
	next := atomic.Int64{}
	start := time.Now()
	var wg sync.WaitGroup
	for range min(b.cfg.ConnectConcurrency, len(specs)) {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= len(specs) {
					return
				}
				c := newClient(b.dialer, specs[i])
				if err := b.gate.connect(ctx, c, b.cfg.ConnectTimeout); err != nil {
					failed.Add(1)
					b.errs.note("connect", err)
					continue
				}
				clients[i] = c
			}
		})
	}
	wg.Wait()
	return clients, failed.Load(), time.Since(start)
}

// disconnectAll disconnects clients in parallel and waits for them.
func (b *benchRun) disconnectAll(clients []mqtt.Client) {
	next := atomic.Int64{}
	var wg sync.WaitGroup
	for range min(b.cfg.ConnectConcurrency, len(clients)) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(clients) {
					return
				}
				if clients[i] != nil {
					clients[i].Disconnect(100)
				}
			}
		})
	}
	wg.Wait()
}

// startCPU samples the broker's CPU time when the measured phase begins.
func (b *benchRun) startCPU() {
	if b.cfg.PID > 0 {
		var err error
		b.cpuStart, err = readCPU(b.cfg.PID)
		b.cpuOK = err == nil
	}
}

// measure samples the broker's memory and CPU time while the clients are
// still connected.
func (b *benchRun) measure() {
	if b.cfg.PID > 0 {
		b.after, _ = readMemory(b.cfg.PID) // a broker gone by now shows as zero
		var err error
		b.cpuEnd, err = readCPU(b.cfg.PID)
		b.cpuOK = b.cpuOK && err == nil
	}
}

// conns opens Conns idle connections, holds them for Duration and reports
// the connect rate.
func (b *benchRun) conns(ctx context.Context, res *Result, progressTo io.Writer) error {
	specs := make([]clientSpec, b.cfg.Conns)
	for i := range specs {
		specs[i] = b.spec("c" + strconv.Itoa(i))
	}
	b.startCPU()
	clients, failed, took := b.connectAll(ctx, specs)
	defer b.disconnectAll(clients)
	fillConnect(res, len(specs), failed, took)
	if failed == int64(len(specs)) {
		return fmt.Errorf("connect: all %d connections failed: %s", failed, b.errs)
	}
	stop := progress(progressTo, b.cfg.Progress, func(elapsed, _ time.Duration) string {
		return fmt.Sprintf("bench conns %s: %d connected, %d failed, %d lost",
			elapsed.Truncate(time.Second), int64(len(specs))-failed-b.lost.Load(), failed, b.lost.Load())
	})
	start := time.Now()
	sleep(ctx, b.cfg.Duration)
	stop()
	res.DurationSeconds = round3(time.Since(start).Seconds())
	b.measure()
	return nil
}

// fillConnect records connect figures. The rate is computed from the
// unrounded total time (res.connectTook): rounding the seconds to
// milliseconds first made a sub-millisecond connect phase report 0/s.
func fillConnect(res *Result, n int, failed int64, took time.Duration) {
	res.Conns += n
	res.ConnectErrors += failed
	res.connectTook += took
	res.ConnectSeconds = round3(res.connectTook.Seconds())
	if res.connectTook > 0 {
		res.ConnectPerSec = round3(float64(int64(res.Conns)-res.ConnectErrors) / res.connectTook.Seconds())
	}
}

// topics returns what publisher i publishes to and what subscriber i
// subscribes to.
func (b *benchRun) topics() (pub func(i int) string, sub func(i int) string) {
	base := b.cfg.Topic + "/" + b.run + "/"
	switch b.cfg.Scenario {
	case ScenarioFanin:
		return func(i int) string { return base + "in/" + strconv.Itoa(i) }, func(int) string { return base + "in/+" }
	case ScenarioFanout:
		return func(int) string { return base + "out" }, func(int) string { return base + "out" }
	default: // pairs
		t := func(i int) string { return base + "pair/" + strconv.Itoa(i) }
		return t, t
	}
}

// traffic runs fanin, fanout or pairs: subscribers first, then publishers
// for Duration, then a bounded wait for messages still on their way.
func (b *benchRun) traffic(ctx context.Context, res *Result, progressTo io.Writer) error {
	cfg := b.cfg
	pubTopic, subTopic := b.topics()
	res.Pubs, res.Subs = cfg.Pubs, cfg.Subs
	b.sent = make([]atomic.Int64, cfg.Pubs)

	hist := &histogram{}
	subs := make([]*benchSub, cfg.Subs)
	specs := make([]clientSpec, cfg.Subs)
	for i := range subs {
		subs[i] = &benchSub{run: b, hist: hist, pubs: cfg.Pubs, only: -1}
		if cfg.Scenario == ScenarioPairs {
			subs[i].only = i
		}
		specs[i] = b.spec("s" + strconv.Itoa(i))
		specs[i].onMessage = subs[i].onMessage
	}
	subClients, failed, took := b.connectAll(ctx, specs)
	defer b.disconnectAll(subClients)
	fillConnect(res, len(specs), failed, took)
	if failed > 0 {
		return fmt.Errorf("connect subscribers: %d of %d failed: %s", failed, len(specs), b.errs)
	}
	for i, c := range subClients {
		t := c.Subscribe(subTopic(i), cfg.QoS, nil)
		if !t.WaitTimeout(cfg.ConnectTimeout) {
			return fmt.Errorf("subscribe %s: %w", subTopic(i), errTimeout)
		}
		if err := t.Error(); err != nil {
			return fmt.Errorf("subscribe %s: %w", subTopic(i), err)
		}
	}

	specs = make([]clientSpec, cfg.Pubs)
	for i := range specs {
		specs[i] = b.spec("p" + strconv.Itoa(i))
	}
	pubClients, failed, took := b.connectAll(ctx, specs)
	defer b.disconnectAll(pubClients)
	fillConnect(res, len(specs), failed, took)
	if failed > 0 {
		return fmt.Errorf("connect publishers: %d of %d failed: %s", failed, len(specs), b.errs)
	}

	var total rate
	var got rate
	stop := progress(progressTo, cfg.Progress, func(elapsed, since time.Duration) string {
		s := b.totalSent()
		return fmt.Sprintf("bench %s %s: sent %d (%.0f/s), received %d (%.0f/s), %d errors",
			cfg.Scenario, elapsed.Truncate(time.Second), s, total.per(s, since),
			b.received.Load(), got.per(b.received.Load(), since), b.pubErrors.Load())
	})
	defer stop()

	pubCtx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	b.startCPU()
	start := time.Now()
	var wg sync.WaitGroup
	for i, c := range pubClients {
		wg.Go(func() { b.publish(pubCtx, c, i, pubTopic(i)) })
	}
	wg.Wait()
	published := time.Since(start)

	expected := func() int64 {
		var n int64
		for _, s := range subs {
			n += s.expected()
		}
		return n
	}
	deadline := time.Now().Add(cfg.Drain)
	for b.received.Load() < expected() && time.Now().Before(deadline) && sleep(ctx, 10*time.Millisecond) {
	}
	stop()
	b.measure()

	res.DurationSeconds = round3(published.Seconds())
	res.Sent = b.totalSent()
	res.PublishErrors = b.pubErrors.Load()
	res.Expected = expected()
	var last int64
	for _, s := range subs {
		s.mu.Lock()
		res.Received += s.received
		res.Duplicates += s.dups
		last = max(last, s.last)
		s.mu.Unlock()
	}
	res.Lost = max(0, res.Expected-res.Received)
	if res.Expected > 0 {
		res.Loss = float64(res.Lost) / float64(res.Expected)
	}
	if published > 0 {
		res.SentPerSec = round3(float64(res.Sent) / published.Seconds())
	}
	if window := time.Duration(last - start.UnixNano()); window > 0 {
		res.ReceivedPerSec = round3(float64(res.Received) / window.Seconds())
	}
	res.LatencyMS = hist.summary()
	return nil
}

func (b *benchRun) totalSent() int64 {
	var n int64
	for i := range b.sent {
		n += b.sent[i].Load()
	}
	return n
}

// publish sends timestamped messages on topic until ctx ends, keeping at
// most Inflight of them unacknowledged and, if Rate is set, pacing them.
func (b *benchRun) publish(ctx context.Context, c mqtt.Client, pub int, topic string) {
	cfg := b.cfg
	pending := make(chan mqtt.Token, cfg.Inflight)
	var wg sync.WaitGroup
	wg.Go(func() { // reaps tokens in order; bounded by ConnectTimeout each
		for t := range pending {
			if t.WaitTimeout(cfg.ConnectTimeout) && t.Error() == nil {
				b.sent[pub].Add(1)
			} else {
				b.pubErrors.Add(1)
			}
		}
	})
	defer wg.Wait()
	defer close(pending)

	var gap time.Duration
	if cfg.Rate > 0 {
		gap = time.Duration(float64(time.Second) / cfg.Rate)
	}
	next := time.Now()
	for seq := uint64(0); ctx.Err() == nil; seq++ {
		if gap > 0 {
			next = next.Add(gap)
			if wait := time.Until(next); wait > 0 && !sleep(ctx, wait) {
				return
			}
		}
		t := c.Publish(topic, cfg.QoS, false, encodePayload(cfg.Size, time.Now(), uint32(pub), seq))
		select {
		case pending <- t:
		case <-ctx.Done():
			pending <- t // room is made by the reaper within ConnectTimeout
			return
		}
	}
}

// benchSub counts what one subscriber receives.
type benchSub struct {
	run  *benchRun
	hist *histogram
	pubs int
	only int // the one publisher it hears (pairs), or -1 for all

	mu       sync.Mutex // mu guards the fields below
	seen     [][]uint64 // per publisher, a bit per sequence number
	received int64      // unique messages
	dups     int64
	last     int64 // Unix ns of the last message
}

// onMessage runs on paho's router goroutine.
func (s *benchSub) onMessage(_ mqtt.Client, m mqtt.Message) {
	now := time.Now()
	sent, pub, seq, ok := decodePayload(m.Payload())
	if !ok || int(pub) >= s.pubs || seq >= 1<<34 {
		return
	}
	s.mu.Lock()
	if s.seen == nil {
		s.seen = make([][]uint64, s.pubs)
	}
	bits := s.seen[pub]
	w := int(seq / 64)
	if w >= len(bits) {
		bits = append(bits, make([]uint64, max(w+1-len(bits), len(bits)))...)
		s.seen[pub] = bits
	}
	dup := bits[w]&(1<<(seq%64)) != 0
	bits[w] |= 1 << (seq % 64)
	if dup {
		s.dups++
	} else {
		s.received++
		s.last = now.UnixNano()
	}
	s.mu.Unlock()
	if !dup {
		s.run.received.Add(1)
		s.hist.record(now.Sub(time.Unix(0, sent)))
	}
}

// expected is how many messages the subscriber should have received.
func (s *benchSub) expected() int64 {
	if s.only >= 0 {
		return s.run.sent[s.only].Load()
	}
	return s.run.totalSent()
}
