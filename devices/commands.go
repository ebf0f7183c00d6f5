package devices

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/tether-iot/tether/internal/logevery"
)

// commandsSchema is the "commands" component's migrations (DB.Migrate).
// Times are Unix milliseconds. A released step is never edited.
var commandsSchema = []string{
	`CREATE TABLE commands (
		id         TEXT PRIMARY KEY,
		device_id  TEXT NOT NULL,
		name       TEXT NOT NULL,
		params     TEXT NOT NULL DEFAULT '{}',
		status     TEXT NOT NULL,
		result     TEXT,
		error      TEXT NOT NULL DEFAULT '',
		created_at INTEGER NOT NULL,
		updated_at INTEGER NOT NULL,
		expires_at INTEGER NOT NULL
	);
	CREATE INDEX commands_device ON commands(device_id, created_at, id);
	CREATE INDEX commands_open ON commands(expires_at) WHERE status IN ('pending', 'delivered');`,
	// 2: a deleted device's commands go with it, in the same transaction.
	`CREATE TRIGGER commands_device_deleted AFTER DELETE ON devices
	BEGIN DELETE FROM commands WHERE device_id = OLD.id; END;`,
	// 3: the registry tells the store of a deleted device
	// (DeleteDeviceData) in its delete transaction: no trigger on its
	// table.
	`DROP TRIGGER IF EXISTS commands_device_deleted;`,
}

// Command statuses (SPEC §7). A command only moves forward:
// pending → delivered → succeeded | failed, or expired from pending or
// delivered.
const (
	StatusPending   = "pending"
	StatusDelivered = "delivered"
	StatusSucceeded = "succeeded"
	StatusFailed    = "failed"
	StatusExpired   = "expired"
)

// Command limits and defaults.
const (
	DefaultCommandTimeout = 30 * time.Second
	MaxCommandTimeout     = 24 * time.Hour
	MaxCommandParams      = 64 << 10 // bytes of params JSON
	MaxCommandResult      = 64 << 10 // bytes of result JSON
	MaxCommandError       = 1024     // bytes of an error message
	MaxCommandName        = 64
	// MaxCommandDepth is how deep objects and arrays may nest in params
	// and in a result, as in a twin's patch (MaxTwinDepth): a device's
	// result of 64 KiB nested 10,000 deep, which Go's decoder takes,
	// overflowed the browser's stack when the dashboard showed it, and
	// the device page's command history stayed empty for everyone.
	MaxCommandDepth = MaxTwinDepth
)

// Command is one command sent to a device, as the API shows it (SPEC §6).
type Command struct {
	ID        string          `json:"id"`
	DeviceID  string          `json:"device_id"`
	Name      string          `json:"name"`
	Params    json.RawMessage `json:"params"`
	Status    string          `json:"status"`
	Result    json.RawMessage `json:"result"`
	Error     string          `json:"error"`
	CreatedAt time.Time       `json:"created_at"`
	UpdatedAt time.Time       `json:"updated_at"`
	ExpiresAt time.Time       `json:"expires_at"`
}

// Done reports whether the command has reached its outcome.
func (c Command) Done() bool {
	return c.Status == StatusSucceeded || c.Status == StatusFailed || c.Status == StatusExpired
}

// NewCommand is what sending a command takes.
type NewCommand struct {
	// ID is the command's id; empty means a new random one.
	ID       string
	DeviceID string
	Name     string
	// Params is a JSON object, or empty for {}.
	Params json.RawMessage
	// Timeout is how long the command may take; 0 means
	// DefaultCommandTimeout.
	Timeout time.Duration
}

// CommandsOptions configure a Commands store; zero fields take defaults.
type CommandsOptions struct {
	// SweepInterval is how often expired commands are closed (default 1s).
	SweepInterval time.Duration
	// QueueSize is how many updates from MQTT hooks may wait (default 16384).
	QueueSize int
	// QueueBytes bounds their memory beside their number (default 16 MiB).
	QueueBytes int64
	// MaxPerDevice bounds the commands kept for one device: beyond it,
	// the oldest are deleted, whatever their status, at the next sweep
	// (commands.max_per_device). 0 keeps them all.
	MaxPerDevice int
	Logger       *slog.Logger
}

// Commands stores commands and their outcomes ("commands" component).
//
// Creating from the API is synchronous. What the broker sees on the MQTT
// goroutines (a command published by an operator, a delivery, a response)
// is queued with the Record* methods, which never block, and written in
// order by one writer goroutine. Close stops the writer after draining.
type Commands struct {
	db  *DB
	log *slog.Logger
	o   CommandsOptions

	queue  chan commandOp
	budget byteBudget // bytes queued (queue.go)
	stop   chan struct{}
	wg     sync.WaitGroup
	once   sync.Once

	// mu guards the fields below.
	mu sync.Mutex
	// open maps each command not yet done to its device id, so that the
	// broker can tell a command's packets from others without SQLite.
	open map[string]string
	// changed maps a command id to a channel closed at its next change.
	changed map[string]chan struct{}
	// grown holds the devices with commands recorded since the last
	// sweep, whose oldest it deletes past MaxPerDevice (prune).
	grown map[string]struct{}

	m *commandMetrics
	// logged throttles the writer's failures: once a minute per device.
	logged *logevery.Keys

	// notes carries new and changed commands to and from the other
	// nodes on PostgreSQL (commands_shared.go); nil on SQLite.
	notes *notes
}

// commandOp is one queued change.
type commandOp struct {
	kind   byte // 'c' create, 'd' delivered, 'r' response
	cmd    Command
	id     string
	device string // 'd', 'r': the device that received or answered it
	ok     bool
	result []byte
	errMsg string
	at     time.Time
}

// OpenCommands migrates the "commands" component, loads the open
// commands and starts the writer and the expiry sweeper.
func OpenCommands(ctx context.Context, db *DB, o *CommandsOptions) (*Commands, error) {
	var opts CommandsOptions
	if o != nil {
		opts = *o
	}
	if opts.SweepInterval <= 0 {
		opts.SweepInterval = time.Second
	}
	if opts.QueueSize <= 0 {
		opts.QueueSize = 16384
	}
	if opts.QueueBytes <= 0 {
		opts.QueueBytes = 16 << 20
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if err := db.Migrate(ctx, "commands", Schema{SQLite: commandsSchema, Postgres: commandsSchemaPostgres}); err != nil {
		return nil, err
	}
	c := &Commands{
		db: db, log: opts.Logger.With("component", "commands"), o: opts,
		queue:   make(chan commandOp, opts.QueueSize),
		budget:  byteBudget{max: opts.QueueBytes},
		stop:    make(chan struct{}),
		open:    map[string]string{},
		changed: map[string]chan struct{}{},
		logged:  logevery.New(time.Minute),
	}
	c.m = newCommandMetrics(c)
	if err := c.loadOpen(ctx); err != nil {
		return nil, err
	}
	c.startSharing() // before the writer, which shares its changes
	c.wg.Add(1)
	go c.run()
	return c, nil
}

// Close stops the sweeper and the writer after writing what is queued.
// Idempotent; it does not close the DB.
func (c *Commands) Close() error {
	c.once.Do(func() { close(c.stop) })
	c.wg.Wait()
	c.notes.stop()
	return nil
}

// NewCommandID returns a new random command id.
func NewCommandID() string {
	b := make([]byte, 15)
	_, _ = rand.Read(b)
	return "cmd-" + strings.ToLower(base64.RawURLEncoding.EncodeToString(b)[:20])
}

// Check validates nc and fills in its defaults: the id, {} for empty params,
// the timeout.
func (nc *NewCommand) Check() error {
	if nc.ID == "" {
		nc.ID = NewCommandID()
	} else if !ValidID(nc.ID) || len(nc.ID) > 64 {
		return invalid("id", "must be 1 to 64 of A-Z a-z 0-9 . _ -")
	}
	if !ValidID(nc.DeviceID) {
		return invalid("device_id", "not a device id")
	}
	if !ValidID(nc.Name) || len(nc.Name) > MaxCommandName {
		return invalid("name", "must be 1 to %d of A-Z a-z 0-9 . _ -", MaxCommandName)
	}
	p := strings.TrimSpace(string(nc.Params))
	if p == "" || p == "null" {
		nc.Params = json.RawMessage("{}")
	} else {
		if len(p) > MaxCommandParams {
			return invalid("params", "larger than %d bytes", MaxCommandParams)
		}
		if jsonDeeperThan([]byte(p), MaxCommandDepth) {
			return invalid("params", "objects and arrays nested deeper than %d levels", MaxCommandDepth)
		}
		var m map[string]json.RawMessage
		if p[0] != '{' || json.Unmarshal([]byte(p), &m) != nil {
			return invalid("params", "must be a JSON object")
		}
		if !utf8.ValidString(p) { // the decoder takes it; PostgreSQL does not
			return invalid("params", "not valid UTF-8")
		}
		// As for a twin's patch (CheckTwinPatch): a number no double
		// holds (1e400) is refused, since a device decoding the command
		// as JSON would fail on it.
		var vals map[string]any
		if err := json.Unmarshal([]byte(p), &vals); err != nil {
			return invalid("params", "a number beyond the range of a double (±1.8e308)")
		}
		nc.Params = json.RawMessage(p)
	}
	switch {
	case nc.Timeout == 0:
		nc.Timeout = DefaultCommandTimeout
	case nc.Timeout < time.Second || nc.Timeout > MaxCommandTimeout:
		return invalid("timeout", "must be between 1 and %d seconds", int(MaxCommandTimeout/time.Second))
	}
	return nil
}

func (nc NewCommand) command(now time.Time) Command {
	return Command{
		ID: nc.ID, DeviceID: nc.DeviceID, Name: nc.Name, Params: nc.Params,
		Status: StatusPending, CreatedAt: now, UpdatedAt: now, ExpiresAt: now.Add(nc.Timeout),
	}
}

// Create stores a new pending command (from the API) and returns it. An id
// already taken is ErrConflict.
func (c *Commands) Create(ctx context.Context, nc NewCommand) (Command, error) {
	if err := nc.Check(); err != nil {
		return Command{}, err
	}
	cmd := nc.command(time.Now().UTC())
	res, err := c.db.W.ExecContext(ctx, insertCommand, cmdArgs(cmd)...)
	if err != nil {
		return Command{}, fmt.Errorf("create command: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return Command{}, fmt.Errorf("create command %s: %w", cmd.ID, ErrConflict)
	}
	c.mu.Lock()
	c.open[cmd.ID] = cmd.DeviceID
	c.mu.Unlock()
	c.grew(cmd.DeviceID)
	c.share([]change{{ID: cmd.ID, Device: cmd.DeviceID}})
	c.m.created[0].Inc()
	return cmd, nil
}

const insertCommand = `INSERT INTO commands(id, device_id, name, params, status, created_at, updated_at, expires_at)
	VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO NOTHING`

func cmdArgs(cmd Command) []any {
	return []any{cmd.ID, cmd.DeviceID, cmd.Name, string(cmd.Params), cmd.Status,
		cmd.CreatedAt.UnixMilli(), cmd.UpdatedAt.UnixMilli(), cmd.ExpiresAt.UnixMilli()}
}

// RecordSent queues a command that an operator published over MQTT. nc
// must have passed Check. An id that is another open command's (or this
// one's, sent again) is replaced with a new one, in nc: a command's
// answer closes that command and no other, and each command sent is
// recorded. It never blocks; it returns false (and counts) when the queue
// is full.
func (c *Commands) RecordSent(nc *NewCommand) bool {
	c.mu.Lock()
	for {
		if _, dup := c.open[nc.ID]; !dup {
			break
		}
		nc.ID = NewCommandID()
	}
	c.open[nc.ID] = nc.DeviceID
	c.mu.Unlock()
	if !c.enqueue(commandOp{kind: 'c', cmd: nc.command(time.Now().UTC())}) {
		c.mu.Lock()
		delete(c.open, nc.ID)
		c.mu.Unlock()
		return false
	}
	c.m.created[1].Inc()
	return true
}

// RecordDelivered queues "device has received command id". Only a
// pending command addressed to device is marked delivered, so a caller
// may record a command its store does not know to be open yet (one
// created through another node: see commands_shared.go).
func (c *Commands) RecordDelivered(id, device string) {
	c.enqueue(commandOp{kind: 'd', id: id, device: device, at: time.Now().UTC()})
}

// RecordResponse queues device's answer to command id: ok with result,
// or an error message. A response to a command that is done already or
// was never sent to device is counted (late, unknown) and otherwise
// ignored: the caller need not know the command open (in a cluster, one
// created through another node may not be known here yet). What
// is stored is text both databases take: a result that is not valid
// UTF-8, or is nested deeper than MaxCommandDepth, is dropped (the command
// fails, saying so); the error message has
// U+0000 and invalid bytes replaced, and is cut at a character's edge.
func (c *Commands) RecordResponse(id, device string, ok bool, result []byte, errMsg string) {
	switch {
	case len(result) > MaxCommandResult:
		result = nil
		if ok {
			ok, errMsg = false, "result too large"
		}
	case !utf8.Valid(result):
		result, ok, errMsg = nil, false, "result is not valid UTF-8"
	case jsonDeeperThan(result, MaxCommandDepth):
		result = nil
		if ok {
			ok, errMsg = false, fmt.Sprintf("result nested deeper than %d levels", MaxCommandDepth)
		}
	}
	errMsg = strings.ReplaceAll(strings.ToValidUTF8(errMsg, "\uFFFD"), "\x00", "\uFFFD")
	if len(errMsg) > MaxCommandError {
		cut := MaxCommandError
		for cut > 0 && !utf8.RuneStart(errMsg[cut]) {
			cut--
		}
		errMsg = errMsg[:cut]
	}
	c.enqueue(commandOp{kind: 'r', id: id, device: device, ok: ok, result: result, errMsg: errMsg, at: time.Now().UTC()})
}

func (c *Commands) enqueue(op commandOp) bool {
	select {
	case <-c.stop:
		c.m.dropped.Inc()
		return false
	default:
	}
	if !c.budget.take(op.cost()) {
		c.m.dropped.Inc()
		return false
	}
	select {
	case c.queue <- op:
		return true
	default:
		c.budget.give(op.cost())
		c.m.dropped.Inc()
		return false
	}
}

// cost is the bytes op holds, for the queue's byte bound.
func (op *commandOp) cost() int64 {
	return int64(len(op.id)+len(op.result)+len(op.errMsg)+len(op.cmd.ID)+len(op.cmd.DeviceID)+
		len(op.cmd.Name)+len(op.cmd.Params)) + entryOverhead
}

// OpenFor returns the device id of command id while it is open (not done).
func (c *Commands) OpenFor(id string) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	dev, ok := c.open[id]
	return dev, ok
}

// Expire closes command id as expired if it is still open, and returns it.
func (c *Commands) Expire(ctx context.Context, id string) (Command, error) {
	res, err := c.db.W.ExecContext(ctx, `UPDATE commands SET status = 'expired', updated_at = ?
		WHERE id = ? AND status IN ('pending', 'delivered')`, time.Now().UnixMilli(), id)
	if err != nil {
		return Command{}, fmt.Errorf("expire command %s: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n > 0 {
		c.m.expired.Inc()
		c.notify(id, true)
		c.share([]change{{ID: id, Done: true}})
	}
	return c.Get(ctx, id)
}

// DeleteDeviceData deletes a deleted device's commands in tx, the
// registry's delete transaction (DeviceData).
func (c *Commands) DeleteDeviceData(ctx context.Context, tx *sql.Tx, id string) error {
	if _, err := tx.ExecContext(ctx, `DELETE FROM commands WHERE device_id = ?`, id); err != nil {
		return fmt.Errorf("commands: delete those of %s: %w", id, err)
	}
	return nil
}

// DeviceDeleted implements DeviceData: a command still open in memory
// expires as usual.
func (c *Commands) DeviceDeleted(string) {}
