package ambient

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"google.golang.org/protobuf/types/known/wrapperspb"
	corev1 "k8s.io/api/core/v1"

	"github.com/peerd-mesh/peerd/internal/federation"
	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
	federationpb "github.com/peerd-mesh/peerd/proto/peerd/federation/v1"
)

// KindGlobalService names a global service in warnings (it is an output,
// not an input object: Name and Namespace are the Service's).
const KindGlobalService = "globalservice"

// globalServiceInput is everything one global service is made of.
type globalServiceInput struct {
	cfg     Config
	network string
	// namespace and name of the Service in every cluster.
	namespace, name string
	// localSvc is the local Service, nil when there is none; localNS its
	// namespace (nil when unknown).
	localSvc *corev1.Service
	localNS  *corev1.Namespace
	// localExport is the local Service's export when it is global.
	localExport *federationpb.FederatedService
	// remotes are the exports of linked clusters, sorted by cluster.
	remotes []*federation.ImportedService
	vips    []netip.Addr
}

// globalService is the Service "<name>.<ns>.<global suffix>", following the
// design's state table: it exists when the local Service is global or a
// linked cluster exports the name; the caller checks that.
//
//   - addresses: the VIPs, on the local network (ztunnel resolves and
//     captures only VIPs of its own network).
//   - ports: the local Service's when it exists, global or not (the local
//     cluster owns the name); else the union of the exporters' (see
//     unionPorts).
//   - subject_alt_names: every identity ztunnel's inner HBONE hop must
//     accept: the local endpoints' when the local Service is global, and
//     each exporter's, in its own trust domain.
//   - load_balancing: the local Service's choice with PreferNetwork as the
//     default; a Service that exists only remotely takes the choice its
//     exporters agree on (see remoteDistribution).
func globalService(in globalServiceInput, w *warnings) *workloadpb.Service {
	var sans []string
	if in.localExport != nil {
		sans = append(sans, in.localExport.GetSubjectAltNames()...)
	}
	for _, r := range in.remotes {
		sans = append(sans, r.Service.GetSubjectAltNames()...)
	}
	slices.Sort(sans)
	sans = slices.Compact(sans)
	reportScopeConflicts(in, w)

	svc := &workloadpb.Service{
		Name:            in.name,
		Namespace:       in.namespace,
		Hostname:        globalHostname(in.name, in.namespace, in.cfg.GlobalSuffix),
		SubjectAltNames: sans,
		Canonical:       true,
	}
	var v4, v6 bool
	for _, vip := range in.vips {
		svc.Addresses = append(svc.Addresses, &workloadpb.NetworkAddress{Network: in.network, Address: vip.AsSlice()})
		v4, v6 = v4 || vip.Is4(), v6 || vip.Is6()
	}
	switch {
	case v4 && v6:
		svc.IpFamilies = workloadpb.IPFamilies_DUAL
	case v4:
		svc.IpFamilies = workloadpb.IPFamilies_IPV4_ONLY
	case v6:
		svc.IpFamilies = workloadpb.IPFamilies_IPV6_ONLY
	}

	if in.localSvc != nil {
		svc.Ports = servicePorts(in.localSvc)
		reportPortConflicts(in, w)
		var nsAnnotations map[string]string
		if in.localNS != nil {
			nsAnnotations = in.localNS.Annotations
		}
		// The local Service's own mapping already warned about what it asks for.
		var discard warnings
		svc.LoadBalancing = loadBalancing(loadBalancingInput{service: in.localSvc, namespaceAnnotations: nsAnnotations, fallback: distributionNetwork}, &discard)
	} else {
		svc.Ports = unionPorts(in, w)
		svc.LoadBalancing = distributionLoadBalancing(remoteDistribution(in, w))
	}
	return svc
}

// byAge orders exporters for conflict resolution: oldest creation_time
// first (an unknown time counts as newest), then cluster name, so every
// importer settles a conflict the same way.
func byAge(a, b *federation.ImportedService) int {
	ta, tb := a.Service.GetCreationTime(), b.Service.GetCreationTime()
	switch {
	case ta == nil && tb != nil:
		return 1
	case ta != nil && tb == nil:
		return -1
	case ta != nil && tb != nil:
		if c := cmp.Or(cmp.Compare(ta.GetSeconds(), tb.GetSeconds()), cmp.Compare(ta.GetNanos(), tb.GetNanos())); c != 0 {
			return c
		}
	}
	return cmp.Compare(a.Cluster, b.Cluster)
}

// samePort: two exporters agree on a port number when protocol and target
// agree (names and app protocols may differ between clusters). A target of
// 0 is a container port name, resolved per endpoint: it agrees with any.
func samePort(a, b *federationpb.Port) bool {
	return a.GetProtocol() == b.GetProtocol() &&
		(a.GetTargetPort() == b.GetTargetPort() || a.GetTargetPort() == 0 || b.GetTargetPort() == 0)
}

func describePort(p *federationpb.Port) string {
	return fmt.Sprintf("%s target %d", p.GetProtocol(), p.GetTargetPort())
}

// unionPorts merges the exporters' ports, sorted by number. A port number
// that two exporters describe differently (protocol or target) is a
// conflict: the oldest exporter's version wins (byAge) and the other is a
// warning on its imported service naming both clusters.
func unionPorts(in globalServiceInput, w *warnings) []*workloadpb.Port {
	ordered := slices.Clone(in.remotes)
	slices.SortFunc(ordered, byAge)
	type chosen struct {
		port    *federationpb.Port
		cluster string
	}
	byNumber := map[uint32]chosen{}
	for _, r := range ordered {
		for _, p := range r.Service.GetPorts() {
			first, ok := byNumber[p.GetPort()]
			if !ok {
				byNumber[p.GetPort()] = chosen{port: p, cluster: r.Cluster}
				continue
			}
			if !samePort(first.port, p) {
				w.add(importRef(r), "ports", fmt.Sprintf("port %d: cluster %s exports %s, cluster %s (older) exports %s: %s's is used",
					p.GetPort(), r.Cluster, describePort(p), first.cluster, describePort(first.port), first.cluster))
			}
		}
	}
	out := make([]*workloadpb.Port, 0, len(byNumber))
	for _, c := range byNumber {
		out = append(out, workloadPort(c.port))
	}
	slices.SortFunc(out, func(a, b *workloadpb.Port) int { return cmp.Compare(a.ServicePort, b.ServicePort) })
	return out
}

// reportPortConflicts warns, on the local Service, about every exporter
// that describes one of its port numbers differently: the local Service's
// ports are used, as the local cluster owns the name.
func reportPortConflicts(in globalServiceInput, w *warnings) {
	if len(in.remotes) == 0 {
		return
	}
	var discard warnings
	local := exportPorts(in.localSvc, &discard)
	for _, r := range in.remotes {
		for _, p := range r.Service.GetPorts() {
			i := slices.IndexFunc(local, func(l *federationpb.Port) bool { return l.Port == p.GetPort() })
			if i < 0 || samePort(local[i], p) {
				continue
			}
			w.add(objectRef(KindService, in.namespace, in.name), "spec.ports",
				fmt.Sprintf("port %d: cluster %s exports %s, cluster %s (local) has %s: the local one is used",
					p.GetPort(), r.Cluster, describePort(p), in.cfg.ClusterID, describePort(local[i])))
		}
	}
}

// reportScopeConflicts warns when the clusters that export a name disagree
// on its scope (one global, another global-only). For importers both mean
// global, so nothing is resolved: each cluster's own label still decides
// whether its plain svc name carries remote endpoints, which is worth an
// operator's look when the clusters were meant to be configured alike.
func reportScopeConflicts(in globalServiceInput, w *warnings) {
	var said []string
	scopes := map[federationpb.Scope]bool{}
	if in.localExport != nil {
		scopes[in.localExport.GetScope()] = true
		said = append(said, in.cfg.ClusterID+"="+scopeName(in.localExport.GetScope()))
	}
	for _, r := range in.remotes {
		scopes[r.Service.GetScope()] = true
		said = append(said, r.Cluster+"="+scopeName(r.Service.GetScope()))
	}
	if len(scopes) > 1 {
		w.add(ObjectRef{Kind: KindGlobalService, Namespace: in.namespace, Name: in.name}, "scope",
			fmt.Sprintf("clusters disagree (%s): all count as global here; only a cluster whose own Service says %s widens its plain name",
				strings.Join(said, ", "), ScopeGlobalOnly))
	}
}

// scopeName spells an exported scope as the label value does.
func scopeName(s federationpb.Scope) string {
	if s == federationpb.Scope_GLOBAL_ONLY {
		return ScopeGlobalOnly
	}
	return ScopeGlobal
}

// remoteDistribution is the traffic distribution of a global service that
// exists only remotely: the one every exporter asks for (none asked:
// PreferNetwork). Exporters that disagree get the default and a warning; an
// exporter's value nobody knows counts as none, with a warning.
func remoteDistribution(in globalServiceInput, w *warnings) trafficDistribution {
	var first string
	agree := true
	var said []string
	for i, r := range in.remotes {
		v := r.Service.GetTrafficDistribution()
		if v != "" {
			if _, canonical, ok := parseTrafficDistribution(v, true); ok {
				v = canonical
			} else {
				w.add(importRef(r), "traffic_distribution", fmt.Sprintf("unknown traffic distribution %q: counted as none", v))
				v = ""
			}
		}
		if i == 0 {
			first = v
		} else if v != first {
			agree = false
		}
		said = append(said, r.Cluster+"="+cmp.Or(v, `""`))
	}
	if !agree {
		w.add(ObjectRef{Kind: KindGlobalService, Namespace: in.namespace, Name: in.name}, "traffic_distribution",
			fmt.Sprintf("exporters disagree (%s): %s applies", strings.Join(said, ", "), TrafficDistributionPreferNetwork))
		return distributionNetwork
	}
	if first == "" {
		return distributionNetwork
	}
	d, _, _ := parseTrafficDistribution(first, false)
	return d
}

// splitHorizonInput is what one split-horizon workload is made of.
type splitHorizonInput struct {
	cfg  Config
	link federation.Link
	// gateway is networkGateway(cfg, link), built once per link; nil
	// builds it here.
	gateway  *workloadpb.GatewayAddress
	imported *federation.ImportedService
	// plainToo: the local Service (or its namespace) says global-only, so
	// the workload is also an endpoint of the plain svc.<domain-suffix> name.
	plainToo bool
}

// splitHorizonWorkload stands for the endpoints of one service in one
// linked cluster, as design.md "How remote endpoints reach ztunnel" says:
// no addresses, reached through the cluster's east-west gateway, weighted by
// the exporter's Ready endpoints.
//
// service_account is left empty on purpose: ztunnel checks the outer TLS
// hop against the gateway workload's identity and the inner one against the
// global service's subject_alt_names, never against this workload's own
// identity; any value here would be an identity nobody holds.
func splitHorizonWorkload(in splitHorizonInput) *workloadpb.Workload {
	s := in.imported.Service
	ports := &workloadpb.PortList{Ports: make([]*workloadpb.Port, 0, len(s.GetPorts()))}
	for _, p := range s.GetPorts() {
		ports.Ports = append(ports.Ports, workloadPort(p))
	}
	services := map[string]*workloadpb.PortList{
		namespacedHostname(s.GetNamespace(), globalHostname(s.GetName(), s.GetNamespace(), in.cfg.GlobalSuffix)): ports,
	}
	if in.plainToo {
		plain := namespacedHostname(s.GetNamespace(), serviceHostname(s.GetName(), s.GetNamespace(), in.cfg.DomainSuffix))
		services[plain] = clonePortList(ports)
	}
	status := workloadpb.WorkloadStatus_HEALTHY
	if s.GetCapacity() == 0 {
		status = workloadpb.WorkloadStatus_UNHEALTHY
	}
	gateway := in.gateway
	if gateway == nil {
		gateway = networkGateway(in.cfg, in.link)
	}
	uid := splitHorizonUID(in.cfg.ClusterID, in.imported.Cluster, s.GetNamespace(), s.GetName())
	return &workloadpb.Workload{
		Uid:            uid,
		Name:           uid,
		Namespace:      s.GetNamespace(),
		Network:        in.link.Network,
		TunnelProtocol: workloadpb.TunnelProtocol_HBONE,
		TrustDomain:    workloadTrustDomain(in.link.TrustDomain),
		NetworkGateway: gateway,
		WorkloadType:   workloadpb.WorkloadType_POD,
		Services:       services,
		Status:         status,
		ClusterId:      in.imported.Cluster,
		Locality:       remoteLocality(in.link, s.GetLocality()),
		Capacity:       wrapperspb.UInt32(s.GetCapacity()),
	}
}

// remoteLocality: the link Gateway's labels (the operator's word) win over
// what the exporter says about itself.
func remoteLocality(l federation.Link, exported *federationpb.Locality) *workloadpb.Locality {
	if l.Region != "" || l.Zone != "" {
		return &workloadpb.Locality{Region: l.Region, Zone: l.Zone}
	}
	if exported.GetRegion() != "" || exported.GetZone() != "" {
		return &workloadpb.Locality{Region: exported.GetRegion(), Zone: exported.GetZone()}
	}
	return nil
}

func clonePortList(pl *workloadpb.PortList) *workloadpb.PortList {
	out := &workloadpb.PortList{Ports: make([]*workloadpb.Port, 0, len(pl.Ports))}
	for _, p := range pl.Ports {
		out.Ports = append(out.Ports, &workloadpb.Port{ServicePort: p.ServicePort, TargetPort: p.TargetPort, AppProtocol: p.AppProtocol})
	}
	return out
}

// gatewayByHostname: a link whose gateway has several addresses, or a DNS
// name, is reached through a Service whose endpoints are its gateway
// workloads, so ztunnel spreads connections over all of them (upstream
// Istio uses the first address only).
func gatewayByHostname(l federation.Link) bool {
	addrs := uniqueAddresses(l)
	if len(addrs) != 1 {
		return true
	}
	_, err := netip.ParseAddr(addrs[0])
	return err != nil
}

// uniqueAddresses are the link's addresses in order, each once.
func uniqueAddresses(l federation.Link) []string {
	out := make([]string, 0, len(l.Addresses))
	for _, a := range l.Addresses {
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// networkGateway is how split-horizon workloads reach the linked cluster.
func networkGateway(cfg Config, l federation.Link) *workloadpb.GatewayAddress {
	if gatewayByHostname(l) {
		return &workloadpb.GatewayAddress{
			Destination: &workloadpb.GatewayAddress_Hostname{Hostname: &workloadpb.NamespacedHostname{
				Namespace: l.Namespace, Hostname: gatewayServiceHostname(l.Cluster, l.Namespace, cfg.GlobalSuffix),
			}},
			HboneMtlsPort: l.HBONEPort,
		}
	}
	return &workloadpb.GatewayAddress{
		Destination: &workloadpb.GatewayAddress_Address{Address: &workloadpb.NetworkAddress{
			Network: l.Network, Address: netip.MustParseAddr(l.Addresses[0]).AsSlice(),
		}},
		HboneMtlsPort: l.HBONEPort,
	}
}

// linkGatewayAddresses are what ztunnel needs to know about a linked
// cluster's east-west gateway: one workload per address, on the remote
// network, with the gateway's identity (its service account in the link
// Gateway's namespace, the remote trust domain: what the outer TLS hop
// checks); and, when the gateway is reached by hostname, the Service whose
// endpoints they are (port: the HBONE port). Sorted by resource name.
func linkGatewayAddresses(cfg Config, l federation.Link) []*workloadpb.Address {
	var services map[string]*workloadpb.PortList
	var out []*workloadpb.Address
	if gatewayByHostname(l) {
		hostname := gatewayServiceHostname(l.Cluster, l.Namespace, cfg.GlobalSuffix)
		port := &workloadpb.Port{ServicePort: l.HBONEPort, TargetPort: l.HBONEPort}
		services = map[string]*workloadpb.PortList{namespacedHostname(l.Namespace, hostname): {Ports: []*workloadpb.Port{port}}}
		out = append(out, &workloadpb.Address{Type: &workloadpb.Address_Service{Service: &workloadpb.Service{
			Name:      l.Cluster + ".eastwest",
			Namespace: l.Namespace,
			Hostname:  hostname,
			Ports:     []*workloadpb.Port{{ServicePort: l.HBONEPort, TargetPort: l.HBONEPort}},
		}}})
	}
	for _, a := range uniqueAddresses(l) {
		uid := networkGatewayUID(cfg.ClusterID, l.Cluster, a)
		wl := &workloadpb.Workload{
			Uid:            uid,
			Name:           uid,
			Namespace:      l.Namespace,
			Network:        l.Network,
			TunnelProtocol: workloadpb.TunnelProtocol_HBONE,
			TrustDomain:    workloadTrustDomain(l.TrustDomain),
			ServiceAccount: l.ServiceAccount,
			ClusterId:      l.Cluster,
			Locality:       remoteLocality(l, nil),
		}
		if ip, err := netip.ParseAddr(a); err == nil {
			wl.Addresses = [][]byte{ip.AsSlice()}
		} else {
			wl.Hostname = a
		}
		if services != nil {
			wl.Services = map[string]*workloadpb.PortList{}
			for k, v := range services {
				wl.Services[k] = clonePortList(v)
			}
		}
		out = append(out, &workloadpb.Address{Type: &workloadpb.Address_Workload{Workload: wl}})
	}
	slices.SortFunc(out, func(a, b *workloadpb.Address) int { return cmp.Compare(ResourceName(a), ResourceName(b)) })
	return out
}
