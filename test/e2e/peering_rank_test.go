package e2e

import (
	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
	"github.com/peerd-mesh/peerd/test/ztunnel"
)

// This file is the stand-in for internal/explain (ztunnel's ranking, shared
// with `peerd explain`) until that package is on main; the tests call only
// clusterShares, so the switch touches this file alone.

// clientLocality is where the ztunnel that sends the traffic runs.
type clientLocality struct {
	Network, Region, Zone, Subzone, Node, Cluster string
}

type rankedEndpoint struct {
	w *workloadpb.Workload
	p float64 // probability of being picked
}

// rankEndpoints is what ztunnel's find_upstream and load_balance do with the
// service key (../shared/ztunnel-client.md, "How the resources are used"):
// the healthy candidates, the highest rank by routing preference, a pick
// weighted by capacity.
func rankEndpoints(s *ztunnel.State, key string, loc clientLocality) []rankedEndpoint {
	svc := s.Services[key]
	if svc == nil {
		return nil
	}
	lb := svc.GetLoadBalancing()
	allowAll := lb.GetHealthPolicy() == workloadpb.LoadBalancing_ALLOW_ALL
	ranked := lb.GetMode() == workloadpb.LoadBalancing_STRICT || lb.GetMode() == workloadpb.LoadBalancing_FAILOVER
	prefs := lb.GetRoutingPreference()
	type cand struct {
		w    *workloadpb.Workload
		rank int
	}
	var cands []cand
	best := -1
	for _, w := range s.Workloads {
		if _, ok := w.GetServices()[key]; !ok {
			continue
		}
		if w.GetStatus() != workloadpb.WorkloadStatus_HEALTHY && !allowAll {
			continue
		}
		if len(w.GetAddresses()) == 0 && (w.GetNetworkGateway() == nil || w.GetNetwork() == loc.Network) {
			continue // reachable only through a gateway on another network
		}
		rank := 0
		if ranked {
			rank = rankOf(w, prefs, loc)
			if lb.GetMode() == workloadpb.LoadBalancing_STRICT && rank < len(prefs) {
				continue
			}
		}
		cands = append(cands, cand{w, rank})
		best = max(best, rank)
	}
	var total float64
	for _, c := range cands {
		if c.rank == best {
			total += float64(capacity(c.w))
		}
	}
	var out []rankedEndpoint
	for _, c := range cands {
		if c.rank == best && capacity(c.w) > 0 && total > 0 {
			out = append(out, rankedEndpoint{c.w, float64(capacity(c.w)) / total})
		}
	}
	return out
}

// rankOf: +1 per consecutive scope equal to the client's; NETWORK first
// gives a same-network endpoint a bonus of len-1 and lets a remote one skip
// it, so every same-network endpoint outranks every remote one.
func rankOf(w *workloadpb.Workload, prefs []workloadpb.LoadBalancing_Scope, loc clientLocality) int {
	rank := 0
	for i, scope := range prefs {
		var mine, theirs string
		switch scope {
		case workloadpb.LoadBalancing_NETWORK:
			mine, theirs = loc.Network, w.GetNetwork()
			if i == 0 {
				if mine == theirs {
					rank += len(prefs)
				}
				continue
			}
		case workloadpb.LoadBalancing_REGION:
			mine, theirs = loc.Region, w.GetLocality().GetRegion()
		case workloadpb.LoadBalancing_ZONE:
			mine, theirs = loc.Zone, w.GetLocality().GetZone()
		case workloadpb.LoadBalancing_SUBZONE:
			mine, theirs = loc.Subzone, w.GetLocality().GetSubzone()
		case workloadpb.LoadBalancing_NODE:
			mine, theirs = loc.Node, w.GetNode()
		case workloadpb.LoadBalancing_CLUSTER:
			mine, theirs = loc.Cluster, w.GetClusterId()
		}
		if mine != theirs {
			break
		}
		rank++
	}
	return rank
}

func capacity(w *workloadpb.Workload) uint32 {
	if w.GetCapacity() == nil {
		return 1
	}
	return w.GetCapacity().GetValue()
}
