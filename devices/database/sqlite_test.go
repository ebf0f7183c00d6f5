package database

import (
	"os"
	"path/filepath"
	"testing"
)

// TestOpenFileOddPath: a data directory whose name holds the characters a
// file: URI gives a meaning to ('?', '#', '%') opens the file it names,
// not a shorter or decoded one.
func TestOpenFileOddPath(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run#1 ?x=%41")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "tether.db")
	db, err := OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.W.Exec("CREATE TABLE t (x INTEGER)"); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("the database is not where it was asked to be: %v", err)
	}
	entries, _ := os.ReadDir(filepath.Dir(dir))
	if len(entries) != 1 {
		t.Errorf("files beside the data directory: %v", entries)
	}
}
