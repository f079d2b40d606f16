package bench

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// IntList parses a flag's comma-separated list of positive numbers; the
// error names the flag and the entry.
func IntList(flagName, s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || v < 1 {
			return nil, fmt.Errorf("%s: %q is not a positive number", flagName, f)
		}
		out = append(out, v)
	}
	return out, nil
}

// WorkDir returns dir, created if missing, or a new temporary directory
// named after prefix when dir is empty.
func WorkDir(dir, prefix string) (string, error) {
	if dir == "" {
		return os.MkdirTemp("", prefix)
	}
	return dir, os.MkdirAll(dir, 0o755)
}
