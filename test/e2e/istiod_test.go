package e2e

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/peerd-mesh/peerd/internal/ambient"
	"github.com/peerd-mesh/peerd/internal/discovery"
	securitypb "github.com/peerd-mesh/peerd/proto/istio/security"
	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
	kubeharness "github.com/peerd-mesh/peerd/test/kube"
	"github.com/peerd-mesh/peerd/test/mesh"
	"github.com/peerd-mesh/peerd/test/ztunnel"
)

// Issue 10 section 5 against a real istiod (pilot-discovery, built by
// hack/istiod-tools.sh) and a real kube-apiserver: a client of peerd in
// extension mode sees exactly what a client of istiod sees, resource for
// resource, plus the mesh's additions and amendments and nothing else, and
// loses nothing while istiod restarts. Skipped without the binary unless
// PEERD_ISTIOD_REQUIRED=1.

// istiodCluster has what istiod serves and peerd does not map itself: a
// waypoint (created as istiod's deployment controller would, which cannot
// run here), a Service using it, and (below) a ServiceEntry, a
// WorkloadEntry and an AuthorizationPolicy. echo is global for peerd
// (istiod ignores the label).
const istiodCluster = `apiVersion: v1
kind: Namespace
metadata: {name: apps, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Service
metadata:
  name: echo
  namespace: apps
  labels: {istio.io/use-waypoint: waypoint, solo.io/service-scope: global}
spec:
  clusterIP: 10.96.0.20
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata:
  name: echo-1
  namespace: apps
  labels: {app: echo}
  annotations: {ambient.istio.io/redirection: enabled}
spec:
  serviceAccountName: echo
  nodeName: node-a
  containers: [{name: echo, image: example.com/echo, ports: [{containerPort: 8080}]}]
status:
  phase: Running
  podIP: 10.1.0.11
  podIPs: [{ip: 10.1.0.11}]
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: apps}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata:
  name: waypoint
  namespace: apps
  labels: {gateway.istio.io/managed: istio.io-mesh-controller, gateway.networking.k8s.io/gateway-name: waypoint}
spec:
  clusterIP: 10.96.0.21
  selector: {gateway.networking.k8s.io/gateway-name: waypoint}
  ports: [{name: mesh, port: 15008, targetPort: 15008}]
---
apiVersion: v1
kind: Pod
metadata:
  name: waypoint-1
  namespace: apps
  labels: {gateway.istio.io/managed: istio.io-mesh-controller, gateway.networking.k8s.io/gateway-name: waypoint}
spec:
  serviceAccountName: waypoint
  nodeName: node-a
  containers: [{name: istio-proxy, image: example.com/proxy, ports: [{containerPort: 15008}]}]
status:
  phase: Running
  podIP: 10.1.0.12
  podIPs: [{ip: 10.1.0.12}]
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: waypoint-abcde
  namespace: apps
  labels: {kubernetes.io/service-name: waypoint}
addressType: IPv4
endpoints:
- addresses: [10.1.0.12]
  conditions: {ready: true}
  targetRef: {kind: Pod, namespace: apps, name: waypoint-1}
ports: [{name: mesh, port: 15008, protocol: TCP}]
`

var istiodObjects = []string{`apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: apps}
spec:
  hosts: [db.example.internal]
  addresses: [192.168.77.10]
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  location: MESH_INTERNAL
  resolution: STATIC
  workloadSelector: {labels: {app: db}}
`, `apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: db-vm, namespace: apps}
spec: {address: 10.2.0.5, labels: {app: db}, serviceAccount: db}
`, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-client, namespace: apps}
spec:
  selector: {matchLabels: {app: echo}}
  action: ALLOW
  rules: [{from: [{source: {principals: [cluster.local/ns/apps/sa/client]}}]}]
`}

const (
	istiodEcho      = "apps/echo.apps.svc.cluster.local"
	istiodEchoGlob  = "apps/echo.apps.mesh.internal"
	istiodDBService = "apps/db.example.internal"
	istiodVM        = cluster + "/networking.istio.io/WorkloadEntry/apps/db-vm"
	istiodPolicy    = "apps/allow-client"
)

// clientView is everything a ztunnel holds: addresses and policies.
type clientView struct {
	Addresses      map[string]*workloadpb.Address
	Authorizations map[string]*securitypb.Authorization
}

func viewOf(c *ztunnel.Client) clientView {
	return clientView{Addresses: held(c), Authorizations: c.Authorizations()}
}

// withMesh is what a client of peerd must hold given what a client of
// istiod holds: the same, every workload of the global echo Service also in
// the global service, plus the global service. The global key's ports and
// the global service (VIPs, ports, SANs, load balancing) come from a
// standalone peerd mapping the same objects itself, not from the peerd
// under test; a workload or service standalone lacks stays without it, so
// the comparison fails.
func withMesh(istiod, standalone clientView) clientView {
	out := clientView{Addresses: maps.Clone(istiod.Addresses), Authorizations: istiod.Authorizations}
	for name, a := range istiod.Addresses {
		w := a.GetWorkload()
		if _, ok := w.GetServices()[istiodEcho]; !ok {
			continue
		}
		ports, ok := standalone.Addresses[name].GetWorkload().GetServices()[istiodEchoGlob]
		if !ok {
			continue
		}
		w = proto.CloneOf(w)
		w.Services[istiodEchoGlob] = proto.CloneOf(ports)
		out.Addresses[name] = &workloadpb.Address{Type: &workloadpb.Address_Workload{Workload: w}}
	}
	if g := standalone.Addresses[istiodEchoGlob]; g != nil {
		out.Addresses[istiodEchoGlob] = g
	}
	return out
}

// startStandalone runs a peerd that maps the API server's objects itself
// (no istiod), the independent source of what the mesh adds, and returns a
// client of it once it serves echo's global service.
func startStandalone(t *testing.T, kubeconfig string) *ztunnel.Client {
	t.Helper()
	s := startPeerd(t, peerdOptions{Args: []string{"--cluster-name", cluster, "--kubeconfig", kubeconfig, "--peer-sync-timeout", "1s"}})
	sc := connectZtunnel(t, ztunnel.Config{Target: s.PlaintextAddr, ClusterID: cluster})
	waitView(t, "standalone peerd serving "+istiodEchoGlob, func() bool { return held(sc)[istiodEchoGlob] != nil },
		func() string { return strings.Join(slices.Sorted(maps.Keys(held(sc))), "\n") })
	return sc
}

// waitView polls until cond holds for the client's view; on timeout it
// fails with what describe says. A bound for a stuck control plane, not a
// latency assertion.
func waitView(t *testing.T, what string, cond func() bool, describe func() string) {
	t.Helper()
	deadline := time.Now().Add(peeringWait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached within %s:\n%s", what, peeringWait, describe())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startIstiodCluster starts an API server holding istiodCluster's objects
// and a real istiod beside it; ctx bounds the test.
func startIstiodCluster(t *testing.T) (*kubeharness.Cluster, *kubeharness.Istiod, context.Context) {
	t.Helper()
	kube := kubeharness.Start(t, kubeharness.Options{GatewayCRDs: true})
	istiod := kube.StartIstiod(t, kubeharness.IstiodOptions{ClusterID: cluster})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	objs, err := discovery.DecodeManifests("istiod-cluster.yaml", []byte(istiodCluster))
	if err != nil {
		t.Fatal(err)
	}
	if err := kube.Apply(ctx, objs); err != nil {
		t.Fatal(err)
	}
	return kube, istiod, ctx
}

func TestExtensionModeBesideARealIstiod(t *testing.T) {
	kubeharness.RequireIstiod(t) // before the API server: a skip should cost nothing
	kube, istiod, ctx := startIstiodCluster(t)
	for _, m := range istiodObjects {
		if err := kube.ApplyIstio(ctx, m); err != nil {
			t.Fatal(err)
		}
	}

	u := connectZtunnel(t, ztunnel.Config{Target: istiod.GRPCAddr, ClusterID: cluster})
	// istiod maps asynchronously: wait until its own client holds every
	// kind the relay must not lose, so the comparison below is not vacuous.
	waitView(t, "istiod's client holding the WorkloadEntry, the ServiceEntry, the policy and echo's waypoint", func() bool {
		v := viewOf(u)
		return v.Addresses[istiodVM] != nil && v.Addresses[istiodDBService] != nil && v.Authorizations[istiodPolicy] != nil &&
			v.Addresses[istiodEcho].GetService().GetWaypoint() != nil
	}, func() string {
		return strings.Join(slices.Sorted(maps.Keys(viewOf(u).Addresses)), "\n") + "\npolicies: " + strings.Join(slices.Sorted(maps.Keys(u.Authorizations())), ",")
	})

	sc := startStandalone(t, kube.Kubeconfig)
	p := startPeerd(t, peerdOptions{Args: []string{"--cluster-name", cluster, "--kubeconfig", kube.Kubeconfig,
		"--istiod-address", istiod.GRPCAddr, "--peer-sync-timeout", "1s"}})
	c := connectZtunnel(t, ztunnel.Config{Target: p.PlaintextAddr, ClusterID: cluster})

	// (a) + (b): resource for resource what istiod's client holds, plus the
	// global service and its key on echo's workloads, and nothing else.
	same := func(u *ztunnel.Client) func() bool {
		return func() bool {
			return cmp.Equal(withMesh(viewOf(u), viewOf(sc)), viewOf(c), protocmp.Transform())
		}
	}
	diff := func(u *ztunnel.Client) func() string {
		return func() string {
			return "(-istiod+mesh +peerd)\n" + cmp.Diff(withMesh(viewOf(u), viewOf(sc)), viewOf(c), protocmp.Transform())
		}
	}
	waitView(t, "peerd's client holding istiod's resources plus the mesh", same(u), diff(u))
	t.Logf("peerd's client holds %d addresses and %d policies, as istiod's client plus the mesh: %s",
		len(held(c)), len(c.Authorizations()), strings.Join(slices.Sorted(maps.Keys(held(c))), ", "))
	amended := 0
	for _, w := range c.Workloads() {
		if _, ok := w.GetServices()[istiodEchoGlob]; ok {
			amended++
		}
	}
	if amended == 0 {
		t.Errorf("no workload joined the global service")
	}
	if st := c.Stats(); st.NACKs != 0 {
		t.Errorf("peerd's client NACKed: %s", st.LastNACK)
	}

	// On demand, peerd answers as istiod does: the same names for a
	// ServiceEntry host, a Service, the waypoint and keys neither serves,
	// and the bodies istiod's plus the mesh's. Not here: "network/ip" and
	// workload-uid keys, which this istiod answers under other names (the
	// key only as an alias, it seems), so the client's lookup never
	// completes against istiod itself.
	onDemandLikeIstiod(t, ctx, istiod.GRPCAddr, p.PlaintextAddr, sc, []string{
		istiodDBService, istiodEcho, "apps/waypoint.apps.svc.cluster.local",
		"apps/nothing.apps.svc.cluster.local", "/10.9.9.9",
	})

	// (c) istiod killed: nothing lost at peerd's client, stale reported.
	// From the stop until convergence, the client's removals must be
	// exactly those of the objects deleted meanwhile: a resource dropped
	// and re-added (a resync from scratch) shows here, not in the end state.
	before := viewOf(c)
	mark := len(c.Removed())
	istiod.Stop()
	waitReadyzContains(t, p, "istiod: stale since")
	if d := cmp.Diff(before, viewOf(c), protocmp.Transform()); d != "" {
		t.Errorf("peerd's client lost state while istiod was down (-before +now):\n%s", d)
	}
	// Changes while istiod is down, seen once it is back.
	if err := kube.DeleteIstio(ctx, "WorkloadEntry", "apps", "db-vm"); err != nil {
		t.Fatal(err)
	}
	if err := kube.DeleteIstio(ctx, "AuthorizationPolicy", "apps", "allow-client"); err != nil {
		t.Fatal(err)
	}
	if err := istiod.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitReadyzContains(t, p, "istiod: synced")
	u2 := connectZtunnel(t, ztunnel.Config{Target: istiod.GRPCAddr, ClusterID: cluster})
	waitView(t, "istiod's new client without the deleted WorkloadEntry and AuthorizationPolicy", func() bool {
		return held(u2)[istiodVM] == nil && u2.Authorizations()[istiodPolicy] == nil && held(u2)[istiodDBService] != nil
	}, func() string { return strings.Join(slices.Sorted(maps.Keys(held(u2))), "\n") })
	waitView(t, "peerd's client converged after istiod's restart", same(u2), diff(u2))
	removed := slices.Sorted(slices.Values(c.Removed()[mark:]))
	if want := []string{istiodPolicy, istiodVM}; !slices.Equal(removed, want) {
		t.Errorf("peerd's client saw removals %q from istiod's stop to convergence, want exactly the deleted %q", removed, want)
	}
}

// onDemandLikeIstiod looks each key up at istiod and at peerd on on-demand
// subscriptions and requires the same names in both answers, and for each
// name peerd's body to be istiod's plus the mesh's (as standalone peerd
// maps it).
func onDemandLikeIstiod(t *testing.T, ctx context.Context, istiodAddr, peerdAddr string, standalone *ztunnel.Client, keys []string) {
	t.Helper()
	uo := ztunnel.Start(t, ztunnel.Config{Target: istiodAddr, ClusterID: cluster, OnDemand: true})
	co := ztunnel.Start(t, ztunnel.Config{Target: peerdAddr, ClusterID: cluster, OnDemand: true})
	for _, key := range keys {
		lctx, cancel := context.WithTimeout(ctx, waitTimeout)
		fromIstiod, err := uo.Lookup(lctx, key)
		if err != nil {
			cancel()
			t.Errorf("on-demand %s at istiod: %v", key, err)
			continue
		}
		fromPeerd, err := co.Lookup(lctx, key)
		cancel()
		if err != nil {
			t.Errorf("on-demand %s at peerd: %v", key, err)
			continue
		}
		slices.Sort(fromIstiod)
		slices.Sort(fromPeerd)
		if !slices.Equal(fromIstiod, fromPeerd) {
			t.Errorf("on-demand %s: istiod answers %q, peerd %q", key, fromIstiod, fromPeerd)
			continue
		}
		want := withMesh(clientView{Addresses: held(uo)}, viewOf(standalone)).Addresses
		got := held(co)
		for _, name := range fromPeerd {
			if d := cmp.Diff(want[name], got[name], protocmp.Transform()); d != "" {
				t.Errorf("on-demand %s: %s differs from istiod's plus the mesh (-want +peerd):\n%s", key, name, d)
			}
		}
		t.Logf("on-demand %s: istiod and peerd both answer %q", key, fromPeerd)
	}
}

// TestExtensionModeInALinkedMeshBesideARealIstiod is section 5 (b) with
// real links: cluster1 of the example mesh relays a real istiod that holds
// cluster1's objects, and is linked to cluster2 and cluster3. Its client
// holds exactly istiod's resources, amended only as the mesh amends them,
// plus resources that are mesh additions by name, and nothing else.
func TestExtensionModeInALinkedMeshBesideARealIstiod(t *testing.T) {
	kubeharness.RequireIstiod(t)
	kube := kubeharness.Start(t, kubeharness.Options{GatewayCRDs: true})
	specs := mesh.ExampleClusters(repoPath("examples", "multicluster"))
	c1spec := specs[0]
	istiod := kube.StartIstiod(t, kubeharness.IstiodOptions{ClusterID: c1spec.Name, TrustDomain: c1spec.Name + ".local"})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := kube.ApplyDir(ctx, c1spec.Manifests); err != nil {
		t.Fatal(err)
	}
	m := startLinkedMesh(t, func(o *mesh.Options) {
		o.Clusters[0].Args = append(o.Clusters[0].Args, "--istiod-address", istiod.GRPCAddr)
	})
	c1 := m.Cluster(c1spec.Name)
	u := connectZtunnel(t, ztunnel.Config{Target: istiod.GRPCAddr, ClusterID: c1.Name, Network: c1.Network, NodeName: "node-a"})
	c := connectZtunnel(t, c1.ZtunnelConfig("node-a"))
	cfg := ambient.Config{ClusterID: c1.Name}
	// The global-only Services of cluster1 (20-hello.yaml, 30-shop.yaml) and
	// their endpoints' identities in cluster2 and cluster3, where the same
	// Services are global.
	scopes := readMeshScopes(ctx, t, kube, map[string][]string{
		"hello/frontend.hello.svc.cluster.local": {"spiffe://cluster2.local/ns/hello/sa/frontend", "spiffe://cluster3.local/ns/hello/sa/frontend"},
		"shop/ledger.shop.svc.cluster.local":     {"spiffe://cluster2.local/ns/shop/sa/ledger"},
	})

	const split2 = "/peerd/SplitHorizon/cluster2/hello/echo"
	var problems []string
	waitView(t, "peerd's client holding istiod's resources, amended, plus the mesh", func() bool {
		iv, pv := viewOf(u), viewOf(c)
		problems = meshProblems(cfg, scopes, iv, pv)
		return len(problems) == 0 && pv.Addresses[c1.Name+split2] != nil && pv.Addresses["hello/echo.hello.mesh.internal"] != nil
	}, func() string { return strings.Join(problems, "\n") })

	amended := 0
	for name, w := range c.Workloads() {
		if _, ok := w.GetServices()["hello/echo.hello.mesh.internal"]; ok && !ambient.IsMeshAddition(cfg, held(c)[name]) {
			amended++
		}
	}
	if amended == 0 {
		t.Errorf("no workload from istiod joined hello/echo's global service")
	}
	additions := 0
	for _, a := range held(c) {
		if ambient.IsMeshAddition(cfg, a) {
			additions++
		}
	}
	t.Logf("istiod's client holds %d addresses; peerd's %d: %d mesh additions, %d of istiod's workloads in hello/echo's global service",
		len(held(u)), len(held(c)), additions, amended)
}

// meshScopes is what the test knows, independently of peerd, about the
// linked cluster's global Services: the scope of each by its services-map
// key (also its resource name, "<ns>/<name>.<ns>.svc.cluster.local"), read
// from the API server (a Service's own solo.io/service-scope label, else its
// namespace's), and the SANs each global-only Service must gain: the
// identities of the remote clusters' endpoints of the same Service.
type meshScopes struct {
	scope      map[string]string
	remoteSANs map[string][]string
}

// readMeshScopes resolves the scope of every Service the API server holds.
func readMeshScopes(ctx context.Context, t *testing.T, kube *kubeharness.Cluster, remoteSANs map[string][]string) meshScopes {
	t.Helper()
	nss, err := kube.Kube.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nsScope := map[string]string{}
	for _, ns := range nss.Items {
		nsScope[ns.Name] = ns.Labels[ambient.LabelServiceScope]
	}
	svcs, err := kube.Kube.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m := meshScopes{scope: map[string]string{}, remoteSANs: remoteSANs}
	for _, s := range svcs.Items {
		sc, ok := s.Labels[ambient.LabelServiceScope]
		if !ok {
			sc = nsScope[s.Namespace]
		}
		if sc == ambient.ScopeGlobal || sc == ambient.ScopeGlobalOnly {
			m.scope[plainKey(s.Namespace, s.Name)] = sc
		}
	}
	for key := range remoteSANs {
		if m.scope[key] != ambient.ScopeGlobalOnly {
			t.Fatalf("%s: expected remote SANs for a Service that is not global-only (scope %q)", key, m.scope[key])
		}
	}
	return m
}

// meshProblems lists how peerd's view differs from istiod's beyond what the
// mesh may do, and what the mesh must do but did not: a name istiod serves
// must be served as istiod serves it, except that a workload of a global or
// global-only Service carries the global key too (with the plain key's
// ports; it must), and a global-only Service gains exactly the remote SANs
// (it must) and may take a load_balancing istiod left unset; every other
// name must be a mesh addition.
func meshProblems(cfg ambient.Config, scopes meshScopes, istiod, peerd clientView) []string {
	var problems []string
	if d := cmp.Diff(istiod.Authorizations, peerd.Authorizations, protocmp.Transform()); d != "" {
		problems = append(problems, "authorizations differ (-istiod +peerd):\n"+d)
	}
	for name := range istiod.Addresses {
		if peerd.Addresses[name] == nil {
			problems = append(problems, name+": served by istiod, missing at peerd")
		}
	}
	for name, p := range peerd.Addresses {
		i := istiod.Addresses[name]
		if i == nil {
			if !ambient.IsMeshAddition(cfg, p) {
				problems = append(problems, name+": served by peerd, neither istiod's nor a mesh addition")
			}
			continue
		}
		stripped, missing := withoutAmendments(scopes, p, i)
		problems = append(problems, missing...)
		if d := cmp.Diff(i, stripped, protocmp.Transform()); d != "" {
			problems = append(problems, name+": differs from istiod's beyond the mesh's amendments (-istiod +peerd):\n"+d)
		}
	}
	slices.Sort(problems)
	return problems
}

// withoutAmendments undoes in p (peerd's version of a resource) what the
// mesh must add to i (istiod's) and says what it should have added but did
// not: on a workload, the global key of each global Service i lists, with
// the same ports; on a global-only Service, the remote SANs and a
// load_balancing where i has none. Anything else peerd changed is left in
// place for the caller's comparison to find.
func withoutAmendments(scopes meshScopes, p, i *workloadpb.Address) (*workloadpb.Address, []string) {
	p = proto.CloneOf(p)
	var missing []string
	if w := p.GetWorkload(); w != nil {
		for plain, ports := range i.GetWorkload().GetServices() {
			if scopes.scope[plain] == "" {
				continue
			}
			ns, host, _ := strings.Cut(plain, "/")
			name, _, _ := strings.Cut(host, ".")
			key := globalKey(ns, name)
			if _, own := i.GetWorkload().GetServices()[key]; own {
				continue
			}
			got, ok := w.GetServices()[key]
			if !ok {
				missing = append(missing, fmt.Sprintf("%s: workload of global %s lacks the key %s", w.GetUid(), plain, key))
				continue
			}
			if proto.Equal(got, ports) {
				delete(w.Services, key)
			}
		}
	}
	if s := p.GetService(); s != nil && scopes.scope[p.GetService().GetNamespace()+"/"+s.GetHostname()] == ambient.ScopeGlobalOnly {
		name := s.GetNamespace() + "/" + s.GetHostname()
		var extra []string
		s.SubjectAltNames = slices.DeleteFunc(s.SubjectAltNames, func(san string) bool {
			if slices.Contains(i.GetService().GetSubjectAltNames(), san) {
				return false
			}
			extra = append(extra, san)
			return true
		})
		if len(s.SubjectAltNames) == 0 {
			s.SubjectAltNames = nil
		}
		slices.Sort(extra)
		if want := slices.Sorted(slices.Values(scopes.remoteSANs[name])); !slices.Equal(extra, want) {
			missing = append(missing, fmt.Sprintf("%s: global-only Service gained SANs %q, want the remote endpoints' %q", name, extra, want))
		}
		if i.GetService().GetLoadBalancing() == nil {
			s.LoadBalancing = nil
		}
	}
	return p, missing
}

// TestExtensionModeOverTLSToARealIstiod: peerd reaches istiod as a ztunnel
// outside istiod's pod does: TLS to its secure port, istiod's root from the
// istio-ca-root-cert ConfigMap, and a service-account token with audience
// istio-ca that istiod reviews with the API server. A token istiod does not
// accept leaves peerd unready, saying why.
func TestExtensionModeOverTLSToARealIstiod(t *testing.T) {
	kubeharness.RequireIstiod(t)
	kube, istiod, ctx := startIstiodCluster(t)

	sa := kube.Kube.CoreV1().ServiceAccounts(kubeharness.IstioSystem)
	if _, err := sa.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "peerd"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	token, err := sa.CreateToken(ctx, "peerd", &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{Audiences: []string{"istio-ca"}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var root string
	waitView(t, "istiod's istio-ca-root-cert ConfigMap", func() bool {
		cm, err := kube.Kube.CoreV1().ConfigMaps(kubeharness.IstioSystem).Get(ctx, "istio-ca-root-cert", metav1.GetOptions{})
		root = cm.Data["root-cert.pem"]
		return err == nil && root != ""
	}, func() string { return "" })
	dir := t.TempDir()
	rootFile, tokenFile := filepath.Join(dir, "root-cert.pem"), filepath.Join(dir, "istio-token")
	writeFile(t, rootFile, root)
	writeFile(t, tokenFile, token.Status.Token)

	args := []string{"--cluster-name", cluster, "--kubeconfig", kube.Kubeconfig, "--peer-sync-timeout", "1s",
		"--istiod-address", istiod.SecureGRPCAddr, "--istiod-tls", "--istiod-ca-file", rootFile, "--istiod-token-file", tokenFile}
	sc := startStandalone(t, kube.Kubeconfig)
	p := startPeerd(t, peerdOptions{Args: args})
	waitReadyzContains(t, p, "istiod: synced")
	u := connectZtunnel(t, ztunnel.Config{Target: istiod.GRPCAddr, ClusterID: cluster})
	c := connectZtunnel(t, ztunnel.Config{Target: p.PlaintextAddr, ClusterID: cluster})
	waitView(t, "peerd's client holding what istiod's holds, plus the mesh", func() bool {
		return cmp.Equal(withMesh(viewOf(u), viewOf(sc)), viewOf(c), protocmp.Transform())
	}, func() string {
		return cmp.Diff(withMesh(viewOf(u), viewOf(sc)), viewOf(c), protocmp.Transform())
	})

	// A token that is not a service account's: istiod refuses the stream.
	badToken := filepath.Join(dir, "bad-token")
	writeFile(t, badToken, "not-a-token")
	bad := startPeerd(t, peerdOptions{NoWait: true, Args: append(slices.Clone(args[:len(args)-1]), badToken)})
	waitReadyzContains(t, bad, "Unauthenticated")
	code, body := bad.get("/readyz")
	if code == http.StatusOK || !strings.Contains(body, "istiod: not synced yet") {
		t.Errorf("/readyz %d with a token istiod refuses:\n%s", code, body)
	}
	t.Logf("/readyz with a refused token:\n%s", body)
}
