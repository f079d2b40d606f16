package xds

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
	"github.com/peerd-mesh/peerd/test/ztunnel"
)

const waitTimeout = 10 * time.Second

// env is one server on an in-memory listener.
type env struct {
	t        *testing.T
	addrs    *Cache
	authz    *Cache
	srv      *Server
	reg      *prometheus.Registry
	logs     *observer.ObservedLogs
	lis      *bufconn.Listener
	streamMu sync.Mutex
	refuse   bool          // new streams are rejected while set
	ended    chan struct{} // one value per finished stream handler
}

func newEnv(t *testing.T) *env {
	t.Helper()
	return newEnvWith(t, Limits{})
}

// newEnvWith is newEnv with the server's limits set (zero fields: defaults).
func newEnvWith(t *testing.T, limits Limits) *env {
	t.Helper()
	return newEnvOptions(t, ServerOptions{Limits: limits})
}

// newEnvOptions is newEnv with server options (the logger and registerer
// are the env's).
func newEnvOptions(t *testing.T, opts ServerOptions) *env {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	e := &env{
		t:     t,
		addrs: NewCache(AddressTypeURL),
		authz: NewCache(AuthorizationTypeURL),
		reg:   prometheus.NewRegistry(),
		logs:  logs,
		lis:   bufconn.Listen(1 << 20),
		ended: make(chan struct{}, 1000),
	}
	opts.Logger, opts.Registerer = zap.New(core), e.reg
	e.srv = NewServer(opts, e.addrs, e.authz)
	g := grpc.NewServer(ServerCodec(), grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		e.streamMu.Lock()
		refuse := e.refuse
		e.streamMu.Unlock()
		if refuse {
			return errRefused
		}
		defer func() {
			select {
			case e.ended <- struct{}{}:
			default:
			}
		}()
		return h(srv, ss)
	}))
	e.srv.Register(g)
	go func() { _ = g.Serve(e.lis) }()
	t.Cleanup(g.Stop)
	return e
}

var errRefused = &refusedError{}

type refusedError struct{}

func (*refusedError) Error() string { return "refused by test" }

func (e *env) setRefuse(v bool) {
	e.streamMu.Lock()
	e.refuse = v
	e.streamMu.Unlock()
}

// waitEnded waits for one stream handler to return.
func (e *env) waitEnded() {
	e.t.Helper()
	select {
	case <-e.ended:
	case <-time.After(waitTimeout):
		e.t.Fatal("timed out waiting for a stream to end on the server")
	}
}

func (e *env) dialOption() grpc.DialOption {
	return grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
		return e.lis.DialContext(ctx)
	})
}

// client starts a ztunnel-like client against the env.
func (e *env) client(cfg ztunnel.Config) *ztunnel.Client {
	e.t.Helper()
	cfg.Target = "passthrough:///bufnet"
	cfg.DialOptions = append(cfg.DialOptions, e.dialOption())
	cfg.InitialBackoff = time.Millisecond
	cfg.MaxBackoff = 20 * time.Millisecond
	return ztunnel.Start(e.t, cfg)
}

func (e *env) wait(c *ztunnel.Client, what string, pred func(*ztunnel.State) bool) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := c.WaitFor(ctx, pred); err != nil {
		e.t.Fatalf("%s: %v (state %+v)", what, err, c.Stats())
	}
}

// raw is a bare delta stream for checking exact responses.
type raw struct {
	t      *testing.T
	stream discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	conn   *grpc.ClientConn
	resp   chan *discovery.DeltaDiscoveryResponse
	cancel context.CancelFunc
	// err is why the stream ended; set before resp is closed.
	err error
}

// ended drains responses until the stream ends and returns its status.
func (r *raw) ended() error {
	r.t.Helper()
	deadline := time.After(waitTimeout)
	for {
		select {
		case _, ok := <-r.resp:
			if !ok {
				return r.err
			}
		case <-deadline:
			r.t.Fatal("timed out waiting for the stream to end")
			return nil
		}
	}
}

func (e *env) raw() *raw {
	e.t.Helper()
	conn, err := grpc.NewClient("passthrough:///bufnet", e.dialOption(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(ztunnel.MaxRecvMsgSize)))
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	r := &raw{t: e.t, stream: s, conn: conn, resp: make(chan *discovery.DeltaDiscoveryResponse, 100), cancel: cancel}
	go func() {
		for {
			m, err := s.Recv()
			if err != nil {
				r.err = err
				close(r.resp)
				return
			}
			r.resp <- m
		}
	}()
	e.t.Cleanup(func() { cancel(); conn.Close() })
	return r
}

func (r *raw) send(req *discovery.DeltaDiscoveryRequest) {
	r.t.Helper()
	if err := r.stream.Send(req); err != nil {
		r.t.Fatalf("send: %v", err)
	}
}

func (r *raw) recv() *discovery.DeltaDiscoveryResponse {
	r.t.Helper()
	select {
	case m, ok := <-r.resp:
		if !ok {
			r.t.Fatal("stream closed while waiting for a response")
		}
		return m
	case <-time.After(waitTimeout):
		r.t.Fatal("timed out waiting for a response")
	}
	return nil
}

func (r *raw) ack(m *discovery.DeltaDiscoveryResponse) {
	r.t.Helper()
	r.send(&discovery.DeltaDiscoveryRequest{TypeUrl: m.GetTypeUrl(), ResponseNonce: m.GetNonce()})
}

// Fixtures.

func workload(uid, ip string, opts ...func(*workloadpb.Workload)) Resource {
	addr := netip.MustParseAddr(ip)
	w := &workloadpb.Workload{
		Uid:       uid,
		Name:      uid,
		Namespace: "default",
		Addresses: [][]byte{addr.AsSlice()},
		Services:  map[string]*workloadpb.PortList{"default/echo.default.svc.cluster.local": {Ports: []*workloadpb.Port{{ServicePort: 80, TargetPort: 8080}}}},
	}
	for _, o := range opts {
		o(w)
	}
	var memberOf []string
	for svc := range w.Services {
		memberOf = append(memberOf, svc)
	}
	return Resource{
		Name:     uid,
		Aliases:  []string{"/" + ip},
		MemberOf: memberOf,
		Message:  &workloadpb.Address{Type: &workloadpb.Address_Workload{Workload: w}},
	}
}

func service(ns, host, vip string) Resource {
	addr := netip.MustParseAddr(vip)
	s := &workloadpb.Service{
		Name: host, Namespace: ns, Hostname: host,
		Addresses: []*workloadpb.NetworkAddress{{Address: addr.AsSlice()}},
		Ports:     []*workloadpb.Port{{ServicePort: 80, TargetPort: 8080}},
	}
	return Resource{
		Name:    ns + "/" + host,
		Aliases: []string{"/" + vip},
		Message: &workloadpb.Address{Type: &workloadpb.Address_Service{Service: s}},
	}
}

func names(rs []*discovery.Resource) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.GetName())
	}
	return sorted(out)
}

func sorted(s []string) []string {
	out := append([]string(nil), s...)
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j] < out[j-1]; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	if out == nil {
		return []string{}
	}
	return out
}
