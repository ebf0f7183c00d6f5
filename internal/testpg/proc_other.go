//go:build !linux

package testpg

import "syscall"

// procAttr runs a program as cred (nil: as the test).
func procAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: cred}
}
