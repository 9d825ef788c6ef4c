//go:build unix && !linux

package stack

import "syscall"

// sysProcAttr puts a service in its own process group, so a Ctrl-C in the
// terminal reaches only the launcher, which then stops the services in
// order. (Only Linux can also tie the child's life to the launcher's.)
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}

// signalGroup signals the process group the service leads.
func signalGroup(pid int, sig syscall.Signal) error {
	return syscall.Kill(-pid, sig)
}
