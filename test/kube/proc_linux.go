package kubeharness

import "syscall"

// childAttrs makes the kernel kill a control-plane process when the test
// binary dies without running its cleanup (a timeout panic, a SIGKILL), so
// no etcd or kube-apiserver outlives the test run.
func childAttrs() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
