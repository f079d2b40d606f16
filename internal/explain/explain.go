package explain

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
)

// Query is one question: where does this client's traffic to this service go?
type Query struct {
	// Service is "namespace/hostname", a VIP "network/ip" (or a bare IP on
	// the client's network), or a bare hostname, resolved as ztunnel's DNS
	// proxy would: only VIPs on the client's network count.
	Service string
	Client  Client
	// Port, when not 0, applies ztunnel's per-port checks: the service must
	// have this port, and an endpoint must map it when the service's target
	// port is named (0). 0 explains the service as a whole.
	Port uint32
}

// Outcome says what happens to an endpoint, for code; Reason says it for
// people.
type Outcome string

const (
	// Picked: in the top group with capacity > 0; Probability is its share.
	Picked Outcome = "picked"
	// ZeroCapacity: in the top group, but capacity 0 is never picked.
	ZeroCapacity Outcome = "capacity-0"
	// Outranked: usable, but another endpoint ranks higher.
	Outranked Outcome = "outranked"
	// DroppedByStrict: STRICT mode and not every scope matches.
	DroppedByStrict Outcome = "dropped-by-strict"
	// Unhealthy: not HEALTHY, and the health policy is not ALLOW_ALL.
	Unhealthy Outcome = "unhealthy"
	// Unreachable: no address, and no network_gateway this client can use.
	Unreachable Outcome = "unreachable"
	// NoPort: the service's target port is named and this endpoint does
	// not map the queried port.
	NoPort Outcome = "no-port"
	// Passthrough: the service is PASSTHROUGH; ztunnel sends the traffic
	// to the original destination and picks no endpoint.
	Passthrough Outcome = "passthrough"
)

// Endpoint is one workload of the service and what ztunnel does with it.
type Endpoint struct {
	UID       string   `json:"uid"`
	Name      string   `json:"name,omitempty"`
	Namespace string   `json:"namespace,omitempty"`
	Cluster   string   `json:"cluster"`
	Network   string   `json:"network"`
	Locality  Locality `json:"locality"`
	Node      string   `json:"node,omitempty"`
	Capacity  uint32   `json:"capacity"`
	Health    string   `json:"health"`
	// Rank is the routing-preference rank (0 when nothing ranks); -1 when
	// the endpoint was excluded before ranking.
	Rank    int     `json:"rank"`
	Outcome Outcome `json:"outcome"`
	// Chosen: in the top rank group, the set ztunnel picks from.
	Chosen bool `json:"chosen"`
	// Probability of being picked: capacity share within the top group.
	Probability float64 `json:"probability"`
	Reason      string  `json:"reason"`
	// Gateway is how a workload on another network is reached.
	Gateway *Gateway `json:"gateway,omitempty"`
}

// Gateway is an endpoint's network_gateway, resolved as ztunnel resolves it:
// an address is a Service VIP or a Workload at that network/ip; a hostname
// is a Service (load-balanced like any other) or a Workload with that
// hostname and namespace.
type Gateway struct {
	// Address is "network/ip:port" or "namespace/hostname:port".
	Address string `json:"address"`
	// Workload is the gateway workload's uid, when it is one.
	Workload string `json:"workload,omitempty"`
	// Service is the gateway service's key, when it is one; Via explains
	// how ztunnel picks among its endpoints.
	Service string  `json:"service,omitempty"`
	Via     *Result `json:"via,omitempty"`
	// Problem is why connections through this gateway fail; empty if they
	// can succeed.
	Problem string `json:"problem,omitempty"`

	short string // ip:port or hostname:port, for reasons
}

// Result is the whole answer for one query.
type Result struct {
	Query string `json:"query"`
	// Service is the resolved service's key, "namespace/hostname".
	Service string `json:"service"`
	// Lookup says how the query was resolved to the service.
	Lookup string `json:"lookup"`
	Client Client `json:"client"`
	Port   uint32 `json:"port,omitempty"`
	// Mode is the load_balancing mode; empty when the service has none.
	Mode              string   `json:"mode,omitempty"`
	RoutingPreference []string `json:"routingPreference,omitempty"`
	HealthPolicy      string   `json:"healthPolicy"`
	// Waypoint, when set, is where ztunnel really sends this traffic: the
	// service's waypoint, which then picks the endpoint itself.
	Waypoint  string     `json:"waypoint,omitempty"`
	Endpoints []Endpoint `json:"endpoints"`
}

// Policy describes the ranking in one line.
func (r Result) Policy() string {
	prefs := "none"
	if len(r.RoutingPreference) > 0 {
		prefs = strings.Join(r.RoutingPreference, ", ")
	}
	var mode string
	switch r.Mode {
	case "":
		mode = "none (no load_balancing: every usable endpoint is equal)"
	case workloadpb.LoadBalancing_UNSPECIFIED_MODE.String():
		mode = r.Mode + " (not ranked: every usable endpoint is equal)"
	case workloadpb.LoadBalancing_PASSTHROUGH.String():
		mode = r.Mode + " (traffic goes to the original destination; no endpoint is picked)"
	default:
		mode = r.Mode
	}
	return fmt.Sprintf("routing preference: %s; mode: %s; health policy: %s", prefs, mode, r.HealthPolicy)
}

// ByCluster sums the probability of being picked per endpoint cluster.
func (r Result) ByCluster() map[string]float64 {
	out := map[string]float64{}
	for _, e := range r.Endpoints {
		if e.Probability > 0 {
			out[e.Cluster] += e.Probability
		}
	}
	return out
}

// Endpoint returns the endpoint with this uid.
func (r Result) Endpoint(uid string) (Endpoint, bool) {
	for _, e := range r.Endpoints {
		if e.UID == uid {
			return e, true
		}
	}
	return Endpoint{}, false
}

// Explain computes what ztunnel's load_balance would do for q. On
// ErrNoHealthyUpstream the Result is still complete: every endpoint with
// the reason it is not picked. Other errors (ErrUnknownService, a service
// ztunnel would reject) come with an empty Result.
func Explain(s State, q Query) (Result, error) {
	return explain(newIndex(s), q, true)
}

// explain runs one query; resolveGateways is false for a gateway service
// (ztunnel connects to a gateway's endpoints directly).
func explain(ix *index, q Query, resolveGateways bool) (Result, error) {
	key, svc, lookup, err := ix.resolve(q.Service, q.Client)
	if err != nil {
		return Result{}, err
	}
	lb := svc.GetLoadBalancing()
	r := Result{
		Query:        q.Service,
		Service:      key,
		Lookup:       lookup,
		Client:       q.Client,
		Port:         q.Port,
		HealthPolicy: lb.GetHealthPolicy().String(),
	}
	if lb != nil {
		r.Mode = lb.GetMode().String()
	}
	for i, sc := range lb.GetRoutingPreference() {
		if _, known := workloadpb.LoadBalancing_Scope_name[int32(sc)]; !known || sc == workloadpb.LoadBalancing_UNSPECIFIED_SCOPE {
			return Result{}, fmt.Errorf("service %s: load_balancing.routing_preference[%d]: %s: ztunnel rejects (NACKs) this service", key, i, sc)
		}
		r.RoutingPreference = append(r.RoutingPreference, sc.String())
	}
	if _, known := workloadpb.LoadBalancing_Mode_name[int32(lb.GetMode())]; !known {
		return Result{}, fmt.Errorf("service %s: load_balancing.mode: %d: ztunnel rejects (NACKs) this service", key, lb.GetMode())
	}
	if wp := svc.GetWaypoint(); wp != nil {
		r.Waypoint = gatewayAddress(wp)
	}

	var namedTarget bool // the queried port's target is resolved per endpoint
	if q.Port != 0 {
		i := slices.IndexFunc(svc.GetPorts(), func(p *workloadpb.Port) bool { return p.GetServicePort() == q.Port })
		if i < 0 {
			return r, fmt.Errorf("service %s: %w: it has no port %d", key, ErrNoHealthyUpstream, q.Port)
		}
		namedTarget = svc.GetPorts()[i].GetTargetPort() == 0
	}

	passthrough := lb.GetMode() == workloadpb.LoadBalancing_PASSTHROUGH
	ranked := lb.GetMode() == workloadpb.LoadBalancing_STRICT || lb.GetMode() == workloadpb.LoadBalancing_FAILOVER
	allowAll := lb.GetHealthPolicy() == workloadpb.LoadBalancing_ALLOW_ALL
	workloads := ix.endpoints[key]
	r.Endpoints = make([]Endpoint, len(workloads)) // never grows: candidates point into it
	var candidates []*Endpoint
	for i, w := range workloads {
		e := &r.Endpoints[i]
		*e = newEndpoint(w)
		if resolveGateways && w.GetNetwork() != q.Client.Network && w.GetNetworkGateway() != nil {
			e.Gateway = ix.gateway(w.GetNetworkGateway(), q.Client)
		}
		switch {
		case passthrough:
			// find_upstream returns the original destination before any
			// endpoint is looked at.
			e.Outcome, e.Reason = Passthrough, "PASSTHROUGH: not load-balanced"
		case w.GetStatus() != workloadpb.WorkloadStatus_HEALTHY && !allowAll:
			e.Outcome, e.Reason = Unhealthy, e.Health
		case !hasAddress(w) && w.GetNetwork() == q.Client.Network:
			e.Outcome, e.Reason = Unreachable, "no address, and on the client's network (a network_gateway is used only from other networks)"
		case !hasAddress(w) && w.GetNetworkGateway() == nil:
			e.Outcome, e.Reason = Unreachable, "no address and no network_gateway"
		case namedTarget && !mapsPort(w.GetServices()[key], q.Port):
			e.Outcome, e.Reason = NoPort, fmt.Sprintf("named target port not mapped for service port %d", q.Port)
		default:
			e.Rank = 0
			candidates = append(candidates, e)
		}
	}

	// Rank. Without STRICT or FAILOVER every candidate is equal (rank 0).
	rankings := make([]ranking, len(candidates))
	var group []*Endpoint
	top := -1
	for i, e := range candidates {
		if ranked {
			rankings[i] = rank(lb.GetRoutingPreference(), q.Client, ix.Workloads[e.UID])
			e.Rank = rankings[i].rank
			if lb.GetMode() == workloadpb.LoadBalancing_STRICT && !rankings[i].full {
				e.Rank, e.Outcome, e.Reason = -1, DroppedByStrict, "dropped by STRICT: "+rankings[i].firstDiff()
				continue
			}
		}
		switch {
		case e.Rank > top:
			top, group = e.Rank, []*Endpoint{e}
		case e.Rank == top:
			group = append(group, e)
		}
	}
	topIsLocal := slices.ContainsFunc(group, func(e *Endpoint) bool { return e.Network == q.Client.Network })
	var total uint64
	for _, e := range group {
		total += uint64(e.Capacity)
	}
	for i, e := range candidates {
		k := rankings[i]
		switch {
		case e.Outcome != "":
		case e.Rank < top && k.networkDiff != "" && topIsLocal:
			e.Outcome, e.Reason = Outranked, "outranked by same-network endpoints"
		case e.Rank < top:
			e.Outcome, e.Reason = Outranked, fmt.Sprintf("outranked (rank %d < %d): %s", e.Rank, top, cmp.Or(k.breakDiff, k.networkDiff))
		case e.Capacity == 0:
			e.Chosen = true
			e.Outcome, e.Reason = ZeroCapacity, "capacity 0: never picked"
		default:
			e.Chosen = true
			e.Outcome = Picked
			e.Probability = float64(e.Capacity) / float64(total)
			e.Reason = location(*e, q.Client, resolveGateways)
			if k.networkDiff != "" {
				e.Reason += "; failover: no usable endpoint on the client's network"
			}
			if k.breakDiff != "" {
				e.Reason += "; best rank available: " + k.breakDiff
			}
		}
	}

	slices.SortStableFunc(r.Endpoints, func(a, b Endpoint) int {
		return cmp.Or(
			-cmp.Compare(b2i(a.Chosen), b2i(b.Chosen)),
			-cmp.Compare(a.Probability, b.Probability),
			-cmp.Compare(a.Rank, b.Rank),
			strings.Compare(a.UID, b.UID),
		)
	})
	if passthrough {
		return r, nil
	}
	if total == 0 {
		return r, fmt.Errorf("service %s: %w: %s", key, ErrNoHealthyUpstream, summary(r.Endpoints))
	}
	return r, nil
}

// newEndpoint describes a workload, not yet ranked (rank -1).
func newEndpoint(w *workloadpb.Workload) Endpoint {
	capacity := uint32(1)
	if c := w.GetCapacity(); c != nil {
		capacity = c.GetValue()
	}
	return Endpoint{
		UID:       w.GetUid(),
		Name:      w.GetName(),
		Namespace: w.GetNamespace(),
		Cluster:   clusterOr(w.GetClusterId()),
		Network:   w.GetNetwork(),
		Locality:  localityOf(w),
		Node:      w.GetNode(),
		Capacity:  capacity,
		Health:    w.GetStatus().String(),
		Rank:      -1,
	}
}

func mapsPort(pl *workloadpb.PortList, port uint32) bool {
	return slices.ContainsFunc(pl.GetPorts(), func(p *workloadpb.Port) bool { return p.GetServicePort() == port })
}

// ranking is one endpoint's place in the routing preference.
type ranking struct {
	rank int
	// full: every scope matches (what STRICT requires).
	full bool
	// networkDiff is set when NETWORK came first and differed: the
	// endpoint was ranked on the other scopes, below every same-network one.
	networkDiff string
	// breakDiff is the mismatch that stopped the walk.
	breakDiff string
}

func (k ranking) firstDiff() string { return cmp.Or(k.networkDiff, k.breakDiff) }

// rank walks the routing preference as ztunnel's load_balance does: +1 per
// consecutive matching scope, stopping at the first mismatch. With NETWORK
// first, a same-network endpoint gets a bonus of len-1 on top and a remote
// one skips NETWORK (so every same-network endpoint outranks every remote
// one). Values compare as strings: empty on both sides is a match.
func rank(prefs []workloadpb.LoadBalancing_Scope, c Client, w *workloadpb.Workload) ranking {
	networkFirst := len(prefs) > 0 && prefs[0] == workloadpb.LoadBalancing_NETWORK
	var k ranking
	bonus := 0
	l := localityOf(w)
	for _, scope := range prefs {
		var mine, theirs string
		switch scope {
		case workloadpb.LoadBalancing_REGION:
			mine, theirs = c.Locality.Region, l.Region
		case workloadpb.LoadBalancing_ZONE:
			mine, theirs = c.Locality.Zone, l.Zone
		case workloadpb.LoadBalancing_SUBZONE:
			mine, theirs = c.Locality.Subzone, l.Subzone
		case workloadpb.LoadBalancing_NODE:
			mine, theirs = c.Node, w.GetNode()
		case workloadpb.LoadBalancing_CLUSTER:
			mine, theirs = c.cluster(), clusterOr(w.GetClusterId())
		case workloadpb.LoadBalancing_NETWORK:
			mine, theirs = c.Network, w.GetNetwork()
		}
		diff := ""
		if mine != theirs {
			diff = fmt.Sprintf("%s differs (endpoint %s, client %s)", scope, quoteEmpty(theirs), quoteEmpty(mine))
		}
		if scope == workloadpb.LoadBalancing_NETWORK && networkFirst {
			if diff != "" {
				k.networkDiff = diff
				continue
			}
			bonus = len(prefs) - 1
		}
		if diff != "" {
			k.breakDiff = diff
			break
		}
		k.rank++
	}
	k.full = k.rank == len(prefs)
	k.rank += bonus
	return k
}

// location says how the client reaches a picked endpoint.
func location(e Endpoint, c Client, viaGateways bool) string {
	switch {
	case !viaGateways:
		return "gateway endpoint, connected to directly"
	case e.Network == c.Network:
		return "same network"
	case e.Gateway == nil:
		return "other network without a network_gateway: connections fail"
	case e.Gateway.Problem != "":
		return "other network via gateway " + e.Gateway.short + ": " + e.Gateway.Problem
	default:
		return "other network via gateway " + e.Gateway.short
	}
}

// gateway resolves a network_gateway as ztunnel's fetch_network_gateway does.
func (ix *index) gateway(gw *workloadpb.GatewayAddress, c Client) *Gateway {
	if g, ok := ix.gateways[gatewayAddress(gw)]; ok {
		return g // every endpoint behind one gateway shares its answer
	}
	g := &Gateway{Address: gatewayAddress(gw)}
	ix.gateways[g.Address] = g
	ix.resolveGateway(g, gw, c)
	return g
}

func (ix *index) resolveGateway(g *Gateway, gw *workloadpb.GatewayAddress, c Client) {
	port := gw.GetHboneMtlsPort()
	switch d := gw.GetDestination().(type) {
	case *workloadpb.GatewayAddress_Address:
		ip, ok := netip.AddrFromSlice(d.Address.GetAddress())
		if !ok {
			g.short, g.Problem = g.Address, "invalid gateway address"
			return
		}
		g.short = netip.AddrPortFrom(ip, uint16(port)).String()
		// A VIP on the gateway's network first, then a workload there.
		gc := c
		gc.Network = d.Address.GetNetwork()
		if _, svc, _, err := ix.byVIP(ip, gc); err == nil {
			g.viaService(ix, svc.GetNamespace()+"/"+svc.GetHostname(), port, c)
			return
		}
		if w := ix.byAddress[addrKey(d.Address.GetNetwork(), ip)]; w != nil {
			g.Workload = w.GetUid()
			return
		}
	case *workloadpb.GatewayAddress_Hostname:
		g.short = d.Hostname.GetHostname() + ":" + strconv.FormatUint(uint64(port), 10)
		key := d.Hostname.GetNamespace() + "/" + d.Hostname.GetHostname()
		if ix.Services[key] != nil {
			g.viaService(ix, key, port, c)
			return
		}
		for _, uid := range sortedKeys(ix.Workloads) {
			w := ix.Workloads[uid]
			if w.GetHostname() == d.Hostname.GetHostname() && w.GetNamespace() == d.Hostname.GetNamespace() {
				g.Workload = uid
				return
			}
		}
	default:
		g.short, g.Problem = g.Address, "gateway has no destination"
		return
	}
	g.Problem = "gateway not found: connections fail"
}

// viaService explains the gateway service at the HBONE port, as ztunnel
// load-balances it.
func (g *Gateway) viaService(ix *index, key string, port uint32, c Client) {
	g.Service = key
	r, err := explain(ix, Query{Service: key, Client: c, Port: port}, false)
	if err != nil {
		g.Problem = "gateway service: " + err.Error() + ": connections fail"
	}
	if r.Service != "" {
		g.Via = &r
	}
	if r.Mode == workloadpb.LoadBalancing_PASSTHROUGH.String() {
		g.Problem = "gateway service is PASSTHROUGH: connections fail"
	}
}

// gatewayAddress renders "network/ip:port" or "namespace/hostname:port".
func gatewayAddress(gw *workloadpb.GatewayAddress) string {
	port := strconv.FormatUint(uint64(gw.GetHboneMtlsPort()), 10)
	switch d := gw.GetDestination().(type) {
	case *workloadpb.GatewayAddress_Address:
		ip, ok := netip.AddrFromSlice(d.Address.GetAddress())
		if !ok {
			return fmt.Sprintf("%s/invalid(%x):%s", d.Address.GetNetwork(), d.Address.GetAddress(), port)
		}
		return d.Address.GetNetwork() + "/" + netip.AddrPortFrom(ip, uint16(gw.GetHboneMtlsPort())).String()
	case *workloadpb.GatewayAddress_Hostname:
		return d.Hostname.GetNamespace() + "/" + d.Hostname.GetHostname() + ":" + port
	}
	return "(no destination):" + port
}

// summary counts why nothing is picked: "2 UNHEALTHY, 1 dropped by STRICT".
func summary(eps []Endpoint) string {
	if len(eps) == 0 {
		return "the service has no endpoints"
	}
	counts := map[Outcome]int{}
	for _, e := range eps {
		counts[e.Outcome]++
	}
	var parts []string
	for _, o := range []struct {
		outcome Outcome
		label   string
	}{
		{ZeroCapacity, "capacity 0"},
		{DroppedByStrict, "dropped by STRICT"},
		{Unhealthy, "UNHEALTHY"},
		{Unreachable, "unreachable"},
		{NoPort, "without the port"},
		{Outranked, "outranked"},
	} {
		if n := counts[o.outcome]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, o.label))
		}
	}
	return fmt.Sprintf("%d endpoint(s): %s", len(eps), strings.Join(parts, ", "))
}
