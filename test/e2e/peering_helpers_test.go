package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
	"github.com/peerd-mesh/peerd/test/mesh"
	"github.com/peerd-mesh/peerd/test/ztunnel"
)

// The linked mesh of examples/multicluster, seen from a ztunnel on node-a
// of cluster1 (us-east/us-east-a) unless a test says otherwise.
const (
	globalSuffix = "mesh.internal"
	// peeringWait bounds waits that depend on link timers (stale, TTL,
	// reconnect backoff): a failure bound, not a latency assertion.
	peeringWait = 90 * time.Second
)

// startLinkedMesh starts the three example clusters, linked both ways.
func startLinkedMesh(t *testing.T, edit func(*mesh.Options)) *mesh.Mesh {
	t.Helper()
	opts := mesh.Options{
		Binary:   peerdBinary,
		Clusters: mesh.ExampleClusters(repoPath("examples", "multicluster")),
	}
	if edit != nil {
		edit(&opts)
	}
	return mesh.StartT(t, opts)
}

// globalKey is the resource name of the global service of ns/name.
func globalKey(ns, name string) string { return ns + "/" + name + "." + ns + "." + globalSuffix }

// plainKey is the resource name of the plain Service ns/name.
func plainKey(ns, name string) string { return ns + "/" + name + "." + ns + ".svc.cluster.local" }

// clientOn connects a ztunnel-like client on a node of cluster c and waits
// until it is ready.
func clientOn(t *testing.T, c *mesh.Cluster, node string) *ztunnel.Client {
	t.Helper()
	return connectZtunnel(t, c.ZtunnelConfig(node))
}

// endpointClusters lists the clusters (cluster_id) of the workloads that
// are endpoints of the service key, sorted, whatever their health.
func endpointClusters(s *ztunnel.State, key string) []string {
	set := map[string]bool{}
	for _, w := range s.Workloads {
		if _, ok := w.GetServices()[key]; ok {
			set[w.GetClusterId()] = true
		}
	}
	out := make([]string, 0, len(set))
	for c := range set {
		out = append(out, c)
	}
	sort.Strings(out)
	return out
}

// splitHorizon returns the workload that stands for cluster's endpoints of
// the service key (no address, on the remote network), or nil.
func splitHorizon(s *ztunnel.State, key, cluster string) *workloadpb.Workload {
	for _, w := range s.Workloads {
		if _, ok := w.GetServices()[key]; ok && w.GetClusterId() == cluster && len(w.GetAddresses()) == 0 && w.GetNetworkGateway() != nil {
			return w
		}
	}
	return nil
}

// waitEndpointClusters waits until the service key's endpoints come from
// exactly the given clusters (none: the service's endpoints are gone).
func waitEndpointClusters(t *testing.T, c *ztunnel.Client, key string, want ...string) {
	t.Helper()
	sort.Strings(want)
	var got []string
	waitStateFor(t, c, peeringWait, fmt.Sprintf("%s endpoints from %v", key, want), func(s *ztunnel.State) bool {
		got = endpointClusters(s, key)
		return slices.Equal(got, want)
	}, func() string { return fmt.Sprintf("last seen from %v", got) })
}

// waitStateFor is waitState with its own bound and a description of what
// was last seen, for waits on link timers.
func waitStateFor(t *testing.T, c *ztunnel.Client, d time.Duration, what string, pred func(*ztunnel.State) bool, seen func() string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if err := c.WaitFor(ctx, pred); err != nil {
		t.Fatalf("waiting for %s: %v (%s)", what, err, seen())
	}
}

// hasService reports whether the client holds the service key.
func hasService(c *ztunnel.Client, key string) bool {
	_, ok := c.Services()[key]
	return ok
}

// waitLinkState waits until cluster c's link to peer reports a state that
// contains want (e.g. "synced", "stale", "rejected", "withdrawn") in
// /debug/peers; the test stops if it does not.
func waitLinkState(t *testing.T, c *mesh.Cluster, peer, want string) {
	t.Helper()
	if !expectLinkState(t, c, peer, want) {
		t.FailNow()
	}
}

// expectLinkState is waitLinkState that lets the test go on (t.Errorf).
func expectLinkState(t *testing.T, c *mesh.Cluster, peer, want string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), peeringWait)
	defer cancel()
	var last string
	err := mesh.Poll(ctx, func() (bool, error) {
		if s, ok := linkState(ctx, c, peer); ok {
			last = s
		}
		return strings.Contains(strings.ToLower(last), want), nil
	})
	if err != nil {
		_, body, _ := c.Get(context.Background(), "/debug/peers")
		t.Errorf("%s: link to %s: waiting for state %q: %v (last %q)\n/debug/peers:\n%s", c.Name, peer, want, err, last, body)
		return false
	}
	return true
}

// linkState finds peer's link in /debug/peers and returns its state; ok
// is false when /debug/peers did not answer. The document's exact shape is
// not pinned here: any JSON object that names the peer (cluster, name or
// peer field) and has a state field counts.
func linkState(ctx context.Context, c *mesh.Cluster, peer string) (state string, ok bool) {
	code, body, err := c.Get(ctx, "/debug/peers")
	if err != nil || code != 200 {
		return "", false
	}
	var doc any
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		return "", false
	}
	var found string
	var walk func(any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			names := false
			for _, k := range []string{"cluster", "name", "peer", "Cluster", "Name", "Peer"} {
				if s, ok := x[k].(string); ok && (s == peer || strings.HasSuffix(s, "/"+peer)) {
					names = true
				}
			}
			if names {
				for _, k := range []string{"state", "State"} {
					if s, ok := x[k].(string); ok && found == "" {
						found = s
					}
				}
			}
			for _, e := range x {
				walk(e)
			}
		case []any:
			for _, e := range x {
				walk(e)
			}
		}
	}
	walk(doc)
	return found, true
}

// waitShares waits until the client would send traffic for key (from a
// workload on its node, ranked by internal/explain as `peerd explain` does)
// to exactly these clusters, in these shares.
func waitShares(t *testing.T, c *ztunnel.Client, key string, want map[string]float64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), peeringWait)
	defer cancel()
	if _, err := c.WaitPick(ctx, key, ztunnel.SendsOnlyTo(want)); err != nil {
		t.Fatalf("waiting for traffic to %s to go to %v: %v", key, want, err)
	}
}
