package mesh

import "syscall"

// childAttrs puts peerd in a process group of its own (so killGroup reaches
// everything it started, and a Ctrl-C in the demo's terminal reaches only
// the demo, which then stops every peerd in order) and makes the kernel kill
// it when the harness dies without cleaning up (a test timeout, a SIGKILL),
// so no peerd outlives a test run or the demo.
func childAttrs() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

func killGroup(pid int) { _ = syscall.Kill(-pid, syscall.SIGKILL) }
