package devices

import (
	"fmt"
	"sync"
	"testing"
)

// TestPointQueueBound: the queue holds exactly size points (not its
// ring's power of two), refuses the next, and takes them back in order.
func TestPointQueueBound(t *testing.T) {
	for _, size := range []int{1, 3, 4, 5, 1000} {
		q := newPointQueue(size)
		for lap := range 3 { // the ring's slots are used again
			for i := range size {
				n, ok := q.push(&queued{ts: int64(lap*size + i)})
				if !ok || n != i+1 {
					t.Fatalf("size %d lap %d: push %d: %d, %v", size, lap, i, n, ok)
				}
			}
			if _, ok := q.push(&queued{}); ok || q.len() != size {
				t.Fatalf("size %d: push beyond the bound taken (len %d)", size, q.len())
			}
			var got []int64
			q.take(min(2, size), func(p *queued) { got = append(got, p.ts) })
			if _, ok := q.push(&queued{ts: -1}); !ok && size > 1 {
				t.Fatalf("size %d: no room after a take", size)
			}
			q.take(q.len(), func(p *queued) { got = append(got, p.ts) })
			for i := range size {
				if got[i] != int64(lap*size+i) {
					t.Fatalf("size %d lap %d: took %v", size, lap, got)
				}
			}
			if q.len() != 0 || len(got) != size+1 && size > 1 {
				t.Fatalf("size %d: took %d, %d left", size, len(got), q.len())
			}
			for i := range q.slots {
				if q.slots[i].p.json != nil {
					t.Fatalf("size %d: a taken slot keeps its point", size)
				}
			}
		}
	}
}

// TestPointQueueConcurrent: producers on several goroutines and the
// writer taking as they go: every point queued is taken once, each
// producer's in its order, and what is refused is what did not fit.
func TestPointQueueConcurrent(t *testing.T) {
	const producers, each, size = 8, 20000, 1000
	q := newPointQueue(size)
	var wg sync.WaitGroup
	refused := make([]int, producers)
	for w := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dev := &deviceNames{id: fmt.Sprint("d", w)}
			for i := range each {
				if _, ok := q.push(&queued{dev: dev, ts: int64(i), json: []byte{'{', '}'}}); !ok {
					refused[w]++
				}
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	last := map[string]int64{}
	taken := 0
	check := func(p *queued) {
		if prev, ok := last[p.dev.id]; ok && p.ts <= prev {
			t.Errorf("%s: %d after %d", p.dev.id, p.ts, prev)
		}
		last[p.dev.id] = p.ts
		taken++
	}
	for finished := false; !finished; {
		select {
		case <-done:
			finished = true
		default:
		}
		q.take(q.len(), check)
	}
	q.take(q.len(), check)
	n := 0
	for _, r := range refused {
		n += r
	}
	if taken+n != producers*each || q.len() != 0 {
		t.Fatalf("taken %d + refused %d, want %d (%d left)", taken, n, producers*each, q.len())
	}
}

// TestDeviceIndex: the metric names' index finds every device stored,
// under the lock at once and without it once enough lookups have
// missed; a device forgotten is not found (neither way), and one stored
// again under its id is the new one. Readers without the lock run
// meanwhile (for the race detector).
func TestDeviceIndex(t *testing.T) {
	var mu sync.Mutex
	var x deviceIndex
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if dn := x.fast(fmt.Sprint("d", i%300)); dn != nil {
					_ = dn.memo.get(1)
				}
			}
		}()
	}
	defer func() { close(stop); wg.Wait() }()
	names := map[string]*deviceNames{}
	get := func(id string) *deviceNames {
		mu.Lock()
		defer mu.Unlock()
		return x.get(id)
	}
	for i := range 300 {
		id := fmt.Sprint("d", i)
		names[id] = &deviceNames{}
		mu.Lock()
		x.store(id, names[id])
		mu.Unlock()
		if get(id) != names[id] {
			t.Fatalf("%s not found after store", id)
		}
	}
	// Lookups that miss read publish it: then every device is found
	// without the lock.
	for i := 0; x.fast("d299") == nil; i++ {
		if i > 1000 {
			t.Fatal("never published")
		}
		get(fmt.Sprint("d", i%300))
	}
	for id, dn := range names {
		if x.fast(id) != dn {
			t.Fatalf("%s: not found without the lock", id)
		}
	}
	mu.Lock()
	x.delete("d7")
	x.delete("d8")
	mu.Unlock()
	if x.fast("d7") != nil || get("d7") != nil || get("d8") != nil {
		t.Fatal("a forgotten device is still found")
	}
	again := &deviceNames{}
	mu.Lock()
	x.store("d7", again)
	mu.Unlock()
	if get("d7") != again || x.fast("d7") != nil {
		t.Fatal("d7 stored again: not the new names under the lock, or the old ones without it")
	}
	// Only lookups that miss read count: d7's own.
	for i := 0; x.fast("d7") == nil; i++ {
		if i > 300/8 {
			t.Fatal("never published")
		}
		get("d7")
	}
	if x.fast("d7") != again || x.fast("d8") != nil || get("d8") != nil || x.fast("d9") != names["d9"] {
		t.Fatal("after publishing: d7, d8 or d9 wrong")
	}
}
