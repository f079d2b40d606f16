package ambient

import (
	"net/netip"
)

// Every name and uid peerd derives lives here, so the formats ztunnel and the
// differential test depend on are reviewed in one place.

// podUID is a Pod workload's uid: "<cluster>//Pod/<namespace>/<name>".
func podUID(clusterID, namespace, name string) string {
	return clusterID + "//Pod/" + namespace + "/" + name
}

// endpointSliceUID is the uid of a workload made from one EndpointSlice
// endpoint: "<cluster>/discovery.k8s.io/EndpointSlice/<ns>/<slice>/<first address>".
func endpointSliceUID(clusterID, namespace, slice, address string) string {
	return clusterID + "/discovery.k8s.io/EndpointSlice/" + namespace + "/" + slice + "/" + address
}

// serviceHostname is a Kubernetes Service's hostname: "<name>.<ns>.svc.<suffix>".
func serviceHostname(name, namespace, domainSuffix string) string {
	return name + "." + namespace + ".svc." + domainSuffix
}

// namespacedHostname is a Service's resource name and its key in a
// workload's services map: "<namespace>/<hostname>".
func namespacedHostname(namespace, hostname string) string {
	return namespace + "/" + hostname
}

// networkIPKey is the on-demand lookup key of an address: "<network>/<ip>".
func networkIPKey(network string, ip netip.Addr) string {
	return network + "/" + ip.String()
}

// objectRef names the object a Warning is about.
func objectRef(kind, namespace, name string) ObjectRef {
	return ObjectRef{Kind: kind, Namespace: namespace, Name: name}
}
