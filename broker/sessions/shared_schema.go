package sessions

import "strings"

// pgSchema is the "sessions" component's migrations on PostgreSQL, where
// the nodes of a cluster share the session store (shared.go). Each
// session row names the node that holds it (node); retained messages and
// $SYS figures are each node's own. A released step is never edited.
var pgSchema = []string{
	// 1: the first schema.
	`CREATE TABLE mqtt_clients (
		id              TEXT PRIMARY KEY,
		node            TEXT NOT NULL,
		data            BYTEA NOT NULL,
		expiry          BIGINT NOT NULL,
		disconnected_at BIGINT NOT NULL DEFAULT 0
	);
	CREATE INDEX mqtt_clients_node ON mqtt_clients(node);
	CREATE TABLE mqtt_subscriptions (
		client_id TEXT NOT NULL,
		filter    TEXT NOT NULL,
		data      BYTEA NOT NULL,
		PRIMARY KEY (client_id, filter)
	);
	CREATE TABLE mqtt_inflight (
		client_id  TEXT NOT NULL,
		packet_id  INTEGER NOT NULL,
		data       BYTEA NOT NULL,
		payload    BYTEA,
		expires_at BIGINT NOT NULL DEFAULT 0,
		PRIMARY KEY (client_id, packet_id)
	);
	CREATE TABLE mqtt_retained (
		node       TEXT NOT NULL,
		topic      TEXT NOT NULL,
		data       BYTEA NOT NULL,
		payload    BYTEA,
		expires_at BIGINT NOT NULL DEFAULT 0,
		PRIMARY KEY (node, topic)
	);
	CREATE TABLE mqtt_queue (
		client_id  TEXT NOT NULL,
		seq        BIGINT NOT NULL,
		qos        INTEGER NOT NULL,
		retain     INTEGER NOT NULL DEFAULT 0,
		sub_ids    TEXT NOT NULL DEFAULT '',
		data       BYTEA NOT NULL,
		payload    BYTEA,
		expires_at BIGINT NOT NULL DEFAULT 0,
		PRIMARY KEY (client_id, seq)
	);
	CREATE TABLE mqtt_sysinfo (
		node TEXT PRIMARY KEY,
		data BYTEA NOT NULL
	);`,
}

// quote is s as an SQL string literal.
func quote(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// pgStoreSQL is storeSQL on PostgreSQL for node: the same ops with the
// same arguments. A node writes a session's rows only while it holds the
// session (its row names the node): a node that has handed a session to
// another one cannot overwrite or delete it late.
func pgStoreSQL(node string) [numOpKinds][]string {
	n := quote(node)
	notOthers := `NOT EXISTS (SELECT 1 FROM mqtt_clients c WHERE c.id = ?1 AND c.node <> ` + n + `)`
	mine := `SELECT id FROM mqtt_clients WHERE node = ` + n
	return [numOpKinds][]string{
		opClientPut: {`INSERT INTO mqtt_clients(id, node, data, expiry, disconnected_at) VALUES (?, ` + n + `, ?, ?, ?)
		ON CONFLICT(id) DO UPDATE SET data = excluded.data, expiry = excluded.expiry, disconnected_at = excluded.disconnected_at
		WHERE mqtt_clients.node = excluded.node`},
		opClientDelete: {
			`DELETE FROM mqtt_clients WHERE id = ?1 AND node = ` + n,
			`DELETE FROM mqtt_subscriptions WHERE client_id = ?1 AND ` + notOthers,
			`DELETE FROM mqtt_inflight WHERE client_id = ?1 AND ` + notOthers,
			`DELETE FROM mqtt_queue WHERE client_id = ?1 AND ` + notOthers,
		},
		opQueueClear: {`DELETE FROM mqtt_queue WHERE client_id = ?1 AND ` + notOthers},
		opSubPut: {`INSERT INTO mqtt_subscriptions(client_id, filter, data)
		SELECT ?1::text, ?2::text, ?3::bytea WHERE ` + notOthers + `
		ON CONFLICT(client_id, filter) DO UPDATE SET data = excluded.data`},
		opSubDelete: {`DELETE FROM mqtt_subscriptions WHERE client_id = ?1 AND filter = ?2 AND ` + notOthers},
		opInflightPut: {`INSERT INTO mqtt_inflight(client_id, packet_id, data, payload, expires_at)
		SELECT ?1::text, ?2::integer, ?3::bytea, ?4::bytea, ?5::bigint WHERE ` + notOthers + `
		ON CONFLICT(client_id, packet_id) DO UPDATE SET data = excluded.data, payload = excluded.payload, expires_at = excluded.expires_at`},
		opInflightDelete: {`DELETE FROM mqtt_inflight WHERE client_id = ? AND packet_id = ?`},
		opRetainedPut: {`INSERT INTO mqtt_retained(node, topic, data, payload, expires_at) VALUES (` + n + `, ?, ?, ?, ?)
		ON CONFLICT(node, topic) DO UPDATE SET data = excluded.data, payload = excluded.payload, expires_at = excluded.expires_at`},
		opRetainedDelete: {`DELETE FROM mqtt_retained WHERE node = ` + n + ` AND topic = ?`},
		opQueuePut: {`INSERT INTO mqtt_queue(client_id, seq, qos, retain, sub_ids, data, payload, expires_at)
		SELECT ?1::text, ?2::bigint, ?3::integer, ?4::integer, ?5::text, ?6::bytea, ?7::bytea, ?8::bigint WHERE ` + notOthers + `
		ON CONFLICT(client_id, seq) DO UPDATE SET qos = excluded.qos, retain = excluded.retain,
		sub_ids = excluded.sub_ids, data = excluded.data, payload = excluded.payload, expires_at = excluded.expires_at`},
		opQueueDelete: {`DELETE FROM mqtt_queue WHERE client_id = ? AND seq = ?`},
		opSysInfo:     {`INSERT INTO mqtt_sysinfo(node, data) VALUES (` + n + `, ?) ON CONFLICT(node) DO UPDATE SET data = excluded.data`},
		opReset: {
			`DELETE FROM mqtt_subscriptions WHERE client_id IN (` + mine + `)`,
			`DELETE FROM mqtt_inflight WHERE client_id IN (` + mine + `)`,
			`DELETE FROM mqtt_clients WHERE node = ` + n,
			`DELETE FROM mqtt_retained WHERE node = ` + n,
		},
	}
}

// pgPrepare is prepareTx's cleanup on PostgreSQL: this node's expired
// sessions and expired messages.
func pgPrepare(node string) []string {
	n := quote(node)
	expired := `SELECT id FROM mqtt_clients WHERE node = ` + n + ` AND disconnected_at > 0 AND disconnected_at + expiry < ?1`
	return []string{
		`DELETE FROM mqtt_subscriptions WHERE client_id IN (` + expired + `)`,
		`DELETE FROM mqtt_inflight WHERE client_id IN (` + expired + `)`,
		`DELETE FROM mqtt_queue WHERE client_id IN (` + expired + `)`,
		`DELETE FROM mqtt_clients WHERE id IN (` + expired + `)`,
		`DELETE FROM mqtt_inflight WHERE expires_at > 0 AND expires_at < ?1`,
		`DELETE FROM mqtt_retained WHERE node = ` + n + ` AND expires_at > 0 AND expires_at < ?1`,
		`DELETE FROM mqtt_queue WHERE expires_at > 0 AND expires_at < ?1`,
	}
}
