package sessions

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// BenchmarkQueueDrain queues b.N messages of 64 bytes for each of 100
// offline sessions in an in-process broker, then measures how fast they
// drain when all reconnect (for a profile: -cpuprofile).
//
//	go test -run XXX -bench QueueDrain -benchtime 500x -cpuprofile /tmp/drain.cpu ./broker/sessions/
func BenchmarkQueueDrain(b *testing.B) {
	const sessions = 100
	n := startStoreNode(b, b.TempDir(), nil)
	var got atomic.Int64
	connect := func(id string) paho.Client {
		o := paho.NewClientOptions().AddBroker("tcp://" + n.addr).SetClientID(id).SetCleanSession(false).
			SetAutoReconnect(false).SetOrderMatters(false).
			SetDefaultPublishHandler(func(paho.Client, paho.Message) { got.Add(1) })
		c := paho.NewClient(o)
		if tok := c.Connect(); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
			b.Fatal(tok.Error())
		}
		return c
	}
	for i := range sessions {
		c := connect(fmt.Sprint("drain-", i))
		c.Subscribe("drain/all", 1, nil).Wait()
		c.Disconnect(10)
	}
	for i := range sessions {
		waitOffline(b, n.store, fmt.Sprint("drain-", i))
	}
	pub := connect("drain-pub")
	payload := make([]byte, 64)
	var toks []paho.Token
	for range b.N {
		toks = append(toks, pub.Publish("drain/all", 1, false, payload))
		if len(toks) > 32 {
			toks[0].Wait()
			toks = toks[1:]
		}
	}
	for _, tk := range toks {
		tk.Wait()
	}
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for i := range sessions {
		wg.Add(1)
		go func() { defer wg.Done(); connect(fmt.Sprint("drain-", i)) }()
	}
	wg.Wait()
	for testCounterB(n.store.metrics.queueDelivered) < float64(sessions*b.N) {
		time.Sleep(time.Millisecond)
	}
	b.Logf("%d handed out after %v (%d received by then)", sessions*b.N, time.Since(start).Round(time.Millisecond), got.Load())
	for got.Load() < int64(sessions*b.N) {
		time.Sleep(5 * time.Millisecond)
	}
	b.StopTimer()
	b.ReportMetric(float64(sessions*b.N)/b.Elapsed().Seconds(), "msg/s")
}
