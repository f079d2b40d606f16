package ambient

import (
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
)

// Label istiod reads for the cluster's network (on the system namespace only).
const labelTopologyNetwork = "topology.istio.io/network"

// objectKey names a namespaced object of one kind inside the index.
type objectKey struct{ namespace, name string }

// index is the model's lookup state: the input objects by key, the mapped
// Services that workloads join with, and the secondary indexes that answer
// "who depends on this object" when it changes (pods by namespace and node,
// EndpointSlices by Service and by the pods they name). The Model keeps it
// up to date one object at a time; the per-object mapping functions only
// read it.
type index struct {
	network    string
	namespaces map[string]*corev1.Namespace
	nodes      map[string]*corev1.Node
	gateways   map[objectKey]*gatewayv1.Gateway

	pods map[objectKey]*corev1.Pod
	// podsByNamespace and podsByNode hold every pod key, whether or not the
	// pod maps to a workload.
	podsByNamespace map[string]map[objectKey]struct{}
	podsByNode      map[string]map[objectKey]struct{}

	k8sServices map[objectKey]*corev1.Service
	// services are the mapped Services (ExternalName and invalid ones are
	// absent), by object key, by namespace and by "namespace/hostname".
	services            map[objectKey]*serviceInfo
	servicesByNamespace map[string]map[objectKey]*serviceInfo
	byKey               map[string]*serviceInfo
	// servicesBySelector files each mapped Service with a non-empty
	// selector under one of its selector's labels (the least key), so a pod
	// looks only at the Services filed under its own labels: a pod change
	// costs the same with 10 or 10,000 Services in its namespace.
	servicesBySelector map[selectorLabel]map[objectKey]*serviceInfo

	slices map[objectKey]*discoveryv1.EndpointSlice
	// slicesByPod: EndpointSlices that name a Pod endpoint, by its targetRef.
	slicesByPod map[podRef]map[objectKey]struct{}
	// slicesByService: slices by the Service their service-name label names.
	slicesByService map[objectKey]map[objectKey]struct{}
}

// selectorLabel is one label of a Service selector, in a namespace.
type selectorLabel struct{ namespace, key, value string }

// indexLabel is the label a Service is filed under; ok is false for an
// empty selector, which selects nothing.
func indexLabel(namespace string, selector map[string]string) (selectorLabel, bool) {
	first := ""
	found := false
	for k := range selector {
		if !found || k < first {
			first, found = k, true
		}
	}
	return selectorLabel{namespace: namespace, key: first, value: selector[first]}, found
}

// serviceInfo is a mapped Service plus what workloads need to join with it.
type serviceInfo struct {
	svc      *workloadpb.Service
	selector map[string]string
	// scope: a global Service's endpoints also join its global service.
	scope scope
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

func newIndex() *index {
	return &index{
		namespaces:          map[string]*corev1.Namespace{},
		nodes:               map[string]*corev1.Node{},
		gateways:            map[objectKey]*gatewayv1.Gateway{},
		pods:                map[objectKey]*corev1.Pod{},
		podsByNamespace:     map[string]map[objectKey]struct{}{},
		podsByNode:          map[string]map[objectKey]struct{}{},
		k8sServices:         map[objectKey]*corev1.Service{},
		services:            map[objectKey]*serviceInfo{},
		servicesByNamespace: map[string]map[objectKey]*serviceInfo{},
		byKey:               map[string]*serviceInfo{},
		servicesBySelector:  map[selectorLabel]map[objectKey]*serviceInfo{},
		slices:              map[objectKey]*discoveryv1.EndpointSlice{},
		slicesByPod:         map[podRef]map[objectKey]struct{}{},
		slicesByService:     map[objectKey]map[objectKey]struct{}{},
	}
}

// setPod records p (nil: deleted) under key and keeps the pod indexes.
func (x *index) setPod(key objectKey, p *corev1.Pod) {
	if old := x.pods[key]; old != nil {
		removeFromMap(x.podsByNamespace, key.namespace, key)
		removeFromMap(x.podsByNode, old.Spec.NodeName, key)
		delete(x.pods, key)
	}
	if p == nil {
		return
	}
	x.pods[key] = p
	addToMap(x.podsByNamespace, key.namespace, key, struct{}{})
	addToMap(x.podsByNode, p.Spec.NodeName, key, struct{}{})
}

// setService records the mapped Service info (nil: absent) under key.
func (x *index) setService(key objectKey, info *serviceInfo) {
	if old := x.services[key]; old != nil {
		delete(x.byKey, namespacedHostname(old.svc.Namespace, old.svc.Hostname))
		if l, ok := indexLabel(key.namespace, old.selector); ok {
			removeFromMap(x.servicesBySelector, l, key)
		}
		removeFromMap(x.servicesByNamespace, key.namespace, key)
		delete(x.services, key)
	}
	if info == nil {
		return
	}
	x.services[key] = info
	x.byKey[namespacedHostname(info.svc.Namespace, info.svc.Hostname)] = info
	addToMap(x.servicesByNamespace, key.namespace, key, info)
	if l, ok := indexLabel(key.namespace, info.selector); ok {
		addToMap(x.servicesBySelector, l, key, info)
	}
}

// selectingServices are the mapped Services whose selector selects pod.
func (x *index) selectingServices(p *corev1.Pod) []*serviceInfo {
	var out []*serviceInfo
	for k, v := range p.Labels {
		for _, info := range x.servicesBySelector[selectorLabel{namespace: p.Namespace, key: k, value: v}] {
			if selects(info.selector, p.Labels) {
				out = append(out, info)
			}
		}
	}
	return out
}

func addToMap[K, K2 comparable, V any](m map[K]map[K2]V, k K, k2 K2, v V) {
	inner := m[k]
	if inner == nil {
		inner = map[K2]V{}
		m[k] = inner
	}
	inner[k2] = v
}

func removeFromMap[K, K2 comparable, V any](m map[K]map[K2]V, k K, k2 K2) {
	inner := m[k]
	if inner == nil {
		return
	}
	delete(inner, k2)
	if len(inner) == 0 {
		delete(m, k)
	}
}

// setSlice records es (nil: deleted) under key and keeps the slice indexes.
func (x *index) setSlice(key objectKey, es *discoveryv1.EndpointSlice) {
	if old := x.slices[key]; old != nil {
		for _, ref := range slicePodRefs(old) {
			removeFromMap(x.slicesByPod, ref, key)
		}
		if svc, ok := sliceService(old); ok {
			removeFromMap(x.slicesByService, svc, key)
		}
		delete(x.slices, key)
	}
	if es == nil {
		return
	}
	x.slices[key] = es
	for _, ref := range slicePodRefs(es) {
		addToMap(x.slicesByPod, ref, key, struct{}{})
	}
	if svc, ok := sliceService(es); ok {
		addToMap(x.slicesByService, svc, key, struct{}{})
	}
}

// slicePodRefs are the Pods a slice names as endpoint targets; only slices
// istiod looks at count.
func slicePodRefs(es *discoveryv1.EndpointSlice) []podRef {
	if !serviceEndpointSlice(es) {
		return nil
	}
	var refs []podRef
	for _, ep := range es.Endpoints {
		if ep.TargetRef == nil || ep.TargetRef.Kind != kindPod {
			continue
		}
		refs = append(refs, podRef{namespace: ep.TargetRef.Namespace, name: ep.TargetRef.Name, uid: ep.TargetRef.UID})
	}
	return refs
}

// sliceService is the Service a slice belongs to (its service-name label).
func sliceService(es *discoveryv1.EndpointSlice) (objectKey, bool) {
	name, ok := es.Labels[discoveryv1.LabelServiceName]
	if !ok {
		return objectKey{}, false
	}
	return objectKey{namespace: es.Namespace, name: name}, true
}

// slicesOfPod are the slices that name the pod with this key and uid.
func (x *index) slicesOfPod(p *corev1.Pod) []*discoveryv1.EndpointSlice {
	keys := x.slicesByPod[podRef{namespace: p.Namespace, name: p.Name, uid: p.UID}]
	if len(keys) == 0 {
		return nil
	}
	out := make([]*discoveryv1.EndpointSlice, 0, len(keys))
	for k := range keys {
		out = append(out, x.slices[k])
	}
	return out
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
