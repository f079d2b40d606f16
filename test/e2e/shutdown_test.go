package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/peerd-mesh/peerd/test/ztunnel"
)

// TestSIGTERMDrainsStreamsGracefully: on SIGTERM peerd fails /readyz at
// once, ends every open stream with a clean UNAVAILABLE status (not a
// transport error) within the drain window, and exits soon after.
func TestSIGTERMDrainsStreamsGracefully(t *testing.T) {
	const drain = 2 * time.Second
	p := startPeerd(t, peerdOptions{Args: []string{
		"--cluster-name", cluster, "--config-dir", repoPath("examples", "cluster1"), "--drain-duration", drain.String(),
	}})

	// Each client on its own connection, as each ztunnel is.
	const clients = 4
	ended := make(chan error, clients)
	for i := range clients {
		stream := openAddressStream(t, p.PlaintextAddr, i)
		go func() {
			for {
				if _, err := stream.Recv(); err != nil {
					ended <- err
					return
				}
			}
		}()
	}

	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	signalled := time.Now()
	waitFor(t, "/readyz failing with the draining reason", func() bool {
		code, body := p.get("/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(body, "draining")
	})

	for range clients {
		select {
		case err := <-ended:
			st := status.Convert(err)
			if st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "shutting down") {
				t.Errorf("stream ended with %v, want UNAVAILABLE saying peerd is shutting down", err)
			}
		case <-time.After(waitTimeout):
			t.Fatalf("a stream was still open %s after SIGTERM", waitTimeout)
		}
	}
	// The bound is the drain window plus peerd's grace for handlers plus
	// slack for a loaded machine: a failure bound, not a latency target.
	select {
	case <-p.exited:
	case <-time.After(drain + 10*time.Second):
		t.Fatalf("peerd still running %s after SIGTERM", time.Since(signalled))
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
	logs := p.Logs()
	for _, step := range []string{"shutting down", "draining: /readyz fails", "GOAWAY sent", "drained: every stream ended"} {
		if !strings.Contains(logs, step) {
			t.Errorf("the log does not show the step %q", step)
		}
	}
}

// openAddressStream opens a wildcard delta stream for Addresses on a
// connection of its own and waits for the first response.
func openAddressStream(t *testing.T, target string, n int) discoverypb.AggregatedDiscoveryService_DeltaAggregatedResourcesClient {
	t.Helper()
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(ztunnel.MaxRecvMsgSize)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := discoverypb.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	node := ztunnel.Config{IP: "10.0.0.1", PodName: fmt.Sprintf("ztunnel-%d", n), Namespace: "istio-system"}
	if err := stream.Send(&discoverypb.DeltaDiscoveryRequest{
		TypeUrl: ztunnel.AddressTypeURL,
		Node:    &core.Node{Id: node.NodeID()},
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatalf("first response: %v", err)
	}
	return stream
}
