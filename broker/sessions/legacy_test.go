package sessions

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tether-iot/tether/devices"
)

// legacySchema is the session store's schema when it lived in tether.db
// (component "mqtt_store", version 1).
const legacySchema = `CREATE TABLE mqtt_clients (id TEXT PRIMARY KEY, data BLOB NOT NULL, expiry INTEGER NOT NULL,
		disconnected_at INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
	CREATE TABLE mqtt_subscriptions (client_id TEXT NOT NULL, filter TEXT NOT NULL, data BLOB NOT NULL,
		PRIMARY KEY (client_id, filter)) WITHOUT ROWID;
	CREATE TABLE mqtt_inflight (client_id TEXT NOT NULL, packet_id INTEGER NOT NULL, data BLOB NOT NULL, payload BLOB,
		expires_at INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (client_id, packet_id));
	CREATE TABLE mqtt_retained (topic TEXT PRIMARY KEY, data BLOB NOT NULL, payload BLOB, expires_at INTEGER NOT NULL DEFAULT 0);
	CREATE TABLE mqtt_messages (seq INTEGER PRIMARY KEY, data BLOB NOT NULL, payload BLOB, expires_at INTEGER NOT NULL DEFAULT 0);
	CREATE TABLE mqtt_pending (seq INTEGER NOT NULL, client_id TEXT NOT NULL, qos INTEGER NOT NULL,
		retain INTEGER NOT NULL DEFAULT 0, sub_ids TEXT NOT NULL DEFAULT '', PRIMARY KEY (seq, client_id)) WITHOUT ROWID;
	CREATE TABLE mqtt_sysinfo (id INTEGER PRIMARY KEY CHECK (id = 1), data BLOB NOT NULL);`

// Sessions an older Tether kept in tether.db (with messages acknowledged
// but not yet fanned out when it was killed) are moved to sessions.db on
// the first start, once, and delivered.
func TestLegacyImport(t *testing.T) {
	// A session with 3 queued messages, written by this store...
	src := t.TempDir()
	n := startStoreNode(t, src, nil)
	sub := storeClient(t, n.addr, "old-sub", false, nil)
	waitToken(t, "subscribe", sub.Subscribe("old/#", 1, nil))
	sub.Disconnect(100)
	waitOffline(t, n.store, "old-sub")
	pub := storeClient(t, n.addr, "old-pub", true, nil)
	for i := range 3 {
		waitToken(t, "publish", pub.Publish("old/x", 1, false, fmt.Sprintf("old-%d", i)))
	}
	n.stop()

	// ...as the older one laid it out in tether.db.
	dir := t.TempDir()
	db, err := devices.OpenDB(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := db.Migrate(ctx, "mqtt_store", devices.Schema{SQLite: []string{legacySchema}}); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`ATTACH DATABASE '` + filepath.Join(src, FileName) + `' AS cur`,
		`INSERT INTO mqtt_clients SELECT * FROM cur.mqtt_clients`,
		`INSERT INTO mqtt_subscriptions SELECT * FROM cur.mqtt_subscriptions`,
		`INSERT INTO mqtt_messages SELECT seq, data, payload, expires_at FROM cur.mqtt_queue`,
		`INSERT INTO mqtt_pending SELECT seq, client_id, qos, retain, sub_ids FROM cur.mqtt_queue`,
		`DETACH DATABASE cur`,
	} {
		if _, err := db.W.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}

	open := func() *storeNode {
		return startStoreNode(t, dir, &Options{Legacy: db.Path})
	}
	n = open()
	if fi, err := os.Stat(filepath.Join(dir, FileName)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("sessions.db: %v, mode %v; want 0600", err, fi.Mode())
	}
	var left int
	if err := db.R.QueryRow(`SELECT (SELECT COUNT(*) FROM mqtt_clients) + (SELECT COUNT(*) FROM mqtt_pending)`).Scan(&left); err != nil || left != 0 {
		t.Errorf("old rows left in tether.db: %d (%v)", left, err)
	}
	var got orderedPayloads
	c := storeClient(t, n.addr, "old-sub", false, got.add)
	checkFor(t, 10*time.Second, func() error {
		if p := got.list(); len(p) != 3 || p[0] != "old-0" || p[2] != "old-2" {
			return fmt.Errorf("received %v", p)
		}
		return nil
	})
	c.Disconnect(100)
	n.stop()

	// A second start imports nothing again, even if old rows reappear.
	if _, err := db.W.Exec(`INSERT INTO mqtt_clients VALUES ('ghost', '{}', 3600, 0)`); err != nil {
		t.Fatal(err)
	}
	n = open()
	var ghosts int
	if err := n.db.R.QueryRow(`SELECT COUNT(*) FROM mqtt_clients WHERE id = 'ghost'`).Scan(&ghosts); err != nil || ghosts != 0 {
		t.Fatalf("imported again: %d (%v)", ghosts, err)
	}
	db.Close()
}
