package ztunnel_test

import (
	"context"
	"errors"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/peerd-mesh/peerd/internal/xds"
	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
	"github.com/peerd-mesh/peerd/test/ztunnel"
)

const waitTimeout = 10 * time.Second

// harness serves an xds.Server (or a scripted handler) on a bufconn and
// records every request the client sends.
type harness struct {
	t    *testing.T
	lis  *bufconn.Listener
	mu   sync.Mutex
	reqs []*discovery.DeltaDiscoveryRequest
	// recorded is closed and replaced whenever a request is recorded.
	recorded chan struct{}
	// refuse rejects new streams while set.
	refuse bool
}

type recordingStream struct {
	grpc.ServerStream
	h *harness
}

func (s recordingStream) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if err == nil {
		if req, ok := m.(*discovery.DeltaDiscoveryRequest); ok {
			s.h.mu.Lock()
			s.h.reqs = append(s.h.reqs, proto.Clone(req).(*discovery.DeltaDiscoveryRequest))
			close(s.h.recorded)
			s.h.recorded = make(chan struct{})
			s.h.mu.Unlock()
		}
	}
	return err
}

func newHarness(t *testing.T, register func(*grpc.Server)) *harness {
	h := &harness{t: t, lis: bufconn.Listen(1 << 20), recorded: make(chan struct{})}
	g := grpc.NewServer(xds.ServerCodec(), grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		h.mu.Lock()
		refuse := h.refuse
		h.mu.Unlock()
		if refuse {
			return context.Canceled
		}
		return handler(srv, recordingStream{ServerStream: ss, h: h})
	}))
	register(g)
	go func() { _ = g.Serve(h.lis) }()
	t.Cleanup(g.Stop)
	return h
}

func (h *harness) setRefuse(v bool) {
	h.mu.Lock()
	h.refuse = v
	h.mu.Unlock()
}

func (h *harness) requests() []*discovery.DeltaDiscoveryRequest {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.reqs)
}

// waitRequests waits until the server has received n requests matching
// pred, and returns all requests received so far.
func (h *harness) waitRequests(n int, pred func(*discovery.DeltaDiscoveryRequest) bool) []*discovery.DeltaDiscoveryRequest {
	h.t.Helper()
	timeout := time.After(waitTimeout)
	for {
		h.mu.Lock()
		reqs, ch := slices.Clone(h.reqs), h.recorded
		h.mu.Unlock()
		count := 0
		for _, r := range reqs {
			if pred(r) {
				count++
			}
		}
		if count >= n {
			return reqs
		}
		select {
		case <-ch:
		case <-timeout:
			h.t.Fatalf("timed out waiting for %d matching requests (have %d of %d)", n, count, len(reqs))
		}
	}
}

func isACK(r *discovery.DeltaDiscoveryRequest) bool {
	return r.GetResponseNonce() != "" && r.GetErrorDetail() == nil
}

func (h *harness) start(cfg ztunnel.Config) *ztunnel.Client {
	cfg.Target = "passthrough:///bufnet"
	cfg.DialOptions = append(cfg.DialOptions, grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
		return h.lis.DialContext(ctx)
	}))
	if cfg.InitialBackoff == 0 {
		cfg.InitialBackoff = time.Millisecond
		cfg.MaxBackoff = 10 * time.Millisecond
	}
	return ztunnel.Start(h.t, cfg)
}

func wait(t *testing.T, c *ztunnel.Client, what string, pred func(*ztunnel.State) bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := c.WaitFor(ctx, pred); err != nil {
		t.Fatalf("%s: %v (stats %+v)", what, err, c.Stats())
	}
}

func peerdServer(t *testing.T) (*harness, *xds.Cache) {
	addrs := xds.NewCache(xds.AddressTypeURL)
	srv := xds.NewServer(xds.ServerOptions{}, addrs, xds.NewCache(xds.AuthorizationTypeURL))
	return newHarness(t, srv.Register), addrs
}

func wl(uid string, mutate ...func(*workloadpb.Workload)) xds.Resource {
	w := &workloadpb.Workload{Uid: uid, Name: uid, Addresses: [][]byte{{10, 0, 0, 1}}}
	for _, m := range mutate {
		m(w)
	}
	return xds.Resource{Name: uid, Message: &workloadpb.Address{Type: &workloadpb.Address_Workload{Workload: w}}}
}

func svc(name string, mutate ...func(*workloadpb.Service)) xds.Resource {
	s := &workloadpb.Service{Name: "s", Namespace: "ns", Hostname: "s.ns.svc.cluster.local"}
	for _, m := range mutate {
		m(s)
	}
	return xds.Resource{Name: name, Message: &workloadpb.Address{Type: &workloadpb.Address_Service{Service: s}}}
}

func TestInitialRequestsLikeZtunnel(t *testing.T) {
	for _, onDemand := range []bool{false, true} {
		h, _ := peerdServer(t)
		c := h.start(ztunnel.Config{IP: "10.1.2.3", PodName: "ztunnel-abc", Namespace: "istio-system",
			NodeName: "n1", ClusterID: "c1", OnDemand: onDemand})
		wait(t, c, "ready", func(s *ztunnel.State) bool { return s.Ready && s.ACKs == 2 })
		reqs := h.waitRequests(2, isACK)
		first := reqs[0]
		if got, want := first.GetNode().GetId(), "ztunnel~10.1.2.3~ztunnel-abc.istio-system~istio-system.svc.cluster.local"; got != want {
			t.Errorf("node id = %q, want %q", got, want)
		}
		md := first.GetNode().GetMetadata().GetFields()
		for k, want := range map[string]string{"NAME": "ztunnel-abc", "NAMESPACE": "istio-system", "INSTANCE_IPS": "10.1.2.3", "NODE_NAME": "n1", "CLUSTER_ID": "c1"} {
			if got := md[k].GetStringValue(); got != want {
				t.Errorf("metadata %s = %q, want %q", k, got, want)
			}
		}
		if _, ok := md["NETWORK"]; ok {
			t.Errorf("NETWORK metadata sent although no network is configured")
		}
		byType := map[string]*discovery.DeltaDiscoveryRequest{}
		for i, r := range reqs {
			if r.GetResponseNonce() == "" {
				byType[r.GetTypeUrl()] = r
			} else if r.GetErrorDetail() != nil {
				t.Errorf("request %d is a NACK: %v", i, r)
			}
			if i > 0 && r.GetNode() != nil {
				t.Errorf("request %d repeats the node", i)
			}
		}
		addr, authz := byType[ztunnel.AddressTypeURL], byType[ztunnel.AuthorizationTypeURL]
		if addr == nil || authz == nil {
			t.Fatalf("initial requests by type = %v", byType)
		}
		if len(authz.GetResourceNamesSubscribe()) != 0 {
			t.Errorf("Authorization initial subscribe = %v, want wildcard (empty)", authz.GetResourceNamesSubscribe())
		}
		wantSub, wantUnsub := []string(nil), []string(nil)
		if onDemand {
			wantSub, wantUnsub = []string{"*"}, []string{"*"}
		}
		if !slices.Equal(addr.GetResourceNamesSubscribe(), wantSub) || !slices.Equal(addr.GetResourceNamesUnsubscribe(), wantUnsub) {
			t.Errorf("on-demand=%v: Address initial subscribe %v unsubscribe %v, want %v %v", onDemand,
				addr.GetResourceNamesSubscribe(), addr.GetResourceNamesUnsubscribe(), wantSub, wantUnsub)
		}
	}
}

func TestNACKCausesRejectedValidApplied(t *testing.T) {
	bad := map[string]xds.Resource{
		"undecodable":     {Message: wrapperspb.String("x")},
		"ip-3-bytes":      wl("", func(w *workloadpb.Workload) { w.Addresses = [][]byte{{1, 2, 3}} }),
		"unknown-enum":    wl("", func(w *workloadpb.Workload) { w.Status = workloadpb.WorkloadStatus(7) }),
		"legacy-mtls":     wl("", func(w *workloadpb.Workload) { w.TunnelProtocol = workloadpb.TunnelProtocol_LEGACY_ISTIO_MTLS }),
		"services-key":    wl("", func(w *workloadpb.Workload) { w.Services = map[string]*workloadpb.PortList{"noslash": {}} }),
		"gateway-no-dest": wl("", func(w *workloadpb.Workload) { w.NetworkGateway = &workloadpb.GatewayAddress{HboneMtlsPort: 15008} }),
		"empty-address":   {Message: &workloadpb.Address{}},
		"unspecified-pref": svc("", func(s *workloadpb.Service) {
			s.LoadBalancing = &workloadpb.LoadBalancing{RoutingPreference: []workloadpb.LoadBalancing_Scope{workloadpb.LoadBalancing_UNSPECIFIED_SCOPE}}
		}),
	}
	h, addrs := peerdServer(t)
	set := []xds.Resource{wl("good"), svc("ns/s.ns.svc.cluster.local")}
	for name, r := range bad {
		r.Name = name
		set = append(set, r)
	}
	addrs.Replace(set)
	c := h.start(ztunnel.Config{})
	wait(t, c, "NACK", func(s *ztunnel.State) bool { return s.NACKs == 1 })
	st := c.Stats()
	var rejected []string
	for _, part := range strings.Split(st.LastNACK, "; ") {
		name, _, ok := strings.Cut(part, ": ")
		if !ok {
			t.Errorf("NACK part %q is not <name>: <error>", part)
		}
		rejected = append(rejected, name)
	}
	slices.Sort(rejected)
	var want []string
	for name := range bad {
		want = append(want, name)
	}
	slices.Sort(want)
	if !slices.Equal(rejected, want) {
		t.Errorf("rejected = %v, want %v (message %q)", rejected, want, st.LastNACK)
	}
	if got := sortedCopy(xds.NACKResources(st.LastNACK)); !slices.Equal(got, want) {
		t.Errorf("the server's NACK parser finds %v, want %v", got, want)
	}
	if _, ok := c.Workloads()["good"]; !ok {
		t.Errorf("valid workload of a NACKed response was not applied")
	}
	if _, ok := c.Services()["ns/s.ns.svc.cluster.local"]; !ok {
		t.Errorf("valid service of a NACKed response was not applied")
	}
	if n := len(c.Workloads()) + len(c.Services()); n != 2 {
		t.Errorf("client holds %d addresses, want the 2 valid ones", n)
	}
}

func sortedCopy(s []string) []string {
	out := slices.Clone(s)
	slices.Sort(out)
	return out
}

func TestReconnectKeepsStateAndSendsEmptyVersions(t *testing.T) {
	h, addrs := peerdServer(t)
	addrs.Replace([]xds.Resource{wl("a"), wl("b"), svc("ns/s.ns.svc.cluster.local")})
	c := h.start(ztunnel.Config{})
	wait(t, c, "sync", func(s *ztunnel.State) bool { return s.Ready && len(s.Workloads) == 2 && len(s.Services) == 1 })

	h.setRefuse(true)
	c.Reconnect()
	wait(t, c, "disconnected", func(s *ztunnel.State) bool { return !s.Connected })
	if n := len(c.Workloads()); n != 2 {
		t.Fatalf("client holds %d workloads while disconnected, want 2 (state kept)", n)
	}
	addrs.Replace([]xds.Resource{wl("a")})
	before := len(h.requests())
	h.setRefuse(false)
	wait(t, c, "resync", func(s *ztunnel.State) bool {
		return s.Ready && len(s.Workloads) == 1 && len(s.Services) == 0
	})
	var initial *discovery.DeltaDiscoveryRequest
	for _, r := range h.requests()[before:] {
		if r.GetTypeUrl() == ztunnel.AddressTypeURL && r.GetResponseNonce() == "" {
			initial = r
			break
		}
	}
	want := map[string]string{"a": "", "b": "", "ns/s.ns.svc.cluster.local": ""}
	got := initial.GetInitialResourceVersions()
	if len(got) != len(want) {
		t.Fatalf("initial_resource_versions = %v, want %v", got, want)
	}
	for k, v := range want {
		if gv, ok := got[k]; !ok || gv != v {
			t.Errorf("initial_resource_versions[%q] = %q, %v; want empty", k, gv, ok)
		}
	}
}

// scripted serves fixed responses after the client's first request and
// records nothing else; it tests client behaviour peerd's server never
// triggers.
type scripted struct {
	discovery.UnimplementedAggregatedDiscoveryServiceServer
	responses []*discovery.DeltaDiscoveryResponse
}

func (s *scripted) DeltaAggregatedResources(stream discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	for _, r := range s.responses {
		if _, err := stream.Recv(); err != nil {
			return err
		}
		if err := stream.Send(r); err != nil {
			return err
		}
	}
	for {
		if _, err := stream.Recv(); err != nil {
			return nil
		}
	}
}

func res(t *testing.T, name string, a *workloadpb.Address) *discovery.Resource {
	body, err := anypb.New(a)
	if err != nil {
		t.Fatal(err)
	}
	return &discovery.Resource{Name: name, Resource: body}
}

func TestUpdatesBeforeRemovalsAndRemovalLookupOrder(t *testing.T) {
	w := wl("ns/dup").Message.(*workloadpb.Address)
	s := svc("ns/dup").Message.(*workloadpb.Address)
	srv := &scripted{responses: []*discovery.DeltaDiscoveryResponse{
		{TypeUrl: ztunnel.AddressTypeURL, Nonce: "1", Resources: []*discovery.Resource{res(t, "x", wl("x").Message.(*workloadpb.Address))}, RemovedResources: []string{"x"}},
		{TypeUrl: ztunnel.AuthorizationTypeURL, Nonce: "2"},
		{TypeUrl: ztunnel.AddressTypeURL, Nonce: "3", Resources: []*discovery.Resource{res(t, "ns/dup", w)}},
		// A service and a workload held under the same name: the removal
		// takes the workload first.
		{TypeUrl: ztunnel.AddressTypeURL, Nonce: "4", Resources: []*discovery.Resource{res(t, "ns/dup", s)}},
		{TypeUrl: ztunnel.AddressTypeURL, Nonce: "5", RemovedResources: []string{"ns/dup"}},
	}}
	h := newHarness(t, func(g *grpc.Server) { discovery.RegisterAggregatedDiscoveryServiceServer(g, srv) })
	c := h.start(ztunnel.Config{})
	wait(t, c, "all responses", func(s *ztunnel.State) bool { return s.Responses == 5 })
	if _, ok := c.Workloads()["x"]; ok {
		t.Errorf("x held: the removal in the same response must apply after the update")
	}
	if _, ok := c.Workloads()["ns/dup"]; ok {
		t.Errorf("workload ns/dup still held: a removal is looked up as a uid first")
	}
	if _, ok := c.Services()["ns/dup"]; !ok {
		t.Errorf("service ns/dup removed: only the workload should go")
	}
	if got := c.Removed(); !slices.Equal(got, []string{"x", "ns/dup"}) {
		t.Errorf("Removed() = %q, want [x ns/dup]", got)
	}
	// Every response is ACKed with its type and nonce.
	var acks []string
	want := []string{
		ztunnel.AddressTypeURL + "#1", ztunnel.AuthorizationTypeURL + "#2", ztunnel.AddressTypeURL + "#3",
		ztunnel.AddressTypeURL + "#4", ztunnel.AddressTypeURL + "#5",
	}
	for _, r := range h.waitRequests(5, isACK) {
		if r.GetResponseNonce() != "" {
			acks = append(acks, r.GetTypeUrl()+"#"+r.GetResponseNonce())
		}
	}
	if !slices.Equal(acks, want) {
		t.Errorf("ACKs = %v, want %v", acks, want)
	}
}

func TestLookupNeedsOnDemand(t *testing.T) {
	c := ztunnel.New(ztunnel.Config{Target: "passthrough:///unused"})
	if _, err := c.Lookup(context.Background(), "/10.0.0.1"); err == nil {
		t.Fatal("Lookup on a wildcard client succeeded")
	}
}

func TestRejectHookNACKsLikeAValidationFailure(t *testing.T) {
	h, addrs := peerdServer(t)
	addrs.Replace([]xds.Resource{wl("keep"), wl("refuse")})
	c := h.start(ztunnel.Config{Reject: func(name string, _ *workloadpb.Address) error {
		if name == "refuse" {
			return errors.New("refused by the test")
		}
		return nil
	}})
	wait(t, c, "NACK", func(s *ztunnel.State) bool { return s.NACKs == 1 })
	if got := c.Stats().LastNACK; got != "refuse: refused by the test" {
		t.Errorf("NACK message = %q", got)
	}
	if _, ok := c.Workloads()["keep"]; !ok || len(c.Workloads()) != 1 {
		t.Errorf("held workloads = %v, want only keep", c.Workloads())
	}
}
