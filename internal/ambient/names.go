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

// globalHostname is a global service's hostname: "<name>.<ns>.<global suffix>".
func globalHostname(name, namespace, globalSuffix string) string {
	return name + "." + namespace + "." + globalSuffix
}

// splitHorizonUID is the uid (and name) of the workload standing for the
// endpoints of one service in one linked cluster:
// "<local cluster>/peerd/SplitHorizon/<remote cluster>/<ns>/<name>". It
// names the remote cluster, not its network or gateway, so moving a link to
// another gateway address updates the workload instead of replacing it.
func splitHorizonUID(localCluster, remoteCluster, namespace, name string) string {
	return localCluster + "/peerd/SplitHorizon/" + remoteCluster + "/" + namespace + "/" + name
}

// networkGatewayUID is the uid (and name) of the workload standing for one
// address of a linked cluster's east-west gateway:
// "<local cluster>/peerd/NetworkGateway/<remote cluster>/<address>".
func networkGatewayUID(localCluster, remoteCluster, address string) string {
	return localCluster + "/peerd/NetworkGateway/" + remoteCluster + "/" + address
}

// gatewayServiceHostname is the hostname of the Service whose endpoints are
// a linked cluster's gateway workloads: "<cluster>.eastwest.<link ns>.<global
// suffix>". Its three labels before the suffix keep it apart from every
// global service ("<name>.<ns>.<suffix>").
func gatewayServiceHostname(remoteCluster, linkNamespace, globalSuffix string) string {
	return remoteCluster + ".eastwest." + linkNamespace + "." + globalSuffix
}

// spiffeID is a workload identity: "spiffe://<td>/ns/<ns>/sa/<sa>".
func spiffeID(trustDomain, namespace, serviceAccount string) string {
	return "spiffe://" + trustDomain + "/ns/" + namespace + "/sa/" + serviceAccount
}
