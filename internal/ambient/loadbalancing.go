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

// parseTrafficDistribution maps a value to its choice; ok is false for a
// value nobody knows. Annotations compare case-insensitively (as istiod),
// spec.trafficDistribution exactly (it is an API enum).
func parseTrafficDistribution(v string, foldCase bool) (trafficDistribution, bool) {
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
		return distributionSameZone, true
	case TrafficDistributionPreferSameNode:
		return distributionSameNode, true
	case TrafficDistributionPreferNetwork:
		return distributionNetwork, true
	case TrafficDistributionPreferRegion:
		return distributionRegion, true
	case TrafficDistributionAny:
		return distributionAny, true
	}
	return distributionAny, false
}

// loadBalancingInput is what loadBalancing reads.
type loadBalancingInput struct {
	service              *corev1.Service
	namespaceAnnotations map[string]string
}

// loadBalancing is a local Service's load_balancing, or nil.
//
// Precedence, as istiod: internalTrafficPolicy Local ([NODE] STRICT, nothing
// else consulted); else spec.trafficDistribution; else the Service's
// annotation; else its Namespace's annotation; else none. Where the choices
// differ from istiod's rules:
//   - istiod ignores a spec value it does not know and reads the annotations;
//     peerd does the same for a value nobody knows (with a warning), but
//     applies its own values (PreferNetwork, PreferRegion, Any) from the spec.
//   - an unknown annotation value stops the search with "no load_balancing",
//     exactly as istiod does, plus a warning.
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
		lb = distributionLoadBalancing(resolveTrafficDistribution(in, w))
	}
	if s.Spec.PublishNotReadyAddresses {
		if lb == nil {
			lb = &workloadpb.LoadBalancing{}
		}
		lb.HealthPolicy = workloadpb.LoadBalancing_ALLOW_ALL
	}
	return lb
}

func resolveTrafficDistribution(in loadBalancingInput, w *warnings) trafficDistribution {
	s := in.service
	if v := s.Spec.TrafficDistribution; v != nil && *v != "" {
		if d, ok := parseTrafficDistribution(*v, false); ok {
			return d
		}
		w.add(objectRef("service", s.Namespace, s.Name), "spec.trafficDistribution",
			fmt.Sprintf("unknown traffic distribution %q: ignored, annotations and default apply", *v))
	}
	annotationField := "metadata.annotations[" + AnnotationTrafficDistribution + "]"
	if v := s.Annotations[AnnotationTrafficDistribution]; v != "" {
		d, ok := parseTrafficDistribution(v, true)
		if !ok {
			w.add(objectRef("service", s.Namespace, s.Name), annotationField,
				fmt.Sprintf("unknown traffic distribution %q: default applies", v))
		}
		return d
	}
	if v := in.namespaceAnnotations[AnnotationTrafficDistribution]; v != "" {
		d, ok := parseTrafficDistribution(v, true)
		if !ok {
			w.add(objectRef("namespace", "", s.Namespace), annotationField,
				fmt.Sprintf("unknown traffic distribution %q: default applies", v))
		}
		return d
	}
	return distributionAny
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
