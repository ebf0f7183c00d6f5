package database

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrNotShared is Listen's and Notify's answer on SQLite: no other process
// writes the database.
var ErrNotShared = errors.New("database: notifications need PostgreSQL")

// Notify sends payload on channel to every process listening on the
// database (PostgreSQL's NOTIFY, delivered when the sender's transaction
// commits; here it is one of its own).
func (db *DB) Notify(ctx context.Context, channel, payload string) error {
	if db.Dialect != Postgres {
		return ErrNotShared
	}
	_, err := db.W.ExecContext(ctx, `SELECT pg_notify(?, ?)`, channel, payload)
	return err
}

// Listen calls fn with the payload of every notification on channel, on a
// connection of its own, until ctx ends. Each time it (re)connects it calls
// connected once LISTEN holds, so the caller can read again what it may
// have missed; a lost connection is reported to failed and retried after
// a pause. fn and connected run on Listen's goroutine.
func (db *DB) Listen(ctx context.Context, channel string, connected func(), fn func(payload string), failed func(error)) error {
	if db.Dialect != Postgres {
		return ErrNotShared
	}
	pause := 100 * time.Millisecond
	for {
		err := db.listenOnce(ctx, channel, connected, fn)
		if ctx.Err() != nil {
			return nil
		}
		failed(err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(pause):
		}
		pause = min(pause*2, 5*time.Second)
	}
}

func (db *DB) listenOnce(ctx context.Context, channel string, connected func(), fn func(string)) error {
	c, err := pgx.ConnectConfig(ctx, db.pg.Copy())
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	if _, err := c.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
		return err
	}
	connected()
	for {
		n, err := c.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		fn(n.Payload)
	}
}
