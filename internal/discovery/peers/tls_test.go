package peers

import (
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/peerd-mesh/peerd/internal/certs"
	"github.com/peerd-mesh/peerd/internal/federation"
)

// A peer whose certificate does not chain to the root the link trusts is
// rejected (reason tls), counted, reported to the index, and contributes
// nothing; with the right root the same peer syncs. Real TLS on loopback,
// the real xDS client.
func TestTLSRejection(t *testing.T) {
	meshes := t.TempDir()
	for _, mesh := range []string{"ours", "theirs"} {
		if _, err := certs.GenerateMesh(filepath.Join(meshes, mesh), []string{"cluster2"}, certs.MeshOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	ca, err := certs.LoadCA(filepath.Join(meshes, "ours", "cluster2"))
	if err != nil {
		t.Fatal(err)
	}
	serverTLS, err := ca.ServerTLSConfig([]string{"peerd.cluster2"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	p := newPeer(t, grpc.Creds(credentials.NewTLS(serverTLS)))
	p.set(svc("apps", "echo", 2))

	tests := []struct {
		name      string
		root      string
		wantState State
	}{
		{"root of the peer's mesh", "ours", StateSynced},
		{"root of another mesh", "theirs", StateRejected},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clientTLS, err := certs.ClientTLSConfig(filepath.Join(meshes, tc.root, certs.RootCertFile), "peerd.cluster2")
			if err != nil {
				t.Fatal(err)
			}
			e := newEnv(t, envOpts{credentials: func(federation.Link) credentials.TransportCredentials {
				return credentials.NewTLS(clientTLS)
			}})
			e.run()
			e.m.Sync([]*gatewayv1.Gateway{remoteGateway("cluster2", p.port())})
			st := e.waitState("cluster2", tc.wantState)
			if tc.wantState == StateSynced {
				e.waitImported("cluster2", map[string]uint32{"apps/echo": 2})
				return
			}
			if st.Reason != ReasonTLS || st.Rejections[ReasonTLS] < 1 || st.Services != 0 {
				t.Errorf("status = %+v, want rejected for tls, counted, no services", st)
			}
			if got := e.imported("cluster2"); len(got) != 0 {
				t.Errorf("a rejected peer contributed %v", got)
			}
			if errs := e.index.Errors(); len(errs) != 1 || !containsAll(errs[0].Error(), "peer link cluster2", "rejected (tls)", "x509") {
				t.Errorf("index.Errors() = %v", errs)
			}
		})
	}
}

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}
