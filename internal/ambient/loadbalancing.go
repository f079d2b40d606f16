package ambient

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"

	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
)

// AnnotationTrafficDistribution is read on Services and their Namespaces.
const AnnotationTrafficDistribution = "networking.istio.io/traffic-distribution"

// Traffic-distribution values. PreferClose, PreferSameZone and PreferSameNode
// are Kubernetes' own and istiod knows them; PreferNetwork, PreferRegion and
// Any exist only in peerd's design.
const (
	TrafficDistributionPreferClose    = "PreferClose"
	TrafficDistributionPreferSameZone = "PreferSameZone"
	TrafficDistributionPreferSameNode = "PreferSameNode"
	TrafficDistributionPreferNetwork  = "PreferNetwork"
	TrafficDistributionPreferRegion   = "PreferRegion"
	TrafficDistributionAny            = "Any"
)

// trafficDistribution is a resolved traffic-distribution choice.
type trafficDistribution int

const (
	distributionAny trafficDistribution = iota // no load_balancing
	distributionSameZone
	distributionSameNode
	distributionNetwork
	distributionRegion
)

// parseTrafficDistribution maps a value to its choice and its canonical
// spelling; ok is false for a value nobody knows. Annotations compare
// case-insensitively (as istiod), spec.trafficDistribution exactly (it is an
// API enum).
func parseTrafficDistribution(v string, foldCase bool) (d trafficDistribution, canonical string, ok bool) {
	if foldCase {
		for _, known := range []string{
			TrafficDistributionPreferClose, TrafficDistributionPreferSameZone, TrafficDistributionPreferSameNode,
			TrafficDistributionPreferNetwork, TrafficDistributionPreferRegion, TrafficDistributionAny,
		} {
			if strings.EqualFold(v, known) {
				v = known
				break
			}
		}
	}
	switch v {
	case TrafficDistributionPreferClose, TrafficDistributionPreferSameZone:
		return distributionSameZone, v, true
	case TrafficDistributionPreferSameNode:
		return distributionSameNode, v, true
	case TrafficDistributionPreferNetwork:
		return distributionNetwork, v, true
	case TrafficDistributionPreferRegion:
		return distributionRegion, v, true
	case TrafficDistributionAny:
		return distributionAny, v, true
	}
	return distributionAny, "", false
}

// loadBalancingInput is what loadBalancing reads.
type loadBalancingInput struct {
	service              *corev1.Service
	namespaceAnnotations map[string]string
	// fallback applies when the Service asks for no distribution or for
	// one nobody knows: distributionAny (no load_balancing) for the local
	// Service, as istiod; distributionNetwork for its global service.
	fallback trafficDistribution
}

// loadBalancing is a Service's load_balancing, or nil.
//
// Precedence, as istiod: internalTrafficPolicy Local ([NODE] STRICT, nothing
// else consulted); else spec.trafficDistribution; else the Service's
// annotation; else its Namespace's annotation; else the fallback. Where the
// choices differ from istiod's rules:
//   - istiod ignores a spec value it does not know and reads the annotations;
//     peerd does the same for a value nobody knows (with a warning), but
//     applies its own values (PreferNetwork, PreferRegion, Any) from the spec.
//   - an unknown annotation value stops the search with the fallback (for a
//     local Service "no load_balancing", exactly as istiod does), plus a
//     warning.
//
// publishNotReadyAddresses adds health policy ALLOW_ALL on top of any result.
func loadBalancing(in loadBalancingInput, w *warnings) *workloadpb.LoadBalancing {
	s := in.service
	var lb *workloadpb.LoadBalancing
	if itp := s.Spec.InternalTrafficPolicy; itp != nil && *itp == corev1.ServiceInternalTrafficPolicyLocal {
		lb = &workloadpb.LoadBalancing{
			RoutingPreference: []workloadpb.LoadBalancing_Scope{workloadpb.LoadBalancing_NODE},
			Mode:              workloadpb.LoadBalancing_STRICT,
		}
	} else {
		d, _, ok := requestedDistribution(in, w)
		if !ok {
			d = in.fallback
		}
		lb = distributionLoadBalancing(d)
	}
	if s.Spec.PublishNotReadyAddresses {
		if lb == nil {
			lb = &workloadpb.LoadBalancing{}
		}
		lb.HealthPolicy = workloadpb.LoadBalancing_ALLOW_ALL
	}
	return lb
}

// requestedDistribution is the traffic distribution the Service asks for,
// in istiod's precedence, with its canonical spelling (what an export
// carries); ok is false when it asks for none, or stops the search at a value
// nobody knows (a warning).
func requestedDistribution(in loadBalancingInput, w *warnings) (trafficDistribution, string, bool) {
	s := in.service
	if v := s.Spec.TrafficDistribution; v != nil && *v != "" {
		if d, canonical, ok := parseTrafficDistribution(*v, false); ok {
			return d, canonical, true
		}
		w.add(objectRef("service", s.Namespace, s.Name), "spec.trafficDistribution",
			fmt.Sprintf("unknown traffic distribution %q: ignored, annotations and default apply", *v))
	}
	annotationField := "metadata.annotations[" + AnnotationTrafficDistribution + "]"
	if v := s.Annotations[AnnotationTrafficDistribution]; v != "" {
		d, canonical, ok := parseTrafficDistribution(v, true)
		if !ok {
			w.add(objectRef("service", s.Namespace, s.Name), annotationField,
				fmt.Sprintf("unknown traffic distribution %q: default applies", v))
		}
		return d, canonical, ok
	}
	if v := in.namespaceAnnotations[AnnotationTrafficDistribution]; v != "" {
		d, canonical, ok := parseTrafficDistribution(v, true)
		if !ok {
			w.add(objectRef("namespace", "", s.Namespace), annotationField,
				fmt.Sprintf("unknown traffic distribution %q: default applies", v))
		}
		return d, canonical, ok
	}
	return distributionAny, "", false
}

// distributionLoadBalancing is the design's table. Each call returns a fresh
// message, since the caller may add a health policy to it.
func distributionLoadBalancing(d trafficDistribution) *workloadpb.LoadBalancing {
	var scopes []workloadpb.LoadBalancing_Scope
	switch d {
	case distributionNetwork:
		scopes = []workloadpb.LoadBalancing_Scope{workloadpb.LoadBalancing_NETWORK}
	case distributionRegion:
		scopes = []workloadpb.LoadBalancing_Scope{workloadpb.LoadBalancing_NETWORK, workloadpb.LoadBalancing_REGION}
	case distributionSameZone:
		scopes = []workloadpb.LoadBalancing_Scope{
			workloadpb.LoadBalancing_NETWORK, workloadpb.LoadBalancing_REGION, workloadpb.LoadBalancing_ZONE,
		}
	case distributionSameNode:
		scopes = []workloadpb.LoadBalancing_Scope{
			workloadpb.LoadBalancing_NETWORK, workloadpb.LoadBalancing_REGION, workloadpb.LoadBalancing_ZONE,
			workloadpb.LoadBalancing_SUBZONE, workloadpb.LoadBalancing_NODE,
		}
	default:
		return nil
	}
	return &workloadpb.LoadBalancing{RoutingPreference: scopes, Mode: workloadpb.LoadBalancing_FAILOVER}
}
