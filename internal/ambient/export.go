package ambient

import (
	"cmp"
	"fmt"
	"iter"
	"maps"
	"slices"

	"google.golang.org/protobuf/types/known/timestamppb"
	corev1 "k8s.io/api/core/v1"

	"github.com/peerd-mesh/peerd/internal/federation"
	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
	federationpb "github.com/peerd-mesh/peerd/proto/peerd/federation/v1"
)

// exportInput is what exportService reads for one local Service.
type exportInput struct {
	cfg Config
	// locality of the local cluster (Config.Locality or the east-west
	// Gateway's); empty fields are unknown.
	locality Locality
	svc      *corev1.Service
	scope    scope
	// namespace of the Service; nil when unknown.
	namespace *corev1.Namespace
	// endpoints are the published workloads whose services map lists the
	// Service, by uid.
	endpoints map[string]*workloadpb.Workload
}

// exportService is the FederatedService a global Service is exported as,
// or nil when the Service is not global.
//
// Capacity and SANs are ServedSummary's of the Service's endpoints.
func exportService(in exportInput, w *warnings) *federationpb.FederatedService {
	if !in.scope.global() {
		return nil
	}
	s := in.svc
	var nsAnnotations map[string]string
	if in.namespace != nil {
		nsAnnotations = in.namespace.Annotations
	}
	// The Service's own mapping already warned about an unknown value.
	var discard warnings
	_, distribution, _ := requestedDistribution(loadBalancingInput{service: s, namespaceAnnotations: nsAnnotations}, &discard)

	capacity, sans := ServedSummary(in.cfg.TrustDomain, maps.Values(in.endpoints))

	out := &federationpb.FederatedService{
		Name:                s.Name,
		Namespace:           s.Namespace,
		Ports:               exportPorts(s, w),
		SubjectAltNames:     sans,
		Capacity:            capacity,
		TrafficDistribution: distribution,
		Scope:               in.scope.proto(),
	}
	if l := in.locality; l != (Locality{}) {
		out.Locality = &federationpb.Locality{Region: l.Region, Zone: l.Zone}
	}
	if !s.CreationTimestamp.IsZero() {
		out.CreationTime = timestamppb.New(s.CreationTimestamp.Time)
	}
	return out
}

// ServedSummary is what an export says of a service's served workloads,
// the same in both modes: standalone mode passes its own mapping of the
// Pods and EndpointSlices, extension mode what the Merger serves (istiod's
// workloads, WorkloadEntries included), so a peer sees the same summary
// whichever mapped the cluster.
//
// Capacity counts the workloads ztunnel would see HEALTHY. SANs are the
// sorted identities of the workloads, Ready or not (readiness is capacity's
// business, and SANs that follow it would churn every importer's global
// service). A workload has an identity when it is a Pod (without a service
// account: "default", as ztunnel assumes) or names its service account (a
// WorkloadEntry); an EndpointSlice endpoint that is neither has none.
func ServedSummary(trustDomain string, workloads iter.Seq[*workloadpb.Workload]) (capacity uint32, sans []string) {
	for wl := range workloads {
		if wl.GetStatus() == workloadpb.WorkloadStatus_HEALTHY {
			capacity++
		}
		sa := wl.GetServiceAccount()
		if sa == "" && wl.GetWorkloadType() == workloadpb.WorkloadType_POD {
			sa = "default"
		}
		if sa != "" {
			sans = append(sans, spiffeID(trustDomain, wl.GetNamespace(), sa))
		}
	}
	slices.Sort(sans)
	return capacity, slices.Compact(sans)
}

// exportPorts are the Service's ports sorted by number. Kubernetes allows
// one number twice (53/TCP and 53/UDP) but an export lists each once: the
// first in spec order is kept, with a warning.
func exportPorts(s *corev1.Service, w *warnings) []*federationpb.Port {
	out := make([]*federationpb.Port, 0, len(s.Spec.Ports))
	for i, p := range s.Spec.Ports {
		if j := slices.IndexFunc(out, func(e *federationpb.Port) bool { return e.Port == uint32(p.Port) }); j >= 0 {
			w.add(objectRef(KindService, s.Namespace, s.Name), fmt.Sprintf("spec.ports[%d]", i),
				fmt.Sprintf("port %d/%s: the number is also %s: only the first is exported", p.Port, p.Protocol, out[j].Protocol))
			continue
		}
		fp := &federationpb.Port{Port: uint32(p.Port), TargetPort: uint32(p.TargetPort.IntVal), Protocol: string(p.Protocol), Name: p.Name}
		if fp.Protocol == "" {
			fp.Protocol = string(corev1.ProtocolTCP) // the API server's default
		}
		if p.AppProtocol != nil {
			fp.AppProtocol = *p.AppProtocol
		}
		out = append(out, fp)
	}
	slices.SortFunc(out, func(a, b *federationpb.Port) int { return cmp.Compare(a.Port, b.Port) })
	return out
}

// workloadPort maps an exported port to a WDS port, deriving the app
// protocol the way the exporter's istiod would from the same Service port.
func workloadPort(p *federationpb.Port) *workloadpb.Port {
	sp := corev1.ServicePort{Name: p.GetName(), Port: int32(p.GetPort()), Protocol: corev1.Protocol(p.GetProtocol())}
	if p.GetAppProtocol() != "" {
		ap := p.GetAppProtocol()
		sp.AppProtocol = &ap
	}
	return &workloadpb.Port{ServicePort: p.GetPort(), TargetPort: p.GetTargetPort(), AppProtocol: appProtocol(sp)}
}

// importRef names an imported service in warnings.
func importRef(s *federation.ImportedService) ObjectRef {
	return ObjectRef{Kind: KindImportedService, Cluster: s.Cluster, Namespace: s.Namespace, Name: s.Name}
}
