package ambient

import (
	"fmt"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"

	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
)

// serviceInput is what serviceResource needs for one Service.
type serviceInput struct {
	cfg     Config
	network string
	svc     *corev1.Service
	// namespace of the Service; nil when unknown (its annotations are then absent).
	namespace *corev1.Namespace
	// defaultDistribution applies when neither the Service nor its
	// namespace asks for one: none for a local Service; PreferNetwork for a
	// global-only one, whose plain name also carries remote endpoints and
	// must keep traffic local while local endpoints are healthy.
	defaultDistribution trafficDistribution
}

// serviceResource maps a Kubernetes Service to its WDS Service, or nil when
// istiod publishes none (ExternalName) or a cluster IP cannot be parsed.
func serviceResource(in serviceInput, w *warnings) *workloadpb.Service {
	s := in.svc
	if s.Spec.Type == corev1.ServiceTypeExternalName {
		// istiod leaves ExternalName to DNS; ztunnel never sees it.
		return nil
	}
	ref := objectRef("service", s.Namespace, s.Name)

	addresses := make([]*workloadpb.NetworkAddress, 0, 2)
	for i, vip := range serviceVIPs(s) {
		ip, err := netip.ParseAddr(vip)
		if err != nil {
			field := "spec.clusterIP"
			if len(s.Spec.ClusterIPs) > 0 {
				field = fmt.Sprintf("spec.clusterIPs[%d]", i)
			}
			w.add(ref, field, fmt.Sprintf("invalid IP %q: service not published", vip))
			return nil
		}
		addresses = append(addresses, &workloadpb.NetworkAddress{Network: in.network, Address: ip.AsSlice()})
	}

	var nsAnnotations map[string]string
	if in.namespace != nil {
		nsAnnotations = in.namespace.Annotations
	}
	return &workloadpb.Service{
		Name:          s.Name,
		Namespace:     s.Namespace,
		Hostname:      serviceHostname(s.Name, s.Namespace, in.cfg.DomainSuffix),
		Addresses:     addresses,
		Ports:         servicePorts(s),
		LoadBalancing: loadBalancing(loadBalancingInput{service: s, namespaceAnnotations: nsAnnotations, fallback: in.defaultDistribution}, w),
		IpFamilies:    ipFamilies(s.Spec.IPFamilies),
		// A Kubernetes Service always owns its hostname.
		Canonical: true,
	}
}

// serviceVIPs are the cluster IPs in spec order (spec.clusterIP when
// spec.clusterIPs is empty), without "" and "None": a headless Service has none.
func serviceVIPs(s *corev1.Service) []string {
	ips := s.Spec.ClusterIPs
	if len(ips) == 0 {
		ips = []string{s.Spec.ClusterIP}
	}
	out := make([]string, 0, len(ips))
	for _, ip := range ips {
		if ip != "" && ip != corev1.ClusterIPNone {
			out = append(out, ip)
		}
	}
	return out
}

// servicePorts keeps spec order. A named targetPort is sent as 0: each
// workload's services entry carries the resolved number instead.
func servicePorts(s *corev1.Service) []*workloadpb.Port {
	out := make([]*workloadpb.Port, 0, len(s.Spec.Ports))
	for _, p := range s.Spec.Ports {
		out = append(out, &workloadpb.Port{
			ServicePort: uint32(p.Port),
			TargetPort:  uint32(p.TargetPort.IntVal),
			AppProtocol: appProtocol(p),
		})
	}
	return out
}

func ipFamilies(families []corev1.IPFamily) workloadpb.IPFamilies {
	switch {
	case len(families) == 2:
		return workloadpb.IPFamilies_DUAL
	case len(families) == 1 && families[0] == corev1.IPv4Protocol:
		return workloadpb.IPFamilies_IPV4_ONLY
	case len(families) == 1:
		return workloadpb.IPFamilies_IPV6_ONLY
	}
	return workloadpb.IPFamilies_AUTOMATIC
}

// Ports that istiod treats as TCP when neither name nor appProtocol says
// otherwise (SMTP, DNS, MySQL, MongoDB): sniffing would break them.
var wellKnownTCPPorts = map[int32]bool{25: true, 53: true, 3306: true, 27017: true}

// appProtocol derives the WDS app protocol from a Service port as istiod
// does: UDP is never HTTP; appProtocol (with Kubernetes' own kubernetes.io/*
// names) wins over the port name; the name's prefix before the first '-' is
// the protocol; grpc-web and unrecognised protocols are UNKNOWN, except on the
// well-known TCP ports.
func appProtocol(p corev1.ServicePort) workloadpb.AppProtocol {
	if p.Protocol == corev1.ProtocolUDP {
		return workloadpb.AppProtocol_UNKNOWN
	}
	name := p.Name
	if p.AppProtocol != nil {
		name = *p.AppProtocol
		switch name {
		case "kubernetes.io/h2c":
			return workloadpb.AppProtocol_HTTP2
		case "kubernetes.io/ws":
			return workloadpb.AppProtocol_HTTP11
		case "kubernetes.io/wss":
			return workloadpb.AppProtocol_TLS
		}
	}
	const grpcWeb = "grpc-web"
	if len(name) >= len(grpcWeb) && strings.EqualFold(name[:len(grpcWeb)], grpcWeb) {
		return workloadpb.AppProtocol_UNKNOWN
	}
	if i := strings.IndexByte(name, '-'); i >= 0 {
		name = name[:i]
	}
	switch strings.ToLower(name) {
	case "http":
		return workloadpb.AppProtocol_HTTP11
	case "http2":
		return workloadpb.AppProtocol_HTTP2
	case "grpc":
		return workloadpb.AppProtocol_GRPC
	case "tls", "https":
		return workloadpb.AppProtocol_TLS
	case "tcp":
		return workloadpb.AppProtocol_TCP
	case "udp", "http_proxy", "mongo", "redis", "mysql":
		// Known to istiod, but with no WDS equivalent.
		return workloadpb.AppProtocol_UNKNOWN
	}
	if wellKnownTCPPorts[p.Port] {
		return workloadpb.AppProtocol_TCP
	}
	return workloadpb.AppProtocol_UNKNOWN
}
