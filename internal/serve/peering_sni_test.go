package serve

import (
	"context"
	"crypto/tls"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/peerd-mesh/peerd/internal/certs"
	"github.com/peerd-mesh/peerd/internal/federation"
)

// A link dialling a gateway by IP still sends peerd.<system namespace>.svc
// as SNI, the name the east-west gateway's TLSRoute (deploy/peerd) routes
// to peerd on, and the handshake with the peer completes.
func TestPeerLinksSendThePeerdServiceAsSNI(t *testing.T) {
	dir := t.TempDir()
	if _, err := certs.GenerateMesh(dir, []string{"cluster1"}, certs.MeshOptions{}); err != nil {
		t.Fatal(err)
	}
	authority, err := certs.NewAuthority(filepath.Join(dir, "cluster1"), certs.AuthorityOptions{})
	if err != nil {
		t.Fatal(err)
	}
	opts := DefaultOptions()
	opts.SystemNamespace = "mesh-system"
	identity, err := certs.NewCredentials(authority, certs.CredentialsOptions{Identity: opts.identity(), SANs: opts.sans()})
	if err != nil {
		t.Fatal(err)
	}

	client, server := net.Pipe()
	defer client.Close()
	sni := make(chan string, 1)
	srv := identity.ServerTLSConfig()
	outer := &tls.Config{GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		sni <- hello.ServerName
		return srv.GetConfigForClient(hello)
	}}
	done := make(chan error, 1)
	go func() {
		defer server.Close()
		done <- tls.Server(server, outer).Handshake()
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	link := federation.Link{Gateway: "istio-gateways/cluster2", Cluster: "cluster2", Addresses: []string{"192.0.2.10"}}
	if _, _, err := peerCredentials(opts, identity)(link).ClientHandshake(ctx, "192.0.2.10:15012", client); err != nil {
		t.Fatalf("link handshake: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("peer handshake: %v", err)
	}
	if got, want := <-sni, federation.PeerServerName("mesh-system"); got != want || want != "peerd.mesh-system.svc" {
		t.Errorf("SNI %q, want %q (peerd.mesh-system.svc)", got, want)
	}
}
