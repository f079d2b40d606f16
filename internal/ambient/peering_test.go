package ambient

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/peerd-mesh/peerd/internal/federation"
	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
	federationpb "github.com/peerd-mesh/peerd/proto/peerd/federation/v1"
)

// Resource names of the peering fixtures.
const (
	nameAppGlobal = "hello/app.hello.mesh.internal"
	nameAppPlain  = "hello/app.hello.svc.cluster.local"
	nameAppPod    = testCluster + "//Pod/hello/app-1"
	nameSplitC2   = testCluster + "/peerd/SplitHorizon/c2/hello/app"
	nameSplitC3   = testCluster + "/peerd/SplitHorizon/c3/hello/app"
	nameGatewayC2 = testCluster + "/peerd/NetworkGateway/c2/172.16.0.2"
	nameGatewayC3 = testCluster + "/peerd/NetworkGateway/c3/172.16.0.3"
)

var (
	scopeGlobalLabel     = svcLabels(LabelServiceScope, ScopeGlobal)
	scopeGlobalOnlyLabel = svcLabels(LabelServiceScope, ScopeGlobalOnly)
)

// appService is hello/app: selector app=app, port http 80 -> 8080.
func appService(opts ...svcOpt) *corev1.Service {
	return service("hello", "app", append([]svcOpt{selector("app", "app"), clusterIPs("10.96.0.5"), svcPorts(sport("http", 80, 8080))}, opts...)...)
}

// appPod is hello/app-1, Ready, captured, service account "app".
func appPod(opts ...podOpt) *corev1.Pod {
	return pod("hello", "app-1", append([]podOpt{podLabels("app", "app"), captured(), serviceAccount("app"), podIPs("10.0.0.5")}, opts...)...)
}

func linkC2() *gatewayv1.Gateway { return link("c2", "c2", []string{"172.16.0.2"}) }
func linkC3() *gatewayv1.Gateway { return link("c3", "c3", []string{"172.16.0.3"}) }

// addressesByName indexes a build's addresses by resource name.
func addressesByName(out Output) map[string]*workloadpb.Address {
	m := map[string]*workloadpb.Address{}
	for _, a := range out.Addresses {
		m[ResourceName(a)] = a
	}
	return m
}

// endpointsOf are the resource names of the workloads whose services map
// lists key, sorted.
func endpointsOf(out Output, key string) []string {
	var names []string
	for _, a := range out.Addresses {
		if _, ok := a.GetWorkload().GetServices()[key]; ok {
			names = append(names, ResourceName(a))
		}
	}
	return names
}

// TestStateTable follows design.md's state table, row by row: the local
// Service's scope, the remote one's, and whether a global service exists and
// which endpoints it has.
func TestStateTable(t *testing.T) {
	tests := []struct {
		name          string
		local         *corev1.Service
		remote        *federation.ImportedService
		wantGlobal    bool
		wantEndpoints []string
	}{
		{name: "exists, no scope / exists, no scope -> no global service",
			local: appService()},
		{name: "none / global -> global service, remote endpoints",
			remote: imported("c2", "hello", "app"), wantGlobal: true, wantEndpoints: []string{nameSplitC2}},
		{name: "exists, no scope / global -> global service, remote endpoints",
			local: appService(), remote: imported("c2", "hello", "app"), wantGlobal: true, wantEndpoints: []string{nameSplitC2}},
		{name: "global / global -> global service, local and remote endpoints",
			local: appService(scopeGlobalLabel), remote: imported("c2", "hello", "app"), wantGlobal: true,
			wantEndpoints: []string{nameAppPod, nameSplitC2}},
		{name: "global / none -> global service, local endpoints",
			local: appService(scopeGlobalLabel), wantGlobal: true, wantEndpoints: []string{nameAppPod}},
		// A remote Service that is not global is never exported: the
		// importer sees exactly what it sees when there is none.
		{name: "global / exists, not global -> global service, local endpoints",
			local: appService(scopeGlobalLabel), wantGlobal: true, wantEndpoints: []string{nameAppPod}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := Inputs{Pods: []*corev1.Pod{appPod()}, Gateways: []*gatewayv1.Gateway{linkC2()}}
			if tt.local != nil {
				in.Services = append(in.Services, tt.local)
			}
			if tt.remote != nil {
				in.ImportedServices = append(in.ImportedServices, tt.remote)
			}
			out := Build(testConfig, in)
			_, gotGlobal := addressesByName(out)[nameAppGlobal]
			if gotGlobal != tt.wantGlobal {
				t.Fatalf("global service exists: %v, want %v", gotGlobal, tt.wantGlobal)
			}
			if d := cmp.Diff(tt.wantEndpoints, endpointsOf(out, nameAppGlobal)); d != "" {
				t.Errorf("endpoints of the global service (-want +got):\n%s", d)
			}
			if _, ok := addressesByName(out)[nameSplitC2]; ok != (tt.remote != nil) {
				t.Errorf("split-horizon workload exists: %v, want %v", ok, tt.remote != nil)
			}
			diffWarnings(t, nil, out.Warnings)
		})
	}
}

// TestGlobalServiceResource compares a whole global service: VIPs on the
// local network, the local Service's ports, SANs of every cluster in its
// own trust domain, PreferNetwork by default.
func TestGlobalServiceResource(t *testing.T) {
	cfg := testConfig
	cfg.TrustDomain = "c1.local"
	out := Build(cfg, Inputs{
		Services:         []*corev1.Service{appService(scopeGlobalLabel, svcPorts(namedPort("grpc", 9090, "grpc")))},
		Pods:             []*corev1.Pod{appPod()},
		Gateways:         []*gatewayv1.Gateway{linkC2(), linkC3()},
		ImportedServices: []*federation.ImportedService{imported("c2", "hello", "app"), imported("c3", "hello", "app", exportedSANs(spiffeID("c3.local", "hello", "other")))},
	})
	vips := out.VIPs["app.hello.mesh.internal"]
	if len(vips) != 2 || !cfg.withDefaults().VIPv4Range.Contains(vips[0]) || !cfg.withDefaults().VIPv6Range.Contains(vips[1]) {
		t.Fatalf("VIPs %v: want one from each default range", vips)
	}
	diffProto(t, &workloadpb.Service{
		Name:      "app",
		Namespace: "hello",
		Hostname:  "app.hello.mesh.internal",
		Addresses: []*workloadpb.NetworkAddress{{Network: "net1", Address: vips[0].AsSlice()}, {Network: "net1", Address: vips[1].AsSlice()}},
		Ports: []*workloadpb.Port{
			{ServicePort: 80, TargetPort: 8080, AppProtocol: workloadpb.AppProtocol_HTTP11},
			{ServicePort: 9090, AppProtocol: workloadpb.AppProtocol_GRPC},
		},
		SubjectAltNames: []string{"spiffe://c1.local/ns/hello/sa/app", "spiffe://c2.local/ns/hello/sa/app", "spiffe://c3.local/ns/hello/sa/other"},
		LoadBalancing:   lb(fail, network),
		IpFamilies:      workloadpb.IPFamilies_DUAL,
		Canonical:       true,
	}, addressesByName(out)[nameAppGlobal].GetService())
	diffWarnings(t, nil, out.Warnings)
}

// TestGlobalTrafficDistribution: the design's table applied to global
// services, then its precedence; a Service that exists only remotely takes
// what its exporters agree on.
func TestGlobalTrafficDistribution(t *testing.T) {
	tdAnno := func(v string) svcOpt { return svcAnnotations(AnnotationTrafficDistribution, v) }
	globalRef := ObjectRef{Kind: KindGlobalService, Namespace: "hello", Name: "app"}
	tests := []struct {
		name     string
		local    *corev1.Service
		nsAnno   string
		remotes  []*federation.ImportedService
		want     *workloadpb.LoadBalancing
		warnings []Warning
	}{
		{name: "global service, nothing asked -> PreferNetwork [NETWORK]", local: appService(scopeGlobalLabel),
			want: lb(fail, network)},
		{name: "PreferClose -> [NETWORK, REGION, ZONE]", local: appService(scopeGlobalLabel, specTrafficDistribution("PreferClose")),
			want: lb(fail, network, region, zone)},
		{name: "PreferRegion -> [NETWORK, REGION]", local: appService(scopeGlobalLabel, tdAnno("PreferRegion")),
			want: lb(fail, network, region)},
		{name: "PreferSameNode -> [NETWORK, REGION, ZONE, SUBZONE, NODE]", local: appService(scopeGlobalLabel, tdAnno("PreferSameNode")),
			want: lb(fail, network, region, zone, subzone, nodeS)},
		{name: "Any -> no load_balancing", local: appService(scopeGlobalLabel, specTrafficDistribution("Any")),
			want: nil},
		{name: "internalTrafficPolicy Local -> [NODE] STRICT", local: appService(scopeGlobalLabel, internalLocal(), specTrafficDistribution("PreferClose")),
			want: lb(strict, nodeS)},
		{name: "namespace annotation applies when the Service says nothing", local: appService(scopeGlobalLabel), nsAnno: "PreferRegion",
			want: lb(fail, network, region)},
		{name: "service annotation beats the namespace's", local: appService(scopeGlobalLabel, tdAnno("Any")), nsAnno: "PreferRegion",
			want: nil},
		{name: "unknown value -> warning (from the Service's own mapping) and PreferNetwork",
			local: appService(scopeGlobalLabel, tdAnno("Nearest")), want: lb(fail, network),
			warnings: []Warning{{Object: objectRef(KindService, "hello", "app"), Field: "metadata.annotations[" + AnnotationTrafficDistribution + "]",
				Message: `unknown traffic distribution "Nearest": default applies`}}},
		{name: "local Service without scope: its choice beats the exporters'",
			local: appService(specTrafficDistribution("PreferClose")), remotes: []*federation.ImportedService{imported("c2", "hello", "app", exportedTD("Any"))},
			want: lb(fail, network, region, zone)},
		{name: "only remote, exporters agree -> their choice",
			remotes: []*federation.ImportedService{imported("c2", "hello", "app", exportedTD("PreferRegion")), imported("c3", "hello", "app", exportedTD("preferregion"))},
			want:    lb(fail, network, region)},
		{name: "only remote, nothing asked -> PreferNetwork",
			remotes: []*federation.ImportedService{imported("c2", "hello", "app"), imported("c3", "hello", "app")},
			want:    lb(fail, network)},
		{name: "only remote, exporters disagree -> warning, PreferNetwork",
			remotes: []*federation.ImportedService{imported("c2", "hello", "app", exportedTD("Any")), imported("c3", "hello", "app")},
			want:    lb(fail, network),
			warnings: []Warning{{Object: globalRef, Field: "traffic_distribution",
				Message: `exporters disagree (c2=Any, c3=""): PreferNetwork applies`}}},
		{name: "only remote, unknown value -> warning, counted as none",
			remotes: []*federation.ImportedService{imported("c2", "hello", "app", exportedTD("Nearest"))},
			want:    lb(fail, network),
			warnings: []Warning{{Object: ObjectRef{Kind: KindImportedService, Cluster: "c2", Namespace: "hello", Name: "app"}, Field: "traffic_distribution",
				Message: `unknown traffic distribution "Nearest": counted as none`}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := Inputs{Gateways: []*gatewayv1.Gateway{linkC2(), linkC3()}, ImportedServices: tt.remotes}
			if tt.local != nil {
				in.Services = []*corev1.Service{tt.local}
			}
			if tt.nsAnno != "" {
				in.Namespaces = []*corev1.Namespace{namespace("hello", nil, map[string]string{AnnotationTrafficDistribution: tt.nsAnno})}
			}
			out := Build(testConfig, in)
			global := addressesByName(out)[nameAppGlobal].GetService()
			if global == nil {
				t.Fatal("no global service")
			}
			diffProto(t, tt.want, global.GetLoadBalancing())
			diffWarnings(t, tt.warnings, out.Warnings)
		})
	}
}

// TestGlobalOnly: the cluster that owns the plain name decides; its plain
// Service then carries the remote SANs and the split-horizon workloads list
// it too.
func TestGlobalOnly(t *testing.T) {
	remoteSAN := spiffeID("c2.local", "hello", "app")
	tests := []struct {
		name      string
		local     *corev1.Service
		nsLabel   string
		remote    *federation.ImportedService
		plainSANs []string
		plainEPs  []string
		// plainPreferNetwork: the plain Service keeps traffic on the local
		// network by default, as the global service does.
		plainPreferNetwork bool
	}{
		{name: "Service global-only -> plain Service has the remote endpoints and SANs",
			local: appService(scopeGlobalOnlyLabel), remote: imported("c2", "hello", "app"),
			plainSANs: []string{remoteSAN}, plainEPs: []string{nameAppPod, nameSplitC2}, plainPreferNetwork: true},
		{name: "namespace global-only -> the same",
			local: appService(), nsLabel: ScopeGlobalOnly, remote: imported("c2", "hello", "app"),
			plainSANs: []string{remoteSAN}, plainEPs: []string{nameAppPod, nameSplitC2}, plainPreferNetwork: true},
		{name: "Service global -> plain Service stays local",
			local: appService(scopeGlobalLabel), remote: imported("c2", "hello", "app"),
			plainEPs: []string{nameAppPod}},
		{name: "remote global-only counts as global for the importer",
			local: appService(scopeGlobalLabel), remote: imported("c2", "hello", "app", func(s *federationpb.FederatedService) { s.Scope = federationpb.Scope_GLOBAL_ONLY }),
			plainEPs: []string{nameAppPod}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := Inputs{
				Services:         []*corev1.Service{tt.local},
				Pods:             []*corev1.Pod{appPod()},
				Gateways:         []*gatewayv1.Gateway{linkC2()},
				ImportedServices: []*federation.ImportedService{tt.remote},
			}
			if tt.nsLabel != "" {
				in.Namespaces = []*corev1.Namespace{namespace("hello", map[string]string{LabelServiceScope: tt.nsLabel}, nil)}
			}
			out := Build(testConfig, in)
			if d := cmp.Diff(tt.plainSANs, addressesByName(out)[nameAppPlain].GetService().GetSubjectAltNames()); d != "" {
				t.Errorf("plain Service SANs (-want +got):\n%s", d)
			}
			if d := cmp.Diff(tt.plainEPs, endpointsOf(out, nameAppPlain)); d != "" {
				t.Errorf("plain Service endpoints (-want +got):\n%s", d)
			}
			var wantLB *workloadpb.LoadBalancing
			if tt.plainPreferNetwork {
				wantLB = &workloadpb.LoadBalancing{Mode: workloadpb.LoadBalancing_FAILOVER,
					RoutingPreference: []workloadpb.LoadBalancing_Scope{workloadpb.LoadBalancing_NETWORK}}
			}
			diffProto(t, wantLB, addressesByName(out)[nameAppPlain].GetService().GetLoadBalancing())
			if d := cmp.Diff([]string{nameAppPod, nameSplitC2}, endpointsOf(out, nameAppGlobal)); d != "" {
				t.Errorf("global service endpoints (-want +got):\n%s", d)
			}
			// Only the scope disagreement (TestScopeConflictIsReported) may
			// be reported here.
			for _, w := range out.Warnings {
				if w.Field != "scope" {
					t.Errorf("unexpected warning: %s", w)
				}
			}
		})
	}
}

// TestServiceScopePrecedence: the Service's label wins over its
// namespace's; a value nobody knows is a warning naming the object and the
// field, and counts as no scope.
func TestServiceScopePrecedence(t *testing.T) {
	field := "metadata.labels[" + LabelServiceScope + "]"
	tests := []struct {
		name     string
		svcScope string
		nsScope  string
		want     federationpb.Scope // SCOPE_UNSPECIFIED: not exported
		warnings []Warning
	}{
		{name: "neither labelled -> not exported"},
		{name: "namespace global -> global", nsScope: ScopeGlobal, want: federationpb.Scope_GLOBAL},
		{name: "namespace global-only -> global-only", nsScope: ScopeGlobalOnly, want: federationpb.Scope_GLOBAL_ONLY},
		{name: "Service global-only beats namespace global", svcScope: ScopeGlobalOnly, nsScope: ScopeGlobal, want: federationpb.Scope_GLOBAL_ONLY},
		{name: "Service global beats namespace global-only", svcScope: ScopeGlobal, nsScope: ScopeGlobalOnly, want: federationpb.Scope_GLOBAL},
		{name: "Service value unknown -> warning, no scope (the namespace is not consulted)", svcScope: "everywhere", nsScope: ScopeGlobal,
			warnings: []Warning{{Object: objectRef(KindService, "hello", "app"), Field: field,
				Message: `unknown service scope "everywhere" (want "global" or "global-only"): not exported`}}},
		{name: "namespace value unknown -> warning on the namespace, no scope", nsScope: "Global",
			warnings: []Warning{{Object: objectRef(KindNamespace, "", "hello"), Field: field,
				Message: `unknown service scope "Global" (want "global" or "global-only"): not exported`}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svc := appService()
			if tt.svcScope != "" {
				svcLabels(LabelServiceScope, tt.svcScope)(svc)
			}
			var nsLabels map[string]string
			if tt.nsScope != "" {
				nsLabels = map[string]string{LabelServiceScope: tt.nsScope}
			}
			out := Build(testConfig, Inputs{Namespaces: []*corev1.Namespace{namespace("hello", nsLabels, nil)}, Services: []*corev1.Service{svc}})
			var got federationpb.Scope
			if len(out.Exports) == 1 {
				got = out.Exports[0].GetScope()
			} else if len(out.Exports) > 1 {
				t.Fatalf("%d exports", len(out.Exports))
			}
			if got != tt.want {
				t.Errorf("exported scope %v, want %v", got, tt.want)
			}
			diffWarnings(t, tt.warnings, out.Warnings)
		})
	}
}

// TestExport compares a whole export: ports sorted with protocol, app
// protocol and name; SANs of every Pod endpoint, Ready or not; capacity =
// the endpoints ztunnel sees HEALTHY, EndpointSlice ones included; the
// traffic distribution as asked (canonical spelling); locality and
// creation time.
func TestExport(t *testing.T) {
	cfg := testConfig
	cfg.TrustDomain = "c1.local"
	cfg.Locality = Locality{Region: "eu", Zone: "eu-1"}
	grpc := "grpc"
	svc := service("hello", "app", selector("app", "app"), clusterIPs("10.96.0.5"), scopeGlobalLabel, created(1700000000),
		svcPorts(corev1.ServicePort{Name: "rpc", Port: 9090, Protocol: corev1.ProtocolTCP, AppProtocol: &grpc, TargetPort: namedPort("", 0, "rpc").TargetPort},
			sport("http", 80, 8080), corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: sport("", 0, 5353).TargetPort}))
	in := Inputs{
		Namespaces: []*corev1.Namespace{namespace("hello", nil, map[string]string{AnnotationTrafficDistribution: "preferclose"})},
		Services:   []*corev1.Service{svc, service("hello", "ext", scopeGlobalLabel, clusterIPs("10.96.0.6"), svcPorts(sport("tcp", 5432, 5432)))},
		Pods: []*corev1.Pod{
			appPod(),
			pod("hello", "app-2", podLabels("app", "app"), serviceAccount("app"), podIPs("10.0.0.6")),
			pod("hello", "app-3", podLabels("app", "app"), serviceAccount("reader"), podIPs("10.0.0.7"), podReadyStatus(corev1.ConditionFalse)),
			pod("hello", "app-4", podLabels("app", "app"), serviceAccount("gone"), podPhase(corev1.PodSucceeded)),
		},
		EndpointSlices: []*discoveryv1.EndpointSlice{
			slice("hello", "ext-1", "ext", slicePort("tcp", 5432, corev1.ProtocolTCP), endpoint("192.168.0.1"), endpoint("192.168.0.2", epReady(false))),
		},
	}
	out := Build(cfg, in)
	diffProto(t, []*federationpb.FederatedService{
		{
			Name:      "app",
			Namespace: "hello",
			Ports: []*federationpb.Port{
				{Port: 53, TargetPort: 5353, Protocol: "UDP", Name: "dns"},
				{Port: 80, TargetPort: 8080, Protocol: "TCP", Name: "http"},
				{Port: 9090, Protocol: "TCP", AppProtocol: "grpc", Name: "rpc"},
			},
			SubjectAltNames:     []string{"spiffe://c1.local/ns/hello/sa/app", "spiffe://c1.local/ns/hello/sa/reader"},
			Capacity:            2,
			TrafficDistribution: "PreferClose",
			Scope:               federationpb.Scope_GLOBAL,
			Locality:            &federationpb.Locality{Region: "eu", Zone: "eu-1"},
			CreationTime:        timestamppb.New(time.Unix(1700000000, 0)),
		},
		{
			Name:                "ext",
			Namespace:           "hello",
			Ports:               []*federationpb.Port{{Port: 5432, TargetPort: 5432, Protocol: "TCP", Name: "tcp"}},
			Capacity:            1,
			TrafficDistribution: "PreferClose",
			Scope:               federationpb.Scope_GLOBAL,
			Locality:            &federationpb.Locality{Region: "eu", Zone: "eu-1"},
		},
	}, out.Exports)
	for _, e := range out.Exports {
		if err := federation.Validate(federation.ResourceName(e.Namespace, e.Name), e); err != nil {
			t.Errorf("export %s/%s fails the importer's validation: %v", e.Namespace, e.Name, err)
		}
	}
}

// TestExportDuplicatePortNumber: Kubernetes allows 53/TCP and 53/UDP, an
// export lists a number once (importers reject it twice).
func TestExportDuplicatePortNumber(t *testing.T) {
	svc := appService(scopeGlobalLabel, svcPorts(corev1.ServicePort{Name: "dns", Port: 80, Protocol: corev1.ProtocolUDP, TargetPort: sport("", 0, 53).TargetPort}))
	out := Build(testConfig, Inputs{Services: []*corev1.Service{svc}})
	diffProto(t, []*federationpb.Port{{Port: 80, TargetPort: 8080, Protocol: "TCP", Name: "http"}}, out.Exports[0].GetPorts())
	diffWarnings(t, []Warning{{Object: objectRef(KindService, "hello", "app"), Field: "spec.ports[1]",
		Message: "port 80/UDP: the number is also TCP: only the first is exported"}}, out.Warnings)
}

// TestGlobalPorts: the local Service's ports when it exists; otherwise the
// union of the exporters', a conflict resolved oldest first, then by
// cluster name, with a warning naming both clusters.
func TestGlobalPorts(t *testing.T) {
	tests := []struct {
		name     string
		local    *corev1.Service
		remotes  []*federation.ImportedService
		want     []*workloadpb.Port
		warnings []Warning
	}{
		{name: "only remote: the union, sorted",
			remotes: []*federation.ImportedService{
				imported("c2", "hello", "app", exportedPorts(fport(443, 8443, "TCP"))),
				imported("c3", "hello", "app", exportedPorts(fport(80, 8080, "TCP"), fport(443, 8443, "TCP"))),
			},
			want: []*workloadpb.Port{{ServicePort: 80, TargetPort: 8080}, {ServicePort: 443, TargetPort: 8443}}},
		{name: "only remote: conflicting target, the oldest exporter wins",
			remotes: []*federation.ImportedService{
				imported("c2", "hello", "app", exportedAt(200), exportedPorts(fport(80, 8080, "TCP"))),
				imported("c3", "hello", "app", exportedAt(100), exportedPorts(fport(80, 9090, "TCP"))),
			},
			want: []*workloadpb.Port{{ServicePort: 80, TargetPort: 9090}},
			warnings: []Warning{{Object: ObjectRef{Kind: KindImportedService, Cluster: "c2", Namespace: "hello", Name: "app"}, Field: "ports",
				Message: "port 80: cluster c2 exports TCP target 8080, cluster c3 (older) exports TCP target 9090: c3's is used"}}},
		{name: "only remote: conflicting protocol, same age -> the first cluster by name wins",
			remotes: []*federation.ImportedService{
				imported("c3", "hello", "app", exportedAt(100), exportedPorts(fport(80, 8080, "UDP"))),
				imported("c2", "hello", "app", exportedAt(100), exportedPorts(fport(80, 8080, "TCP"))),
			},
			want: []*workloadpb.Port{{ServicePort: 80, TargetPort: 8080}},
			warnings: []Warning{{Object: ObjectRef{Kind: KindImportedService, Cluster: "c3", Namespace: "hello", Name: "app"}, Field: "ports",
				Message: "port 80: cluster c3 exports UDP target 8080, cluster c2 (older) exports TCP target 8080: c2's is used"}}},
		{name: "local Service exists: its ports; a disagreeing exporter is a warning on it",
			local: appService(),
			remotes: []*federation.ImportedService{
				imported("c2", "hello", "app", exportedPorts(fport(80, 9090, "TCP"), fport(443, 8443, "TCP"))),
			},
			want: []*workloadpb.Port{{ServicePort: 80, TargetPort: 8080, AppProtocol: workloadpb.AppProtocol_HTTP11}},
			warnings: []Warning{{Object: objectRef(KindService, "hello", "app"), Field: "spec.ports",
				Message: "port 80: cluster c2 exports TCP target 9090, cluster c1 (local) has TCP target 8080: the local one is used"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := Inputs{Gateways: []*gatewayv1.Gateway{linkC2(), linkC3()}, ImportedServices: tt.remotes}
			if tt.local != nil {
				in.Services = []*corev1.Service{tt.local}
			}
			out := Build(testConfig, in)
			diffProto(t, tt.want, addressesByName(out)[nameAppGlobal].GetService().GetPorts())
			diffWarnings(t, tt.warnings, out.Warnings)
		})
	}
}

// TestSplitHorizonWorkload compares whole split-horizon workloads, one per
// (remote cluster, service), as design.md "How remote endpoints reach
// ztunnel" describes them.
func TestSplitHorizonWorkload(t *testing.T) {
	want := func(edit func(*workloadpb.Workload)) *workloadpb.Workload {
		w := &workloadpb.Workload{
			Uid:            nameSplitC2,
			Name:           nameSplitC2,
			Namespace:      "hello",
			Network:        "c2-net",
			TunnelProtocol: workloadpb.TunnelProtocol_HBONE,
			TrustDomain:    "c2.local",
			NetworkGateway: &workloadpb.GatewayAddress{
				Destination:   &workloadpb.GatewayAddress_Address{Address: &workloadpb.NetworkAddress{Network: "c2-net", Address: ip("172.16.0.2")}},
				HboneMtlsPort: 15008,
			},
			WorkloadType: workloadpb.WorkloadType_POD,
			// As upstream's split-horizon workloads, the ports carry their
			// app protocol (port name "http").
			Services: map[string]*workloadpb.PortList{nameAppGlobal: {Ports: []*workloadpb.Port{
				{ServicePort: 80, TargetPort: 8080, AppProtocol: workloadpb.AppProtocol_HTTP11},
			}}},
			Status:    workloadpb.WorkloadStatus_HEALTHY,
			ClusterId: "c2",
			Capacity:  wrapperspb.UInt32(3),
		}
		if edit != nil {
			edit(w)
		}
		return w
	}
	tests := []struct {
		name   string
		link   *gatewayv1.Gateway
		remote *federation.ImportedService
		want   *workloadpb.Workload
	}{
		{name: "one gateway IP -> network_gateway address, capacity = Ready endpoints",
			link: linkC2(), remote: imported("c2", "hello", "app", capacity(3)), want: want(nil)},
		{name: "capacity 0 -> UNHEALTHY",
			link: linkC2(), remote: imported("c2", "hello", "app", capacity(0)),
			want: want(func(w *workloadpb.Workload) {
				w.Status, w.Capacity = workloadpb.WorkloadStatus_UNHEALTHY, wrapperspb.UInt32(0)
			})},
		{name: "locality: the link Gateway's labels beat the export's",
			link:   link("c2", "c2", []string{"172.16.0.2"}, gwLabels(federation.LabelRegion, "us", federation.LabelZone, "us-1")),
			remote: imported("c2", "hello", "app", capacity(3), exportedLocality("eu", "eu-1")),
			want:   want(func(w *workloadpb.Workload) { w.Locality = &workloadpb.Locality{Region: "us", Zone: "us-1"} })},
		{name: "locality: the export's when the link has none",
			link: linkC2(), remote: imported("c2", "hello", "app", capacity(3), exportedLocality("eu", "eu-1")),
			want: want(func(w *workloadpb.Workload) { w.Locality = &workloadpb.Locality{Region: "eu", Zone: "eu-1"} })},
		{name: "cluster.local trust domain is left empty, as on every workload",
			link: func() *gatewayv1.Gateway {
				gw := linkC2()
				gw.Annotations[federation.AnnotationTrustDomain] = "cluster.local"
				return gw
			}(), remote: imported("c2", "hello", "app", capacity(3)),
			want: want(func(w *workloadpb.Workload) { w.TrustDomain = "" })},
		{name: "several gateway addresses -> network_gateway by hostname",
			link: link("c2", "c2", []string{"172.16.0.2", "172.16.0.4"}), remote: imported("c2", "hello", "app", capacity(3)),
			want: want(func(w *workloadpb.Workload) {
				w.NetworkGateway = &workloadpb.GatewayAddress{
					Destination: &workloadpb.GatewayAddress_Hostname{Hostname: &workloadpb.NamespacedHostname{
						Namespace: "istio-gateways", Hostname: "c2.eastwest.istio-gateways.mesh.internal"}},
					HboneMtlsPort: 15008,
				}
			})},
		{name: "app protocol and named target ports as exported",
			link: linkC2(), remote: imported("c2", "hello", "app", capacity(3), exportedPorts(&federationpb.Port{Port: 9090, Protocol: "TCP", AppProtocol: "grpc"})),
			want: want(func(w *workloadpb.Workload) {
				w.Services = map[string]*workloadpb.PortList{nameAppGlobal: {Ports: []*workloadpb.Port{{ServicePort: 9090, AppProtocol: workloadpb.AppProtocol_GRPC}}}}
			})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := Build(testConfig, Inputs{Gateways: []*gatewayv1.Gateway{tt.link}, ImportedServices: []*federation.ImportedService{tt.remote}})
			diffProto(t, tt.want, addressesByName(out)[nameSplitC2].GetWorkload())
			diffWarnings(t, nil, out.Warnings)
		})
	}
}

// TestLinkGateways: one gateway workload per link address, with the
// gateway's identity; several addresses (or a DNS name) also make the
// gateway Service the split-horizon workloads name, so ztunnel spreads over
// every address.
func TestLinkGateways(t *testing.T) {
	gatewayWorkload := func(addr string, edit func(*workloadpb.Workload)) *workloadpb.Address {
		uid := testCluster + "/peerd/NetworkGateway/c2/" + addr
		w := &workloadpb.Workload{
			Uid:            uid,
			Name:           uid,
			Namespace:      "istio-gateways",
			Network:        "c2-net",
			TunnelProtocol: workloadpb.TunnelProtocol_HBONE,
			TrustDomain:    "c2.local",
			ServiceAccount: "eastwest",
			ClusterId:      "c2",
		}
		if a, err := netip.ParseAddr(addr); err == nil {
			w.Addresses = [][]byte{a.AsSlice()}
		} else {
			w.Hostname = addr
		}
		if edit != nil {
			edit(w)
		}
		return &workloadpb.Address{Type: &workloadpb.Address_Workload{Workload: w}}
	}
	const gwSvcKey = "istio-gateways/c2.eastwest.istio-gateways.mesh.internal"
	behindService := func(w *workloadpb.Workload) {
		w.Services = map[string]*workloadpb.PortList{gwSvcKey: ports(15008, 15008)}
	}
	gatewayService := &workloadpb.Address{Type: &workloadpb.Address_Service{Service: &workloadpb.Service{
		Name: "c2.eastwest", Namespace: "istio-gateways", Hostname: "c2.eastwest.istio-gateways.mesh.internal",
		Ports: []*workloadpb.Port{{ServicePort: 15008, TargetPort: 15008}},
	}}}
	tests := []struct {
		name string
		link *gatewayv1.Gateway
		want []*workloadpb.Address
	}{
		{name: "one IP -> one gateway workload",
			link: linkC2(), want: []*workloadpb.Address{gatewayWorkload("172.16.0.2", nil)}},
		{name: "one IP listed twice -> still one gateway workload, reached by address",
			link: link("c2", "c2", []string{"172.16.0.2", "172.16.0.2"}), want: []*workloadpb.Address{gatewayWorkload("172.16.0.2", nil)}},
		{name: "several IPs -> a gateway workload each, and their Service",
			link: link("c2", "c2", []string{"172.16.0.2", "172.16.0.4"}),
			want: []*workloadpb.Address{gatewayWorkload("172.16.0.2", behindService), gatewayWorkload("172.16.0.4", behindService), gatewayService}},
		{name: "a DNS name -> a gateway workload with that hostname, and the Service",
			link: link("c2", "c2", []string{"eastwest.c2.example.com"}),
			want: []*workloadpb.Address{gatewayWorkload("eastwest.c2.example.com", behindService), gatewayService}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := Build(testConfig, Inputs{Gateways: []*gatewayv1.Gateway{tt.link}})
			diffProto(t, tt.want, out.Addresses)
			diffWarnings(t, nil, out.Warnings)
		})
	}
}

// TestLinks: which Gateways make links, and the warnings about those that
// cannot.
func TestLinks(t *testing.T) {
	tests := []struct {
		name      string
		gateways  []*gatewayv1.Gateway
		imports   []*federation.ImportedService
		wantNames []string
		warnings  []Warning
	}{
		{name: "a Gateway of another class -> nothing",
			gateways: []*gatewayv1.Gateway{func() *gatewayv1.Gateway {
				gw := linkC2()
				gw.Spec.GatewayClassName = federation.ClassEastWest
				return gw
			}()}},
		{name: "a link to the local cluster -> ignored, no warning",
			gateways: []*gatewayv1.Gateway{link("self", testCluster, []string{"172.16.0.1"})},
			imports:  []*federation.ImportedService{imported(testCluster, "hello", "app")},
			warnings: []Warning{{Object: ObjectRef{Kind: KindCluster, Name: testCluster},
				Message: "services imported from this cluster are ignored: no istio-remote Gateway links it"}}},
		{name: "an invalid link -> warning with ParseLink's reason, contributes nothing",
			gateways: []*gatewayv1.Gateway{link("c2", "c2", nil)},
			imports:  []*federation.ImportedService{imported("c2", "hello", "app")},
			warnings: []Warning{
				{Object: ObjectRef{Kind: KindCluster, Name: "c2"}, Message: "services imported from this cluster are ignored: no istio-remote Gateway links it"},
				{Object: objectRef(KindGateway, "istio-gateways", "c2"),
					Message: "not a usable link: spec.addresses: none: the linked cluster's east-west gateway address is required"},
			}},
		{name: "imports of an unlinked cluster -> one warning, nothing else",
			imports: []*federation.ImportedService{imported("c9", "hello", "app"), imported("c9", "hello", "web")},
			warnings: []Warning{{Object: ObjectRef{Kind: KindCluster, Name: "c9"},
				Message: "services imported from this cluster are ignored: no istio-remote Gateway links it"}}},
		{name: "two links to one cluster -> the first by name is used, the other warned about",
			gateways:  []*gatewayv1.Gateway{link("z-c2", "c2", []string{"172.16.9.9"}), linkC2()},
			imports:   []*federation.ImportedService{imported("c2", "hello", "app")},
			wantNames: []string{nameGatewayC2, nameSplitC2, nameAppGlobal},
			warnings: []Warning{{Object: objectRef(KindGateway, "istio-gateways", "z-c2"),
				Message: "cluster c2 is also linked by gateway istio-gateways/c2, which is used: this link is ignored"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := Build(testConfig, Inputs{Gateways: tt.gateways, ImportedServices: tt.imports})
			var names []string
			for _, a := range out.Addresses {
				names = append(names, ResourceName(a))
			}
			if d := cmp.Diff(tt.wantNames, names); d != "" {
				t.Errorf("addresses (-want +got):\n%s", d)
			}
			diffWarnings(t, tt.warnings, out.Warnings)
		})
	}
}

// TestModelPeeringDependencies is the peering half of Model's dependency
// table: each row changes one object and lists exactly what must be pushed.
func TestModelPeeringDependencies(t *testing.T) {
	const (
		nameOtherGlobal = "hello/other.hello.mesh.internal"
		nameOtherSplit  = testCluster + "/peerd/SplitHorizon/c2/hello/other"
		nameWebGlobal   = "plain/web.plain.mesh.internal"
		nameWebPod      = testCluster + "//Pod/plain/web"
	)
	base := func() Inputs {
		return Inputs{
			Namespaces: []*corev1.Namespace{namespace("hello", nil, nil), namespace("plain", nil, nil)},
			Services: []*corev1.Service{
				appService(scopeGlobalLabel),
				service("plain", "web", selector("app", "web"), clusterIPs("10.96.0.9"), svcPorts(sport("http", 80, 8080))),
			},
			Pods:     []*corev1.Pod{appPod(), pod("plain", "web", podLabels("app", "web"), podIPs("10.0.0.9"))},
			Gateways: []*gatewayv1.Gateway{linkC2(), linkC3()},
			ImportedServices: []*federation.ImportedService{
				imported("c2", "hello", "app"), imported("c3", "hello", "app"), imported("c2", "hello", "other"),
			},
		}
	}
	tests := []struct {
		name        string
		change      []Change
		upserts     []string
		deletes     []string
		exports     []string
		unexports   []string
		vipsChanged bool
	}{
		{name: "imported capacity -> its split-horizon workload only",
			change:  []Change{upsert(imported("c2", "hello", "app", capacity(0)))},
			upserts: []string{nameSplitC2}},
		{name: "imported SANs -> its global service only",
			change:  []Change{upsert(imported("c2", "hello", "app", exportedSANs("spiffe://c2.local/ns/hello/sa/new")))},
			upserts: []string{nameAppGlobal}},
		{name: "imported service unchanged -> nothing",
			change: []Change{upsert(imported("c2", "hello", "app"))}},
		{name: "imported service withdrawn -> its split-horizon removed, the global service loses its SANs",
			change:  []Change{{Ref: ObjectRef{Kind: KindImportedService, Cluster: "c3", Namespace: "hello", Name: "app"}}},
			upserts: []string{nameAppGlobal}, deletes: []string{nameSplitC3}},
		{name: "last exporter of a remote-only service withdrawn -> the global service removed, its VIPs freed",
			change:  []Change{{Ref: ObjectRef{Kind: KindImportedService, Cluster: "c2", Namespace: "hello", Name: "other"}}},
			deletes: []string{nameOtherGlobal, nameOtherSplit}, vipsChanged: true},
		{name: "new remote-only service -> its global service (new VIPs) and split-horizon workload",
			change:  []Change{upsert(imported("c3", "hello", "new"))},
			upserts: []string{"hello/new.hello.mesh.internal", testCluster + "/peerd/SplitHorizon/c3/hello/new"}, vipsChanged: true},
		{name: "link address -> its gateway workloads and every split-horizon workload of its cluster",
			change:  []Change{upsert(link("c2", "c2", []string{"172.16.0.22"}))},
			upserts: []string{testCluster + "/peerd/NetworkGateway/c2/172.16.0.22", nameOtherSplit, nameSplitC2},
			deletes: []string{nameGatewayC2}},
		{name: "link status only -> nothing",
			change: []Change{upsert(func() *gatewayv1.Gateway {
				gw := linkC2()
				gw.Status.Conditions = []metav1.Condition{{Type: "Programmed", Status: "True"}}
				return gw
			}())}},
		{name: "link deleted -> its cluster's workloads removed, global services lose it",
			change:      []Change{deleted(KindGateway, "istio-gateways", "c2")},
			upserts:     []string{nameAppGlobal},
			deletes:     []string{nameGatewayC2, nameOtherGlobal, nameOtherSplit, nameSplitC2},
			vipsChanged: true},
		{name: "local scope removed -> global service (remote only now), local endpoints, unexport",
			change:    []Change{upsert(appService())},
			upserts:   []string{nameAppGlobal, nameAppPod},
			unexports: []string{"hello/app"}},
		{name: "local Service made global-only -> plain Service (remote SANs), its split-horizon workloads, export",
			change:  []Change{upsert(appService(scopeGlobalOnlyLabel))},
			upserts: []string{nameAppPlain, nameSplitC2, nameSplitC3},
			exports: []string{"hello/app"}},
		{name: "pod readiness -> its workload and the export's capacity, not the global service",
			change:  []Change{upsert(appPod(podReadyStatus(corev1.ConditionFalse)))},
			upserts: []string{nameAppPod},
			exports: []string{"hello/app"}},
		{name: "pod service account -> its workload, the export and the global service (SANs)",
			change:  []Change{upsert(appPod(serviceAccount("other")))},
			upserts: []string{nameAppGlobal, nameAppPod},
			exports: []string{"hello/app"}},
		{name: "pod label other than the selector -> its workload only",
			change:  []Change{upsert(appPod(podLabels("version", "v2")))},
			upserts: []string{nameAppPod}},
		{name: "namespace scope label -> its Services become global: global service, endpoints, export",
			change:      []Change{upsert(namespace("plain", map[string]string{LabelServiceScope: ScopeGlobal}, nil))},
			upserts:     []string{nameWebGlobal, nameWebPod},
			exports:     []string{"plain/web"},
			vipsChanged: true},
		{name: "namespace scope label where the Service's own label wins -> nothing",
			change:  []Change{upsert(namespace("hello", map[string]string{LabelServiceScope: ScopeGlobal}, nil))},
			exports: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := NewModel(testConfig)
			m.Apply(base().changes())
			d := m.Apply(tt.change)
			upserts, deletes := deltaNames(d)
			slices.Sort(tt.upserts)
			slices.Sort(tt.deletes)
			if diff := cmp.Diff(tt.upserts, upserts); diff != "" {
				t.Errorf("upserts (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.deletes, deletes); diff != "" {
				t.Errorf("deletes (-want +got):\n%s", diff)
			}
			var exports []string
			for _, e := range d.Exports {
				exports = append(exports, federation.ResourceName(e.Namespace, e.Name))
			}
			if diff := cmp.Diff(tt.exports, exports); diff != "" {
				t.Errorf("exports (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.unexports, d.Unexports); diff != "" {
				t.Errorf("unexports (-want +got):\n%s", diff)
			}
			if d.VIPsChanged != tt.vipsChanged {
				t.Errorf("VIPsChanged %v, want %v", d.VIPsChanged, tt.vipsChanged)
			}
			assertMatchesBuild(t, m, currentInputs(base(), tt.change))
		})
	}
}

// collidingNames finds two service names in namespace hello whose global
// hostnames hash to the same first candidate of r.
func collidingNames(t *testing.T, r vipRange) (string, string) {
	t.Helper()
	seen := map[netip.Addr]string{}
	for i := range 1000 {
		name := fmt.Sprintf("s%d", i)
		c := r.candidate(hostnameHash(globalHostname(name, "hello", DefaultGlobalSuffix)), 0)
		if other, ok := seen[c]; ok {
			return other, name
		}
		seen[c] = name
	}
	t.Fatal("no two names collide")
	return "", ""
}

// TestVIPs: deterministic by hostname, stable while the service exists
// (also against a newcomer hashing onto it), restored from the seed after a
// restart, freed when the service goes, never the network or broadcast
// address.
func TestVIPs(t *testing.T) {
	small := netip.MustParsePrefix("240.240.0.0/29") // 6 usable addresses
	cfg := testConfig
	cfg.VIPv4Range = small
	first, second := collidingNames(t, newVIPRange(small))
	remote := func(name string) Change { return upsert(imported("c2", "hello", name)) }
	v4 := func(vips map[string][]netip.Addr, name string) netip.Addr {
		t.Helper()
		addrs := vips[globalHostname(name, "hello", DefaultGlobalSuffix)]
		if len(addrs) == 0 || !addrs[0].Is4() {
			t.Fatalf("%s has no IPv4 VIP: %v", name, vips)
		}
		return addrs[0]
	}

	m := NewModel(cfg)
	if d := m.Apply([]Change{upsert(linkC2()), remote(first)}); !d.VIPsChanged {
		t.Error("first allocation: VIPsChanged is false")
	}
	firstVIP := v4(m.VIPs(), first)

	t.Run("the same hostname gets the same VIP in another cluster", func(t *testing.T) {
		other := cfg
		other.ClusterID = "c9"
		out := Build(other, Inputs{Gateways: []*gatewayv1.Gateway{linkC2()}, ImportedServices: []*federation.ImportedService{imported("c2", "hello", first)}})
		if got := v4(out.VIPs, first); got != firstVIP {
			t.Errorf("VIP %s, want %s", got, firstVIP)
		}
	})

	m.Apply([]Change{remote(second)})
	vips := m.VIPs()
	if got := v4(vips, first); got != firstVIP {
		t.Errorf("%s moved from %s to %s when %s arrived", first, firstVIP, got, second)
	}
	if v4(vips, second) == firstVIP {
		t.Errorf("%s was given %s, which %s holds", second, firstVIP, first)
	}
	secondVIP := v4(vips, second)

	t.Run("restart: the seed restores every allocation, whatever the order", func(t *testing.T) {
		seeded := cfg
		seeded.VIPs = m.VIPs()
		r := NewModel(seeded)
		r.Apply([]Change{upsert(linkC2()), remote(second)}) // the newcomer first this time
		r.Apply([]Change{remote(first)})
		if got := v4(r.VIPs(), first); got != firstVIP {
			t.Errorf("%s: %s after restart, want %s", first, got, firstVIP)
		}
		if got := v4(r.VIPs(), second); got != secondVIP {
			t.Errorf("%s: %s after restart, want %s", second, got, secondVIP)
		}
	})

	t.Run("two restarts before a service comes back keep its reservation", func(t *testing.T) {
		seeded := cfg
		seeded.VIPs = m.VIPs()
		r := NewModel(seeded)
		r.Apply([]Change{upsert(linkC2()), remote(second)}) // first has not come back yet
		again := cfg
		again.VIPs = r.VIPs() // what the first restart saved
		r2 := NewModel(again)
		// A newcomer that hashes onto first's VIP arrives before first does:
		// only the reservation keeps it off.
		rng := newVIPRange(small)
		hashed := rng.candidate(hostnameHash(globalHostname(first, "hello", DefaultGlobalSuffix)), 0)
		third := ""
		for i := range 1000 {
			name := fmt.Sprintf("t%d", i)
			if rng.candidate(hostnameHash(globalHostname(name, "hello", DefaultGlobalSuffix)), 0) == hashed {
				third = name
				break
			}
		}
		if third == "" {
			t.Fatal("no name hashes onto the first VIP")
		}
		r2.Apply([]Change{upsert(linkC2()), remote(second), remote(third)})
		r2.Apply([]Change{remote(first)})
		if got := v4(r2.VIPs(), first); got != firstVIP {
			t.Errorf("%s: %s after two restarts, want %s", first, got, firstVIP)
		}
		if !r.ReleaseUnclaimedVIPs() {
			t.Error("ReleaseUnclaimedVIPs found no reservation to release")
		}
		if _, held := r.VIPs()[globalHostname(first, "hello", DefaultGlobalSuffix)]; held {
			t.Errorf("%s still holds its VIPs after ReleaseUnclaimedVIPs: %v", first, r.VIPs())
		}
		if r.ReleaseUnclaimedVIPs() {
			t.Error("a second ReleaseUnclaimedVIPs released something again")
		}
	})

	t.Run("without the seed the newcomer would have had the hashed address", func(t *testing.T) {
		out := Build(cfg, Inputs{Gateways: []*gatewayv1.Gateway{linkC2()}, ImportedServices: []*federation.ImportedService{imported("c2", "hello", second)}})
		if got := v4(out.VIPs, second); got != firstVIP {
			t.Errorf("%s alone: %s, want the hashed %s", second, got, firstVIP)
		}
	})

	d := m.Apply([]Change{{Ref: ObjectRef{Kind: KindImportedService, Cluster: "c2", Namespace: "hello", Name: first}}})
	if !d.VIPsChanged {
		t.Error("release: VIPsChanged is false")
	}
	if _, ok := m.VIPs()[globalHostname(first, "hello", DefaultGlobalSuffix)]; ok {
		t.Errorf("%s's VIPs not released", first)
	}
	if got := v4(m.VIPs(), second); got != secondVIP {
		t.Errorf("%s moved from %s to %s when %s left", second, secondVIP, got, first)
	}

	t.Run("network and broadcast addresses are never handed out; a full range warns", func(t *testing.T) {
		tiny := testConfig
		tiny.VIPv4Range = netip.MustParsePrefix("240.240.0.0/30") // .1 and .2
		in := Inputs{Gateways: []*gatewayv1.Gateway{linkC2()}}
		for _, name := range []string{"a", "b", "c"} {
			in.ImportedServices = append(in.ImportedServices, imported("c2", "hello", name))
		}
		out := Build(tiny, in)
		var got []string
		for _, addrs := range out.VIPs {
			for _, a := range addrs {
				if a.Is4() {
					got = append(got, a.String())
				}
			}
		}
		slices.Sort(got)
		if d := cmp.Diff([]string{"240.240.0.1", "240.240.0.2"}, got); d != "" {
			t.Errorf("IPv4 VIPs (-want +got):\n%s", d)
		}
		var full []string
		for _, w := range out.Warnings {
			if strings.Contains(w.Message, "no free VIP in 240.240.0.0/30") {
				full = append(full, w.Object.String())
			}
		}
		if len(full) != 1 {
			t.Errorf("want one full-range warning, got %v", out.Warnings)
		}
	})

	t.Run("a seed outside the ranges is dropped with a warning", func(t *testing.T) {
		bad := testConfig
		bad.VIPs = map[string][]netip.Addr{"x.hello.mesh.internal": {netip.MustParseAddr("10.0.0.1")}}
		diffWarnings(t, []Warning{{Object: ObjectRef{Kind: "config", Name: "vips"}, Field: "x.hello.mesh.internal",
			Message: "saved VIP 10.0.0.1 is outside the VIP ranges: dropped"}}, NewModel(bad).Warnings())
	})
}

// TestVIPRange: candidates stay inside the range and off its reserved
// addresses, for IPv4 and for an IPv6 range wider than 64 bits.
func TestVIPRange(t *testing.T) {
	for _, p := range []string{"240.240.0.0/16", "240.240.0.0/30", "2001:2::/48", "2001:2::/126"} {
		r := newVIPRange(netip.MustParsePrefix(p))
		for _, h := range []uint64{0, 1, 2, 3, 1 << 40, ^uint64(0)} {
			c := r.candidate(h, 0)
			if !r.contains(c) || c == r.prefix.Addr() {
				t.Errorf("%s: candidate %s for hash %d is outside or the network address", p, c, h)
			}
			if r.prefix.Addr().Is4() && c == addOffset(r.prefix.Addr(), 1<<(32-r.prefix.Bits())-1) {
				t.Errorf("%s: broadcast address %s handed out", p, c)
			}
		}
	}
}

// TestExportLocalityFromEastWestGateway: without Config.Locality, exports
// carry the local east-west Gateway's region and zone, and a change of its
// labels re-exports what was exported before.
func TestExportLocalityFromEastWestGateway(t *testing.T) {
	eastWest := func(region, zone string) *gatewayv1.Gateway {
		return &gatewayv1.Gateway{
			ObjectMeta: metav1.ObjectMeta{Namespace: "istio-gateways", Name: "istio-eastwest",
				Labels: map[string]string{federation.LabelRegion: region, federation.LabelZone: zone}},
			Spec: gatewayv1.GatewaySpec{GatewayClassName: federation.ClassEastWest},
		}
	}
	m := NewModel(testConfig)
	first := m.Apply([]Change{{Ref: objectRef(KindService, "hello", "app"), Object: appService(scopeGlobalLabel)}})
	if len(first.Exports) != 1 || first.Exports[0].GetLocality() != nil {
		t.Fatalf("export before any east-west Gateway = %v; want one without a locality", first.Exports)
	}
	ref := objectRef(KindGateway, "istio-gateways", "istio-eastwest")
	d := m.Apply([]Change{{Ref: ref, Object: eastWest("eu", "eu-1")}})
	if len(d.Exports) != 1 {
		t.Fatalf("the east-west Gateway's locality re-exported %d services; want 1", len(d.Exports))
	}
	diffProto(t, &federationpb.Locality{Region: "eu", Zone: "eu-1"}, d.Exports[0].GetLocality())
	if d := m.Apply([]Change{{Ref: ref, Object: eastWest("eu", "eu-1")}}); len(d.Exports) != 0 {
		t.Errorf("an unchanged east-west Gateway re-exported %v", d.Exports)
	}
	d = m.Apply([]Change{{Ref: ref}})
	if len(d.Exports) != 1 || d.Exports[0].GetLocality() != nil {
		t.Errorf("after the east-west Gateway is deleted, exports = %v; want one without a locality", d.Exports)
	}
}

// TestScopeConflictIsReported: clusters that export one name with
// different scopes get a warning on the global service naming each
// cluster's scope; agreeing clusters get none.
func TestScopeConflictIsReported(t *testing.T) {
	globalOnly := func(s *federationpb.FederatedService) { s.Scope = federationpb.Scope_GLOBAL_ONLY }
	out := Build(testConfig, Inputs{
		Services:         []*corev1.Service{appService(scopeGlobalOnlyLabel)},
		Gateways:         []*gatewayv1.Gateway{linkC2(), linkC3()},
		ImportedServices: []*federation.ImportedService{imported("c2", "hello", "app"), imported("c3", "hello", "app", globalOnly)},
	})
	diffWarnings(t, []Warning{{
		Object:  ObjectRef{Kind: KindGlobalService, Namespace: "hello", Name: "app"},
		Field:   "scope",
		Message: "clusters disagree (" + testConfig.ClusterID + "=global-only, c2=global, c3=global-only): all count as global here; only a cluster whose own Service says global-only widens its plain name",
	}}, out.Warnings)

	agreeing := Build(testConfig, Inputs{
		Services:         []*corev1.Service{appService(scopeGlobalLabel)},
		Gateways:         []*gatewayv1.Gateway{linkC2()},
		ImportedServices: []*federation.ImportedService{imported("c2", "hello", "app")},
	})
	diffWarnings(t, nil, agreeing.Warnings)
}
