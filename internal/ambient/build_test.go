package ambient

import (
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
)

// scenario is a small realistic cluster: an ambient namespace and a plain
// one, a selector Service with a named port, a headless Service, a
// selector-less Service with a manual endpoint, and pods in every state.
func scenario() Inputs {
	return Inputs{
		Namespaces: []*corev1.Namespace{
			namespace("istio-system", map[string]string{labelTopologyNetwork: "net1"}, nil),
			namespace("mesh", map[string]string{"istio.io/dataplane-mode": "ambient"}, nil),
			namespace("plain", nil, nil),
		},
		Nodes: []*corev1.Node{node("n1", corev1.LabelTopologyRegion, "r1", corev1.LabelTopologyZone, "z1")},
		Pods: []*corev1.Pod{
			pod("mesh", "echo-a", captured(), onNode("n1"), podLabels("app", "echo"), podIPs("10.0.0.2", "fd00::2"), containerPorts(tcpPort("web", 8080))),
			pod("mesh", "echo-b", captured(), onNode("n1"), podLabels("app", "echo"), podIPs("10.0.0.1"), containerPorts(tcpPort("web", 8081)), terminating()),
			pod("mesh", "done", podPhase(corev1.PodSucceeded)),
			pod("plain", "web", onNode("n1"), podLabels("app", "web"), podIPs("10.0.1.1"), podReadyStatus(corev1.ConditionFalse)),
		},
		Services: []*corev1.Service{
			service("mesh", "echo", selector("app", "echo"), clusterIPs("10.96.0.1", "fd00::96:1"), svcPorts(namedPort("http", 80, "web"))),
			service("plain", "web", selector("app", "web"), headless(), svcPorts(sport("http", 80, 80))),
			service("plain", "db", clusterIPs("10.96.0.3"), svcPorts(sport("tcp", 5432, 5432))),
		},
		EndpointSlices: []*discoveryv1.EndpointSlice{
			slice("plain", "db-x", "db", slicePort("tcp", 5432, corev1.ProtocolTCP), endpoint("192.168.0.9")),
		},
	}
}

func TestBuildScenario(t *testing.T) {
	out := Build(Config{ClusterID: testCluster}, scenario())

	var names []string
	for _, a := range out.Addresses {
		names = append(names, ResourceName(a))
	}
	wantNames := []string{
		"c1//Pod/mesh/echo-a",
		"c1//Pod/mesh/echo-b",
		"c1//Pod/plain/web",
		"c1/discovery.k8s.io/EndpointSlice/plain/db-x/192.168.0.9",
		"mesh/echo.mesh.svc.cluster.local",
		"plain/db.plain.svc.cluster.local",
		"plain/web.plain.svc.cluster.local",
	}
	if d := cmp.Diff(wantNames, names); d != "" {
		t.Fatalf("resource names (-want +got):\n%s", d)
	}
	if len(out.Warnings) != 0 {
		t.Errorf("unexpected warnings: %v", out.Warnings)
	}

	loc := &workloadpb.Locality{Region: "r1", Zone: "z1"}
	byName := map[string]*workloadpb.Address{}
	for _, a := range out.Addresses {
		byName[ResourceName(a)] = a
	}
	diffProto(t, wantPod("mesh", "echo-a", func(w *workloadpb.Workload) {
		w.Addresses = [][]byte{ip("10.0.0.2"), ip("fd00::2")}
		w.TunnelProtocol = workloadpb.TunnelProtocol_HBONE
		w.Node, w.Locality = "n1", loc
		w.CanonicalName = "echo"
		w.Services = map[string]*workloadpb.PortList{"mesh/echo.mesh.svc.cluster.local": ports(80, 8080)}
	}), byName["c1//Pod/mesh/echo-a"].GetWorkload())
	diffProto(t, wantPod("mesh", "echo-b", func(w *workloadpb.Workload) {
		w.TunnelProtocol = workloadpb.TunnelProtocol_HBONE
		w.Node, w.Locality = "n1", loc
		w.CanonicalName = "echo"
		w.Status = workloadpb.WorkloadStatus_UNHEALTHY
		w.Services = map[string]*workloadpb.PortList{"mesh/echo.mesh.svc.cluster.local": ports(80, 8081)}
	}), byName["c1//Pod/mesh/echo-b"].GetWorkload())
	diffProto(t, wantPod("plain", "web", func(w *workloadpb.Workload) {
		w.Addresses = [][]byte{ip("10.0.1.1")}
		w.Node, w.Locality = "n1", loc
		w.CanonicalName = "web"
		w.Status = workloadpb.WorkloadStatus_UNHEALTHY
		w.Services = map[string]*workloadpb.PortList{"plain/web.plain.svc.cluster.local": ports(80, 80)}
	}), byName["c1//Pod/plain/web"].GetWorkload())
	diffProto(t, &workloadpb.Workload{
		Uid: "c1/discovery.k8s.io/EndpointSlice/plain/db-x/192.168.0.9", Name: "db-x", Namespace: "plain",
		Addresses: [][]byte{ip("192.168.0.9")}, Network: "net1", ClusterId: testCluster,
		Services:    map[string]*workloadpb.PortList{"plain/db.plain.svc.cluster.local": ports(5432, 5432)},
		NetworkMode: workloadpb.NetworkMode_HOST_NETWORK,
	}, byName["c1/discovery.k8s.io/EndpointSlice/plain/db-x/192.168.0.9"].GetWorkload())
	diffProto(t, wantService("mesh", "echo", func(s *workloadpb.Service) {
		s.Addresses = []*workloadpb.NetworkAddress{netAddr("net1", "10.96.0.1"), netAddr("net1", "fd00::96:1")}
		s.IpFamilies = workloadpb.IPFamilies_DUAL
		s.Ports = []*workloadpb.Port{{ServicePort: 80, AppProtocol: workloadpb.AppProtocol_HTTP11}}
	}), byName["mesh/echo.mesh.svc.cluster.local"].GetService())
	diffProto(t, wantService("plain", "web", func(s *workloadpb.Service) {
		s.Addresses = nil
		s.Ports = []*workloadpb.Port{{ServicePort: 80, TargetPort: 80, AppProtocol: workloadpb.AppProtocol_HTTP11}}
	}), byName["plain/web.plain.svc.cluster.local"].GetService())
}

func TestBuildIsDeterministicAndDoesNotMutateInputs(t *testing.T) {
	in := scenario()
	before := scenario()
	first := Build(testConfig, in)
	// Reversed inputs must give the same output.
	rev := scenario()
	slices.Reverse(rev.Pods)
	slices.Reverse(rev.Services)
	slices.Reverse(rev.Namespaces)
	second := Build(testConfig, rev)
	if len(first.Addresses) != len(second.Addresses) {
		t.Fatalf("got %d and %d addresses", len(first.Addresses), len(second.Addresses))
	}
	opts := proto.MarshalOptions{Deterministic: true}
	for i := range first.Addresses {
		a, _ := opts.Marshal(first.Addresses[i])
		b, _ := opts.Marshal(second.Addresses[i])
		if string(a) != string(b) {
			t.Errorf("address %d (%s) differs between runs", i, ResourceName(first.Addresses[i]))
		}
	}
	if d := cmp.Diff(before, in); d != "" {
		t.Errorf("Build mutated its inputs (-before +after):\n%s", d)
	}
}

func TestBuildWarningsSortedAndDeduplicated(t *testing.T) {
	out := Build(testConfig, Inputs{
		Pods: []*corev1.Pod{pod("b", "p", onNode("ghost")), pod("a", "p", onNode("ghost"))},
		Services: []*corev1.Service{
			service("a", "s", specTrafficDistribution("Nope")),
		},
	})
	want := []string{
		`pod a/p: spec.nodeName: node "ghost" not found: locality unknown`,
		`pod b/p: spec.nodeName: node "ghost" not found: locality unknown`,
		`service a/s: spec.trafficDistribution: unknown traffic distribution "Nope": ignored, annotations and default apply`,
	}
	var got []string
	for _, w := range out.Warnings {
		got = append(got, w.String())
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("warnings (-want +got):\n%s", d)
	}
}

func TestResourceNameAndLookupKeys(t *testing.T) {
	tests := []struct {
		name     string
		addr     *workloadpb.Address
		wantName string
		wantKeys []string
	}{
		{
			name: "workload: uid; network/ip per address",
			addr: &workloadpb.Address{Type: &workloadpb.Address_Workload{Workload: &workloadpb.Workload{
				Uid: "c1//Pod/a/p", Network: "net1", Addresses: [][]byte{ip("10.0.0.1"), ip("fd00::1")},
			}}},
			wantName: "c1//Pod/a/p",
			wantKeys: []string{"net1/10.0.0.1", "net1/fd00::1"},
		},
		{
			name: "workload on the default network: /ip",
			addr: &workloadpb.Address{Type: &workloadpb.Address_Workload{Workload: &workloadpb.Workload{
				Uid: "c1//Pod/a/p", Addresses: [][]byte{ip("10.0.0.1")},
			}}},
			wantName: "c1//Pod/a/p",
			wantKeys: []string{"/10.0.0.1"},
		},
		{
			name: "service: namespace/hostname; network/ip per VIP, duplicates once",
			addr: &workloadpb.Address{Type: &workloadpb.Address_Service{Service: &workloadpb.Service{
				Namespace: "a", Hostname: "s.a.svc.cluster.local",
				Addresses: []*workloadpb.NetworkAddress{netAddr("n", "10.96.0.1"), netAddr("n", "10.96.0.1"), netAddr("m", "10.96.0.1")},
			}}},
			wantName: "a/s.a.svc.cluster.local",
			wantKeys: []string{"n/10.96.0.1", "m/10.96.0.1"},
		},
		{
			name:     "headless service has no keys",
			addr:     &workloadpb.Address{Type: &workloadpb.Address_Service{Service: &workloadpb.Service{Namespace: "a", Hostname: "h"}}},
			wantName: "a/h",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ResourceName(tt.addr); got != tt.wantName {
				t.Errorf("ResourceName = %q, want %q", got, tt.wantName)
			}
			if d := cmp.Diff(tt.wantKeys, LookupKeys(tt.addr)); d != "" {
				t.Errorf("LookupKeys (-want +got):\n%s", d)
			}
		})
	}
}
