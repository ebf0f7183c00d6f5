package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// TestMeasureIdleClients measures the resident memory of `tether serve`
// per idle client, over TCP and over WebSocket. It is a measurement, not a
// test with a threshold, and runs only when asked:
//
//	TETHER_MEASURE=1 go test -run TestMeasureIdleClients -v -timeout 20m ./cmd/tether
//
// TETHER_MEASURE_CLIENTS sets the number of clients (default 10000);
// TETHER_MEASURE_SETTLE how long the clients stay idle before RSS is read
// (default 3s; past 2m the runtime's periodic GC has shrunk the goroutine
// stacks that CONNECT processing grew); extra TETHER_* settings for the server (e.g. TETHER_MQTT_CLIENT_QUEUE_SIZE=64)
// pass through from the environment.
func TestMeasureIdleClients(t *testing.T) {
	if os.Getenv("TETHER_MEASURE") == "" {
		t.Skip("a measurement: set TETHER_MEASURE=1 to run it")
	}
	n := 10000
	if s := os.Getenv("TETHER_MEASURE_CLIENTS"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	settle := 3 * time.Second
	if s := os.Getenv("TETHER_MEASURE_SETTLE"); s != "" {
		var err error
		if settle, err = time.ParseDuration(s); err != nil {
			t.Fatalf("TETHER_MEASURE_SETTLE: %v", err)
		}
	}
	raiseFileLimit(t, uint64(n)+1000)
	for _, transport := range []string{"tcp", "ws"} {
		t.Run(transport, func(t *testing.T) {
			p := startProcess(t)
			pid := p.cmd.Process.Pid
			time.Sleep(2 * time.Second) // let start-up allocations settle
			before := rssKiB(t, pid)
			conns := make([]net.Conn, n)
			var wg sync.WaitGroup
			sem := make(chan struct{}, 64)
			start := time.Now()
			for i := range conns {
				wg.Add(1)
				sem <- struct{}{}
				go func() {
					defer wg.Done()
					defer func() { <-sem }()
					conns[i] = idleClient(t, transport, p, i)
				}()
			}
			wg.Wait()
			took := time.Since(start)
			time.Sleep(settle)
			after := rssKiB(t, pid)
			per := float64(after-before) * 1024 / float64(n)
			t.Logf("MEASURE transport=%s clients=%d settle=%v rss_before_kib=%d rss_after_kib=%d per_client_bytes=%.0f connect_time=%v",
				transport, n, settle, before, after, per, took.Round(time.Millisecond))
			fmt.Printf("{\"transport\":%q,\"clients\":%d,\"rss_before_kib\":%d,\"rss_after_kib\":%d,\"per_client_bytes\":%.0f}\n",
				transport, n, before, after, per)
			for _, c := range conns {
				if c != nil {
					c.Close()
				}
			}
		})
	}
}

// idleClient connects one MQTT 3.1.1 client with keep-alive 0 and leaves
// it idle.
func idleClient(t *testing.T, transport string, p *process, i int) net.Conn {
	var c net.Conn
	if transport == "ws" {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		ws, _, err := websocket.Dial(ctx, "ws://"+p.http+"/mqtt", &websocket.DialOptions{Subprotocols: []string{"mqtt"}})
		if err != nil {
			t.Errorf("client %d: %v", i, err)
			return nil
		}
		c = websocket.NetConn(context.Background(), ws, websocket.MessageBinary)
	} else {
		var err error
		if c, err = net.DialTimeout("tcp", p.mqtt, 30*time.Second); err != nil {
			t.Errorf("client %d: %v", i, err)
			return nil
		}
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(rawConnect(4, fmt.Sprintf("idle-%d", i))); err != nil {
		t.Errorf("client %d: %v", i, err)
	}
	if first, _, err := readRawPacket(c); err != nil || first != 0x20 {
		t.Errorf("client %d: CONNACK %#x %v", i, first, err)
	}
	c.SetDeadline(time.Time{})
	return c
}

// rssKiB reads VmRSS of pid from /proc.
func rssKiB(t *testing.T, pid int) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kib, err := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kib
		}
	}
	t.Fatal("no VmRSS in /proc status")
	return 0
}

// raiseFileLimit raises this process's open-file limit (which the server
// process inherits) to at least n, up to the hard limit.
func raiseFileLimit(t *testing.T, n uint64) {
	t.Helper()
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		t.Fatal(err)
	}
	if l.Cur >= n {
		return
	}
	l.Cur = min(max(n, l.Cur), l.Max)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		t.Fatal(err)
	}
	if l.Cur < n {
		t.Fatalf("open-file limit %d is below the %d needed (hard limit %d)", l.Cur, n, l.Max)
	}
}
