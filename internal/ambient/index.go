package ambient

import (
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"

	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
)

// Label istiod reads for the cluster's network (on the system namespace only).
const labelTopologyNetwork = "topology.istio.io/network"

// index is the read-only lookup state of one Build, derived from Inputs.
type index struct {
	network    string
	namespaces map[string]*corev1.Namespace
	nodes      map[string]*corev1.Node
	// services in input order; byKey by "namespace/hostname".
	services []*serviceInfo
	byKey    map[string]*serviceInfo
	// slicesByPod: EndpointSlices that name a Pod endpoint, by its targetRef.
	slicesByPod map[podRef][]*discoveryv1.EndpointSlice
}

// serviceInfo is a mapped Service plus what workloads need to join with it.
type serviceInfo struct {
	svc      *workloadpb.Service
	selector map[string]string
	// portNames by service port number. Like istiod, a later port with the
	// same number (e.g. 53/TCP and 53/UDP) replaces an earlier one.
	portNames map[uint32]servicePortName
}

type servicePortName struct {
	portName       string
	targetPortName string
}

// podRef is the key istiod joins EndpointSlice endpoints to Pods by: the
// endpoint's targetRef, uid included.
type podRef struct {
	namespace, name string
	uid             types.UID
}

func newIndex(cfg Config, in Inputs, w *warnings) *index {
	idx := &index{
		namespaces:  make(map[string]*corev1.Namespace, len(in.Namespaces)),
		nodes:       make(map[string]*corev1.Node, len(in.Nodes)),
		byKey:       make(map[string]*serviceInfo, len(in.Services)),
		slicesByPod: map[podRef][]*discoveryv1.EndpointSlice{},
	}
	for _, ns := range in.Namespaces {
		idx.namespaces[ns.Name] = ns
	}
	for _, n := range in.Nodes {
		idx.nodes[n.Name] = n
	}
	idx.network = localNetwork(cfg, idx.namespaces[cfg.SystemNamespace])

	for _, s := range in.Services {
		svc := serviceResource(serviceInput{cfg: cfg, network: idx.network, svc: s, namespace: idx.namespaces[s.Namespace]}, w)
		if svc == nil {
			continue
		}
		info := &serviceInfo{svc: svc, selector: s.Spec.Selector, portNames: make(map[uint32]servicePortName, len(s.Spec.Ports))}
		for _, p := range s.Spec.Ports {
			info.portNames[uint32(p.Port)] = servicePortName{portName: p.Name, targetPortName: p.TargetPort.StrVal}
		}
		idx.services = append(idx.services, info)
		idx.byKey[namespacedHostname(svc.Namespace, svc.Hostname)] = info
	}

	for _, es := range in.EndpointSlices {
		if !serviceEndpointSlice(es) {
			continue
		}
		for _, ep := range es.Endpoints {
			if ep.TargetRef == nil || ep.TargetRef.Kind != kindPod {
				continue
			}
			ref := podRef{namespace: ep.TargetRef.Namespace, name: ep.TargetRef.Name, uid: ep.TargetRef.UID}
			idx.slicesByPod[ref] = append(idx.slicesByPod[ref], es)
		}
	}
	return idx
}

// localNetwork is the network of every local address: the configured network,
// else the system namespace's topology.istio.io/network label (istiod reads
// no other network label for Pods, Services or EndpointSlices).
func localNetwork(cfg Config, systemNamespace *corev1.Namespace) string {
	if cfg.Network != "" {
		return cfg.Network
	}
	if systemNamespace == nil {
		return ""
	}
	return systemNamespace.Labels[labelTopologyNetwork]
}

// serviceEndpointSlice reports whether istiod looks at the slice at all: it
// must belong to a Service (kubernetes.io/service-name label) and carry IPs.
func serviceEndpointSlice(es *discoveryv1.EndpointSlice) bool {
	if _, ok := es.Labels[discoveryv1.LabelServiceName]; !ok {
		return false
	}
	return es.AddressType != discoveryv1.AddressTypeFQDN
}

const kindPod = "Pod"
