package devices

import "github.com/tether-iot/tether/devices/database"

// DB is the database the stores share (package database).
type DB = database.DB

// Schema is a component's migrations per dialect (DB.Migrate).
type Schema = database.Schema

// FileName is the SQLite database's name inside the data directory.
const FileName = database.FileName

// OpenDB opens (creating if needed) the SQLite database dir/tether.db.
func OpenDB(dir string) (*DB, error) { return database.Open(dir) }

// OpenDBFile opens (creating if needed) the SQLite database at path.
func OpenDBFile(path string) (*DB, error) { return database.OpenFile(path) }
