package main

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"
)

// TestBenchOfflineQueues measures what offline queues cost at the default
// settings: S persistent sessions (3.1.1) go offline, N QoS 1 messages of
// 64 bytes are published to a topic they all hold (S×N queued), and the
// broker's RSS is read before and after; then all S reconnect and the
// drain rate is how fast every queued message reaches them. It runs only
// when asked:
//
//	TETHER_BENCH=1 go test -run TestBenchOfflineQueues -v -timeout 30m ./cmd/tether/
//
// TETHER_BENCH_SESSIONS and TETHER_BENCH_MESSAGES change S and N (1,000
// each by default: one million queued messages).
func TestBenchOfflineQueues(t *testing.T) {
	if os.Getenv("TETHER_BENCH") == "" {
		t.Skip("set TETHER_BENCH=1 to run the offline queue benchmark")
	}
	env := func(k string, d int) int {
		if n, err := strconv.Atoi(os.Getenv(k)); err == nil && n > 0 {
			return n
		}
		return d
	}
	sessions, messages := env("TETHER_BENCH_SESSIONS", 1000), env("TETHER_BENCH_MESSAGES", 1000)
	bin := buildTether(t, t.TempDir())
	p := newTetherProc(t, bin, "TETHER_LOG_LEVEL=error")
	p.start(t)
	pid := p.cmd.Process.Pid

	var received atomic.Int64
	subscriber := func(id string) paho3.Client {
		o := paho3.NewClientOptions().AddBroker("tcp://" + p.mqtt).SetClientID(id).SetProtocolVersion(4).
			SetCleanSession(false).SetAutoReconnect(false).SetConnectRetry(false).SetOrderMatters(false).
			SetConnectTimeout(30 * time.Second).SetKeepAlive(5 * time.Minute).
			SetDefaultPublishHandler(func(paho3.Client, paho3.Message) { received.Add(1) })
		c := paho3.NewClient(o)
		if tok := c.Connect(); !tok.WaitTimeout(60*time.Second) || tok.Error() != nil {
			t.Fatalf("connect %s: %v", id, tok.Error())
		}
		return c
	}
	parallel := func(n int, f func(i int)) {
		var wg sync.WaitGroup
		sem := make(chan struct{}, 50)
		for i := range n {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				f(i)
			}()
		}
		wg.Wait()
	}
	parallel(sessions, func(i int) {
		c := subscriber(fmt.Sprintf("qbench-%d", i))
		if tok := c.Subscribe("qbench/all", 1, nil); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
			t.Errorf("subscribe: %v", tok.Error())
		}
		c.Disconnect(50)
	})
	before := rssKiB(t, pid)

	pub := crashPub3(t, p.mqtt, "qbench-pub")
	payload := make([]byte, 64)
	start := time.Now()
	var toks []paho3.Token
	for range messages {
		toks = append(toks, pub.Publish("qbench/all", 1, false, payload))
		if len(toks) >= 64 {
			waitTok(t, toks[0])
			toks = toks[1:]
		}
	}
	for _, tk := range toks {
		waitTok(t, tk)
	}
	queued := time.Since(start)
	pub.Disconnect(0)
	after := rssKiB(t, pid)
	total := int64(sessions) * int64(messages)
	t.Logf("%d sessions × %d messages = %d queued in %v (%.0f queued msg/s)", sessions, messages, total,
		queued.Round(time.Millisecond), float64(total)/queued.Seconds())
	t.Logf("broker RSS: %d MB with the sessions offline, %d MB with %d messages queued (+%d MB)",
		before/1024, after/1024, total, (after-before)/1024)

	start = time.Now()
	clients := make([]paho3.Client, sessions)
	parallel(sessions, func(i int) { clients[i] = subscriber(fmt.Sprintf("qbench-%d", i)) })
	checkFor(t, 20*time.Minute, func() error {
		if n := received.Load(); n < total {
			return fmt.Errorf("received %d of %d", n, total)
		}
		return nil
	})
	drain := time.Since(start)
	t.Logf("drain: %d messages to %d reconnected sessions in %v: %.0f msg/s; broker RSS during the drain %d MB",
		total, sessions, drain.Round(time.Millisecond), float64(total)/drain.Seconds(), rssKiB(t, pid)/1024)
	fmt.Printf("BENCH offline-queues sessions=%d messages=%d rss_before_mb=%d rss_after_mb=%d queue_msgs_per_s=%.0f drain_msgs_per_s=%.0f\n",
		sessions, messages, before/1024, after/1024, float64(total)/queued.Seconds(), float64(total)/drain.Seconds())
	for _, c := range clients {
		c.Disconnect(0)
	}
	p.stop(t)
}

func waitTok(t *testing.T, tk paho3.Token) {
	t.Helper()
	if !tk.WaitTimeout(60*time.Second) || tk.Error() != nil {
		t.Fatalf("publish: %v", tk.Error())
	}
}
