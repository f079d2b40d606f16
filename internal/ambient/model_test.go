package ambient

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/peerd-mesh/peerd/internal/federation"
	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
	federationpb "github.com/peerd-mesh/peerd/proto/peerd/federation/v1"
)

// Resource names of the scenario's outputs.
const (
	nameEchoA   = testCluster + "//Pod/mesh/echo-a"
	nameEchoB   = testCluster + "//Pod/mesh/echo-b"
	nameWebPod  = testCluster + "//Pod/plain/web"
	nameEchoSvc = "mesh/echo.mesh.svc.cluster.local"
	nameWebSvc  = "plain/web.plain.svc.cluster.local"
	nameDBSvc   = "plain/db.plain.svc.cluster.local"
	nameDBX     = testCluster + "/discovery.k8s.io/EndpointSlice/plain/db-x/192.168.0.9"
)

func upsert(obj runtime.Object) Change {
	if is, ok := obj.(*federation.ImportedService); ok {
		return Change{Ref: ObjectRef{Kind: KindImportedService, Cluster: is.Cluster, Namespace: is.Namespace, Name: is.Name}, Object: is}
	}
	m := obj.(metav1.Object)
	var kind string
	switch obj.(type) {
	case *corev1.Namespace:
		kind = KindNamespace
	case *corev1.Node:
		kind = KindNode
	case *corev1.Pod:
		kind = KindPod
	case *corev1.Service:
		kind = KindService
	case *discoveryv1.EndpointSlice:
		kind = KindEndpointSlice
	case *gatewayv1.Gateway:
		kind = KindGateway
	}
	return Change{Ref: objectRef(kind, m.GetNamespace(), m.GetName()), Object: obj}
}

func deleted(kind, ns, name string) Change {
	return Change{Ref: objectRef(kind, ns, name)}
}

func deltaNames(d Delta) (upserts, deletes []string) {
	for _, a := range d.Upserts {
		upserts = append(upserts, ResourceName(a))
	}
	return upserts, d.Deletes
}

// TestModelDependencies is the dependency table of Model's doc comment: each
// row changes one object of the scenario and lists exactly the resources
// that must be pushed; anything else pushed is a failure.
func TestModelDependencies(t *testing.T) {
	sc := scenario()
	n1 := sc.Nodes[0]
	echoA := sc.Pods[0]
	echoSvc, webSvc := sc.Services[0], sc.Services[1]
	dbx := sc.EndpointSlices[0]
	system, meshNS := sc.Namespaces[0], sc.Namespaces[1]
	tests := []struct {
		name    string
		change  []Change
		upserts []string
		deletes []string
	}{
		{
			name:    "pod Ready condition -> its workload",
			change:  []Change{upsert(pod("mesh", "echo-a", captured(), onNode("n1"), podLabels("app", "echo"), podIPs("10.0.0.2", "fd00::2"), containerPorts(tcpPort("web", 8080)), podReadyStatus(corev1.ConditionFalse)))},
			upserts: []string{nameEchoA},
		},
		{
			name: "pod condition other than Ready -> nothing",
			change: []Change{upsert(func() *corev1.Pod {
				p := echoA.DeepCopy()
				p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: corev1.ContainersReady, Status: corev1.ConditionFalse})
				p.ResourceVersion = "42"
				return p
			}())},
		},
		{
			name:    "pod deleted -> its workload removed",
			change:  []Change{deleted(KindPod, "mesh", "echo-a")},
			deletes: []string{nameEchoA},
		},
		{
			name:    "pod created -> its workload",
			change:  []Change{upsert(pod("mesh", "echo-c", podLabels("app", "echo"), podIPs("10.0.0.3")))},
			upserts: []string{testCluster + "//Pod/mesh/echo-c"},
		},
		{
			name: "service selector -> the workloads of the pods it stops and starts selecting, not the Service",
			change: []Change{upsert(func() *corev1.Service {
				s := echoSvc.DeepCopy()
				s.Spec.Selector = map[string]string{"app": "nothing"}
				return s
			}())},
			upserts: []string{nameEchoA, nameEchoB},
		},
		{
			name: "service port -> the Service and the workloads of its pods",
			change: []Change{upsert(func() *corev1.Service {
				s := echoSvc.DeepCopy()
				s.Spec.Ports[0].Port = 8000
				return s
			}())},
			upserts: []string{nameEchoA, nameEchoB, nameEchoSvc},
		},
		{
			name: "service traffic-distribution annotation -> only the Service",
			change: []Change{upsert(func() *corev1.Service {
				s := echoSvc.DeepCopy()
				svcAnnotations(AnnotationTrafficDistribution, "PreferClose")(s)
				return s
			}())},
			upserts: []string{nameEchoSvc},
		},
		{
			name:    "service deleted -> the Service removed and its pods' workloads",
			change:  []Change{deleted(KindService, "plain", "web")},
			upserts: []string{nameWebPod},
			deletes: []string{nameWebSvc},
		},
		{
			name:    "service without endpoints created -> only the Service",
			change:  []Change{upsert(service("mesh", "lonely", selector("app", "none"), clusterIPs("10.96.0.9")))},
			upserts: []string{"mesh/lonely.mesh.svc.cluster.local"},
		},
		{
			name:    "selector-less service deleted -> its slice's endpoint workloads removed",
			change:  []Change{deleted(KindService, "plain", "db")},
			deletes: []string{nameDBSvc, nameDBX},
		},
		{
			name:    "namespace traffic-distribution annotation -> its Services only",
			change:  []Change{upsert(namespace("mesh", meshNS.Labels, map[string]string{AnnotationTrafficDistribution: "PreferClose"}))},
			upserts: []string{nameEchoSvc},
		},
		{
			name:   "namespace labels -> nothing",
			change: []Change{upsert(namespace("plain", map[string]string{"team": "a"}, nil))},
		},
		{
			name:    "system namespace network label -> everything",
			change:  []Change{upsert(namespace("istio-system", map[string]string{labelTopologyNetwork: "net2"}, nil))},
			upserts: []string{nameDBX, nameEchoA, nameEchoB, nameWebPod, nameEchoSvc, nameDBSvc},
		},
		{
			name:   "system namespace other labels -> nothing",
			change: []Change{upsert(namespace("istio-system", map[string]string{labelTopologyNetwork: "net1", "x": "y"}, system.Annotations))},
		},
		{
			name:    "node topology labels -> the workloads of its pods",
			change:  []Change{upsert(node("n1", corev1.LabelTopologyRegion, "r1", corev1.LabelTopologyZone, "z2"))},
			upserts: []string{nameEchoA, nameEchoB, nameWebPod},
		},
		{
			name: "node heartbeat (status only) -> nothing",
			change: []Change{upsert(func() *corev1.Node {
				n := n1.DeepCopy()
				n.ResourceVersion = "7"
				n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: metav1.Now()}}
				return n
			}())},
		},
		{
			name:    "node deleted -> the workloads of its pods (locality unknown)",
			change:  []Change{deleted(KindNode, "", "n1")},
			upserts: []string{nameEchoA, nameEchoB, nameWebPod},
		},
		{
			name: "endpointslice endpoint readiness -> its endpoint workload",
			change: []Change{upsert(func() *discoveryv1.EndpointSlice {
				es := dbx.DeepCopy()
				epReady(false)(&es.Endpoints[0])
				return es
			}())},
			upserts: []string{nameDBX},
		},
		{
			name:    "endpointslice naming a pod -> that pod's workload",
			change:  []Change{upsert(slice("plain", "db-y", "db", slicePort("tcp", 5432, corev1.ProtocolTCP), endpoint("10.0.1.1", targetRef("Pod", "plain", "web", ""))))},
			upserts: []string{nameWebPod},
		},
		{
			name:    "endpointslice deleted -> its endpoint workloads removed",
			change:  []Change{deleted(KindEndpointSlice, "plain", "db-x")},
			deletes: []string{nameDBX},
		},
		{
			name:   "gateway -> nothing",
			change: []Change{upsert(&gatewayv1.Gateway{ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: "east"}})},
		},
		{
			name:    "a batch collapses: the same pod changed twice -> one upsert",
			change:  []Change{deleted(KindPod, "plain", "web"), upsert(sc.Pods[3])},
			upserts: nil,
		},
		{
			name:    "headless service made a ClusterIP service -> the Service only",
			change:  []Change{upsert(func() *corev1.Service { s := webSvc.DeepCopy(); clusterIPs("10.96.0.7")(s); return s }())},
			upserts: []string{nameWebSvc},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := NewModel(Config{ClusterID: testCluster})
			m.Apply(scenario().changes())
			upserts, deletes := deltaNames(m.Apply(tt.change))
			slices.Sort(tt.upserts)
			slices.Sort(tt.deletes)
			if d := cmp.Diff(tt.upserts, upserts); d != "" {
				t.Errorf("upserts (-want +got):\n%s", d)
			}
			if d := cmp.Diff(tt.deletes, deletes); d != "" {
				t.Errorf("deletes (-want +got):\n%s", d)
			}
			assertMatchesBuild(t, m, currentInputs(scenario(), tt.change))
		})
	}
}

// currentInputs applies changes to a copy of in, the slow way.
func currentInputs(in Inputs, changes []Change) Inputs {
	for _, ch := range changes {
		in = in.with(ch)
	}
	return in
}

// with returns in with ch applied: the object replaced, added or removed.
func (in Inputs) with(ch Change) Inputs {
	same := func(ns, name string) bool { return ns == ch.Ref.Namespace && name == ch.Ref.Name }
	switch ch.Ref.Kind {
	case KindNamespace:
		in.Namespaces = replaceIn(in.Namespaces, ch.Object, func(o *corev1.Namespace) bool { return o.Name == ch.Ref.Name })
	case KindNode:
		in.Nodes = replaceIn(in.Nodes, ch.Object, func(o *corev1.Node) bool { return o.Name == ch.Ref.Name })
	case KindPod:
		in.Pods = replaceIn(in.Pods, ch.Object, func(o *corev1.Pod) bool { return same(o.Namespace, o.Name) })
	case KindService:
		in.Services = replaceIn(in.Services, ch.Object, func(o *corev1.Service) bool { return same(o.Namespace, o.Name) })
	case KindEndpointSlice:
		in.EndpointSlices = replaceIn(in.EndpointSlices, ch.Object, func(o *discoveryv1.EndpointSlice) bool { return same(o.Namespace, o.Name) })
	case KindGateway:
		in.Gateways = replaceIn(in.Gateways, ch.Object, func(o *gatewayv1.Gateway) bool { return same(o.Namespace, o.Name) })
	case KindImportedService:
		in.ImportedServices = replaceIn(in.ImportedServices, ch.Object, func(o *federation.ImportedService) bool {
			return o.Cluster == ch.Ref.Cluster && same(o.Namespace, o.Name)
		})
	}
	return in
}

func replaceIn[T any](list []*T, obj runtime.Object, match func(*T) bool) []*T {
	out := slices.DeleteFunc(slices.Clone(list), match)
	if obj != nil {
		out = append(out, any(obj).(*T))
	}
	return out
}

// assertMatchesBuild checks that the model holds exactly what Build makes of
// the same inputs from scratch, byte for byte, warnings and exports
// included. The build starts from the model's VIP allocations, as a
// restarted peerd would: which of two colliding hostnames came first is
// history that the inputs alone do not hold.
func assertMatchesBuild(t *testing.T, m *Model, in Inputs) {
	t.Helper()
	cfg := m.cfg
	cfg.VIPs = m.VIPs()
	want := Build(cfg, in)
	got := m.Addresses()
	if d := cmp.Diff(encodeAll(t, want.Addresses), encodeAll(t, got)); d != "" {
		t.Errorf("incremental model differs from a full build (-build +model):\n%s", d)
	}
	diffWarnings(t, want.Warnings, m.Warnings())
	diffProto(t, want.Exports, m.Exports())
	if d := cmp.Diff(want.VIPs, m.VIPs(), cmpopts.EquateComparable(netip.Addr{})); d != "" {
		t.Errorf("VIPs (-build +model):\n%s", d)
	}
}

func encodeAll(t *testing.T, addrs []*workloadpb.Address) map[string]string {
	t.Helper()
	out := make(map[string]string, len(addrs))
	for _, a := range addrs {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(a)
		if err != nil {
			t.Fatal(err)
		}
		out[ResourceName(a)] = fmt.Sprintf("%x", b)
	}
	return out
}

// TestModelRandomChangesMatchBuild drives the model with random changes of
// every kind and checks after each batch that (1) it holds exactly what a
// full Build of the same inputs gives and (2) replaying its Deltas on a map
// gives the same set, so no change is ever lost or pushed stale.
func TestModelRandomChangesMatchBuild(t *testing.T) {
	for seed := uint64(1); seed <= 20; seed++ {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			r := rand.New(rand.NewPCG(seed, 0))
			var in Inputs
			m := NewModel(Config{ClusterID: testCluster})
			served := map[string]*workloadpb.Address{}
			exported := map[string]*federationpb.FederatedService{}
			for step := 0; step < 150; step++ {
				var batch []Change
				for n := 1 + r.IntN(3); n > 0; n-- {
					ch := randomChange(r)
					batch = append(batch, ch)
					in = in.with(ch)
				}
				d := m.Apply(batch)
				for _, a := range d.Upserts {
					served[ResourceName(a)] = a
				}
				for _, name := range d.Deletes {
					if _, ok := served[name]; !ok {
						t.Fatalf("step %d: delete of %q, which was never served", step, name)
					}
					delete(served, name)
				}
				for _, e := range d.Exports {
					exported[federation.ResourceName(e.Namespace, e.Name)] = e
				}
				for _, name := range d.Unexports {
					if _, ok := exported[name]; !ok {
						t.Fatalf("step %d: unexport of %q, which was never exported", step, name)
					}
					delete(exported, name)
				}
				var replayedExports []*federationpb.FederatedService
				for _, name := range slices.Sorted(maps.Keys(exported)) {
					replayedExports = append(replayedExports, exported[name])
				}
				diffProto(t, m.Exports(), replayedExports)
				var replayed []*workloadpb.Address
				for _, a := range served {
					replayed = append(replayed, a)
				}
				if d := cmp.Diff(encodeAll(t, m.Addresses()), encodeAll(t, replayed)); d != "" {
					t.Fatalf("step %d: replayed deltas differ from the model (-model +replayed):\n%s", step, d)
				}
				assertMatchesBuild(t, m, in)
				if t.Failed() {
					t.Fatalf("step %d: batch %v", step, batchRefs(batch))
				}
			}
		})
	}
}

func batchRefs(batch []Change) []string {
	var out []string
	for _, ch := range batch {
		out = append(out, fmt.Sprintf("%s(deleted=%v)", ch.Ref, ch.Object == nil))
	}
	return out
}

// randomChange picks an object from a small universe (so that changes keep
// hitting the same objects) and either deletes it or upserts a random
// version of it.
func randomChange(r *rand.Rand) Change {
	namespaces := []string{"a", "b"}
	apps := []string{"x", "y", "z"}
	pick := func(list []string) string { return list[r.IntN(len(list))] }
	ns := pick(namespaces)
	del := r.IntN(5) == 0
	switch r.IntN(8) {
	case 0:
		name := pick([]string{"a", "b", "istio-system"})
		if del {
			return deleted(KindNamespace, "", name)
		}
		labels := map[string]string{}
		if name == "istio-system" {
			labels[labelTopologyNetwork] = pick([]string{"net1", "net2"})
		}
		var ann map[string]string
		if r.IntN(2) == 0 {
			ann = map[string]string{AnnotationTrafficDistribution: pick([]string{"PreferClose", "Any", "Bogus"})}
		}
		if r.IntN(2) == 0 {
			labels[LabelServiceScope] = pick([]string{ScopeGlobal, ScopeGlobalOnly, "bogus"})
		}
		return upsert(namespace(name, labels, ann))
	case 1:
		name := pick([]string{"n1", "n2"})
		if del {
			return deleted(KindNode, "", name)
		}
		n := node(name, corev1.LabelTopologyRegion, "r1", corev1.LabelTopologyZone, pick([]string{"z1", "z2"}))
		n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Reason: fmt.Sprint(r.IntN(100))}}
		return upsert(n)
	case 2, 3:
		name := fmt.Sprintf("p%d", r.IntN(6))
		if del {
			return deleted(KindPod, ns, name)
		}
		ready := corev1.ConditionTrue
		if r.IntN(3) == 0 {
			ready = corev1.ConditionFalse
		}
		ip := fmt.Sprintf("10.%d.0.%d", len(ns), r.IntN(4)+1)
		if r.IntN(10) == 0 {
			ip = "not-an-ip"
		}
		return upsert(pod(ns, name, podLabels("app", pick(apps)), onNode(pick([]string{"n1", "n2", "n3"})),
			podIPs(ip), podReadyStatus(ready), containerPorts(tcpPort("web", int32(8080+r.IntN(2))))))
	case 4:
		name := pick([]string{"s1", "s2", "s3"})
		if del {
			return deleted(KindService, ns, name)
		}
		var opts []svcOpt
		switch r.IntN(4) {
		case 0:
			opts = append(opts, selector("app", pick(apps)))
		case 1:
			opts = append(opts, selector("app", pick(apps)), headless())
		case 2:
			opts = append(opts, clusterIPs(fmt.Sprintf("10.96.%d.%d", len(ns), r.IntN(3)+1)))
		case 3:
			opts = append(opts, selector("app", pick(apps)), svcAnnotations(AnnotationTrafficDistribution, pick([]string{"PreferClose", "Nope"})))
		}
		if r.IntN(2) == 0 {
			opts = append(opts, svcPorts(namedPort("http", 80, "web")))
		} else {
			opts = append(opts, svcPorts(sport("http", int32(80+r.IntN(2)), 8080)))
		}
		if r.IntN(2) == 0 {
			opts = append(opts, svcLabels(LabelServiceScope, pick([]string{ScopeGlobal, ScopeGlobal, ScopeGlobalOnly, "bogus"})))
		}
		return upsert(service(ns, name, opts...))
	case 5:
		name := pick([]string{"e1", "e2"})
		if del {
			return deleted(KindEndpointSlice, ns, name)
		}
		var opts []sliceOpt
		opts = append(opts, slicePort("http", 8080, corev1.ProtocolTCP))
		for i := r.IntN(3); i > 0; i-- {
			ip := fmt.Sprintf("192.168.%d.%d", len(ns), r.IntN(3)+1)
			if r.IntN(2) == 0 {
				opts = append(opts, endpoint(ip, targetRef("Pod", ns, fmt.Sprintf("p%d", r.IntN(6)), ""), epReady(r.IntN(2) == 0)))
			} else {
				opts = append(opts, endpoint(ip, epReady(r.IntN(2) == 0)))
			}
		}
		return upsert(slice(ns, name, pick([]string{"s1", "s2", "s3"}), opts...))
	case 6:
		cluster, name := pick([]string{"c2", "c3", "c4"}), pick([]string{"s1", "s2", "s3", "r1"})
		if del {
			return Change{Ref: ObjectRef{Kind: KindImportedService, Cluster: cluster, Namespace: ns, Name: name}}
		}
		return upsert(imported(cluster, ns, name, capacity(uint32(r.IntN(3))),
			exportedPorts(fport(80, uint32(8080+r.IntN(2)), pick([]string{"TCP", "UDP"})), fport(uint32(443+r.IntN(2)), 8443, "TCP")),
			exportedTD(pick([]string{"", "", "PreferRegion", "Any", "Bogus"})), exportedAt(int64(r.IntN(3))),
			exportedSANs(spiffeID(cluster+".local", ns, pick([]string{"x", "y"}))), exportedLocality("r-"+cluster, "")))
	default:
		name := pick([]string{"l1", "l2", "l3"})
		if del {
			return deleted(KindGateway, "istio-gateways", name)
		}
		addrs := [][]string{{"172.16.0.1"}, {"172.16.0.2"}, {"172.16.0.1", "172.16.0.3"}, {"gw.example.com"}, nil}[r.IntN(5)]
		gw := link(name, pick([]string{"c2", "c3", testCluster}), addrs)
		if r.IntN(4) == 0 {
			gwLabels(federation.LabelRegion, "r9")(gw)
		}
		return upsert(gw)
	}
}

// TestModelDuplicateNameWarnsNamingBothObjects: two objects that map to the
// same resource name serve one deterministically and warn naming both.
func TestModelDuplicateNameWarnsNamingBothObjects(t *testing.T) {
	m := NewModel(Config{ClusterID: testCluster})
	a := &workloadpb.Address{Type: &workloadpb.Address_Service{Service: &workloadpb.Service{Namespace: "ns", Hostname: "h", Name: "a"}}}
	b := &workloadpb.Address{Type: &workloadpb.Address_Service{Service: &workloadpb.Service{Namespace: "ns", Hostname: "h", Name: "b"}}}
	d := &dirty{names: map[string]bool{}}
	m.produce(objectRef(KindService, "ns", "b"), []*workloadpb.Address{b}, nil, d)
	m.produce(objectRef(KindService, "ns", "a"), []*workloadpb.Address{a}, nil, d)
	delta := m.flush(d)
	if len(delta.Upserts) != 1 || delta.Upserts[0].GetService().GetName() != "a" {
		t.Fatalf("want service a served, got %v", delta.Upserts)
	}
	diffWarnings(t, []Warning{{Object: objectRef(KindService, "ns", "b"),
		Message: `resource name "ns/h" is also produced by service ns/a; serving the one from service ns/a`}}, m.Warnings())

	d = &dirty{names: map[string]bool{}}
	m.produce(objectRef(KindService, "ns", "a"), nil, nil, d)
	delta = m.flush(d)
	if len(delta.Upserts) != 1 || delta.Upserts[0].GetService().GetName() != "b" || len(delta.Deletes) != 0 {
		t.Fatalf("after a is gone, want b served, got %+v", delta)
	}
	if w := m.Warnings(); len(w) != 0 {
		t.Fatalf("warnings left after the duplicate went away: %v", w)
	}
}
