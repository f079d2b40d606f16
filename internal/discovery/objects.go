package discovery

import (
	"github.com/peerd-mesh/peerd/internal/federation"
	"k8s.io/apimachinery/pkg/runtime"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Objects is a consistent copy of everything the sources hold at one moment.
// Each slice is sorted by namespace, then name. The objects are shared with
// the index and must not be mutated.
type Objects struct {
	Namespaces     []*corev1.Namespace
	Nodes          []*corev1.Node
	Pods           []*corev1.Pod
	Services       []*corev1.Service
	EndpointSlices []*discoveryv1.EndpointSlice
	Gateways       []*gatewayv1.Gateway
	// ImportedServices are the services linked clusters export, sorted by
	// cluster, then namespace, then name.
	ImportedServices []*federation.ImportedService
}

// Add files obj under its kind; objects of other kinds are ignored.
func (o *Objects) Add(obj runtime.Object) {
	switch obj := obj.(type) {
	case *corev1.Namespace:
		o.Namespaces = append(o.Namespaces, obj)
	case *corev1.Node:
		o.Nodes = append(o.Nodes, obj)
	case *corev1.Pod:
		o.Pods = append(o.Pods, obj)
	case *corev1.Service:
		o.Services = append(o.Services, obj)
	case *discoveryv1.EndpointSlice:
		o.EndpointSlices = append(o.EndpointSlices, obj)
	case *gatewayv1.Gateway:
		o.Gateways = append(o.Gateways, obj)
	case *federation.ImportedService:
		o.ImportedServices = append(o.ImportedServices, obj)
	}
}
