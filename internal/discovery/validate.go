package discovery

import (
	"fmt"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apimachineryvalidation "k8s.io/apimachinery/pkg/api/validation"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metavalidation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// This file refuses what the API server (Kubernetes v1.37:
// pkg/apis/core/validation, pkg/apis/discovery/validation, and the Gateway
// API CRD schema) refuses in the fields that peerd reads, so that no file
// gives a manifest a meaning that no cluster could hold. It runs after
// defaulting, as the API server does, and uses apimachinery's own checks
// (names, labels, annotations, owner references, port names) wherever the
// API server does. Checks that defaulting already makes (port ranges, the
// cluster IP and family rules) are not repeated here.
//
// Left out on purpose: fields peerd never reads (session affinity, external
// traffic policy, load-balancer source ranges, probes, volumes...).

// supportedProtocols are the port protocols every kind accepts.
var supportedProtocols = []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP}

// supportedTrafficDistributions are the values of spec.trafficDistribution
// the API server accepts (PreferSameZone and PreferSameNode since the
// PreferSameTrafficDistribution gate went GA in 1.35). peerd's own values
// (PreferNetwork, PreferRegion, Any) exist only in the
// networking.istio.io/traffic-distribution annotation.
var supportedTrafficDistributions = []string{
	corev1.ServiceTrafficDistributionPreferClose,
	corev1.ServiceTrafficDistributionPreferSameZone,
	corev1.ServiceTrafficDistributionPreferSameNode,
}

// The API server's limits on an EndpointSlice.
const (
	maxSliceEndpoints       = 1000
	maxAddressesPerEndpoint = 100
)

var metadataPath = field.NewPath("metadata")

// fromFieldErrors carries apimachinery's errors into the file source's
// form: the same field path, ErrRequired or ErrInvalid.
func fromFieldErrors(list field.ErrorList) []fieldErr {
	out := make([]fieldErr, 0, len(list))
	for _, e := range list {
		switch e.Type {
		case field.ErrorTypeRequired:
			out = append(out, required(e.Field, e.Detail))
		case field.ErrorTypeInvalid, field.ErrorTypeNotSupported:
			out = append(out, invalid(e.Field, e.BadValue, e.Detail))
		case field.ErrorTypeDuplicate:
			out = append(out, invalid(e.Field, e.BadValue, "duplicate value"))
		default:
			out = append(out, fieldErr{e.Field, fmt.Errorf("%w: %s", ErrInvalid, e.ErrorBody())})
		}
	}
	return out
}

// validateMeta checks name, namespace, labels, annotations, owner
// references and finalizers as the API server does on create; nameFn is
// the kind's name rule.
func validateMeta(obj metav1.Object, namespaced bool, nameFn apimachineryvalidation.ValidateNameFunc) []fieldErr {
	return fromFieldErrors(apimachineryvalidation.ValidateObjectMetaAccessor(obj, namespaced, nameFn, metadataPath))
}

func messages(field string, value any, msgs []string) []fieldErr {
	out := make([]fieldErr, 0, len(msgs))
	for _, m := range msgs {
		out = append(out, invalid(field, value, m))
	}
	return out
}

func validateProtocol(field string, p corev1.Protocol) []fieldErr {
	for _, ok := range supportedProtocols {
		if p == ok {
			return nil
		}
	}
	return []fieldErr{invalid(field, p, "must be TCP, UDP or SCTP")}
}

// parseIP parses an IP of a legacy API field under the strict rules the API
// server applies since v1.36 (StrictIPCIDRValidation): no leading zeros, no
// zone, no IPv4-mapped IPv6 address, which different programs read as
// different addresses. why is empty when the address is fine.
func parseIP(s string) (addr netip.Addr, why string) {
	addr, err := netip.ParseAddr(s)
	switch {
	case err != nil || addr.Zone() != "":
		return addr, "not an IP address"
	case addr.Is4In6():
		return addr, "must not be an IPv4-mapped IPv6 address"
	}
	return addr, ""
}

func validateNamespace(o *corev1.Namespace) []fieldErr {
	return validateMeta(o, false, apimachineryvalidation.ValidateNamespaceName)
}

func validateNode(o *corev1.Node) []fieldErr {
	return validateMeta(o, false, apimachineryvalidation.NameIsDNSSubdomain)
}

func validatePod(o *corev1.Pod) []fieldErr {
	errs := validateMeta(o, true, apimachineryvalidation.NameIsDNSSubdomain)
	s := &o.Spec
	if s.ServiceAccountName != "" {
		errs = append(errs, messages("spec.serviceAccountName", s.ServiceAccountName,
			apimachineryvalidation.NameIsDNSSubdomain(s.ServiceAccountName, false))...)
	}
	if s.NodeName != "" {
		errs = append(errs, messages("spec.nodeName", s.NodeName, apimachineryvalidation.NameIsDNSSubdomain(s.NodeName, false))...)
	}
	for i := range s.Containers {
		errs = append(errs, validateContainerPorts(fmt.Sprintf("spec.containers[%d].ports", i), s.Containers[i].Ports)...)
	}
	for i := range s.InitContainers {
		errs = append(errs, validateContainerPorts(fmt.Sprintf("spec.initContainers[%d].ports", i), s.InitContainers[i].Ports)...)
	}
	return append(errs, validatePodIPs(o.Status.PodIPs)...)
}

// validateContainerPorts: a named port is how a Service's named targetPort
// finds its number, so names must be valid and unique in the container.
func validateContainerPorts(path string, ports []corev1.ContainerPort) []fieldErr {
	var errs []fieldErr
	names := map[string]bool{}
	for i, p := range ports {
		field := fmt.Sprintf("%s[%d]", path, i)
		if p.Name != "" {
			if msgs := validation.IsValidPortName(p.Name); len(msgs) > 0 {
				errs = append(errs, messages(field+".name", p.Name, msgs)...)
			} else if names[p.Name] {
				errs = append(errs, invalid(field+".name", p.Name, "duplicate port name in this container"))
			}
			names[p.Name] = true
		}
		errs = append(errs, validateProtocol(field+".protocol", p.Protocol)...)
	}
	return errs
}

// validatePodIPs: every pod IP is a workload address, so each must parse,
// and there is at most one per family.
func validatePodIPs(ips []corev1.PodIP) []fieldErr {
	var errs []fieldErr
	families := map[corev1.IPFamily]bool{}
	for i, ip := range ips {
		addr, why := parseIP(ip.IP)
		if why != "" {
			errs = append(errs, invalid(fmt.Sprintf("status.podIPs[%d].ip", i), ip.IP, why))
			continue
		}
		families[familyOf(addr)] = true
	}
	if len(errs) == 0 && len(ips) > 1 && (len(ips) > 2 || len(families) != 2) {
		list := make([]string, 0, len(ips))
		for _, ip := range ips {
			list = append(list, ip.IP)
		}
		errs = append(errs, invalid("status.podIPs", strings.Join(list, ","), "may hold no more than one IP of each family"))
	}
	return errs
}

func validateService(o *corev1.Service) []fieldErr {
	// A Service's name is a DNS-1035 label: it starts the service's hostname.
	errs := validateMeta(o, true, apimachineryvalidation.NameIsDNS1035Label)
	s := &o.Spec
	errs = append(errs, fromFieldErrors(metavalidation.ValidateLabels(s.Selector, field.NewPath("spec", "selector")))...)
	errs = append(errs, validateServicePorts(s)...)

	headless := s.ClusterIP == corev1.ClusterIPNone
	if len(s.Ports) == 0 && !headless && s.Type != corev1.ServiceTypeExternalName {
		errs = append(errs, required("spec.ports", "a Service that is neither headless nor ExternalName needs a port"))
	}
	if s.Type == corev1.ServiceTypeExternalName {
		errs = append(errs, validateExternalName(s)...)
	}
	if p := s.InternalTrafficPolicy; p != nil && *p != corev1.ServiceInternalTrafficPolicyCluster && *p != corev1.ServiceInternalTrafficPolicyLocal {
		errs = append(errs, invalid("spec.internalTrafficPolicy", *p, "must be Cluster or Local"))
	}
	if td := s.TrafficDistribution; td != nil {
		ok := false
		for _, v := range supportedTrafficDistributions {
			ok = ok || *td == v
		}
		if !ok {
			errs = append(errs, invalid("spec.trafficDistribution", *td, fmt.Sprintf(
				"the API server accepts only %s; PreferNetwork, PreferRegion and Any are set with the %s annotation",
				strings.Join(supportedTrafficDistributions, ", "), annotationTrafficDistribution)))
		}
	}
	return errs
}

// annotationTrafficDistribution is named in errors only; internal/ambient
// reads it.
const annotationTrafficDistribution = "networking.istio.io/traffic-distribution"

// validateServicePorts: the port name joins a Service port with its
// EndpointSlice port and gives its app protocol, the named targetPort finds
// the container port, the protocol decides TCP handling.
func validateServicePorts(s *corev1.ServiceSpec) []fieldErr {
	var errs []fieldErr
	names := map[string]bool{}
	type protoPort struct {
		protocol corev1.Protocol
		port     int32
	}
	seen := map[protoPort]bool{}
	for i, p := range s.Ports {
		field := fmt.Sprintf("spec.ports[%d]", i)
		if p.Name != "" {
			if msgs := validation.IsDNS1123Label(p.Name); len(msgs) > 0 {
				errs = append(errs, messages(field+".name", p.Name, msgs)...)
			} else if names[p.Name] {
				errs = append(errs, invalid(field+".name", p.Name, "duplicate port name"))
			}
			names[p.Name] = true
		}
		errs = append(errs, validateProtocol(field+".protocol", p.Protocol)...)
		if p.TargetPort.Type == intstr.String {
			errs = append(errs, messages(field+".targetPort", p.TargetPort.StrVal, validation.IsValidPortName(p.TargetPort.StrVal))...)
		}
		if p.AppProtocol != nil {
			errs = append(errs, messages(field+".appProtocol", *p.AppProtocol, validation.IsQualifiedName(*p.AppProtocol))...)
		}
		key := protoPort{p.Protocol, p.Port}
		if seen[key] {
			errs = append(errs, invalid(field, fmt.Sprintf("%d/%s", p.Port, p.Protocol), "duplicate port and protocol"))
		}
		seen[key] = true
	}
	return errs
}

// validateExternalName: an ExternalName Service is a DNS alias; it has no
// cluster IPs or IP families (defaulting sets none for it).
func validateExternalName(s *corev1.ServiceSpec) []fieldErr {
	var errs []fieldErr
	if s.ClusterIP != "" || len(s.ClusterIPs) > 0 {
		errs = append(errs, invalid("spec.clusterIP", s.ClusterIP, "may not be set for an ExternalName Service"))
	}
	if len(s.IPFamilies) > 0 {
		errs = append(errs, invalid("spec.ipFamilies", s.IPFamilies, "may not be set for an ExternalName Service"))
	}
	if s.IPFamilyPolicy != nil {
		errs = append(errs, invalid("spec.ipFamilyPolicy", *s.IPFamilyPolicy, "may not be set for an ExternalName Service"))
	}
	cname := strings.TrimSuffix(s.ExternalName, ".")
	if cname == "" {
		return append(errs, required("spec.externalName", "an ExternalName Service names the host it aliases"))
	}
	return append(errs, messages("spec.externalName", s.ExternalName, validation.IsDNS1123Subdomain(cname))...)
}

func validateEndpointSlice(o *discoveryv1.EndpointSlice) []fieldErr {
	errs := validateMeta(o, true, apimachineryvalidation.NameIsDNSSubdomain)
	names := map[string]bool{}
	for i, p := range o.Ports {
		field := fmt.Sprintf("ports[%d]", i)
		// prepareEndpointSlice gave every port a name ("" when unnamed) and
		// a protocol.
		name := *p.Name
		if name != "" {
			errs = append(errs, messages(field+".name", name, validation.IsDNS1123Label(name))...)
		}
		if names[name] {
			errs = append(errs, invalid(field+".name", name, "duplicate port name"))
		}
		names[name] = true
		errs = append(errs, validateProtocol(field+".protocol", *p.Protocol)...)
		if p.AppProtocol != nil {
			errs = append(errs, messages(field+".appProtocol", *p.AppProtocol, validation.IsQualifiedName(*p.AppProtocol))...)
		}
	}
	if len(o.Endpoints) > maxSliceEndpoints {
		return append(errs, invalid("endpoints", len(o.Endpoints), fmt.Sprintf("must have at most %d items", maxSliceEndpoints)))
	}
	for i, ep := range o.Endpoints {
		path := field.NewPath("endpoints").Index(i).Child("addresses")
		switch {
		case len(ep.Addresses) == 0:
			errs = append(errs, required(path.String(), "at least one address"))
		case len(ep.Addresses) > maxAddressesPerEndpoint:
			errs = append(errs, invalid(path.String(), len(ep.Addresses), fmt.Sprintf("must have at most %d items", maxAddressesPerEndpoint)))
		}
		for j, a := range ep.Addresses {
			errs = append(errs, validateEndpointAddress(path.Index(j), a, o.AddressType)...)
		}
	}
	return errs
}

// validateEndpointAddress: an IP endpoint becomes a workload address, so it
// must be a usable unicast address of the slice's family (IPv6 ones in
// canonical form, as the API server demands of them).
func validateEndpointAddress(path *field.Path, a string, t discoveryv1.AddressType) []fieldErr {
	if t == discoveryv1.AddressTypeFQDN {
		return fromFieldErrors(validation.IsFullyQualifiedDomainName(path, a))
	}
	if t != discoveryv1.AddressTypeIPv4 && t != discoveryv1.AddressTypeIPv6 {
		return nil // the address type error says it all
	}
	addr, why := parseIP(a)
	switch {
	case why != "":
	case familyOf(addr) != corev1.IPFamily(t):
		why = fmt.Sprintf("not an %s address", t)
	case t == discoveryv1.AddressTypeIPv6 && addr.String() != a:
		why = fmt.Sprintf("must be in canonical form (%s)", addr)
	case addr.IsUnspecified():
		why = "may not be unspecified"
	case addr.IsLoopback():
		why = "may not be in the loopback range (127.0.0.0/8, ::1/128)"
	case addr.IsLinkLocalUnicast():
		why = "may not be in the link-local range (169.254.0.0/16, fe80::/10)"
	case addr.IsLinkLocalMulticast():
		why = "may not be in a link-local multicast range (224.0.0.0/24, ffx2::/16)"
	}
	if why == "" {
		return nil
	}
	return []fieldErr{invalid(path.String(), a, why)}
}

func validateGateway(o *gatewayv1.Gateway) []fieldErr {
	errs := validateMeta(o, true, apimachineryvalidation.NameIsDNSSubdomain)
	names := map[gatewayv1.SectionName]bool{}
	for i, l := range o.Spec.Listeners {
		if names[l.Name] {
			errs = append(errs, invalid(fmt.Sprintf("spec.listeners[%d].name", i), l.Name, "listener names must be unique in a Gateway"))
		}
		names[l.Name] = true
	}
	for i, a := range o.Spec.Addresses {
		if a.Type != nil && *a.Type == gatewayv1.IPAddressType {
			if _, why := parseIP(a.Value); why != "" {
				errs = append(errs, invalid(fmt.Sprintf("spec.addresses[%d].value", i), a.Value, why))
			}
		}
	}
	return errs
}
