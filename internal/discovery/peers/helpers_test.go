package peers

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	testingclock "k8s.io/utils/clock/testing"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/peerd-mesh/peerd/internal/discovery"
	"github.com/peerd-mesh/peerd/internal/federation"
	"github.com/peerd-mesh/peerd/internal/xds"
	federationpb "github.com/peerd-mesh/peerd/proto/peerd/federation/v1"
)

const waitTimeout = 10 * time.Second

// eventually polls cond until it returns nil or waitTimeout passes.
func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still not true after %v: %v", what, waitTimeout, err)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// peer is a real xDS server on a loopback port serving FederatedService
// resources, as a linked peerd serves them.
type peer struct {
	t     *testing.T
	addr  string
	cache *xds.Cache
	reg   *prometheus.Registry
	srv   *xds.Server

	opts []grpc.ServerOption
	// streams counts the delta-xDS streams opened to this peer.
	streams countingInt

	mu sync.Mutex
	g  *grpc.Server
}

func newPeer(t *testing.T, opts ...grpc.ServerOption) *peer {
	t.Helper()
	p := &peer{t: t, cache: xds.NewCache(federation.TypeURL), reg: prometheus.NewRegistry(), opts: opts}
	p.srv = xds.NewServer(xds.ServerOptions{Registerer: p.reg}, p.cache)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = lis.Addr().String()
	p.serve(lis)
	t.Cleanup(p.stop)
	return p
}

func (p *peer) serve(lis net.Listener) {
	g := grpc.NewServer(append([]grpc.ServerOption{xds.ServerCodec(), grpc.StreamInterceptor(
		func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			p.streams.add()
			return h(srv, ss)
		})}, p.opts...)...)
	p.srv.Register(g)
	p.mu.Lock()
	p.g = g
	p.mu.Unlock()
	go func() { _ = g.Serve(lis) }()
}

// stop ends the server and every stream, as a killed peerd.
func (p *peer) stop() {
	p.mu.Lock()
	g := p.g
	p.g = nil
	p.mu.Unlock()
	if g != nil {
		g.Stop()
	}
}

// start serves again on the same address.
func (p *peer) start() {
	p.t.Helper()
	var lis net.Listener
	eventually(p.t, "listening again on "+p.addr, func() (err error) {
		lis, err = net.Listen("tcp", p.addr)
		return err
	})
	p.serve(lis)
}

func (p *peer) port() int {
	_, port, _ := net.SplitHostPort(p.addr)
	var n int
	fmt.Sscan(port, &n)
	return n
}

// set makes services the peer's full export.
func (p *peer) set(services ...*federationpb.FederatedService) {
	res := make([]xds.Resource, 0, len(services))
	for _, s := range services {
		res = append(res, xds.Resource{Name: federation.ResourceName(s.GetNamespace(), s.GetName()), Message: s})
	}
	p.cache.Replace(res)
}

func (p *peer) nacks() float64 {
	mfs, err := p.reg.Gather()
	if err != nil {
		p.t.Fatal(err)
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() == "peerd_xds_nacks_total" {
			for _, m := range mf.GetMetric() {
				total += m.GetCounter().GetValue()
			}
		}
	}
	return total
}

// svc is a valid exported service.
func svc(ns, name string, capacity uint32) *federationpb.FederatedService {
	return &federationpb.FederatedService{
		Name: name, Namespace: ns,
		Ports:           []*federationpb.Port{{Port: 80, TargetPort: 8080, Protocol: "TCP"}},
		SubjectAltNames: []string{"spiffe://cluster2.local/ns/" + ns + "/sa/" + name},
		Capacity:        capacity,
		Scope:           federationpb.Scope_GLOBAL,
	}
}

// gatewayOpt changes a test Gateway.
type gatewayOpt func(*gatewayv1.Gateway)

func withAddress(a string) gatewayOpt {
	return func(gw *gatewayv1.Gateway) { gw.Spec.Addresses = []gatewayv1.GatewaySpecAddress{{Value: a}} }
}

func withLabel(k, v string) gatewayOpt {
	return func(gw *gatewayv1.Gateway) {
		if v == "" {
			delete(gw.Labels, k)
			return
		}
		gw.Labels[k] = v
	}
}

func withXDSPort(port int) gatewayOpt {
	return func(gw *gatewayv1.Gateway) {
		for i := range gw.Spec.Listeners {
			if gw.Spec.Listeners[i].Name == federation.ListenerXDS {
				gw.Spec.Listeners[i].Port = gatewayv1.PortNumber(port)
			}
		}
	}
}

// remoteGateway is an istio-remote Gateway named for cluster that links to
// the peer at port on 127.0.0.1.
func remoteGateway(cluster string, port int, opts ...gatewayOpt) *gatewayv1.Gateway {
	gw := federation.RenderLink(federation.Link{
		Gateway: "istio-gateways/" + cluster, Namespace: "istio-gateways",
		Cluster: cluster, Network: "net-" + cluster, TrustDomain: cluster + ".local",
		Addresses: []string{"127.0.0.1"}, XDSPort: uint32(port), HBONEPort: federation.DefaultHBONEPort,
	})
	for _, o := range opts {
		o(gw)
	}
	return gw
}

// env is a manager on a fake clock with the in-test subscriber.
type env struct {
	t      *testing.T
	index  *discovery.Index
	clock  *testingclock.FakeClock
	reg    *prometheus.Registry
	logs   *observer.ObservedLogs
	m      *Manager
	cancel context.CancelFunc
	done   chan error
}

var epoch = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

type envOpts struct {
	store       Store
	credentials func(federation.Link) credentials.TransportCredentials
	clock       *testingclock.FakeClock
	index       *discovery.Index
	skipTD      bool
	maxServices int
}

func newEnv(t *testing.T, o envOpts) *env {
	t.Helper()
	if o.clock == nil {
		o.clock = testingclock.NewFakeClock(epoch)
	}
	if o.index == nil {
		o.index = discovery.NewIndex()
	}
	core, logs := observer.New(zapcore.InfoLevel)
	e := &env{
		t: t, index: o.index, clock: o.clock, reg: prometheus.NewRegistry(), logs: logs,
		done: make(chan error, 1),
	}
	m, err := NewManager(Options{
		LocalCluster: "cluster1",
		Index:        e.index,
		NewSubscriber: XDSClients(ClientOptions{
			Plaintext: true,
			// Fast retries: the tests stop and start peers.
			Backoff: xds.Backoff{Initial: time.Millisecond, Max: 20 * time.Millisecond},
		}),
		Store:                   o.store,
		Credentials:             o.credentials,
		SkipValidateTrustDomain: o.skipTD,
		MaxServicesPerLink:      o.maxServices,
		StaleTTL:                5 * time.Minute,
		SyncTimeout:             30 * time.Second,
		Clock:                   e.clock,
		Logger:                  zap.New(core),
		Registerer:              e.reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	e.m = m
	return e
}

func (e *env) run() {
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	go func() { e.done <- e.m.Run(ctx) }()
	e.t.Cleanup(e.stop)
}

// stop ends Run and waits for it.
func (e *env) stop() {
	e.t.Helper()
	if e.cancel == nil {
		return
	}
	e.cancel()
	e.cancel = nil
	select {
	case err := <-e.done:
		if err != nil {
			e.t.Errorf("Run: %v", err)
		}
	case <-time.After(waitTimeout):
		e.t.Fatal("Run did not return after its context was cancelled")
	}
}

// link returns the status of the link of cluster.
func (e *env) link(cluster string) (LinkStatus, error) {
	for _, st := range e.m.Status() {
		if st.Cluster == cluster {
			return st, nil
		}
	}
	return LinkStatus{}, fmt.Errorf("no link for cluster %s in %+v", cluster, e.m.Status())
}

func (e *env) waitState(cluster string, want State) LinkStatus {
	e.t.Helper()
	var st LinkStatus
	eventually(e.t, "link "+cluster+" "+string(want), func() (err error) {
		st, err = e.link(cluster)
		if err == nil && st.State != want {
			err = fmt.Errorf("state %s (%+v)", st.State, st)
		}
		return err
	})
	return st
}

// imported returns the capacity of each service the index holds for
// cluster, by "namespace/name".
func (e *env) imported(cluster string) map[string]uint32 {
	out := map[string]uint32{}
	for _, s := range e.index.Snapshot().ImportedServices {
		if s.Cluster == cluster {
			out[s.Namespace+"/"+s.Name] = s.Service.GetCapacity()
		}
	}
	return out
}

func (e *env) waitImported(cluster string, want map[string]uint32) {
	e.t.Helper()
	eventually(e.t, "imported services of "+cluster, func() error {
		if got := e.imported(cluster); !equalMaps(got, want) {
			return fmt.Errorf("got %v, want %v", got, want)
		}
		return nil
	})
}

func equalMaps(a, b map[string]uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// step moves the fake clock and waits until the manager's loop has looked
// at the new time. The loop arms its timers for absolute deadlines and
// checks them again after arming, so a step never needs to wait for a timer.
func (e *env) step(d time.Duration) {
	e.t.Helper()
	e.clock.Step(d)
	e.settle()
}

// settle waits until the loop has done a round that began after this call,
// so it saw the clock's current time and every change made before.
func (e *env) settle() {
	e.t.Helper()
	want := e.m.ticksBegun.Load() + 1
	e.m.wake()
	eventually(e.t, "a round of the manager's loop", func() error {
		if e.m.ticksDone.Load() < want {
			return errors.New("not yet")
		}
		return nil
	})
}

// peersGoroutines lists the goroutines running the manager's or an xDS
// client's code.
// waitNoPeersGoroutines fails the test unless every goroutine of the
// manager and its clients is gone within waitTimeout. A goroutine that has
// called wg.Done can still be on its way out when Run returns, so one look
// would be racy; a goroutine that really stays fails after the deadline.
func waitNoPeersGoroutines(t *testing.T) {
	t.Helper()
	eventually(t, "no goroutine of the manager or its clients left", func() error {
		if g := peersGoroutines(); len(g) > 0 {
			return fmt.Errorf("goroutines left:\n%s", strings.Join(g, "\n\n"))
		}
		return nil
	})
}

func peersGoroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "peers.(*Manager)") || strings.Contains(g, "xds.(*Client)") {
			out = append(out, g)
		}
	}
	return out
}

// countingInt is a counter safe for concurrent use.
type countingInt struct {
	mu sync.Mutex
	n  int
}

func (c *countingInt) add() {
	c.mu.Lock()
	c.n++
	c.mu.Unlock()
}

func (c *countingInt) get() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}
