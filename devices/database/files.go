package database

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// The database holds password hashes, device secret hashes and the token
// signing key: its files are the server's alone (SPEC §3).
const (
	// FileMode is the mode of the database, its WAL, shared-memory and
	// journal files, and backups.
	FileMode fs.FileMode = 0o600
	// DirMode is the mode a data directory is created with.
	DirMode fs.FileMode = 0o700
)

// sidecars are the suffixes of the files SQLite keeps beside a database.
var sidecars = []string{"", "-wal", "-shm", "-journal"}

// secureFiles creates the database at path with FileMode if it does not
// exist, and sets FileMode on it and on the files SQLite keeps beside it
// that exist already (a database created by an older version, or copied
// in). SQLite creates the WAL and shared-memory files with the database's
// own mode, so they follow.
func secureFiles(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, FileMode)
	if err != nil {
		return fmt.Errorf("open database %s: %w", path, err)
	}
	f.Close()
	for _, s := range sidecars {
		if err := chmodIfExists(path+s, FileMode); err != nil {
			return fmt.Errorf("open database: %w", err)
		}
	}
	return nil
}

// chmodIfExists sets mode on the file at path unless it is missing or has
// that mode already.
func chmodIfExists(path string, mode fs.FileMode) error {
	st, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", path)
	}
	if st.Mode().Perm() == mode {
		return nil
	}
	return os.Chmod(path, mode)
}
