package ambient

import (
	"fmt"
	"runtime"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/peerd-mesh/peerd/internal/federation"
)

// BenchmarkBuild measures one full rebuild of the model, which peerd runs
// for every coalesced batch of index changes: 10 pods per service, spread
// over 10 namespaces and 10 nodes, every pod captured and ready.
func BenchmarkBuild(b *testing.B) {
	for _, pods := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("pods=%d", pods), func(b *testing.B) {
			in := benchInputs(pods)
			b.ReportAllocs()
			for b.Loop() {
				out := Build(testConfig, in)
				if len(out.Addresses) != pods+pods/10 {
					b.Fatalf("built %d addresses, want %d", len(out.Addresses), pods+pods/10)
				}
			}
		})
	}
}

func benchInputs(pods int) Inputs {
	var in Inputs
	for n := range 10 {
		in.Namespaces = append(in.Namespaces, namespace(fmt.Sprintf("ns-%d", n), nil, nil))
		in.Nodes = append(in.Nodes, node(fmt.Sprintf("node-%d", n), "topology.kubernetes.io/region", "r1", "topology.kubernetes.io/zone", fmt.Sprintf("z%d", n%3)))
	}
	for s := range pods / 10 {
		ns := fmt.Sprintf("ns-%d", s%10)
		app := fmt.Sprintf("app-%d", s)
		in.Services = append(in.Services, service(ns, app, selector("app", app),
			clusterIPs(fmt.Sprintf("10.96.%d.%d", s/250, s%250+1)),
			svcPorts(namedPort("http", 80, "http"), sport("grpc", 9090, 9090))))
		for p := range 10 {
			i := s*10 + p
			in.Pods = append(in.Pods, pod(ns, fmt.Sprintf("%s-%d", app, p), captured(), podLabels("app", app),
				onNode(fmt.Sprintf("node-%d", i%10)), podIPs(fmt.Sprintf("10.%d.%d.%d", i/62500, i/250%250, i%250+1)),
				containerPorts(tcpPort("http", 8080), corev1.ContainerPort{ContainerPort: 9090, Protocol: corev1.ProtocolTCP})))
		}
	}
	return in
}

// BenchmarkModelChange measures what one change costs the incremental model
// (Model.Apply) in clusters of growing size: the cost must follow what the
// change touches, not the cluster. Run with -benchtime 200x or more: the
// setup (a first Apply of every object) dominates short runs.
func BenchmarkModelChange(b *testing.B) {
	for _, pods := range []int{1000, 10000, 100000} {
		var m *Model
		var in Inputs
		setup := func(b *testing.B) {
			if m != nil {
				return
			}
			in = benchInputs(pods)
			// 1,000 pods that a selector change moves: 500 labelled a, 500 b.
			in.Namespaces = append(in.Namespaces, namespace("movers", nil, nil))
			for i := range 1000 {
				in.Pods = append(in.Pods, pod("movers", fmt.Sprintf("m-%d", i), captured(), podLabels("group", []string{"a", "b"}[i%2]),
					onNode("node-0"), podIPs(fmt.Sprintf("10.200.%d.%d", i/250, i%250+1))))
			}
			in.Services = append(in.Services, service("movers", "mover", selector("group", "a"), clusterIPs("10.97.0.1"), svcPorts(sport("http", 80, 8080))))
			b.StopTimer()
			m = NewModel(testConfig)
			m.Apply(in.changes())
			b.StartTimer()
		}
		b.Run(fmt.Sprintf("pod-ready/pods=%d", pods), func(b *testing.B) {
			setup(b)
			ready := in.Pods[pods/2].DeepCopy()
			unready := ready.DeepCopy()
			podReadyStatus(corev1.ConditionFalse)(unready)
			versions := []*corev1.Pod{unready, ready}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				d := m.Apply([]Change{upsert(versions[i%2])})
				i++
				if len(d.Upserts) != 1 {
					b.Fatalf("a readiness flip pushed %d addresses, want 1", len(d.Upserts))
				}
			}
		})
		b.Run(fmt.Sprintf("selector-moves-1000-pods/pods=%d", pods), func(b *testing.B) {
			setup(b)
			mover := in.Services[len(in.Services)-1]
			versions := []*corev1.Service{mover.DeepCopy(), mover.DeepCopy()}
			versions[0].Spec.Selector = map[string]string{"group": "b"}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				d := m.Apply([]Change{upsert(versions[i%2])})
				i++
				if len(d.Upserts) != 1000 {
					b.Fatalf("a selector flip pushed %d addresses, want 1000", len(d.Upserts))
				}
			}
		})
		b.Run(fmt.Sprintf("node-heartbeat/pods=%d", pods), func(b *testing.B) {
			setup(b)
			n := in.Nodes[0].DeepCopy()
			b.ReportAllocs()
			for b.Loop() {
				n = n.DeepCopy()
				n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: fmt.Sprint(b.N)}}
				if d := m.Apply([]Change{upsert(n)}); len(d.Upserts) != 0 {
					b.Fatalf("a heartbeat pushed %d addresses", len(d.Upserts))
				}
			}
		})
	}
}

// BenchmarkModelRemoteChange measures what one change from a linked cluster
// costs the model: 1,000 global services (a 10,000-pod local cluster whose
// namespaces are global), each exported by 10 linked clusters. A remote
// change must cost O(what it touches): one split-horizon workload for a
// capacity change, one global service for a change of identities.
func BenchmarkModelRemoteChange(b *testing.B) {
	const clusters, pods = 10, 10000
	in := benchInputs(pods)
	for _, ns := range in.Namespaces {
		ns.Labels = map[string]string{LabelServiceScope: ScopeGlobal}
	}
	for c := range clusters {
		cluster := fmt.Sprintf("remote-%d", c)
		in.Gateways = append(in.Gateways, link(cluster, cluster, []string{fmt.Sprintf("172.16.0.%d", c+1)}))
		for _, svc := range in.Services {
			in.ImportedServices = append(in.ImportedServices, imported(cluster, svc.Namespace, svc.Name, capacity(10)))
		}
	}
	// The model's own memory per imported (cluster, service): its split-
	// horizon workload, its share of the global service, the indexes. The
	// received summary itself is the discovery index's and not counted.
	local, remote := in, Inputs{Gateways: in.Gateways, ImportedServices: in.ImportedServices}
	local.Gateways, local.ImportedServices = nil, nil
	m := NewModel(testConfig)
	m.Apply(local.changes())
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	m.Apply(remote.changes())
	runtime.GC()
	runtime.ReadMemStats(&after)
	perImport := float64(after.HeapAlloc-before.HeapAlloc) / float64(len(in.ImportedServices))
	target := in.ImportedServices[len(in.ImportedServices)/2]
	run := func(b *testing.B, versions [2]*federation.ImportedService, wantName string) {
		b.Helper()
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			d := m.Apply([]Change{upsert(versions[i%2])})
			i++
			if len(d.Upserts) != 1 || ResourceName(d.Upserts[0]) != wantName || len(d.Deletes) != 0 {
				upserts, deletes := deltaNames(d)
				b.Fatalf("pushed %v, deleted %v; want only %s", upserts, deletes, wantName)
			}
		}
		b.ReportMetric(perImport, "model-B/import")
	}
	b.Run("capacity", func(b *testing.B) {
		changed := imported(target.Cluster, target.Namespace, target.Name, capacity(0))
		run(b, [2]*federation.ImportedService{changed, target},
			splitHorizonUID(testCluster, target.Cluster, target.Namespace, target.Name))
	})
	b.Run("identities", func(b *testing.B) {
		changed := imported(target.Cluster, target.Namespace, target.Name, capacity(10), exportedSANs("spiffe://x.local/ns/a/sa/b"))
		run(b, [2]*federation.ImportedService{changed, target},
			namespacedHostname(target.Namespace, globalHostname(target.Name, target.Namespace, DefaultGlobalSuffix)))
	})
}
