package ambient

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
)

// Labels and annotations istiod reads on Pods and Nodes.
const (
	annotationAmbientRedirection = "ambient.istio.io/redirection"
	ambientRedirectionEnabled    = "enabled"
	labelTunnel                  = "networking.istio.io/tunnel"
	tunnelHTTP                   = "http"
	labelWorkloadName            = "service.istio.io/workload-name"
	labelTopologySubzone         = "topology.istio.io/subzone"
)

// Canonical service labels, most specific first.
var (
	canonicalNameLabels     = []string{"service.istio.io/canonical-name", "app.kubernetes.io/name", "app"}
	canonicalRevisionLabels = []string{"service.istio.io/canonical-revision", "app.kubernetes.io/version", "version"}
)

// podInput is what podWorkload needs for one Pod.
type podInput struct {
	cfg Config
	idx *index
	pod *corev1.Pod
}

// podWorkload maps a Pod to its Workload, or nil when istiod publishes none:
// the pod has finished (Succeeded or Failed), has no IP yet, or has an IP
// that does not parse. Every Pod counts, whether or not its namespace is in
// the ambient mesh: istiod sends all of them, and only captured pods speak HBONE.
func podWorkload(in podInput, w *warnings) *workloadpb.Workload {
	p := in.pod
	if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		return nil
	}
	ips := p.Status.PodIPs
	if len(ips) == 0 && p.Status.PodIP != "" {
		ips = []corev1.PodIP{{IP: p.Status.PodIP}}
	}
	if len(ips) == 0 {
		return nil
	}
	addresses := make([][]byte, 0, len(ips))
	for i, pip := range ips {
		ip, err := netip.ParseAddr(pip.IP)
		if err != nil {
			w.add(objectRef("pod", p.Namespace, p.Name), fmt.Sprintf("status.podIPs[%d]", i),
				fmt.Sprintf("invalid IP %q: workload not published", pip.IP))
			return nil
		}
		addresses = append(addresses, ip.AsSlice())
	}

	// Kubernetes' endpoint readiness collapsed to one bit: a terminating pod
	// no longer takes new traffic even while its Ready condition holds.
	status := workloadpb.WorkloadStatus_HEALTHY
	if !podReady(p) || p.DeletionTimestamp != nil {
		status = workloadpb.WorkloadStatus_UNHEALTHY
	}

	wl := &workloadpb.Workload{
		Uid:            podUID(in.cfg.ClusterID, p.Namespace, p.Name),
		Name:           p.Name,
		Namespace:      p.Namespace,
		Addresses:      addresses,
		Network:        in.idx.network,
		TrustDomain:    in.cfg.workloadTrustDomain(),
		ServiceAccount: p.Spec.ServiceAccountName,
		Node:           p.Spec.NodeName,
		WorkloadType:   workloadpb.WorkloadType_POD,
		WorkloadName:   podWorkloadName(p),
		Services:       podServices(in),
		Status:         status,
		ClusterId:      in.cfg.ClusterID,
		Locality:       podLocality(in, w),
	}
	wl.CanonicalName, wl.CanonicalRevision = canonicalService(p.Labels, wl.WorkloadName)
	if p.Spec.HostNetwork {
		wl.NetworkMode = workloadpb.NetworkMode_HOST_NETWORK
	}
	wl.TunnelProtocol, wl.NativeTunnel = tunnelProtocol(p.Labels, p.Annotations)
	return wl
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// tunnelProtocol: HBONE once the CNI has captured the pod (the redirection
// annotation; the dataplane-mode labels alone are only a request), or when
// the workload terminates HBONE itself (tunnel label lists "http"), which is
// also a native tunnel.
func tunnelProtocol(labels, annotations map[string]string) (workloadpb.TunnelProtocol, bool) {
	if tl, ok := labels[labelTunnel]; ok && (tl == tunnelHTTP || containsItem(strings.Split(tl, ","), tunnelHTTP)) {
		return workloadpb.TunnelProtocol_HBONE, true
	}
	if annotations[annotationAmbientRedirection] == ambientRedirectionEnabled {
		return workloadpb.TunnelProtocol_HBONE, false
	}
	return workloadpb.TunnelProtocol_NONE, false
}

func containsItem(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// podLocality is the locality of the pod's node, nil when the node has no
// topology labels or is unknown.
func podLocality(in podInput, w *warnings) *workloadpb.Locality {
	name := in.pod.Spec.NodeName
	if name == "" {
		return nil
	}
	node := in.idx.nodes[name]
	if node == nil {
		w.add(objectRef("pod", in.pod.Namespace, in.pod.Name), "spec.nodeName",
			fmt.Sprintf("node %q not found: locality unknown", name))
		return nil
	}
	return nodeLocality(node)
}

func nodeLocality(n *corev1.Node) *workloadpb.Locality {
	region := n.Labels[corev1.LabelTopologyRegion]
	zone := n.Labels[corev1.LabelTopologyZone]
	subzone := n.Labels[labelTopologySubzone]
	if region == "" && zone == "" && subzone == "" {
		return nil
	}
	return &workloadpb.Locality{Region: region, Zone: zone, Subzone: subzone}
}

// A Job whose name ends in a CronJob's schedule timestamp belongs to that CronJob.
var cronJobName = regexp.MustCompile(`(.+)-\d{8,10}$`)

// podWorkloadName is the name of the pod's owning workload, as istiod guesses
// it: the service.istio.io/workload-name label wins; otherwise, for a pod
// with a generated name and a controller, the Deployment behind a ReplicaSet
// (Argo Rollout likewise), the DeploymentConfig behind a ReplicationController,
// the CronJob behind a Job, or else the controller itself; otherwise the pod.
func podWorkloadName(p *corev1.Pod) string {
	if wn, ok := p.Labels[labelWorkloadName]; ok {
		return wn
	}
	name := p.Name
	if p.GenerateName != "" {
		for _, ref := range p.OwnerReferences {
			if ref.Controller == nil || !*ref.Controller {
				continue
			}
			name = ref.Name
			switch ref.Kind {
			case "ReplicaSet":
				if h := p.Labels["pod-template-hash"]; h != "" && strings.HasSuffix(ref.Name, h) {
					name = strings.TrimSuffix(ref.Name, "-"+h)
				} else if h := p.Labels["rollouts-pod-template-hash"]; h != "" && strings.HasSuffix(ref.Name, h) {
					name = strings.TrimSuffix(ref.Name, "-"+h)
				}
			case "ReplicationController":
				if dc := p.Labels["deploymentconfig"]; dc != "" {
					name = dc
				}
			case "Job":
				if m := cronJobName.FindStringSubmatch(ref.Name); len(m) == 2 {
					name = m[1]
				}
			}
			break
		}
	}
	if name == "" {
		return p.Name
	}
	return name
}

// canonicalService is the canonical name (falling back to the workload name)
// and revision (falling back to "latest"). A present but empty label counts.
func canonicalService(labels map[string]string, workloadName string) (string, string) {
	name, ok := firstLabel(labels, canonicalNameLabels)
	if !ok {
		name = workloadName
	}
	revision, ok := firstLabel(labels, canonicalRevisionLabels)
	if !ok {
		revision = "latest"
	}
	return name, revision
}

func firstLabel(labels map[string]string, keys []string) (string, bool) {
	for _, k := range keys {
		if v, ok := labels[k]; ok {
			return v, true
		}
	}
	return "", false
}

// podServices is the pod's services map: every Service of its namespace whose
// non-empty selector matches its labels, plus every Service whose
// EndpointSlice names this pod as a targetRef (how selector-less Services get
// pod endpoints), keyed "namespace/hostname".
func podServices(in podInput) map[string]*workloadpb.PortList {
	p := in.pod
	var matched []*serviceInfo
	selected := map[string]bool{}
	for _, info := range in.idx.selectingServices(p) {
		matched = append(matched, info)
		selected[info.svc.Hostname] = true
	}
	for _, es := range in.idx.slicesOfPod(p) {
		hostname := serviceHostname(es.Labels[discoveryv1.LabelServiceName], es.Namespace, in.cfg.DomainSuffix)
		if selected[hostname] {
			continue
		}
		if info := in.idx.byKey[namespacedHostname(es.Namespace, hostname)]; info != nil {
			matched = append(matched, info)
		}
	}
	if len(matched) == 0 {
		return nil
	}
	out := make(map[string]*workloadpb.PortList, len(matched))
	for _, info := range matched {
		ports := podServicePorts(p, info)
		out[namespacedHostname(info.svc.Namespace, info.svc.Hostname)] = ports
		if key, ok := globalKey(in.cfg, info); ok {
			out[key] = clonePortList(ports)
		}
	}
	return out
}

// globalKey is the services-map key of the global service a global
// Service's endpoints also join: "<ns>/<name>.<ns>.<global suffix>".
func globalKey(cfg Config, info *serviceInfo) (string, bool) {
	if !info.scope.global() {
		return "", false
	}
	return namespacedHostname(info.svc.Namespace, globalHostname(info.svc.Name, info.svc.Namespace, cfg.GlobalSuffix)), true
}

// selects: a Service selector selects a pod when it is non-empty and every
// key/value is among the pod's labels.
func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if lv, ok := labels[k]; !ok || lv != v {
			return false
		}
	}
	return true
}

// podServicePorts resolves the Service's ports for this pod, in Service port
// order: a named targetPort becomes the number of the pod's TCP container port
// of that name, and a port the pod does not have is left out.
func podServicePorts(p *corev1.Pod, info *serviceInfo) *workloadpb.PortList {
	pl := &workloadpb.PortList{Ports: make([]*workloadpb.Port, 0, len(info.svc.Ports))}
	for _, port := range info.svc.Ports {
		target := port.TargetPort
		if named, ok := info.portNames[port.ServicePort]; ok && named.targetPortName != "" {
			n, found := containerPort(p, named.targetPortName)
			if !found {
				continue
			}
			target = uint32(n)
		}
		pl.Ports = append(pl.Ports, &workloadpb.Port{ServicePort: port.ServicePort, TargetPort: target})
	}
	return pl
}

// containerPort finds a named TCP port on the pod's containers, then on its
// native sidecars (init containers with restartPolicy Always).
func containerPort(p *corev1.Pod, name string) (int32, bool) {
	for _, c := range p.Spec.Containers {
		for _, port := range c.Ports {
			if port.Name == name && port.Protocol == corev1.ProtocolTCP {
				return port.ContainerPort, true
			}
		}
	}
	for _, c := range p.Spec.InitContainers {
		if c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways {
			continue
		}
		for _, port := range c.Ports {
			if port.Name == name && port.Protocol == corev1.ProtocolTCP {
				return port.ContainerPort, true
			}
		}
	}
	return 0, false
}

// endpointSliceInput is what endpointSliceWorkloads needs for one slice.
type endpointSliceInput struct {
	cfg   Config
	idx   *index
	slice *discoveryv1.EndpointSlice
}

// endpointSliceWorkloads makes a Workload of every endpoint of a Service's
// EndpointSlice that does not point at a Pod (Pods are published from the
// Pod, with far more detail). Such an endpoint is opaque: no identity, no
// locality, no canonical names, and host-network mode because its IP may be
// shared. Its health is the endpoint's Ready condition (unset means ready).
// Slices of unknown Services, FQDN slices and slices without the service-name
// label yield nothing.
func endpointSliceWorkloads(in endpointSliceInput, w *warnings) []*workloadpb.Workload {
	es := in.slice
	if !serviceEndpointSlice(es) {
		return nil
	}
	key := namespacedHostname(es.Namespace, serviceHostname(es.Labels[discoveryv1.LabelServiceName], es.Namespace, in.cfg.DomainSuffix))
	info := in.idx.byKey[key]
	if info == nil {
		return nil
	}
	ports := endpointSlicePorts(es, info)
	ref := objectRef("endpointslice", es.Namespace, es.Name)

	var out []*workloadpb.Workload
	seen := map[string]bool{}
	for i, ep := range es.Endpoints {
		if ep.TargetRef != nil && ep.TargetRef.Kind == kindPod {
			continue
		}
		if len(ep.Addresses) == 0 {
			continue
		}
		// Kubernetes puts one address per endpoint (each family has its own
		// slice); the first one names the workload.
		first := ep.Addresses[0]
		if seen[first] {
			w.add(ref, fmt.Sprintf("endpoints[%d].addresses[0]", i), fmt.Sprintf("address %q listed twice: later endpoint ignored", first))
			continue
		}
		seen[first] = true
		addresses, err := parseIPs(ep.Addresses)
		if err != nil {
			w.add(ref, fmt.Sprintf("endpoints[%d].addresses", i), fmt.Sprintf("%v: endpoint not published", err))
			continue
		}
		status := workloadpb.WorkloadStatus_HEALTHY
		if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
			status = workloadpb.WorkloadStatus_UNHEALTHY
		}
		services := map[string]*workloadpb.PortList{key: clonePorts(ports)}
		if gk, ok := globalKey(in.cfg, info); ok {
			services[gk] = clonePorts(ports)
		}
		out = append(out, &workloadpb.Workload{
			Uid:         endpointSliceUID(in.cfg.ClusterID, es.Namespace, es.Name, first),
			Name:        es.Name,
			Namespace:   es.Namespace,
			Addresses:   addresses,
			Network:     in.idx.network,
			TrustDomain: in.cfg.workloadTrustDomain(),
			Services:    services,
			Status:      status,
			ClusterId:   in.cfg.ClusterID,
			NetworkMode: workloadpb.NetworkMode_HOST_NETWORK,
		})
	}
	return out
}

// endpointSlicePorts joins the slice's TCP ports with the Service's ports by
// Service port name: the slice gives the target port, the Service the service
// port. Slice ports without name, number or TCP protocol are ignored.
func endpointSlicePorts(es *discoveryv1.EndpointSlice, info *serviceInfo) []*workloadpb.Port {
	out := make([]*workloadpb.Port, 0, len(es.Ports))
	for _, p := range es.Ports {
		if p.Name == nil || p.Port == nil || p.Protocol == nil || *p.Protocol != corev1.ProtocolTCP {
			continue
		}
		for _, sp := range info.svc.Ports {
			if info.portNames[sp.ServicePort].portName != *p.Name {
				continue
			}
			out = append(out, &workloadpb.Port{ServicePort: sp.ServicePort, TargetPort: uint32(*p.Port)})
			break
		}
	}
	return out
}

func clonePorts(ports []*workloadpb.Port) *workloadpb.PortList {
	pl := &workloadpb.PortList{Ports: make([]*workloadpb.Port, 0, len(ports))}
	for _, p := range ports {
		pl.Ports = append(pl.Ports, &workloadpb.Port{ServicePort: p.ServicePort, TargetPort: p.TargetPort})
	}
	return pl
}

func parseIPs(ips []string) ([][]byte, error) {
	out := make([][]byte, 0, len(ips))
	for _, s := range ips {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("invalid IP %q", s)
		}
		out = append(out, ip.AsSlice())
	}
	return out, nil
}
