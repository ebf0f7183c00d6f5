package devices

import (
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/tether-iot/tether/internal/addrkey"
)

// auditSchema is the "audit" component's migrations (DB.Migrate): the
// audit log, owned by this file alone.
var auditSchema = []string{
	// 1: the first schema. ts is Unix milliseconds.
	`CREATE TABLE audit_log (
		id     INTEGER PRIMARY KEY AUTOINCREMENT,
		ts     INTEGER NOT NULL,
		action TEXT NOT NULL,
		actor  TEXT NOT NULL DEFAULT '',
		via    TEXT NOT NULL DEFAULT '',
		target TEXT NOT NULL DEFAULT '',
		remote TEXT NOT NULL DEFAULT '',
		detail TEXT NOT NULL DEFAULT ''
	);
	CREATE INDEX audit_log_ts ON audit_log(ts);`,
}

// Audit actions: what an AuditEntry records.
const (
	AuditLogin           = "login"
	AuditLoginRefused    = "login_refused"
	AuditLogout          = "logout"
	AuditDeviceCreated   = "device_created"
	AuditDeviceUpdated   = "device_updated"
	AuditDeviceDeleted   = "device_deleted"
	AuditSecretRotated   = "secret_rotated"
	AuditDeviceExported  = "device_exported"
	AuditUserCreated     = "user_created"
	AuditUserDeleted     = "user_deleted"
	AuditRoleChanged     = "role_changed"
	AuditPasswordChanged = "password_changed"
	AuditTokenCreated    = "token_created"
	AuditTokenRevoked    = "token_revoked"
	AuditBanned          = "banned"
	AuditBanLifted       = "ban_lifted"
	// AuditSessionDeleted: an admin ended an MQTT session (DELETE
	// /sessions/{clientId}); the target is its client id.
	AuditSessionDeleted = "session_deleted"
	// AuditRulesReloaded: SIGHUP applied (or refused) auth.rules and
	// telemetry.topics.
	AuditRulesReloaded = "rules_reloaded"
)

// AuditEntry is one thing someone did or tried: who (Actor, authenticated
// Via what), when, from where (Remote, the client address), to what
// (Target: a device id, user name or token id). Detail is a short note
// ("role viewer -> admin", "bad_credentials"). No entry ever holds a
// password, secret or token.
type AuditEntry struct {
	ID     int64     `json:"id"`
	Time   time.Time `json:"time"`
	Action string    `json:"action"`
	Actor  string    `json:"actor"`
	Via    string    `json:"via"`
	Target string    `json:"target"`
	Remote string    `json:"remote"`
	Detail string    `json:"detail"`
}

// AuditOptions configure the audit log. Zero values mean the defaults.
type AuditOptions struct {
	// Retention is how long entries are kept (audit.retention; default
	// 90 days). Older ones are pruned every PruneInterval (default 1h).
	Retention, PruneInterval time.Duration
	// QueueSize bounds the entries Note holds before they are written
	// (default 4096); beyond it they are dropped and counted.
	QueueSize int
	// Logger receives write errors; nil means slog.Default().
	Logger *slog.Logger
}

// Audit is the audit log: Add writes an entry at once (for changes an
// HTTP request makes), Note queues one for a background writer (for
// refusals on the MQTT path, where nobody may wait for SQLite). A nil
// *Audit records nothing. Close flushes the queue.
type Audit struct {
	db   *DB
	log  *slog.Logger
	opts AuditOptions

	queue   chan AuditEntry
	dropped atomic.Int64

	// mu guards closed and refused; queue is closed under it.
	mu      sync.Mutex
	closed  bool
	refused map[string]*refusedWindow // by address (auditRefusedOther: the rest)
	// begun is refused's minutes in the order they began, from
	// begun[head]; an entry whose minute refused no longer holds is
	// skipped (refusedAged).
	begun []refusedBegun
	head  int
	stop  chan struct{}
	wg    sync.WaitGroup
}

// Refused logins are written at most auditRefusedPerMinute a minute per
// address: anyone who can reach the HTTP port could otherwise write an
// entry with every request (a throttled or banned login is answered at
// once), 3,500 a second from one client, kept for audit.retention (90
// days): gigabytes a day, and the entries that matter buried. Beyond the
// bound an address's refusals in its minute are counted and written as
// one entry when the minute is over ("N more refused logins ..."; at
// Close for the minute under way). At most auditRefusedAddrs addresses
// are followed at once; beyond, the others share one allowance, under
// the address auditRefusedOther.
const (
	auditRefusedPerMinute = 20
	auditRefusedAddrs     = 10_000
	auditRefusedOther     = "*"
)

// refusedWindow is an address's minute of refused logins: since when,
// how many were written, how many more were only counted, and the last
// one's transport.
type refusedWindow struct {
	since       time.Time
	noted, more int
	via         string
}

// refusedBegun is a minute of refused logins as it began: its address and
// window.
type refusedBegun struct {
	key string
	w   *refusedWindow
}

// maxAuditField bounds each text field of an entry.
const maxAuditField = 200

// OpenAudit migrates the audit component on db and starts its writer and
// pruner.
func OpenAudit(ctx context.Context, db *DB, o *AuditOptions) (*Audit, error) {
	a := &Audit{db: db, stop: make(chan struct{}), refused: map[string]*refusedWindow{}}
	if o != nil {
		a.opts = *o
	}
	if a.opts.Retention <= 0 {
		a.opts.Retention = 90 * 24 * time.Hour
	}
	if a.opts.PruneInterval <= 0 {
		a.opts.PruneInterval = time.Hour
	}
	if a.opts.QueueSize <= 0 {
		a.opts.QueueSize = 4096
	}
	a.log = a.opts.Logger
	if a.log == nil {
		a.log = slog.Default()
	}
	a.log = a.log.With("component", "audit")
	if err := db.Migrate(ctx, "audit", Schema{SQLite: auditSchema, Postgres: auditSchemaPostgres}); err != nil {
		return nil, fmt.Errorf("open audit: %w", err)
	}
	if _, err := a.PruneBefore(ctx, time.Now().Add(-a.opts.Retention)); err != nil {
		return nil, fmt.Errorf("open audit: %w", err)
	}
	a.queue = make(chan AuditEntry, a.opts.QueueSize)
	a.wg.Add(2)
	go a.write()
	go a.prune()
	return a, nil
}

// Close writes what Note queued and stops the writer and the pruner.
// Idempotent.
func (a *Audit) Close() error {
	if a == nil {
		return nil
	}
	a.mu.Lock()
	if !a.closed {
		a.summarizeRefused(time.Time{}) // the minutes under way too
		a.closed = true
		close(a.queue)
		close(a.stop)
	}
	a.mu.Unlock()
	a.wg.Wait()
	return nil
}

// Dropped is how many noted entries were dropped because the queue was
// full.
func (a *Audit) Dropped() int64 {
	if a == nil {
		return 0
	}
	return a.dropped.Load()
}

// Add writes e now (its Time defaults to now).
func (a *Audit) Add(ctx context.Context, e AuditEntry) error {
	if a == nil {
		return nil
	}
	e = clean(e)
	if _, err := a.db.W.ExecContext(ctx, `INSERT INTO audit_log (ts, action, actor, via, target, remote, detail)
		VALUES (?, ?, ?, ?, ?, ?, ?)`, e.Time.UnixMilli(), e.Action, e.Actor, e.Via, e.Target, e.Remote, e.Detail); err != nil {
		return fmt.Errorf("audit %s: %w", e.Action, err)
	}
	return nil
}

// Note queues e for the writer without waiting; a full queue drops it.
func (a *Audit) Note(e AuditEntry) {
	if a == nil {
		return
	}
	e = clean(e)
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed || e.Action == AuditLoginRefused && !a.admitRefused(e) {
		return
	}
	a.enqueue(e)
}

// enqueue queues e for the writer, or drops and counts it when the queue
// is full; mu must be held.
func (a *Audit) enqueue(e AuditEntry) {
	select {
	case a.queue <- e:
	default:
		a.dropped.Add(1)
	}
}

// admitRefused reports whether the refused login e is to be written, or
// only counted in its address's minute; mu must be held.
func (a *Audit) admitRefused(e AuditEntry) bool {
	key := addrkey.Of(e.Remote) // an IPv6 client's /64 is one address
	w := a.refused[key]
	if w == nil && len(a.refused) >= auditRefusedAddrs {
		a.refusedAged(e.Time)
		if len(a.refused) >= auditRefusedAddrs {
			key = auditRefusedOther
			w = a.refused[key]
		}
	}
	if w != nil && e.Time.Sub(w.since) >= time.Minute {
		a.summarize(key, w)
		w = nil
	}
	if w == nil {
		w = &refusedWindow{since: e.Time}
		a.refused[key] = w
		a.begin(key, w)
	}
	w.via = e.Via
	if w.noted < auditRefusedPerMinute {
		w.noted++
		return true
	}
	w.more++
	return false
}

// summarizeRefused writes the count of each address's minute that ended
// by now (every minute when now is zero) and forgets those minutes; mu
// must be held.
func (a *Audit) summarizeRefused(now time.Time) {
	for key, w := range a.refused {
		if now.IsZero() || now.Sub(w.since) >= time.Minute {
			a.summarize(key, w)
		}
	}
}

// refusedAged ends the minutes that ended by now, oldest first, as
// summarizeRefused does, but reading only those and the ones already
// ended otherwise: a new address with every address followed costs O(1)
// amortised, where a walk over the 10,000 cost each one 10,000 steps. The
// minutes are in the order they began, which is the order of their
// times but for stamps taken a moment apart by concurrent callers: such
// a minute ends with the first that began before it (the minute's sweep
// in prune ends every one in time). mu must be held.
func (a *Audit) refusedAged(now time.Time) {
	for ; a.head < len(a.begun); a.head++ {
		b := a.begun[a.head]
		if a.refused[b.key] != b.w {
			continue // ended already
		}
		if now.Sub(b.w.since) < time.Minute {
			break
		}
		a.summarize(b.key, b.w)
	}
}

// begin appends the minute w of address key to begun, first dropping the
// ended ones when they make up most of it; mu must be held.
func (a *Audit) begin(key string, w *refusedWindow) {
	if n := len(a.begun) - a.head; n >= 64 && n > 2*len(a.refused) || a.head > len(a.begun)/2 {
		live := a.begun[:0]
		for _, b := range a.begun[a.head:] {
			if a.refused[b.key] == b.w {
				live = append(live, b)
			}
		}
		clear(a.begun[len(live):])
		a.begun, a.head = live, 0
	}
	a.begun = append(a.begun, refusedBegun{key, w})
}

// summarize ends the minute w of address key: one entry for the refused
// logins it only counted, if any; mu must be held.
func (a *Audit) summarize(key string, w *refusedWindow) {
	delete(a.refused, key)
	if w.more == 0 {
		return
	}
	remote, from := key, "this address"
	if key == auditRefusedOther {
		remote, from = "", "addresses not followed one by one"
	}
	a.enqueue(AuditEntry{Time: w.since.Add(time.Minute).UTC(), Action: AuditLoginRefused, Via: w.via, Remote: remote,
		Detail: fmt.Sprintf("%d more refused logins from %s in the minute from %s (at most %d a minute are recorded one by one)",
			w.more, from, w.since.Format(time.RFC3339), auditRefusedPerMinute)})
}

// clean stamps e and bounds its fields to printable text.
func clean(e AuditEntry) AuditEntry {
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	e.Time = e.Time.UTC()
	for _, f := range []*string{&e.Action, &e.Actor, &e.Via, &e.Target, &e.Remote, &e.Detail} {
		*f = printable(*f)
	}
	return e
}

// printable keeps s's printable runes, up to maxAuditField bytes.
func printable(s string) string {
	if len(s) <= maxAuditField && utf8.ValidString(s) && strings.IndexFunc(s, unicode.IsControl) < 0 {
		return s
	}
	var b strings.Builder
	for _, r := range strings.ToValidUTF8(s, "?") {
		if unicode.IsControl(r) {
			r = '?'
		}
		if b.Len()+utf8.RuneLen(r) > maxAuditField {
			break
		}
		b.WriteRune(r)
	}
	return b.String()
}

// write stores noted entries, each burst in one transaction.
func (a *Audit) write() {
	defer a.wg.Done()
	for e := range a.queue {
		batch := []AuditEntry{e}
	more:
		for len(batch) < 256 {
			select {
			case e, ok := <-a.queue:
				if !ok {
					break more
				}
				batch = append(batch, e)
			default:
				break more
			}
		}
		if err := a.insert(batch); err != nil {
			a.log.Error("audit: write", "entries", len(batch), "error", err)
		}
	}
}

func (a *Audit) insert(batch []AuditEntry) error {
	ctx := context.Background()
	tx, err := a.db.W.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	for _, e := range batch {
		if _, err := tx.ExecContext(ctx, `INSERT INTO audit_log (ts, action, actor, via, target, remote, detail)
			VALUES (?, ?, ?, ?, ?, ?, ?)`, e.Time.UnixMilli(), e.Action, e.Actor, e.Via, e.Target, e.Remote, e.Detail); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// prune deletes entries older than the retention every PruneInterval,
// and writes the counts of refused logins' minutes once they are over.
func (a *Audit) prune() {
	defer a.wg.Done()
	tick := time.NewTicker(a.opts.PruneInterval)
	defer tick.Stop()
	minute := time.NewTicker(time.Minute)
	defer minute.Stop()
	for {
		select {
		case <-a.stop:
			return
		case now := <-minute.C:
			a.mu.Lock()
			if !a.closed {
				a.summarizeRefused(now) // the minutes that ended with no refusal after them
			}
			a.mu.Unlock()
		case <-tick.C:
			n, err := a.PruneBefore(context.Background(), time.Now().Add(-a.opts.Retention))
			if err != nil {
				a.log.Error("audit: prune", "error", err)
			}
			if n > 0 {
				a.log.Debug("audit: pruned", "entries", n)
			}
		}
	}
}

// PruneBefore deletes the entries older than cutoff and says how many.
func (a *Audit) PruneBefore(ctx context.Context, cutoff time.Time) (int64, error) {
	res, err := a.db.W.ExecContext(ctx, `DELETE FROM audit_log WHERE ts < ?`, cutoff.UnixMilli())
	if err != nil {
		return 0, fmt.Errorf("audit prune: %w", err)
	}
	n, _ := res.RowsAffected()
	return n, nil
}

// AuditQuery selects entries: newest first, Limit per page (0 means
// 100, at most MaxPage), after Cursor (the previous page's next cursor).
// Action and Actor, when set, must match exactly; Subject, when set, must
// be the entry's actor or its target (everything about one device or user).
type AuditQuery struct {
	Limit         int
	Cursor        string
	Action, Actor string
	Subject       string
}

// List returns one page of entries, newest first, and the next cursor
// ("" on the last page).
func (a *Audit) List(ctx context.Context, q AuditQuery) ([]AuditEntry, string, error) {
	limit := q.Limit
	switch {
	case limit == 0:
		limit = 100
	case limit < 0 || limit > MaxPage:
		return nil, "", fmt.Errorf("list audit: %w", invalid("limit", "must be between 1 and %d", MaxPage))
	}
	before := int64(-1)
	if q.Cursor != "" {
		b, err := base64.RawURLEncoding.DecodeString(q.Cursor)
		n, perr := strconv.ParseInt(string(b), 10, 64)
		if err != nil || perr != nil || n <= 0 {
			return nil, "", fmt.Errorf("list audit: %w", invalid("cursor", "not a cursor this server issued"))
		}
		before = n
	}
	rows, err := a.db.R.QueryContext(ctx, `SELECT id, ts, action, actor, via, target, remote, detail FROM audit_log
		WHERE (? < 0 OR id < ?) AND (? = '' OR action = ?) AND (? = '' OR actor = ?)
		  AND (? = '' OR actor = ? OR target = ?)
		ORDER BY id DESC LIMIT ?`, before, before, q.Action, q.Action, q.Actor, q.Actor, q.Subject, q.Subject, q.Subject, limit+1)
	if err != nil {
		return nil, "", fmt.Errorf("list audit: %w", err)
	}
	defer rows.Close()
	out := []AuditEntry{}
	for rows.Next() {
		var e AuditEntry
		var ts int64
		if err := rows.Scan(&e.ID, &ts, &e.Action, &e.Actor, &e.Via, &e.Target, &e.Remote, &e.Detail); err != nil {
			return nil, "", fmt.Errorf("list audit: %w", err)
		}
		e.Time = time.UnixMilli(ts).UTC()
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, "", fmt.Errorf("list audit: %w", err)
	}
	next := ""
	if len(out) > limit {
		out = out[:limit]
		next = base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(out[limit-1].ID, 10)))
	}
	return out, next, nil
}

// SetAudit makes the registry report refused logins (LoginRefused) to a.
func (r *Registry) SetAudit(a *Audit) { r.audit.Store(a) }

// LoginRefused notes a refused login of name from remote over transport
// ("mqtt/tcp", ...) in the audit log, if one is set, without waiting for
// it to be written. The broker calls it; reason is its short cause
// ("bad_credentials").
func (r *Registry) LoginRefused(name, remote, transport, reason string) {
	if a := r.audit.Load(); a != nil {
		a.Note(AuditEntry{Action: AuditLoginRefused, Actor: name, Via: transport, Remote: remote, Detail: reason})
	}
}
