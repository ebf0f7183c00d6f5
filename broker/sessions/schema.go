package sessions

// component is the session store's migration component (DB.Migrate) in
// its own file, sessions.db.
const component = "sessions"

// schema is the "sessions" component's migrations. A released step is
// never edited; append a new one.
//
// Rows hold mochi's storage types as JSON (data), with message payloads in
// a BLOB of their own so they are not base64-encoded. Times are Unix
// seconds; 0 means "never" (expires_at) or "connected" (disconnected_at).
//
// mqtt_queue is each persistent session's offline queue: the QoS 1/2
// messages acknowledged to their publishers and not yet handed to the
// session's inflight window, in order (seq, per session). qos, retain and
// sub_ids are what the session's subscription made of the message.
var schema = []string{
	// 1: the first schema.
	`CREATE TABLE mqtt_clients (
		id              TEXT PRIMARY KEY,
		data            BLOB NOT NULL,
		expiry          INTEGER NOT NULL,
		disconnected_at INTEGER NOT NULL DEFAULT 0
	) WITHOUT ROWID;
	CREATE TABLE mqtt_subscriptions (
		client_id TEXT NOT NULL,
		filter    TEXT NOT NULL,
		data      BLOB NOT NULL,
		PRIMARY KEY (client_id, filter)
	) WITHOUT ROWID;
	CREATE TABLE mqtt_inflight (
		client_id  TEXT NOT NULL,
		packet_id  INTEGER NOT NULL,
		data       BLOB NOT NULL,
		payload    BLOB,
		expires_at INTEGER NOT NULL DEFAULT 0,
		PRIMARY KEY (client_id, packet_id)
	);
	CREATE TABLE mqtt_retained (
		topic      TEXT PRIMARY KEY,
		data       BLOB NOT NULL,
		payload    BLOB,
		expires_at INTEGER NOT NULL DEFAULT 0
	);
	CREATE TABLE mqtt_queue (
		client_id  TEXT NOT NULL,
		seq        INTEGER NOT NULL,
		qos        INTEGER NOT NULL,
		retain     INTEGER NOT NULL DEFAULT 0,
		sub_ids    TEXT NOT NULL DEFAULT '',
		data       BLOB NOT NULL,
		payload    BLOB,
		expires_at INTEGER NOT NULL DEFAULT 0,
		PRIMARY KEY (client_id, seq)
	);
	CREATE TABLE mqtt_sysinfo (
		id   INTEGER PRIMARY KEY CHECK (id = 1),
		data BLOB NOT NULL
	);
	CREATE TABLE legacy_import (
		id   INTEGER PRIMARY KEY CHECK (id = 1),
		done TEXT NOT NULL
	);`,
}

// storeSQL is, for each opKind, the statements the writer runs with the
// op's arguments.
var storeSQL = [...][]string{
	opClientPut: {`INSERT INTO mqtt_clients(id, data, expiry, disconnected_at) VALUES (?, ?, ?, ?)
		ON CONFLICT(id) DO UPDATE SET data = excluded.data, expiry = excluded.expiry, disconnected_at = excluded.disconnected_at`},
	opClientDelete: {
		`DELETE FROM mqtt_clients WHERE id = ?`,
		`DELETE FROM mqtt_subscriptions WHERE client_id = ?`,
		`DELETE FROM mqtt_inflight WHERE client_id = ?`,
		`DELETE FROM mqtt_queue WHERE client_id = ?`,
	},
	opQueueClear: {`DELETE FROM mqtt_queue WHERE client_id = ?`},
	opSubPut:     {`INSERT OR REPLACE INTO mqtt_subscriptions(client_id, filter, data) VALUES (?, ?, ?)`},
	opSubDelete:  {`DELETE FROM mqtt_subscriptions WHERE client_id = ? AND filter = ?`},
	opInflightPut: {`INSERT OR REPLACE INTO mqtt_inflight(client_id, packet_id, data, payload, expires_at)
		VALUES (?, ?, ?, ?, ?)`},
	opInflightDelete: {`DELETE FROM mqtt_inflight WHERE client_id = ? AND packet_id = ?`},
	opRetainedPut:    {`INSERT OR REPLACE INTO mqtt_retained(topic, data, payload, expires_at) VALUES (?, ?, ?, ?)`},
	opRetainedDelete: {`DELETE FROM mqtt_retained WHERE topic = ?`},
	opQueuePut: {`INSERT OR REPLACE INTO mqtt_queue(client_id, seq, qos, retain, sub_ids, data, payload, expires_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)`},
	opQueueDelete: {`DELETE FROM mqtt_queue WHERE client_id = ? AND seq = ?`},
	opSysInfo:     {`INSERT OR REPLACE INTO mqtt_sysinfo(id, data) VALUES (1, ?)`},
	opReset: {`DELETE FROM mqtt_clients`, `DELETE FROM mqtt_subscriptions`, `DELETE FROM mqtt_inflight`,
		`DELETE FROM mqtt_retained`},
}
