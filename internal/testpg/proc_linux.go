package testpg

import "syscall"

// procAttr runs a program as cred (nil: as the test), and ends it if the
// test binary dies (a timeout's panic) so no server outlives its test.
func procAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGQUIT}
}
