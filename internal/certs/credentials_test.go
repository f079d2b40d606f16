package certs

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc/credentials"
)

// peerdID is peerd's identity in trust domain td.
func peerdID(td string) Identity {
	return Identity{TrustDomain: td, Namespace: "istio-system", ServiceAccount: "peerd"}
}

// newCredentials is a peerd in trust domain td whose CA is dir.
func newCredentials(t *testing.T, dir, td string, now func() time.Time) (*Authority, *Credentials) {
	t.Helper()
	a, reg := newAuthority(t, dir, now)
	c, err := NewCredentials(a, CredentialsOptions{
		Identity:   peerdID(td),
		SANs:       []string{"peerd.istio-system.svc", "127.0.0.1"},
		Registerer: reg,
	})
	if err != nil {
		t.Fatalf("NewCredentials: %v", err)
	}
	return a, c
}

// mtlsResult is what both ends of one handshake saw.
type mtlsResult struct {
	clientErr error // dial, or the first read (TLS 1.3 reports a refused client certificate there)
	serverErr error
	server    tls.ConnectionState // after the server's handshake
	client    tls.ConnectionState
}

// mtls runs one TLS connection over loopback.
func mtls(t *testing.T, server, client *tls.Config) mtlsResult {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", server)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var res mtlsResult
	done := make(chan struct{})
	go func() {
		defer close(done)
		conn, err := ln.Accept()
		if err != nil {
			res.serverErr = err
			return
		}
		defer conn.Close()
		tc := conn.(*tls.Conn)
		tc.SetDeadline(time.Now().Add(10 * time.Second))
		if res.serverErr = tc.Handshake(); res.serverErr == nil {
			res.server = tc.ConnectionState()
			io.WriteString(conn, "hello")
		}
	}()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", ln.Addr().String(), client)
	if err == nil {
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		res.client = conn.ConnectionState()
		var b []byte
		if b, err = io.ReadAll(conn); err == nil && string(b) != "hello" {
			err = errors.New("no greeting")
		}
		conn.Close()
	}
	res.clientErr = err
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("server goroutine did not finish")
	}
	return res
}

func TestIdentityCertificate(t *testing.T) {
	mesh := genMesh(t, "a")
	a, c := newCredentials(t, caDir(t, mesh, "a"), "cluster1.local", func() time.Time { return t0 })
	cert, err := c.Certificate()
	if err != nil {
		t.Fatal(err)
	}
	leaf := cert.Leaf
	if id, err := CertificateIdentity(leaf); err != nil || id != peerdID("cluster1.local") {
		t.Errorf("identity = %v, %v; want %s", id, err, peerdID("cluster1.local"))
	}
	if !slices.Equal(leaf.DNSNames, []string{"peerd.istio-system.svc"}) || len(leaf.IPAddresses) != 1 || !leaf.IPAddresses[0].Equal(net.ParseIP("127.0.0.1")) {
		t.Errorf("SANs = %v %v, want the listener's DNS name and IP", leaf.DNSNames, leaf.IPAddresses)
	}
	if !slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
		t.Errorf("ExtKeyUsage = %v, want ServerAuth and ClientAuth", leaf.ExtKeyUsage)
	}
	if got := leaf.NotAfter.Sub(t0); got != DefaultLeafTTL {
		t.Errorf("lifetime = %s, want %s", got, DefaultLeafTTL)
	}
	if err := verifyChain(*cert, a.CA().Roots(), "peerd.istio-system.svc", t0); err != nil {
		t.Errorf("leaf + cert-chain.pem does not verify to the root: %v", err)
	}

	if _, err := NewCredentials(a, CredentialsOptions{Identity: Identity{TrustDomain: "Bad", Namespace: "x", ServiceAccount: "y"}}); err == nil ||
		!strings.Contains(err.Error(), "peerd identity") {
		t.Errorf("NewCredentials with a bad trust domain: err = %v", err)
	}
}

// TestIdentityRotation: the leaf is re-minted at two thirds of its life,
// and at once when the CA is replaced.
func TestIdentityRotation(t *testing.T) {
	mesh := genMesh(t, "a", "b")
	dir := caDir(t, mesh, "a")
	clock := &fakeClock{t: t0}
	a, _ := newAuthority(t, dir, clock.Now)
	c, err := NewCredentials(a, CredentialsOptions{Identity: peerdID("c.local"), TTL: 3 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	get := func() *x509.Certificate {
		t.Helper()
		cert, err := c.Certificate()
		if err != nil {
			t.Fatal(err)
		}
		return cert.Leaf
	}
	first := get()
	clock.Set(t0.Add(2*time.Hour - time.Second))
	if !get().Equal(first) {
		t.Fatal("re-minted before two thirds of the lifetime")
	}
	clock.Set(t0.Add(2 * time.Hour))
	second := get()
	if second.Equal(first) || !second.NotAfter.Equal(t0.Add(5*time.Hour)) {
		t.Fatalf("at two thirds: NotAfter %s, want a new leaf until now+3h", second.NotAfter)
	}

	install(t, dir, mesh, "b")
	if err := a.Reload(); err != nil {
		t.Fatal(err)
	}
	third := get()
	if third.Equal(second) || third.Issuer.String() != intermediateOf(t, mesh, "b") {
		t.Fatalf("after the CA reload the leaf is issued by %s, want the new intermediate %s", third.Issuer, intermediateOf(t, mesh, "b"))
	}
}

func TestPeerLinkHandshakes(t *testing.T) {
	mesh, other := genMesh(t, "c1", "c2"), genMesh(t, "x")
	now := func() time.Time { return time.Now() }
	_, server := newCredentials(t, caDir(t, mesh, "c1"), "cluster1.local", now)
	_, peer := newCredentials(t, caDir(t, mesh, "c2"), "cluster2.local", now)
	_, stranger := newCredentials(t, caDir(t, other, "x"), "cluster1.local", now)
	// A workload of cluster1 under the same root (its certificate has the
	// server usage, as Istio's workload certificates do), not peerd.
	workloadCA, reg := newAuthority(t, caDir(t, mesh, "c1"), now)
	workload, err := NewCredentials(workloadCA, CredentialsOptions{
		Identity:   Identity{TrustDomain: "cluster1.local", Namespace: "hello", ServiceAccount: "default"},
		SANs:       []string{"127.0.0.1"},
		Registerer: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	ztunnel, err := ClientTLSConfig(filepath.Join(mesh, RootCertFile), "peerd.istio-system.svc")
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name         string
		server       *Credentials
		client       *tls.Config
		wantClient   string // substring of the client's error; empty: success
		wantServerID string // the identity the server verified; empty: none
		counted      [2]string
		counter      *Credentials
	}{
		{name: "peer with the expected trust domain", server: server, client: peer.PeerClientTLS("cluster1.local", false),
			wantServerID: "spiffe://cluster2.local/ns/istio-system/sa/peerd"},
		{name: "wrong trust domain is refused by the client", server: server, client: peer.PeerClientTLS("cluster3.local", false),
			wantClient: "peer certificate: trust domain cluster1.local, link expects cluster3.local", counted: [2]string{"client", ReasonTrustDomain}, counter: peer},
		{name: "skip accepts any trust domain", server: server, client: peer.PeerClientTLS("cluster3.local", true),
			wantServerID: "spiffe://cluster2.local/ns/istio-system/sa/peerd"},
		{name: "server under another root is refused", server: stranger, client: peer.PeerClientTLS("cluster1.local", false),
			wantClient: "not trusted by the roots in force", counted: [2]string{"client", ReasonUnknownAuthority}, counter: peer},
		{name: "client under another root is refused at the handshake", server: server, client: presenting(t, stranger),
			wantClient: "unknown certificate authority", counted: [2]string{"server", ReasonUnknownAuthority}, counter: server},
		{name: "ztunnel without a client certificate", server: server, client: ztunnel},
		{name: "a workload posing as the peer is refused by the link", server: workload, client: peer.PeerClientTLS("cluster1.local", false),
			wantClient: "spiffe://cluster1.local/ns/hello/sa/default is not a peerd identity", counted: [2]string{"client", ReasonNotPeerd}, counter: peer},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var before float64
			if tc.counter != nil {
				before = testutil.ToFloat64(tc.counter.rejected.WithLabelValues(tc.counted[0], tc.counted[1]))
			}
			// The server side as gRPC runs it, so that its refusals are
			// logged and counted.
			res := mtlsGRPC(t, tc.server, tc.client)
			switch {
			case tc.wantClient == "" && res.clientErr != nil:
				t.Fatalf("client: %v (server: %v)", res.clientErr, res.serverErr)
			case tc.wantClient != "" && (res.clientErr == nil || !strings.Contains(res.clientErr.Error(), tc.wantClient)):
				t.Fatalf("client err = %v, want %q", res.clientErr, tc.wantClient)
			}
			if tc.wantClient == "" {
				var got string
				if chains := res.server.VerifiedChains; len(chains) > 0 {
					got = describe(chains[0][0])
				}
				if got != tc.wantServerID {
					t.Errorf("server verified %q, want %q", got, tc.wantServerID)
				}
			}
			if tc.counter != nil {
				if got := testutil.ToFloat64(tc.counter.rejected.WithLabelValues(tc.counted[0], tc.counted[1])); got != before+1 {
					t.Errorf("peerd_tls_rejections_total{side=%s,reason=%s} = %v, want %v", tc.counted[0], tc.counted[1], got, before+1)
				}
			}
		})
	}
}

// presenting is a client that presents c's certificate and accepts any
// server: only the server's verification is under test.
func presenting(t *testing.T, c *Credentials) *tls.Config {
	t.Helper()
	cert, err := c.Certificate()
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{*cert}}
}

// mtlsGRPC is mtls with the server's handshake run through
// ServerCredentials, as the gRPC listener runs it.
func mtlsGRPC(t *testing.T, server *Credentials, client *tls.Config) mtlsResult {
	t.Helper()
	creds := server.ServerCredentials()
	client = client.Clone()
	client.NextProtos = []string{"h2"} // gRPC's server insists on ALPN, as gRPC clients offer it
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var res mtlsResult
	done := make(chan struct{})
	go func() {
		defer close(done)
		raw, err := ln.Accept()
		if err != nil {
			res.serverErr = err
			return
		}
		raw.SetDeadline(time.Now().Add(10 * time.Second))
		conn, info, err := creds.ServerHandshake(raw)
		if res.serverErr = err; err != nil {
			raw.Close()
			return
		}
		defer conn.Close()
		res.server = info.(credentials.TLSInfo).State
		io.WriteString(conn, "hello")
	}()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", ln.Addr().String(), client)
	if err == nil {
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		res.client = conn.ConnectionState()
		var b []byte
		if b, err = io.ReadAll(conn); err == nil && string(b) != "hello" {
			err = errors.New("no greeting")
		}
		conn.Close()
	}
	res.clientErr = err
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("server goroutine did not finish")
	}
	return res
}

// TestRootRotationBundle: while root-cert.pem holds the old and the new
// root, peers under either are trusted both ways; once the old root is
// dropped, its peers are refused.
func TestRootRotationBundle(t *testing.T) {
	oldMesh, newMesh := genMesh(t, "c1"), genMesh(t, "c2")
	now := func() time.Time { return time.Now() }
	dir1, dir2 := caDir(t, oldMesh, "c1"), caDir(t, newMesh, "c2")
	bundleRoots(t, dir1, oldMesh, newMesh)
	bundleRoots(t, dir2, newMesh, oldMesh)
	a1, c1 := newCredentials(t, dir1, "cluster1.local", now)
	_, c2 := newCredentials(t, dir2, "cluster2.local", now)

	if res := mtls(t, c1.ServerTLSConfig(), c2.PeerClientTLS("cluster1.local", false)); res.clientErr != nil || len(res.server.VerifiedChains) == 0 {
		t.Fatalf("new-root peer to old-root server during the rotation: %v (server verified %d chains)", res.clientErr, len(res.server.VerifiedChains))
	}
	if res := mtls(t, c2.ServerTLSConfig(), c1.PeerClientTLS("cluster2.local", false)); res.clientErr != nil || len(res.server.VerifiedChains) == 0 {
		t.Fatalf("old-root peer to new-root server during the rotation: %v", res.clientErr)
	}

	// Dropping the old root while cert-chain.pem still leads to it is
	// refused: the CA in force stays.
	bundleRoots(t, dir1, newMesh)
	if err := a1.Reload(); err == nil {
		t.Fatal("root-cert.pem without the root of cert-chain.pem: want the reload refused")
	}
	bundleRoots(t, dir1, oldMesh, newMesh)
	if err := a1.Reload(); err != nil {
		t.Fatal(err)
	}
	// Cluster 1 gets an intermediate under the new root and keeps trusting
	// both. A peer still under the old root only is still let in...
	install(t, dir1, newMesh, "c2")
	bundleRoots(t, dir1, oldMesh, newMesh)
	if err := a1.Reload(); err != nil {
		t.Fatal(err)
	}
	if res := mtls(t, c1.ServerTLSConfig(), c2.PeerClientTLS("cluster1.local", false)); res.clientErr != nil {
		t.Fatalf("after cluster 1 moved to the new root: %v", res.clientErr)
	}
	_, c3 := newCredentials(t, caDir(t, oldMesh, "c1"), "cluster3.local", now)
	if res := mtls(t, c1.ServerTLSConfig(), presenting(t, c3)); res.serverErr != nil {
		t.Fatalf("an old-root client during the rotation: %v", res.serverErr)
	}
	// ...and refused once the rotation ends with the old root dropped.
	bundleRoots(t, dir1, newMesh)
	if err := a1.Reload(); err != nil {
		t.Fatal(err)
	}
	if res := mtls(t, c1.ServerTLSConfig(), presenting(t, c3)); res.serverErr == nil || !strings.Contains(res.serverErr.Error(), "unknown authority") {
		t.Fatalf("an old-root client after the rotation: server err = %v, want unknown authority", res.serverErr)
	}
	// A peer that trusts only the old root refuses cluster 1 now.
	if res := mtls(t, c1.ServerTLSConfig(), c3.PeerClientTLS("cluster1.local", false)); res.clientErr == nil || !strings.Contains(res.clientErr.Error(), "unknown authority") {
		t.Fatalf("a peer trusting only the old root: err = %v, want unknown authority", res.clientErr)
	}
}

func TestServerUsesCAInForce(t *testing.T) {
	mesh := genMesh(t, "a", "b")
	dir := caDir(t, mesh, "a")
	now := func() time.Time { return time.Now() }
	a, server := newCredentials(t, dir, "cluster1.local", now)
	_, peer := newCredentials(t, caDir(t, mesh, "b"), "cluster2.local", now)
	cfg := server.ServerTLSConfig() // taken once, as the listener does
	issuer := func() string {
		t.Helper()
		res := mtls(t, cfg, peer.PeerClientTLS("cluster1.local", false))
		if res.clientErr != nil {
			t.Fatal(res.clientErr)
		}
		if res.client.NegotiatedProtocol != "" {
			t.Errorf("ALPN %q negotiated with a client that offered none", res.client.NegotiatedProtocol)
		}
		return res.client.PeerCertificates[0].Issuer.String()
	}
	if got := issuer(); got != intermediateOf(t, mesh, "a") {
		t.Fatalf("issuer %s, want a", got)
	}
	install(t, dir, mesh, "b")
	if err := a.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := issuer(); got != intermediateOf(t, mesh, "b") {
		t.Fatalf("after the reload the next handshake's leaf is issued by %s, want b", got)
	}
}

func TestServerLogsRefusedClient(t *testing.T) {
	mesh, other := genMesh(t, "c1"), genMesh(t, "x")
	now := func() time.Time { return time.Now() }
	a, _ := newAuthority(t, caDir(t, mesh, "c1"), now)
	core, logs := observer.New(zapcore.InfoLevel)
	server, err := NewCredentials(a, CredentialsOptions{Identity: peerdID("cluster1.local"), SANs: []string{"x"}, Logger: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	_, stranger := newCredentials(t, caDir(t, other, "x"), "cluster9.local", now)
	if res := mtlsGRPC(t, server, presenting(t, stranger)); res.serverErr == nil {
		t.Fatal("the server accepted a client certificate under another root")
	}
	entries := logs.FilterMessage("refused a client certificate on the TLS listener").All()
	if len(entries) != 1 {
		t.Fatalf("logged %d refusals, want 1: %v", len(entries), logs.All())
	}
	fields := entries[0].ContextMap()
	if fields["reason"] != ReasonUnknownAuthority || fields["presented"] != "spiffe://cluster9.local/ns/istio-system/sa/peerd" {
		t.Errorf("log fields = %v, want the reason and the presented identity", fields)
	}
}
