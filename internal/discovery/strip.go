package discovery

import (
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// lastAppliedAnnotation holds a full copy of the object as `kubectl apply`
// last wrote it: often the largest field, and never read by the mapping.
const lastAppliedAnnotation = corev1.LastAppliedConfigAnnotation

// Strip returns a new object holding only the fields peerd reads from obj
// (internal/ambient's mapping, plus what peering needs: a Service's and a
// Gateway's creationTimestamp, a Gateway's generation, spec and
// status.addresses), so
// that memory follows what peerd needs and a change to anything else
// (a node heartbeat, a pod condition other than Ready, managedFields,
// EndpointSlice trigger-time annotations, Gateway status conditions)
// leaves the stripped object equal to the previous one apart from its
// resourceVersion.
//
// Every kind keeps its identity: name, namespace, uid and resourceVersion
// (the Index recognises an unchanged relist by resourceVersion and uid).
// Objects of other types are returned as they are. Strip never modifies obj,
// but the result shares maps and slices with it (labels, ports, owner
// references): obj must not be modified afterwards either, which holds for
// an informer's transform and a decoded file, whose originals are dropped.
// Strip(Strip(x)) equals Strip(x), as an informer transform must be.
//
// When the mapping starts reading a new field, it must be kept here: the
// test comparing ambient.Build on stripped and unstripped manifests catches
// a field that is read but dropped, as long as a fixture sets it.
func Strip(obj runtime.Object) runtime.Object {
	switch o := obj.(type) {
	case *corev1.Pod:
		return stripPod(o)
	case *corev1.Node:
		return &corev1.Node{TypeMeta: o.TypeMeta, ObjectMeta: withLabels(o.ObjectMeta)}
	case *corev1.Namespace:
		return &corev1.Namespace{TypeMeta: o.TypeMeta, ObjectMeta: withAnnotations(o.ObjectMeta)}
	case *corev1.Service:
		meta := withAnnotations(o.ObjectMeta)
		meta.CreationTimestamp = o.CreationTimestamp
		// The whole spec is read (type, cluster IPs, families, ports,
		// selector, traffic policies); status (load-balancer ingress) is not.
		return &corev1.Service{TypeMeta: o.TypeMeta, ObjectMeta: meta, Spec: o.Spec}
	case *discoveryv1.EndpointSlice:
		return stripEndpointSlice(o)
	case *gatewayv1.Gateway:
		meta := withAnnotations(o.ObjectMeta)
		meta.CreationTimestamp = o.CreationTimestamp
		// The generation is the observedGeneration of the link conditions
		// peerd writes; it moves only with the spec, which is kept anyway.
		meta.Generation = o.Generation
		return &gatewayv1.Gateway{
			TypeMeta:   o.TypeMeta,
			ObjectMeta: meta,
			Spec:       o.Spec,
			// Addresses are where a link reaches the gateway; conditions
			// and listener status churn without meaning anything to peerd.
			Status: gatewayv1.GatewayStatus{Addresses: o.Status.Addresses},
		}
	}
	return obj
}

// identity is the metadata every stripped object keeps.
func identity(m metav1.ObjectMeta) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: m.Name, Namespace: m.Namespace, UID: m.UID, ResourceVersion: m.ResourceVersion}
}

func withLabels(m metav1.ObjectMeta) metav1.ObjectMeta {
	out := identity(m)
	out.Labels = m.Labels
	return out
}

// withAnnotations keeps labels and annotations except the last-applied copy
// of the object. The map is copied only when that annotation is present, so
// the input is never modified.
func withAnnotations(m metav1.ObjectMeta) metav1.ObjectMeta {
	out := withLabels(m)
	out.Annotations = m.Annotations
	if _, ok := m.Annotations[lastAppliedAnnotation]; ok {
		out.Annotations = make(map[string]string, len(m.Annotations)-1)
		for k, v := range m.Annotations {
			if k != lastAppliedAnnotation {
				out.Annotations[k] = v
			}
		}
		if len(out.Annotations) == 0 {
			out.Annotations = nil
		}
	}
	return out
}

// stripPod keeps what the workload mapping reads: identity, labels and
// annotations (tunnel, redirection, canonical names), the owner chain for the
// workload name, termination, the service account, node and network mode,
// named container ports (and native sidecars' restart policy), the phase, the
// IPs and the Ready condition's status alone: its timestamps and the other
// conditions change without changing the workload.
func stripPod(p *corev1.Pod) *corev1.Pod {
	meta := withAnnotations(p.ObjectMeta)
	meta.GenerateName = p.GenerateName
	meta.OwnerReferences = p.OwnerReferences
	meta.DeletionTimestamp = p.DeletionTimestamp
	out := &corev1.Pod{
		TypeMeta:   p.TypeMeta,
		ObjectMeta: meta,
		Spec: corev1.PodSpec{
			ServiceAccountName: p.Spec.ServiceAccountName,
			NodeName:           p.Spec.NodeName,
			HostNetwork:        p.Spec.HostNetwork,
		},
		Status: corev1.PodStatus{Phase: p.Status.Phase, PodIP: p.Status.PodIP, PodIPs: p.Status.PodIPs},
	}
	if len(p.Spec.Containers) > 0 {
		out.Spec.Containers = make([]corev1.Container, len(p.Spec.Containers))
		for i, c := range p.Spec.Containers {
			out.Spec.Containers[i] = corev1.Container{Name: c.Name, Ports: c.Ports}
		}
	}
	if len(p.Spec.InitContainers) > 0 {
		out.Spec.InitContainers = make([]corev1.Container, len(p.Spec.InitContainers))
		for i, c := range p.Spec.InitContainers {
			out.Spec.InitContainers[i] = corev1.Container{Name: c.Name, Ports: c.Ports, RestartPolicy: c.RestartPolicy}
		}
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			out.Status.Conditions = []corev1.PodCondition{{Type: c.Type, Status: c.Status}}
			break
		}
	}
	return out
}

// stripEndpointSlice keeps the service-name label, the address type, the
// ports, and per endpoint its addresses, Ready condition and target: the
// slice's annotations (the controller's last-change-trigger-time changes on
// every update), hints, zones and node names are not read.
func stripEndpointSlice(es *discoveryv1.EndpointSlice) *discoveryv1.EndpointSlice {
	out := &discoveryv1.EndpointSlice{
		TypeMeta:    es.TypeMeta,
		ObjectMeta:  withLabels(es.ObjectMeta),
		AddressType: es.AddressType,
		Ports:       es.Ports,
	}
	if len(es.Endpoints) > 0 {
		out.Endpoints = make([]discoveryv1.Endpoint, len(es.Endpoints))
		for i, ep := range es.Endpoints {
			out.Endpoints[i] = discoveryv1.Endpoint{
				Addresses:  ep.Addresses,
				Conditions: discoveryv1.EndpointConditions{Ready: ep.Conditions.Ready},
				TargetRef:  ep.TargetRef,
			}
		}
	}
	return out
}
