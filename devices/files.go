package devices

import (
	"fmt"
	"os"

	"github.com/tether-iot/tether/devices/database"
)

// The database holds password hashes, device secret hashes and the token
// signing key: its files are the server's alone (SPEC §3).
const (
	// FileMode is the mode of the database, its WAL, shared-memory and
	// journal files, and backups.
	FileMode = database.FileMode
	// DirMode is the mode a data directory is created with.
	DirMode = database.DirMode
)

// CheckDataDir reports, as an error to log as a warning, a data directory
// that users other than its owner may read or enter. It does not change
// the directory's mode: the operator chose it.
func CheckDataDir(dir string) error {
	st, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	if p := st.Mode().Perm(); p&0o077 != 0 {
		return fmt.Errorf("data directory %s has mode %04o: other users may read the database's directory; chmod 700 it", dir, p)
	}
	return nil
}
