//go:build !linux

package kubeharness

import "syscall"

// childAttrs: outside Linux there is no parent-death signal; cleanup relies
// on the test's own Cleanup.
func childAttrs() *syscall.SysProcAttr { return nil }
