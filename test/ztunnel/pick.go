package ztunnel

import (
	"context"
	"errors"
	"fmt"

	"github.com/peerd-mesh/peerd/internal/explain"
)

// Where traffic goes: the client ranks a service's endpoints with
// internal/explain, the code `peerd explain` runs, so a test's "a client in
// cluster 1 sends to cluster 2" and the operator's tool cannot disagree.

// Source describes the workload this ztunnel's traffic comes from: the
// network, locality and cluster of the held workloads on Config.NodeName
// (as ztunnel ranks against its source workload), with Config.Network
// taking precedence when set (ztunnel looks VIPs up on its own network).
// With no held workload on the node: Config.Network, Config.ClusterID, an
// empty locality.
func (c *Client) Source() explain.Client {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sourceLocked()
}

func (c *Client) sourceLocked() explain.Client {
	src, err := c.explainStateLocked().ClientOnNode(c.cfg.NodeName)
	if err != nil {
		src = explain.Client{Node: c.cfg.NodeName, Cluster: c.cfg.ClusterID}
	}
	if c.cfg.Network != "" || err != nil {
		src.Network = c.cfg.Network
	}
	return src
}

// explainStateLocked shares the live maps: explain only reads them, and
// only under c.mu.
func (c *Client) explainStateLocked() explain.State {
	return explain.State{Services: c.state.Services, Workloads: c.state.Workloads}
}

// Pick explains where this ztunnel would send traffic for service (a
// namespace/hostname, a VIP or a hostname; see explain.Query) from a
// workload on its node (Source), from the state it holds now. The error is
// explain's: explain.ErrUnknownService, or explain.ErrNoHealthyUpstream
// with a complete Result.
func (c *Client) Pick(service string) (explain.Result, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return explain.Explain(c.explainStateLocked(), explain.Query{Service: service, Client: c.sourceLocked()})
}

// PickFrom is Pick for another client, such as a workload on another node
// or in another locality.
func (c *Client) PickFrom(service string, from explain.Client) (explain.Result, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return explain.Explain(c.explainStateLocked(), explain.Query{Service: service, Client: from})
}

// WaitPick waits until ok accepts Pick(service), re-asking on every state
// change, and returns that answer. On timeout the error carries the last
// answer's per-cluster shares and error, so a failing test says where the
// traffic was going instead.
func (c *Client) WaitPick(ctx context.Context, service string, ok func(explain.Result, error) bool) (explain.Result, error) {
	var (
		last    explain.Result
		lastErr error
	)
	err := c.WaitFor(ctx, func(*State) bool {
		// WaitFor holds c.mu: use the Locked forms.
		last, lastErr = explain.Explain(c.explainStateLocked(), explain.Query{Service: service, Client: c.sourceLocked()})
		return ok(last, lastErr)
	})
	if err != nil {
		return last, fmt.Errorf("ztunnel client: pick %s: last answer %v (error %v): %w", service, last.ByCluster(), lastErr, err)
	}
	return last, lastErr
}

// ErrNoHealthyUpstream is explain's, here so tests need one import less.
var ErrNoHealthyUpstream = explain.ErrNoHealthyUpstream

// SendsOnlyTo returns a WaitPick condition: every pick goes to the given
// clusters, in these shares (each within 1e-9), and nowhere else.
func SendsOnlyTo(shares map[string]float64) func(explain.Result, error) bool {
	return func(r explain.Result, err error) bool {
		if err != nil {
			return false
		}
		got := r.ByCluster()
		if len(got) != len(shares) {
			return false
		}
		for cluster, want := range shares {
			if d := got[cluster] - want; d > 1e-9 || d < -1e-9 {
				return false
			}
		}
		return true
	}
}

// NoHealthyUpstream is a WaitPick condition: nothing would be picked.
func NoHealthyUpstream(_ explain.Result, err error) bool {
	return errors.Is(err, explain.ErrNoHealthyUpstream)
}
