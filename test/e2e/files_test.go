package e2e

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/peerd-mesh/peerd/internal/ambient"
	"github.com/peerd-mesh/peerd/internal/discovery"
	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
	"github.com/peerd-mesh/peerd/test/ztunnel"
)

const cluster = "cluster1"

// expectedAddresses maps a manifest directory in-process with the same
// packages peerd uses: what a wildcard client must end up holding.
func expectedAddresses(t *testing.T, dir string) map[string]*workloadpb.Address {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
	index := discovery.NewIndex()
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		decoded, err := discovery.DecodeManifests(f, data)
		if err != nil {
			t.Fatal(err)
		}
		if err := index.ReplaceFile("expected", f, decoded); err != nil {
			t.Fatal(err)
		}
	}
	cfg := ambient.Config{ClusterID: cluster, TrustDomain: "cluster.local", DomainSuffix: "cluster.local", SystemNamespace: "istio-system"}
	out := ambient.Build(cfg, ambient.Inputs(index.Snapshot()))
	m := map[string]*workloadpb.Address{}
	for _, a := range out.Addresses {
		m[ambient.ResourceName(a)] = a
	}
	return m
}

// held returns what the client holds as Address resources by name.
func held(c *ztunnel.Client) map[string]*workloadpb.Address {
	m := map[string]*workloadpb.Address{}
	for name, w := range c.Workloads() {
		m[name] = &workloadpb.Address{Type: &workloadpb.Address_Workload{Workload: w}}
	}
	for name, s := range c.Services() {
		m[name] = &workloadpb.Address{Type: &workloadpb.Address_Service{Service: s}}
	}
	return m
}

func TestWildcardClientGetsTheExampleMesh(t *testing.T) {
	dir := copyDir(t, repoPath("examples", "cluster1"))
	p := startPeerd(t, peerdOptions{Args: []string{"--cluster-name", cluster, "--config-dir", dir}})
	c := connectZtunnel(t, ztunnel.Config{Target: p.PlaintextAddr, ClusterID: cluster, Network: "network1"})

	want := expectedAddresses(t, dir)
	if diff := cmp.Diff(want, held(c), protocmp.Transform()); diff != "" {
		t.Fatalf("wildcard client holds something else than the model (-model +client):\n%s", diff)
	}
	if st := c.Stats(); st.NACKs != 0 {
		t.Fatalf("client NACKed a response: %s", st.LastNACK)
	}

	// Spot checks that tie the model to the manifests, so the comparison
	// above cannot pass on an empty or wrong model.
	workloads, services := c.Workloads(), c.Services()
	echo := services["apps/echo.apps.svc.cluster.local"]
	if echo == nil {
		t.Fatalf("no echo service; services: %v", keys(services))
	}
	if got := vips(echo); !cmp.Equal(got, []string{"network1/10.96.0.10"}) {
		t.Errorf("echo VIPs = %v, want [network1/10.96.0.10]", got)
	}
	ready := workloads["cluster1//Pod/apps/echo-7d9f8b6c4d-abcde"]
	if ready == nil {
		t.Fatalf("no ready echo pod; workloads: %v", keys(workloads))
	}
	if ready.TunnelProtocol != workloadpb.TunnelProtocol_HBONE || ready.Status != workloadpb.WorkloadStatus_HEALTHY ||
		ready.WorkloadName != "echo" || ready.Network != "network1" || ready.Node != "node-a" ||
		ready.GetLocality().GetZone() != "us-east-1a" || ready.GetLocality().GetSubzone() != "rack-1" {
		t.Errorf("ready echo pod mapped wrong: %v", ready)
	}
	var target uint32
	for _, port := range ready.Services["apps/echo.apps.svc.cluster.local"].GetPorts() {
		if port.ServicePort == 80 {
			target = port.TargetPort
		}
	}
	if target != 8080 {
		t.Errorf("named target port http of the echo pod resolved to %d, want 8080", target)
	}
	if w := workloads["cluster1//Pod/apps/echo-7d9f8b6c4d-fghij"]; w.GetStatus() != workloadpb.WorkloadStatus_UNHEALTHY {
		t.Errorf("not-ready pod status = %v, want UNHEALTHY", w.GetStatus())
	}
	if w := workloads["cluster1//Pod/apps/echo-canary"]; w == nil || w.TunnelProtocol != workloadpb.TunnelProtocol_NONE {
		t.Errorf("a labelled but uncaptured pod must not be HBONE: %v", w)
	}
	for _, gone := range []string{"cluster1//Pod/apps/echo-migrate-x7k2p", "cluster1//Pod/apps/echo-pending"} {
		if _, ok := workloads[gone]; ok {
			t.Errorf("%s is finished or has no IP and must be dropped", gone)
		}
	}
	if _, ok := workloads["cluster1/discovery.k8s.io/EndpointSlice/apps/external-db-manual/192.168.50.10"]; !ok {
		t.Errorf("the selector-less service's endpoint is not a workload; workloads: %v", keys(workloads))
	}
}

func TestFileChangesReachTheClient(t *testing.T) {
	dir := copyDir(t, repoPath("examples", "cluster1"))
	p := startPeerd(t, peerdOptions{Args: []string{"--cluster-name", cluster, "--config-dir", dir}})
	c := connectZtunnel(t, ztunnel.Config{Target: p.PlaintextAddr, ClusterID: cluster})

	const uid = "cluster1//Pod/legacy/web-2"
	pod := `apiVersion: v1
kind: Pod
metadata: {name: web-2, namespace: legacy, labels: {app: web}}
spec:
  nodeName: node-b
  containers: [{name: web, image: example.com/web:1.0, ports: [{name: web, containerPort: 8000}]}]
status:
  phase: Running
  podIP: 10.244.2.31
  podIPs: [{ip: 10.244.2.31}]
  conditions: [{type: Ready, status: "True"}]
`
	file := filepath.Join(dir, "40-web-2.yaml")

	start := time.Now()
	writeFile(t, file, pod)
	waitState(t, c, "new pod", func(s *ztunnel.State) bool { return s.Workloads[uid] != nil })
	t.Logf("file write to client update: %v", time.Since(start))

	writeFile(t, file, strings.Replace(pod, `status: "True"`, `status: "False"`, 1))
	waitState(t, c, "pod turns unhealthy", func(s *ztunnel.State) bool {
		return s.Workloads[uid].GetStatus() == workloadpb.WorkloadStatus_UNHEALTHY
	})

	// A bad edit keeps the file's last good objects and is reported.
	writeFile(t, file, pod+"---\napiVersion: v1\nkind: Service\nmetadata: {name: broken, namespace: legacy}\nspec: {ports: [{port: 80}]}\n")
	waitReadyzContains(t, p, "spec.clusterIP")
	if w := c.Workloads()[uid]; w.GetStatus() != workloadpb.WorkloadStatus_UNHEALTHY {
		t.Fatalf("a bad edit must keep the last good objects; the pod is now %v", w)
	}

	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	waitState(t, c, "pod removed", func(s *ztunnel.State) bool { return s.Workloads[uid] == nil })
}

func TestReconnectWithStaleNamesGetsRemovals(t *testing.T) {
	dir := copyDir(t, repoPath("examples", "cluster1"))
	p := startPeerd(t, peerdOptions{Args: []string{"--cluster-name", cluster, "--config-dir", dir}})
	c := connectZtunnel(t, ztunnel.Config{Target: p.PlaintextAddr, ClusterID: cluster, InitialBackoff: 10 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	const legacyPod = "cluster1//Pod/legacy/web-1"
	if c.Workloads()[legacyPod] == nil {
		t.Fatalf("no %s before the restart", legacyPod)
	}
	streams := c.Stats().Streams

	// peerd goes away; while it is down the legacy namespace's objects are
	// deleted. The client keeps its state and reconnects to the new peerd
	// with every name it holds (empty versions).
	p.Stop()
	if err := os.Remove(filepath.Join(dir, "20-legacy.yaml")); err != nil {
		t.Fatal(err)
	}
	startPeerd(t, peerdOptions{Args: []string{"--cluster-name", cluster, "--config-dir", dir}, PlaintextAddr: p.PlaintextAddr})
	waitState(t, c, "reconnect", func(s *ztunnel.State) bool { return s.Streams > streams && s.Ready })
	waitState(t, c, "stale names removed", func(s *ztunnel.State) bool {
		return s.Workloads[legacyPod] == nil && s.Services["legacy/web.legacy.svc.cluster.local"] == nil
	})
	if diff := cmp.Diff(expectedAddresses(t, dir), held(c), protocmp.Transform()); diff != "" {
		t.Fatalf("after reconnect the client differs from the model (-model +client):\n%s", diff)
	}
}

func TestOnDemandLookups(t *testing.T) {
	dir := copyDir(t, repoPath("examples", "cluster1"))
	p := startPeerd(t, peerdOptions{Args: []string{"--cluster-name", cluster, "--config-dir", dir}})
	c := connectZtunnel(t, ztunnel.Config{Target: p.PlaintextAddr, ClusterID: cluster, OnDemand: true})
	if n := len(c.Workloads()) + len(c.Services()); n != 0 {
		t.Fatalf("an on-demand client holds %d addresses before asking for any", n)
	}
	ctx := withTimeout(t, waitTimeout)

	names, err := c.Lookup(ctx, "network1/10.244.1.10")
	if err != nil {
		t.Fatal(err)
	}
	const uid = "cluster1//Pod/apps/echo-7d9f8b6c4d-abcde"
	if !slices.Contains(names, uid) || c.Workloads()[uid] == nil {
		t.Fatalf("IP lookup answered %v; want the workload %s held", names, uid)
	}
	// A Service is answered as istiod's lookup answers it: the Service and
	// every workload that lists it.
	const echo = "apps/echo.apps.svc.cluster.local"
	if _, err := c.Lookup(ctx, echo); err != nil {
		t.Fatal(err)
	}
	want := []string{uid, echo}
	for name, a := range expectedAddresses(t, dir) {
		if _, ok := a.GetWorkload().GetServices()[echo]; ok && name != uid {
			want = append(want, name)
		}
	}
	if len(want) < 3 {
		t.Fatalf("the example's echo service has %d endpoints; the test needs at least two", len(want)-1)
	}
	if _, err := c.Lookup(ctx, "network1/10.99.99.99"); err != nil {
		t.Fatalf("a lookup of an unknown IP must complete (with a removal): %v", err)
	}
	var got []string
	for name := range held(c) {
		got = append(got, name)
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("on-demand client holds %v, want exactly what it asked for and the echo service's endpoints %v", got, want)
	}
}

func TestListenWithoutCADirFailsClearly(t *testing.T) {
	p := startPeerd(t, peerdOptions{Args: []string{"--cluster-name", cluster, "--config-dir", repoPath("examples", "cluster1"), "--listen", "127.0.0.1:0"}, NoWait: true})
	log := p.waitExit(t)
	if !strings.Contains(log, "--ca-dir") {
		t.Fatalf("peerd with --listen and no --ca-dir must fail naming --ca-dir; log:\n%s", log)
	}
}

func TestReadyzAndMetricsSayThereIsNoPolicySource(t *testing.T) {
	p := startPeerd(t, peerdOptions{Args: []string{"--cluster-name", cluster, "--config-dir", repoPath("examples", "cluster1")}})
	_, body := p.get("/readyz")
	if !strings.Contains(body, "authorization") {
		t.Errorf("/readyz does not mention the missing authorization source:\n%s", body)
	}
	if v, ok := p.metric(t, "peerd_authorization_source_missing"); !ok || v != 1 {
		t.Errorf("peerd_authorization_source_missing = %v (present: %v), want 1", v, ok)
	}
	if !strings.Contains(p.Logs(), "no authorization policy source") {
		t.Errorf("no start-up warning about the missing authorization source")
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	// Write then rename, as editors and ConfigMap updates do, so the reader
	// never sees half a file.
	tmp := path + ".tmp~"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func waitReadyzContains(t *testing.T, p *peerdProcess, text string) {
	t.Helper()
	waitFor(t, "/readyz mentioning "+text, func() bool {
		_, body := p.get("/readyz")
		return strings.Contains(body, text)
	})
}

func vips(s *workloadpb.Service) []string {
	var out []string
	for _, a := range s.Addresses {
		ip, _ := netip.AddrFromSlice(a.Address)
		out = append(out, a.Network+"/"+ip.String())
	}
	return out
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func TestMaxConnectionAgeMakesClientsReconnect(t *testing.T) {
	p := startPeerd(t, peerdOptions{Args: []string{"--cluster-name", cluster, "--config-dir", repoPath("examples", "cluster1"), "--max-connection-age", "1s"}})
	c := connectZtunnel(t, ztunnel.Config{Target: p.PlaintextAddr, ClusterID: cluster})
	workloads := len(c.Workloads())
	// The server closes the connection after about a second plus the grace
	// period; the client reconnects on its own and is in sync again.
	waitState(t, c, "a second stream after the connection aged out", func(s *ztunnel.State) bool {
		return s.Streams >= 2 && s.Ready && len(s.Workloads) == workloads
	})
}
