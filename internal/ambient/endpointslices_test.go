package ambient

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
)

func runSlice(cfg Config, in Inputs, es *discoveryv1.EndpointSlice) ([]*workloadpb.Workload, []Warning) {
	var w warnings
	m := NewModel(cfg)
	m.Apply(in.changes())
	cfg, idx := m.cfg, m.idx
	w.list = m.Warnings()
	out := endpointSliceWorkloads(endpointSliceInput{cfg: cfg, idx: idx, slice: es}, &w)
	return out, w.sorted()
}

// wantSliceWorkload is the workload istiod builds for one opaque endpoint of
// slice apps/<slice> of Service apps/ext.
func wantSliceWorkload(sliceName, addr string, edit func(*workloadpb.Workload)) *workloadpb.Workload {
	w := &workloadpb.Workload{
		Uid:         testCluster + "/discovery.k8s.io/EndpointSlice/apps/" + sliceName + "/" + addr,
		Name:        sliceName,
		Namespace:   "apps",
		Addresses:   [][]byte{ip(addr)},
		Network:     "net1",
		Services:    map[string]*workloadpb.PortList{"apps/ext.apps.svc.cluster.local": ports(80, 8080)},
		Status:      workloadpb.WorkloadStatus_HEALTHY,
		ClusterId:   testCluster,
		NetworkMode: workloadpb.NetworkMode_HOST_NETWORK,
	}
	if edit != nil {
		edit(w)
	}
	return w
}

func TestEndpointSliceWorkloads(t *testing.T) {
	ext := service("apps", "ext", svcPorts(sport("http", 80, 8080)))
	in := Inputs{Services: []*corev1.Service{ext}}
	httpPort := slicePort("http", 8080, corev1.ProtocolTCP)
	tests := []struct {
		name     string
		cfg      *Config
		in       *Inputs
		slice    *discoveryv1.EndpointSlice
		want     []*workloadpb.Workload
		warnings []Warning
	}{
		{
			name:  "endpoint without targetRef becomes a workload: uid <cluster>/discovery.k8s.io/EndpointSlice/<ns>/<slice>/<ip>, host network, no identity",
			slice: slice("apps", "ext-1", "ext", httpPort, endpoint("192.168.1.5")),
			want:  []*workloadpb.Workload{wantSliceWorkload("ext-1", "192.168.1.5", nil)},
		},
		{
			name:  "endpoints keep slice order",
			slice: slice("apps", "ext-1", "ext", httpPort, endpoint("192.168.1.6"), endpoint("192.168.1.5")),
			want: []*workloadpb.Workload{
				wantSliceWorkload("ext-1", "192.168.1.6", nil),
				wantSliceWorkload("ext-1", "192.168.1.5", nil),
			},
		},
		{
			name:  "Ready false is UNHEALTHY; Ready unset is HEALTHY",
			slice: slice("apps", "ext-1", "ext", httpPort, endpoint("192.168.1.5", epReady(false)), endpoint("192.168.1.6")),
			want: []*workloadpb.Workload{
				wantSliceWorkload("ext-1", "192.168.1.5", func(w *workloadpb.Workload) { w.Status = workloadpb.WorkloadStatus_UNHEALTHY }),
				wantSliceWorkload("ext-1", "192.168.1.6", nil),
			},
		},
		{
			name:  "endpoint pointing at a Pod is skipped (even an unknown one), other kinds are kept",
			slice: slice("apps", "ext-1", "ext", httpPort, endpoint("10.0.0.1", targetRef("Pod", "apps", "nope", "")), endpoint("192.168.1.5", targetRef("Node", "", "n1", ""))),
			want:  []*workloadpb.Workload{wantSliceWorkload("ext-1", "192.168.1.5", nil)},
		},
		{
			name:  "IPv6 slice",
			slice: slice("apps", "ext-6", "ext", httpPort, endpoint("fd00::5"), func(es *discoveryv1.EndpointSlice) { es.AddressType = discoveryv1.AddressTypeIPv6 }),
			want:  []*workloadpb.Workload{wantSliceWorkload("ext-6", "fd00::5", nil)},
		},
		{
			name:  "slice ports join the service ports by name; UDP and unnamed slice ports are dropped",
			in:    &Inputs{Services: []*corev1.Service{service("apps", "ext", svcPorts(sport("http", 80, 8080), sport("admin", 9000, 9000)))}},
			slice: slice("apps", "ext-1", "ext", slicePort("admin", 9901, corev1.ProtocolTCP), slicePort("http", 8081, corev1.ProtocolTCP), slicePort("http", 53, corev1.ProtocolUDP), endpoint("192.168.1.5")),
			want: []*workloadpb.Workload{wantSliceWorkload("ext-1", "192.168.1.5", func(w *workloadpb.Workload) {
				w.Services["apps/ext.apps.svc.cluster.local"] = ports(9000, 9901, 80, 8081)
			})},
		},
		{
			name:  "custom trust domain and network from the system namespace",
			cfg:   &Config{ClusterID: testCluster, TrustDomain: "c1.local"},
			in:    &Inputs{Services: []*corev1.Service{ext}, Namespaces: []*corev1.Namespace{namespace("istio-system", map[string]string{labelTopologyNetwork: "n9"}, nil)}},
			slice: slice("apps", "ext-1", "ext", httpPort, endpoint("192.168.1.5")),
			want: []*workloadpb.Workload{wantSliceWorkload("ext-1", "192.168.1.5", func(w *workloadpb.Workload) {
				w.TrustDomain = "c1.local"
				w.Network = "n9"
			})},
		},
		{
			name:  "slice of an unknown service yields nothing",
			slice: slice("apps", "gone-1", "gone", httpPort, endpoint("192.168.1.5")),
			want:  nil,
		},
		{
			name:  "slice without the service-name label yields nothing",
			slice: slice("apps", "ext-1", "ext", httpPort, endpoint("192.168.1.5"), func(es *discoveryv1.EndpointSlice) { es.Labels = nil }),
			want:  nil,
		},
		{
			name:  "FQDN slice yields nothing",
			slice: slice("apps", "ext-1", "ext", httpPort, func(es *discoveryv1.EndpointSlice) { es.AddressType = discoveryv1.AddressTypeFQDN }, endpoint("example.com")),
			want:  nil,
		},
		{
			name:  "duplicate address in one slice: first kept, warning",
			slice: slice("apps", "ext-1", "ext", httpPort, endpoint("192.168.1.5"), endpoint("192.168.1.5", epReady(false))),
			want:  []*workloadpb.Workload{wantSliceWorkload("ext-1", "192.168.1.5", nil)},
			warnings: []Warning{{Object: ObjectRef{Kind: "endpointslice", Namespace: "apps", Name: "ext-1"}, Field: "endpoints[1].addresses[0]",
				Message: `address "192.168.1.5" listed twice: later endpoint ignored`}},
		},
		{
			name:  "invalid address: endpoint skipped, warning",
			slice: slice("apps", "ext-1", "ext", httpPort, endpoint("nope"), endpoint("192.168.1.5")),
			want:  []*workloadpb.Workload{wantSliceWorkload("ext-1", "192.168.1.5", nil)},
			warnings: []Warning{{Object: ObjectRef{Kind: "endpointslice", Namespace: "apps", Name: "ext-1"}, Field: "endpoints[0].addresses",
				Message: `invalid IP "nope": endpoint not published`}},
		},
		{
			name:  "endpoint without addresses is skipped",
			slice: slice("apps", "ext-1", "ext", httpPort, func(es *discoveryv1.EndpointSlice) { es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{}) }),
			want:  nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig
			if tt.cfg != nil {
				cfg = *tt.cfg
			}
			inputs := in
			if tt.in != nil {
				inputs = *tt.in
			}
			got, warns := runSlice(cfg, inputs, tt.slice)
			diffProto(t, tt.want, got)
			diffWarnings(t, tt.warnings, warns)
		})
	}
}
