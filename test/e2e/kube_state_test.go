package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/peerd-mesh/peerd/internal/discovery"
	"github.com/peerd-mesh/peerd/internal/discovery/peers"
	"github.com/peerd-mesh/peerd/internal/federation"
	"github.com/peerd-mesh/peerd/internal/kubestate"
	"github.com/peerd-mesh/peerd/internal/kubeyaml"
	kubeharness "github.com/peerd-mesh/peerd/test/kube"
	"github.com/peerd-mesh/peerd/test/mesh"
	"github.com/peerd-mesh/peerd/test/ztunnel"
)

// kubeStateManifest: the system namespace, a link to a cluster2 that never
// answers (port 1), and nothing else; the global Services come one at a
// time.
func kubeStateManifest(t *testing.T) string {
	t.Helper()
	link, err := kubeyaml.Marshal(federation.RenderLink(federation.Link{
		Gateway: "istio-system/cluster2", Namespace: "istio-system",
		Cluster: "cluster2", Network: "network2",
		Addresses: []string{"127.0.0.1"}, XDSPort: 1, HBONEPort: federation.DefaultHBONEPort,
	}))
	if err != nil {
		t.Fatal(err)
	}
	return `apiVersion: v1
kind: Namespace
metadata:
  name: istio-system
  labels:
    topology.istio.io/network: network1
---
apiVersion: v1
kind: Namespace
metadata:
  name: hello
---
` + string(link)
}

// globalServiceManifest is a global Service hello/name without endpoints
// (the global service exists all the same: the state table's "global /
// none" row), at cluster IP 10.96.3.<n>.
func globalServiceManifest(name string, n int) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata:
  name: %s
  namespace: hello
  labels:
    solo.io/service-scope: global
spec:
  clusterIP: 10.96.3.%[2]d
  selector: {app: %[1]s}
  ports: [{name: http, port: 80}]
`, name, n)
}

// TestKubernetesModeKeepsStateInTheAPI: in Kubernetes mode the VIPs of
// global services and the link states live in Secrets of the system
// namespace, and a restarted peerd (a rescheduled pod: nothing on its disk)
// gives every global hostname the VIP it had.
//
// The IPv4 range is squeezed to a /30 (two usable addresses) and the
// services are created in the reverse of their name order, so the VIPs
// depend on history: zeta and yank take both addresses and alpha, created
// last, gets none. A peerd that restarted without the saved allocations
// would hand them out in name order (alpha first), so this test fails
// unless the allocations come back from the API.
func TestKubernetesModeKeepsStateInTheAPI(t *testing.T) {
	kube := kubeharness.Start(t, kubeharness.Options{GatewayCRDs: true})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	apply := func(manifest string) {
		t.Helper()
		objs, err := discovery.DecodeManifests("test.yaml", []byte(manifest))
		if err != nil {
			t.Fatal(err)
		}
		if err := kube.Apply(ctx, objs); err != nil {
			t.Fatal(err)
		}
	}
	apply(kubeStateManifest(t))
	args := []string{"--cluster-name", cluster, "--kubeconfig", kube.Kubeconfig, "--vip-ipv4-range", "240.240.0.0/30",
		"--peer-sync-timeout", "1s"}
	first := startPeerd(t, peerdOptions{Args: args})
	z := connectZtunnel(t, ztunnel.Config{Target: first.PlaintextAddr, ClusterID: cluster, Network: "network1"})

	names := []string{"zeta", "yank", "alpha"} // the order of creation
	before := map[string][]string{}
	for i, name := range names {
		apply(globalServiceManifest(name, i+1))
		key := globalKey("hello", name)
		waitStateFor(t, z, waitTimeout, key+" with its VIPs", func(s *ztunnel.State) bool {
			return len(s.Services[key].GetAddresses()) > 0
		}, func() string { return strings.Join(vips(z.Services()[key]), ",") })
		before[name] = vips(z.Services()[key])
	}
	if v4 := ipv4Only(before["alpha"]); len(v4) != 0 {
		t.Fatalf("alpha got IPv4 VIP %v from a full /30; the test's premise does not hold (all: %v)", v4, before)
	}
	for _, name := range []string{"zeta", "yank"} {
		if len(ipv4Only(before[name])) != 1 {
			t.Fatalf("%s has VIPs %v, want one IPv4 VIP", name, before[name])
		}
	}
	first.Stop()

	secrets := kube.Kube.CoreV1().Secrets("istio-system")
	list, err := secrets.List(ctx, metav1.ListOptions{LabelSelector: kubestate.ManagedByLabel + "=" + kubestate.ManagedBy})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range list.Items {
		got = append(got, s.Name+" ("+s.Labels[kubestate.KindLabel]+")")
	}
	slices.Sort(got)
	want := []string{peers.LinkObjectName("cluster2") + " (" + peers.LinkStateKind + ")", "peerd-vips (vips)"}
	if !slices.Equal(got, want) {
		t.Errorf("peerd's Secrets in istio-system = %v, want %v", got, want)
	}

	second := startPeerd(t, peerdOptions{Args: args})
	fresh := connectZtunnel(t, ztunnel.Config{Target: second.PlaintextAddr, ClusterID: cluster, Network: "network1"})
	for _, name := range names {
		key := globalKey("hello", name)
		waitStateFor(t, fresh, waitTimeout, key+" with the VIPs it had before the restart", func(s *ztunnel.State) bool {
			return slices.Equal(vips(s.Services[key]), before[name])
		}, func() string {
			return strings.Join(vips(fresh.Services()[key]), ",") + " want " + strings.Join(before[name], ",")
		})
	}
}

func ipv4Only(vips []string) []string {
	var out []string
	for _, v := range vips {
		if !strings.Contains(v, ":") {
			out = append(out, v)
		}
	}
	return out
}

// TestKubernetesModeRestartDuringPartitionKeepsServing: a peerd in
// Kubernetes mode (cluster1, against a real API server) links to cluster2 of
// a file-mode mesh and imports its services; it restarts while cluster2's
// gateway blackholes everything. The link state it saved in the API lets the
// restarted process (a new pod: nothing on its disk) serve cluster2's
// services at once, within the TTL.
func TestKubernetesModeRestartDuringPartitionKeepsServing(t *testing.T) {
	kube := kubeharness.Start(t, kubeharness.Options{GatewayCRDs: true})
	m := startLinkedMesh(t, func(o *mesh.Options) {
		o.Clusters = o.Clusters[:2]
		o.StaleTTL = 10 * time.Minute
	})
	c1, c2 := m.Cluster("cluster1"), m.Cluster("cluster2")
	// The mesh's file-mode cluster1 gives the names, CA and manifests; the
	// peerd under test replaces it.
	c1.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := kube.ApplyDir(ctx, c1.Manifests); err != nil {
		t.Fatal(err)
	}
	objs, err := discovery.DecodeManifests("link.yaml", []byte(mesh.LinkGateway(c2, mesh.LinkOptions{})))
	if err != nil {
		t.Fatal(err)
	}
	if err := kube.Apply(ctx, objs); err != nil {
		t.Fatal(err)
	}
	args := func() []string {
		return []string{"--cluster-name", c1.Name, "--network", c1.Network, "--trust-domain", c1.TrustDomain,
			"--kubeconfig", kube.Kubeconfig, "--ca-dir", c1.CADir, "--listen", freePort(t),
			"--peer-stale-ttl", "10m", "--peer-sync-timeout", "3s", "--drain-duration", "0s"}
	}
	first := startPeerd(t, peerdOptions{Args: args()})
	z := connectZtunnel(t, ztunnel.Config{Target: first.PlaintextAddr, ClusterID: c1.Name, Network: c1.Network})
	greeter := globalKey("hello", "greeter") // exported by cluster2 only
	waitEndpointClusters(t, z, greeter, "cluster2")

	c2.Relay.Pause()
	first.Stop()
	second := startPeerd(t, peerdOptions{Args: args()})
	fresh := connectZtunnel(t, ztunnel.Config{Target: second.PlaintextAddr, ClusterID: c1.Name, Network: c1.Network})
	waitEndpointClusters(t, fresh, greeter, "cluster2")
	waitEndpointClusters(t, fresh, globalKey("hello", "echo"), "cluster1", "cluster2")

	c2.Relay.Resume()
	waitEndpointClusters(t, fresh, greeter, "cluster2")
}
