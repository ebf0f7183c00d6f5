package main

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestCrashBenchDurable measures acknowledged QoS 1 messages per second
// with durability on, for Tether (session store, group commit: a PUBACK
// leaves only once its message is committed to SQLite) and for Debian's
// Mosquitto with persistence on, in the same run on the same machine and
// with the same clients. It runs only when asked:
//
//	TETHER_BENCH=1 go test -run TestCrashBenchDurable -v ./cmd/tether/
//
// Load: 8 publishers (MQTT 3.1.1, each keeping 64 QoS 1 messages in
// flight) send 40,000 messages of 64 bytes to one topic that a persistent
// subscriber (clean session off) holds; once with the subscriber online,
// once with it offline (messages queued in its session).
func TestCrashBenchDurable(t *testing.T) {
	if os.Getenv("TETHER_BENCH") == "" {
		t.Skip("set TETHER_BENCH=1 to run the durability benchmark")
	}
	mosq, err := exec.LookPath("mosquitto")
	requireTool(t, "mosquitto (apt-get install -y mosquitto)", err)
	bin := buildTether(t, t.TempDir())

	const total, pubs, window = 40000, 8, 64
	type result struct {
		broker, sub string
		rate        float64
	}
	var results []result
	for _, online := range []bool{true, false} {
		sub := "online"
		if !online {
			sub = "offline"
		}
		// Tether.
		p := newTetherProc(t, bin, "TETHER_LOG_LEVEL=error")
		p.start(t)
		rate := benchDurable(t, p.mqtt, total, pubs, window, online)
		commits := scrapeCounter(t, "http://"+p.http+"/metrics", "tether_store_commits_total")
		notDurable := scrapeCounter(t, "http://"+p.http+"/metrics", "tether_store_acks_not_durable_total")
		dropped := scrapeCounter(t, "http://"+p.http+"/metrics", "tether_mqtt_messages_dropped_total")
		p.stop(t)
		t.Logf("tether    subscriber %-7s: %8.0f acknowledged msg/s (%d commits, %.1f msg per commit, %.0f acks not durable, %.0f dropped)",
			sub, rate, int(commits), float64(total)/max(commits, 1), notDurable, dropped)
		results = append(results, result{"tether", sub, rate})

		// Mosquitto.
		addr, stop := startMosquitto(t, mosq)
		rate = benchDurable(t, addr, total, pubs, window, online)
		stop()
		t.Logf("mosquitto subscriber %-7s: %8.0f acknowledged msg/s", sub, rate)
		results = append(results, result{"mosquitto", sub, rate})
	}
	for _, r := range results {
		fmt.Printf("BENCH broker=%s subscriber=%s acked_msgs_per_s=%.0f\n", r.broker, r.sub, r.rate)
	}
}

// benchDurable runs the load against addr and returns acknowledged
// messages per second. With online, it also waits until the subscriber
// has every message.
func benchDurable(t *testing.T, addr string, total, pubs, window int, online bool) float64 {
	t.Helper()
	var got payloadSet
	id := fmt.Sprintf("bench-sub-%d", time.Now().UnixNano())
	sub := crashSub3(t, addr, id, &got)
	if tok := sub.Subscribe("bench/durable", 1, nil); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	if !online {
		sub.Disconnect(100)
	}
	var acked payloadSet
	var wg sync.WaitGroup
	start := time.Now()
	for i := range pubs {
		c := crashPub3(t, addr, fmt.Sprintf("bench-pub-%d", i))
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Disconnect(0)
			publishAcked(c, "bench/durable", fmt.Sprintf("%02d-%s", i, strings.Repeat("x", 48)), total/pubs, window, &acked, nil)
		}()
	}
	wg.Wait()
	el := time.Since(start)
	if acked.len() != total {
		t.Fatalf("%d of %d acknowledged", acked.len(), total)
	}
	if online {
		checkFor(t, 60*time.Second, func() error {
			if n, _ := got.missing(&acked); n > 0 {
				return fmt.Errorf("subscriber lacks %d", n)
			}
			return nil
		})
		sub.Disconnect(0)
	}
	return float64(total) / el.Seconds()
}

// startMosquitto runs mosquitto with persistence on in a temporary
// directory, on a loopback port, and returns its address and a stop.
func startMosquitto(t *testing.T, bin string) (string, func()) {
	t.Helper()
	dir := t.TempDir()
	addr := freeAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	conf := filepath.Join(dir, "mosquitto.conf")
	if err := os.WriteFile(conf, []byte(strings.Join([]string{
		"listener " + port + " 127.0.0.1",
		"allow_anonymous true",
		"persistence true",
		"persistence_location " + dir + "/",
		"max_queued_messages 1000000",
		"max_inflight_messages 0",
		"log_dest none",
		""}, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-c", conf)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	checkFor(t, 10*time.Second, func() error {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		return c.Close()
	})
	return addr, func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}
}

// scrapeCounter reads one unlabelled counter from a Prometheus endpoint.
func scrapeCounter(t *testing.T, url, name string) float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var sum float64 // over the counter's labels, if it has any
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && (f[0] == name || strings.HasPrefix(f[0], name+"{")) {
			v, _ := strconv.ParseFloat(f[1], 64)
			sum += v
		}
	}
	return sum
}
