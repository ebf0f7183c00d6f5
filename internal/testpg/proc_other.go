//go:build !linux

package testpg

import (
	"os"
	"syscall"
)

// serverUser: elsewhere the programs run as the test does (and refuse
// root themselves).
func serverUser(dir string) (*syscall.SysProcAttr, error) { return nil, nil }

// tempBase is where the server's directory goes.
func tempBase() string { return os.TempDir() }
