package mesh

import (
	"context"
	"testing"
	"time"
)

// StartT starts a mesh for a test (Dir defaults to t.TempDir()) and closes
// it at cleanup; a failed test gets every peerd's log.
func StartT(t testing.TB, opts Options) *Mesh {
	t.Helper()
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	m, err := Start(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		m.Close()
		if t.Failed() {
			for _, c := range m.Clusters {
				t.Logf("peerd %s log:\n%s", c.Name, tail(c.Logs(), 200))
			}
		}
	})
	return m
}
