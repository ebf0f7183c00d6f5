package database

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"io"
	"net"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// IsTransient reports an error that is the database's or the
// connection's rather than the statement's: the same statement may work
// once it clears. On SQLite: busy or locked (another process holds the
// file past busy_timeout), I/O, disk full, out of memory, interrupted.
// On PostgreSQL: the connection lost or refused, the server shutting
// down, out of resources (disk, memory, connections), a system error,
// a serialization failure or deadlock, a lock or statement timeout. And
// in either, a context that ended. A batch writer fails the whole batch
// on such an error rather than blame one of its items.
func IsTransient(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, driver.ErrBadConn) || errors.Is(err, sql.ErrConnDone) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, pgconn.ErrConnClosed) || pgconn.Timeout(err) {
		return true
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch c := pe.Code; {
		case strings.HasPrefix(c, "08"), // connection exception
			strings.HasPrefix(c, "53"),  // insufficient resources
			strings.HasPrefix(c, "57P"), // shutting down, cannot connect now
			strings.HasPrefix(c, "58"),  // system error (I/O)
			c == "40001", c == "40P01",  // serialization failure, deadlock
			c == "55P03", c == "57014": // lock not available, statement timeout
			return true
		}
		return false
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() & 0xff { // the primary result code
		case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL,
			sqlite3.SQLITE_NOMEM, sqlite3.SQLITE_INTERRUPT, sqlite3.SQLITE_PROTOCOL, sqlite3.SQLITE_CANTOPEN:
			return true
		}
		return false
	}
	var ne net.Error
	return errors.As(err, &ne) || pgconn.SafeToRetry(err)
}
