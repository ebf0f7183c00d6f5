package simulator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math"
	"os"
	"strings"
	"testing"
	"time"
)

func TestBenchTraffic(t *testing.T) {
	b := startBroker(t)
	tests := []struct {
		name      string
		scenario  string
		transport string
		pubs      int
		subs      int
		qos       byte
	}{
		{"fanin qos1", ScenarioFanin, TransportTCP, 4, 1, 1},
		{"pairs qos1", ScenarioPairs, TransportTCP, 3, 3, 1},
		{"fanout qos1", ScenarioFanout, TransportTCP, 1, 3, 1},
		{"fanin qos0 ws", ScenarioFanin, TransportWS, 2, 1, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := b.tcp
			if tt.transport == TransportWS {
				addr = b.ws
			}
			ep, err := ParseEndpoint(addr, tt.transport, "")
			if err != nil {
				t.Fatal(err)
			}
			var progress bytes.Buffer
			res, err := RunBench(context.Background(), BenchConfig{
				Endpoint: ep, Scenario: tt.scenario, QoS: tt.qos, Size: 100,
				Duration: 400 * time.Millisecond, Pubs: tt.pubs, Subs: tt.subs,
				Rate: 300, Progress: 100 * time.Millisecond,
				PID: os.Getpid(), // the broker runs in this process
			}, &progress)
			if err != nil {
				t.Fatal(err)
			}
			line, err := json.Marshal(res)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s", line)
			if res.Sent == 0 || res.Received == 0 {
				t.Fatalf("nothing sent or received: %s", line)
			}
			if res.Lost != 0 || res.Loss != 0 || res.Received != res.Expected {
				t.Fatalf("loss: %s", line)
			}
			if want := int64(tt.subs) * res.Sent; tt.scenario != ScenarioPairs && res.Expected != want {
				t.Fatalf("expected %d messages, result says %d", want, res.Expected)
			}
			if res.LatencyMS.P50 <= 0 || res.LatencyMS.P99 < res.LatencyMS.P50 || res.LatencyMS.Max < res.LatencyMS.P99 {
				t.Fatalf("latency percentiles out of order: %+v", res.LatencyMS)
			}
			if res.Conns != tt.pubs+tt.subs || res.ConnectErrors != 0 || res.ConnectPerSec <= 0 {
				t.Fatalf("connect figures: %s", line)
			}
			if res.BrokerCPUSeconds <= 0 || res.BrokerCPUPerMsgUS <= 0 {
				t.Fatalf("broker cpu figures: %s", line)
			}
			if !bytes.Contains(progress.Bytes(), []byte("bench "+tt.scenario)) {
				t.Fatalf("no progress line in %q", progress.String())
			}
		})
	}
}

func TestBenchConns(t *testing.T) {
	b := startBroker(t)
	ep, _ := ParseEndpoint(b.tcp, "", "")
	res, err := RunBench(context.Background(), BenchConfig{
		Endpoint: ep, Scenario: ScenarioConns, Conns: 50, Duration: 100 * time.Millisecond,
		PID: os.Getpid(), // the broker runs in this process
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Conns != 50 || res.ConnectErrors != 0 || res.ConnectPerSec <= 0 {
		t.Fatalf("connect figures: %+v", res)
	}
	if res.BrokerRSSKB <= 0 || res.BrokerRSSBeforeKB <= 0 || res.BrokerPeakRSSKB < res.BrokerRSSKB {
		t.Fatalf("broker memory: %+v", res)
	}
	waitFor(t, 5*time.Second, "clients to leave the broker", func() bool { return b.Clients.Len() <= 1 })
}

func TestBenchRefusesRemoteBroker(t *testing.T) {
	ep, _ := ParseEndpoint("tcp://192.0.2.1:1883", "", "")
	_, err := RunBench(context.Background(), BenchConfig{Endpoint: ep, Scenario: ScenarioFanin}, nil)
	if !errors.Is(err, ErrRemote) {
		t.Fatalf("want ErrRemote, got %v", err)
	}
	_, err = RunSim(context.Background(), SimConfig{Endpoint: ep, Devices: 1}, nil)
	if !errors.Is(err, ErrRemote) {
		t.Fatalf("sim: want ErrRemote, got %v", err)
	}
}

func TestBenchConfigErrors(t *testing.T) {
	ep, _ := ParseEndpoint("", "", "")
	for _, cfg := range []BenchConfig{
		{Scenario: "storm"},
		{Scenario: ScenarioFanin, QoS: 3},
		{Scenario: ScenarioFanin, Size: 8},
		{Scenario: ScenarioPairs, Pubs: 3, Subs: 2},
		{Scenario: ScenarioFanin, Rate: -1},
	} {
		cfg.Endpoint = ep
		if _, err := RunBench(context.Background(), cfg, nil); err == nil {
			t.Errorf("%+v: no error", cfg)
		}
	}
	// Refused before any connection, naming the flag: NaN passed every
	// range check, a rate so slow that its gap overflowed published as
	// fast as it could (26,934 msg/s for --rate 1e-12), and a negative
	// drain counted every message in flight as lost.
	closed := freeAddr(t) // nothing listens: a run would fail to connect instead
	ep, _ = ParseEndpoint("tcp://"+closed, "", "")
	for _, tc := range []struct {
		field string
		cfg   BenchConfig
	}{
		{"rate", BenchConfig{Rate: math.NaN()}},
		{"rate", BenchConfig{Rate: math.Inf(1)}},
		{"rate", BenchConfig{Rate: 1e-12}},
		{"drain", BenchConfig{Drain: -time.Second}},
		{"inflight", BenchConfig{Inflight: -1}},
	} {
		tc.cfg.Endpoint, tc.cfg.Scenario = ep, ScenarioFanin
		_, err := RunBench(context.Background(), tc.cfg, nil)
		if err == nil || !strings.HasPrefix(err.Error(), "run bench: "+tc.field+": ") {
			t.Errorf("%+v: %v, want an error about %s", tc.cfg, err, tc.field)
		}
	}
	if _, err := RunBench(context.Background(), BenchConfig{Endpoint: ep, Scenario: ScenarioFanin, Rate: 1.0 / 86400, Duration: time.Millisecond}, nil); err == nil || strings.HasPrefix(err.Error(), "run bench: rate") {
		t.Errorf("one message a day: %v, want it taken (and the run to fail to connect)", err)
	}
}

// TestSimConfigErrors: NaN jitter or churn is refused (a NaN jitter made
// every wait zero: 3 devices at a 100 ms interval sent 57,552 msg/s).
func TestSimConfigErrors(t *testing.T) {
	ep, _ := ParseEndpoint("tcp://"+freeAddr(t), "", "")
	for _, tc := range []struct {
		field string
		cfg   SimConfig
	}{
		{"jitter", SimConfig{Jitter: math.NaN()}},
		{"churn", SimConfig{Churn: math.NaN()}},
	} {
		tc.cfg.Endpoint, tc.cfg.Devices, tc.cfg.Duration = ep, 1, time.Second // a run that starts ends
		_, err := RunSim(context.Background(), tc.cfg, nil)
		if err == nil || !strings.HasPrefix(err.Error(), "run sim: "+tc.field+": ") {
			t.Errorf("%+v: %v, want an error about %s", tc.cfg, err, tc.field)
		}
	}
}

// TestKBPerConn: the broker's growth is divided by the connections
// opened (the figures of a run whose client ran out of file descriptors).
func TestKBPerConn(t *testing.T) {
	r := Result{Conns: 100_000, ConnectErrors: 80_010, BrokerRSSBeforeKB: 8_872, BrokerRSSKB: 23_168}
	r.setKBPerConn()
	if r.BrokerKBPerConn != 0.715 {
		t.Fatalf("%v KB per connection, want 0.715 (14,296 KB over 19,990 connections)", r.BrokerKBPerConn)
	}
	r = Result{Conns: 10, ConnectErrors: 10, BrokerRSSBeforeKB: 1, BrokerRSSKB: 2}
	r.setKBPerConn()
	if r.BrokerKBPerConn != 0 {
		t.Fatalf("no connection opened: %v KB per connection", r.BrokerKBPerConn)
	}
}

func TestPayloadRoundTrip(t *testing.T) {
	now := time.Now()
	for _, size := range []int{0, headerSize, 64, 4096} {
		p := encodePayload(size, now, 7, 1234567)
		if len(p) != max(size, headerSize) {
			t.Fatalf("size %d: payload of %d bytes", size, len(p))
		}
		sent, pub, seq, ok := decodePayload(p)
		if !ok || sent != now.UnixNano() || pub != 7 || seq != 1234567 {
			t.Fatalf("size %d: decoded %d %d %d %v", size, sent, pub, seq, ok)
		}
	}
	if _, _, _, ok := decodePayload([]byte("short")); ok {
		t.Fatal("short payload decoded")
	}
}

func TestHistogram(t *testing.T) {
	var h histogram
	for i := 1; i <= 1000; i++ {
		h.record(time.Duration(i) * time.Microsecond)
	}
	within := func(got, want time.Duration) bool {
		d := got - want
		return d > -want/20 && d < want/20
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 500 * time.Microsecond}, {0.99, 990 * time.Microsecond}, {1, time.Millisecond}} {
		if got := h.quantile(c.q); !within(got, c.want) {
			t.Errorf("quantile %g = %s, want about %s", c.q, got, c.want)
		}
	}
	var o histogram
	o.record(time.Hour) // beyond the top bucket: capped, max still exact
	h.merge(&o)
	if s := h.summary(); s.Max != 3600000 {
		t.Errorf("max %g ms, want 3600000", s.Max)
	}
	for i := range histBuckets {
		if histIndex(histValue(i)) != i {
			t.Fatalf("bucket %d: value %d maps to %d", i, histValue(i), histIndex(histValue(i)))
		}
	}
}

// TestNoJitter: `sim --jitter 0` (NoJitter) waits exactly the interval;
// a Jitter of 0 alone is the default ±10 % (--jitter 0 got ±10 %).
func TestNoJitter(t *testing.T) {
	spread := func(cfg SimConfig) (lo, hi time.Duration) {
		cfg.setDefaults()
		dl, err := newDialer(Endpoint{Transport: TransportTCP, Host: "127.0.0.1:1"}, TLSOptions{}, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		d := newDevice(&fleetRun{cfg: &cfg, dialer: dl}, Credential{ID: "d1"}, DefaultFleet().Assign(1)[0], 1)
		lo, hi = time.Hour, 0
		for range 1000 {
			w := d.jittered(time.Second)
			lo, hi = min(lo, w), max(hi, w)
		}
		return lo, hi
	}
	if lo, hi := spread(SimConfig{NoJitter: true}); lo != time.Second || hi != time.Second {
		t.Errorf("NoJitter: waits of %s..%s, want exactly 1s", lo, hi)
	}
	if lo, hi := spread(SimConfig{}); lo < 900*time.Millisecond || hi > 1100*time.Millisecond || hi-lo < 100*time.Millisecond {
		t.Errorf("default jitter: waits of %s..%s, want spread over 0.9s..1.1s", lo, hi)
	}
}
