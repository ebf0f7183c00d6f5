package main

import (
	"database/sql"
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"
)

// TestCrash runs the crash scenarios against the real binary, built once.
func TestCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("crash harness: not in -short")
	}
	bin := buildTether(t, t.TempDir())
	t.Run("sessions", func(t *testing.T) { crashSessions(t, bin) })
	t.Run("loop", func(t *testing.T) { crashLoop(t, bin) })
	t.Run("backup", func(t *testing.T) { crashBackup(t, bin) })
	t.Run("abuse", func(t *testing.T) { crashAbuse(t, bin) })
}

// crashMessages is how many messages crashSessions publishes:
// TETHER_CRASH_MESSAGES, 20,000 by default so that CI (with -race, on a
// shared machine) stays short; the figure is
// TETHER_CRASH_MESSAGES=100000.
func crashMessages(t *testing.T) int {
	if v := os.Getenv("TETHER_CRASH_MESSAGES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 4 {
			t.Fatalf("TETHER_CRASH_MESSAGES=%q: want a number of at least 4", v)
		}
		return n
	}
	return 20_000
}

// crashSessions, at the default settings: a persistent MQTT 5 and a
// 3.1.1 subscriber go offline; 20,000 or 100,000 QoS 1 messages (far
// more than the inflight window) and 50 retained ones are published and acknowledged;
// the broker is killed with SIGKILL and started again; the subscribers
// reconnect and receive every message, in order per publisher, and a new
// subscriber every retained one.
func crashSessions(t *testing.T, bin string) {
	count := crashMessages(t)
	p := newTetherProc(t, bin)
	p.start(t)

	// One set per subscriber for both its connections: a message that
	// reached it before it was seen offline counts.
	var got3, got5 payloadSet
	s3 := crashSub3(t, p.mqtt, "crash-sub3", &got3)
	if tok := s3.Subscribe("crash/data/#", 1, nil); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	s3.Disconnect(100)
	s5 := crashSub5(t, p.mqtt, "crash-sub5", &got5)
	subscribe5(t, s5, "crash/data/#")
	closeSub5(s5)

	var acked payloadSet
	start := time.Now()
	var wg sync.WaitGroup
	const pubs = 4
	for i := range pubs {
		c := crashPub3(t, p.mqtt, fmt.Sprintf("crash-pub-%d", i))
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Disconnect(0)
			publishAcked(c, "crash/data/x", "p"+strconv.Itoa(i), count/pubs, 64, &acked, nil)
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if acked.len() != count {
		t.Fatalf("%d of %d messages acknowledged", acked.len(), count)
	}
	t.Logf("%d QoS 1 messages acknowledged in %v (%.0f msg/s) with 2 offline persistent subscribers",
		count, elapsed.Round(time.Millisecond), float64(count)/elapsed.Seconds())
	var retained payloadSet
	rp := crashPub3(t, p.mqtt, "crash-retainer")
	for i := range 50 {
		v := fmt.Sprintf("r%d", i)
		if tok := rp.Publish(fmt.Sprintf("crash/retained/%d", i), 1, true, v); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("publish retained: %v", tok.Error())
		}
		retained.add(v)
	}
	rp.Disconnect(0)

	p.kill(t)
	integrityCheck(t, p.dbPath())
	integrityCheck(t, p.sessionsPath())
	crashStoreSummary(t, p.sessionsPath())
	p.start(t)

	s3 = crashSub3(t, p.mqtt, "crash-sub3", &got3)
	defer s3.Disconnect(0)
	s5 = crashSub5(t, p.mqtt, "crash-sub5", &got5)
	defer closeSub5(s5)
	// A deadline for a slow, shared machine, not a speed requirement.
	drain := 60*time.Second + time.Duration(count/200)*time.Second
	for name, got := range map[string]*payloadSet{"3.1.1": &got3, "5": &got5} {
		checkFor(t, drain, func() error {
			if n, one := got.missing(&acked); n > 0 {
				return fmt.Errorf("MQTT %s subscriber lacks %d of %d acknowledged messages (e.g. %s)", name, n, count, one)
			}
			return nil
		})
		if n, one := got.outOfOrder(); n > 0 {
			t.Errorf("MQTT %s subscriber: %d messages out of order per publisher (e.g. %s)", name, n, one)
		}
	}
	var gotRetained payloadSet
	late := crashSub3(t, p.mqtt, "crash-late", &gotRetained)
	defer late.Disconnect(0)
	if tok := late.Subscribe("crash/retained/#", 1, nil); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	checkFor(t, 10*time.Second, func() error {
		if n, one := gotRetained.missing(&retained); n > 0 {
			return fmt.Errorf("%d retained messages lost (e.g. %s)", n, one)
		}
		return nil
	})
	p.stop(t)
}

// crashStoreSummary logs what the killed server's session store holds:
// inflight rows and queued messages per session, sessions, subscriptions.
func crashStoreSummary(t *testing.T, path string) {
	db, _ := sql.Open("sqlite", "file:"+path)
	defer db.Close()
	for _, q := range []string{"SELECT client_id||':'||COUNT(*) FROM mqtt_inflight GROUP BY client_id",
		"SELECT id||':'||disconnected_at||':'||expiry FROM mqtt_clients", "SELECT client_id||':'||filter FROM mqtt_subscriptions",
		"SELECT 'queued:'||client_id||':'||COUNT(*) FROM mqtt_queue GROUP BY client_id"} {
		rows, err := db.Query(q)
		if err != nil {
			t.Log(err)
			continue
		}
		for rows.Next() {
			var s string
			_ = rows.Scan(&s)
			t.Log("store after kill: " + s)
		}
		rows.Close()
	}
}
