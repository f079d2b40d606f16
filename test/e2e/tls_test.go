package e2e

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/peerd-mesh/peerd/internal/certs"
	"github.com/peerd-mesh/peerd/test/ztunnel"
)

// peerdCerts runs `peerd certs` and returns the output directory.
func peerdCerts(t *testing.T, clusters string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "pki")
	out, err := exec.Command(peerdBinary, "certs", "--out", dir, "--clusters", clusters).CombinedOutput()
	if err != nil {
		t.Fatalf("peerd certs: %v\n%s", err, out)
	}
	return dir
}

func TestTLSListenerServesZtunnelUnderTheMeshRoot(t *testing.T) {
	pki := peerdCerts(t, "cluster1,cluster2")
	listen := freePort(t)
	startPeerd(t, peerdOptions{Args: []string{
		"--cluster-name", cluster, "--config-dir", repoPath("examples", "cluster1"),
		"--ca-dir", filepath.Join(pki, "cluster1"), "--listen", listen,
	}})

	// ztunnel checks the certificate against the mesh root and the URL host.
	tlsConfig, err := certs.ClientTLSConfig(filepath.Join(pki, "root-cert.pem"), "istiod.istio-system.svc")
	if err != nil {
		t.Fatal(err)
	}
	c := connectZtunnel(t, ztunnel.Config{
		Target:      listen,
		ClusterID:   cluster,
		DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(tlsConfig))},
		Headers:     map[string]string{"authorization": "Bearer test-token", "clusterid": cluster},
	})
	if len(c.Workloads()) == 0 {
		t.Fatal("TLS client is ready but holds no workloads")
	}

	// A client that trusts another mesh's root must not get in.
	otherRoot := filepath.Join(peerdCerts(t, "x"), "root-cert.pem")
	wrong, err := certs.ClientTLSConfig(otherRoot, "istiod.istio-system.svc")
	if err != nil {
		t.Fatal(err)
	}
	if err := openDeltaStream(listen, grpc.WithTransportCredentials(credentials.NewTLS(wrong))); err == nil {
		t.Fatal("a client trusting another root completed a stream")
	} else if !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("wrong-root failure does not mention the certificate: %v", err)
	}
}

func TestCADirFromAnotherRootIsRejectedAtStart(t *testing.T) {
	a, b := peerdCerts(t, "cluster1"), peerdCerts(t, "cluster1")
	// An intermediate whose declared root is not the one that signed it.
	dir := copyDir(t, filepath.Join(a, "cluster1"))
	copyFile(t, filepath.Join(b, "cluster1", "root-cert.pem"), filepath.Join(dir, "root-cert.pem"))
	p := startPeerd(t, peerdOptions{NoWait: true, Args: []string{
		"--cluster-name", cluster, "--config-dir", repoPath("examples", "cluster1"),
		"--ca-dir", dir, "--listen", freePort(t),
	}})
	log := p.waitExit(t)
	if !strings.Contains(log, "--ca-dir") || !strings.Contains(log, "root-cert.pem") {
		t.Fatalf("peerd must refuse a ca-dir whose chain does not lead to its root, naming the file; log:\n%s", log)
	}
}

// openDeltaStream opens one delta ADS stream and waits for a first response.
func openDeltaStream(target string, opts ...grpc.DialOption) error {
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		return err
	}
	if err := stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: ztunnel.AuthorizationTypeURL}); err != nil {
		return err
	}
	_, err = stream.Recv()
	return err
}
