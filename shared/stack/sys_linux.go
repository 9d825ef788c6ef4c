package stack

import "syscall"

// sysProcAttr puts a service in its own process group, so a Ctrl-C in the
// terminal reaches only the launcher, which then stops the services in
// order; and asks the kernel to send it SIGTERM should the launcher die
// (a test binary killed by its timeout), so no service outlives it
// holding its ports.
//
// Pdeathsig fires when the thread that started the child exits; the Go
// runtime only retires threads a goroutine locked and never unlocked,
// which nothing here does.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}

// signalGroup signals the process group the service leads.
func signalGroup(pid int, sig syscall.Signal) error {
	return syscall.Kill(-pid, sig)
}
