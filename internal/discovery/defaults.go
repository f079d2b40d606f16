package discovery

import (
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// This file makes a manifest read from a file mean what it would mean after
// a create through the API server: the same defaults (pkg/apis/*/defaults.go
// in Kubernetes, the Gateway API CRD schema defaults, the ServiceAccount
// admission plugin, the Service REST storage's cluster-IP and IP-family
// handling), and the checks that defaulting itself needs; validate.go then
// refuses what the API server's validation refuses.
// Where the API server would pick a value from cluster configuration (the
// default IP family, an allocated cluster IP), peerd either assumes the
// common case (IPv4 first) or refuses the object, and says which.

type fieldErr struct {
	field string
	err   error
}

func required(field, why string) fieldErr {
	if why == "" {
		return fieldErr{field, ErrRequired}
	}
	return fieldErr{field, fmt.Errorf("%w: %s", ErrRequired, why)}
}

func invalid(field string, value any, why string) fieldErr {
	return fieldErr{field, fmt.Errorf("%w %q: %s", ErrInvalid, fmt.Sprint(value), why)}
}

// prepare sets the namespace, applies defaults and validates obj in place:
// the checks defaulting needs here, then validate.go's.
func prepare(obj runtime.Object) []fieldErr {
	switch o := obj.(type) {
	case *corev1.Namespace:
		o.Namespace = "" // cluster-scoped: the API server ignores it
		if errs := requireName(o.Name, o.GenerateName); errs != nil {
			return errs
		}
		defaultNamespace(o)
		return validateNamespace(o)
	case *corev1.Node:
		o.Namespace = ""
		if errs := requireName(o.Name, o.GenerateName); errs != nil {
			return errs
		}
		return validateNode(o)
	case *corev1.Pod:
		if o.Namespace == "" {
			o.Namespace = corev1.NamespaceDefault
		}
		if errs := requireName(o.Name, o.GenerateName); errs != nil {
			return errs
		}
		return append(preparePod(o), validatePod(o)...)
	case *corev1.Service:
		if o.Namespace == "" {
			o.Namespace = corev1.NamespaceDefault
		}
		if errs := requireName(o.Name, o.GenerateName); errs != nil {
			return errs
		}
		return append(prepareService(o), validateService(o)...)
	case *discoveryv1.EndpointSlice:
		if o.Namespace == "" {
			o.Namespace = corev1.NamespaceDefault
		}
		if errs := requireName(o.Name, o.GenerateName); errs != nil {
			return errs
		}
		return append(prepareEndpointSlice(o), validateEndpointSlice(o)...)
	case *gatewayv1.Gateway:
		if o.Namespace == "" {
			o.Namespace = corev1.NamespaceDefault
		}
		if errs := requireName(o.Name, o.GenerateName); errs != nil {
			return errs
		}
		return append(prepareGateway(o), validateGateway(o)...)
	}
	return []fieldErr{{"kind", fmt.Errorf("%w: %T", ErrUnsupportedKind, obj)}}
}

func requireName(name, generateName string) []fieldErr {
	if name != "" {
		return nil
	}
	if generateName != "" {
		return []fieldErr{required("metadata.name", "generateName is not supported: nothing generates names for the file source")}
	}
	return []fieldErr{required("metadata.name", "")}
}

func defaultNamespace(o *corev1.Namespace) {
	if o.Labels == nil {
		o.Labels = map[string]string{}
	}
	o.Labels[corev1.LabelMetadataName] = o.Name
	if o.Status.Phase == "" {
		o.Status.Phase = corev1.NamespaceActive
	}
}

func preparePod(o *corev1.Pod) []fieldErr {
	var errs []fieldErr
	s := &o.Spec
	// serviceAccount is the deprecated alias of serviceAccountName.
	if s.ServiceAccountName == "" {
		s.ServiceAccountName = s.DeprecatedServiceAccount
	}
	// The ServiceAccount admission plugin (on in every cluster) gives a pod
	// without one the namespace's "default" account, which is the pod's
	// identity in the mesh. It leaves mirror pods (the kubelet's copies of
	// its static pods) alone and refuses one that names an account: such a
	// pod has no service account at all.
	if _, mirror := o.Annotations[corev1.MirrorPodAnnotationKey]; mirror {
		if s.ServiceAccountName != "" {
			errs = append(errs, invalid("spec.serviceAccountName", s.ServiceAccountName,
				"a mirror pod (annotation "+corev1.MirrorPodAnnotationKey+") may not reference a service account"))
		}
	} else if s.ServiceAccountName == "" {
		s.ServiceAccountName = "default"
	}
	s.DeprecatedServiceAccount = s.ServiceAccountName
	if s.DNSPolicy == "" {
		s.DNSPolicy = corev1.DNSClusterFirst
	}
	if s.RestartPolicy == "" {
		s.RestartPolicy = corev1.RestartPolicyAlways
	}
	if s.SecurityContext == nil {
		s.SecurityContext = &corev1.PodSecurityContext{}
	}
	if s.TerminationGracePeriodSeconds == nil {
		grace := int64(corev1.DefaultTerminationGracePeriodSeconds)
		s.TerminationGracePeriodSeconds = &grace
	}
	if s.SchedulerName == "" {
		s.SchedulerName = corev1.DefaultSchedulerName
	}
	if s.EnableServiceLinks == nil {
		links := corev1.DefaultEnableServiceLinks
		s.EnableServiceLinks = &links
	}
	errs = append(errs, defaultContainerPorts("spec.containers", s.Containers, s.HostNetwork)...)
	errs = append(errs, defaultContainerPorts("spec.initContainers", s.InitContainers, s.HostNetwork)...)

	// The API server keeps the singular and plural IP fields in sync; the
	// singular one wins on a mismatch (older kubelets only set it).
	st := &o.Status
	switch {
	case st.PodIP != "" && (len(st.PodIPs) == 0 || st.PodIPs[0].IP != st.PodIP):
		st.PodIPs = []corev1.PodIP{{IP: st.PodIP}}
	case st.PodIP == "" && len(st.PodIPs) > 0:
		st.PodIP = st.PodIPs[0].IP
	}
	switch {
	case st.HostIP != "" && (len(st.HostIPs) == 0 || st.HostIPs[0].IP != st.HostIP):
		st.HostIPs = []corev1.HostIP{{IP: st.HostIP}}
	case st.HostIP == "" && len(st.HostIPs) > 0:
		st.HostIP = st.HostIPs[0].IP
	}
	for i, ip := range st.HostIPs {
		if _, why := parseIP(ip.IP); why != "" {
			errs = append(errs, invalid(fmt.Sprintf("status.hostIPs[%d].ip", i), ip.IP, why))
		}
	}
	return errs
}

func defaultContainerPorts(path string, cs []corev1.Container, hostNetwork bool) []fieldErr {
	var errs []fieldErr
	for i := range cs {
		for j := range cs[i].Ports {
			p := &cs[i].Ports[j]
			field := fmt.Sprintf("%s[%d].ports[%d]", path, i, j)
			if p.Protocol == "" {
				p.Protocol = corev1.ProtocolTCP
			}
			if hostNetwork && p.HostPort == 0 {
				p.HostPort = p.ContainerPort
			}
			if p.ContainerPort < 1 || p.ContainerPort > 65535 {
				errs = append(errs, invalid(field+".containerPort", p.ContainerPort, "must be between 1 and 65535"))
			}
		}
	}
	return errs
}

func prepareService(o *corev1.Service) []fieldErr {
	var errs []fieldErr
	s := &o.Spec
	if s.SessionAffinity == "" {
		s.SessionAffinity = corev1.ServiceAffinityNone
	}
	if s.SessionAffinity == corev1.ServiceAffinityNone {
		s.SessionAffinityConfig = nil
	}
	if s.Type == "" {
		s.Type = corev1.ServiceTypeClusterIP
	}
	switch s.Type {
	case corev1.ServiceTypeClusterIP, corev1.ServiceTypeNodePort, corev1.ServiceTypeLoadBalancer, corev1.ServiceTypeExternalName:
	default:
		return []fieldErr{invalid("spec.type", s.Type, "must be ClusterIP, NodePort, LoadBalancer or ExternalName")}
	}
	for i := range s.Ports {
		p := &s.Ports[i]
		field := fmt.Sprintf("spec.ports[%d]", i)
		if p.Protocol == "" {
			p.Protocol = corev1.ProtocolTCP
		}
		if p.TargetPort == intstr.FromInt32(0) || p.TargetPort == intstr.FromString("") {
			p.TargetPort = intstr.FromInt32(p.Port)
		}
		if p.Port < 1 || p.Port > 65535 {
			errs = append(errs, invalid(field+".port", p.Port, "must be between 1 and 65535"))
		}
		if p.TargetPort.Type == intstr.Int && (p.TargetPort.IntVal < 1 || p.TargetPort.IntVal > 65535) {
			errs = append(errs, invalid(field+".targetPort", p.TargetPort.IntVal, "must be between 1 and 65535"))
		}
		if len(s.Ports) > 1 && p.Name == "" {
			errs = append(errs, required(field+".name", "a Service with more than one port must name each"))
		}
	}
	if s.Type == corev1.ServiceTypeNodePort || s.Type == corev1.ServiceTypeLoadBalancer {
		if s.ExternalTrafficPolicy == "" {
			s.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyCluster
		}
	}
	if s.Type == corev1.ServiceTypeLoadBalancer && s.AllocateLoadBalancerNodePorts == nil {
		allocate := true
		s.AllocateLoadBalancerNodePorts = &allocate
	}
	if s.Type == corev1.ServiceTypeExternalName {
		return errs // no cluster IPs, families or internal traffic policy
	}
	if s.InternalTrafficPolicy == nil {
		cluster := corev1.ServiceInternalTrafficPolicyCluster
		s.InternalTrafficPolicy = &cluster
	}
	return append(errs, serviceIPs(s)...)
}

// serviceIPs settles clusterIP, clusterIPs, ipFamilyPolicy and ipFamilies as
// the Service REST storage does on create, except that nothing allocates a
// cluster IP here: a non-headless Service must bring its own.
func serviceIPs(s *corev1.ServiceSpec) []fieldErr {
	// An old client sets only the singular field.
	if s.ClusterIP != "" && len(s.ClusterIPs) == 0 {
		s.ClusterIPs = []string{s.ClusterIP}
	}
	if s.ClusterIP == "" {
		if len(s.ClusterIPs) > 0 {
			return []fieldErr{required("spec.clusterIP", fmt.Sprintf("must be set to spec.clusterIPs[0] (%s)", s.ClusterIPs[0]))}
		}
		return []fieldErr{required("spec.clusterIP",
			"a non-headless Service needs its cluster IP in the file (no API server allocates one here); use \"None\" for a headless Service")}
	}
	if s.ClusterIPs[0] != s.ClusterIP {
		return []fieldErr{invalid("spec.clusterIPs[0]", s.ClusterIPs[0], fmt.Sprintf("must equal spec.clusterIP (%s)", s.ClusterIP))}
	}
	headless := s.ClusterIP == corev1.ClusterIPNone
	if headless && len(s.ClusterIPs) > 1 {
		return []fieldErr{invalid("spec.clusterIPs", s.ClusterIPs, `a headless Service has exactly one entry, "None"`)}
	}
	if len(s.ClusterIPs) > 2 {
		return []fieldErr{invalid("spec.clusterIPs", s.ClusterIPs, "at most two cluster IPs (one per family)")}
	}
	if headless && s.Type != corev1.ServiceTypeClusterIP {
		return []fieldErr{invalid("spec.clusterIP", s.ClusterIP, fmt.Sprintf("a %s Service cannot be headless", s.Type))}
	}

	var errs []fieldErr
	var families []corev1.IPFamily
	if !headless {
		for i, ip := range s.ClusterIPs {
			addr, why := parseIP(ip)
			field := fmt.Sprintf("spec.clusterIPs[%d]", i)
			if i == 0 {
				field = "spec.clusterIP"
			}
			if why != "" {
				errs = append(errs, invalid(field, ip, why))
				continue
			}
			families = append(families, familyOf(addr))
		}
		if len(errs) > 0 {
			return errs
		}
		if len(families) == 2 && families[0] == families[1] {
			return []fieldErr{invalid("spec.clusterIPs[1]", s.ClusterIPs[1], "must be of the other IP family than spec.clusterIP")}
		}
	}

	if s.IPFamilyPolicy == nil {
		policy := corev1.IPFamilyPolicySingleStack
		if headless && len(s.Selector) == 0 {
			// Headless and selector-less: endpoints may come in either family.
			policy = corev1.IPFamilyPolicyRequireDualStack
		}
		s.IPFamilyPolicy = &policy
	}
	switch *s.IPFamilyPolicy {
	case corev1.IPFamilyPolicySingleStack, corev1.IPFamilyPolicyPreferDualStack, corev1.IPFamilyPolicyRequireDualStack:
	default:
		return []fieldErr{invalid("spec.ipFamilyPolicy", *s.IPFamilyPolicy, "must be SingleStack, PreferDualStack or RequireDualStack")}
	}
	single := *s.IPFamilyPolicy == corev1.IPFamilyPolicySingleStack
	if single && len(s.ClusterIPs) == 2 {
		return []fieldErr{invalid("spec.ipFamilyPolicy", *s.IPFamilyPolicy, "must be RequireDualStack or PreferDualStack when two cluster IPs are given")}
	}
	if single && len(s.IPFamilies) == 2 {
		return []fieldErr{invalid("spec.ipFamilyPolicy", *s.IPFamilyPolicy, "must be RequireDualStack or PreferDualStack when two IP families are given")}
	}
	for i, f := range s.IPFamilies {
		if f != corev1.IPv4Protocol && f != corev1.IPv6Protocol {
			errs = append(errs, invalid(fmt.Sprintf("spec.ipFamilies[%d]", i), f, "must be IPv4 or IPv6"))
		} else if i < len(families) && families[i] != f {
			errs = append(errs, invalid(fmt.Sprintf("spec.ipFamilies[%d]", i), f, fmt.Sprintf("does not match cluster IP %s", s.ClusterIPs[i])))
		}
	}
	if len(s.IPFamilies) == 2 && s.IPFamilies[0] == s.IPFamilies[1] {
		errs = append(errs, invalid("spec.ipFamilies[1]", s.IPFamilies[1], "duplicate IP family"))
	}
	if len(errs) > 0 {
		return errs
	}
	// Families follow the cluster IPs; the rest come from the cluster's
	// configuration, assumed here to be IPv4 first.
	for i := len(s.IPFamilies); i < len(families); i++ {
		s.IPFamilies = append(s.IPFamilies, families[i])
	}
	if len(s.IPFamilies) == 0 {
		s.IPFamilies = []corev1.IPFamily{corev1.IPv4Protocol}
	}
	switch {
	case headless && !single && len(s.IPFamilies) == 1:
		// A dual-stack headless Service gets both families (selector-less
		// ones even on a single-stack cluster).
		s.IPFamilies = append(s.IPFamilies, otherFamily(s.IPFamilies[0]))
	case !headless && *s.IPFamilyPolicy == corev1.IPFamilyPolicyRequireDualStack && len(s.ClusterIPs) == 1:
		return []fieldErr{required("spec.clusterIPs[1]",
			"RequireDualStack needs a cluster IP of each family (no API server allocates the second here)")}
	case !headless && len(s.IPFamilies) > len(s.ClusterIPs):
		return []fieldErr{required(fmt.Sprintf("spec.clusterIPs[%d]", len(s.ClusterIPs)),
			"every family in spec.ipFamilies needs its cluster IP (no API server allocates one here)")}
	}
	return nil
}

func familyOf(a netip.Addr) corev1.IPFamily {
	if a.Is4() || a.Is4In6() {
		return corev1.IPv4Protocol
	}
	return corev1.IPv6Protocol
}

func otherFamily(f corev1.IPFamily) corev1.IPFamily {
	if f == corev1.IPv4Protocol {
		return corev1.IPv6Protocol
	}
	return corev1.IPv4Protocol
}

func prepareEndpointSlice(o *discoveryv1.EndpointSlice) []fieldErr {
	var errs []fieldErr
	switch o.AddressType {
	case discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6, discoveryv1.AddressTypeFQDN:
	case "":
		errs = append(errs, required("addressType", "IPv4, IPv6 or FQDN"))
	default:
		errs = append(errs, invalid("addressType", o.AddressType, "must be IPv4, IPv6 or FQDN"))
	}
	for i := range o.Ports {
		p := &o.Ports[i]
		if p.Name == nil {
			name := ""
			p.Name = &name
		}
		if p.Protocol == nil {
			tcp := corev1.ProtocolTCP
			p.Protocol = &tcp
		}
	}
	return errs
}

// prepareGateway applies the Gateway API CRD schema defaults that the API
// server applies on create.
func prepareGateway(o *gatewayv1.Gateway) []fieldErr {
	var errs []fieldErr
	s := &o.Spec
	if s.GatewayClassName == "" {
		errs = append(errs, required("spec.gatewayClassName", ""))
	}
	if len(s.Listeners) == 0 {
		errs = append(errs, required("spec.listeners", "at least one listener"))
	}
	for i := range s.Addresses {
		if s.Addresses[i].Type == nil {
			t := gatewayv1.IPAddressType
			s.Addresses[i].Type = &t
		}
	}
	for i := range s.Listeners {
		l := &s.Listeners[i]
		if l.AllowedRoutes == nil {
			l.AllowedRoutes = &gatewayv1.AllowedRoutes{}
		}
		if l.AllowedRoutes.Namespaces == nil {
			l.AllowedRoutes.Namespaces = &gatewayv1.RouteNamespaces{}
		}
		if l.AllowedRoutes.Namespaces.From == nil {
			same := gatewayv1.NamespacesFromSame
			l.AllowedRoutes.Namespaces.From = &same
		}
		for j := range l.AllowedRoutes.Kinds {
			if l.AllowedRoutes.Kinds[j].Group == nil {
				g := gatewayv1.Group(gatewayv1.GroupName)
				l.AllowedRoutes.Kinds[j].Group = &g
			}
		}
		if l.TLS != nil && l.TLS.Mode == nil {
			terminate := gatewayv1.TLSModeTerminate
			l.TLS.Mode = &terminate
		}
		if l.Port < 1 || l.Port > 65535 {
			errs = append(errs, invalid(fmt.Sprintf("spec.listeners[%d].port", i), l.Port, "must be between 1 and 65535"))
		}
	}
	return errs
}
