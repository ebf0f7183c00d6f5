package devices

// registrySchema is the "registry" component's migrations (DB.Migrate):
// devices, users, API tokens, the session signing key and revoked
// sessions. A released step is never edited; append a new one.
//
// Times are TEXT in RFC 3339 (UTC, nanoseconds). The registry writes
// devices.last_values (a JSON object, merged with json_patch) and
// devices.last_seen when the telemetry writer hands them over
// (UpdateLastValues).
var registrySchema = []string{
	// 1: the first schema.
	`CREATE TABLE devices (
		id               TEXT PRIMARY KEY,
		name             TEXT NOT NULL,
		type             TEXT NOT NULL DEFAULT '',
		labels           TEXT NOT NULL DEFAULT '{}',
		enabled          INTEGER NOT NULL DEFAULT 1,
		secret_hash      BLOB NOT NULL,
		online           INTEGER NOT NULL DEFAULT 0,
		last_seen        TEXT,
		transport        TEXT NOT NULL DEFAULT '',
		remote_addr      TEXT NOT NULL DEFAULT '',
		protocol_version INTEGER NOT NULL DEFAULT 0,
		last_values      TEXT NOT NULL DEFAULT '{}',
		created_at       TEXT NOT NULL,
		updated_at       TEXT NOT NULL
	);
	CREATE INDEX devices_type ON devices(type, id);
	CREATE INDEX devices_online ON devices(online, id);
	CREATE TABLE users (
		username      TEXT PRIMARY KEY,
		password_hash TEXT NOT NULL,
		role          TEXT NOT NULL,
		created_at    TEXT NOT NULL
	);
	CREATE TABLE api_tokens (
		id         TEXT PRIMARY KEY,
		digest     BLOB NOT NULL UNIQUE,
		name       TEXT NOT NULL,
		username   TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
		created_at TEXT NOT NULL,
		expires_at TEXT
	);
	CREATE TABLE registry_keys (
		name  TEXT PRIMARY KEY,
		value BLOB NOT NULL
	);
	CREATE TABLE revoked_sessions (
		jti        TEXT PRIMARY KEY,
		expires_at TEXT NOT NULL
	);`,
	// 2: device topic grants, a JSON array of {"filter","access"}.
	`ALTER TABLE devices ADD COLUMN topics TEXT NOT NULL DEFAULT '[]';`,
}
