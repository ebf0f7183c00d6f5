package devices

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

func mode(t *testing.T, path string) fs.FileMode {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm()
}

// TestDBFileModes: a new data directory is 0700 and the database, its WAL
// and its shared-memory file are 0600, whatever the umask lets through.
func TestDBFileModes(t *testing.T) {
	sqliteOnly(t, "file modes")
	dir := filepath.Join(t.TempDir(), "data")
	db, err := OpenDB(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.W.Exec(`CREATE TABLE t(x); INSERT INTO t VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	if m := mode(t, dir); m != DirMode {
		t.Errorf("data directory mode %04o, want %04o", m, DirMode)
	}
	for _, s := range []string{"", "-wal", "-shm"} {
		if m := mode(t, filepath.Join(dir, FileName+s)); m != FileMode {
			t.Errorf("%s%s mode %04o, want %04o", FileName, s, m, FileMode)
		}
	}
	if err := CheckDataDir(dir); err != nil {
		t.Errorf("CheckDataDir on a 0700 directory: %v", err)
	}
}

// TestDBFileModesExisting: files an older version left readable by others
// are made 0600 when the database is opened.
func TestDBFileModesExisting(t *testing.T) {
	sqliteOnly(t, "file modes")
	dir := t.TempDir()
	path := filepath.Join(dir, FileName)
	db, err := OpenDBFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.W.Exec(`CREATE TABLE t(x); INSERT INTO t VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if err := os.WriteFile(path+"-wal", nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"", "-wal"} {
		if err := os.Chmod(path+s, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	db, err = OpenDBFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.R.QueryRowContext(context.Background(), `SELECT count(*) FROM t`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("data after reopening: %d rows, %v", n, err)
	}
	for _, s := range []string{"", "-wal", "-shm"} {
		if m := mode(t, path+s); m != FileMode {
			t.Errorf("%s%s mode %04o after opening, want %04o", FileName, s, m, FileMode)
		}
	}
}

// TestCheckDataDir: a directory others may read is reported, naming it
// and its mode; its mode is left alone.
func TestCheckDataDir(t *testing.T) {
	sqliteOnly(t, "the data directory")
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	err := CheckDataDir(dir)
	if err == nil {
		t.Fatal("CheckDataDir accepted a 0755 directory")
	}
	t.Log(err)
	if m := mode(t, dir); m != 0o755 {
		t.Errorf("mode changed to %04o", m)
	}
}
