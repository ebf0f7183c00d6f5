package database

import (
	"context"
	"database/sql/driver"
	"fmt"

	"github.com/jackc/pgx/v5/stdlib"
)

// connector makes pgx connections that speak the stores' SQL: every query
// goes through Rebind, and arguments reach pgx as they reach SQLite's
// driver (database/sql's default conversion), with a bool stored as the
// integer 0 or 1 (SQLite's booleans).
type connector struct {
	pgx driver.Connector
}

func (c connector) Connect(ctx context.Context) (driver.Conn, error) {
	dc, err := c.pgx.Connect(ctx)
	if err != nil {
		return nil, err
	}
	pc, ok := dc.(*stdlib.Conn)
	if !ok {
		dc.Close()
		return nil, fmt.Errorf("pgx returned a %T", dc)
	}
	return &conn{pc}, nil
}

func (c connector) Driver() driver.Driver { return c.pgx.Driver() }

// conn is a pgx connection whose SQL-taking methods rebind placeholders.
type conn struct {
	*stdlib.Conn
}

func (c *conn) Prepare(query string) (driver.Stmt, error) {
	return c.Conn.Prepare(Rebind(query))
}

func (c *conn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	return c.Conn.PrepareContext(ctx, Rebind(query))
}

func (c *conn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	return c.Conn.ExecContext(ctx, Rebind(query), args)
}

func (c *conn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	return c.Conn.QueryContext(ctx, Rebind(query), args)
}

// CheckNamedValue converts an argument as database/sql does for a driver
// without its own rules (SQLite's), then a bool to 0 or 1.
func (c *conn) CheckNamedValue(nv *driver.NamedValue) error {
	v, err := driver.DefaultParameterConverter.ConvertValue(nv.Value)
	if err != nil {
		return err
	}
	if b, ok := v.(bool); ok {
		v = int64(0)
		if b {
			v = int64(1)
		}
	}
	nv.Value = v
	return nil
}
