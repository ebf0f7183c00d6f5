package broker

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tether-iot/tether/devices"
	"github.com/tether-iot/tether/internal/cputime"
)

// benchDevices is how many device connections publish in the benchmarks.
const benchDevices = 1000

// BenchmarkTelemetryRouting measures, with 1,000 devices publishing QoS 0
// telemetry over TCP and subscribers to devices/+/telemetry, the rate the
// broker routes messages with the history writer off and on (with the
// registry keeping last values, as tether serve runs it), and with it on
// the rate points reach SQLite. b.N is the number of messages.
//
// Besides the rates it reports cpu-us/msg: the process's CPU time (user
// plus system, the benchmark's own clients included) from the first
// message until every message is routed and, with history on, every point
// is committed, per message. On a machine shared with other work it
// varies far less than the rates; the difference between off and on is
// what the history costs.
//
//	go test -run XXX -bench TelemetryRouting -benchtime 500000x ./broker/
//	TELEMETRY_BENCH_ROUNDS=3 ...            # off, on, off, on, off, on
//	TELEMETRY_BENCH_SUBS=10 ...             # fan-out to 10 subscribers
//	TELEMETRY_BENCH_RATE=100000 ... -benchtime 6000000x  # 60 s at 100,000/s
//	TELEMETRY_BENCH_PAIRS=12 ... -benchtime 3000000x -timeout 60m  # paired, below
//
// TELEMETRY_BENCH_PAIRS=N runs N pairs of one run with the history off
// and one with it on, the order alternating from pair to pair, and then
// prints, for each pair, (on − off)/off of cpu-us/msg and on/off − 1 of
// routed/s, and for each the median over the pairs with a bootstrap 95 %
// confidence interval of the median (pairsSummary). A busy spell on a
// shared machine slows both runs of a pair more often than one, so the
// pairs' ratios vary far less than the runs do; the interval says how
// far the median can be trusted. In this mode each run is one call at
// the -benchtime count (the framework's first call, at b.N = 1, returns
// at once). A pair at 3,000,000 messages takes about 40 s on a quiet
// 2-core machine (ten: 6.5 minutes; see docs/PERFORMANCE.md).
func BenchmarkTelemetryRouting(b *testing.B) {
	if n, _ := strconv.Atoi(os.Getenv("TELEMETRY_BENCH_PAIRS")); n > 0 {
		benchRoutingPairs(b, n)
		return
	}
	rounds := 1
	if n, _ := strconv.Atoi(os.Getenv("TELEMETRY_BENCH_ROUNDS")); n > 0 {
		rounds = n
	}
	// Interleaved, so that a busy spell on a shared machine does not fall
	// on one side only (a repeated name gets #01, #02, ...).
	for range rounds {
		for _, history := range []bool{false, true} {
			b.Run(fmt.Sprintf("history=%v", history), func(b *testing.B) {
				_ = benchRouting(b, history)
			})
		}
	}
}

// routingRun is what one run of benchRouting measured.
type routingRun struct {
	cpuPerMsg float64 // µs of the process's CPU a message
	routed    float64 // messages routed a second
	lost      int64   // not routed, and points dropped
}

// benchRoutingPairs runs pairs history off and on, n of them, and prints
// the pairs and their summary.
func benchRoutingPairs(b *testing.B, n int) {
	type pair struct {
		order   string
		off, on routingRun
	}
	pairs := make([]pair, 0, n)
	start := time.Now()
	for i := range n {
		// Alternating the order: a machine that grows busier or quieter
		// over the minutes, or a run that suffers from the one before,
		// leans on each side as often.
		order := []bool{false, true}
		if i%2 == 1 {
			order = []bool{true, false}
		}
		var p pair
		for _, history := range order {
			ok := b.Run(fmt.Sprintf("pair=%d/history=%v", i+1, history), func(b *testing.B) {
				if b.N == 1 {
					return // the framework's first call; the -benchtime count follows
				}
				r := benchRouting(b, history)
				if history {
					p.on = r
				} else {
					p.off = r
				}
			})
			if !ok {
				return
			}
		}
		p.order = map[bool]string{false: "off,on", true: "on,off"}[order[0]]
		pairs = append(pairs, p)
	}
	var out bytes.Buffer
	fmt.Fprintf(&out, "\nTelemetryRouting pairs (%d, %v, %d CPUs):\n", len(pairs), time.Since(start).Round(time.Second), runtime.NumCPU())
	fmt.Fprintf(&out, "%4s  %-6s  %9s  %9s  %10s  %10s  %10s  %10s  %s\n", "pair", "order", "cpu off", "cpu on", "(on-off)/off", "routed off", "routed on", "on/off-1", "lost off, on")
	cpu := make([]float64, len(pairs))
	rate := make([]float64, len(pairs))
	for i, p := range pairs {
		cpu[i] = (p.on.cpuPerMsg - p.off.cpuPerMsg) / p.off.cpuPerMsg
		rate[i] = p.on.routed/p.off.routed - 1
		fmt.Fprintf(&out, "%4d  %-6s  %9.3f  %9.3f  %+11.2f%%  %10.0f  %10.0f  %+9.2f%%  %d, %d\n", i+1, p.order,
			p.off.cpuPerMsg, p.on.cpuPerMsg, 100*cpu[i], p.off.routed, p.on.routed, 100*rate[i], p.off.lost, p.on.lost)
	}
	out.WriteString(pairsSummary("CPU a message, (on - off)/off", cpu))
	out.WriteString(pairsSummary("routed/s, on/off - 1", rate))
	// Printed, not logged: a parent benchmark's log is not shown.
	fmt.Print(out.String())
}

// pairsSummary is the median of the pairs' ratios xs and a 95 %
// confidence interval of it (medianCI).
func pairsSummary(what string, xs []float64) string {
	if len(xs) == 0 {
		return what + ": no pairs\n"
	}
	med, lo, hi := medianCI(xs)
	return fmt.Sprintf("%s: median %+.2f %%, 95 %% CI [%+.2f, %+.2f] %% (%d pairs, bootstrap of the median)\n",
		what, 100*med, 100*lo, 100*hi, len(xs))
}

// medianCI returns the median of xs (not empty) and a 95 % confidence
// interval of it: the 2.5th and 97.5th percentiles of the medians of
// 10,000 resamples of xs, drawn with replacement (a percentile
// bootstrap; its seed is fixed, so the same xs give the same interval).
func medianCI(xs []float64) (med, lo, hi float64) {
	const resamples = 10000
	rng := rand.New(rand.NewPCG(19, 5))
	meds := make([]float64, resamples)
	re := make([]float64, len(xs))
	for k := range meds {
		for i := range re {
			re[i] = xs[rng.IntN(len(xs))]
		}
		meds[k] = median(re)
	}
	slices.Sort(meds)
	return median(slices.Clone(xs)), meds[resamples*25/1000], meds[resamples*975/1000-1]
}

// median is the median of xs, which it sorts.
func median(xs []float64) float64 {
	slices.Sort(xs)
	n := len(xs)
	if n%2 == 1 {
		return xs[n/2]
	}
	return (xs[n/2-1] + xs[n/2]) / 2
}

func benchRouting(b *testing.B, history bool) routingRun {
	ctx := context.Background()
	log := storeLogger()
	o := DefaultOptions()
	o.TCPAddr = "127.0.0.1:0"
	// Every client gets a send queue of this many slots, the 1,000
	// publishers too: at 1<<16 that was 525 MB of pointers, which the
	// garbage collector scanned each cycle (a fifth of the CPU, history off
	// and on alike). The publishers below keep window messages ahead of
	// the slowest subscriber, so the subscribers' queues never fill.
	o.ClientQueueSize = 1 << 12
	o.AllowAnonymous = true
	var hooks []mqtt.Hook
	var tel *devices.Telemetry
	if history {
		// Not b.TempDir: a repeated round's name has a '#', which the
		// SQLite file URI would cut the path at.
		dir, err := os.MkdirTemp("", "tether-routing-bench-")
		if err != nil {
			b.Fatal(err)
		}
		defer os.RemoveAll(dir)
		db, err := devices.OpenDB(dir)
		if err != nil {
			b.Fatal(err)
		}
		defer db.Close()
		reg, err := devices.OpenRegistry(ctx, db, log)
		if err != nil {
			b.Fatal(err)
		}
		defer reg.Close()
		nds := make([]devices.NewDevice, benchDevices)
		for i := range nds {
			id := fmt.Sprintf("dev-%04d", i)
			nds[i] = devices.NewDevice{ID: id, Name: id}
		}
		if _, err := reg.CreateDevices(ctx, nds); err != nil {
			b.Fatal(err)
		}
		if tel, err = devices.OpenTelemetry(ctx, db, &devices.TelemetryOptions{Logger: log, LastValues: reg,
			DeviceValuesRate: benchValuesRate, DeviceValuesBurst: benchValuesRate}); err != nil {
			b.Fatal(err)
		}
		defer tel.Close()
		hooks = append(hooks, NewTelemetryHook(tel, log))
	}
	o.Logger, o.Hooks = log, hooks
	br, err := New(o)
	if err != nil {
		b.Fatal(err)
	}
	if err := br.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_ = br.Shutdown(sctx)
	}()
	addr := br.TCP.Address()

	// TELEMETRY_BENCH_SUBS subscribers (default 1) each take every message:
	// 1 is fan-in, more is fan-out.
	subs := 1
	if n, _ := strconv.Atoi(os.Getenv("TELEMETRY_BENCH_SUBS")); n > 0 {
		subs = n
	}
	var received atomic.Int64
	var lastAt atomic.Int64
	// each[s] counts what subscriber s has received: the window is kept
	// against the slowest one, not the average.
	each := make([]atomic.Int64, subs)
	slowest := func() int64 {
		m := each[0].Load()
		for i := 1; i < subs; i++ {
			m = min(m, each[i].Load())
		}
		return m
	}
	for s := range subs {
		sub := rawConnect(b, addr, fmt.Sprintf("watcher-%d", s))
		defer sub.Close()
		rawSubscribe(b, sub, "devices/+/telemetry")
		go func() {
			r := bufio.NewReaderSize(sub, 1<<16)
			for {
				typ, _, err := readPacket(r)
				if err != nil {
					return
				}
				if typ == packets.Publish {
					each[s].Add(1)
					received.Add(1)
					lastAt.Store(time.Now().UnixNano())
				}
			}
		}()
	}

	conns := make([]net.Conn, benchDevices)
	msgs := make([][]byte, benchDevices)
	for i := range conns {
		id := fmt.Sprintf("dev-%04d", i)
		conns[i] = rawConnect(b, addr, id)
		defer conns[i].Close()
		var buf bytes.Buffer
		// 16 messages per write: a device sending a burst.
		for k := range 16 {
			pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, ProtocolVersion: 4,
				TopicName: "devices/" + id + "/telemetry",
				Payload:   fmt.Appendf(nil, `{"temp":%d.5,"hum":%d,"on":true,"fw":"1.2.3"}`, 20+k, 40+i%20)}
			if err := pk.PublishEncode(&buf); err != nil {
				b.Fatal(err)
			}
		}
		msgs[i] = buf.Bytes()
	}
	rounds := (b.N + 16*benchDevices - 1) / (16 * benchDevices)
	total := int64(rounds * 16 * benchDevices)
	deliveries := total * int64(subs)
	// Publishers keep at most window messages ahead of the slowest
	// subscriber, so that the rate measured is what the broker sustains
	// without dropping at a subscriber's queue (window plus a write of 16
	// per writer stays below ClientQueueSize).
	// TELEMETRY_BENCH_RATE (messages a second) paces them instead.
	const writers, window = 8, 3000
	var every time.Duration
	if r, _ := strconv.Atoi(os.Getenv("TELEMETRY_BENCH_RATE")); r > 0 {
		every = time.Duration(float64(time.Second) * 16 * writers / float64(r))
	}
	var sent atomic.Int64
	runtime.GC()
	b.ResetTimer()
	start := time.Now()
	cpu0 := cputime.Process()
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			next := start
			for range rounds {
				for i := w; i < benchDevices; i += writers {
					for sent.Load()-slowest() > window {
						time.Sleep(50 * time.Microsecond)
					}
					if every > 0 {
						next = next.Add(every)
						if d := time.Until(next); d > 0 {
							time.Sleep(d)
						}
					}
					sent.Add(16)
					if _, err := conns[i].Write(msgs[i]); err != nil {
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	// Wait until the subscriber has everything, or nothing comes for 2s.
	for prev := int64(-1); ; {
		time.Sleep(100 * time.Millisecond)
		got := received.Load()
		if got >= deliveries {
			break
		}
		if got == prev && time.Since(time.Unix(0, max(lastAt.Load(), start.UnixNano()))) > 2*time.Second {
			break
		}
		prev = got
	}
	routed := time.Duration(lastAt.Load() - start.UnixNano())
	b.Logf("subscribers %d: received by broker %d, dropped by broker %d, routed %d in %v", subs, atomic.LoadInt64(&br.Server.Info.MessagesReceived), atomic.LoadInt64(&br.Server.Info.MessagesDropped), received.Load(), routed)
	res := routingRun{routed: float64(received.Load()) / routed.Seconds(), lost: deliveries - received.Load()}
	b.ReportMetric(res.routed, "routed/s")
	b.ReportMetric(float64(deliveries-received.Load()), "not-routed")
	if tel != nil {
		if err := tel.Flush(ctx); err != nil {
			b.Fatal(err)
		}
		el := time.Since(start)
		stored, dropped := tel.Stats()
		b.ReportMetric(float64(stored)/el.Seconds(), "stored/s")
		b.ReportMetric(float64(dropped), "dropped")
		res.lost += dropped
	}
	// The CPU the broker took for the messages (and the writer for the
	// points), beside the clients' share, the same with history off and on.
	cpu := cputime.Process() - cpu0
	res.cpuPerMsg = float64(cpu.Microseconds()) / float64(total)
	b.ReportMetric(res.cpuPerMsg, "cpu-us/msg")
	b.StopTimer()
	return res
}

// benchValuesRate is the benchmarks' telemetry.device_values_rate (and
// burst): the per-device check runs on every sample, as it does at the
// defaults, but never refuses one. The benchmarks' devices each send
// hundreds of messages a second (a thousand devices at the whole
// machine's rate), past the default of 1,000 values a second; refused
// points would measure dropping rather than storing.
const benchValuesRate = 10_000_000

// BenchmarkTelemetryHook measures what the history costs per message
// without the network and the engine: the telemetry hook called as the
// engine calls it after routing (1,000 devices, the routing benchmark's
// payloads) and the writer committing every point, with the registry
// keeping last values. cpu-us/msg is the process's CPU time per message,
// from the first call until the last point is committed; it is what
// BenchmarkTelemetryRouting's history=true adds to history=false, without
// the scheduler's and the garbage collector's share of the routing, which
// vary with the machine's load. The caller keeps at most half the queue
// ahead of the writer, so nothing is dropped; as the writer commits once
// per flush interval, the caller waits for commits, and stored/s says
// little here (the writer alone: BenchmarkTelemetryWrite in devices).
//
//	go test -run XXX -bench TelemetryHook -benchtime 1000000x ./broker/
//	TELEMETRY_BENCH_BATCH=32768 ...  # the writer's BatchSize (default: the store's)
func BenchmarkTelemetryHook(b *testing.B) {
	ctx := context.Background()
	log := storeLogger()
	dir, err := os.MkdirTemp("", "tether-hook-bench-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	db, err := devices.OpenDB(dir)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	reg, err := devices.OpenRegistry(ctx, db, log)
	if err != nil {
		b.Fatal(err)
	}
	defer reg.Close()
	nds := make([]devices.NewDevice, benchDevices)
	pks := make([]packets.Packet, 16*benchDevices)
	for i := range nds {
		id := fmt.Sprintf("dev-%04d", i)
		nds[i] = devices.NewDevice{ID: id, Name: id}
		for k := range 16 {
			pks[k*benchDevices+i] = packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, ProtocolVersion: 4,
				TopicName: "devices/" + id + "/telemetry",
				Payload:   fmt.Appendf(nil, `{"temp":%d.5,"hum":%d,"on":true,"fw":"1.2.3"}`, 20+k, 40+i%20)}
		}
	}
	if _, err := reg.CreateDevices(ctx, nds); err != nil {
		b.Fatal(err)
	}
	const queue = 262144
	tel, err := devices.OpenTelemetry(ctx, db, &devices.TelemetryOptions{Logger: log, LastValues: reg, QueueSize: queue, BatchSize: benchBatch(),
		DeviceValuesRate: benchValuesRate, DeviceValuesBurst: benchValuesRate})
	if err != nil {
		b.Fatal(err)
	}
	defer tel.Close()
	h := NewTelemetryHook(tel, log)
	cl := &mqtt.Client{}
	runtime.GC()
	b.ResetTimer()
	start := time.Now()
	cpu0 := cputime.Process()
	for i := range b.N {
		if i%1024 == 0 {
			for stored, _ := tel.Stats(); int64(i)-stored > queue/2; stored, _ = tel.Stats() {
				time.Sleep(time.Millisecond)
			}
		}
		h.OnPublished(cl, pks[i%len(pks)])
	}
	if err := tel.Flush(ctx); err != nil {
		b.Fatal(err)
	}
	el := time.Since(start)
	cpu := cputime.Process() - cpu0
	b.StopTimer()
	stored, dropped := tel.Stats()
	b.ReportMetric(float64(stored)/el.Seconds(), "stored/s")
	b.ReportMetric(float64(dropped), "dropped")
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-us/msg")
}

func rawConnect(tb testing.TB, addr, id string) net.Conn {
	tb.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	var buf bytes.Buffer
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 4,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), ClientIdentifier: id, Clean: true}}
	if err := pk.ConnectEncode(&buf); err != nil {
		tb.Fatal(err)
	}
	if _, err := c.Write(buf.Bytes()); err != nil {
		tb.Fatal(err)
	}
	ack := make([]byte, 4)
	if _, err := io.ReadFull(c, ack); err != nil || ack[0]>>4 != packets.Connack || ack[3] != 0 {
		tb.Fatalf("connect %s: %v %x", id, err, ack)
	}
	return c
}

func rawSubscribe(tb testing.TB, c net.Conn, filter string) {
	tb.Helper()
	var buf bytes.Buffer
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, ProtocolVersion: 4, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: filter}}}
	if err := pk.SubscribeEncode(&buf); err != nil {
		tb.Fatal(err)
	}
	if _, err := c.Write(buf.Bytes()); err != nil {
		tb.Fatal(err)
	}
	ack := make([]byte, 5)
	if _, err := io.ReadFull(c, ack); err != nil || ack[0]>>4 != packets.Suback {
		tb.Fatalf("subscribe: %v %x", err, ack)
	}
}

// readPacket reads one MQTT packet's fixed header and skips its body.
func readPacket(r *bufio.Reader) (byte, int, error) {
	h, err := r.ReadByte()
	if err != nil {
		return 0, 0, err
	}
	n, mul := 0, 1
	for {
		d, err := r.ReadByte()
		if err != nil {
			return 0, 0, err
		}
		n += int(d&127) * mul
		if d&128 == 0 {
			break
		}
		mul *= 128
	}
	if _, err := r.Discard(n); err != nil {
		return 0, 0, err
	}
	return h >> 4, n, nil
}

// benchBatch is TELEMETRY_BENCH_BATCH, the writer's batch size; 0: the
// store's default.
func benchBatch() int {
	n, _ := strconv.Atoi(os.Getenv("TELEMETRY_BENCH_BATCH"))
	return n
}
