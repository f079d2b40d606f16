package ambient

import (
	"cmp"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/peerd-mesh/peerd/internal/federation"
	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
	federationpb "github.com/peerd-mesh/peerd/proto/peerd/federation/v1"
)

// Defaults applied to an empty Config field.
const (
	DefaultTrustDomain     = "cluster.local"
	DefaultDomainSuffix    = "cluster.local"
	DefaultSystemNamespace = "istio-system"
	DefaultGlobalSuffix    = "mesh.internal"
)

// Default ranges of global-service VIPs: reserved for benchmarking (RFC 2544)
// and the class E block, so they never collide with routable addresses.
var (
	DefaultVIPv4Range = netip.MustParsePrefix("240.240.0.0/16")
	DefaultVIPv6Range = netip.MustParsePrefix("2001:2::/48")
)

// Config is the cluster-wide context of one Build.
type Config struct {
	// ClusterID is written to every workload's cluster_id and prefixes its uid.
	ClusterID string
	// Network overrides the local network (the --network flag). Empty means the
	// system namespace's topology.istio.io/network label; neither gives "".
	Network string
	// TrustDomain of this cluster; empty means DefaultTrustDomain. Workloads
	// carry "" for cluster.local, as istiod sends them.
	TrustDomain string
	// DomainSuffix of service hostnames; empty means DefaultDomainSuffix.
	DomainSuffix string
	// SystemNamespace holds the network label; empty means DefaultSystemNamespace.
	SystemNamespace string

	// GlobalSuffix of global service hostnames ("<name>.<ns>.<suffix>");
	// empty means DefaultGlobalSuffix.
	GlobalSuffix string
	// VIPv4Range and VIPv6Range are where global services get their VIPs;
	// a zero prefix means the default range.
	VIPv4Range, VIPv6Range netip.Prefix
	// Locality of the local cluster, sent with every export; empty fields
	// are unknown.
	Locality Locality
	// VIPs are earlier allocations by global hostname (what Model.VIPs
	// returned before a restart): a service that comes back gets its VIPs
	// back, and nobody else is given them meanwhile.
	VIPs map[string][]netip.Addr
}

// Locality is a cluster's region and zone.
type Locality struct {
	Region, Zone string
}

// Inputs are the Kubernetes objects of one cluster. The field list matches
// discovery.Objects exactly so that ambient.Inputs(objs) converts. Objects are
// read, never modified.
type Inputs struct {
	Namespaces     []*corev1.Namespace
	Nodes          []*corev1.Node
	Pods           []*corev1.Pod
	Services       []*corev1.Service
	EndpointSlices []*discoveryv1.EndpointSlice
	Gateways       []*gatewayv1.Gateway
	// ImportedServices are the services linked clusters export.
	ImportedServices []*federation.ImportedService
}

// ObjectRef names an input object. Kind is lower case ("service", "pod");
// Namespace is empty for cluster-scoped objects; Cluster is empty for the
// local cluster's objects and names the exporting cluster of an imported
// service.
type ObjectRef struct {
	Kind      string
	Cluster   string
	Namespace string
	Name      string
}

// String renders "<kind> <namespace>/<name>", or "<kind> <name>" for
// cluster-scoped objects, followed by " of cluster <cluster>" for a linked
// cluster's object.
func (r ObjectRef) String() string {
	s := r.Kind + " " + r.Name
	if r.Namespace != "" {
		s = r.Kind + " " + r.Namespace + "/" + r.Name
	}
	if r.Cluster != "" {
		s += " of cluster " + r.Cluster
	}
	return s
}

// Warning is a problem found in the inputs: the object, the path of the
// field inside it, and what is wrong. Callers turn it into logs, metrics and
// Kubernetes Events; the structured Object lets them find the object again.
type Warning struct {
	Object  ObjectRef
	Field   string
	Message string
}

// String renders the warning as "object: field: message".
func (w Warning) String() string {
	if w.Field == "" {
		return w.Object.String() + ": " + w.Message
	}
	return w.Object.String() + ": " + w.Field + ": " + w.Message
}

// Output is the result of one Build.
type Output struct {
	// Addresses sorted by ResourceName; names are unique.
	Addresses []*workloadpb.Address
	// Warnings sorted and de-duplicated.
	Warnings []Warning
	// Exports are the FederatedServices the cluster exports, sorted by
	// resource name.
	Exports []*federationpb.FederatedService
	// VIPs are the global services' VIP allocations.
	VIPs map[string][]netip.Addr
}

// Build maps the inputs to the Address resources istiod's ambient index would
// serve for them, plus warnings about what it had to ignore. It is a Model
// fed every input at once.
func Build(cfg Config, in Inputs) Output {
	m := NewModel(cfg)
	m.Apply(in.changes())
	return Output{Addresses: m.Addresses(), Warnings: m.Warnings(), Exports: m.Exports(), VIPs: m.VIPs()}
}

// ResourceName is the xDS resource name of an address: the workload uid, or
// "namespace/hostname" for a service.
func ResourceName(a *workloadpb.Address) string {
	switch t := a.GetType().(type) {
	case *workloadpb.Address_Workload:
		return t.Workload.GetUid()
	case *workloadpb.Address_Service:
		return namespacedHostname(t.Service.GetNamespace(), t.Service.GetHostname())
	}
	return ""
}

// EndpointOf lists the resource names of the services an address is an
// endpoint of (a workload's services map keys, sorted); nil for a service.
// An on-demand request for one of those services is answered with the
// service and all its endpoints, as istiod's lookup answers it.
func EndpointOf(a *workloadpb.Address) []string {
	services := a.GetWorkload().GetServices()
	if len(services) == 0 {
		return nil
	}
	out := make([]string, 0, len(services))
	for name := range services {
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}

// LookupKeys are the on-demand keys, besides ResourceName, under which
// ztunnel may ask for the address: "network/ip" for every workload address
// and every service VIP, in address order without duplicates.
func LookupKeys(a *workloadpb.Address) []string {
	var keys []string
	add := func(network string, raw []byte) {
		ip, ok := netip.AddrFromSlice(raw)
		if !ok {
			return
		}
		k := networkIPKey(network, ip)
		if !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
	}
	switch t := a.GetType().(type) {
	case *workloadpb.Address_Workload:
		for _, raw := range t.Workload.GetAddresses() {
			add(t.Workload.GetNetwork(), raw)
		}
	case *workloadpb.Address_Service:
		for _, na := range t.Service.GetAddresses() {
			add(na.GetNetwork(), na.GetAddress())
		}
	}
	return keys
}

func (c Config) withDefaults() Config {
	if c.TrustDomain == "" {
		c.TrustDomain = DefaultTrustDomain
	}
	if c.DomainSuffix == "" {
		c.DomainSuffix = DefaultDomainSuffix
	}
	if c.SystemNamespace == "" {
		c.SystemNamespace = DefaultSystemNamespace
	}
	if c.GlobalSuffix == "" {
		c.GlobalSuffix = DefaultGlobalSuffix
	}
	if !c.VIPv4Range.IsValid() {
		c.VIPv4Range = DefaultVIPv4Range
	}
	if !c.VIPv6Range.IsValid() {
		c.VIPv6Range = DefaultVIPv6Range
	}
	c.VIPv4Range, c.VIPv6Range = c.VIPv4Range.Masked(), c.VIPv6Range.Masked()
	return c
}

// workloadTrustDomain is the trust_domain field of workloads: istiod leaves it
// empty for cluster.local, which ztunnel reads as cluster.local.
func (c Config) workloadTrustDomain() string {
	return workloadTrustDomain(c.TrustDomain)
}

// workloadTrustDomain is td as a workload's trust_domain field: empty for
// cluster.local, which ztunnel assumes when the field is empty.
func workloadTrustDomain(td string) string {
	if td == DefaultTrustDomain {
		return ""
	}
	return td
}

// warnings collects Warnings during one Build.
type warnings struct{ list []Warning }

func (w *warnings) add(object ObjectRef, field, message string) {
	w.list = append(w.list, Warning{Object: object, Field: field, Message: message})
}

func (w *warnings) sorted() []Warning {
	if len(w.list) == 0 {
		return nil
	}
	out := slices.Clone(w.list)
	slices.SortFunc(out, func(a, b Warning) int {
		return cmp.Or(cmp.Compare(a.Object.String(), b.Object.String()), cmp.Compare(a.Field, b.Field), cmp.Compare(a.Message, b.Message))
	})
	return slices.Compact(out)
}
