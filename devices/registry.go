package devices

import (
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tether-iot/tether/devices/database"
)

// Registry is the device registry and identity store: devices with their
// secrets, users, API tokens and dashboard sessions, in the "registry"
// component's tables of the DB, with an in-memory cache of every identity
// so that authenticating a device costs one map lookup and one SHA-256, and
// no SQLite query.
//
// All methods are safe for concurrent use. Close stops the presence writer
// after flushing it; it does not close the DB.
type Registry struct {
	db  *DB
	log *slog.Logger

	// hashCost is the bcrypt cost of new password hashes; dummy is a hash
	// of that cost for unknown names, made once.
	hashCost  int
	dummyOnce sync.Once
	dummy     []byte
	// hashSem bounds concurrent bcrypt comparisons.
	hashSem chan struct{}

	// writeMu serialises the registry's writes, so that a name checked
	// free in the caches is still free when the transaction commits and
	// the caches change in commit order.
	writeMu sync.Mutex
	// stores are told of the devices deleted (Attach); guarded by writeMu.
	stores []DeviceData
	// tokensMade holds, per user, when the tokens created for them in
	// the last hour were (MaxTokensPerUserPerHour); guarded by writeMu.
	tokensMade map[string][]time.Time

	// mu guards the caches below.
	mu      sync.RWMutex
	devices map[string]deviceCred  // device id →
	users   map[string]userCred    // user name →
	tokens  map[[32]byte]tokenCred // token digest →
	revoked map[string]time.Time   // session jti → its expiry
	key     []byte                 // session signing key

	// revokeMu guards onRevoke.
	revokeMu sync.Mutex
	onRevoke []func(Revocation)
	// onChange are called with a device's id after its type or grants
	// changed (OnDeviceChange); guarded by revokeMu.
	onChange []func(id string)

	// audit receives refused logins (SetAudit); nil records nothing.
	audit atomic.Pointer[Audit]

	// The presence writer. presMu guards closed, pending and
	// pendingOrder; presenceWake (capacity 1) wakes the writer, and Close
	// closes it.
	presMu          sync.Mutex
	closed          bool
	pending         map[string]Presence
	pendingOrder    []string
	presenceWake    chan struct{}
	presenceDone    chan struct{}
	presenceDropped atomic.Int64
	presenceWritten atomic.Int64
	// node is this node's name on a shared database (SetNode); guarded
	// by presMu.
	node string
	// onOnline is told of each device that connects (OnOnline).
	onOnline atomic.Pointer[func(id string)]

	// notes carries changes to and from the other nodes on PostgreSQL
	// (registry_shared.go); nil on SQLite.
	notes *notes
}

// deviceCred is what authenticating a device needs.
type deviceCred struct {
	digest  [32]byte
	enabled bool
	// typ and topics decide the device's access beyond the built-in
	// rules (auth rules by type, grants).
	typ    string
	topics []TopicGrant
}

// userCred is what authenticating a user needs.
type userCred struct {
	hash []byte // bcrypt
	role string
}

// tokenCred is an API token's cached row.
type tokenCred struct {
	id       string
	username string
	expires  time.Time // zero: never
}

// Device is one registered device as the API shows it (SPEC §6).
type Device struct {
	ID     string            `json:"id"`
	Name   string            `json:"name"`
	Type   string            `json:"type"`
	Labels map[string]string `json:"labels"`
	// Topics are the device's grants beyond its built-in topics.
	Topics []TopicGrant `json:"topics"`
	// Enabled false refuses its connections and disconnects it.
	Enabled bool `json:"enabled"`
	// Online, LastSeen, Transport, RemoteAddr and ProtocolVersion are the
	// presence the broker last recorded (connect or disconnect).
	Online          bool       `json:"online"`
	LastSeen        *time.Time `json:"last_seen"`
	Transport       string     `json:"transport"`
	RemoteAddr      string     `json:"remote_addr"`
	ProtocolVersion int        `json:"protocol_version"`
	// LastValues holds the latest value of each telemetry metric.
	LastValues map[string]any `json:"last_values"`
	CreatedAt  time.Time      `json:"created_at"`
	UpdatedAt  time.Time      `json:"updated_at"`
}

// NewDevice is what registering a device takes. An empty ID is generated
// ("dev-" and 16 random lower-case letters and digits); Name defaults to
// the id.
type NewDevice struct {
	ID     string            `json:"id"`
	Name   string            `json:"name"`
	Type   string            `json:"type"`
	Labels map[string]string `json:"labels"`
	Topics []TopicGrant      `json:"topics"`
}

// DeviceSecret is a device with its secret, as registering and rotating
// return it: the only time the secret is shown. Its JSON is the device's
// fields plus a top-level "secret".
type DeviceSecret struct {
	Device
	Secret string `json:"secret"`
}

// DeviceFilter selects devices for ListDevices. Zero values match all.
type DeviceFilter struct {
	// Status is "online", "offline" or "" (both).
	Status string
	// Type matches the type exactly.
	Type string
	// Label is "key=value" (that label has that value) or "key" (the
	// label is set).
	Label string
	// Text matches id or name, case-insensitively, as a substring.
	Text string
	// Limit is the page size: 0 means 100; at most MaxPage.
	Limit int
	// Cursor is the next_cursor of the previous page, or "".
	Cursor string
}

// DevicePatch changes a device; nil fields are left alone. Labels replaces
// the whole label set.
type DevicePatch struct {
	Name    *string            `json:"name"`
	Type    *string            `json:"type"`
	Labels  *map[string]string `json:"labels"`
	Topics  *[]TopicGrant      `json:"topics"`
	Enabled *bool              `json:"enabled"`
}

// Limits on what a device holds.
const (
	// MaxPage is the largest page ListDevices returns.
	MaxPage = 1000
	// MaxBulk is the most devices one CreateDevices call registers.
	MaxBulk = 10000
	// MaxLabels is the most labels a device has.
	MaxLabels = 32
	// MaxLabelKey and MaxLabelValue bound a label's key and value (bytes).
	MaxLabelKey   = 64
	MaxLabelValue = 256
	// MaxName bounds a device's name and type (bytes).
	MaxName = 256
)

// OpenRegistry runs the "registry" component's migrations on db, loads the
// identity cache, marks every device offline (nobody is connected to a
// broker that is starting), and starts the presence writer. log nil means
// slog.Default().
func OpenRegistry(ctx context.Context, db *DB, log *slog.Logger) (*Registry, error) {
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "registry")
	if err := db.Migrate(ctx, "registry", Schema{SQLite: registrySchema, Postgres: registrySchemaPostgres}); err != nil {
		return nil, fmt.Errorf("open registry: %w", err)
	}
	r := &Registry{
		db:           db,
		log:          log,
		hashCost:     bcryptCost,
		hashSem:      make(chan struct{}, runtime.GOMAXPROCS(0)),
		devices:      map[string]deviceCred{},
		users:        map[string]userCred{},
		tokens:       map[[32]byte]tokenCred{},
		revoked:      map[string]time.Time{},
		pending:      map[string]Presence{},
		presenceWake: make(chan struct{}, 1),
		presenceDone: make(chan struct{}),
	}
	if err := r.load(ctx); err != nil {
		return nil, fmt.Errorf("open registry: %w", err)
	}
	r.startSharing()
	go r.writePresence()
	return r, nil
}

// load fills the caches, marks devices offline, prunes expired revocations
// and creates the session signing key on first start.
func (r *Registry) load(ctx context.Context) error {
	// On PostgreSQL only this node's devices (presence.go, SetNode).
	if err := r.markOffline(ctx); err != nil {
		return err
	}
	now := time.Now()
	if _, err := r.db.W.ExecContext(ctx, `DELETE FROM revoked_sessions WHERE expires_at < ?`, fmtTime(now)); err != nil {
		return fmt.Errorf("prune revoked sessions: %w", err)
	}
	if _, err := r.loadCaches(ctx); err != nil {
		return err
	}
	return r.loadKey(ctx)
}

// Close flushes pending presence records and stops the writer. Idempotent.
func (r *Registry) Close() error {
	r.presMu.Lock()
	if !r.closed {
		r.closed = true
		close(r.presenceWake)
	}
	r.presMu.Unlock()
	<-r.presenceDone
	r.notes.stop()
	return nil
}

// Revocation says which connections must be closed because the
// credentials they were made with no longer hold.
type Revocation struct {
	// Name is a device id or user name. With neither SessionID nor TokenID
	// set, every connection of Name goes: the device was disabled, deleted
	// or had its secret rotated; the user was deleted or had their password
	// or role changed.
	Name string
	// SessionID (a logout) or TokenID (a revoked API token) narrows it to
	// the connections made with that session or token.
	SessionID, TokenID string
	// Purge: the identity is gone or disabled (a device deleted or
	// disabled, a user deleted), so its persistent sessions go too, not
	// just its connections (SPEC §5). A rotated secret, a logout or a
	// revoked token end connections only.
	Purge bool
}

// Matches reports whether a connection authenticated as id is revoked.
func (rv Revocation) Matches(id Identity) bool {
	switch {
	case id.Name != rv.Name:
		return false
	case rv.SessionID != "":
		return id.SessionID == rv.SessionID
	case rv.TokenID != "":
		return id.TokenID == rv.TokenID
	}
	return true
}

// OnRevoke registers f to be called after each change that revokes
// credentials is committed: whoever holds a connection that rv matches
// must close it. f must not block.
func (r *Registry) OnRevoke(f func(rv Revocation)) {
	r.revokeMu.Lock()
	r.onRevoke = append(r.onRevoke, f)
	r.revokeMu.Unlock()
}

// revoke tells this node's OnRevoke callbacks, and the other nodes'.
func (r *Registry) revoke(rv Revocation) {
	r.fireRevoke(rv)
	r.share(note{Kind: noteRevoke, Name: rv.Name, SessionID: rv.SessionID, TokenID: rv.TokenID, Purge: rv.Purge})
}

func (r *Registry) fireRevoke(rv Revocation) {
	r.revokeMu.Lock()
	fs := slices.Clone(r.onRevoke)
	r.revokeMu.Unlock()
	for _, f := range fs {
		f(rv)
	}
}

// nameTaken reports whether a device or a user has name. Call with mu held.
func (r *Registry) nameTaken(name string) bool {
	_, d := r.devices[name]
	_, u := r.users[name]
	return d || u
}

// CreateDevice registers one device and returns it with its new secret.
// A taken id (by a device or a user) is ErrConflict; bad input is an
// *InvalidError.
func (r *Registry) CreateDevice(ctx context.Context, nd NewDevice) (Device, string, error) {
	out, err := r.createDevices(ctx, []NewDevice{nd}, false)
	if err != nil {
		return Device{}, "", fmt.Errorf("create device: %w", err)
	}
	return out[0].Device, out[0].Secret, nil
}

// CreateDevices registers all of nds in one transaction, or none: any bad
// input (*InvalidError, Field prefixed "devices[i].") or taken id
// (ErrConflict) registers nothing. At most MaxBulk at once.
func (r *Registry) CreateDevices(ctx context.Context, nds []NewDevice) ([]DeviceSecret, error) {
	if len(nds) > MaxBulk {
		return nil, fmt.Errorf("create devices: %w", invalid("devices", "more than %d at once", MaxBulk))
	}
	out, err := r.createDevices(ctx, nds, true)
	if err != nil {
		return nil, fmt.Errorf("create devices: %w", err)
	}
	return out, nil
}

func (r *Registry) createDevices(ctx context.Context, nds []NewDevice, bulk bool) ([]DeviceSecret, error) {
	field := func(i int, f string) string {
		if bulk {
			return fmt.Sprintf("devices[%d].%s", i, f)
		}
		return f
	}
	r.writeMu.Lock()
	defer r.writeMu.Unlock()

	now := time.Now().UTC()
	out := make([]DeviceSecret, len(nds))
	digests := make([][32]byte, len(nds))
	seen := make(map[string]bool, len(nds))
	for _, nd := range nds {
		r.refreshName(ctx, nd.ID) // PostgreSQL: another node's names
	}
	r.mu.RLock()
	for i, nd := range nds {
		if nd.ID == "" {
			for nd.ID == "" || r.nameTaken(nd.ID) || seen[nd.ID] {
				nd.ID = randomID("dev-", 16)
			}
		}
		err := checkID(field(i, "id"), nd.ID)
		if err == nil {
			err = checkText(field(i, "name"), nd.Name, MaxName)
		}
		if err == nil {
			err = checkText(field(i, "type"), nd.Type, MaxName)
		}
		if err == nil {
			err = checkLabels(field(i, "labels"), nd.Labels)
		}
		if err == nil {
			err = checkGrants(field(i, "topics"), nd.ID, nd.Topics)
		}
		if err == nil && (r.nameTaken(nd.ID) || seen[nd.ID]) {
			err = fmt.Errorf("%w: %q is taken by a device or a user", ErrConflict, nd.ID)
		}
		if err != nil {
			r.mu.RUnlock()
			return nil, err
		}
		seen[nd.ID] = true
		if nd.Name == "" {
			nd.Name = nd.ID
		}
		labels := map[string]string{}
		for k, v := range nd.Labels {
			labels[k] = v
		}
		secret := newSecret()
		digests[i] = digest(secret)
		out[i] = DeviceSecret{Device: Device{
			ID: nd.ID, Name: nd.Name, Type: nd.Type, Labels: labels, Topics: cloneGrants(nd.Topics), Enabled: true,
			LastValues: map[string]any{}, CreatedAt: now, UpdatedAt: now,
		}, Secret: secret}
	}
	r.mu.RUnlock()

	tx, err := r.db.W.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	st, err := tx.PrepareContext(ctx, `INSERT INTO devices
		(id, name, type, labels, topics, enabled, secret_hash, created_at, updated_at)
		VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?)`)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	ts := fmtTime(now)
	for i, d := range out {
		lj, _ := json.Marshal(d.Labels)
		if _, err := st.ExecContext(ctx, d.ID, d.Name, d.Type, string(lj), encodeGrants(d.Topics), digests[i][:], ts, ts); err != nil {
			if isConstraint(err) {
				return nil, fmt.Errorf("%w: %q is taken", ErrConflict, d.ID)
			}
			return nil, err
		}
	}
	if err := tx.Commit(); err != nil {
		return nil, err
	}
	r.mu.Lock()
	for i, d := range out {
		r.devices[d.ID] = deviceCred{digest: digests[i], enabled: true, typ: d.Type, topics: d.Topics}
	}
	r.mu.Unlock()
	r.log.Info("devices registered", "count", len(out))
	return out, nil
}

// isConstraint reports a UNIQUE or PRIMARY KEY violation.
var isConstraint = database.IsConstraint

const deviceColumns = `id, name, type, labels, topics, enabled, online, last_seen, transport,
	remote_addr, protocol_version, last_values, created_at, updated_at`

type scanner interface{ Scan(dest ...any) error }

func scanDevice(s scanner) (Device, error) {
	var d Device
	var labels, topics, values string
	var lastSeen, created, updated any
	if err := s.Scan(&d.ID, &d.Name, &d.Type, &labels, &topics, &d.Enabled, &d.Online, &lastSeen,
		&d.Transport, &d.RemoteAddr, &d.ProtocolVersion, &values, &created, &updated); err != nil {
		return d, err
	}
	d.Labels = map[string]string{}
	_ = json.Unmarshal([]byte(labels), &d.Labels)
	d.Topics = decodeGrants(topics)
	d.LastValues = map[string]any{}
	_ = json.Unmarshal([]byte(values), &d.LastValues)
	if t, ok := parseTime(lastSeen); ok {
		d.LastSeen = &t
	}
	d.CreatedAt, _ = parseTime(created)
	d.UpdatedAt, _ = parseTime(updated)
	return d, nil
}

// Device returns the device id, or ErrNotFound.
func (r *Registry) Device(ctx context.Context, id string) (Device, error) {
	d, err := r.device(ctx, r.db.R, id)
	if err != nil {
		return d, fmt.Errorf("device %q: %w", id, err)
	}
	return d, nil
}

type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

func (r *Registry) device(ctx context.Context, q querier, id string) (Device, error) {
	d, err := scanDevice(q.QueryRowContext(ctx, `SELECT `+deviceColumns+` FROM devices WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return d, ErrNotFound
	}
	return d, err
}

// ListDevices returns one page of the devices matching f, ordered by id,
// and the cursor of the next page ("" on the last page). A malformed
// filter is an *InvalidError.
func (r *Registry) ListDevices(ctx context.Context, f DeviceFilter) ([]Device, string, error) {
	devs, next, err := r.listDevices(ctx, f)
	if err != nil {
		return nil, "", fmt.Errorf("list devices: %w", err)
	}
	return devs, next, nil
}

func (r *Registry) listDevices(ctx context.Context, f DeviceFilter) ([]Device, string, error) {
	limit, after, err := page(f.Limit, f.Cursor)
	if err != nil {
		return nil, "", err
	}
	where := []string{"id > ?"}
	args := []any{after}
	switch f.Status {
	case "":
	case "online":
		where = append(where, "online = 1")
	case "offline":
		where = append(where, "online = 0")
	default:
		return nil, "", invalid("status", "%q is not online or offline", f.Status)
	}
	if f.Type != "" {
		where = append(where, "type = ?")
		args = append(args, f.Type)
	}
	if f.Label != "" {
		k, v, hasValue := strings.Cut(f.Label, "=")
		if k == "" {
			return nil, "", invalid("label", "must be key=value or key")
		}
		if hasValue {
			where = append(where, "EXISTS (SELECT 1 FROM json_each(devices.labels) WHERE key = ? AND value = ?)")
			args = append(args, k, v)
		} else {
			where = append(where, "EXISTS (SELECT 1 FROM json_each(devices.labels) WHERE key = ?)")
			args = append(args, k)
		}
	}
	if f.Text != "" {
		t := strings.ToLower(f.Text)
		where = append(where, "(instr(lower(id), ?) > 0 OR instr(lower(name), ?) > 0)")
		args = append(args, t, t)
	}
	args = append(args, limit+1)
	rows, err := r.db.R.QueryContext(ctx, `SELECT `+deviceColumns+` FROM devices WHERE `+
		strings.Join(where, " AND ")+` ORDER BY id LIMIT ?`, args...)
	if err != nil {
		return nil, "", err
	}
	defer rows.Close()
	devs := []Device{}
	for rows.Next() {
		d, err := scanDevice(rows)
		if err != nil {
			return nil, "", err
		}
		devs = append(devs, d)
	}
	if err := rows.Err(); err != nil {
		return nil, "", err
	}
	next := ""
	if len(devs) > limit {
		devs = devs[:limit]
		next = encodeCursor(devs[limit-1].ID)
	}
	return devs, next, nil
}

// page checks a page size and cursor: the cursor is the last key of the
// previous page, base64url-encoded.
func page(limit int, cursor string) (int, string, error) {
	switch {
	case limit == 0:
		limit = 100
	case limit < 0 || limit > MaxPage:
		return 0, "", invalid("limit", "must be between 1 and %d", MaxPage)
	}
	after := ""
	if cursor != "" {
		b, err := base64.RawURLEncoding.DecodeString(cursor)
		if err != nil || !ValidID(string(b)) {
			return 0, "", invalid("cursor", "not a cursor this server issued")
		}
		after = string(b)
	}
	return limit, after, nil
}

func encodeCursor(key string) string { return base64.RawURLEncoding.EncodeToString([]byte(key)) }

// UpdateDevice applies p and returns the device as it is now. Disabling a
// device disconnects it (OnRevoke).
func (r *Registry) UpdateDevice(ctx context.Context, id string, p DevicePatch) (Device, error) {
	d, ch, err := r.updateDevice(ctx, id, p)
	if err != nil {
		return Device{}, fmt.Errorf("update device %q: %w", id, err)
	}
	if ch.revoked {
		r.revoke(Revocation{Name: id, Purge: true})
	} else if ch.access {
		r.changed(id)
	}
	return d, nil
}

// deviceChange says what an update changed that connections care about.
type deviceChange struct {
	revoked bool // disabled
	access  bool // type or grants
}

func (r *Registry) updateDevice(ctx context.Context, id string, p DevicePatch) (Device, deviceChange, error) {
	var none deviceChange
	if p.Name != nil {
		if err := checkText("name", *p.Name, MaxName); err != nil {
			return Device{}, none, err
		}
	}
	if p.Type != nil {
		if err := checkText("type", *p.Type, MaxName); err != nil {
			return Device{}, none, err
		}
	}
	if p.Labels != nil {
		if err := checkLabels("labels", *p.Labels); err != nil {
			return Device{}, none, err
		}
	}
	if p.Topics != nil {
		if err := checkGrants("topics", id, *p.Topics); err != nil {
			return Device{}, none, err
		}
	}
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	tx, err := r.db.W.BeginTx(ctx, nil)
	if err != nil {
		return Device{}, none, err
	}
	defer tx.Rollback()
	d, err := r.device(ctx, tx, id)
	if err != nil {
		return d, none, err
	}
	wasEnabled, oldType, oldTopics := d.Enabled, d.Type, encodeGrants(d.Topics)
	if p.Name != nil {
		d.Name = *p.Name
		if d.Name == "" {
			d.Name = d.ID
		}
	}
	if p.Type != nil {
		d.Type = *p.Type
	}
	if p.Labels != nil {
		d.Labels = map[string]string{}
		for k, v := range *p.Labels {
			d.Labels[k] = v
		}
	}
	if p.Topics != nil {
		d.Topics = cloneGrants(*p.Topics)
	}
	if p.Enabled != nil {
		d.Enabled = *p.Enabled
	}
	d.UpdatedAt = time.Now().UTC()
	lj, _ := json.Marshal(d.Labels)
	topics := encodeGrants(d.Topics)
	if _, err := tx.ExecContext(ctx, `UPDATE devices SET name = ?, type = ?, labels = ?, topics = ?, enabled = ?, updated_at = ? WHERE id = ?`,
		d.Name, d.Type, string(lj), topics, d.Enabled, fmtTime(d.UpdatedAt), id); err != nil {
		return d, none, err
	}
	if err := tx.Commit(); err != nil {
		return d, none, err
	}
	r.mu.Lock()
	c := r.devices[id]
	c.enabled, c.typ, c.topics = d.Enabled, d.Type, d.Topics
	r.devices[id] = c
	r.mu.Unlock()
	return d, deviceChange{revoked: wasEnabled && !d.Enabled, access: d.Type != oldType || topics != oldTopics}, nil
}

// DeleteDevice removes the device, or returns ErrNotFound; it is
// disconnected (OnRevoke). Its history, commands and twin in the attached
// stores (Attach) go in the same transaction.
func (r *Registry) DeleteDevice(ctx context.Context, id string) error {
	if err := r.deleteDevice(ctx, id); err != nil {
		return fmt.Errorf("delete device %q: %w", id, err)
	}
	r.revoke(Revocation{Name: id, Purge: true})
	return nil
}

func (r *Registry) deleteDevice(ctx context.Context, id string) error {
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	tx, err := r.db.W.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, `DELETE FROM devices WHERE id = ?`, id)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return ErrNotFound
	}
	// The stores' rows go in the same transaction (DeviceData).
	for _, s := range r.stores {
		if err := s.DeleteDeviceData(ctx, tx, id); err != nil {
			return err
		}
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	r.mu.Lock()
	delete(r.devices, id)
	r.mu.Unlock()
	for _, s := range r.stores {
		s.DeviceDeleted(id)
	}
	r.log.Info("device deleted", "device", id)
	return nil
}

// RotateSecret gives the device a new secret and returns it: the old one
// stops working at once and a connection made with it is closed
// (OnRevoke).
func (r *Registry) RotateSecret(ctx context.Context, id string) (Device, string, error) {
	d, secret, err := r.rotateSecret(ctx, id)
	if err != nil {
		return Device{}, "", fmt.Errorf("rotate secret of %q: %w", id, err)
	}
	r.revoke(Revocation{Name: id})
	return d, secret, nil
}

func (r *Registry) rotateSecret(ctx context.Context, id string) (Device, string, error) {
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	secret := newSecret()
	h := digest(secret)
	now := time.Now().UTC()
	tx, err := r.db.W.BeginTx(ctx, nil)
	if err != nil {
		return Device{}, "", err
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, `UPDATE devices SET secret_hash = ?, updated_at = ? WHERE id = ?`, h[:], fmtTime(now), id)
	if err != nil {
		return Device{}, "", err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return Device{}, "", ErrNotFound
	}
	d, err := r.device(ctx, tx, id)
	if err != nil {
		return d, "", err
	}
	if err := tx.Commit(); err != nil {
		return d, "", err
	}
	r.mu.Lock()
	c := r.devices[id]
	c.digest = h
	r.devices[id] = c
	r.mu.Unlock()
	r.log.Info("device secret rotated", "device", id)
	return d, secret, nil
}
