package sessions

import (
	"context"
	"testing"

	"github.com/tether-iot/tether/devices/database"
	"github.com/tether-iot/tether/internal/testpg"
)

// TestSharedStoreOwnership: on PostgreSQL every op of the store runs, and
// a node writes a session's rows only while it holds the session: once
// another node has taken it (the conditional UPDATE of Adopt and
// AdoptOrphans), the first node's late writes change nothing, while the
// new holder's do. A node's reset leaves the others' rows alone.
func TestSharedStoreOwnership(t *testing.T) {
	pg := testpg.New(t)
	ctx := context.Background()
	db, err := database.OpenPostgres(ctx, pg.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	open := func(node string) *Store {
		s, err := OpenShared(db, node, &Options{Logger: storeLogger()})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.w.prepare(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.w.closeStmts() })
		return s
	}
	n1, n2 := open("n1"), open("n2's") // a quote in a name stays a literal
	apply := func(s *Store, ops ...op) {
		t.Helper()
		if err := s.w.apply(ops); err != nil {
			t.Fatal(err)
		}
	}
	count := func(q string, args ...any) int {
		t.Helper()
		var n int
		if err := db.R.QueryRow(q, args...).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	rows := func() (clients, subs, inflight, queue int) {
		return count(`SELECT COUNT(*) FROM mqtt_clients WHERE id = 'c1'`), count(`SELECT COUNT(*) FROM mqtt_subscriptions WHERE client_id = 'c1'`),
			count(`SELECT COUNT(*) FROM mqtt_inflight WHERE client_id = 'c1'`), count(`SELECT COUNT(*) FROM mqtt_queue WHERE client_id = 'c1'`)
	}
	data, payload := []byte(`{}`), []byte("p")
	apply(n1,
		newOp(opClientPut, "c1", data, int64(60), int64(0)),
		newOp(opSubPut, "c1", "a/#", data),
		newOp(opInflightPut, "c1", 1, data, payload, int64(0)),
		newOp(opQueuePut, "c1", int64(1), 1, 0, "", data, payload, int64(0)),
		newOp(opRetainedPut, "a/b", data, payload, int64(0)),
		newOp(opSysInfo, data),
	)
	apply(n2, newOp(opRetainedPut, "a/b", data, payload, int64(0)), newOp(opSysInfo, data))
	if c, s, i, q := rows(); c != 1 || s != 1 || i != 1 || q != 1 {
		t.Fatalf("after n1's writes: clients %d, subscriptions %d, inflight %d, queue %d", c, s, i, q)
	}
	if n := count(`SELECT COUNT(*) FROM mqtt_retained WHERE topic = 'a/b'`); n != 2 {
		t.Fatalf("%d retained rows, want one per node", n)
	}

	// n2 takes the session; n1's late writes change nothing.
	if _, err := db.W.Exec(`UPDATE mqtt_clients SET node = ? WHERE id = 'c1' AND node = ?`, "n2's", "n1"); err != nil {
		t.Fatal(err)
	}
	apply(n1,
		newOp(opClientPut, "c1", []byte(`{"stale":true}`), int64(1), int64(5)),
		newOp(opQueuePut, "c1", int64(2), 1, 0, "", data, payload, int64(0)),
		newOp(opSubPut, "c1", "b/#", data),
		newOp(opInflightPut, "c1", 2, data, payload, int64(0)),
		newOp(opQueueClear, "c1"),
		newOp(opSubDelete, "c1", "a/#"),
		newOp(opClientDelete, "c1"),
		newOp(opReset),
	)
	if c, s, i, q := rows(); c != 1 || s != 1 || i != 1 || q != 1 {
		t.Fatalf("after n1's late writes: clients %d, subscriptions %d, inflight %d, queue %d", c, s, i, q)
	}
	if n := count(`SELECT COUNT(*) FROM mqtt_clients WHERE id = 'c1' AND node = ? AND expiry = 60`, "n2's"); n != 1 {
		t.Fatal("n1 overwrote n2's session row")
	}
	if n := count(`SELECT COUNT(*) FROM mqtt_retained`); n != 1 {
		t.Fatalf("%d retained rows after n1's reset, want n2's", n)
	}

	// n2's writes go through.
	apply(n2, newOp(opQueuePut, "c1", int64(2), 1, 0, "", data, payload, int64(0)))
	if _, _, _, q := rows(); q != 2 {
		t.Fatalf("%d queued after n2's write, want 2", q)
	}
	apply(n2, newOp(opClientDelete, "c1"))
	if c, s, i, q := rows(); c+s+i+q != 0 {
		t.Fatalf("after n2's delete: clients %d, subscriptions %d, inflight %d, queue %d", c, s, i, q)
	}
}
