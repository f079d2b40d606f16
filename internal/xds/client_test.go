package xds

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"

	"github.com/peerd-mesh/peerd/internal/certs"
	federationpb "github.com/peerd-mesh/peerd/proto/peerd/federation/v1"
)

var federatedTypeURL = "type.googleapis.com/" + string((&federationpb.FederatedService{}).ProtoReflect().Descriptor().FullName())

func federated(ns, name string, capacity uint32) Resource {
	return Resource{Name: ns + "/" + name, Message: &federationpb.FederatedService{Name: name, Namespace: ns, Capacity: capacity}}
}

// upstream is a real xDS Server for one cache on a loopback TCP port, as a
// linked peerd serves its federation data.
type upstream struct {
	t    *testing.T
	opts []grpc.ServerOption

	mu  sync.Mutex
	cur *served
}

// served is one server generation: what it received and sent.
type served struct {
	addr    string
	g       *grpc.Server
	changed chan struct{} // poked on every request and response

	mu   sync.Mutex
	sent []*discovery.DeltaDiscoveryResponse
	reqs []*discovery.DeltaDiscoveryRequest
}

func startUpstream(t *testing.T, cache *Cache, opts ...grpc.ServerOption) *upstream {
	t.Helper()
	u := &upstream{t: t, opts: opts}
	u.cur = u.serve(cache)
	t.Cleanup(func() { u.current().g.Stop() })
	return u
}

func (u *upstream) serve(cache *Cache) *served {
	u.t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		u.t.Fatal(err)
	}
	s := &served{addr: lis.Addr().String(), changed: make(chan struct{}, 1)}
	srv := NewServer(ServerOptions{}, cache)
	srv.onSend = func(resp *discovery.DeltaDiscoveryResponse, _ []byte) {
		s.mu.Lock()
		s.sent = append(s.sent, resp)
		s.mu.Unlock()
		poke(s.changed)
	}
	srv.onRequest = func(req *discovery.DeltaDiscoveryRequest) {
		s.mu.Lock()
		s.reqs = append(s.reqs, req)
		s.mu.Unlock()
		poke(s.changed)
	}
	s.g = grpc.NewServer(append([]grpc.ServerOption{ServerCodec()}, u.opts...)...)
	srv.Register(s.g)
	go func() { _ = s.g.Serve(lis) }()
	return s
}

func (u *upstream) current() *served {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.cur
}

// restart replaces the server by a new one serving cache (a restarted
// peerd): the new one is listening before the old one closes its
// connections, so the client's next dial reaches it.
func (u *upstream) restart(cache *Cache) *served {
	u.t.Helper()
	next := u.serve(cache)
	u.mu.Lock()
	old := u.cur
	u.cur = next
	u.mu.Unlock()
	old.g.Stop()
	return next
}

// dial dials the current server in plaintext.
func (u *upstream) dial(ctx context.Context, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	return DialTarget(u.current().addr, grpc.WithTransportCredentials(insecure.NewCredentials()))(ctx, opts...)
}

func (s *served) requests() []*discovery.DeltaDiscoveryRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.reqs)
}

func (s *served) responses() []*discovery.DeltaDiscoveryResponse {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.sent)
}

// waitFor waits until pred holds for what the server received and sent.
func (s *served) waitFor(t *testing.T, what string, pred func(reqs []*discovery.DeltaDiscoveryRequest, sent []*discovery.DeltaDiscoveryResponse) bool) {
	t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	for !pred(s.requests(), s.responses()) {
		select {
		case <-s.changed:
		case <-deadline.C:
			t.Fatalf("timed out waiting for the server: %s (requests %v)", what, s.requests())
		}
	}
}

// replies returns the ACK/NACK requests by response nonce.
func replies(reqs []*discovery.DeltaDiscoveryRequest) map[string]*discovery.DeltaDiscoveryRequest {
	out := map[string]*discovery.DeltaDiscoveryRequest{}
	for _, r := range reqs {
		if r.GetResponseNonce() != "" {
			out[r.GetResponseNonce()] = r
		}
	}
	return out
}

func poke(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// testClient runs a Client and records its callbacks.
type testClient struct {
	*Client
	t       *testing.T
	changed chan struct{}
	stop    func()

	mu      sync.Mutex
	updates []Update
	states  []ClientState
}

// startClient runs a Client subscribed to the federation type (unless o
// says otherwise) with a fast backoff; it is stopped at the end of the
// test, and Run must then return nil promptly.
func startClient(t *testing.T, o ClientOptions) *testClient {
	t.Helper()
	tc := &testClient{t: t, changed: make(chan struct{}, 1)}
	if o.TypeURLs == nil {
		o.TypeURLs = []string{federatedTypeURL}
	}
	if o.Backoff == (Backoff{}) {
		o.Backoff = Backoff{Initial: time.Millisecond, Max: 20 * time.Millisecond}
	}
	o.OnUpdate = func(u Update) {
		tc.mu.Lock()
		tc.updates = append(tc.updates, u)
		tc.mu.Unlock()
		poke(tc.changed)
	}
	o.OnState = func(s ClientStatus) {
		tc.mu.Lock()
		tc.states = append(tc.states, s.State)
		tc.mu.Unlock()
		poke(tc.changed)
	}
	tc.Client = NewClient(o)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tc.Run(ctx) }()
	var once sync.Once
	tc.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run returned %v, want nil once stopped", err)
				}
			case <-time.After(waitTimeout):
				t.Error("Run did not return after its context ended")
			}
			if st := tc.Status(); st.State != StateStopped || st.Connected {
				t.Errorf("status after Run returned = %+v, want stopped and not connected", st)
			}
		})
	}
	t.Cleanup(tc.stop)
	return tc
}

func (tc *testClient) waitFor(what string, pred func(s ClientStatus) bool) {
	tc.t.Helper()
	tc.waitWithin(waitTimeout, what, pred)
}

func (tc *testClient) waitWithin(d time.Duration, what string, pred func(s ClientStatus) bool) {
	tc.t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for !pred(tc.Status()) {
		select {
		case <-tc.changed:
		case <-deadline.C:
			tc.t.Fatalf("timed out waiting for %s: status %+v", what, tc.Status())
		}
	}
}

// takeUpdates returns the updates reported since the last call.
func (tc *testClient) takeUpdates() []Update {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	u := tc.updates
	tc.updates = nil
	return u
}

// versions is what the client holds: name -> version.
func (tc *testClient) versions() map[string]string {
	return versionsOf(tc.Resources(federatedTypeURL))
}

func cacheVersions(c *Cache) map[string]string {
	_, rs := c.Snapshot()
	out := map[string]string{}
	for _, r := range rs {
		out[r.Name] = r.Version
	}
	return out
}

// summary is an Update with names instead of resources, for comparing.
type summary struct {
	Upserts, Removed []string
	Synced           bool
}

func summarize(us []Update) []summary {
	var out []summary
	for _, u := range us {
		out = append(out, summary{Upserts: names(u.Upserts), Removed: sorted(u.Removed), Synced: u.Synced})
	}
	return out
}

func capacityOf(t *testing.T, r *discovery.Resource) uint32 {
	t.Helper()
	var fs federationpb.FederatedService
	if err := r.GetResource().UnmarshalTo(&fs); err != nil {
		t.Fatalf("resource %s: %v", r.GetName(), err)
	}
	return fs.GetCapacity()
}

func TestClientSyncUpdateRemove(t *testing.T) {
	cache := NewCache(federatedTypeURL)
	cache.Replace([]Resource{federated("default", "a", 1), federated("default", "b", 1)})
	up := startUpstream(t, cache)
	node := &corev3.Node{Id: "peerd~c1"}
	tc := startClient(t, ClientOptions{Dial: up.dial, Node: node})

	tc.waitFor("initial sync", func(s ClientStatus) bool { return s.Synced })
	if diff := cmp.Diff(cacheVersions(cache), tc.versions()); diff != "" {
		t.Errorf("held after sync (-server +client):\n%s", diff)
	}
	if diff := cmp.Diff([]summary{{Upserts: []string{"default/a", "default/b"}, Removed: []string{}, Synced: true}}, summarize(tc.takeUpdates())); diff != "" {
		t.Errorf("updates of the initial sync (-want +got):\n%s", diff)
	}
	st := tc.Status()
	if st.State != StateSynced || !st.Connected || st.Connects != 1 || st.Failures != 0 || st.LastMessage.IsZero() || st.LastError != nil {
		t.Errorf("status after sync = %+v", st)
	}
	initial := up.current().requests()[0]
	if initial.GetTypeUrl() != federatedTypeURL || initial.GetNode().GetId() != node.GetId() ||
		len(initial.GetResourceNamesSubscribe()) != 0 || len(initial.GetInitialResourceVersions()) != 0 {
		t.Errorf("initial request = %v, want a wildcard subscription with the node and nothing held", initial)
	}

	// One change: a updated, b removed.
	cache.Replace([]Resource{federated("default", "a", 2)})
	tc.waitFor("update and removal", func(ClientStatus) bool {
		return cmp.Equal(cacheVersions(cache), tc.versions())
	})
	got := tc.takeUpdates()
	if diff := cmp.Diff([]summary{{Upserts: []string{"default/a"}, Removed: []string{"default/b"}}}, summarize(got)); diff != "" {
		t.Fatalf("updates of the change (-want +got):\n%s", diff)
	}
	if c := capacityOf(t, got[0].Upserts[0]); c != 2 {
		t.Errorf("updated capacity = %d, want 2", c)
	}

	// Every response is ACKed: its type and nonce, no error_detail.
	up.current().waitFor(t, "an ACK per response", func(reqs []*discovery.DeltaDiscoveryRequest, sent []*discovery.DeltaDiscoveryResponse) bool {
		acks := replies(reqs)
		for _, resp := range sent {
			ack := acks[resp.GetNonce()]
			if ack == nil || ack.GetTypeUrl() != federatedTypeURL || ack.GetErrorDetail() != nil {
				return false
			}
		}
		return len(sent) == 2
	})
}

func TestClientResumesAfterServerRestart(t *testing.T) {
	a, b, c := federated("default", "a", 1), federated("default", "b", 1), federated("default", "c", 1)
	cache := NewCache(federatedTypeURL)
	cache.Replace([]Resource{a, b, c})
	up := startUpstream(t, cache)
	tc := startClient(t, ClientOptions{Dial: up.dial})
	tc.waitFor("initial sync", func(s ClientStatus) bool { return s.Synced })
	before := tc.versions()
	tc.takeUpdates()

	// The peer restarts with a unchanged, b changed, c gone and d new.
	restarted := NewCache(federatedTypeURL)
	restarted.Replace([]Resource{a, federated("default", "b", 5), federated("default", "d", 1)})
	srv := up.restart(restarted)

	tc.waitFor("sync on the restarted server", func(s ClientStatus) bool { return s.Connects == 2 && s.Synced })
	if diff := cmp.Diff(cacheVersions(restarted), tc.versions()); diff != "" {
		t.Errorf("held after the restart (-server +client):\n%s", diff)
	}
	if got := srv.requests()[0].GetInitialResourceVersions(); !cmp.Equal(before, got) {
		t.Errorf("initial_resource_versions = %v, want what the client held: %v", got, before)
	}
	first := srv.responses()[0]
	if got, want := names(first.GetResources()), []string{"default/b", "default/d"}; !cmp.Equal(got, want) {
		t.Errorf("resources sent after the restart = %v, want only the changed and new %v (a is unchanged)", got, want)
	}
	if got := first.GetRemovedResources(); !cmp.Equal(got, []string{"default/c"}) {
		t.Errorf("removed after the restart = %v, want [default/c]", got)
	}
	if diff := cmp.Diff([]summary{{Upserts: []string{"default/b", "default/d"}, Removed: []string{"default/c"}, Synced: true}}, summarize(tc.takeUpdates())); diff != "" {
		t.Errorf("updates after the restart (-want +got):\n%s", diff)
	}
	st := tc.Status()
	if st.Failures != 1 || st.LastError == nil || st.DisconnectedAt.IsZero() {
		t.Errorf("status after the restart = %+v, want one failure with its error", st)
	}
}

func TestClientResumesFromPersistedState(t *testing.T) {
	cache := NewCache(federatedTypeURL)
	cache.Replace([]Resource{federated("default", "a", 1), federated("default", "b", 1), federated("default", "gone", 1)})
	first := startClient(t, ClientOptions{Dial: startUpstream(t, cache).dial})
	first.waitFor("initial sync", func(s ClientStatus) bool { return s.Synced })
	persisted := slices.Collect(maps.Values(first.Resources(federatedTypeURL)))
	first.stop()
	// A caller may persist only names and versions.
	var versionsOnly []*discovery.Resource
	for _, r := range persisted {
		versionsOnly = append(versionsOnly, &discovery.Resource{Name: r.GetName(), Version: r.GetVersion()})
	}

	// While no client ran, b changed, c came and gone went.
	cache.Replace([]Resource{federated("default", "a", 1), federated("default", "b", 2), federated("default", "c", 1)})
	up := startUpstream(t, cache)
	tc := startClient(t, ClientOptions{Dial: up.dial, Resume: map[string][]*discovery.Resource{federatedTypeURL: versionsOnly}})
	tc.waitFor("sync", func(s ClientStatus) bool { return s.Synced })
	if diff := cmp.Diff(cacheVersions(cache), tc.versions()); diff != "" {
		t.Errorf("held (-server +client):\n%s", diff)
	}
	if resp := up.current().responses()[0]; !cmp.Equal(names(resp.GetResources()), []string{"default/b", "default/c"}) ||
		!cmp.Equal(resp.GetRemovedResources(), []string{"default/gone"}) {
		t.Errorf("response to a resumed client = %v, want only b and c, and gone removed", resp)
	}
	if diff := cmp.Diff([]summary{{Upserts: []string{"default/b", "default/c"}, Removed: []string{"default/gone"}, Synced: true}}, summarize(tc.takeUpdates())); diff != "" {
		t.Errorf("updates of the resumed client (-want +got):\n%s", diff)
	}

	// Persisted without versions (as ztunnel holds them): the server resends
	// everything, and the client reports and validates only what changed,
	// but learns every version.
	var unversioned []*discovery.Resource
	for _, r := range persisted {
		unversioned = append(unversioned, &discovery.Resource{Name: r.GetName(), Resource: r.GetResource()})
	}
	var validated atomic.Int32
	validate := func(string, *discovery.Resource) error { validated.Add(1); return nil }
	tc = startClient(t, ClientOptions{Dial: up.dial, Validate: validate, Resume: map[string][]*discovery.Resource{federatedTypeURL: unversioned}})
	tc.waitFor("sync", func(s ClientStatus) bool { return s.Synced })
	if diff := cmp.Diff(cacheVersions(cache), tc.versions()); diff != "" {
		t.Errorf("held, resumed without versions (-server +client):\n%s", diff)
	}
	if diff := cmp.Diff([]summary{{Upserts: []string{"default/b", "default/c"}, Removed: []string{"default/gone"}, Synced: true}}, summarize(tc.takeUpdates())); diff != "" {
		t.Errorf("updates, resumed without versions (-want +got):\n%s", diff)
	}
	if n := validated.Load(); n != 2 {
		t.Errorf("Validate called %d times, want 2 (a arrived unchanged)", n)
	}
}

func TestClientNACKKeepsPreviousVersion(t *testing.T) {
	cache := NewCache(federatedTypeURL)
	cache.Replace([]Resource{federated("default", "a", 1), federated("default", "b", 1)})
	up := startUpstream(t, cache)
	validate := func(typeURL string, r *discovery.Resource) error {
		var fs federationpb.FederatedService
		if err := r.GetResource().UnmarshalTo(&fs); err != nil {
			return err
		}
		if fs.GetCapacity() > 100 {
			return fmt.Errorf("capacity: %d is above 100", fs.GetCapacity())
		}
		return nil
	}
	tc := startClient(t, ClientOptions{Dial: up.dial, Validate: validate})
	tc.waitFor("initial sync", func(s ClientStatus) bool { return s.Synced })
	good := tc.versions()
	tc.takeUpdates()

	// One response: a invalid, b valid, c new and invalid.
	cache.Replace([]Resource{federated("default", "a", 1000), federated("default", "b", 2), federated("default", "c", 1000)})
	tc.waitFor("the NACK", func(s ClientStatus) bool { return s.NACKs == 1 })
	want := map[string]string{"default/a": good["default/a"], "default/b": cacheVersions(cache)["default/b"]}
	if diff := cmp.Diff(want, tc.versions()); diff != "" {
		t.Errorf("held after the NACK (-want +got): a keeps its version, b is applied, c is not held:\n%s", diff)
	}
	if diff := cmp.Diff([]summary{{Upserts: []string{"default/b"}, Removed: []string{}}}, summarize(tc.takeUpdates())); diff != "" {
		t.Errorf("updates of the NACKed response (-want +got):\n%s", diff)
	}
	st := tc.Status()
	if !st.Synced || !strings.Contains(st.LastNACK, "default/a: capacity: 1000 is above 100") {
		t.Errorf("status after the NACK = %+v, want synced with the reason kept", st)
	}

	// The server sees a NACK of that response listing exactly the bad names.
	srv := up.current()
	srv.waitFor(t, "the NACK", func(reqs []*discovery.DeltaDiscoveryRequest, _ []*discovery.DeltaDiscoveryResponse) bool {
		for _, r := range reqs {
			if r.GetErrorDetail() != nil {
				return true
			}
		}
		return false
	})
	var nacked *discovery.DeltaDiscoveryResponse
	for _, resp := range srv.responses() {
		if len(resp.GetResources()) == 3 {
			nacked = resp
		}
	}
	nack := replies(srv.requests())[nacked.GetNonce()]
	if got := sorted(NACKResources(nack.GetErrorDetail().GetMessage())); !cmp.Equal(got, []string{"default/a", "default/c"}) {
		t.Errorf("NACK of nonce %s names %v (message %q), want default/a and default/c", nacked.GetNonce(), got, nack.GetErrorDetail().GetMessage())
	}
	if nack.GetTypeUrl() != federatedTypeURL {
		t.Errorf("NACK type = %q", nack.GetTypeUrl())
	}

	// Fixed on the server: applied and ACKed.
	cache.Replace([]Resource{federated("default", "a", 3), federated("default", "b", 2), federated("default", "c", 4)})
	tc.waitFor("the fix", func(ClientStatus) bool { return cmp.Equal(cacheVersions(cache), tc.versions()) })
	if st := tc.Status(); st.NACKs != 1 {
		t.Errorf("NACKs = %d after a valid response, want still 1", st.NACKs)
	}
}

// fakeClock hands each backoff wait to the test, which fires it.
type fakeClock struct{ waits chan fakeWait }

type fakeWait struct {
	d    time.Duration
	fire chan time.Time
}

func (*fakeClock) Now() time.Time { return time.Now() }

func (f *fakeClock) After(d time.Duration) <-chan time.Time {
	w := fakeWait{d: d, fire: make(chan time.Time, 1)}
	f.waits <- w
	return w.fire
}

func (f *fakeClock) next(t *testing.T) fakeWait {
	t.Helper()
	select {
	case w := <-f.waits:
		return w
	case <-time.After(waitTimeout):
		t.Fatal("timed out waiting for the client to back off")
		return fakeWait{}
	}
}

func TestClientBackoffGrowsAndResets(t *testing.T) {
	cache := NewCache(federatedTypeURL)
	cache.Replace([]Resource{federated("default", "a", 1)})
	up := startUpstream(t, cache)
	var refuse atomic.Bool
	refuse.Store(true)
	dial := func(ctx context.Context, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
		if refuse.Load() {
			return nil, errors.New("refused by the test")
		}
		return up.dial(ctx, opts...)
	}
	clock := &fakeClock{waits: make(chan fakeWait, 100)}
	tc := startClient(t, ClientOptions{
		Dial:    dial,
		Backoff: Backoff{Initial: 100 * time.Millisecond, Max: time.Second},
		Clock:   clock,
		Rand:    func(n int64) int64 { return n - 1 }, // the top of the jitter range
	})

	waits := []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond, time.Second, time.Second}
	for i, want := range waits {
		w := clock.next(t)
		if w.d != want {
			t.Errorf("wait %d = %v, want %v", i, w.d, want)
		}
		st := tc.Status()
		if st.State != StateDisconnected || st.Failures != i+1 || st.LastError == nil ||
			!strings.Contains(st.LastError.Error(), "refused by the test") || st.NextRetry.IsZero() {
			t.Errorf("status while backing off = %+v", st)
		}
		if i == len(waits)-1 {
			refuse.Store(false)
		}
		w.fire <- time.Now()
	}
	tc.waitFor("sync", func(s ClientStatus) bool { return s.Synced })

	// A synced connection resets the backoff.
	up.restart(cache)
	w := clock.next(t)
	if w.d != 100*time.Millisecond {
		t.Errorf("wait after a synced connection broke = %v, want the initial 100ms", w.d)
	}
	w.fire <- time.Now()
	tc.waitFor("sync again", func(s ClientStatus) bool { return s.Synced && s.Connects == 2 })
}

func TestBackoffDelay(t *testing.T) {
	b := Backoff{Initial: 100 * time.Millisecond, Max: 30 * time.Second}
	top := func(n int64) int64 { return n - 1 }
	half := func(n int64) int64 { return n / 2 }
	bottom := func(int64) int64 { return 0 }
	for _, tt := range []struct {
		name  string
		retry int
		rand  func(int64) int64
		want  time.Duration
	}{
		{"first retry, top of the range", 0, top, 100 * time.Millisecond},
		{"first retry, bottom of the range", 0, bottom, 0},
		{"third retry doubles twice", 2, top, 400 * time.Millisecond},
		{"jitter draws inside the range", 2, half, 200 * time.Millisecond},
		{"capped at Max", 9, top, 30 * time.Second},
		{"no overflow far past Max", 1000, top, 30 * time.Second},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := b.delay(tt.retry, tt.rand); got != tt.want {
				t.Errorf("delay(%d) = %v, want %v", tt.retry, got, tt.want)
			}
		})
	}
	// The default source of randomness stays in [0, ceiling].
	c := NewClient(ClientOptions{})
	for range 1000 {
		if d := c.o.Backoff.delay(3, c.o.Rand); d < 0 || d > 800*time.Millisecond {
			t.Fatalf("default backoff delay(3) = %v, want within [0, 800ms]", d)
		}
	}
}

func TestClientTLS(t *testing.T) {
	mesh, other := t.TempDir(), t.TempDir()
	for _, d := range []string{mesh, other} {
		if _, err := certs.GenerateMesh(d, []string{"c1"}, certs.MeshOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	ca, err := certs.LoadCA(filepath.Join(mesh, "c1"))
	if err != nil {
		t.Fatal(err)
	}
	serverTLS, err := ca.ServerTLSConfig([]string{"peerd.istio-system.svc"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cache := NewCache(federatedTypeURL)
	cache.Replace([]Resource{federated("default", "a", 1)})
	up := startUpstream(t, cache, grpc.Creds(credentials.NewTLS(serverTLS)))
	dialWithRoot := func(dir string) func(context.Context, ...grpc.DialOption) (*grpc.ClientConn, error) {
		cfg, err := certs.ClientTLSConfig(filepath.Join(dir, certs.RootCertFile), "peerd.istio-system.svc")
		if err != nil {
			t.Fatal(err)
		}
		return DialTarget(up.current().addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	}

	trusted := startClient(t, ClientOptions{Dial: dialWithRoot(mesh)})
	trusted.waitFor("sync over TLS", func(s ClientStatus) bool { return s.Synced })

	stranger := startClient(t, ClientOptions{Dial: dialWithRoot(other)})
	stranger.waitFor("a failure", func(s ClientStatus) bool { return s.Failures >= 2 })
	st := stranger.Status()
	if st.LastError == nil || !strings.Contains(st.LastError.Error(), "x509: certificate signed by unknown authority") {
		t.Errorf("LastError = %v, want the TLS reason", st.LastError)
	}
	if st.Connects != 0 || len(stranger.Resources(federatedTypeURL)) != 0 {
		t.Errorf("a server of another root: status %+v, want never connected and nothing held", st)
	}
}

// blackholeProxy forwards TCP to target until blackhole is called; from
// then on the connections it already has swallow every byte in both
// directions without closing, as a broken middlebox does. Later
// connections are forwarded again.
type blackholeProxy struct {
	lis      net.Listener
	target   string
	accepted atomic.Int32

	mu    sync.Mutex
	pairs []*proxyPair
}

type proxyPair struct {
	client, server net.Conn
	holed          atomic.Bool
}

func startBlackholeProxy(t *testing.T, target string) *blackholeProxy {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &blackholeProxy{lis: lis, target: target}
	go p.accept()
	t.Cleanup(func() {
		lis.Close()
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, pp := range p.pairs {
			pp.client.Close()
			pp.server.Close()
		}
	})
	return p
}

func (p *blackholeProxy) accept() {
	for {
		conn, err := p.lis.Accept()
		if err != nil {
			return
		}
		p.accepted.Add(1)
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			conn.Close()
			continue
		}
		pp := &proxyPair{client: conn, server: server}
		p.mu.Lock()
		p.pairs = append(p.pairs, pp)
		p.mu.Unlock()
		go pp.pipe(conn, server)
		go pp.pipe(server, conn)
	}
}

func (pp *proxyPair) pipe(from, to net.Conn) {
	defer from.Close()
	defer to.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := from.Read(buf)
		if err != nil {
			return
		}
		if pp.holed.Load() {
			continue
		}
		if _, err := to.Write(buf[:n]); err != nil {
			return
		}
	}
}

func (p *blackholeProxy) blackhole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pp := range p.pairs {
		pp.holed.Store(true)
	}
}

// TestClientKeepaliveDetectsBlackhole takes about 11 s: grpc-go raises any
// keepalive Time below 10 s to 10 s.
func TestClientKeepaliveDetectsBlackhole(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for a keepalive ping (10 s minimum)")
	}
	t.Parallel()
	cache := NewCache(federatedTypeURL)
	cache.Replace([]Resource{federated("default", "a", 1)})
	up := startUpstream(t, cache)
	proxy := startBlackholeProxy(t, up.current().addr)
	tc := startClient(t, ClientOptions{
		Dial:      DialTarget(proxy.lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials())),
		Keepalive: keepalive.ClientParameters{Time: 10 * time.Second, Timeout: time.Second},
	})
	tc.waitFor("sync through the proxy", func(s ClientStatus) bool { return s.Synced })

	proxy.blackhole()
	// Sent into the hole: the client gets it only through a new connection.
	cache.Replace([]Resource{federated("default", "a", 1), federated("default", "b", 1)})
	tc.waitWithin(30*time.Second, "disconnection", func(s ClientStatus) bool { return s.Failures == 1 })
	if err := tc.Status().LastError; err == nil || !strings.Contains(err.Error(), "keepalive") {
		t.Errorf("LastError = %v, want the keepalive failure", err)
	}
	tc.waitFor("sync through a fresh connection", func(s ClientStatus) bool { return s.Synced && s.Connects == 2 })
	if n := proxy.accepted.Load(); n != 2 {
		t.Errorf("proxy accepted %d connections, want 2", n)
	}
	if diff := cmp.Diff(cacheVersions(cache), tc.versions()); diff != "" {
		t.Errorf("held after reconnecting (-server +client):\n%s", diff)
	}
}

func TestClientOptionErrors(t *testing.T) {
	dial := func(context.Context, ...grpc.DialOption) (*grpc.ClientConn, error) { return nil, io.EOF }
	for _, tt := range []struct {
		name string
		o    ClientOptions
		want string
	}{
		{"no dial", ClientOptions{TypeURLs: []string{federatedTypeURL}}, "no Dial"},
		{"no types", ClientOptions{Dial: dial}, "no type URLs"},
		{"repeated type", ClientOptions{Dial: dial, TypeURLs: []string{federatedTypeURL, federatedTypeURL}}, "repeated"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := NewClient(tt.o).Run(context.Background())
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Run = %v, want an error containing %q", err, tt.want)
			}
		})
	}

	tc := startClient(t, ClientOptions{Dial: dial})
	tc.waitFor("a failure", func(s ClientStatus) bool { return s.Failures > 0 })
	if err := tc.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Errorf("a second Run = %v, want an error", err)
	}
}

// TestClientLeavesNoGoroutines runs clients through their lifecycles and
// checks that every goroutine they (and their connections) started ends.
// It must not run in parallel with other tests: it counts all goroutines.
func TestClientLeavesNoGoroutines(t *testing.T) {
	lifecycle := func(t *testing.T) {
		cache := NewCache(federatedTypeURL)
		cache.Replace([]Resource{federated("default", "a", 1)})
		up := startUpstream(t, cache)
		tc := startClient(t, ClientOptions{Dial: up.dial})
		tc.waitFor("sync", func(s ClientStatus) bool { return s.Synced })
		up.restart(cache)
		tc.waitFor("sync after a restart", func(s ClientStatus) bool { return s.Synced && s.Connects == 2 })
	}
	// The first round starts grpc's process-wide goroutines, if any.
	t.Run("warm-up", lifecycle)
	base := runtime.NumGoroutine()

	t.Run("connect, sync, reconnect, stop", lifecycle)
	t.Run("stopped while backing off", func(t *testing.T) {
		clock := &fakeClock{waits: make(chan fakeWait, 100)}
		refused := func(context.Context, ...grpc.DialOption) (*grpc.ClientConn, error) { return nil, errors.New("refused") }
		startClient(t, ClientOptions{Dial: refused, Clock: clock})
		clock.next(t) // never fired: the client waits until stopped
	})
	t.Run("stopped while connected", func(t *testing.T) {
		cache := NewCache(federatedTypeURL)
		up := startUpstream(t, cache)
		tc := startClient(t, ClientOptions{Dial: up.dial})
		tc.waitFor("sync", func(s ClientStatus) bool { return s.Synced })
		tc.stop()
	})

	deadline := time.Now().Add(waitTimeout)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, %d before the clients ran:\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestClientRunOnce(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	newCache := func() *Cache {
		cache := NewCache(federatedTypeURL)
		cache.Replace([]Resource{federated("default", "a", 1), federated("default", "b", 1000)})
		return cache
	}

	t.Run("returns once synced, after the ACK is delivered", func(t *testing.T) {
		cache := newCache()
		up := startUpstream(t, cache)
		c := NewClient(ClientOptions{Dial: up.dial, TypeURLs: []string{federatedTypeURL}})
		if err := c.RunOnce(ctx); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(cacheVersions(cache), versionsOf(c.Resources(federatedTypeURL))); diff != "" {
			t.Errorf("held (-server +client):\n%s", diff)
		}
		if st := c.Status(); st.State != StateStopped || st.Connects != 1 || st.Failures != 0 {
			t.Errorf("status = %+v, want stopped after one clean connection", st)
		}
		srv := up.current()
		srv.waitFor(t, "the ACK", func(reqs []*discovery.DeltaDiscoveryRequest, sent []*discovery.DeltaDiscoveryResponse) bool {
			return len(sent) == 1 && replies(reqs)[sent[0].GetNonce()] != nil
		})
	})

	t.Run("a rejected response ends it", func(t *testing.T) {
		up := startUpstream(t, newCache())
		c := NewClient(ClientOptions{Dial: up.dial, TypeURLs: []string{federatedTypeURL}, Validate: func(_ string, r *discovery.Resource) error {
			if capacityOf(t, r) > 100 {
				return errors.New("capacity above 100")
			}
			return nil
		}})
		err := c.RunOnce(ctx)
		var nack *NACKError
		if !errors.As(err, &nack) || nack.TypeURL != federatedTypeURL || nack.Detail != "default/b: capacity above 100" {
			t.Fatalf("RunOnce = %v, want a NACKError naming default/b", err)
		}
		up.current().waitFor(t, "the NACK", func(reqs []*discovery.DeltaDiscoveryRequest, _ []*discovery.DeltaDiscoveryResponse) bool {
			r := replies(reqs)[nack.Nonce]
			return r != nil && r.GetErrorDetail().GetMessage() == nack.Detail
		})
	})

	t.Run("a failure is returned, not retried", func(t *testing.T) {
		var dials atomic.Int32
		c := NewClient(ClientOptions{TypeURLs: []string{federatedTypeURL}, Dial: func(context.Context, ...grpc.DialOption) (*grpc.ClientConn, error) {
			dials.Add(1)
			return nil, errors.New("refused by the test")
		}})
		if err := c.RunOnce(ctx); err == nil || !strings.Contains(err.Error(), "refused by the test") {
			t.Fatalf("RunOnce = %v, want the dial error", err)
		}
		if st := c.Status(); dials.Load() != 1 || st.Failures != 1 || st.State != StateStopped {
			t.Errorf("dials = %d, status %+v, want one attempt, recorded", dials.Load(), st)
		}
	})

	t.Run("a caller's connection is used and left open", func(t *testing.T) {
		up := startUpstream(t, newCache())
		cc, err := up.dial(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		c := NewClient(ClientOptions{Conn: cc, TypeURLs: []string{federatedTypeURL}})
		for i := range 2 {
			if err := c.RunOnce(ctx); err != nil {
				t.Fatalf("RunOnce %d on the same connection: %v", i, err)
			}
		}
		// The second stream resumed from what the first one got.
		sent := up.current().responses()
		if len(sent) != 2 || len(sent[1].GetResources()) != 0 {
			t.Errorf("responses = %v, want a full one, then an empty one", sent)
		}
	})
}

func versionsOf(held map[string]*discovery.Resource) map[string]string {
	out := map[string]string{}
	for name, r := range held {
		out[name] = r.GetVersion()
	}
	return out
}
