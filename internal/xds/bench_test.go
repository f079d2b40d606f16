package xds

// Fan-out and initial-sync benchmarks, peerd's server beside stock
// go-control-plane (LinearCache + its delta ADS server) under the same load.
// Run (see docs/benchmarks.md):
//
//	go test -run '^$' -bench . -benchtime 10x ./internal/xds/

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	gcpcache "github.com/envoyproxy/go-control-plane/pkg/cache/types"
	gcplinear "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	gcpserver "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
	"github.com/peerd-mesh/peerd/test/ztunnel"
)

// benchWorkload is a realistic pod Workload (about 350 bytes encoded): a
// Deployment's pod behind a ClusterIP and a headless Service.
func benchWorkload(i int, capacity uint32) *workloadpb.Address {
	ns := fmt.Sprintf("team-%03d", i%200)
	app := fmt.Sprintf("app-%d", i/10)
	pod := fmt.Sprintf("%s-7d9f8c6b5d-%05d", app, i)
	ip := [4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}
	return &workloadpb.Address{Type: &workloadpb.Address_Workload{Workload: &workloadpb.Workload{
		Uid:               "Kubernetes//Pod/" + ns + "/" + pod,
		Name:              pod,
		Namespace:         ns,
		Addresses:         [][]byte{ip[:]},
		Network:           "network1",
		TunnelProtocol:    workloadpb.TunnelProtocol_HBONE,
		ServiceAccount:    app,
		Node:              fmt.Sprintf("ip-10-0-%d-%d.eu-west-1.compute.internal", i%16, i%250),
		CanonicalName:     app,
		CanonicalRevision: "v1",
		WorkloadType:      workloadpb.WorkloadType_POD,
		WorkloadName:      app,
		ClusterId:         "Kubernetes",
		Services: map[string]*workloadpb.PortList{
			ns + "/" + app + "." + ns + ".svc.cluster.local": {Ports: []*workloadpb.Port{
				{ServicePort: 80, TargetPort: 8080}, {ServicePort: 9090, TargetPort: 9090},
			}},
			ns + "/" + app + "-headless." + ns + ".svc.cluster.local": {Ports: []*workloadpb.Port{
				{ServicePort: 8080, TargetPort: 8080},
			}},
		},
		Locality: &workloadpb.Locality{Region: "eu-west-1", Zone: fmt.Sprintf("eu-west-1%c", 'a'+i%3)},
		Capacity: wrapperspb.UInt32(capacity),
	}}}
}

func benchResources(n int) []Resource {
	out := make([]Resource, n)
	for i := range out {
		a := benchWorkload(i, 1)
		out[i] = Resource{Name: a.GetWorkload().GetUid(), Aliases: []string{"network1/" + netip.AddrFrom4([4]byte(a.GetWorkload().GetAddresses()[0])).String()}, Message: a}
	}
	return out
}

// benchBackend is one of the two servers under test.
type benchBackend interface {
	register(*grpc.Server)
	// set installs the full set; change changes resource idx's content.
	set([]Resource)
	change(rs []Resource, idx int, a *workloadpb.Address)
}

type peerdBackend struct {
	cache *Cache
	srv   *Server
}

func newPeerdBackend() *peerdBackend {
	c := NewCache(AddressTypeURL)
	return &peerdBackend{cache: c, srv: NewServer(ServerOptions{}, c)}
}
func (p *peerdBackend) register(g *grpc.Server) { p.srv.Register(g) }
func (p *peerdBackend) set(rs []Resource)       { p.cache.Replace(rs) }
func (p *peerdBackend) change(rs []Resource, idx int, a *workloadpb.Address) {
	rs[idx].Message = a
	p.cache.Replace(rs)
}

type gcpBackend struct {
	cache *gcplinear.LinearCache
	srv   gcpserver.Server
}

func newGCPBackend(ctx context.Context) *gcpBackend {
	c := gcplinear.NewLinearCache(AddressTypeURL)
	return &gcpBackend{cache: c, srv: gcpserver.NewServer(ctx, c, nil)}
}
func (g *gcpBackend) register(s *grpc.Server) {
	discovery.RegisterAggregatedDiscoveryServiceServer(s, g.srv)
}
func (g *gcpBackend) set(rs []Resource) {
	m := make(map[string]gcpcache.Resource, len(rs))
	for _, r := range rs {
		m[r.Name] = r.Message
	}
	g.cache.SetResources(m)
}
func (g *gcpBackend) change(rs []Resource, idx int, a *workloadpb.Address) {
	rs[idx].Message = a
	if err := g.cache.UpdateResource(rs[idx].Name, a); err != nil {
		panic(err)
	}
}

// benchServer serves a backend on loopback TCP.
type benchServer struct {
	addr string
	g    *grpc.Server
}

func serveBench(b *testing.B, be benchBackend) *benchServer {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	g := grpc.NewServer(ServerCodec())
	be.register(g)
	go func() { _ = g.Serve(lis) }()
	return &benchServer{addr: lis.Addr().String(), g: g}
}

func dialBench(b *testing.B, addr string, n int) []*grpc.ClientConn {
	conns := make([]*grpc.ClientConn, n)
	for i := range conns {
		c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			// Wait for the connection instead of failing fast: on a loaded
			// machine a first connect can fail transiently, and then all
			// its streams would fail with it.
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(ztunnel.MaxRecvMsgSize), grpc.WaitForReady(true)))
		if err != nil {
			b.Fatal(err)
		}
		conns[i] = c
	}
	return conns
}

// fanoutClients are N wildcard delta streams that ACK every response, as
// ztunnel does, without decoding the resources (they count them).
type fanoutClients struct {
	want     string        // resource name that signals "the change arrived"
	pending  atomic.Int64  // streams still to receive the current change
	done     chan struct{} // receives once pending reaches zero
	synced   sync.WaitGroup
	wg       sync.WaitGroup
	errs     atomic.Int64
	errMu    sync.Mutex
	firstErr error
}

func (f *fanoutClients) fail(err error) {
	f.errs.Add(1)
	f.errMu.Lock()
	if f.firstErr == nil {
		f.firstErr = err
	}
	f.errMu.Unlock()
	f.synced.Done()
}

func startFanout(b *testing.B, ctx context.Context, conns []*grpc.ClientConn, streams int, want string) *fanoutClients {
	f := &fanoutClients{want: want, done: make(chan struct{}, 1)}
	f.synced.Add(streams)
	for i := range streams {
		conn := conns[i%len(conns)]
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			s, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
			if err != nil {
				f.fail(err)
				return
			}
			if err := s.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: AddressTypeURL}); err != nil {
				f.fail(err)
				return
			}
			first := true
			for {
				resp, err := s.Recv()
				if err != nil {
					if first {
						f.fail(err)
					}
					return
				}
				if err := s.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()}); err != nil {
					return
				}
				if first {
					first = false
					f.synced.Done()
					continue
				}
				for _, r := range resp.GetResources() {
					if r.GetName() == f.want {
						if f.pending.Add(-1) == 0 {
							f.done <- struct{}{}
						}
						break
					}
				}
			}
		}()
	}
	return f
}

// serveBackend starts the named server ("peerd" or "go-control-plane")
// holding rs.
func serveBackend(ctx context.Context, b *testing.B, name string, rs []Resource) (benchBackend, *benchServer) {
	var be benchBackend
	if name == "peerd" {
		be = newPeerdBackend()
	} else {
		be = newGCPBackend(ctx)
	}
	be.set(rs)
	return be, serveBench(b, be)
}

func BenchmarkFanout(b *testing.B) {
	const held = 1000
	for _, streams := range []int{1000, 10000} {
		for _, name := range []string{"peerd", "go-control-plane"} {
			// Setup runs inside the sub-benchmark: with b.Loop the function
			// body runs once, and -bench filters skip unwanted setups.
			b.Run(fmt.Sprintf("streams=%d/%s", streams, name), func(b *testing.B) {
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				rs := benchResources(held)
				be, srv := serveBackend(ctx, b, name, rs)
				defer srv.g.Stop()
				conns := dialBench(b, srv.addr, max(1, streams/200))
				defer func() {
					for _, c := range conns {
						c.Close()
					}
				}()
				f := startFanout(b, ctx, conns, streams, rs[0].Name)
				defer f.wg.Wait()
				defer cancel()
				f.synced.Wait()
				if n := f.errs.Load(); n > 0 {
					b.Fatalf("%d streams failed to sync; first error: %v", n, f.firstErr)
				}
				capacity := uint32(1)
				var total time.Duration
				stopProfile := profileFanout(b)
				defer stopProfile()
				for b.Loop() {
					capacity++
					f.pending.Store(int64(streams))
					start := time.Now()
					be.change(rs, 0, benchWorkload(0, capacity))
					select {
					case <-f.done:
					case <-time.After(2 * time.Minute):
						b.Fatalf("change did not reach every stream (%d missing)", f.pending.Load())
					}
					total += time.Since(start)
				}
				b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N), "ms/change")
			})
		}
	}
}

func BenchmarkInitialSync(b *testing.B) {
	const held = 100000
	rs := benchResources(held)
	size := 0
	for _, r := range rs[:100] {
		size += proto.Size(r.Message)
	}
	for _, name := range []string{"peerd", "go-control-plane"} {
		b.Run(fmt.Sprintf("addresses=%d/%s", held, name), func(b *testing.B) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			_, srv := serveBackend(ctx, b, name, rs)
			defer srv.g.Stop()
			conns := dialBench(b, srv.addr, 1)
			defer conns[0].Close()
			var total time.Duration
			for b.Loop() {
				start := time.Now()
				sctx, scancel := context.WithCancel(ctx)
				s, err := discovery.NewAggregatedDiscoveryServiceClient(conns[0]).DeltaAggregatedResources(sctx)
				if err != nil {
					b.Fatal(err)
				}
				if err := s.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: AddressTypeURL}); err != nil {
					b.Fatal(err)
				}
				resp, err := s.Recv()
				if err != nil {
					b.Fatal(err)
				}
				if n := len(resp.GetResources()); n != held {
					b.Fatalf("initial response has %d resources, want %d", n, held)
				}
				if err := s.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: AddressTypeURL, ResponseNonce: resp.GetNonce()}); err != nil {
					b.Fatal(err)
				}
				total += time.Since(start)
				scancel()
			}
			b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N), "ms/sync")
			b.ReportMetric(float64(size)/100, "bytes/address")
		})
	}
}

// profileFanout writes a CPU profile of the measured loop alone (not the
// setup) to $PEERD_BENCH_CPUPROFILE when it is set.
func profileFanout(b *testing.B) func() {
	path := os.Getenv("PEERD_BENCH_CPUPROFILE")
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		b.Fatal(err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}
