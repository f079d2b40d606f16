package federation

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Gateway classes, labels and annotations of the operator's guide.
const (
	// ClassRemote: a Gateway that describes a linked cluster's east-west
	// gateway, in the cluster that links to it.
	ClassRemote = "istio-remote"
	// ClassEastWest: the local cluster's own east-west gateway.
	ClassEastWest = "istio-eastwest"

	LabelNetwork             = "topology.istio.io/network"
	LabelCluster             = "topology.istio.io/cluster"
	LabelRegion              = "topology.kubernetes.io/region"
	LabelZone                = "topology.kubernetes.io/zone"
	AnnotationTrustDomain    = "gateway.istio.io/trust-domain"
	AnnotationServiceAccount = "gateway.istio.io/service-account"

	// ListenerXDS is the listener a link dials (TLS passthrough to peerd).
	ListenerXDS = "xds-tls"
	// ListenerHBONE carries the traffic (double HBONE to the gateway).
	ListenerHBONE = "cross-network"

	DefaultHBONEPort = 15008
)

// Link is one istio-remote Gateway read as a link: who the linked cluster
// is and how to reach it.
type Link struct {
	// Gateway is the link Gateway's "namespace/name".
	Gateway string
	// Namespace of the link Gateway; the remote east-west gateway's
	// workload identity uses it with ServiceAccount (namespace sameness).
	Namespace string
	// Cluster is the linked cluster's id: topology.istio.io/cluster, else
	// the network.
	Cluster string
	// Network is the linked cluster's network (topology.istio.io/network).
	Network string
	// TrustDomain is the linked cluster's trust domain (annotation); empty
	// when the annotation is absent.
	TrustDomain string
	// ServiceAccount of the remote east-west gateway (annotation); empty
	// when absent.
	ServiceAccount string
	// Addresses are spec.addresses in order: IPs or hostnames.
	Addresses []string
	// XDSPort is the xds-tls listener's port: where peerd is reached.
	XDSPort uint32
	// HBONEPort is the cross-network listener's port (DefaultHBONEPort when
	// the Gateway has no such listener).
	HBONEPort uint32
	// Region and Zone of the linked cluster, from the Gateway's labels.
	Region, Zone string
}

// IsRemote reports whether gw is a link (class istio-remote).
func IsRemote(gw *gatewayv1.Gateway) bool {
	return gw != nil && string(gw.Spec.GatewayClassName) == ClassRemote
}

// ParseLink reads an istio-remote Gateway. The error names the Gateway and
// the field: `gateway istio-gateways/cluster2: spec.addresses: none`.
func ParseLink(gw *gatewayv1.Gateway) (Link, error) {
	name := gw.Namespace + "/" + gw.Name
	l := Link{
		Gateway:        name,
		Namespace:      gw.Namespace,
		Network:        gw.Labels[LabelNetwork],
		Cluster:        gw.Labels[LabelCluster],
		TrustDomain:    gw.Annotations[AnnotationTrustDomain],
		ServiceAccount: gw.Annotations[AnnotationServiceAccount],
		Region:         gw.Labels[LabelRegion],
		Zone:           gw.Labels[LabelZone],
		HBONEPort:      DefaultHBONEPort,
	}
	var errs []error
	field := func(path, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", path, fmt.Sprintf(format, args...)))
	}
	if l.Network == "" {
		field("metadata.labels["+LabelNetwork+"]", "required: the linked cluster's network")
	}
	if l.Cluster == "" {
		l.Cluster = l.Network
	}
	if strings.Contains(l.Cluster, "/") {
		field("metadata.labels["+LabelCluster+"]", "%q must not contain '/'", l.Cluster)
	}
	if l.TrustDomain != "" {
		if msgs := validation.IsDNS1123Subdomain(l.TrustDomain); len(msgs) > 0 {
			field("metadata.annotations["+AnnotationTrustDomain+"]", "%q: %s", l.TrustDomain, strings.Join(msgs, "; "))
		}
	}
	if len(gw.Spec.Addresses) == 0 {
		field("spec.addresses", "none: the linked cluster's east-west gateway address is required")
	}
	for i, a := range gw.Spec.Addresses {
		v := strings.TrimSpace(a.Value)
		if _, err := netip.ParseAddr(v); err != nil {
			if msgs := validation.IsDNS1123Subdomain(v); len(msgs) > 0 {
				field(fmt.Sprintf("spec.addresses[%d]", i), "%q is neither an IP address nor a hostname", a.Value)
				continue
			}
		}
		l.Addresses = append(l.Addresses, v)
	}
	for i, lis := range gw.Spec.Listeners {
		switch string(lis.Name) {
		case ListenerXDS:
			l.XDSPort = uint32(lis.Port)
		case ListenerHBONE:
			l.HBONEPort = uint32(lis.Port)
		default:
			continue
		}
		if lis.Port < 1 || lis.Port > 65535 {
			field(fmt.Sprintf("spec.listeners[%d].port", i), "%d is not in 1-65535", lis.Port)
		}
	}
	if l.XDSPort == 0 {
		field("spec.listeners", "no %q listener: peerd is reached on its port", ListenerXDS)
	}
	if err := errors.Join(errs...); err != nil {
		return Link{}, fmt.Errorf("gateway %s: %w", name, err)
	}
	return l, nil
}

// DefaultTrustDomain is a linked cluster's trust domain when its link
// Gateway has no annotation: ztunnel reads an empty trust domain the same way.
const DefaultTrustDomain = "cluster.local"

// PeerTrustDomain is the trust domain the linked cluster's peerd, and the
// identities it exports, must be in.
func (l Link) PeerTrustDomain() string {
	if l.TrustDomain == "" {
		return DefaultTrustDomain
	}
	return l.TrustDomain
}

// Dial is the address a link dials: the first address at the xds-tls port.
func (l Link) Dial() string {
	host := l.Addresses[0]
	if a, err := netip.ParseAddr(host); err == nil && a.Is6() {
		host = "[" + host + "]"
	}
	return fmt.Sprintf("%s:%d", host, l.XDSPort)
}

// PeerServerName is the TLS server name (SNI) a link sends when it dials a
// peer's east-west gateway: the name of the peerd Service in the peer's
// system namespace, which is this peerd's own (peers present identities in
// the same namespace). The gateway's xds-tls listener passes TLS through
// unopened, so the SNI is the one thing it can route on: the Helm chart's
// TLSRoute matches this name and hands the connection to peerd, while other
// traffic on the listener keeps its own route. The name is not verified;
// the peer is, by its SPIFFE identity.
func PeerServerName(systemNamespace string) string {
	return "peerd." + systemNamespace + ".svc"
}
