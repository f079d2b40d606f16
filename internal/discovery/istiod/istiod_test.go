package istiod

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/peerd-mesh/peerd/internal/xds"
	securitypb "github.com/peerd-mesh/peerd/proto/istio/security"
	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
)

// upstream is an in-process delta-xDS server standing in for istiod.
type upstream struct {
	addresses, authorizations *xds.Cache
	addr                      string
	stop                      func()
}

func startUpstream(t *testing.T, addr string) *upstream {
	t.Helper()
	u := &upstream{addresses: xds.NewCache(xds.AddressTypeURL), authorizations: xds.NewCache(xds.AuthorizationTypeURL)}
	u.listen(t, addr)
	return u
}

// listen serves the caches on addr ("": a new loopback port), keeping
// them across restarts as istiod keeps its cluster.
func (u *upstream) listen(t *testing.T, addr string) {
	t.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var lis net.Listener
	var err error
	// A just-closed port can take a moment to be free again.
	for deadline := time.Now().Add(10 * time.Second); ; {
		if lis, err = net.Listen("tcp", addr); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	if u.addr == "" {
		u.addr = lis.Addr().String() // a restart keeps it: the relay's dialer reads it
	}
	g := grpc.NewServer(xds.ServerCodec())
	xds.NewServer(xds.ServerOptions{Registerer: prometheus.NewRegistry()}, u.addresses, u.authorizations).Register(g)
	done := make(chan struct{})
	go func() { defer close(done); _ = g.Serve(lis) }()
	var once sync.Once
	u.stop = func() { once.Do(func() { g.Stop(); <-done }) }
	t.Cleanup(u.stop)
}

func workload(uid, ip string) *workloadpb.Address {
	return &workloadpb.Address{Type: &workloadpb.Address_Workload{Workload: &workloadpb.Workload{
		Uid: uid, Name: uid, Namespace: "ns", Addresses: [][]byte{net.ParseIP(ip).To4()},
	}}}
}

// relay runs a Source against u and collects what it hands over.
type relay struct {
	src  *Source
	reg  *prometheus.Registry
	mu   sync.Mutex
	held map[string]*workloadpb.Address
	auth map[string]*securitypb.Authorization
}

func startRelay(t *testing.T, u *upstream) *relay {
	t.Helper()
	r := &relay{reg: prometheus.NewRegistry(), held: map[string]*workloadpb.Address{}, auth: map[string]*securitypb.Authorization{}}
	src, err := New(Options{
		Dial: func(_ context.Context, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
			return grpc.NewClient(u.addr, append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))...)
		},
		Node:       NodeInfo{IP: "10.0.0.9", PodName: "peerd-0", Namespace: "istio-system", NodeName: "n1", ClusterID: "c1"},
		Backoff:    xds.Backoff{Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond},
		Registerer: r.reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	r.src = src
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = src.Run(ctx) }()
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-src.Changed():
				a, z := src.Take()
				r.mu.Lock()
				for n, v := range a {
					if v == nil {
						delete(r.held, n)
					} else {
						r.held[n] = v
					}
				}
				for n, v := range z {
					if v == nil {
						delete(r.auth, n)
					} else {
						r.auth[n] = v
					}
				}
				r.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return r
}

// waitFor polls cond (a deadline for a stuck relay, not a delay).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (r *relay) names() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for n := range r.held {
		out = append(out, n)
	}
	return out
}

func TestRelaysEverythingAndResumesAfterARestart(t *testing.T) {
	u := startUpstream(t, "")
	u.addresses.Update([]xds.Resource{{Name: "w1", Message: workload("w1", "10.0.0.1")}, {Name: "w2", Message: workload("w2", "10.0.0.2")}}, nil)
	u.authorizations.Update([]xds.Resource{{Name: "ns/allow", Message: &securitypb.Authorization{Name: "allow", Namespace: "ns"}}}, nil)
	r := startRelay(t, u)

	select {
	case <-r.src.Synced():
	case <-time.After(20 * time.Second):
		t.Fatal("not synced")
	}
	waitFor(t, "both workloads and the policy", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.held) == 2 && len(r.auth) == 1
	})
	r.mu.Lock()
	if d := cmp.Diff(workload("w1", "10.0.0.1"), r.held["w1"], protocmp.Transform()); d != "" {
		t.Errorf("w1 relayed changed (-sent +relayed):\n%s", d)
	}
	r.mu.Unlock()
	if st := r.src.Status(); st.Stale {
		t.Errorf("stale while synced: %+v", st)
	}

	// istiod goes away: the relay keeps what it holds and says it is stale.
	u.stop()
	waitFor(t, "the relay to report stale", func() bool { return r.src.Status().Stale })
	if got := testutil.ToFloat64(mustGauge(t, r.reg, "peerd_istiod_stale")); got != 1 {
		t.Errorf("peerd_istiod_stale = %v, want 1", got)
	}
	if n := len(r.names()); n != 2 {
		t.Errorf("the relay dropped state when istiod went away: holds %d", n)
	}

	// While it is down, w2 goes and w3 comes; it is back on the same port.
	u.addresses.Update([]xds.Resource{{Name: "w3", Message: workload("w3", "10.0.0.3")}}, []string{"w2"})
	u.listen(t, u.addr)
	waitFor(t, "the relay to converge after istiod's restart", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.held) == 2 && r.held["w3"] != nil && r.held["w2"] == nil && !r.src.Status().Stale
	})
}

func mustGauge(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	return collectorFunc{reg: reg, name: name}
}

// collectorFunc exposes one metric family of reg as a Collector for testutil.
type collectorFunc struct {
	reg  *prometheus.Registry
	name string
}

func (c collectorFunc) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(c, ch) }
func (c collectorFunc) Collect(ch chan<- prometheus.Metric) {
	mch := make(chan prometheus.Metric)
	go func() { c.reg.Collect(mch); close(mch) }()
	for m := range mch {
		if strings.Contains(m.Desc().String(), `"`+c.name+`"`) {
			ch <- m
		}
	}
}

func TestNACKsWhatDoesNotDecodeAndNeverHandsItOver(t *testing.T) {
	u := startUpstream(t, "")
	u.addresses.Update([]xds.Resource{
		{Name: "good", Message: workload("good", "10.0.0.1")},
		// Bytes that are not an Address: field 1 (workload) is garbage.
		{Name: "garbage", Message: wrapperspb.Bytes([]byte{0xff, 0xff, 0xff})},
		// An Address named otherwise than ztunnel requires.
		{Name: "misnamed", Message: workload("other-uid", "10.0.0.2")},
	}, nil)
	r := startRelay(t, u)
	waitFor(t, "a NACK", func() bool { return r.src.Status().NACKs > 0 })
	waitFor(t, "the good workload", func() bool { return len(r.names()) == 1 })
	if got := r.names(); !cmp.Equal(got, []string{"good"}) {
		t.Errorf("relayed %v, want only [good]", got)
	}
	nack := r.src.Status().LastNACK
	for _, want := range []string{"garbage: does not decode", `misnamed: name: want "other-uid"`} {
		if !strings.Contains(nack, want) {
			t.Errorf("NACK %q does not say %q", nack, want)
		}
	}
	if got := testutil.ToFloat64(mustGauge(t, r.reg, "peerd_istiod_rejected_resources_total")); got < 2 {
		t.Errorf("peerd_istiod_rejected_resources_total = %v, want at least 2", got)
	}
}
