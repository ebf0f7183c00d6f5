package simulator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// Bench scenarios.
const (
	ScenarioFanin  = "fanin"  // P publishers → 1 wildcard subscriber
	ScenarioFanout = "fanout" // 1 publisher → S subscribers
	ScenarioPairs  = "pairs"  // N publisher/subscriber pairs, one topic each
	ScenarioConns  = "conns"  // C idle connections
)

// BenchConfig configures one bench run. The zero value of each optional
// field means its default.
type BenchConfig struct {
	Endpoint           Endpoint
	TLS                TLSOptions
	AllowRemote        bool // allow a broker that is not on loopback
	Username, Password string

	Scenario string        // fanin, fanout, pairs or conns
	QoS      byte          // of publishes and subscriptions
	Size     int           // payload bytes; default 64, at least 20
	Duration time.Duration // publishing time (conns: holding time); default 10s
	Pubs     int           // publishers (pairs: the number of pairs); default 10 (fanout 1)
	Subs     int           // subscribers; default 1 (fanout 10, pairs = Pubs)
	Conns    int           // idle connections for conns; default 1000
	Rate     float64       // messages/s per publisher; 0 means as fast as Inflight allows
	Inflight int           // unacknowledged publishes per publisher; default 64
	Topic    string        // topic prefix; default "bench"
	PID      int           // broker process id, to report its memory; 0 for none

	ConnectConcurrency int           // default 64
	ConnectTimeout     time.Duration // default 10s
	Drain              time.Duration // longest wait for messages after publishing stops; default 5s
	Progress           time.Duration // progress line period; default 2s, <0 for none
}

func (c *BenchConfig) setDefaults() {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	switch c.Scenario {
	case ScenarioFanout:
		def(&c.Pubs, 1)
		def(&c.Subs, 10)
	case ScenarioPairs:
		def(&c.Pubs, 10)
		def(&c.Subs, c.Pubs)
	default:
		def(&c.Pubs, 10)
		def(&c.Subs, 1)
	}
	def(&c.Conns, 1000)
	def(&c.Size, 64)
	def(&c.Inflight, 64)
	def(&c.ConnectConcurrency, 64)
	if c.Duration == 0 {
		c.Duration = 10 * time.Second
	}
	if c.Topic == "" {
		c.Topic = "bench"
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = 10 * time.Second
	}
	if c.Drain == 0 {
		c.Drain = 5 * time.Second
	}
	if c.Progress == 0 {
		c.Progress = 2 * time.Second
	}
}

// minRate is the slowest --rate: one message a day (a slower one would
// overflow its gap between messages, and publish nothing in a run of at
// most 24 h anyway).
const minRate = 1.0 / 86400

func (c *BenchConfig) validate() error {
	switch {
	case c.Scenario != ScenarioFanin && c.Scenario != ScenarioFanout && c.Scenario != ScenarioPairs && c.Scenario != ScenarioConns:
		return fmt.Errorf("scenario: %q is not one of fanin, fanout, pairs, conns", c.Scenario)
	case c.QoS > 2:
		return fmt.Errorf("qos: %d is not 0, 1 or 2", c.QoS)
	case c.Size < headerSize || c.Size > len(filler):
		return fmt.Errorf("size: %d is outside %d..%d bytes", c.Size, headerSize, len(filler))
	case c.Duration < 0 || c.Duration > 24*time.Hour:
		return fmt.Errorf("duration: %s is outside 0..24h", c.Duration)
	case c.Pubs < 1 || c.Pubs > 50_000 || c.Subs < 1 || c.Subs > 50_000 || c.Conns < 1 || c.Conns > 100_000:
		return errors.New("pubs, subs: must be in 1..50000; conns in 1..100000")
	case c.Scenario == ScenarioPairs && c.Subs != c.Pubs:
		return fmt.Errorf("subs: pairs has one subscriber per publisher (%d), not %d", c.Pubs, c.Subs)
	case c.Rate != 0 && !(c.Rate >= minRate && c.Rate <= 1e9): // NaN too
		return fmt.Errorf("rate: %g is neither 0 (as fast as inflight allows) nor in 1/86400..1e9 messages/s", c.Rate)
	case c.Inflight < 1 || c.Inflight > 65_000:
		return fmt.Errorf("inflight: %d is outside 1..65000", c.Inflight)
	case c.Drain < 0 || c.Drain > 24*time.Hour:
		return fmt.Errorf("drain: %s is outside 0..24h", c.Drain)
	case c.ConnectConcurrency < 1 || c.ConnectConcurrency > 10_000:
		return fmt.Errorf("connect concurrency: %d is outside 1..10000", c.ConnectConcurrency)
	case strings.ContainsAny(c.Topic, "#+\x00"):
		return fmt.Errorf("topic: %q holds a wildcard (+, #) or NUL: it is a prefix of topics to publish to", c.Topic)
	case c.PID < 0:
		return fmt.Errorf("pid: %d is not a process id", c.PID)
	case !validProgress(c.Progress):
		return fmt.Errorf("progress: %s is under %s (negative: no progress lines)", c.Progress, minProgress)
	}
	return nil
}

// minProgress is the shortest progress period: a shorter one floods
// stderr (1ns wrote a line per scheduler tick).
const minProgress = 100 * time.Millisecond

// validProgress reports whether d is a progress period: negative (none)
// or at least minProgress.
func validProgress(d time.Duration) bool { return d < 0 || d >= minProgress }

// setKBPerConn divides the broker's memory growth by the connections it
// holds: those opened, not those tried (with 80,010 of 100,000 refused,
// by the client's file limit, the figure was a fifth of the truth).
func (r *Result) setKBPerConn() {
	if open := int64(r.Conns) - r.ConnectErrors; open > 0 {
		r.BrokerKBPerConn = round3(float64(r.BrokerRSSKB-r.BrokerRSSBeforeKB) / float64(open))
	}
}

// Result is the outcome of one bench run, printed as one JSON line.
type Result struct {
	Scenario        string  `json:"scenario"`
	Broker          string  `json:"broker"`
	Transport       string  `json:"transport"`
	QoS             byte    `json:"qos"`
	Size            int     `json:"size"`
	DurationSeconds float64 `json:"duration_s"`
	Pubs            int     `json:"pubs,omitempty"`
	Subs            int     `json:"subs,omitempty"`
	Conns           int     `json:"conns"` // connections opened

	ConnectPerSec  float64 `json:"connect_per_s"`
	ConnectSeconds float64 `json:"connect_s"`
	ConnectErrors  int64   `json:"connect_errors"`
	connectTook    time.Duration
	// Errors lists each kind of connect error, and of connection lost to
	// a packet the broker should not have sent (MaxBrokerPacket), with
	// its count, in the order first seen.
	Errors []string `json:"errors,omitempty"`

	Sent           int64   `json:"sent"`
	PublishErrors  int64   `json:"publish_errors"`
	Expected       int64   `json:"expected"`
	Received       int64   `json:"received"`
	Duplicates     int64   `json:"duplicates"`
	Lost           int64   `json:"lost"`
	Loss           float64 `json:"loss"` // Lost / Expected
	SentPerSec     float64 `json:"sent_per_s"`
	ReceivedPerSec float64 `json:"received_per_s"`
	LatencyMS      Latency `json:"latency_ms"`

	BrokerRSSKB       int64   `json:"broker_rss_kb,omitempty"`
	BrokerPeakRSSKB   int64   `json:"broker_peak_rss_kb,omitempty"`
	BrokerRSSBeforeKB int64   `json:"broker_rss_before_kb,omitempty"`
	BrokerKBPerConn   float64 `json:"broker_kb_per_conn,omitempty"`
	// BrokerCPUSeconds is the broker's CPU time (user and system, 10 ms
	// ticks) while publishing and draining, or, for conns, while
	// connecting and holding; BrokerCPUPerMsgUS divides it by the
	// messages received. Unlike rates, these hardly depend on what else
	// the machine is running.
	BrokerCPUSeconds  float64 `json:"broker_cpu_s,omitempty"`
	BrokerCPUPerMsgUS float64 `json:"broker_cpu_us_per_msg,omitempty"`
}

// RunBench runs one scenario and returns its result, with a progress line
// on progress (may be nil) every cfg.Progress. All clients disconnect
// before it returns. A cancelled ctx ends the run early with the result so
// far.
func RunBench(ctx context.Context, cfg BenchConfig, progressTo io.Writer) (Result, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return Result{}, fmt.Errorf("run bench: %w", err)
	}
	if err := cfg.Endpoint.CheckLoopback(cfg.AllowRemote); err != nil {
		return Result{}, fmt.Errorf("run bench: %w", err)
	}
	d, err := newDialer(cfg.Endpoint, cfg.TLS, cfg.ConnectTimeout)
	if err != nil {
		return Result{}, fmt.Errorf("run bench: %w", err)
	}
	b := &benchRun{cfg: &cfg, dialer: d, gate: newGate(cfg.ConnectConcurrency), run: fmt.Sprintf("%06x", randomSeed()&0xffffff),
		errs: newErrorKinds(progressTo, "bench")}
	res := Result{
		Scenario: cfg.Scenario, Broker: cfg.Endpoint.URL(), Transport: cfg.Endpoint.Transport,
		QoS: cfg.QoS, Size: cfg.Size,
	}
	var before memory
	if cfg.PID > 0 {
		if before, err = readMemory(cfg.PID); err != nil {
			return Result{}, fmt.Errorf("run bench: %w", err)
		}
	}
	if cfg.Scenario == ScenarioConns {
		err = b.conns(ctx, &res, progressTo)
	} else {
		err = b.traffic(ctx, &res, progressTo)
	}
	res.Errors = b.errs.list()
	if err != nil {
		return Result{}, fmt.Errorf("run bench %s: %w", cfg.Scenario, err)
	}
	if cfg.PID > 0 {
		res.BrokerRSSBeforeKB = before.RSSKB
		res.BrokerRSSKB, res.BrokerPeakRSSKB = b.after.RSSKB, b.after.PeakKB
		if cfg.Scenario == ScenarioConns && b.after.RSSKB > 0 {
			res.setKBPerConn()
		}
		if b.cpuOK {
			cpu := b.cpuEnd - b.cpuStart
			res.BrokerCPUSeconds = round3(cpu.Seconds())
			if res.Received > 0 {
				res.BrokerCPUPerMsgUS = round3(float64(cpu.Microseconds()) / float64(res.Received))
			}
		}
	}
	return res, nil
}
