package broker

// storeComponent is the session store's migration component (DB.Migrate).
const storeComponent = "mqtt_store"

// storeSchema is the "mqtt_store" component's migrations. A released step
// is never edited; append a new one.
//
// Rows hold mochi's storage types as JSON (data), with message payloads in
// a BLOB of their own so they are not base64-encoded. Times are Unix
// seconds; 0 means "never" (expires_at) or "connected" (disconnected_at).
//
// mqtt_messages and mqtt_pending hold what a publisher has been told is
// safe (PUBACK/PUBREC sent) but the engine has not yet turned into
// inflight rows of the persistent sessions it is for: the engine writes the
// acknowledgement before it fans the message out, so the store records the
// message and its persistent recipients first, and removes them once the
// fan-out is done. After a crash, start-up turns what is left into inflight
// rows.
var storeSchema = []string{
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
	CREATE TABLE mqtt_messages (
		seq        INTEGER PRIMARY KEY,
		data       BLOB NOT NULL,
		payload    BLOB,
		expires_at INTEGER NOT NULL DEFAULT 0
	);
	CREATE TABLE mqtt_pending (
		seq       INTEGER NOT NULL,
		client_id TEXT NOT NULL,
		qos       INTEGER NOT NULL,
		retain    INTEGER NOT NULL DEFAULT 0,
		sub_ids   TEXT NOT NULL DEFAULT '',
		PRIMARY KEY (seq, client_id)
	) WITHOUT ROWID;
	CREATE TABLE mqtt_sysinfo (
		id   INTEGER PRIMARY KEY CHECK (id = 1),
		data BLOB NOT NULL
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
		`DELETE FROM mqtt_pending WHERE client_id = ?`,
	},
	opSubPut:    {`INSERT OR REPLACE INTO mqtt_subscriptions(client_id, filter, data) VALUES (?, ?, ?)`},
	opSubDelete: {`DELETE FROM mqtt_subscriptions WHERE client_id = ? AND filter = ?`},
	opInflightPut: {`INSERT OR REPLACE INTO mqtt_inflight(client_id, packet_id, data, payload, expires_at)
		VALUES (?, ?, ?, ?, ?)`},
	opInflightDelete: {`DELETE FROM mqtt_inflight WHERE client_id = ? AND packet_id = ?`},
	opRetainedPut:    {`INSERT OR REPLACE INTO mqtt_retained(topic, data, payload, expires_at) VALUES (?, ?, ?, ?)`},
	opRetainedDelete: {`DELETE FROM mqtt_retained WHERE topic = ?`},
	opMessagePut:     {`INSERT OR REPLACE INTO mqtt_messages(seq, data, payload, expires_at) VALUES (?, ?, ?, ?)`},
	opPendingPut:     {`INSERT OR REPLACE INTO mqtt_pending(seq, client_id, qos, retain, sub_ids) VALUES (?, ?, ?, ?, ?)`},
	opMessageDelete:  {`DELETE FROM mqtt_messages WHERE seq = ?`, `DELETE FROM mqtt_pending WHERE seq = ?`},
	opSysInfo:        {`INSERT OR REPLACE INTO mqtt_sysinfo(id, data) VALUES (1, ?)`},
	opReset: {`DELETE FROM mqtt_clients`, `DELETE FROM mqtt_subscriptions`, `DELETE FROM mqtt_inflight`,
		`DELETE FROM mqtt_retained`, `DELETE FROM mqtt_messages`, `DELETE FROM mqtt_pending`},
}
