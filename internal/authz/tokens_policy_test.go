package authz_test

import (
	"context"
	"net"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	authnv1 "k8s.io/api/authentication/v1"

	"github.com/peerd-mesh/peerd/internal/authz"
	"github.com/peerd-mesh/peerd/internal/federation"
	"github.com/peerd-mesh/peerd/internal/xds"
	"github.com/peerd-mesh/peerd/test/ztunnel"
)

// tableReviewer accepts the tokens it lists (pure logic: the real
// TokenReview is exercised against a real API server in test/e2e).
type tableReviewer map[string]string

func (r tableReviewer) ReviewToken(_ context.Context, token string, audiences []string) (authnv1.TokenReviewStatus, error) {
	user, ok := r[token]
	if !ok {
		return authnv1.TokenReviewStatus{Error: "invalid bearer token"}, nil
	}
	return authnv1.TokenReviewStatus{Authenticated: true, User: authnv1.UserInfo{Username: user}, Audiences: audiences}, nil
}

// TestPolicyWithTokens: with a token authenticator, ztunnel's types on the
// TLS listener need a token; peers still need only their certificate, and
// the plaintext listener (the same server) asks for nothing.
func TestPolicyWithTokens(t *testing.T) {
	m := newMeshes(t)
	p := policy
	good, bad := authz.FakeJWT(`{"sub":"good"}`), authz.FakeJWT(`{"sub":"bad"}`)
	p.Tokens = authz.NewTokenAuthenticator(tableReviewer{good: "system:serviceaccount:istio-system:ztunnel"}, authz.TokenOptions{})
	s := newServerWith(t, m, p)
	_, peerCreds, _ := identity(t, m.mesh, "c2", peerdIn("cluster2.local"))

	ztunnelOver := func(t *testing.T, target string, token string, creds credentials.TransportCredentials) *ztunnel.Client {
		return ztunnel.Start(t, ztunnel.Config{Target: target, Token: token, DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(creds)}})
	}
	waitState := func(t *testing.T, z *ztunnel.Client, what string, pred func(*ztunnel.State) bool) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		if err := z.WaitFor(ctx, pred); err != nil {
			t.Fatalf("%s: %v (%+v)", what, err, z.Stats())
		}
	}

	t.Run("no token over TLS", func(t *testing.T) {
		z := ztunnelOver(t, s.addr, "", credentials.NewTLS(ztunnelTLS(t, m)))
		waitState(t, z, "refusal", func(st *ztunnel.State) bool { return st.LastError != "" })
		if st := z.Stats(); st.Responses != 0 || !contains(st.LastError, "code = Unauthenticated", "no bearer token in the authorization metadata") {
			t.Fatalf("client got %d responses, last error %q; want none and Unauthenticated", st.Responses, st.LastError)
		}
		if got := s.denied("istio.workload.Address", authz.Anonymous, authz.ReasonNoToken); got < 1 {
			t.Errorf("denied{reason=no_token} = %v, want ≥ 1", got)
		}
	})
	t.Run("bad token over TLS", func(t *testing.T) {
		z := ztunnelOver(t, s.addr, bad, credentials.NewTLS(ztunnelTLS(t, m)))
		waitState(t, z, "refusal", func(st *ztunnel.State) bool { return st.LastError != "" })
		if st := z.Stats(); st.Responses != 0 || !contains(st.LastError, "code = Unauthenticated", "invalid bearer token") {
			t.Fatalf("client got %d responses, last error %q", st.Responses, st.LastError)
		}
	})
	t.Run("a value that is no JWT over TLS", func(t *testing.T) {
		z := ztunnelOver(t, s.addr, "not-a-token", credentials.NewTLS(ztunnelTLS(t, m)))
		waitState(t, z, "refusal", func(st *ztunnel.State) bool { return st.LastError != "" })
		if st := z.Stats(); st.Responses != 0 || !contains(st.LastError, "code = Unauthenticated", "the bearer token is not a JWT") {
			t.Fatalf("client got %d responses, last error %q", st.Responses, st.LastError)
		}
		if got := s.denied("istio.workload.Address", authz.Anonymous, authz.ReasonMalformedToken); got < 1 {
			t.Errorf("denied{reason=malformed_token} = %v, want ≥ 1", got)
		}
	})
	t.Run("good token over TLS", func(t *testing.T) {
		z := ztunnelOver(t, s.addr, good, credentials.NewTLS(ztunnelTLS(t, m)))
		waitState(t, z, "mesh", func(st *ztunnel.State) bool { return st.Ready && len(st.Workloads) == 1 })
	})
	t.Run("peer without a token gets federation data", func(t *testing.T) {
		st := open(t, dial(t, s.addr, peerCreds.PeerClientTLS("cluster1.local", false)), federation.TypeURL)
		if m := st.mustRecv(); len(m.GetResources()) != 1 {
			t.Fatalf("federation response = %v", m)
		}
	})
	t.Run("plaintext listener asks for no token", func(t *testing.T) {
		g := grpc.NewServer(xds.ServerCodec())
		s.srv.Register(g)
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go func() { _ = g.Serve(lis) }()
		t.Cleanup(g.Stop)
		z := ztunnelOver(t, lis.Addr().String(), "", insecure.NewCredentials())
		waitState(t, z, "mesh", func(st *ztunnel.State) bool { return st.Ready && len(st.Workloads) == 1 })
	})
}

func contains(s string, parts ...string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}
