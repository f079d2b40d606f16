package bench

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	gcptypes "github.com/envoyproxy/go-control-plane/pkg/cache/types"
	gcpcache "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	gcpserver "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"

	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
)

func address(uid, node string) *workloadpb.Address {
	return &workloadpb.Address{Type: &workloadpb.Address_Workload{Workload: &workloadpb.Workload{Uid: uid, Node: node}}}
}

// serveLinear serves a LinearCache holding resources on loopback, as the
// baseline does.
func serveLinear(t *testing.T, ctx context.Context, resources map[string]gcptypes.Resource) (*gcpcache.LinearCache, string) {
	t.Helper()
	cache := gcpcache.NewLinearCache(AddressTypeURL, gcpcache.WithInitialResources(resources))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	discoverypb.RegisterAggregatedDiscoveryServiceServer(g, gcpserver.NewServer(ctx, cache, nil))
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	return cache, lis.Addr().String()
}

func TestFleetWaitsForEveryStreamToGetNewVersions(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cache, addr := serveLinear(t, ctx, map[string]gcptypes.Resource{
		"a": address("a", "n1"), "b": address("b", "n1"), "c": address("c", "n1"),
	})
	// More streams than one connection carries, so two connections.
	f, err := Dial(addr, streamsPerConn+5)
	if err != nil {
		t.Fatal(err)
	}
	streamCtx, stop := context.WithCancel(ctx)
	defer f.Close()
	defer stop()
	f.Start(streamCtx)
	if err := f.WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}
	if len(f.conns) != 2 || f.Held() != 3 {
		t.Fatalf("%d connections, probe holds %d; want 2 and 3", len(f.conns), f.Held())
	}

	c, err := f.Expect([]string{"a", "b"})
	if err != nil {
		t.Fatal(err)
	}
	f.Begin(c, time.Now())
	// Half of the change: the streams must keep waiting.
	if err := cache.UpdateResource("a", address("a", "n2")); err != nil {
		t.Fatal(err)
	}
	short, cancelShort := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancelShort()
	if _, _, err := f.Wait(short, c); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("reached 0 of %d streams", streamsPerConn+5)) {
		t.Fatalf("Wait after half the change: %v, want a timeout with no stream done", err)
	}
	if err := cache.UpdateResource("b", address("b", "n2")); err != nil {
		t.Fatal(err)
	}
	first, last, err := f.Wait(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	if first <= 0 || last < first {
		t.Errorf("first %v, last %v; want 0 < first <= last", first, last)
	}
}

func TestExpectNamesWhatTheServerDoesNotServe(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, addr := serveLinear(t, ctx, map[string]gcptypes.Resource{"a": address("a", "n1")})
	f, err := Dial(addr, 1)
	if err != nil {
		t.Fatal(err)
	}
	streamCtx, stop := context.WithCancel(ctx)
	defer f.Close()
	defer stop()
	f.Start(streamCtx)
	if err := f.WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Expect([]string{"a", "zzz"}); err == nil || !strings.Contains(err.Error(), `"zzz"`) {
		t.Errorf("Expect: %v, want an error naming zzz", err)
	}
}
