package e2e

import (
	"context"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"

	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
	"github.com/peerd-mesh/peerd/test/ztunnel"
)

// TestPeeringMerge runs the read-only checks on one linked mesh of the
// three example clusters (examples/multicluster): what a ztunnel in
// cluster1 (and, for the mirror rows, in cluster2) holds.
func TestPeeringMerge(t *testing.T) {
	m := startLinkedMesh(t, nil)
	c1 := clientOn(t, m.Cluster("cluster1"), "node-a")
	c2 := clientOn(t, m.Cluster("cluster2"), "node-a")
	// Every link has delivered once echo has endpoints from all three
	// clusters: only then does an absence mean something.
	waitEndpointClusters(t, c1, globalKey("hello", "echo"), "cluster1", "cluster2", "cluster3")
	waitEndpointClusters(t, c2, globalKey("hello", "echo"), "cluster1", "cluster2", "cluster3")

	t.Run("state table", func(t *testing.T) {
		// Rows in the design's order; the service is named for its row in
		// the examples, the client is in cluster1 unless the row says.
		rows := []struct {
			row     string
			client  *ztunnel.Client
			service string
			want    []string // clusters of the global service's endpoints; nil: no global service
		}{
			{"exists, no scope / exists, no scope -> no global service", c1, "audit", nil},
			{"none / global -> global service, remote endpoints", c1, "greeter", []string{"cluster2"}},
			{"exists, no scope / global -> global service, remote endpoints", c1, "catalog", []string{"cluster2"}},
			{"exists, no scope / global -> global service, remote endpoints (cluster2 sees cluster1's search)", c2, "search", []string{"cluster1"}},
			{"global / global -> global service, local and remote endpoints", c1, "echo", []string{"cluster1", "cluster2", "cluster3"}},
			{"global / none -> global service, local endpoints", c1, "notes", []string{"cluster1"}},
			{"global / exists, not global -> global service, local endpoints", c1, "search", []string{"cluster1"}},
		}
		for _, r := range rows {
			t.Run(r.row, func(t *testing.T) {
				key := globalKey("hello", r.service)
				if r.want == nil {
					if hasService(r.client, key) {
						t.Fatalf("%s exists; want no global service", key)
					}
					if got := endpointClusters(stateOf(r.client), key); len(got) > 0 {
						t.Fatalf("workloads list %s as a service (from %v); want none", key, got)
					}
					return
				}
				if !hasService(r.client, key) {
					t.Fatalf("no %s", key)
				}
				waitEndpointClusters(t, r.client, key, r.want...)
			})
		}
		t.Run("a local-only service never becomes global", func(t *testing.T) {
			for _, key := range []string{globalKey("hello", "legacy-db"), globalKey("hello", "audit")} {
				if hasService(c2, key) {
					t.Errorf("cluster2 holds %s, which no cluster exports", key)
				}
			}
		})
		t.Run("plain services keep their local endpoints", func(t *testing.T) {
			waitEndpointClusters(t, c1, plainKey("hello", "catalog"), "cluster1")
			waitEndpointClusters(t, c1, plainKey("hello", "echo"), "cluster1")
			waitEndpointClusters(t, c2, plainKey("hello", "greeter"), "cluster2")
		})
	})

	t.Run("global-only adds remote endpoints to the plain service", func(t *testing.T) {
		waitEndpointClusters(t, c1, plainKey("hello", "frontend"), "cluster1", "cluster2", "cluster3")
		waitEndpointClusters(t, c1, globalKey("hello", "frontend"), "cluster1", "cluster2", "cluster3")
		// cluster2's frontend says global, not global-only: its plain name
		// stays local there (the cluster owning the plain name decides).
		waitEndpointClusters(t, c2, plainKey("hello", "frontend"), "cluster2")
	})

	t.Run("namespace label and its precedence", func(t *testing.T) {
		// shop is labelled global: cart is global in every cluster.
		waitEndpointClusters(t, c1, globalKey("shop", "cart"), "cluster1", "cluster2", "cluster3")
		waitEndpointClusters(t, c2, plainKey("shop", "cart"), "cluster2")
		// ledger's own label (global-only) wins over shop's (global) in
		// cluster1: its plain name carries cluster2's endpoints.
		waitEndpointClusters(t, c1, plainKey("shop", "ledger"), "cluster1", "cluster2")
		waitEndpointClusters(t, c1, globalKey("shop", "ledger"), "cluster1", "cluster2")
		waitEndpointClusters(t, c2, plainKey("shop", "ledger"), "cluster2")
	})

	t.Run("traffic distribution", func(t *testing.T) {
		failover := func(scopes ...workloadpb.LoadBalancing_Scope) *workloadpb.LoadBalancing {
			return &workloadpb.LoadBalancing{Mode: workloadpb.LoadBalancing_FAILOVER, RoutingPreference: scopes}
		}
		const (
			network = workloadpb.LoadBalancing_NETWORK
			region  = workloadpb.LoadBalancing_REGION
			zone    = workloadpb.LoadBalancing_ZONE
		)
		// From node-a of cluster1 (us-east/us-east-a), every cluster healthy.
		rows := []struct {
			name    string
			service string
			lb      *workloadpb.LoadBalancing
			shares  map[string]float64
		}{
			{"default for a global service: PreferNetwork", "echo", failover(network), map[string]float64{"cluster1": 1}},
			{"PreferClose: the same zone first", "echo-close", failover(network, region, zone), map[string]float64{"cluster1": 1}},
			{"PreferRegion", "echo-region", failover(network, region), map[string]float64{"cluster1": 1}},
			// Any: every endpoint equal, by capacity: cluster1 2 pods,
			// cluster2 2, cluster3 1.
			{"Any: no load balancing", "echo-any", nil, map[string]float64{"cluster1": 0.4, "cluster2": 0.4, "cluster3": 0.2}},
			{"spec.trafficDistribution wins over the annotation", "echo-spec", failover(network, region, zone), map[string]float64{"cluster1": 1}},
		}
		for _, r := range rows {
			t.Run(r.name, func(t *testing.T) {
				key := globalKey("hello", r.service)
				svc := c1.Services()[key]
				if svc == nil {
					t.Fatalf("no %s", key)
				}
				if diff := cmp.Diff(r.lb, svc.GetLoadBalancing(), protocmp.Transform()); diff != "" {
					t.Errorf("%s load_balancing (-want +got):\n%s", key, diff)
				}
				waitShares(t, c1, key, r.shares)
			})
		}
		t.Run("PreferClose picks the client's own zone", func(t *testing.T) {
			// echo-close has a pod in us-east-a and one in us-east-b: only
			// the first is picked from node-a.
			r, err := c1.Pick(globalKey("hello", "echo-close"))
			if err != nil {
				t.Fatal(err)
			}
			var picked []string
			for _, e := range r.Endpoints {
				if e.Probability > 0 {
					picked = append(picked, e.Locality.Zone)
				}
			}
			if !slices.Equal(picked, []string{"us-east-a"}) {
				t.Fatalf("PreferClose from us-east-a picks endpoints in zones %v; want the one us-east-a pod", picked)
			}
		})
	})

	t.Run("split-horizon and gateway workloads", func(t *testing.T) {
		s := stateOf(c1)
		key := globalKey("hello", "echo")
		w := splitHorizon(s, key, "cluster2")
		if w == nil {
			t.Fatalf("no split-horizon workload for cluster2's %s", key)
		}
		checks := []struct {
			field     string
			got, want any
		}{
			{"network", w.GetNetwork(), "network2"},
			{"network_gateway.address", gatewayAddress(w), "network2/127.0.0.1"},
			{"network_gateway.hbone_mtls_port", w.GetNetworkGateway().GetHboneMtlsPort(), uint32(15008)},
			{"capacity", w.GetCapacity().GetValue(), uint32(2)},
			{"status", w.GetStatus(), workloadpb.WorkloadStatus_HEALTHY},
			{"trust_domain", w.GetTrustDomain(), "cluster2.local"},
			{"cluster_id", w.GetClusterId(), "cluster2"},
			{"locality", w.GetLocality().GetRegion() + "/" + w.GetLocality().GetZone(), "us-east/us-east-c"},
			{"tunnel_protocol", w.GetTunnelProtocol(), workloadpb.TunnelProtocol_HBONE},
		}
		for _, c := range checks {
			if c.got != c.want {
				t.Errorf("split-horizon workload %s: %s = %v, want %v", w.GetUid(), c.field, c.got, c.want)
			}
		}
		// The gateway the workload names exists for ztunnel: a workload at
		// that address on network2 with the gateway's identity.
		var gw *workloadpb.Workload
		for _, x := range s.Workloads {
			if x.GetNetwork() == "network2" && slices.ContainsFunc(x.GetAddresses(), func(a []byte) bool {
				ip, _ := netip.AddrFromSlice(a)
				return ip.String() == "127.0.0.1"
			}) {
				gw = x
			}
		}
		if gw == nil {
			t.Fatal("no gateway workload at network2/127.0.0.1")
		}
		if gw.GetServiceAccount() != "istio-eastwest" || gw.GetNamespace() != "istio-gateways" || gw.GetTrustDomain() != "cluster2.local" {
			t.Errorf("gateway workload identity %s/%s in %q; want istio-gateways/istio-eastwest in cluster2.local",
				gw.GetNamespace(), gw.GetServiceAccount(), gw.GetTrustDomain())
		}
		// ztunnel's inner HBONE hop accepts only the service's SANs: every
		// cluster's endpoints, each in its own trust domain.
		svc := s.Services[key]
		for _, td := range []string{"cluster1.local", "cluster2.local", "cluster3.local"} {
			want := "spiffe://" + td + "/ns/hello/sa/echo"
			if !slices.Contains(svc.GetSubjectAltNames(), want) {
				t.Errorf("%s subject_alt_names %v lack %s", key, svc.GetSubjectAltNames(), want)
			}
		}
	})

	t.Run("VIPs of global services", func(t *testing.T) {
		for _, name := range []string{"echo", "greeter"} { // local and remote-only
			key := globalKey("hello", name)
			v1, v2 := vips(c1.Services()[key]), vips(c2.Services()[key])
			if !hasVIPIn(v1, "240.240.0.0/16") || !hasVIPIn(v1, "2001:2::/48") {
				t.Errorf("cluster1 %s VIPs %v: want one in 240.240.0.0/16 and one in 2001:2::/48", key, v1)
			}
			if !slices.Equal(stripNetworks(v1), stripNetworks(v2)) {
				t.Errorf("%s VIPs differ between clusters: cluster1 %v, cluster2 %v", key, v1, v2)
			}
		}
	})
}

// TestPeeringFailoverAndFailBack makes cluster1's echo pods unready: every
// distribution fails over to the remote clusters in its order, then comes
// back when they are Ready again.
func TestPeeringFailoverAndFailBack(t *testing.T) {
	m := startLinkedMesh(t, nil)
	c1 := m.Cluster("cluster1")
	z := clientOn(t, c1, "node-a")
	echo := globalKey("hello", "echo")
	waitShares(t, z, echo, map[string]float64{"cluster1": 1})
	waitEndpointClusters(t, z, echo, "cluster1", "cluster2", "cluster3")

	setReady(t, c1, "10-echo-pods.yaml", false)
	// cluster2 has 2 Ready pods, cluster3 1: PreferNetwork and Any split by
	// capacity; PreferRegion and PreferClose prefer cluster2 (us-east).
	failedOver := map[string]map[string]float64{
		"echo":        {"cluster2": 2.0 / 3, "cluster3": 1.0 / 3},
		"echo-any":    {"cluster2": 2.0 / 3, "cluster3": 1.0 / 3},
		"echo-region": {"cluster2": 1},
		"echo-close":  {"cluster2": 1},
		"echo-spec":   {"cluster2": 1},
	}
	for _, name := range keys(failedOver) {
		waitShares(t, z, globalKey("hello", name), failedOver[name])
	}

	setReady(t, c1, "10-echo-pods.yaml", true)
	waitShares(t, z, echo, map[string]float64{"cluster1": 1})
	waitShares(t, z, globalKey("hello", "echo-any"), map[string]float64{"cluster1": 0.4, "cluster2": 0.4, "cluster3": 0.2})
}

// TestPeeringCapacityTracksRemoteReadiness: cluster1's split-horizon
// workload for cluster2 follows cluster2's Ready endpoints, down to 0
// (UNHEALTHY) and back.
func TestPeeringCapacityTracksRemoteReadiness(t *testing.T) {
	m := startLinkedMesh(t, nil)
	c2 := m.Cluster("cluster2")
	z := clientOn(t, m.Cluster("cluster1"), "node-a")
	key := globalKey("hello", "echo")
	waitCapacity(t, z, key, "cluster2", 2, workloadpb.WorkloadStatus_HEALTHY)

	// One of cluster2's two echo pods becomes unready.
	if err := c2.EditManifest("10-echo-pods.yaml", func(s string) string {
		return strings.Replace(s, `status: "True"`, `status: "False"`, 1)
	}); err != nil {
		t.Fatal(err)
	}
	waitCapacity(t, z, key, "cluster2", 1, workloadpb.WorkloadStatus_HEALTHY)
	setReady(t, c2, "10-echo-pods.yaml", false)
	waitCapacity(t, z, key, "cluster2", 0, workloadpb.WorkloadStatus_UNHEALTHY)
	setReady(t, c2, "10-echo-pods.yaml", true)
	waitCapacity(t, z, key, "cluster2", 2, workloadpb.WorkloadStatus_HEALTHY)

	// cluster1 measured each of those changes from its arrival to its push.
	c1 := m.Cluster("cluster1")
	if n, _, err := c1.Metric(context.Background(), "peerd_peer_convergence_seconds_count"); err != nil || n < 3 {
		t.Errorf("peerd_peer_convergence_seconds_count = %v (%v); want the 3 remote changes measured at least", n, err)
	}
}

// waitCapacity waits until cluster's split-horizon workload for key has
// that capacity and status.
func waitCapacity(t *testing.T, z *ztunnel.Client, key, cluster string, capacity uint32, status workloadpb.WorkloadStatus) {
	t.Helper()
	var last *workloadpb.Workload
	waitStateFor(t, z, peeringWait, key+" from "+cluster+" with capacity "+itoa(capacity)+" "+status.String(), func(s *ztunnel.State) bool {
		last = splitHorizon(s, key, cluster)
		return last != nil && proto3Capacity(last) == capacity && last.GetStatus() == status
	}, func() string {
		if last == nil {
			return "no split-horizon workload"
		}
		return "capacity " + itoa(proto3Capacity(last)) + " " + last.GetStatus().String()
	})
}

// proto3Capacity is the capacity as ztunnel reads it (unset = 1).
func proto3Capacity(w *workloadpb.Workload) uint32 {
	if w.GetCapacity() == nil {
		return 1
	}
	return w.GetCapacity().GetValue()
}

// setReady sets the Ready condition of every pod in a config-dir file.
func setReady(t *testing.T, c interface {
	ReplaceInManifest(name, old, new string) error
}, file string, ready bool) {
	t.Helper()
	from, to := `status: "True"`, `status: "False"`
	if ready {
		from, to = to, from
	}
	if err := c.ReplaceInManifest(file, from, to); err != nil {
		t.Fatal(err)
	}
}

func stateOf(c *ztunnel.Client) *ztunnel.State {
	return &ztunnel.State{Workloads: c.Workloads(), Services: c.Services()}
}

func gatewayAddress(w *workloadpb.Workload) string {
	a := w.GetNetworkGateway().GetAddress()
	if a == nil {
		return w.GetNetworkGateway().GetHostname().GetNamespace() + "/" + w.GetNetworkGateway().GetHostname().GetHostname()
	}
	ip, _ := netip.AddrFromSlice(a.GetAddress())
	return a.GetNetwork() + "/" + ip.String()
}

func stripNetworks(vs []string) []string {
	var out []string
	for _, v := range vs {
		out = append(out, v[strings.Index(v, "/")+1:])
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func hasVIPIn(vs []string, prefix string) bool {
	p := netip.MustParsePrefix(prefix)
	for _, v := range stripNetworks(vs) {
		if ip, err := netip.ParseAddr(v); err == nil && p.Contains(ip) {
			return true
		}
	}
	return false
}

func itoa(n uint32) string { return strconv.FormatUint(uint64(n), 10) }
