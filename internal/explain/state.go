package explain

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
)

// ErrUnknownService: the query names no service this client can reach by
// that name (unknown key, a VIP nobody holds, a hostname that does not
// resolve on the client's network).
var ErrUnknownService = errors.New("unknown service")

// ErrNoHealthyUpstream: the service exists but ztunnel would pick nothing
// (its own words for this failure).
var ErrNoHealthyUpstream = errors.New("no healthy upstream")

// defaultCluster is what ztunnel assumes for a workload without cluster_id.
const defaultCluster = "Kubernetes"

// State is what one ztunnel holds of the Address type.
type State struct {
	// Services by resource name, "namespace/hostname".
	Services map[string]*workloadpb.Service
	// Workloads by uid (their resource name).
	Workloads map[string]*workloadpb.Workload
}

// NewState files Address resources the way ztunnel does: services by
// namespace/hostname, workloads by uid. A later resource with the same
// name replaces an earlier one.
func NewState(addrs []*workloadpb.Address) State {
	s := State{Services: map[string]*workloadpb.Service{}, Workloads: map[string]*workloadpb.Workload{}}
	for _, a := range addrs {
		if svc := a.GetService(); svc != nil {
			s.Services[svc.GetNamespace()+"/"+svc.GetHostname()] = svc
		} else if w := a.GetWorkload(); w != nil {
			s.Workloads[w.GetUid()] = w
		}
	}
	return s
}

// Locality is a region/zone/subzone triple, as ztunnel compares it.
type Locality struct {
	Region  string `json:"region,omitempty"`
	Zone    string `json:"zone,omitempty"`
	Subzone string `json:"subzone,omitempty"`
}

// String renders region/zone/subzone without empty trailing parts.
func (l Locality) String() string {
	parts := []string{l.Region, l.Zone, l.Subzone}
	for len(parts) > 0 && parts[len(parts)-1] == "" {
		parts = parts[:len(parts)-1]
	}
	return strings.Join(parts, "/")
}

func localityOf(w *workloadpb.Workload) Locality {
	l := w.GetLocality()
	return Locality{Region: l.GetRegion(), Zone: l.GetZone(), Subzone: l.GetSubzone()}
}

// Client is the workload that sends the traffic. ztunnel ranks endpoints
// against its source workload's network, locality, node and cluster, and
// looks VIPs up on its own network.
type Client struct {
	Network  string   `json:"network"`
	Locality Locality `json:"locality"`
	Node     string   `json:"node,omitempty"`
	// Cluster is the client's cluster_id; empty means "Kubernetes", as
	// ztunnel defaults it.
	Cluster string `json:"cluster,omitempty"`
	// Namespace, when set, is preferred (and required by NAMESPACE
	// visibility) when several services share a VIP or hostname, as
	// ztunnel does with its source workload's namespace. Empty: no
	// preference and no visibility filter.
	Namespace string `json:"namespace,omitempty"`
}

func (c Client) cluster() string { return clusterOr(c.Cluster) }

func clusterOr(id string) string {
	if id == "" {
		return defaultCluster
	}
	return id
}

// String describes the client for a header line.
func (c Client) String() string {
	parts := []string{"network " + quoteEmpty(c.Network), "cluster " + c.cluster()}
	if c.Node != "" {
		parts = append(parts, "node "+c.Node)
	}
	parts = append(parts, "locality "+quoteEmpty(c.Locality.String()))
	if c.Namespace != "" {
		parts = append(parts, "namespace "+c.Namespace)
	}
	return strings.Join(parts, ", ")
}

func quoteEmpty(s string) string {
	if s == "" {
		return `""`
	}
	return s
}

// ClientOnNode describes a client on the given node from the served
// workloads that run there (workloads with an address and that node). Pods
// of one node share its locality, so they must agree; if they do not, the
// error names two that differ, and the caller should say which to use.
func (s State) ClientOnNode(node string) (Client, error) {
	if node == "" {
		return Client{}, errors.New("node name is empty")
	}
	var (
		found Client
		from  string
	)
	for _, uid := range sortedKeys(s.Workloads) {
		w := s.Workloads[uid]
		if w.GetNode() != node || !hasAddress(w) {
			continue
		}
		c := Client{Network: w.GetNetwork(), Locality: localityOf(w), Node: node, Cluster: clusterOr(w.GetClusterId())}
		if from == "" {
			found, from = c, uid
			continue
		}
		if c != found {
			return Client{}, fmt.Errorf("node %q: workloads disagree: %s has %s, %s has %s", node, from, found, uid, c)
		}
	}
	if from == "" {
		return Client{}, fmt.Errorf("node %q: no served workload with an address runs on it", node)
	}
	return found, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func hasAddress(w *workloadpb.Workload) bool {
	return len(w.GetAddresses()) > 0 || w.GetHostname() != ""
}

// index is what one Explain call looks things up in; built in one pass.
type index struct {
	State
	endpoints map[string][]*workloadpb.Workload // service key -> workloads, by uid
	byAddress map[string]*workloadpb.Workload   // "network/ip" -> workload
	services  []string                          // sorted service keys
	gateways  map[string]*Gateway               // resolved, by gatewayAddress
}

func newIndex(s State) *index {
	ix := &index{
		State:     s,
		endpoints: map[string][]*workloadpb.Workload{},
		byAddress: map[string]*workloadpb.Workload{},
		services:  sortedKeys(s.Services),
		gateways:  map[string]*Gateway{},
	}
	for _, uid := range sortedKeys(s.Workloads) {
		w := s.Workloads[uid]
		for key := range w.GetServices() {
			ix.endpoints[key] = append(ix.endpoints[key], w)
		}
		for _, b := range w.GetAddresses() {
			if ip, ok := netip.AddrFromSlice(b); ok {
				ix.byAddress[addrKey(w.GetNetwork(), ip)] = w
			}
		}
	}
	return ix
}

func addrKey(network string, ip netip.Addr) string { return network + "/" + ip.String() }

// resolve finds the service a query names, as ztunnel would reach it, and
// says how it was found.
func (ix *index) resolve(query string, c Client) (string, *workloadpb.Service, string, error) {
	if before, after, ok := strings.Cut(query, "/"); ok {
		if ip, err := netip.ParseAddr(after); err == nil {
			if before != c.Network {
				return "", nil, "", fmt.Errorf("VIP %s: %w: a client on network %s looks VIPs up on its own network only (try %s)",
					query, ErrUnknownService, quoteEmpty(c.Network), addrKey(c.Network, ip))
			}
			return ix.byVIP(ip, c)
		}
		if svc := ix.Services[query]; svc != nil {
			return query, svc, "namespace/hostname", nil
		}
		return "", nil, "", fmt.Errorf("service %s: %w", query, ErrUnknownService)
	}
	if ip, err := netip.ParseAddr(query); err == nil {
		return ix.byVIP(ip, c)
	}
	return ix.byHostname(query, c)
}

func visibleTo(svc *workloadpb.Service, c Client) bool {
	return c.Namespace == "" || svc.GetVisibility() != workloadpb.Service_NAMESPACE || svc.GetNamespace() == c.Namespace
}

// bestMatch picks among services sharing a VIP or hostname as ztunnel's
// ServiceMatch does: the client's namespace, else the last canonical one,
// else the first. ztunnel's order is the order it received them; here it
// is namespace/hostname.
func bestMatch(keys []string, svcs map[string]*workloadpb.Service, c Client) string {
	best := ""
	for _, k := range keys {
		s := svcs[k]
		switch {
		case c.Namespace != "" && s.GetNamespace() == c.Namespace:
			return k
		case s.GetCanonical(), best == "":
			best = k
		}
	}
	return best
}

// exactVIP reports whether a service address is a single IP (not a CIDR).
func exactVIP(na *workloadpb.NetworkAddress, ip netip.Addr) bool {
	return na.Length == nil || int(na.GetLength()) == ip.BitLen()
}

// byVIP is ztunnel's get_best_by_vip on the client's network: exact VIPs
// first, then the CIDR VIPs that contain the address (client namespace,
// then longest prefix, then canonical).
func (ix *index) byVIP(ip netip.Addr, c Client) (string, *workloadpb.Service, string, error) {
	want := addrKey(c.Network, ip)
	var exact []string
	bestCIDR, bestRank := "", [3]int{-1}
	for _, k := range ix.services {
		svc := ix.Services[k]
		if !visibleTo(svc, c) {
			continue
		}
		for _, na := range svc.GetAddresses() {
			a, ok := netip.AddrFromSlice(na.GetAddress())
			if !ok || na.GetNetwork() != c.Network {
				continue
			}
			if exactVIP(na, a) {
				if a == ip {
					exact = append(exact, k)
				}
				continue
			}
			p, err := a.Prefix(int(na.GetLength()))
			if err != nil || !p.Contains(ip) {
				continue
			}
			rank := [3]int{b2i(c.Namespace != "" && svc.GetNamespace() == c.Namespace), p.Bits(), b2i(svc.GetCanonical())}
			if slices.Compare(rank[:], bestRank[:]) > 0 {
				bestCIDR, bestRank = k, rank
			}
		}
	}
	if k := bestMatch(exact, ix.Services, c); k != "" {
		return k, ix.Services[k], "VIP " + want, nil
	}
	if bestCIDR != "" {
		return bestCIDR, ix.Services[bestCIDR], "VIP " + want + " (in a CIDR VIP)", nil
	}
	if w := ix.byAddress[want]; w != nil {
		return "", nil, "", fmt.Errorf("VIP %s: %w: it is the address of workload %s (traffic goes to it directly, nothing is load-balanced)", want, ErrUnknownService, w.GetUid())
	}
	return "", nil, "", fmt.Errorf("VIP %s: %w", want, ErrUnknownService)
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// byHostname resolves a bare hostname as ztunnel's DNS proxy answers it
// (services with that hostname and a VIP, best match for the client), then
// connects to the first of that service's VIPs on the client's network.
// Only the exact hostname is tried, not the short aliases DNS search
// domains give.
func (ix *index) byHostname(host string, c Client) (string, *workloadpb.Service, string, error) {
	var withVIP, headless []string
	for _, k := range ix.services {
		svc := ix.Services[k]
		if svc.GetHostname() != host || !visibleTo(svc, c) {
			continue
		}
		if len(exactVIPs(svc)) == 0 {
			headless = append(headless, k)
			continue
		}
		withVIP = append(withVIP, k)
	}
	k := bestMatch(withVIP, ix.Services, c)
	if k == "" {
		if len(headless) > 0 {
			return "", nil, "", fmt.Errorf("hostname %s: %w: service %s has no VIP (DNS answers with workload addresses, nothing is load-balanced)", host, ErrUnknownService, headless[0])
		}
		return "", nil, "", fmt.Errorf("hostname %s: %w", host, ErrUnknownService)
	}
	var onNetwork []string
	for _, na := range exactVIPs(ix.Services[k]) {
		if na.GetNetwork() == c.Network {
			ip, _ := netip.AddrFromSlice(na.GetAddress())
			onNetwork = append(onNetwork, ip.String())
		}
	}
	if len(onNetwork) == 0 {
		return "", nil, "", fmt.Errorf("hostname %s: %w: service %s has no VIP on network %s, so ztunnel's DNS proxy returns no address for it",
			host, ErrUnknownService, k, quoteEmpty(c.Network))
	}
	ip := netip.MustParseAddr(onNetwork[0])
	key, svc, how, err := ix.byVIP(ip, c)
	if err != nil {
		return "", nil, "", fmt.Errorf("hostname %s: %w", host, err)
	}
	return key, svc, "hostname " + host + " -> " + how, nil
}

func exactVIPs(svc *workloadpb.Service) []*workloadpb.NetworkAddress {
	var out []*workloadpb.NetworkAddress
	for _, na := range svc.GetAddresses() {
		if a, ok := netip.AddrFromSlice(na.GetAddress()); ok && exactVIP(na, a) {
			out = append(out, na)
		}
	}
	return out
}
