//go:build !linux

package testpg

import "syscall"

// serverUser: elsewhere the programs run as the test does (and refuse
// root themselves).
func serverUser(dir string) (*syscall.SysProcAttr, error) { return nil, nil }
