//go:build !linux

package mesh

import (
	"os"
	"syscall"
)

// childAttrs: outside Linux there is no parent-death signal; cleanup relies
// on Close.
func childAttrs() *syscall.SysProcAttr { return nil }

func killGroup(pid int) {
	if p, err := os.FindProcess(pid); err == nil {
		_ = p.Kill()
	}
}
