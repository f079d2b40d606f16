package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/peerd-mesh/peerd/test/ztunnel"
)

// waitTimeout bounds every wait for a state to arrive. It is a failure
// bound, not a performance assertion: the expected latency is milliseconds.
const waitTimeout = 20 * time.Second

// connectZtunnel runs a ztunnel-like client until the test ends and waits
// until it is ready (one response per type ACKed).
func connectZtunnel(t *testing.T, cfg ztunnel.Config) *ztunnel.Client {
	t.Helper()
	c := ztunnel.Start(t, cfg)
	waitState(t, c, "client ready", func(s *ztunnel.State) bool { return s.Ready })
	return c
}

// waitState waits until pred holds for the client's state.
func waitState(t *testing.T, c *ztunnel.Client, what string, pred func(*ztunnel.State) bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := c.WaitFor(ctx, pred); err != nil {
		s := c.Stats()
		t.Fatalf("waiting for %s: %v (connected=%v ready=%v streams=%d responses=%d nacks=%d last nack %q)",
			what, err, s.Connected, s.Ready, s.Streams, s.Responses, s.NACKs, s.LastNACK)
	}
}

// waitFor polls cond (for state outside the client: logs, HTTP endpoints)
// until it holds, failing after waitTimeout.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
