package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/peerd-mesh/peerd/internal/certs"
	"github.com/peerd-mesh/peerd/internal/federation"
	kubeharness "github.com/peerd-mesh/peerd/test/kube"
	"github.com/peerd-mesh/peerd/test/ztunnel"
)

// serviceAccountToken creates the service account istio-system/name if
// needed and returns a token for it from the TokenRequest API, as the
// kubelet mounts one into ztunnel's pod.
func serviceAccountToken(t *testing.T, ctx context.Context, kube *kubeharness.Cluster, name string, audiences ...string) string {
	t.Helper()
	sas := kube.Kube.CoreV1().ServiceAccounts("istio-system")
	if _, err := sas.Get(ctx, name, metav1.GetOptions{}); err != nil {
		if _, err := sas.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
			t.Fatalf("service account istio-system/%s: %v", name, err)
		}
	}
	tr, err := sas.CreateToken(ctx, name, &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{Audiences: audiences}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest for istio-system/%s %v: %v", name, audiences, err)
	}
	return tr.Status.Token
}

// TestKubernetesModeAuthenticatesZtunnelTokens runs peerd in Kubernetes mode
// with its TLS listener against a real API server, and real service-account
// tokens from the TokenRequest API: only a token valid for istio-ca gets
// ztunnel's types, a peer's certificate still needs no token, and a client
// retrying a bad token costs the API server a handful of TokenReviews.
func TestKubernetesModeAuthenticatesZtunnelTokens(t *testing.T) {
	kube := kubeharness.Start(t, kubeharness.Options{GatewayCRDs: true})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := kube.ApplyDir(ctx, copyDir(t, repoPath("examples", "cluster1"))); err != nil {
		t.Fatal(err)
	}
	pki := peerdCerts(t, "cluster1,cluster2")
	listen := freePort(t)
	p := startPeerd(t, peerdOptions{Args: []string{
		"--cluster-name", cluster, "--kubeconfig", kube.Kubeconfig,
		"--ca-dir", filepath.Join(pki, "cluster1"), "--listen", listen,
	}})

	good := serviceAccountToken(t, ctx, kube, "ztunnel", "istio-ca")
	wrongAudience := serviceAccountToken(t, ctx, kube, "ztunnel", "not-istio")
	deleted := serviceAccountToken(t, ctx, kube, "gone", "istio-ca")
	if err := kube.Kube.CoreV1().ServiceAccounts("istio-system").Delete(ctx, "gone", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// The API server's authenticator reads service accounts through an
	// informer: until it has seen the deletion, the token still passes.
	waitFor(t, "the API server to refuse the deleted service account's token", func() bool {
		return !reviewedAuthenticated(t, ctx, kube, deleted)
	})

	tlsConfig, err := certs.ClientTLSConfig(filepath.Join(pki, "root-cert.pem"), "istiod.istio-system.svc")
	if err != nil {
		t.Fatal(err)
	}
	// Each client stops with its subtest: one retrying in the background
	// would add refusals and reviews to the later subtests' counts.
	ztunnelWith := func(t *testing.T, token string) *ztunnel.Client {
		return ztunnel.Start(t, ztunnel.Config{
			Target:      listen,
			ClusterID:   cluster,
			Token:       token,
			DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(tlsConfig))},
			// Refused clients back off slowly, as ztunnel does.
			InitialBackoff: 500 * time.Millisecond,
		})
	}
	refused := func(t *testing.T, token, reason string, message ...string) {
		t.Helper()
		z := ztunnelWith(t, token)
		waitState(t, z, "the refusal", func(s *ztunnel.State) bool { return s.LastError != "" })
		st := z.Stats()
		t.Logf("refused: %s", st.LastError)
		if st.Responses != 0 {
			t.Errorf("a refused client received %d responses", st.Responses)
		}
		for _, m := range append([]string{"code = Unauthenticated"}, message...) {
			if !strings.Contains(st.LastError, m) {
				t.Errorf("stream ended with %q, want it to contain %q", st.LastError, m)
			}
		}
		waitFor(t, "the refusal counted with reason "+reason, func() bool {
			v, _ := p.metric(t, "peerd_xds_requests_denied_total", `reason="`+reason+`"`, `identity="anonymous"`)
			return v >= 1
		})
	}

	t.Run("no token", func(t *testing.T) {
		refused(t, "", "no_token", "no bearer token in the authorization metadata", "audience istio-ca")
	})
	t.Run("a bearer value that is no JWT costs no review", func(t *testing.T) {
		before, _ := p.metric(t, "peerd_token_reviews_total")
		refused(t, "not-a-token", "malformed_token", "the bearer token is not a JWT", "audience istio-ca")
		if after, _ := p.metric(t, "peerd_token_reviews_total"); after != before {
			t.Errorf("peerd_token_reviews_total went from %v to %v for a value that is no JWT", before, after)
		}
	})
	t.Run("token for another audience", func(t *testing.T) {
		refused(t, wrongAudience, "invalid_token", "refused by the Kubernetes TokenReview API for audience istio-ca")
	})
	t.Run("token of a deleted service account", func(t *testing.T) {
		refused(t, deleted, "invalid_token", "refused by the Kubernetes TokenReview API")
	})
	t.Run("a real ztunnel token gets the mesh", func(t *testing.T) {
		z := ztunnelWith(t, good)
		waitState(t, z, "the mesh", func(s *ztunnel.State) bool { return s.Ready && len(s.Workloads) > 0 && len(s.Services) > 0 })
		if v, _ := p.metric(t, "peerd_token_reviews_total", `result="authenticated"`); v != 1 {
			t.Errorf("peerd_token_reviews_total{result=authenticated} = %v, want 1 (both types of the stream share one review)", v)
		}
	})
	t.Run("peerd view with --token-file", func(t *testing.T) {
		tokenFile := filepath.Join(t.TempDir(), "token")
		if err := os.WriteFile(tokenFile, []byte(good+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		viewArgs := []string{"view", "services", "--addr", listen, "--tls", "--root-cert", filepath.Join(pki, "root-cert.pem"),
			"--server-name", "istiod.istio-system.svc", "--timeout", "20s"}
		out, err := exec.Command(peerdBinary, append(viewArgs, "--token-file", tokenFile)...).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "kubernetes.default.svc.cluster.local") {
			t.Fatalf("peerd view with a token: %v\n%s", err, out)
		}
		out, err = exec.Command(peerdBinary, viewArgs...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "no bearer token") {
			t.Fatalf("peerd view without a token: %v, want the refusal\n%s", err, out)
		}
	})
	t.Run("a peer's certificate needs no token", func(t *testing.T) {
		authority, err := certs.NewAuthority(filepath.Join(pki, "cluster2"), certs.AuthorityOptions{Resync: -1})
		if err != nil {
			t.Fatal(err)
		}
		peer, err := certs.NewCredentials(authority, certs.CredentialsOptions{
			Identity: certs.Identity{TrustDomain: "cluster2.local", Namespace: "istio-system", ServiceAccount: "peerd"},
		})
		if err != nil {
			t.Fatal(err)
		}
		resp, err := firstResponse(ctx, listen, federation.TypeURL, peer.PeerClientTLS("", true), nil)
		if err != nil || resp.GetTypeUrl() != federation.TypeURL {
			t.Fatalf("a peer without a token: %v, %v; want the federation type answered", resp, err)
		}
	})
	t.Run("retries of a bad token cost few reviews", func(t *testing.T) {
		before, _ := p.metric(t, "peerd_token_reviews_total", `result="unauthenticated"`)
		deniedBefore, _ := p.metric(t, "peerd_xds_requests_denied_total", `reason="invalid_token"`)
		const n = 50
		md := metadata.Pairs("authorization", "Bearer "+wrongAudience)
		start := time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for range n {
			wg.Go(func() {
				_, err := firstResponse(ctx, listen, ztunnel.AddressTypeURL, tlsConfig, md)
				if status.Code(err) != codes.Unauthenticated {
					errs <- fmt.Errorf("stream ended with %v, want Unauthenticated", err)
				}
			})
		}
		wg.Wait()
		elapsed := time.Since(start)
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		waitFor(t, fmt.Sprintf("%d more refusals with reason invalid_token", n), func() bool {
			v, _ := p.metric(t, "peerd_xds_requests_denied_total", `reason="invalid_token"`)
			return v >= deniedBefore+n
		})
		after, _ := p.metric(t, "peerd_token_reviews_total", `result="unauthenticated"`)
		// A refused token is cached for 5s: one review per 5s started, and
		// never one per try.
		allowed := 1 + float64(elapsed/(5*time.Second))
		if reviews := after - before; reviews > allowed || reviews >= n {
			t.Fatalf("%d refused streams in %v caused %v TokenReviews, want at most %v", n, elapsed, reviews, allowed)
		}
	})
}

// reviewedAuthenticated asks the API server itself whether token is valid
// for istio-ca.
func reviewedAuthenticated(t *testing.T, ctx context.Context, kube *kubeharness.Cluster, token string) bool {
	t.Helper()
	r, err := kube.Kube.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: []string{"istio-ca"}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return r.Status.Authenticated
}

// firstResponse opens one delta stream over TLS with md as its metadata,
// subscribes to typeURL, and returns the first response or the status that
// ended the stream.
func firstResponse(ctx context.Context, target, typeURL string, cfg *tls.Config, md metadata.MD) (*discovery.DeltaDiscoveryResponse, error) {
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, waitTimeout)
	defer cancel()
	if md != nil {
		ctx = metadata.NewOutgoingContext(ctx, md)
	}
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		return nil, err
	}
	if err := stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: typeURL}); err != nil {
		_, err = stream.Recv() // the status is delivered to Recv
		return nil, err
	}
	return stream.Recv()
}
