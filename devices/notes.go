package devices

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"sync"
	"time"

	"github.com/tether-iot/tether/devices/database"
)

// notes carries a store's changes to the stores of the other nodes on a
// shared database (PostgreSQL's LISTEN/NOTIFY, database.Listen): after a
// commit a store sends what changed, and the others update what they keep
// in memory. A store's own notes do not come back to it. A nil *notes
// (SQLite) sends nothing.
type notes struct {
	db      *DB
	channel string
	node    string // this store's id
	log     *slog.Logger
	cancel  context.CancelFunc
	done    chan struct{}
}

// envelope is one notification: the sending store and its note.
type envelope struct {
	Node string          `json:"node"`
	Body json.RawMessage `json:"body"`
}

// notesWait is how long a store's start waits for its listener.
const notesWait = 5 * time.Second

// startNotes listens on channel when db is shared, calling received with
// the other stores' notes, and connected each time the listener
// (re)connects (to read again what may have been missed), both on the
// listener's goroutine. It returns once the listener is connected, or
// after notesWait. nil on SQLite.
func startNotes(db *DB, channel string, log *slog.Logger, connected func(ctx context.Context), received func(ctx context.Context, body []byte)) *notes {
	if db.Dialect != database.Postgres {
		return nil
	}
	var b [8]byte
	rand.Read(b[:])
	ctx, cancel := context.WithCancel(context.Background())
	n := &notes{db: db, channel: channel, node: hex.EncodeToString(b[:]), log: log, cancel: cancel, done: make(chan struct{})}
	ready := make(chan struct{})
	var once sync.Once
	go func() {
		defer close(n.done)
		db.Listen(ctx, channel, func() {
			connected(ctx)
			once.Do(func() { close(ready) })
		}, func(payload string) {
			var e envelope
			if json.Unmarshal([]byte(payload), &e) != nil || e.Node == n.node {
				return
			}
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			received(rctx, e.Body)
		}, func(err error) {
			log.Warn("lost the database's change notifications; retrying", "channel", channel, "error", err)
		})
	}()
	select {
	case <-ready:
	case <-time.After(notesWait):
	}
	return n
}

// send tells the other nodes' stores body (JSON). A failure is logged:
// they learn of the change when they next read it.
func (n *notes) send(body any) {
	if n == nil {
		return
	}
	b, err := json.Marshal(body)
	if err != nil {
		return
	}
	payload, _ := json.Marshal(envelope{Node: n.node, Body: b})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := n.db.Notify(ctx, n.channel, string(payload)); err != nil {
		n.log.Warn("telling the other nodes of a change failed", "channel", n.channel, "error", err)
	}
}

// stop ends the listener. Idempotent; nil-safe.
func (n *notes) stop() {
	if n == nil {
		return
	}
	n.cancel()
	<-n.done
}
