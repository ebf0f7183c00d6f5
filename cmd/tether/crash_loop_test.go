package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"
)

// crashLoops is how many times crashLoop kills the broker:
// TETHER_CRASH_LOOPS, 5 by default so that CI stays short.
func crashLoops(t *testing.T) int {
	if v := os.Getenv("TETHER_CRASH_LOOPS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("TETHER_CRASH_LOOPS=%q: want a positive number", v)
		}
		return n
	}
	return 5
}

// crashLoop kills the broker with SIGKILL at a random moment while three
// publishers send QoS 1 messages as fast as they are acknowledged and a
// persistent 3.1.1 and an MQTT 5 subscriber receive them, at the default
// settings. After each kill both database files pass PRAGMA
// integrity_check; at the end every acknowledged message has reached both
// subscribers.
func crashLoop(t *testing.T, bin string) {
	loops := crashLoops(t)
	p := newTetherProc(t, bin)
	var acked, got3, got5 payloadSet
	for loop := range loops {
		p.start(t)
		s3 := crashSub3(t, p.mqtt, "loop-sub3", &got3)
		s5 := crashSub5(t, p.mqtt, "loop-sub5", &got5)
		if loop == 0 {
			if tok := s3.Subscribe("loop/#", 1, nil); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
				t.Fatalf("subscribe: %v", tok.Error())
			}
			subscribe5(t, s5, "loop/#")
		}
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for i := range 3 {
			c := crashPub3(t, p.mqtt, fmt.Sprintf("loop-pub-%d", i))
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Disconnect(0)
				publishAcked(c, "loop/x", fmt.Sprintf("l%d-p%d", loop, i), 1<<30, 32, &acked, stop)
			}()
		}
		// The random moment: somewhere in the first 1.5 s of load.
		time.Sleep(time.Duration(200+rand.IntN(1300)) * time.Millisecond)
		p.kill(t)
		close(stop)
		wg.Wait()
		s3.Disconnect(0)
		closeSub5(s5)
		integrityCheck(t, p.dbPath())
		integrityCheck(t, p.sessionsPath())
		t.Logf("kill %d: %d messages acknowledged so far", loop+1, acked.len())
	}
	p.start(t)
	s3 := crashSub3(t, p.mqtt, "loop-sub3", &got3)
	defer s3.Disconnect(0)
	s5 := crashSub5(t, p.mqtt, "loop-sub5", &got5)
	defer closeSub5(s5)
	for name, got := range map[string]*payloadSet{"3.1.1": &got3, "5": &got5} {
		checkFor(t, 60*time.Second, func() error {
			if n, one := got.missing(&acked); n > 0 {
				return fmt.Errorf("after %d kills the MQTT %s subscriber lacks %d of %d acknowledged messages (e.g. %s)",
					loops, name, n, acked.len(), one)
			}
			return nil
		})
	}
	p.stop(t)
	integrityCheck(t, p.dbPath())
	integrityCheck(t, p.sessionsPath())
}
