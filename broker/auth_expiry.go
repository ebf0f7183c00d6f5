package broker

import (
	"container/heap"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// expiryRecheck bounds the expiry timer's wait: a credential's expiry is
// a wall-clock time and a timer counts monotonic time, so a clock that is
// set forward is caught up with within this.
const expiryRecheck = time.Minute

// expiries ends each connection made with a credential that expires (a
// dashboard session, an API token with a lifetime) when it stops being
// accepted (devices.Identity.Expires), through cut, as a revocation does.
// One min-heap and one timer, set to the earliest expiry, serve every
// connection: a connection costs an entry while it lasts and nothing at
// all when its credential does not expire; the timer's function runs
// only when an expiry is due (or every expiryRecheck while any is
// pending).
type expiries struct {
	mu     sync.Mutex
	h      expiryHeap
	by     map[*mqtt.Client]*expiry
	timer  *time.Timer
	due    time.Time // when timer fires; zero when it is not set
	closed bool
}

// expiry is one connection's entry.
type expiry struct {
	at time.Time
	cl *mqtt.Client
	c  *conn
	i  int // index in the heap
}

type expiryHeap []*expiry

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h expiryHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].i, h[j].i = i, j
}
func (h *expiryHeap) Push(x any) {
	e := x.(*expiry)
	e.i = len(*h)
	*h = append(*h, e)
}
func (h *expiryHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return e
}

// watchExpiry has cl, just authenticated as c, ended when c's credential
// expires. OnConnect calls it once c is cl's entry in clients.
func (a *Auth) watchExpiry(cl *mqtt.Client, c *conn) {
	if c.id.Expires.IsZero() {
		return
	}
	x := &a.expiry
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.closed {
		return
	}
	if x.by == nil {
		x.by = map[*mqtt.Client]*expiry{}
	}
	if old := x.by[cl]; old != nil {
		heap.Remove(&x.h, old.i)
	}
	e := &expiry{at: c.id.Expires, cl: cl, c: c}
	x.by[cl] = e
	heap.Push(&x.h, e)
	a.armExpiry()
}

// forgetExpiry drops cl's entry: its connection has ended.
func (a *Auth) forgetExpiry(cl *mqtt.Client) {
	x := &a.expiry
	x.mu.Lock()
	defer x.mu.Unlock()
	if e := x.by[cl]; e != nil {
		delete(x.by, cl)
		heap.Remove(&x.h, e.i)
	}
}

// armExpiry sets the timer for the earliest entry, if it is not set for
// then or sooner. x.mu is held.
func (a *Auth) armExpiry() {
	x := &a.expiry
	if len(x.h) == 0 || x.closed {
		return
	}
	at := x.h[0].at
	if !x.due.IsZero() && !x.due.After(at) {
		return
	}
	d := min(time.Until(at), expiryRecheck)
	if x.timer == nil {
		x.timer = time.AfterFunc(d, a.expire)
	} else {
		x.timer.Reset(d)
	}
	x.due = time.Now().Add(d)
}

// expire ends the connections whose credentials have expired (together:
// cutAll), and sets the timer for the next one.
func (a *Auth) expire() {
	x := &a.expiry
	x.mu.Lock()
	x.due = time.Time{}
	now := time.Now()
	var ended []target
	for len(x.h) > 0 && !x.h[0].at.After(now) {
		e := heap.Pop(&x.h).(*expiry)
		delete(x.by, e.cl)
		ended = append(ended, target{e.cl, e.c})
	}
	a.armExpiry()
	x.mu.Unlock()
	if len(ended) == 0 {
		return
	}
	if !a.working() {
		return
	}
	defer a.wg.Done()
	a.cutAll(ended, packets.ErrMaxConnectTime, func(e target) {
		a.m.expired.Inc()
		a.log.Info("disconnecting client: its credentials expired", "client", e.cl.ID, "name", e.c.id.Name, "via", e.c.id.Via)
	})
}

// stopExpiry stops the timer; Stop calls it.
func (a *Auth) stopExpiry() {
	x := &a.expiry
	x.mu.Lock()
	x.closed = true
	if x.timer != nil {
		x.timer.Stop()
	}
	x.mu.Unlock()
}
