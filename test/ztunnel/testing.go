package ztunnel

import (
	"context"
	"testing"
)

// Start runs a client until the test ends (Run in the background, stopped
// and waited for at cleanup); an error from Run fails the test.
func Start(tb testing.TB, cfg Config) *Client {
	tb.Helper()
	c := New(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := c.Run(ctx); err != nil {
			tb.Errorf("ztunnel client Run: %v", err)
		}
	}()
	tb.Cleanup(func() { cancel(); <-done })
	return c
}
