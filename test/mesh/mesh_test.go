package mesh

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
	"github.com/peerd-mesh/peerd/test/ztunnel"
)

// TestMeshRunsLinkedClustersAndCleansUp starts two example clusters with
// the real binary and checks what the harness promises: its own dirs and
// ports per cluster, links to the other's relay, restart on the same
// addresses, kill, atomic manifest edits, and nothing left running.
func TestMeshRunsLinkedClustersAndCleansUp(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs peerd")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	binary, err := Build(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	specs := ExampleClusters(filepath.Join("..", "..", "examples", "multicluster"))[:2]
	m := StartT(t, Options{Binary: binary, Clusters: specs})
	c1, c2 := m.Cluster("cluster1"), m.Cluster("cluster2")

	link, err := c1.ReadManifest(LinkFile(c2))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"gatewayClassName: istio-remote", "topology.istio.io/network: network2",
		"gateway.istio.io/trust-domain: cluster2.local", "port: " + strconv.Itoa(c2.Relay.Port())} {
		if !strings.Contains(link, want) {
			t.Errorf("link to cluster2 lacks %q:\n%s", want, link)
		}
	}
	if c1.CADir == c2.CADir || c1.StateDir == c2.StateDir || c1.ConfigDir == c2.ConfigDir {
		t.Fatal("clusters share a directory")
	}

	// An edit reaches peerd: echo's pods go unready in cluster1.
	z := ztunnel.Start(t, c1.ZtunnelConfig("node-a"))
	healthyEcho := func(want int) func(*ztunnel.State) bool {
		return func(s *ztunnel.State) bool {
			n := 0
			for _, w := range s.Workloads {
				if strings.HasPrefix(w.GetName(), "echo-") && w.GetStatus() == workloadpb.WorkloadStatus_HEALTHY {
					n++
				}
			}
			return s.Ready && n == want
		}
	}
	if err := z.WaitFor(ctx, healthyEcho(2)); err != nil {
		t.Fatal(err)
	}
	if err := c1.ReplaceInManifest("10-echo-pods.yaml", `status: "True"`, `status: "False"`); err != nil {
		t.Fatal(err)
	}
	if err := z.WaitFor(ctx, healthyEcho(0)); err != nil {
		t.Fatal(err)
	}
	if err := c1.EditManifest("10-echo-pods.yaml", func(s string) string { return s }); err == nil {
		t.Error("an edit that changes nothing was accepted")
	}
	if entries, _ := os.ReadDir(c1.ConfigDir); len(entries) != len(mustReadDir(t, specs[0].Manifests))+1 {
		t.Errorf("config dir holds %d files; want the manifests and one link (no temporary files left)", len(entries))
	}

	// Kill, then start again on the same addresses.
	c2.Kill()
	if c2.Running() {
		t.Fatal("cluster2 still running after Kill")
	}
	if err := c2.Start(); err != nil {
		t.Fatal(err)
	}
	if err := c2.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c1.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if code, _, err := c1.Get(ctx, "/readyz"); err != nil || code != http.StatusOK {
		t.Fatalf("restarted cluster1 /readyz: %d %v", code, err)
	}
	if !strings.Contains(c1.Logs(), "=== mesh: peerd stopped") {
		t.Error("the log does not mark the restart")
	}

	m.Close()
	for _, c := range m.Clusters {
		if c.Running() {
			t.Errorf("%s still running after Close", c.Name)
		}
	}
}

func mustReadDir(t *testing.T, dir string) []os.DirEntry {
	t.Helper()
	e, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	return e
}
