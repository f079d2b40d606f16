package federation

import (
	"net/netip"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// ProtocolHBONE is the cross-network listener's protocol (Istio's own).
const ProtocolHBONE gatewayv1.ProtocolType = "HBONE"

// LinkName is the link Gateway's name for a linked cluster, as
// `peerd link` creates it.
func LinkName(cluster string) string { return "istio-remote-peer-" + cluster }

// RenderLink is the istio-remote Gateway that l describes: the one
// writer of link Gateways (`peerd link`, the tests' fixtures), the inverse
// of ParseLink. l.Gateway is "namespace/name" (LinkName of the cluster
// when only the namespace is set). For a Link that ParseLink returned,
// ParseLink(RenderLink(l)) == l; a cluster equal to its network is written
// out all the same, so a reader need not know the default.
func RenderLink(l Link) *gatewayv1.Gateway {
	cluster := l.Cluster
	if cluster == "" {
		cluster = l.Network
	}
	ns, name := l.Namespace, LinkName(cluster)
	if i := strings.IndexByte(l.Gateway, '/'); i >= 0 {
		ns, name = l.Gateway[:i], l.Gateway[i+1:]
	}
	labels := map[string]string{LabelNetwork: l.Network, LabelCluster: cluster}
	if l.Region != "" {
		labels[LabelRegion] = l.Region
	}
	if l.Zone != "" {
		labels[LabelZone] = l.Zone
	}
	annotations := map[string]string{}
	if l.TrustDomain != "" {
		annotations[AnnotationTrustDomain] = l.TrustDomain
	}
	if l.ServiceAccount != "" {
		annotations[AnnotationServiceAccount] = l.ServiceAccount
	}
	if len(annotations) == 0 {
		annotations = nil
	}
	hbone := l.HBONEPort
	if hbone == 0 {
		hbone = DefaultHBONEPort
	}
	gw := &gatewayv1.Gateway{
		TypeMeta: metav1.TypeMeta{APIVersion: gatewayv1.GroupVersion.String(), Kind: "Gateway"},
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: ns, Labels: labels, Annotations: annotations,
		},
		Spec: gatewayv1.GatewaySpec{
			GatewayClassName: ClassRemote,
			Listeners: []gatewayv1.Listener{
				PassthroughListener(ListenerHBONE, hbone, ProtocolHBONE),
				PassthroughListener(ListenerXDS, l.XDSPort, gatewayv1.TLSProtocolType),
			},
		},
	}
	for _, a := range l.Addresses {
		gw.Spec.Addresses = append(gw.Spec.Addresses, gatewayv1.GatewaySpecAddress{Type: AddressType(a), Value: a})
	}
	return gw
}

// PassthroughListener is a TLS-passthrough listener, as both listeners of
// east-west and link Gateways are: the gateway never terminates the mesh's
// mutual TLS.
func PassthroughListener(name string, port uint32, protocol gatewayv1.ProtocolType) gatewayv1.Listener {
	mode := gatewayv1.TLSModePassthrough
	return gatewayv1.Listener{
		Name:     gatewayv1.SectionName(name),
		Port:     gatewayv1.PortNumber(port),
		Protocol: protocol,
		TLS:      &gatewayv1.ListenerTLSConfig{Mode: &mode},
	}
}

// AddressType is the Gateway address type of a: IPAddress for an IP,
// Hostname otherwise.
func AddressType(a string) *gatewayv1.AddressType {
	t := gatewayv1.HostnameAddressType
	if _, err := netip.ParseAddr(a); err == nil {
		t = gatewayv1.IPAddressType
	}
	return &t
}
