package authz_test

import (
	"context"
	"crypto/tls"
	"github.com/peerd-mesh/peerd/internal/federation"
	"maps"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/peerd-mesh/peerd/internal/authz"
	"github.com/peerd-mesh/peerd/internal/certs"
	"github.com/peerd-mesh/peerd/internal/xds"
	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
	federationpb "github.com/peerd-mesh/peerd/proto/peerd/federation/v1"
	"github.com/peerd-mesh/peerd/test/ztunnel"
)

const waitTimeout = 10 * time.Second

var policy = authz.Policy{SystemNamespace: "istio-system", ServiceAccount: "peerd"}

// meshes are two PKIs: the mesh (clusters c1..c3 under one root) and a
// stranger's.
type meshes struct{ mesh, other string }

func newMeshes(t *testing.T) meshes {
	t.Helper()
	m := meshes{mesh: t.TempDir(), other: t.TempDir()}
	if _, err := certs.GenerateMesh(m.mesh, []string{"c1", "c2", "c3"}, certs.MeshOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := certs.GenerateMesh(m.other, []string{"x"}, certs.MeshOptions{}); err != nil {
		t.Fatal(err)
	}
	return m
}

// install copies cluster's cacerts files from mesh into dir, each through
// a rename.
func install(t *testing.T, dir, mesh, cluster string) {
	t.Helper()
	for _, f := range []string{certs.RootCertFile, certs.CACertFile, certs.CAKeyFile, certs.CertChainFile} {
		b, err := os.ReadFile(filepath.Join(mesh, cluster, f))
		if err != nil {
			t.Fatal(err)
		}
		tmp := filepath.Join(dir, "."+f+".tmp")
		if err := os.WriteFile(tmp, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
}

// identity is a peerd-like process: its own copy of a cluster's CA and
// credentials for id.
func identity(t *testing.T, mesh, cluster string, id certs.Identity) (*certs.Authority, *certs.Credentials, string) {
	t.Helper()
	return identityWith(t, mesh, cluster, id, nil)
}

// identityWith is identity with the credentials' metrics in reg.
func identityWith(t *testing.T, mesh, cluster string, id certs.Identity, reg prometheus.Registerer) (*certs.Authority, *certs.Credentials, string) {
	t.Helper()
	dir := t.TempDir()
	install(t, dir, mesh, cluster)
	a, err := certs.NewAuthority(dir, certs.AuthorityOptions{Resync: -1})
	if err != nil {
		t.Fatal(err)
	}
	c, err := certs.NewCredentials(a, certs.CredentialsOptions{Identity: id, SANs: []string{"peerd.istio-system.svc", "127.0.0.1"}, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	return a, c, dir
}

func peerdIn(td string) certs.Identity {
	return certs.Identity{TrustDomain: td, Namespace: "istio-system", ServiceAccount: "peerd"}
}

// server is peerd's TLS listener: the real xds.Server behind the real
// credentials and policy, on loopback.
type server struct {
	addr      string
	authority *certs.Authority
	creds     *certs.Credentials
	dir       string
	addrs     *xds.Cache
	fed       *xds.Cache
	reg       *prometheus.Registry
	srv       *xds.Server
}

func newServer(t *testing.T, m meshes) *server {
	t.Helper()
	return newServerWith(t, m, policy)
}

// newServerWith is newServer with another policy.
func newServerWith(t *testing.T, m meshes, p authz.Policy) *server {
	t.Helper()
	s := &server{addrs: xds.NewCache(xds.AddressTypeURL), fed: xds.NewCache(federation.TypeURL), reg: prometheus.NewRegistry()}
	s.authority, s.creds, s.dir = identityWith(t, m.mesh, "c1", peerdIn("cluster1.local"), s.reg)
	s.addrs.Replace([]xds.Resource{{Name: "c1//Pod/default/a", Message: &workloadpb.Address{Type: &workloadpb.Address_Workload{
		Workload: &workloadpb.Workload{Uid: "c1//Pod/default/a", Name: "a", Namespace: "default"}}}}})
	s.fed.Replace([]xds.Resource{federated("echo", 1)})
	s.srv = xds.NewServer(xds.ServerOptions{Registerer: s.reg, Authorize: p.Authorize}, s.addrs, s.fed)
	g := grpc.NewServer(xds.ServerCodec(), grpc.Creds(s.creds.ServerCredentials()))
	s.srv.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.addr = lis.Addr().String()
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	return s
}

func federated(name string, capacity uint32) xds.Resource {
	return xds.Resource{Name: "hello/" + name, Message: &federationpb.FederatedService{Name: name, Namespace: "hello", Capacity: capacity}}
}

func (s *server) denied(typ, identity, reason string) float64 {
	return s.counter("peerd_xds_requests_denied_total", map[string]string{"type": typ, "identity": identity, "reason": reason})
}

// counter is the value of the series of name with exactly labels.
func (s *server) counter(name string, want map[string]string) float64 {
	m, err := s.reg.Gather()
	if err != nil {
		panic(err)
	}
	for _, f := range m {
		if f.GetName() != name {
			continue
		}
		for _, metric := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range metric.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if maps.Equal(labels, want) {
				return metric.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// stream is one delta ADS stream of a client.
type stream struct {
	t  *testing.T
	ds discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
}

func dial(t *testing.T, addr string, cfg *tls.Config) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func open(t *testing.T, conn *grpc.ClientConn, typeURL string) *stream {
	t.Helper()
	s, err := tryOpen(t, conn, typeURL)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// tryOpen opens a stream and sends the first request; a connection that
// fails its handshake fails here.
func tryOpen(t *testing.T, conn *grpc.ClientConn, typeURL string) (*stream, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	t.Cleanup(cancel)
	ds, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		return nil, err
	}
	if err := ds.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: typeURL}); err != nil {
		_, err = ds.Recv() // the status is delivered to Recv
		return nil, err
	}
	return &stream{t: t, ds: ds}, nil
}

// failure is the error that ends a stream that must fail, at opening or
// at its first response.
func failure(t *testing.T, conn *grpc.ClientConn, typeURL string) error {
	t.Helper()
	s, err := tryOpen(t, conn, typeURL)
	if err != nil {
		return err
	}
	if _, err = s.recv(); err == nil {
		t.Fatal("the stream got a response, want it to fail")
	}
	return err
}

// recv returns the next response or the error that ended the stream.
func (s *stream) recv() (*discovery.DeltaDiscoveryResponse, error) {
	s.t.Helper()
	m, err := s.ds.Recv()
	if err == nil {
		if err := s.ds.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: m.GetTypeUrl(), ResponseNonce: m.GetNonce()}); err != nil {
			s.t.Fatal(err)
		}
	}
	return m, err
}

func (s *stream) mustRecv() *discovery.DeltaDiscoveryResponse {
	s.t.Helper()
	m, err := s.recv()
	if err != nil {
		s.t.Fatalf("stream: %v", err)
	}
	return m
}

func (s *stream) mustBeDenied(want string) {
	s.t.Helper()
	_, err := s.recv()
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), want) {
		s.t.Fatalf("stream ended with %v, want PermissionDenied containing %q", err, want)
	}
}

func ztunnelTLS(t *testing.T, m meshes) *tls.Config {
	t.Helper()
	cfg, err := certs.ClientTLSConfig(filepath.Join(m.mesh, certs.RootCertFile), "peerd.istio-system.svc")
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestPolicyOverTLS runs each kind of client against one listener: what a
// ztunnel, a peer, a mesh workload and a stranger may have.
func TestPolicyOverTLS(t *testing.T) {
	m := newMeshes(t)
	s := newServer(t, m)
	_, peerCreds, _ := identity(t, m.mesh, "c2", peerdIn("cluster2.local"))
	_, workload, _ := identity(t, m.mesh, "c2", certs.Identity{TrustDomain: "cluster2.local", Namespace: "hello", ServiceAccount: "default"})
	// A mesh workload dials as a TLS client of the mesh presenting its own
	// certificate (a link would refuse peerd's: it is not the workload's peer).
	workloadTLS := ztunnelTLS(t, m)
	workloadCert, err := workload.Certificate()
	if err != nil {
		t.Fatal(err)
	}
	workloadTLS.Certificates = []tls.Certificate{*workloadCert}
	peerLink := peerCreds.PeerClientTLS("cluster1.local", false)

	t.Run("peer gets federation data", func(t *testing.T) {
		st := open(t, dial(t, s.addr, peerLink), federation.TypeURL)
		if m := st.mustRecv(); len(m.GetResources()) != 1 || m.GetResources()[0].GetName() != "hello/echo" {
			t.Fatalf("federation response = %v, want hello/echo", m)
		}
	})
	t.Run("ztunnel without a certificate gets Address", func(t *testing.T) {
		z := ztunnel.Start(t, ztunnel.Config{
			Target:      s.addr,
			DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(ztunnelTLS(t, m)))},
		})
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		if err := z.WaitFor(ctx, func(st *ztunnel.State) bool { return st.Ready && len(st.Workloads) == 1 }); err != nil {
			t.Fatalf("ztunnel-like client: %v (%+v)", err, z.Stats())
		}
	})
	t.Run("ztunnel without a certificate is denied federation data", func(t *testing.T) {
		open(t, dial(t, s.addr, ztunnelTLS(t, m)), federation.TypeURL).mustBeDenied("presented none that verified")
		if got := s.denied("peerd.federation.v1.FederatedService", authz.Anonymous, authz.ReasonNoClientCertificate); got != 1 {
			t.Errorf("denied{identity=anonymous,reason=no_client_certificate} = %v, want 1", got)
		}
	})
	t.Run("peer identity is denied Address", func(t *testing.T) {
		open(t, dial(t, s.addr, peerLink), xds.AddressTypeURL).mustBeDenied("is a peer's identity")
		if got := s.denied("istio.workload.Address", authz.PeerdIdentity, authz.ReasonPeerIdentity); got != 1 {
			t.Errorf("denied{identity=peerd,reason=peer_identity} = %v, want 1", got)
		}
	})
	t.Run("mesh workload is denied federation data", func(t *testing.T) {
		open(t, dial(t, s.addr, workloadTLS), federation.TypeURL).
			mustBeDenied("this client is spiffe://cluster2.local/ns/hello/sa/default")
		if got := s.denied("peerd.federation.v1.FederatedService", authz.Other, authz.ReasonNotPeerd); got != 1 {
			t.Errorf("denied{identity=other,reason=not_peerd_identity} = %v, want 1", got)
		}
	})
	t.Run("mesh workload with a certificate gets Address", func(t *testing.T) {
		// Not a peer: ztunnel's types are refused to peer identities only
		// (this policy has no token authenticator, as in file mode).
		st := open(t, dial(t, s.addr, workloadTLS), xds.AddressTypeURL)
		if m := st.mustRecv(); len(m.GetResources()) != 1 {
			t.Fatalf("Address response = %v", m)
		}
	})
	t.Run("client certificate under another root is refused at the handshake", func(t *testing.T) {
		_, stranger, _ := identity(t, m.other, "x", peerdIn("cluster1.local"))
		cert, err := stranger.Certificate()
		if err != nil {
			t.Fatal(err)
		}
		// It trusts our server (only the server's check is under test).
		cfg := ztunnelTLS(t, m)
		cfg.Certificates = []tls.Certificate{*cert}
		if err := failure(t, dial(t, s.addr, cfg), federation.TypeURL); status.Code(err) != codes.Unavailable {
			t.Fatalf("stream over a refused handshake: %v, want Unavailable", err)
		}
		// The client may hear of the refusal before the server counts it.
		refused := map[string]string{"side": "server", "reason": certs.ReasonUnknownAuthority}
		for deadline := time.Now().Add(waitTimeout); s.counter("peerd_tls_rejections_total", refused) == 0; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("the refused handshake was not counted")
			}
		}
		if got := s.denied("peerd.federation.v1.FederatedService", authz.Anonymous, authz.ReasonNoClientCertificate); got != 1 {
			t.Errorf("a refused handshake reached the policy: denied = %v", got)
		}
	})
}

// TestCAReloadKeepsLinks: a new intermediate written into the server's
// --ca-dir is used by the next handshake, while a peer's open stream on
// the old connection keeps receiving updates.
func TestCAReloadKeepsLinks(t *testing.T) {
	m := newMeshes(t)
	s := newServer(t, m)
	_, peerCreds, _ := identity(t, m.mesh, "c2", peerdIn("cluster2.local"))
	// link dials with a config that records the issuer of the server's
	// leaf in the handshake.
	link := func() (*grpc.ClientConn, *string) {
		cfg := peerCreds.PeerClientTLS("cluster1.local", false)
		verify := cfg.VerifyConnection
		var issuer string
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			issuer = cs.PeerCertificates[0].Issuer.CommonName
			return verify(cs)
		}
		return dial(t, s.addr, cfg), &issuer
	}
	oldConn, oldIssuer := link()
	old := open(t, oldConn, federation.TypeURL)
	old.mustRecv()
	if got := *oldIssuer; got != "peerd intermediate CA c1" {
		t.Fatalf("first connection's server leaf issued by %q", got)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.authority.Run(ctx) }()
	changed := s.authority.Changed()
	install(t, s.dir, m.mesh, "c3")
	for s.authority.CA().Certificate().Subject.CommonName != "peerd intermediate CA c3" {
		select {
		case <-changed:
			changed = s.authority.Changed()
		case <-time.After(waitTimeout):
			t.Fatal("the server did not pick up the new intermediate")
		}
	}

	freshConn, freshIssuer := link()
	open(t, freshConn, federation.TypeURL).mustRecv()
	if got := *freshIssuer; got != "peerd intermediate CA c3" {
		t.Errorf("a handshake after the reload got a leaf issued by %q, want the new intermediate", got)
	}
	s.fed.Replace([]xds.Resource{federated("echo", 2)})
	m2 := old.mustRecv()
	var fs federationpb.FederatedService
	if len(m2.GetResources()) != 1 || m2.GetResources()[0].GetResource().UnmarshalTo(&fs) != nil || fs.GetCapacity() != 2 {
		t.Fatalf("the stream opened before the reload got %v, want the update", m2)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestWrongTrustDomainRefusedByTheLink: the link's error says exactly why.
func TestWrongTrustDomainRefusedByTheLink(t *testing.T) {
	m := newMeshes(t)
	s := newServer(t, m)
	_, peerCreds, _ := identity(t, m.mesh, "c2", peerdIn("cluster2.local"))
	err := failure(t, dial(t, s.addr, peerCreds.PeerClientTLS("cluster3.local", false)), federation.TypeURL)
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "peer certificate: trust domain cluster1.local, link expects cluster3.local") {
		t.Fatalf("stream: %v, want the trust domain mismatch", err)
	}
	ok := open(t, dial(t, s.addr, peerCreds.PeerClientTLS("cluster3.local", true)), federation.TypeURL)
	ok.mustRecv()
}
