package logevery

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

func TestAllowOncePerInterval(t *testing.T) {
	k := New(time.Minute)
	t0 := time.Unix(1_000_000, 0)
	if !k.Allow("d1", t0) {
		t.Fatal("first event of d1 not logged")
	}
	if k.Allow("d1", t0.Add(59*time.Second)) {
		t.Fatal("d1 logged twice within a minute")
	}
	if !k.Allow("d2", t0.Add(time.Second)) {
		t.Fatal("d2 held back by d1")
	}
	if !k.Allow("d1", t0.Add(time.Minute)) {
		t.Fatal("d1 not logged again after a minute")
	}
	if k.Allow("d1", t0.Add(time.Minute+time.Second)) {
		t.Fatal("the minute does not restart from the last line logged")
	}
}

// TestAllowForgetsOldKeys: past pruneAt keys, those logged more than an
// interval ago are forgotten; recent ones are still held back.
func TestAllowForgetsOldKeys(t *testing.T) {
	k := New(time.Minute)
	t0 := time.Unix(1_000_000, 0)
	for i := range pruneAt {
		k.Allow(fmt.Sprint("old-", i), t0)
	}
	k.Allow("recent", t0.Add(time.Minute))
	if n := len(k.last); n != 1 {
		t.Fatalf("%d keys remembered after pruning, want 1", n)
	}
	if k.Allow("recent", t0.Add(time.Minute+time.Second)) {
		t.Fatal("a recent key was forgotten")
	}
}

func TestAllowConcurrent(t *testing.T) {
	k := New(time.Hour)
	now := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	allowed := 0
	for range 8 {
		wg.Go(func() {
			for range 100 {
				if k.Allow("d1", now) {
					mu.Lock()
					allowed++
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if allowed != 1 {
		t.Fatalf("logged %d times, want once", allowed)
	}
}
