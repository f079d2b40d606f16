package ambient

import (
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/peerd-mesh/peerd/internal/federation"
	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
	federationpb "github.com/peerd-mesh/peerd/proto/peerd/federation/v1"
)

// Small option builders for the objects the tables need. Each builder
// starts from the smallest object the API server would accept after
// defaulting, so a row lists only what its rule is about.

const testCluster = "c1"

var testConfig = Config{ClusterID: testCluster, Network: "net1"}

type podOpt func(*corev1.Pod)

func pod(ns, name string, opts ...podOpt) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       corev1.PodSpec{ServiceAccountName: "default"},
		Status: corev1.PodStatus{
			Phase:      corev1.PodRunning,
			PodIP:      "10.0.0.1",
			PodIPs:     []corev1.PodIP{{IP: "10.0.0.1"}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
		},
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

func podLabels(kv ...string) podOpt {
	return func(p *corev1.Pod) { p.Labels = kvMap(p.Labels, kv) }
}

func podAnnotations(kv ...string) podOpt {
	return func(p *corev1.Pod) { p.Annotations = kvMap(p.Annotations, kv) }
}

// captured marks the pod as redirected by the istio CNI.
func captured() podOpt {
	return podAnnotations(annotationAmbientRedirection, ambientRedirectionEnabled)
}

func podIPs(ips ...string) podOpt {
	return func(p *corev1.Pod) {
		p.Status.PodIPs = nil
		p.Status.PodIP = ""
		for i, ip := range ips {
			if i == 0 {
				p.Status.PodIP = ip
			}
			p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
		}
	}
}

func podReadyStatus(s corev1.ConditionStatus) podOpt {
	return func(p *corev1.Pod) {
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: s}}
	}
}

func podPhase(ph corev1.PodPhase) podOpt { return func(p *corev1.Pod) { p.Status.Phase = ph } }

func terminating() podOpt {
	return func(p *corev1.Pod) {
		t := metav1.Unix(1700000000, 0)
		p.DeletionTimestamp = &t
	}
}

func onNode(n string) podOpt { return func(p *corev1.Pod) { p.Spec.NodeName = n } }

func serviceAccount(sa string) podOpt { return func(p *corev1.Pod) { p.Spec.ServiceAccountName = sa } }

func hostNetwork() podOpt { return func(p *corev1.Pod) { p.Spec.HostNetwork = true } }

func podUIDOpt(uid string) podOpt { return func(p *corev1.Pod) { p.UID = types.UID(uid) } }

// ownedBy sets a generated name and a controller owner reference.
func ownedBy(kind, owner string) podOpt {
	return func(p *corev1.Pod) {
		p.GenerateName = owner + "-"
		ctrl := true
		p.OwnerReferences = []metav1.OwnerReference{{Kind: kind, Name: owner, Controller: &ctrl}}
	}
}

func containerPorts(ports ...corev1.ContainerPort) podOpt {
	return func(p *corev1.Pod) {
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "app", Ports: ports})
	}
}

func sidecarPorts(always bool, ports ...corev1.ContainerPort) podOpt {
	return func(p *corev1.Pod) {
		c := corev1.Container{Name: "sidecar", Ports: ports}
		if always {
			rp := corev1.ContainerRestartPolicyAlways
			c.RestartPolicy = &rp
		}
		p.Spec.InitContainers = append(p.Spec.InitContainers, c)
	}
}

func tcpPort(name string, n int32) corev1.ContainerPort {
	return corev1.ContainerPort{Name: name, ContainerPort: n, Protocol: corev1.ProtocolTCP}
}

type svcOpt func(*corev1.Service)

// service is a ClusterIP Service with the API server's defaults applied.
func service(ns, name string, opts ...svcOpt) *corev1.Service {
	cluster := corev1.ServiceInternalTrafficPolicyCluster
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{
			Type:                  corev1.ServiceTypeClusterIP,
			ClusterIP:             "10.96.0.10",
			ClusterIPs:            []string{"10.96.0.10"},
			IPFamilies:            []corev1.IPFamily{corev1.IPv4Protocol},
			InternalTrafficPolicy: &cluster,
		},
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

func selector(kv ...string) svcOpt {
	return func(s *corev1.Service) { s.Spec.Selector = kvMap(nil, kv) }
}

func svcAnnotations(kv ...string) svcOpt {
	return func(s *corev1.Service) { s.Annotations = kvMap(s.Annotations, kv) }
}

func clusterIPs(ips ...string) svcOpt {
	return func(s *corev1.Service) {
		s.Spec.ClusterIP = ips[0]
		s.Spec.ClusterIPs = ips
		s.Spec.IPFamilies = nil
		for _, ip := range ips {
			if ip == corev1.ClusterIPNone {
				continue
			}
			if netip.MustParseAddr(ip).Is4() {
				s.Spec.IPFamilies = append(s.Spec.IPFamilies, corev1.IPv4Protocol)
			} else {
				s.Spec.IPFamilies = append(s.Spec.IPFamilies, corev1.IPv6Protocol)
			}
		}
	}
}

func headless() svcOpt {
	return func(s *corev1.Service) {
		s.Spec.ClusterIP = corev1.ClusterIPNone
		s.Spec.ClusterIPs = []string{corev1.ClusterIPNone}
	}
}

func svcPorts(ports ...corev1.ServicePort) svcOpt {
	return func(s *corev1.Service) { s.Spec.Ports = append(s.Spec.Ports, ports...) }
}

// sport is a TCP service port with a numeric target.
func sport(name string, port, target int32) corev1.ServicePort {
	return corev1.ServicePort{Name: name, Port: port, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(target)}
}

// namedPort is a TCP service port whose target is a container port name.
func namedPort(name string, port int32, target string) corev1.ServicePort {
	return corev1.ServicePort{Name: name, Port: port, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromString(target)}
}

func specTrafficDistribution(v string) svcOpt {
	return func(s *corev1.Service) { s.Spec.TrafficDistribution = &v }
}

func internalLocal() svcOpt {
	return func(s *corev1.Service) {
		l := corev1.ServiceInternalTrafficPolicyLocal
		s.Spec.InternalTrafficPolicy = &l
	}
}

func publishNotReady() svcOpt {
	return func(s *corev1.Service) { s.Spec.PublishNotReadyAddresses = true }
}

func namespace(name string, labels, annotations map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels, Annotations: annotations}}
}

func node(name string, kv ...string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: kvMap(nil, kv)}}
}

type sliceOpt func(*discoveryv1.EndpointSlice)

// slice is an IPv4 EndpointSlice of the named Service.
func slice(ns, name, svc string, opts ...sliceOpt) *discoveryv1.EndpointSlice {
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
	}
	for _, o := range opts {
		o(es)
	}
	return es
}

func endpoint(ip string, opts ...func(*discoveryv1.Endpoint)) sliceOpt {
	return func(es *discoveryv1.EndpointSlice) {
		ep := discoveryv1.Endpoint{Addresses: []string{ip}}
		for _, o := range opts {
			o(&ep)
		}
		es.Endpoints = append(es.Endpoints, ep)
	}
}

func epReady(r bool) func(*discoveryv1.Endpoint) {
	return func(ep *discoveryv1.Endpoint) { ep.Conditions.Ready = &r }
}

func targetRef(kind, ns, name, uid string) func(*discoveryv1.Endpoint) {
	return func(ep *discoveryv1.Endpoint) {
		ep.TargetRef = &corev1.ObjectReference{Kind: kind, Namespace: ns, Name: name, UID: types.UID(uid)}
	}
}

func slicePort(name string, port int32, proto corev1.Protocol) sliceOpt {
	return func(es *discoveryv1.EndpointSlice) {
		es.Ports = append(es.Ports, discoveryv1.EndpointPort{Name: &name, Port: &port, Protocol: &proto})
	}
}

func kvMap(m map[string]string, kv []string) map[string]string {
	if len(kv)%2 != 0 {
		panic("odd key/value list")
	}
	if m == nil && len(kv) > 0 {
		m = map[string]string{}
	}
	for i := 0; i < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

func ip(s string) []byte { return netip.MustParseAddr(s).AsSlice() }

func netAddr(network, s string) *workloadpb.NetworkAddress {
	return &workloadpb.NetworkAddress{Network: network, Address: ip(s)}
}

func ports(pairs ...uint32) *workloadpb.PortList {
	pl := &workloadpb.PortList{}
	for i := 0; i < len(pairs); i += 2 {
		pl.Ports = append(pl.Ports, &workloadpb.Port{ServicePort: pairs[i], TargetPort: pairs[i+1]})
	}
	return pl
}

// wantPod is the Workload of pod(ns, name) with no options under testConfig,
// changed by edit.
func wantPod(ns, name string, edit func(*workloadpb.Workload)) *workloadpb.Workload {
	w := &workloadpb.Workload{
		Uid:               testCluster + "//Pod/" + ns + "/" + name,
		Name:              name,
		Namespace:         ns,
		Addresses:         [][]byte{ip("10.0.0.1")},
		Network:           "net1",
		ServiceAccount:    "default",
		CanonicalName:     name,
		CanonicalRevision: "latest",
		WorkloadType:      workloadpb.WorkloadType_POD,
		WorkloadName:      name,
		Status:            workloadpb.WorkloadStatus_HEALTHY,
		ClusterId:         testCluster,
	}
	if edit != nil {
		edit(w)
	}
	return w
}

func diffProto(t *testing.T, want, got any) {
	t.Helper()
	if d := cmp.Diff(want, got, protocmp.Transform()); d != "" {
		t.Errorf("mismatch (-want +got):\n%s", d)
	}
}

func diffWarnings(t *testing.T, want, got []Warning) {
	t.Helper()
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("warnings mismatch (-want +got):\n%s", d)
	}
}

func svcLabels(kv ...string) svcOpt {
	return func(s *corev1.Service) { s.Labels = kvMap(s.Labels, kv) }
}

func created(sec int64) svcOpt {
	return func(s *corev1.Service) { s.CreationTimestamp = metav1.Unix(sec, 0) }
}

type gwOpt func(*gatewayv1.Gateway)

// link is an istio-remote Gateway in istio-gateways linking cluster (also
// its network), trust domain <cluster>.local, gateway service account
// "eastwest", at the given addresses.
func link(name, cluster string, addrs []string, opts ...gwOpt) *gatewayv1.Gateway {
	gw := federation.RenderLink(federation.Link{
		Gateway: "istio-gateways/" + name, Namespace: "istio-gateways",
		Cluster: cluster, Network: cluster + "-net",
		TrustDomain: cluster + ".local", ServiceAccount: "eastwest",
		Addresses: addrs, XDSPort: 15012, HBONEPort: federation.DefaultHBONEPort,
	})
	for _, o := range opts {
		o(gw)
	}
	return gw
}

func gwLabels(kv ...string) gwOpt {
	return func(gw *gatewayv1.Gateway) { gw.Labels = kvMap(gw.Labels, kv) }
}

type importOpt func(*federationpb.FederatedService)

// imported is what cluster exports for ns/name: scope global, one Ready
// endpoint with identity <cluster>.local/ns/<ns>/sa/<name>, port 80/TCP ->
// 8080, unless opts say otherwise.
func imported(cluster, ns, name string, opts ...importOpt) *federation.ImportedService {
	s := &federationpb.FederatedService{
		Name:            name,
		Namespace:       ns,
		Ports:           []*federationpb.Port{{Port: 80, TargetPort: 8080, Protocol: "TCP", Name: "http"}},
		SubjectAltNames: []string{spiffeID(cluster+".local", ns, name)},
		Capacity:        1,
		Scope:           federationpb.Scope_GLOBAL,
	}
	for _, o := range opts {
		o(s)
	}
	return federation.NewImported(cluster, s)
}

func capacity(n uint32) importOpt {
	return func(s *federationpb.FederatedService) { s.Capacity = n }
}

func exportedPorts(ps ...*federationpb.Port) importOpt {
	return func(s *federationpb.FederatedService) { s.Ports = ps }
}

func exportedTD(v string) importOpt {
	return func(s *federationpb.FederatedService) { s.TrafficDistribution = v }
}

func exportedAt(sec int64) importOpt {
	return func(s *federationpb.FederatedService) { s.CreationTime = timestamppb.New(time.Unix(sec, 0)) }
}

func exportedSANs(sans ...string) importOpt {
	return func(s *federationpb.FederatedService) { s.SubjectAltNames = sans }
}

func exportedLocality(region, zone string) importOpt {
	return func(s *federationpb.FederatedService) {
		s.Locality = &federationpb.Locality{Region: region, Zone: zone}
	}
}

func fport(port, target uint32, protocol string) *federationpb.Port {
	return &federationpb.Port{Port: port, TargetPort: target, Protocol: protocol}
}
