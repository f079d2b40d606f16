package e2e

import (
	"context"
	"crypto/tls"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/peerd-mesh/peerd/internal/certs"
	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
	"github.com/peerd-mesh/peerd/test/mesh"
	"github.com/peerd-mesh/peerd/test/ztunnel"
)

// federationTypeURL is peerd's own contract between linked peerds.
const federationTypeURL = "type.googleapis.com/peerd.federation.v1.FederatedService"

// TestPeeringKilledPeerIsKeptUntilTheTTLThenWithdrawn: cluster2 dies
// without a goodbye. cluster1 keeps serving what cluster2 exported (stale)
// until --peer-stale-ttl after the loss, then withdraws it; a restarted
// cluster2 comes back.
func TestPeeringKilledPeerIsKeptUntilTheTTLThenWithdrawn(t *testing.T) {
	const ttl = 4 * time.Second
	m := startLinkedMesh(t, func(o *mesh.Options) { o.StaleTTL = ttl })
	c1, c2 := m.Cluster("cluster1"), m.Cluster("cluster2")
	z := clientOn(t, c1, "node-a")
	greeter := globalKey("hello", "greeter") // exported by cluster2 only
	waitEndpointClusters(t, z, greeter, "cluster2")
	waitLinkState(t, c1, "cluster2", "synced")

	killed := time.Now()
	// From now on cluster2's gateway (the relay, like a TLS-passthrough
	// Envoy) accepts each connection and closes it because its backend is
	// gone: that is a lost peer, never a rejection.
	c2.Kill()
	waitLinkState(t, c1, "cluster2", "stale")
	if !hasService(z, greeter) {
		t.Fatalf("%s gone as soon as the link went stale; want it kept for %s", greeter, ttl)
	}
	waitEndpointClusters(t, z, greeter) // withdrawn: no endpoints left
	waitStateFor(t, z, peeringWait, greeter+" withdrawn", func(s *ztunnel.State) bool {
		_, ok := s.Services[greeter]
		return !ok
	}, func() string { return "still held" })
	// A lower bound only: the services must not go before the TTL ran out.
	if held := time.Since(killed); held < ttl {
		t.Fatalf("%s withdrawn %s after cluster2 died; want it kept for the TTL (%s)", greeter, held, ttl)
	}
	expectLinkState(t, c1, "cluster2", "withdrawn")
	// cluster2's share of echo is gone too; the other clusters are intact.
	waitEndpointClusters(t, z, globalKey("hello", "echo"), "cluster1", "cluster3")

	if err := c2.Start(); err != nil {
		t.Fatal(err)
	}
	waitEndpointClusters(t, z, greeter, "cluster2")
	waitEndpointClusters(t, z, globalKey("hello", "echo"), "cluster1", "cluster2", "cluster3")
	waitLinkState(t, c1, "cluster2", "synced")
}

// TestPeeringRestartDuringPartitionKeepsServing: cluster1 restarts while
// cluster2 is unreachable. The last known state under --state-dir lets the
// restarted peerd serve cluster2's services (its TTL counts from when the
// link was lost, not from the restart).
func TestPeeringRestartDuringPartitionKeepsServing(t *testing.T) {
	m := startLinkedMesh(t, func(o *mesh.Options) {
		o.StaleTTL = 10 * time.Minute
		o.SyncTimeout = 3 * time.Second // the partitioned link never syncs
	})
	c1, c2 := m.Cluster("cluster1"), m.Cluster("cluster2")
	z := clientOn(t, c1, "node-a")
	greeter := globalKey("hello", "greeter")
	waitEndpointClusters(t, z, greeter, "cluster2")

	c2.Relay.Pause() // cluster2's gateway blackholes everything
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := c1.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	// A fresh client of the restarted peerd: nothing held from before.
	fresh := clientOn(t, c1, "node-b")
	waitEndpointClusters(t, fresh, greeter, "cluster2")
	waitEndpointClusters(t, fresh, globalKey("hello", "echo"), "cluster1", "cluster2", "cluster3")

	c2.Relay.Resume()
	waitLinkState(t, c1, "cluster2", "synced")
	waitEndpointClusters(t, fresh, greeter, "cluster2")
}

// TestPeeringBlackholedGatewayIsDetected: cluster2's gateway stops passing
// bytes without closing anything. cluster1 notices (the link goes stale)
// and keeps cluster2's services while the TTL runs; traffic resumes and
// the link syncs again.
func TestPeeringBlackholedGatewayIsDetected(t *testing.T) {
	m := startLinkedMesh(t, func(o *mesh.Options) { o.StaleTTL = 10 * time.Minute })
	c1, c2 := m.Cluster("cluster1"), m.Cluster("cluster2")
	z := clientOn(t, c1, "node-a")
	greeter := globalKey("hello", "greeter")
	waitEndpointClusters(t, z, greeter, "cluster2")
	waitLinkState(t, c1, "cluster2", "synced")

	c2.Relay.Pause()
	waitLinkState(t, c1, "cluster2", "stale")
	if !slices.Equal(endpointClusters(stateOf(z), greeter), []string{"cluster2"}) {
		t.Fatalf("%s lost cluster2's endpoints while the link is stale within its TTL", greeter)
	}
	c2.Relay.Resume()
	waitLinkState(t, c1, "cluster2", "synced")
	// The link serves again: a change in cluster2 reaches cluster1.
	setReady(t, c2, "20-hello.yaml", false)
	waitCapacity(t, z, greeter, "cluster2", 0, workloadpb.WorkloadStatus_UNHEALTHY)
}

// TestPeeringPeerUnderAnotherRootIsRejected: cluster3's intermediate comes
// from another root. Neither side accepts the other's certificate: the link
// is rejected and cluster3 contributes nothing to cluster1.
func TestPeeringPeerUnderAnotherRootIsRejected(t *testing.T) {
	rogue := filepath.Join(peerdCerts(t, "cluster3"), "cluster3")
	m := startLinkedMesh(t, func(o *mesh.Options) {
		o.SyncTimeout = 3 * time.Second
		o.Clusters[2].CADir = rogue
	})
	c1 := m.Cluster("cluster1")
	z := clientOn(t, c1, "node-a")
	waitLinkState(t, c1, "cluster3", "rejected")
	waitLinkState(t, c1, "cluster2", "synced")
	waitEndpointClusters(t, z, globalKey("hello", "echo"), "cluster1", "cluster2")
	waitEndpointClusters(t, z, globalKey("shop", "cart"), "cluster1", "cluster2")
	// cluster1's link refused cluster3's server certificate (the client
	// side of the handshake) and counted it.
	if v, _, err := c1.Metric(context.Background(), "peerd_tls_rejections_total", `side="client"`); err != nil || v == 0 {
		t.Errorf("peerd_tls_rejections_total{side=\"client\"} = %v (%v); want the refused handshakes counted", v, err)
	}
}

// TestPeeringWrongTrustDomainIsRejected: cluster1's link says cluster2 is
// in trust domain "elsewhere.local"; cluster2's certificate says
// cluster2.local. The link is rejected unless --skip-validate-trust-domain.
func TestPeeringWrongTrustDomainIsRejected(t *testing.T) {
	for _, skip := range []bool{false, true} {
		name := "validated"
		if skip {
			name = "--skip-validate-trust-domain"
		}
		t.Run(name, func(t *testing.T) {
			m := startLinkedMesh(t, func(o *mesh.Options) {
				o.SyncTimeout = 3 * time.Second
				// A link rejected after it had synced keeps what it had for
				// the TTL, as a lost one does; keep the wait short.
				o.StaleTTL = 5 * time.Second
				if skip {
					o.Clusters[0].Args = []string{"--skip-validate-trust-domain"}
				}
			})
			c1, c2 := m.Cluster("cluster1"), m.Cluster("cluster2")
			z := clientOn(t, c1, "node-a")
			waitEndpointClusters(t, z, globalKey("hello", "greeter"), "cluster2")
			if err := c1.Link(c2, mesh.LinkOptions{TrustDomain: "elsewhere.local"}); err != nil {
				t.Fatal(err)
			}
			if skip {
				waitLinkState(t, c1, "cluster2", "synced")
				waitEndpointClusters(t, z, globalKey("hello", "greeter"), "cluster2")
				return
			}
			waitLinkState(t, c1, "cluster2", "rejected")
			waitEndpointClusters(t, z, globalKey("hello", "echo"), "cluster1", "cluster3")
			waitStateFor(t, z, peeringWait, "greeter gone", func(s *ztunnel.State) bool {
				_, ok := s.Services[globalKey("hello", "greeter")]
				return !ok
			}, func() string { return "still held" })
		})
	}
}

// TestPeeringZtunnelGetsNoFederationData: a ztunnel (no client certificate
// on the TLS listener; the plaintext listener) asking for peerd's
// federation type gets none of it.
func TestPeeringZtunnelGetsNoFederationData(t *testing.T) {
	m := startLinkedMesh(t, nil)
	c1 := m.Cluster("cluster1")
	// The control: cluster1 does serve its exports to a peer (cluster2
	// holds notes, which only cluster1 exports), so the zero below is a
	// refusal, not an empty export.
	waitEndpointClusters(t, clientOn(t, m.Cluster("cluster2"), "node-a"), globalKey("hello", "notes"), "cluster1")
	tlsConfig, err := certs.ClientTLSConfig(m.RootCert(), "istiod."+mesh.SystemNamespace+".svc")
	if err != nil {
		t.Fatal(err)
	}
	// A workload identity under the same root that is not peerd's.
	ca, err := certs.LoadCA(c1.CADir)
	if err != nil {
		t.Fatal(err)
	}
	workload, err := ca.IdentityCertificate(certs.Identity{TrustDomain: c1.TrustDomain, Namespace: mesh.SystemNamespace, ServiceAccount: "ztunnel"}, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	withCert := tlsConfig.Clone()
	withCert.Certificates = []tls.Certificate{workload}
	for _, tc := range []struct {
		name   string
		target string
		creds  grpc.DialOption
	}{
		{"TLS listener, no client certificate", c1.ListenAddr, grpc.WithTransportCredentials(credentials.NewTLS(tlsConfig))},
		{"TLS listener, a workload certificate that is not peerd's", c1.ListenAddr, grpc.WithTransportCredentials(credentials.NewTLS(withCert))},
		{"plaintext listener", c1.PlaintextAddr, grpc.WithTransportCredentials(insecure.NewCredentials())},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := federationResources(tc.target, tc.creds)
			if err == nil {
				t.Fatalf("a ztunnel's request for federation data was answered (%d resources); want it refused", n)
			}
			if status.Code(err) != codes.PermissionDenied {
				t.Fatalf("refusal: %v; want PermissionDenied", err)
			}
		})
	}
}

// federationResources asks for the federation type as ztunnel would (one
// wildcard request) and returns how many resources the first answer had,
// or the error that ended the stream.
func federationResources(target string, opts ...grpc.DialOption) (int, error) {
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		return 0, err
	}
	if err := stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: federationTypeURL}); err != nil {
		return 0, err
	}
	resp, err := stream.Recv()
	if err != nil {
		return 0, err
	}
	return len(resp.GetResources()), nil
}

// TestPeeringVIPsSurviveRestarts: a global service keeps its VIP across a
// restart of the importing peerd and of the exporting one, and has the same
// VIP in every cluster.
func TestPeeringVIPsSurviveRestarts(t *testing.T) {
	m := startLinkedMesh(t, nil)
	c1, c2 := m.Cluster("cluster1"), m.Cluster("cluster2")
	z1, z2 := clientOn(t, c1, "node-a"), clientOn(t, c2, "node-a")
	names := []string{"echo", "greeter", "notes", "catalog"}
	before := map[string][]string{}
	for _, n := range names {
		key := globalKey("hello", n)
		waitStateFor(t, z1, peeringWait, key+" with VIPs", func(s *ztunnel.State) bool {
			return len(s.Services[key].GetAddresses()) > 0
		}, func() string { return "none" })
		before[n] = stripNetworks(vips(z1.Services()[key]))
		waitStateFor(t, z2, peeringWait, key+" with the same VIPs in cluster2", func(s *ztunnel.State) bool {
			return slices.Equal(stripNetworks(vips(s.Services[key])), before[n])
		}, func() string { return strings.Join(stripNetworks(vips(z2.Services()[key])), ",") })
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, c := range []*mesh.Cluster{c1, c2} {
		if err := c.Restart(ctx); err != nil {
			t.Fatal(err)
		}
		// The restarted cluster itself, and the other one.
		for _, fresh := range []*ztunnel.Client{clientOn(t, c1, "node-b"), clientOn(t, c2, "node-b")} {
			for _, n := range names {
				key := globalKey("hello", n)
				waitStateFor(t, fresh, peeringWait, key+" VIPs after restarting "+c.Name, func(s *ztunnel.State) bool {
					return slices.Equal(stripNetworks(vips(s.Services[key])), before[n])
				}, func() string {
					return strings.Join(stripNetworks(vips(fresh.Services()[key])), ",") + " want " + strings.Join(before[n], ",")
				})
			}
		}
	}
}

// TestPeeringVIPsNeverMoveOnCollision squeezes the IPv4 VIP range to a /28
// (14 usable addresses for cluster1's 12 global services, so hostnames
// collide): every global service still gets its own VIP, a newcomer never
// takes an existing one, and a restart changes none.
func TestPeeringVIPsNeverMoveOnCollision(t *testing.T) {
	const squeezed = "240.240.0.0/28"
	m := startLinkedMesh(t, func(o *mesh.Options) { o.Args = []string{"--vip-ipv4-range", squeezed} })
	c1, c2 := m.Cluster("cluster1"), m.Cluster("cluster2")
	z := clientOn(t, c1, "node-a")
	waitEndpointClusters(t, z, globalKey("hello", "echo"), "cluster1", "cluster2", "cluster3")
	waitEndpointClusters(t, z, globalKey("shop", "cart"), "cluster1", "cluster2", "cluster3")
	waitEndpointClusters(t, z, globalKey("hello", "greeter"), "cluster2")
	before := globalVIPs(t, z.Services(), squeezed)

	// A new global service in cluster2 arrives while the range is crowded.
	// greeter's Service and Pod under another name and addresses.
	var greeter []string
	for _, doc := range strings.Split(mustManifest(t, c2, "20-hello.yaml"), "---\n") {
		if strings.Contains(doc, "name: greeter") {
			greeter = append(greeter, doc)
		}
	}
	if len(greeter) != 2 {
		t.Fatalf("cluster2's 20-hello.yaml: found %d greeter documents, want its Service and Pod", len(greeter))
	}
	newcomer := strings.NewReplacer("greeter", "newcomer", "10.96.2.25", "10.96.2.26", "10.2.1.25", "10.2.1.26").Replace(strings.Join(greeter, "---\n"))
	if err := c2.WriteManifest("25-newcomer.yaml", newcomer); err != nil {
		t.Fatal(err)
	}
	waitEndpointClusters(t, z, globalKey("hello", "newcomer"), "cluster2")
	after := globalVIPs(t, z.Services(), squeezed)
	for key, vip := range before {
		if after[key] != vip {
			t.Errorf("%s moved from %s to %s when a new service arrived", key, vip, after[key])
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := c1.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	fresh := clientOn(t, c1, "node-b")
	waitEndpointClusters(t, fresh, globalKey("hello", "newcomer"), "cluster2")
	waitEndpointClusters(t, fresh, globalKey("hello", "echo"), "cluster1", "cluster2", "cluster3")
	restarted := globalVIPs(t, fresh.Services(), squeezed)
	for key, vip := range after {
		if restarted[key] != vip {
			t.Errorf("%s moved from %s to %s across a restart", key, vip, restarted[key])
		}
	}
}

// globalVIPs maps each global service to its IPv4 VIP and checks that each
// has one in the range and that no two share it.
func globalVIPs(t *testing.T, services map[string]*workloadpb.Service, ipv4Range string) map[string]string {
	t.Helper()
	r := netip.MustParsePrefix(ipv4Range)
	out, owner := map[string]string{}, map[string]string{}
	for key, s := range services {
		if !strings.HasSuffix(key, "."+globalSuffix) {
			continue
		}
		for _, v := range stripNetworks(vips(s)) {
			ip, err := netip.ParseAddr(v)
			if err != nil || !ip.Is4() {
				continue
			}
			if !r.Contains(ip) {
				t.Errorf("%s VIP %s outside %s", key, ip, r)
			}
			if other, taken := owner[v]; taken {
				t.Errorf("%s and %s share the VIP %s", key, other, v)
			}
			owner[v], out[key] = key, v
		}
		if out[key] == "" {
			t.Errorf("%s has no IPv4 VIP", key)
		}
	}
	return out
}

func mustManifest(t *testing.T, c *mesh.Cluster, name string) string {
	t.Helper()
	s, err := c.ReadManifest(name)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestPeeringUnlinkWithdrawsAtOnce: removing the link Gateway is the
// operator's decision, not a loss: cluster2's services go at once, without
// waiting for the (long) TTL, and come back when the link is written again.
func TestPeeringUnlinkWithdrawsAtOnce(t *testing.T) {
	m := startLinkedMesh(t, func(o *mesh.Options) { o.StaleTTL = 10 * time.Minute })
	c1, c2 := m.Cluster("cluster1"), m.Cluster("cluster2")
	z := clientOn(t, c1, "node-a")
	greeter := globalKey("hello", "greeter")
	waitEndpointClusters(t, z, greeter, "cluster2")

	if err := c1.Unlink(c2); err != nil {
		t.Fatal(err)
	}
	waitStateFor(t, z, peeringWait, greeter+" withdrawn on unlink", func(s *ztunnel.State) bool {
		_, ok := s.Services[greeter]
		return !ok
	}, func() string { return "still held" })
	waitEndpointClusters(t, z, globalKey("hello", "echo"), "cluster1", "cluster3")

	if err := c1.Link(c2, mesh.LinkOptions{}); err != nil {
		t.Fatal(err)
	}
	waitEndpointClusters(t, z, greeter, "cluster2")
}
