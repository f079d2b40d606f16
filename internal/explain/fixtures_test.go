package explain

import (
	"fmt"
	"net/netip"
	"strings"

	"google.golang.org/protobuf/types/known/wrapperspb"

	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
)

// The fixtures: one service, "apps/echo.apps.svc.cluster.local", with VIP
// 10.96.0.10 on net1, and a client on net1 in us-east/us-east-1a/rack-1 on
// node-a of cluster c1 unless a row says otherwise.
const (
	echoKey  = "apps/echo.apps.svc.cluster.local"
	echoHost = "echo.apps.svc.cluster.local"
)

var client = Client{
	Network:  "net1",
	Locality: Locality{Region: "us-east", Zone: "us-east-1a", Subzone: "rack-1"},
	Node:     "node-a",
	Cluster:  "c1",
}

func ipb(s string) []byte { return netip.MustParseAddr(s).AsSlice() }

type wlOpt func(*workloadpb.Workload)

// ep is a HEALTHY endpoint of echo (service port 80 -> 8080) with an
// address, on net1 in the client's locality and node, cluster c1.
func ep(uid string, opts ...wlOpt) *workloadpb.Workload {
	w := &workloadpb.Workload{
		Uid: uid, Name: uid, Namespace: "apps",
		Addresses: [][]byte{ipb("10.244.0.1")},
		Network:   "net1", Node: "node-a", ClusterId: "c1",
		Locality: &workloadpb.Locality{Region: "us-east", Zone: "us-east-1a", Subzone: "rack-1"},
		Services: map[string]*workloadpb.PortList{echoKey: {Ports: []*workloadpb.Port{{ServicePort: 80, TargetPort: 8080}}}},
	}
	for _, o := range opts {
		o(w)
	}
	return w
}

func network(n string) wlOpt { return func(w *workloadpb.Workload) { w.Network = n } }
func node(n string) wlOpt    { return func(w *workloadpb.Workload) { w.Node = n } }
func cluster(c string) wlOpt { return func(w *workloadpb.Workload) { w.ClusterId = c } }
func addr(ip string) wlOpt   { return func(w *workloadpb.Workload) { w.Addresses = [][]byte{ipb(ip)} } }

func locality(region, zone, subzone string) wlOpt {
	return func(w *workloadpb.Workload) {
		w.Locality = &workloadpb.Locality{Region: region, Zone: zone, Subzone: subzone}
	}
}

func unhealthy(w *workloadpb.Workload) { w.Status = workloadpb.WorkloadStatus_UNHEALTHY }
func noAddress(w *workloadpb.Workload) { w.Addresses = nil }

func capacity(n uint32) wlOpt {
	return func(w *workloadpb.Workload) { w.Capacity = wrapperspb.UInt32(n) }
}

// remote is a split-horizon endpoint: no address, on net2 in cluster c2,
// behind the e/w gateway 192.0.2.10:15008.
func remote(w *workloadpb.Workload) {
	w.Addresses, w.Node, w.Network, w.ClusterId = nil, "", "net2", "c2"
	w.NetworkGateway = gwAddress("net2", "192.0.2.10", 15008)
}

func gwAddress(network, ip string, port uint32) *workloadpb.GatewayAddress {
	return &workloadpb.GatewayAddress{
		Destination:   &workloadpb.GatewayAddress_Address{Address: &workloadpb.NetworkAddress{Network: network, Address: ipb(ip)}},
		HboneMtlsPort: port,
	}
}

func gwHostname(ns, host string, port uint32) *workloadpb.GatewayAddress {
	return &workloadpb.GatewayAddress{
		Destination:   &workloadpb.GatewayAddress_Hostname{Hostname: &workloadpb.NamespacedHostname{Namespace: ns, Hostname: host}},
		HboneMtlsPort: port,
	}
}

func via(gw *workloadpb.GatewayAddress) wlOpt {
	return func(w *workloadpb.Workload) { w.NetworkGateway = gw }
}

type svcOpt func(*workloadpb.Service)

// echo is the service, VIP net1/10.96.0.10, port 80 -> 8080.
func echo(opts ...svcOpt) *workloadpb.Service {
	return service("apps", echoHost, append([]svcOpt{vips("net1/10.96.0.10")}, opts...)...)
}

func service(ns, host string, opts ...svcOpt) *workloadpb.Service {
	s := &workloadpb.Service{Name: strings.Split(host, ".")[0], Namespace: ns, Hostname: host,
		Ports: []*workloadpb.Port{{ServicePort: 80, TargetPort: 8080}}}
	for _, o := range opts {
		o(s)
	}
	return s
}

// vips sets "network/ip" or "network/ip/len" addresses.
func vips(keys ...string) svcOpt {
	return func(s *workloadpb.Service) {
		s.Addresses = nil
		for _, k := range keys {
			parts := strings.Split(k, "/")
			na := &workloadpb.NetworkAddress{Network: parts[0], Address: ipb(parts[1])}
			if len(parts) == 3 {
				var n uint32
				fmt.Sscan(parts[2], &n)
				na.Length = &n
			}
			s.Addresses = append(s.Addresses, na)
		}
	}
}

func lb(mode workloadpb.LoadBalancing_Mode, scopes ...workloadpb.LoadBalancing_Scope) svcOpt {
	return func(s *workloadpb.Service) {
		if s.LoadBalancing == nil {
			s.LoadBalancing = &workloadpb.LoadBalancing{}
		}
		s.LoadBalancing.Mode, s.LoadBalancing.RoutingPreference = mode, scopes
	}
}

func allowAll(s *workloadpb.Service) {
	if s.LoadBalancing == nil {
		s.LoadBalancing = &workloadpb.LoadBalancing{}
	}
	s.LoadBalancing.HealthPolicy = workloadpb.LoadBalancing_ALLOW_ALL
}

func ports(p ...*workloadpb.Port) svcOpt { return func(s *workloadpb.Service) { s.Ports = p } }

const (
	NETWORK = workloadpb.LoadBalancing_NETWORK
	REGION  = workloadpb.LoadBalancing_REGION
	ZONE    = workloadpb.LoadBalancing_ZONE
	SUBZONE = workloadpb.LoadBalancing_SUBZONE
	NODE    = workloadpb.LoadBalancing_NODE
	CLUSTER = workloadpb.LoadBalancing_CLUSTER

	FAILOVER    = workloadpb.LoadBalancing_FAILOVER
	STRICT      = workloadpb.LoadBalancing_STRICT
	PASSTHROUGH = workloadpb.LoadBalancing_PASSTHROUGH
	UNSPECIFIED = workloadpb.LoadBalancing_UNSPECIFIED_MODE
)

// state files services and workloads as Address resources would be.
func state(svcs []*workloadpb.Service, wls ...*workloadpb.Workload) State {
	var addrs []*workloadpb.Address
	for _, s := range svcs {
		addrs = append(addrs, &workloadpb.Address{Type: &workloadpb.Address_Service{Service: s}})
	}
	for _, w := range wls {
		addrs = append(addrs, &workloadpb.Address{Type: &workloadpb.Address_Workload{Workload: w}})
	}
	return NewState(addrs)
}

// summarize renders each endpoint as "uid outcome rank probability", the
// shape the tables below compare.
func summarize(r Result) []string {
	var out []string
	for _, e := range r.Endpoints {
		out = append(out, fmt.Sprintf("%s %s %d %.2f", e.UID, e.Outcome, e.Rank, e.Probability))
	}
	return out
}
