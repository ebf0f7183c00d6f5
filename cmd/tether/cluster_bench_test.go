package main

import (
	"encoding/binary"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/tether-iot/tether/internal/cputime"
	"github.com/tether-iot/tether/internal/testmqtt"
)

// TestMeasureCluster measures pairs at QoS 1 on one node and on three
// in-process nodes with embedded NATS, the publisher and subscriber of
// each pair on different nodes (all traffic crosses the bus): messages/s,
// publish-to-delivery latency p50/p99, and CPU time of the whole process
// per message (the difference is the cost of crossing). A measurement,
// run only when asked:
//
//	TETHER_MEASURE=1 go test -run TestMeasureCluster -v -timeout 5m ./cmd/tether
//
// TETHER_MEASURE_PAIRS (default 12), TETHER_MEASURE_SECONDS (default 5),
// TETHER_MEASURE_WINDOW: publishes in flight per publisher (default 32; 1
// TETHER_MEASURE_SCENARIO=fanin: the publishers spread over the nodes,
// one subscriber to bench/# on the first node (then two thirds of the
// messages cross with three nodes).
// TETHER_MEASURE_RATE: messages/s per publisher (default 0: as fast as
// the window allows; e.g. 500 gives the unloaded latency).
// TETHER_MEASURE_PAYLOAD: bytes a message (default 64; a window's byte
// bound holds back messages of more than 1,280 bytes before its count
// with three nodes).
// TETHER_MEASURE_PERSISTENT=1: the subscribers' sessions are persistent
// (clean session false): a QoS 1 message for one on another node is
// committed there before its PUBACK (the durable wait, cluster/durable.go).
func TestMeasureCluster(t *testing.T) {
	if os.Getenv("TETHER_MEASURE") == "" {
		t.Skip("a measurement: set TETHER_MEASURE=1 to run it")
	}
	pairs, seconds := 12, 5
	if s := os.Getenv("TETHER_MEASURE_PAIRS"); s != "" {
		pairs, _ = strconv.Atoi(s)
	}
	if s := os.Getenv("TETHER_MEASURE_SECONDS"); s != "" {
		seconds, _ = strconv.Atoi(s)
	}
	window := 32
	if s := os.Getenv("TETHER_MEASURE_WINDOW"); s != "" {
		window, _ = strconv.Atoi(s)
	}
	rate := 0
	if s := os.Getenv("TETHER_MEASURE_RATE"); s != "" {
		rate, _ = strconv.Atoi(s)
	}
	payload := 64
	if s := os.Getenv("TETHER_MEASURE_PAYLOAD"); s != "" {
		payload, _ = strconv.Atoi(s)
	}
	fanin := os.Getenv("TETHER_MEASURE_SCENARIO") == "fanin"
	persistent := os.Getenv("TETHER_MEASURE_PERSISTENT") != ""
	for _, nodes := range []int{1, 3} {
		t.Run(fmt.Sprintf("nodes=%d", nodes), func(t *testing.T) {
			var apps []*app
			if nodes == 1 {
				apps = []*app{startTestApp(t, testConfig(t))}
			} else {
				apps = startCluster(t, nodes, nil)
			}
			r := measurePairs(t, apps, pairs, window, rate, payload, fanin, persistent, time.Duration(seconds)*time.Second)
			t.Logf("persistent=%v fanin=%v nodes=%d pairs=%d window=%d payload=%d qos=1: %.0f msg/s, latency p50 %v p99 %v, CPU %.1f µs/msg, bus messages %.0f, dropped %d (bus %.0f), flow waits %.0f",
				persistent, fanin, nodes, pairs, window, payload, r.rate, r.p50, r.p99, r.cpuPerMsg, r.busMsgs, r.dropped, r.busDropped, r.flowWaits)
		})
	}
}

type pairsResult struct {
	rate      float64
	p50, p99  time.Duration
	cpuPerMsg float64 // µs of process CPU per delivered message
	busMsgs   float64
	// dropped: the engines' dropped messages; busDropped: the bus's.
	dropped    int64
	busDropped float64
	flowWaits  float64 // publishes held back for another node (cluster flow control)
}

func measurePairs(t *testing.T, apps []*app, pairs, inflight, rate, payload int, fanin, persistent bool, d time.Duration) pairsResult {
	var mu sync.Mutex
	var lat []time.Duration
	var delivered atomic.Int64
	stop := make(chan struct{})
	var pubs []paho3.Client
	onMsg := func(m paho3.Message) {
		sent := int64(binary.BigEndian.Uint64(m.Payload()))
		l := time.Duration(time.Now().UnixNano() - sent)
		delivered.Add(1)
		mu.Lock()
		lat = append(lat, l)
		mu.Unlock()
	}
	if fanin {
		s := testmqtt.Client(t, apps[0].mqttAddr(), "bsub", !persistent, false, onMsg)
		testmqtt.WaitToken(t, "subscribe", s.Subscribe("bench/#", 1, nil))
	}
	for i := 0; i < pairs; i++ {
		pubNode, subNode := apps[i%len(apps)], apps[(i+1)%len(apps)]
		topic := fmt.Sprintf("bench/%d", i)
		if fanin {
			subNode = apps[0]
		} else {
			s := testmqtt.Client(t, subNode.mqttAddr(), fmt.Sprintf("bsub-%d", i), !persistent, false, onMsg)
			testmqtt.WaitToken(t, "subscribe", s.Subscribe(topic, 1, nil))
		}
		if pubNode != subNode {
			waitRoutes(t, pubNode, topic, subNode)
		}
		pubs = append(pubs, testmqtt.Client(t, pubNode.mqttAddr(), fmt.Sprintf("bpub-%d", i), true, false, nil))
	}
	var busBefore float64
	for _, a := range apps {
		if a.cluster != nil {
			busBefore += testmqtt.Counter(t, a.cluster.SentCounter())
		}
	}
	cpu0 := cputime.Process()
	start := time.Now()
	var wg sync.WaitGroup
	for i, p := range pubs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			window := make(chan paho3.Token, inflight)
			buf := make([]byte, max(payload, 8))
			var pace <-chan time.Time
			if rate > 0 {
				tick := time.NewTicker(time.Second / time.Duration(rate))
				defer tick.Stop()
				pace = tick.C
			}
			for {
				if pace != nil {
					select {
					case <-pace:
					case <-stop:
					}
				}
				select {
				case <-stop:
					for len(window) > 0 {
						(<-window).WaitTimeout(5 * time.Second)
					}
					return
				default:
				}
				if len(window) == cap(window) {
					(<-window).WaitTimeout(5 * time.Second)
				}
				binary.BigEndian.PutUint64(buf, uint64(time.Now().UnixNano()))
				window <- p.Publish(fmt.Sprintf("bench/%d", i), 1, false, buf)
			}
		}()
	}
	time.Sleep(d) // the measured interval (a benchmark's clock, not a wait for a condition)
	close(stop)
	wg.Wait()
	elapsed := time.Since(start)
	time.Sleep(500 * time.Millisecond) // let the last deliveries land before counting
	cpu := cputime.Process() - cpu0
	var busAfter float64
	for _, a := range apps {
		if a.cluster != nil {
			busAfter += testmqtt.Counter(t, a.cluster.SentCounter())
		}
	}
	var r pairsResult
	n := delivered.Load()
	for _, a := range apps {
		r.dropped += atomic.LoadInt64(&a.broker.Server.Info.MessagesDropped)
		if a.cluster != nil {
			r.busDropped += a.cluster.Dropped()
			r.flowWaits += testmqtt.Counter(t, a.cluster.FlowWaitsCounter())
		}
	}
	mu.Lock()
	defer mu.Unlock()
	slices.Sort(lat)
	r.rate, r.busMsgs = float64(n)/elapsed.Seconds(), busAfter-busBefore
	if len(lat) > 0 {
		r.p50, r.p99 = lat[len(lat)/2], lat[len(lat)*99/100]
		r.cpuPerMsg = float64(cpu.Microseconds()) / float64(n)
	}
	return r
}
