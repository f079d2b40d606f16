package ambient

import (
	"testing"

	corev1 "k8s.io/api/core/v1"

	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
)

func runService(cfg Config, ns *corev1.Namespace, s *corev1.Service) (*workloadpb.Service, []Warning) {
	var w warnings
	cfg = cfg.withDefaults()
	svc := serviceResource(serviceInput{cfg: cfg, network: localNetwork(cfg, nil), svc: s, namespace: ns}, &w)
	return svc, w.sorted()
}

// wantService is the Service of service(ns, name) under testConfig, changed by edit.
func wantService(ns, name string, edit func(*workloadpb.Service)) *workloadpb.Service {
	s := &workloadpb.Service{
		Name:       name,
		Namespace:  ns,
		Hostname:   name + "." + ns + ".svc.cluster.local",
		Addresses:  []*workloadpb.NetworkAddress{netAddr("net1", "10.96.0.10")},
		IpFamilies: workloadpb.IPFamilies_IPV4_ONLY,
		Canonical:  true,
	}
	if edit != nil {
		edit(s)
	}
	return s
}

func TestServiceResource(t *testing.T) {
	tests := []struct {
		name     string
		cfg      *Config
		svc      *corev1.Service
		want     *workloadpb.Service
		warnings []Warning
	}{
		{
			name: "hostname <name>.<ns>.svc.<suffix>, cluster IP as VIP on the local network, canonical",
			svc:  service("apps", "echo"),
			want: wantService("apps", "echo", nil),
		},
		{
			name: "custom domain suffix",
			cfg:  &Config{ClusterID: testCluster, Network: "net1", DomainSuffix: "corp.example"},
			svc:  service("apps", "echo"),
			want: wantService("apps", "echo", func(s *workloadpb.Service) { s.Hostname = "echo.apps.svc.corp.example" }),
		},
		{
			name: "headless service has no VIP",
			svc:  service("apps", "echo", headless()),
			want: wantService("apps", "echo", func(s *workloadpb.Service) { s.Addresses = nil }),
		},
		{
			name: "dual stack: every cluster IP in spec order, ip_families DUAL",
			svc:  service("apps", "echo", clusterIPs("fd00::10", "10.96.0.10")),
			want: wantService("apps", "echo", func(s *workloadpb.Service) {
				s.Addresses = []*workloadpb.NetworkAddress{netAddr("net1", "fd00::10"), netAddr("net1", "10.96.0.10")}
				s.IpFamilies = workloadpb.IPFamilies_DUAL
			}),
		},
		{
			name: "IPv6 only",
			svc:  service("apps", "echo", clusterIPs("fd00::10")),
			want: wantService("apps", "echo", func(s *workloadpb.Service) {
				s.Addresses = []*workloadpb.NetworkAddress{netAddr("net1", "fd00::10")}
				s.IpFamilies = workloadpb.IPFamilies_IPV6_ONLY
			}),
		},
		{
			name: "no ipFamilies is AUTOMATIC; spec.clusterIP used when clusterIPs is empty",
			svc: service("apps", "echo", func(s *corev1.Service) {
				s.Spec.IPFamilies = nil
				s.Spec.ClusterIPs = nil
			}),
			want: wantService("apps", "echo", func(s *workloadpb.Service) { s.IpFamilies = workloadpb.IPFamilies_AUTOMATIC }),
		},
		{
			name: "ports in spec order; numeric target kept, named target sent as 0",
			svc:  service("apps", "echo", svcPorts(sport("http", 80, 8080), namedPort("grpc", 90, "grpc-port"), sport("", 5000, 5001))),
			want: wantService("apps", "echo", func(s *workloadpb.Service) {
				s.Ports = []*workloadpb.Port{
					{ServicePort: 80, TargetPort: 8080, AppProtocol: workloadpb.AppProtocol_HTTP11},
					{ServicePort: 90, TargetPort: 0, AppProtocol: workloadpb.AppProtocol_GRPC},
					{ServicePort: 5000, TargetPort: 5001},
				}
			}),
		},
		{
			name: "UDP ports are kept",
			svc: service("apps", "dns", svcPorts(
				sport("dns-tcp", 53, 53),
				corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: sport("", 0, 53).TargetPort})),
			want: wantService("apps", "dns", func(s *workloadpb.Service) {
				s.Ports = []*workloadpb.Port{
					{ServicePort: 53, TargetPort: 53, AppProtocol: workloadpb.AppProtocol_TCP},
					{ServicePort: 53, TargetPort: 53},
				}
			}),
		},
		{
			name: "ExternalName service is not published",
			svc: service("apps", "ext", func(s *corev1.Service) {
				s.Spec.Type = corev1.ServiceTypeExternalName
				s.Spec.ExternalName = "example.com"
			}),
			want: nil,
		},
		{
			name: "invalid cluster IP drops the service with a warning",
			svc:  service("apps", "echo", clusterIPs("10.96.0.10", "fd00::1"), func(s *corev1.Service) { s.Spec.ClusterIPs[1] = "bogus" }),
			want: nil,
			warnings: []Warning{{Object: ObjectRef{Kind: "service", Namespace: "apps", Name: "echo"}, Field: "spec.clusterIPs[1]",
				Message: `invalid IP "bogus": service not published`}},
		},
		{
			name: "kube Services carry no subject_alt_names",
			svc:  service("apps", "echo", svcAnnotations("networking.istio.io/exportTo", ".")),
			want: wantService("apps", "echo", nil),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig
			if tt.cfg != nil {
				cfg = *tt.cfg
			}
			got, warns := runService(cfg, nil, tt.svc)
			diffProto(t, tt.want, got)
			diffWarnings(t, tt.warnings, warns)
		})
	}
}

func TestAppProtocol(t *testing.T) {
	str := func(s string) *string { return &s }
	tests := []struct {
		name string
		port corev1.ServicePort
		want workloadpb.AppProtocol
	}{
		{"name http", corev1.ServicePort{Name: "http", Port: 80}, workloadpb.AppProtocol_HTTP11},
		{"name prefix http-", corev1.ServicePort{Name: "http-web", Port: 80}, workloadpb.AppProtocol_HTTP11},
		{"name prefix is case-insensitive", corev1.ServicePort{Name: "HTTP2-x", Port: 80}, workloadpb.AppProtocol_HTTP2},
		{"name grpc", corev1.ServicePort{Name: "grpc", Port: 80}, workloadpb.AppProtocol_GRPC},
		{"name grpc-web is UNKNOWN", corev1.ServicePort{Name: "grpc-web", Port: 80}, workloadpb.AppProtocol_UNKNOWN},
		{"name https is TLS", corev1.ServicePort{Name: "https", Port: 443}, workloadpb.AppProtocol_TLS},
		{"name tls", corev1.ServicePort{Name: "tls-x", Port: 443}, workloadpb.AppProtocol_TLS},
		{"name tcp", corev1.ServicePort{Name: "tcp", Port: 80}, workloadpb.AppProtocol_TCP},
		{"name mongo has no WDS protocol", corev1.ServicePort{Name: "mongo", Port: 27017}, workloadpb.AppProtocol_UNKNOWN},
		{"no prefix before '-' (web-http)", corev1.ServicePort{Name: "web-http", Port: 80}, workloadpb.AppProtocol_UNKNOWN},
		{"unnamed port", corev1.ServicePort{Port: 8080}, workloadpb.AppProtocol_UNKNOWN},
		{"unnamed well-known port 3306 is TCP", corev1.ServicePort{Port: 3306}, workloadpb.AppProtocol_TCP},
		{"appProtocol wins over name", corev1.ServicePort{Name: "tcp", Port: 80, AppProtocol: str("http")}, workloadpb.AppProtocol_HTTP11},
		{"empty appProtocol still replaces the name", corev1.ServicePort{Name: "http", Port: 80, AppProtocol: str("")}, workloadpb.AppProtocol_UNKNOWN},
		{"appProtocol kubernetes.io/h2c", corev1.ServicePort{Port: 80, AppProtocol: str("kubernetes.io/h2c")}, workloadpb.AppProtocol_HTTP2},
		{"appProtocol kubernetes.io/ws", corev1.ServicePort{Port: 80, AppProtocol: str("kubernetes.io/ws")}, workloadpb.AppProtocol_HTTP11},
		{"appProtocol kubernetes.io/wss", corev1.ServicePort{Port: 80, AppProtocol: str("kubernetes.io/wss")}, workloadpb.AppProtocol_TLS},
		{"UDP is never HTTP", corev1.ServicePort{Name: "http", Port: 80, Protocol: corev1.ProtocolUDP}, workloadpb.AppProtocol_UNKNOWN},
		{"udp- name on a well-known port stays UNKNOWN", corev1.ServicePort{Name: "udp-dns", Port: 53}, workloadpb.AppProtocol_UNKNOWN},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := appProtocol(tt.port); got != tt.want {
				t.Errorf("appProtocol(%+v) = %v, want %v", tt.port, got, tt.want)
			}
		})
	}
}
