// Package database is the one database the stores of package devices (and
// the MQTT session store) share: its type (DB), its two dialects (SQLite,
// one file in the data directory; PostgreSQL, shared by the nodes of a
// cluster), and their migrations.
//
// Every store keeps using database/sql with SQLite's `?` placeholders: on
// PostgreSQL the driver (postgres_driver.go, pgx underneath) rebinds them
// to $1, $2, ... (Rebind), and a few SQLite functions the stores call
// (json_patch, json_each over TEXT, instr) exist as functions of the same
// meaning (postgres_compat.go). Where the SQL of a store must still differ,
// the store asks DB.Dialect. Migrations are per component and per
// dialect (Schema): SQLite's steps are never edited, PostgreSQL's have
// their own list.
package database
