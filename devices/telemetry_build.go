package devices

import (
	"bytes"
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/tether-iot/tether/devices/database"
)

// openChunk is a device's latest history chunk while it may still grow:
// the writer keeps it decoded, appends each batch's points and writes
// them, so that a device reporting once a second still gets chunks of
// hundreds of points (which is what makes them small) while every flush
// is on disk.
//
// On disk it is two rows: the base (its first based points, rewritten
// when the tail has grown to half its size, when the points added since
// the last write are many (wholeEvery), and when the chunk is complete)
// and the tail (the points after them, rewritten each flush otherwise).
// Each row's encoding is kept (chunkAppender) and the points added since
// its last write are encoded onto it, so a point is encoded at most once
// into the tail and once into the base, however often either is
// rewritten.
type openChunk struct {
	device string
	id     int64 // base row id; 0 until inserted
	tailID int64 // tail row id; 0 if none
	based  int   // points in the base row
	wrote  int   // points at the last write
	rebase bool  // a point sorts into the base: rewrite it
	data   chunkData
	idx    map[string]int // column of a metric name
	lo, hi int64          // earliest and latest timestamps
	// maxPoints is how many points the chunk may take: chunkPoints until
	// it is first encoded, then what its encoding so far says will fill
	// chunkTargetBytes.
	maxPoints int
	// hours caches, per column, the rollup aggregate of the hour
	// being added to.
	hours  []hourSlot
	sorted bool      // points in time order
	dirty  bool      // changed since written
	used   time.Time // last batch that added to it
	// whole and tail keep the encodings of the chunk and of its points
	// after based as last written, so that a write encodes only the
	// points added since (nil: none yet, or the points were sorted).
	whole, tail *chunkAppender
}

// wholeEvery: a write that adds at least 1/wholeEvery of a chunk's points
// rewrites the whole chunk into its base row rather than the tail. At
// the rates where a device's chunk fills in a few writes, a tail costs a
// statement and an encoding of its points more (they are encoded again
// into the base when it is rewritten) to save writing again at most
// wholeEvery times the new points' bytes; a device that adds a few
// points a write still gets a tail.
const wholeEvery = 8

// tailWrite reports whether the chunk's next write rewrites its tail
// row alone (else the whole chunk into its base row).
func (c *openChunk) tailWrite() bool {
	n := len(c.data.ts)
	return c.id != 0 && !c.rebase && n-c.based <= c.based/2 && n < c.maxPoints && (n-c.wrote)*wholeEvery < n
}

// fits reports whether a point at ts may join the chunk.
func (c *openChunk) fits(ts int64) bool {
	if len(c.data.ts) >= c.maxPoints {
		return false
	}
	return max(c.hi, ts)-min(c.lo, ts) <= chunkSpan.Milliseconds()
}

// add appends a point whose metrics are obj, a compact JSON object as
// ParseTelemetry writes it, and adds its numbers to r (if not nil).
func (c *openChunk) add(ts int64, obj []byte, r *rollups) {
	n := len(c.data.ts)
	if n == 0 {
		c.lo, c.hi = ts, ts
	}
	if n > 0 && ts < c.data.ts[n-1] {
		c.sorted = false
	}
	if c.based > 0 && ts < c.data.ts[c.based-1] {
		c.rebase = true
	}
	c.lo, c.hi = min(c.lo, ts), max(c.hi, ts)
	c.data.ts = append(c.data.ts, ts)
	for i := range c.data.cols {
		col := &c.data.cols[i]
		col.syms = append(col.syms, symAbsent)
		if col.nums != nil {
			col.nums = append(col.nums, 0)
		}
	}
	// One pass over obj's members, as eachMember reads them. A device
	// usually sends its metrics in the same order: member m is most
	// often column m, whose name, when it needs no escape (plain), is
	// compared with the raw key in place, without finding its end first.
	for i, m := 1, 0; i < len(obj)-1; m++ {
		col := -1
		if m < len(c.data.cols) {
			if cm := &c.data.cols[m]; cm.plain && keyAt(obj, i, cm.name) {
				col, i = m, i+len(cm.name)+3 // past `"name":`
			}
		}
		if col < 0 {
			kEnd := endOfString(obj, i)
			k := obj[i+1 : kEnd-1]
			i = kEnd + 1 // past ':'
			switch {
			case bytes.IndexByte(k, '\\') >= 0:
				col = c.data.colIndex(metricName(k), c.idx)
			default:
				var ok bool
				if col, ok = c.idx[string(k)]; !ok {
					col = c.data.colIndex(string(k), c.idx)
				}
			}
		}
		vStart := i
		if obj[i] == '"' {
			i = endOfString(obj, i)
		} else {
			for i < len(obj)-1 && obj[i] != ',' {
				i++
			}
		}
		c.set(n, col, obj[vStart:i], ts, r)
		i++ // past ','
	}
	c.dirty = true
}

// keyAt reports whether the member at obj[i] has the raw key name (which
// holds no '"' and no '\\': so the raw key is name exactly when it
// follows the quote and a quote follows it).
func keyAt(obj []byte, i int, name string) bool {
	j := i + 1 + len(name)
	return j+1 < len(obj) && obj[i] == '"' && obj[j] == '"' && obj[j+1] == ':' && string(obj[i+1:j]) == name
}

// set sets point n of column i to v, the raw JSON value of a member as
// ParseTelemetry writes it, and adds a number to r (if not nil).
func (c *openChunk) set(n, i int, v []byte, ts int64, r *rollups) {
	col := &c.data.cols[i]
	if v[0] == '"' || v[0] == 't' || v[0] == 'f' || v[0] == 'n' {
		col.setDict(n, v)
		return
	}
	f, err := parseNumber(v)
	if err != nil { // not from ParseTelemetry: keep the text
		col.setDict(n, v)
		return
	}
	if col.nums == nil { // the column's first number
		col.nums = c.data.numsFor(col)
	}
	col.syms[n], col.nums[n] = symNumber, f
	if r != nil {
		for len(c.hours) <= i {
			c.hours = append(c.hours, hourSlot{})
		}
		r.addTo(&c.hours[i], c.device, col.name, ts, f, c.used)
	}
}

// metricName decodes a raw JSON key (without its quotes).
func metricName(k []byte) string {
	if slices.Contains(k, '\\') {
		var s string
		if json.Unmarshal(append(append([]byte{'"'}, k...), '"'), &s) == nil {
			return s
		}
	}
	return string(k)
}

// sort puts the points in time order (stable: equal timestamps keep
// their arrival order), and forgets the encodings kept of them.
func (c *openChunk) sort() {
	if c.sorted {
		return
	}
	c.whole, c.tail = nil, nil
	perm := make([]int, len(c.data.ts))
	for i := range perm {
		perm[i] = i
	}
	slices.SortStableFunc(perm, func(a, b int) int { return cmp.Compare(c.data.ts[a], c.data.ts[b]) })
	ts := make([]int64, len(perm))
	for i, p := range perm {
		ts[i] = c.data.ts[p]
	}
	c.data.ts = ts
	for j := range c.data.cols {
		col := &c.data.cols[j]
		syms := make([]uint32, len(perm))
		for i, p := range perm {
			syms[i] = col.syms[p]
		}
		col.syms = syms
		if col.nums != nil {
			nums := make([]float64, len(perm))
			for i, p := range perm {
				nums[i] = col.nums[p]
			}
			col.nums = nums
		}
	}
	c.sorted = true
}

// chunkBuilder groups points into chunks per device. The writer keeps one
// for its lifetime (each device's open chunk carries over to the next
// batch); the migration uses a fresh one per transaction.
type chunkBuilder struct {
	dialect database.Dialect
	open    map[string]*openChunk
	pending []*openChunk // changed since the last write, in order
	enc     encoder
	buf     []byte
	// spare keeps the arrays of chunks written complete for new ones:
	// a chunk's columns grow to hundreds of points by doubling, which
	// would otherwise allocate about three times their size per chunk.
	spare spareArrays
	done  []*openChunk // written complete in this write, to recycle
	// last is open[last.device], the chunk add last added to, or nil
	// (reset wherever a chunk leaves open).
	last *openChunk
}

// spareArrays are the arrays of chunks written complete, and their
// appenders.
type spareArrays struct {
	ts   [][]int64
	syms [][]uint32
	nums [][]float64
	apps []*chunkAppender
}

// maxSpare is how many arrays of each kind spareArrays keeps.
const maxSpare = 256

// maxSpareAppenders is how many appenders spareArrays keeps: two a
// device, for 512 devices rolling over to their next chunks in one
// write (an appender holds about its chunk's encoded size, at most
// chunkMaxBytes).
const maxSpareAppenders = 1024

// keepAppender takes a, which is no longer used (if not nil).
func (s *spareArrays) keepAppender(a *chunkAppender) {
	if a != nil && len(s.apps) < maxSpareAppenders {
		s.apps = append(s.apps, a)
	}
}

// appender returns an appender of the points from from on.
func (s *spareArrays) appender(from int) *chunkAppender {
	if len(s.apps) == 0 {
		return newChunkAppender(from)
	}
	a := s.apps[len(s.apps)-1]
	s.apps = s.apps[:len(s.apps)-1]
	a.reset(from)
	return a
}

// keep takes the arrays of d, which is no longer used.
func (s *spareArrays) keep(d *chunkData) {
	if len(s.ts) < maxSpare {
		s.ts = append(s.ts, d.ts[:0])
	}
	for _, col := range d.cols {
		if len(s.syms) < maxSpare {
			s.syms = append(s.syms, col.syms[:0])
		}
		if len(s.nums) < maxSpare && col.nums != nil {
			s.nums = append(s.nums, col.nums[:0])
		}
	}
	*d = chunkData{}
}

// timestamps returns an empty array for a chunk's timestamps, for size
// points (or nil when size is 0 and none is spare).
func (s *spareArrays) timestamps(size int) []int64 {
	for len(s.ts) > 0 {
		ts := s.ts[len(s.ts)-1]
		s.ts = s.ts[:len(s.ts)-1]
		if cap(ts) >= size {
			return ts
		}
	}
	if size == 0 {
		return nil
	}
	return make([]int64, 0, size)
}

// symbols returns an array for the symbols of a new column of a chunk of n
// points so far (absent at each) that holds size points, or nil.
func (s *spareArrays) symbols(n, size int) []uint32 {
	for len(s.syms) > 0 {
		syms := s.syms[len(s.syms)-1]
		s.syms = s.syms[:len(s.syms)-1]
		if cap(syms) >= max(n, size) {
			syms = syms[:n]
			clear(syms)
			return syms
		}
	}
	return nil
}

// numbers returns an array for a column's numbers at n points so far
// (zero at each) that holds size points, or nil.
func (s *spareArrays) numbers(n, size int) []float64 {
	for len(s.nums) > 0 {
		nums := s.nums[len(s.nums)-1]
		s.nums = s.nums[:len(s.nums)-1]
		if cap(nums) >= max(n, size) {
			nums = nums[:n]
			clear(nums)
			return nums
		}
	}
	return nil
}

func newChunkBuilder(d database.Dialect) *chunkBuilder {
	return &chunkBuilder{dialect: d, open: make(map[string]*openChunk)}
}

// add adds one point of device; points of a device should come in time
// order, but need not.
func (b *chunkBuilder) add(device string, ts int64, obj []byte, now time.Time, r *rollups) {
	c := b.last // a batch comes grouped by device
	if c == nil || c.device != device {
		c = b.open[device]
	}
	if c == nil || !c.fits(ts) {
		// A device's next chunk most likely takes as many points as its
		// last: its arrays are made that size at once, not grown to it
		// by doubling.
		size := 0
		if c != nil {
			size = len(c.data.ts)
		}
		c = &openChunk{device: device, idx: make(map[string]int, 8), sorted: true, maxPoints: chunkPoints}
		c.data.ts, c.data.spare = b.spare.timestamps(size), &b.spare
		b.open[device] = c
	}
	b.last = c
	if !c.dirty {
		b.pending = append(b.pending, c)
	}
	c.used = now
	c.add(ts, obj, r)
}

// encodeNew encodes the points added to the chunks pending from from on
// (a device's, whose points a batch adds together) onto the row each
// chunk's write will rewrite (tailWrite), while the points are in the
// caches: writeChunks then copies the encodings out. (Without it, the
// write encodes them: the migration's.)
func (b *chunkBuilder) encodeNew(from int) {
	for _, c := range b.pending[from:] {
		c.sort()
		if c.tailWrite() {
			if c.tail == nil {
				c.tail = b.spare.appender(c.based)
			}
			c.tail.extend(&b.enc, &c.data)
			continue
		}
		if c.whole == nil {
			c.whole = b.spare.appender(0)
		}
		c.whole.extend(&b.enc, &c.data)
	}
}

// write inserts or rewrites every pending chunk in tx. A rewrite that
// finds no row (the device was deleted, or the chunk pruned) drops the
// chunk: its points are not written again.
func (b *chunkBuilder) write(ctx context.Context, tx *sql.Tx) error {
	s, err := prepareChunkWrites(ctx, tx, b.dialect, "telemetry_chunks")
	if err != nil {
		return err
	}
	defer s.close()
	return b.writeChunks(ctx, tx, s, b.pending)
}

// writeChunks writes the pending chunks cs as write does, with the
// statements prepareChunkWrites prepared in tx.
func (b *chunkBuilder) writeChunks(ctx context.Context, tx *sql.Tx, s *chunkStmts, cs []*openChunk) error {
	b.last = nil
	buf := b.buf[:0]
	defer func() { b.buf = buf }()
	for _, c := range cs {
		c.sort()
		c.dirty = false
		n := len(c.data.ts)
		tail := c.tailWrite()
		c.wrote = n
		if tail {
			gone, err := b.writeTail(ctx, tx, s, c, &buf)
			if err != nil {
				return err
			}
			if gone && b.open[c.device] == c {
				delete(b.open, c.device)
			}
			continue
		}
		// The whole chunk into the base row.
		if c.tailID != 0 {
			if err := s.delete(ctx, tx, c.tailID); err != nil {
				return err
			}
			c.tailID = 0
		}
		c.based, c.rebase = n, false
		if c.whole == nil {
			c.whole = b.spare.appender(0)
		}
		buf = c.whole.chunk(&b.enc, buf[:0], &c.data)
		if c.tail != nil {
			c.tail.reset(n)
		}
		if len(buf) <= chunkMaxBytes || n == 1 {
			gone, err := s.put(ctx, c.device, &c.id, c.data.ts, buf)
			if err != nil {
				return err
			}
			c.maxPoints = min(chunkPoints, max(1, n*chunkTargetBytes/len(buf)))
			if (gone || n >= c.maxPoints) && b.open[c.device] == c {
				delete(b.open, c.device) // complete, or its row is gone
			}
			if b.open[c.device] != c {
				b.done = append(b.done, c)
			}
			continue
		}
		// Too large for a page (a first batch of many points): split
		// into chunks of about chunkTargetBytes, and start afresh.
		parts := (len(buf) + chunkTargetBytes - 1) / chunkTargetBytes
		per := (n + parts - 1) / parts
		for i := 0; i < n; i += per {
			sub := c.data.slice(i, min(i+per, n))
			buf = b.enc.chunk(buf[:0], sub)
			if _, err := s.put(ctx, c.device, &c.id, sub.ts, buf); err != nil {
				return err
			}
			c.id = 0 // the next part is a row of its own
		}
		if b.open[c.device] == c {
			delete(b.open, c.device)
		}
		b.done = append(b.done, c)
	}
	return nil
}

// writeTail writes the points after the base row into the tail row; gone
// reports that the base row is not there (the device was deleted).
func (b *chunkBuilder) writeTail(ctx context.Context, tx *sql.Tx, s *chunkStmts, c *openChunk, buf *[]byte) (gone bool, err error) {
	if c.tail == nil {
		c.tail = b.spare.appender(c.based)
	}
	*buf = c.tail.chunk(&b.enc, (*buf)[:0], &c.data)
	ts := c.data.ts[c.based:]
	if c.tailID == 0 {
		// A new tail row would outlive a deleted device's rows: it is
		// inserted only beside its base row.
		return s.insertBeside(ctx, tx, c.device, c.id, &c.tailID, ts, *buf)
	}
	return s.put(ctx, c.device, &c.tailID, ts, *buf)
}

// chunkStmts are the statements that write the rows of a chunk table
// (telemetry_chunks or telemetry_1m) in one transaction. On SQLite a row
// is inserted by an Exec and its id read from the result: a query
// (RETURNING) costs the driver and database/sql about twice an Exec; on
// PostgreSQL, which has no last insert id, with RETURNING.
type chunkStmts struct {
	dialect  database.Dialect
	table    string
	ins, upd *sql.Stmt
	// SQLite: a row inserted beside another (insertBeside) and a row
	// deleted, prepared when first needed.
	beside, del *sql.Stmt
}

// prepareChunkWrites prepares the insert and the rewrite of a row of a
// chunk table (telemetry_chunks or telemetry_1m).
func prepareChunkWrites(ctx context.Context, tx *sql.Tx, d database.Dialect, table string) (*chunkStmts, error) {
	s := &chunkStmts{dialect: d, table: table}
	insert := `INSERT INTO ` + table + `(device_id, ts_min, ts_max, n, data) VALUES (?,?,?,?,?)`
	if d != database.SQLite {
		insert += ` RETURNING id`
	}
	var err error
	if s.ins, err = tx.PrepareContext(ctx, insert); err != nil {
		return nil, fmt.Errorf("telemetry write: prepare: %w", err)
	}
	if s.upd, err = tx.PrepareContext(ctx,
		`UPDATE `+table+` SET ts_min = ?, ts_max = ?, n = ?, data = ? WHERE id = ?`); err != nil {
		s.close()
		return nil, fmt.Errorf("telemetry write: prepare: %w", err)
	}
	return s, nil
}

func (s *chunkStmts) close() {
	for _, st := range []*sql.Stmt{s.ins, s.upd, s.beside, s.del} {
		if st != nil {
			st.Close()
		}
	}
}

// put inserts the chunk whose timestamps are ts (encoded as data) if *id
// is 0, setting *id, else rewrites row *id; gone reports that the row was
// not there.
func (s *chunkStmts) put(ctx context.Context, device string, id *int64, ts []int64, data []byte) (gone bool, err error) {
	lo, hi := ts[0], ts[len(ts)-1]
	if *id == 0 {
		if s.dialect == database.SQLite {
			res, err := s.ins.ExecContext(ctx, device, lo, hi, len(ts), data)
			if err == nil {
				*id, err = res.LastInsertId()
			}
			if err != nil {
				return false, fmt.Errorf("telemetry write: insert: %w", err)
			}
			return false, nil
		}
		if err := s.ins.QueryRowContext(ctx, device, lo, hi, len(ts), data).Scan(id); err != nil {
			return false, fmt.Errorf("telemetry write: insert: %w", err)
		}
		return false, nil
	}
	res, err := s.upd.ExecContext(ctx, lo, hi, len(ts), data, *id)
	if err != nil {
		return false, fmt.Errorf("telemetry write: update: %w", err)
	}
	n, _ := res.RowsAffected()
	return n == 0, nil
}

// insertBeside inserts the chunk as put does, if row beside is there;
// gone reports that it is not (and nothing was inserted).
func (s *chunkStmts) insertBeside(ctx context.Context, tx *sql.Tx, device string, beside int64, id *int64, ts []int64, data []byte) (gone bool, err error) {
	if s.dialect != database.SQLite {
		var one int
		switch err := tx.QueryRowContext(ctx, `SELECT 1 FROM `+s.table+` WHERE id = ?`, beside).Scan(&one); {
		case errors.Is(err, sql.ErrNoRows):
			return true, nil
		case err != nil:
			return false, fmt.Errorf("telemetry write: %w", err)
		}
		return s.put(ctx, device, id, ts, data)
	}
	if s.beside == nil {
		if s.beside, err = tx.PrepareContext(ctx, `INSERT INTO `+s.table+`(device_id, ts_min, ts_max, n, data)
			SELECT ?,?,?,?,? WHERE EXISTS (SELECT 1 FROM `+s.table+` WHERE id = ?)`); err != nil {
			return false, fmt.Errorf("telemetry write: prepare: %w", err)
		}
	}
	res, err := s.beside.ExecContext(ctx, device, ts[0], ts[len(ts)-1], len(ts), data, beside)
	var n int64
	if err == nil {
		if n, err = res.RowsAffected(); n == 1 {
			*id, err = res.LastInsertId()
		}
	}
	if err != nil {
		return false, fmt.Errorf("telemetry write: insert: %w", err)
	}
	return n == 0, nil
}

// delete deletes row id.
func (s *chunkStmts) delete(ctx context.Context, tx *sql.Tx, id int64) error {
	var err error
	if s.dialect != database.SQLite {
		_, err = tx.ExecContext(ctx, `DELETE FROM `+s.table+` WHERE id = ?`, id)
	} else {
		if s.del == nil {
			if s.del, err = tx.PrepareContext(ctx, `DELETE FROM `+s.table+` WHERE id = ?`); err != nil {
				return fmt.Errorf("telemetry write: prepare: %w", err)
			}
		}
		_, err = s.del.ExecContext(ctx, id)
	}
	if err != nil {
		return fmt.Errorf("telemetry write: %w", err)
	}
	return nil
}

// written ends a write: on success the pending chunks are on disk; on
// failure the open chunks are forgotten (their rows, if any, hold what
// was committed before) so that the next batch starts afresh. The arrays
// of chunks written complete go to the spares.
func (b *chunkBuilder) written(ok bool) {
	b.last = nil
	if !ok {
		b.forget(b.pending)
	}
	for _, c := range b.done {
		if b.open[c.device] != c {
			b.spare.keep(&c.data)
			b.spare.keepAppender(c.whole)
			b.spare.keepAppender(c.tail)
			c.whole, c.tail = nil, nil
		}
	}
	clear(b.done)
	b.done = b.done[:0]
	clear(b.pending)
	b.pending = b.pending[:0]
}

// forget forgets the chunks of cs that are open, whose writes were
// rolled back: their rows, if any, hold what was committed before, and
// the device's next point starts a new chunk.
func (b *chunkBuilder) forget(cs []*openChunk) {
	b.last = nil
	for _, c := range cs {
		if b.open[c.device] == c {
			delete(b.open, c.device)
		}
	}
}

// evict forgets the open chunks not added to since before: their rows
// are complete, and the device's next point starts a new chunk.
func (b *chunkBuilder) evict(before time.Time) {
	b.last = nil
	for d, c := range b.open {
		if c.used.Before(before) {
			delete(b.open, d)
		}
	}
}
