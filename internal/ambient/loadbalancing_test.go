package ambient

import (
	"testing"

	corev1 "k8s.io/api/core/v1"

	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
)

func lb(mode workloadpb.LoadBalancing_Mode, scopes ...workloadpb.LoadBalancing_Scope) *workloadpb.LoadBalancing {
	return &workloadpb.LoadBalancing{RoutingPreference: scopes, Mode: mode}
}

const (
	network = workloadpb.LoadBalancing_NETWORK
	region  = workloadpb.LoadBalancing_REGION
	zone    = workloadpb.LoadBalancing_ZONE
	subzone = workloadpb.LoadBalancing_SUBZONE
	nodeS   = workloadpb.LoadBalancing_NODE
	strict  = workloadpb.LoadBalancing_STRICT
	fail    = workloadpb.LoadBalancing_FAILOVER
)

// Rows follow the design's traffic-distribution table, then its precedence.
func TestLoadBalancing(t *testing.T) {
	tdAnno := func(v string) svcOpt { return svcAnnotations(AnnotationTrafficDistribution, v) }
	nsAnno := func(v string) map[string]string { return map[string]string{AnnotationTrafficDistribution: v} }
	tests := []struct {
		name     string
		svc      *corev1.Service
		nsAnno   map[string]string
		want     *workloadpb.LoadBalancing
		warnings []Warning
	}{
		// The table.
		{name: "PreferNetwork -> [NETWORK] FAILOVER", svc: service("a", "s", specTrafficDistribution("PreferNetwork")),
			want: lb(fail, network)},
		{name: "PreferClose -> [NETWORK, REGION, ZONE] FAILOVER", svc: service("a", "s", specTrafficDistribution("PreferClose")),
			want: lb(fail, network, region, zone)},
		{name: "PreferSameZone -> [NETWORK, REGION, ZONE] FAILOVER", svc: service("a", "s", specTrafficDistribution("PreferSameZone")),
			want: lb(fail, network, region, zone)},
		{name: "PreferRegion -> [NETWORK, REGION] FAILOVER", svc: service("a", "s", specTrafficDistribution("PreferRegion")),
			want: lb(fail, network, region)},
		{name: "PreferSameNode -> [NETWORK, REGION, ZONE, SUBZONE, NODE] FAILOVER", svc: service("a", "s", specTrafficDistribution("PreferSameNode")),
			want: lb(fail, network, region, zone, subzone, nodeS)},
		{name: "Any -> no load_balancing", svc: service("a", "s", specTrafficDistribution("Any")),
			want: nil},
		{name: "internalTrafficPolicy Local -> [NODE] STRICT", svc: service("a", "s", internalLocal()),
			want: lb(strict, nodeS)},
		{name: "publishNotReadyAddresses -> health policy ALLOW_ALL", svc: service("a", "s", publishNotReady()),
			want: &workloadpb.LoadBalancing{HealthPolicy: workloadpb.LoadBalancing_ALLOW_ALL}},
		{name: "publishNotReadyAddresses adds ALLOW_ALL to a distribution", svc: service("a", "s", publishNotReady(), specTrafficDistribution("PreferClose")),
			want: &workloadpb.LoadBalancing{RoutingPreference: []workloadpb.LoadBalancing_Scope{network, region, zone}, Mode: fail,
				HealthPolicy: workloadpb.LoadBalancing_ALLOW_ALL}},
		{name: "default for a local service -> no load_balancing", svc: service("a", "s"),
			want: nil},

		// Precedence.
		{name: "internalTrafficPolicy Local beats spec.trafficDistribution", svc: service("a", "s", internalLocal(), specTrafficDistribution("PreferClose"), tdAnno("PreferNetwork")),
			want: lb(strict, nodeS)},
		{name: "spec.trafficDistribution beats the service annotation", svc: service("a", "s", specTrafficDistribution("PreferSameNode"), tdAnno("PreferClose")),
			want: lb(fail, network, region, zone, subzone, nodeS)},
		{name: "spec Any beats the service annotation", svc: service("a", "s", specTrafficDistribution("Any"), tdAnno("PreferClose")),
			want: nil},
		{name: "service annotation beats the namespace annotation", svc: service("a", "s", tdAnno("PreferRegion")), nsAnno: nsAnno("PreferClose"),
			want: lb(fail, network, region)},
		{name: "service annotation Any beats the namespace annotation", svc: service("a", "s", tdAnno("Any")), nsAnno: nsAnno("PreferClose"),
			want: nil},
		{name: "namespace annotation applies when the service says nothing", svc: service("a", "s"), nsAnno: nsAnno("PreferNetwork"),
			want: lb(fail, network)},
		{name: "annotations compare case-insensitively", svc: service("a", "s", tdAnno("prefersamezone")),
			want: lb(fail, network, region, zone)},
		{name: "empty service annotation falls through to the namespace", svc: service("a", "s", tdAnno("")), nsAnno: nsAnno("PreferSameNode"),
			want: lb(fail, network, region, zone, subzone, nodeS)},

		// Unknown values: a warning naming object and field, then the default.
		{name: "unknown service annotation -> warning, default (namespace not consulted, as istiod)",
			svc: service("a", "s", tdAnno("Nearest")), nsAnno: nsAnno("PreferClose"), want: nil,
			warnings: []Warning{{Object: ObjectRef{Kind: "service", Namespace: "a", Name: "s"}, Field: "metadata.annotations[networking.istio.io/traffic-distribution]",
				Message: `unknown traffic distribution "Nearest": default applies`}}},
		{name: "unknown namespace annotation -> warning, default",
			svc: service("a", "s"), nsAnno: nsAnno("Nearest"), want: nil,
			warnings: []Warning{{Object: ObjectRef{Kind: "namespace", Namespace: "", Name: "a"}, Field: "metadata.annotations[networking.istio.io/traffic-distribution]",
				Message: `unknown traffic distribution "Nearest": default applies`}}},
		{name: "unknown spec value -> warning, ignored as istiod does (annotations still apply)",
			svc: service("a", "s", specTrafficDistribution("Nearest"), tdAnno("PreferRegion")), want: lb(fail, network, region),
			warnings: []Warning{{Object: ObjectRef{Kind: "service", Namespace: "a", Name: "s"}, Field: "spec.trafficDistribution",
				Message: `unknown traffic distribution "Nearest": ignored, annotations and default apply`}}},
		{name: "unknown spec value alone -> warning, default",
			svc: service("a", "s", specTrafficDistribution("Nearest")), want: nil,
			warnings: []Warning{{Object: ObjectRef{Kind: "service", Namespace: "a", Name: "s"}, Field: "spec.trafficDistribution",
				Message: `unknown traffic distribution "Nearest": ignored, annotations and default apply`}}},
		{name: "spec values are case-sensitive (an API enum)",
			svc: service("a", "s", specTrafficDistribution("preferclose")), want: nil,
			warnings: []Warning{{Object: ObjectRef{Kind: "service", Namespace: "a", Name: "s"}, Field: "spec.trafficDistribution",
				Message: `unknown traffic distribution "preferclose": ignored, annotations and default apply`}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var w warnings
			got := loadBalancing(loadBalancingInput{service: tt.svc, namespaceAnnotations: tt.nsAnno}, &w)
			diffProto(t, tt.want, got)
			diffWarnings(t, tt.warnings, w.sorted())
		})
	}
}

// The namespace annotation reaches the Service through Build's namespace lookup.
func TestLoadBalancingFromNamespaceObject(t *testing.T) {
	out := Build(testConfig, Inputs{
		Namespaces: []*corev1.Namespace{namespace("a", nil, map[string]string{AnnotationTrafficDistribution: "PreferClose"})},
		Services:   []*corev1.Service{service("a", "s")},
	})
	if len(out.Addresses) != 1 {
		t.Fatalf("got %d addresses, want 1", len(out.Addresses))
	}
	diffProto(t, lb(fail, network, region, zone), out.Addresses[0].GetService().GetLoadBalancing())
}

// Each service gets its own message: adding ALLOW_ALL to one must not leak into another.
func TestLoadBalancingNotShared(t *testing.T) {
	var w warnings
	a := loadBalancing(loadBalancingInput{service: service("a", "s1", specTrafficDistribution("PreferClose"), publishNotReady())}, &w)
	b := loadBalancing(loadBalancingInput{service: service("a", "s2", specTrafficDistribution("PreferClose"))}, &w)
	if a == b {
		t.Fatal("load balancing messages are shared")
	}
	diffProto(t, lb(fail, network, region, zone), b)
}
