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
			q.take(2, func(p *queued) { got = append(got, p.ts) })
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
			for _, s := range q.slots {
				if s.p.json != nil {
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
			dev := fmt.Sprint("d", w)
			for i := range each {
				if _, ok := q.push(&queued{device: dev, ts: int64(i), json: []byte{'{', '}'}}); !ok {
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
		if prev, ok := last[p.device]; ok && p.ts <= prev {
			t.Errorf("%s: %d after %d", p.device, p.ts, prev)
		}
		last[p.device] = p.ts
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
