package peers

import (
	"context"
	"errors"
	"fmt"
	federationpb "github.com/peerd-mesh/peerd/proto/peerd/federation/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/peerd-mesh/peerd/internal/discovery"
	"github.com/peerd-mesh/peerd/internal/federation"
)

func TestLinkLifecycle(t *testing.T) {
	p := newPeer(t)
	p.set(svc("apps", "echo", 2), svc("apps", "web", 3))
	e := newEnv(t, envOpts{})
	e.run()
	e.m.Sync([]*gatewayv1.Gateway{remoteGateway("cluster2", p.port())})

	st := e.waitState("cluster2", StateSynced)
	e.waitImported("cluster2", map[string]uint32{"apps/echo": 2, "apps/web": 3})
	if !e.m.Synced() {
		t.Error("Synced() = false with the only link synced")
	}
	if err := e.m.WaitSynced(context.Background()); err != nil {
		t.Error(err)
	}
	want := LinkStatus{Gateway: "istio-gateways/cluster2", Cluster: "cluster2", Network: "net-cluster2",
		Address: p.addr, State: StateSynced, Since: epoch, LastMessage: epoch, Services: 2}
	if st.Gateway != want.Gateway || st.Cluster != want.Cluster || st.Network != want.Network || st.Address != want.Address ||
		!st.Since.Equal(want.Since) || !st.LastMessage.Equal(want.LastMessage) || st.Services != want.Services {
		t.Errorf("status = %+v, want %+v", st, want)
	}

	// The cluster of an imported service is the link's, whatever the peer is.
	obj := e.index.Get(discovery.Key{Kind: discovery.KindImportedService, Cluster: "cluster2", Namespace: "apps", Name: "echo"})
	if is, ok := obj.(*federation.ImportedService); !ok || is.Cluster != "cluster2" {
		t.Fatalf("index holds %#v for apps/echo of cluster2", obj)
	}

	// A change and a removal on the peer reach the index.
	p.set(svc("apps", "echo", 5))
	e.waitImported("cluster2", map[string]uint32{"apps/echo": 5})
	// It carries when it arrived, for the convergence histogram.
	if is, _ := e.index.Get(discovery.Key{Kind: discovery.KindImportedService, Cluster: "cluster2", Namespace: "apps", Name: "echo"}).(*federation.ImportedService); is == nil || is.Received.IsZero() {
		t.Errorf("imported apps/echo = %#v; want it stamped with its arrival", is)
	}

	e.stop()
	// Stop is not Unlink: the services stay in the index.
	if got := e.imported("cluster2"); len(got) != 1 {
		t.Errorf("after Stop the index holds %v, want apps/echo kept", got)
	}
	waitNoPeersGoroutines(t)
}

func TestInvalidGateway(t *testing.T) {
	tests := []struct {
		name      string
		opts      []gatewayOpt
		wantField string
	}{
		{"no address", []gatewayOpt{func(gw *gatewayv1.Gateway) { gw.Spec.Addresses = nil }}, "spec.addresses: none"},
		{"no xds-tls listener", []gatewayOpt{func(gw *gatewayv1.Gateway) {
			gw.Spec.Listeners = slices.DeleteFunc(gw.Spec.Listeners, func(l gatewayv1.Listener) bool { return l.Name == federation.ListenerXDS })
		}}, `spec.listeners: no "xds-tls" listener`},
		{"no network", []gatewayOpt{withLabel(federation.LabelNetwork, "")}, "metadata.labels[topology.istio.io/network]: required"},
		{"bad address", []gatewayOpt{withAddress("not an address")}, "spec.addresses[0]"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOpts{})
			e.index.MarkSynced("file") // the local source
			e.run()
			gws := []*gatewayv1.Gateway{remoteGateway("cluster2", 15012, tc.opts...)}
			e.m.Sync(gws)
			e.m.Sync(gws) // the same problem again: logged and counted once

			st := e.m.Status()
			if len(st) != 1 || st[0].State != StateInvalid || st[0].Gateway != "istio-gateways/cluster2" ||
				!strings.Contains(st[0].LastError, "gateway istio-gateways/cluster2: ") || !strings.Contains(st[0].LastError, tc.wantField) {
				t.Fatalf("Status() = %+v, want one invalid entry naming the Gateway and %q", st, tc.wantField)
			}
			if errs := e.index.Errors(); len(errs) != 1 || !strings.Contains(errs[0].Error(), tc.wantField) {
				t.Errorf("index.Errors() = %v, want the Gateway's problem", errs)
			}
			if n := e.logs.FilterMessageSnippet("cannot be read as a link").Len(); n != 1 {
				t.Errorf("problem logged %d times, want once", n)
			}
			if got := testutil.ToFloat64(e.m.metrics.gatewayProblems); got != 1 {
				t.Errorf("peerd_peer_gateway_problems_total = %v, want 1", got)
			}
			if !e.m.Synced() || !e.index.Synced() {
				t.Errorf("an invalid Gateway holds up readiness: peers %v, index %v", e.m.Synced(), e.index.Synced())
			}

			// Fixed: the problem is cleared and the link starts.
			e.m.Sync([]*gatewayv1.Gateway{remoteGateway("cluster2", 15012)})
			if errs := e.index.Errors(); len(errs) != 0 {
				t.Errorf("index.Errors() after the fix = %v", errs)
			}
			if _, err := e.link("cluster2"); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestInvalidEditKeepsRunningLink(t *testing.T) {
	p := newPeer(t)
	p.set(svc("apps", "echo", 1))
	e := newEnv(t, envOpts{})
	e.run()
	e.m.Sync([]*gatewayv1.Gateway{remoteGateway("cluster2", p.port())})
	e.waitState("cluster2", StateSynced)
	connects := p.streams.get()

	e.m.Sync([]*gatewayv1.Gateway{remoteGateway("cluster2", p.port(), func(gw *gatewayv1.Gateway) { gw.Spec.Addresses = nil })})
	st, err := e.link("cluster2")
	if err != nil {
		t.Fatal(err)
	}
	if st.State != StateSynced || !strings.Contains(st.GatewayError, "spec.addresses") || st.Address != p.addr {
		t.Errorf("after a bad edit: %+v, want the link kept synced with its last good address and the problem shown", st)
	}
	e.waitImported("cluster2", map[string]uint32{"apps/echo": 1})
	if got := p.streams.get(); got != connects {
		t.Errorf("a bad edit reconnected the link (%d connects, want %d)", got, connects)
	}
}

func TestLocalClusterGatewayIgnored(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.run()
	e.m.Sync([]*gatewayv1.Gateway{
		remoteGateway("cluster1", 15012),
		// Not istio-remote: not a link at all.
		func() *gatewayv1.Gateway {
			gw := remoteGateway("cluster3", 15012)
			gw.Spec.GatewayClassName = federation.ClassEastWest
			return gw
		}(),
	})
	if st := e.m.Status(); len(st) != 0 {
		t.Errorf("Status() = %+v, want nothing", st)
	}
	if errs := e.index.Errors(); len(errs) != 0 {
		t.Errorf("index.Errors() = %v", errs)
	}
	if !e.m.Synced() {
		t.Error("Synced() = false with no links")
	}
}

func TestTwoGatewaysForOneCluster(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.run()
	a := remoteGateway("cluster2", 15012)
	b := remoteGateway("cluster2", 15013)
	b.Name = "another"
	e.m.Sync([]*gatewayv1.Gateway{b, a})
	st := e.m.Status()
	if len(st) != 2 || st[0].Gateway != "istio-gateways/another" || st[0].State == StateInvalid ||
		st[1].State != StateInvalid || !strings.Contains(st[1].LastError, `cluster "cluster2" is already linked by gateway istio-gateways/another`) {
		t.Errorf("Status() = %+v, want the first Gateway by name linked and the other reported", st)
	}
}

func TestBadResourceNACKedPreviousKept(t *testing.T) {
	p := newPeer(t)
	p.set(svc("apps", "echo", 2))
	e := newEnv(t, envOpts{})
	e.run()
	e.m.Sync([]*gatewayv1.Gateway{remoteGateway("cluster2", p.port())})
	e.waitState("cluster2", StateSynced)
	e.waitImported("cluster2", map[string]uint32{"apps/echo": 2})

	bad := svc("apps", "echo", 7)
	bad.Ports[0].Protocol = "XTP"
	newBad := svc("apps", "new", 1)
	newBad.Scope = 0
	p.set(bad, newBad, svc("apps", "good", 4))

	// The good one arrives, the bad ones do not; echo keeps its version.
	e.waitImported("cluster2", map[string]uint32{"apps/echo": 2, "apps/good": 4})
	eventually(t, "the peer counts a NACK", func() error {
		if n := p.nacks(); n < 1 {
			return fmt.Errorf("%v NACKs", n)
		}
		return nil
	})
	st, err := e.link("cluster2")
	if err != nil {
		t.Fatal(err)
	}
	if st.State != StateSynced || st.Rejections[ReasonInvalidResource] != 2 ||
		!strings.Contains(st.LastError, "ports[0].protocol") && !strings.Contains(st.LastError, "scope") {
		t.Errorf("status = %+v, want synced with 2 invalid_resource rejections and the field named", st)
	}
	if n := e.logs.FilterMessageSnippet("invalid resource").Len(); n != 2 {
		t.Errorf("logged %d invalid resources, want 2", n)
	}
	got := testutil.CollectAndCount(e.m.metrics, "peerd_peer_rejections_total")
	if got != 1 {
		t.Errorf("peerd_peer_rejections_total has %d series, want 1", got)
	}

	// Fixed on the peer: the new version replaces the kept one.
	p.set(svc("apps", "echo", 7), svc("apps", "good", 4))
	e.waitImported("cluster2", map[string]uint32{"apps/echo": 7, "apps/good": 4})
}

func TestPeerLostStaleWithdrawnBack(t *testing.T) {
	p := newPeer(t)
	p.set(svc("apps", "echo", 2))
	e := newEnv(t, envOpts{})
	e.run()
	e.m.Sync([]*gatewayv1.Gateway{remoteGateway("cluster2", p.port())})
	e.waitState("cluster2", StateSynced)

	p.stop()
	st := e.waitState("cluster2", StateStale)
	if !st.WithdrawAt.Equal(epoch.Add(5*time.Minute)) || st.Services != 1 {
		t.Errorf("stale status = %+v, want 1 service kept until %v", st, epoch.Add(5*time.Minute))
	}
	eventually(t, "failures counted", func() error {
		if st, _ := e.link("cluster2"); st.Failures < 2 || st.LastError == "" {
			return fmt.Errorf("%+v", st)
		}
		return nil
	})
	e.step(5*time.Minute - time.Second)
	if got := e.imported("cluster2"); len(got) != 1 {
		t.Fatalf("withdrawn before the TTL: %v", got)
	}
	e.step(time.Second)
	e.waitState("cluster2", StateWithdrawn)
	e.waitImported("cluster2", map[string]uint32{})

	// The peer comes back with the same, unchanged service: it is imported
	// again (the subscriber starts over without initial versions).
	p.start()
	e.waitState("cluster2", StateSynced)
	e.waitImported("cluster2", map[string]uint32{"apps/echo": 2})
}

func TestPeerBackBeforeTTL(t *testing.T) {
	p := newPeer(t)
	p.set(svc("apps", "echo", 2))
	e := newEnv(t, envOpts{})
	e.run()
	e.m.Sync([]*gatewayv1.Gateway{remoteGateway("cluster2", p.port())})
	e.waitState("cluster2", StateSynced)
	p.stop()
	e.waitState("cluster2", StateStale)
	p.set(svc("apps", "echo", 3), svc("apps", "web", 1))
	p.start()
	st := e.waitState("cluster2", StateSynced)
	e.waitImported("cluster2", map[string]uint32{"apps/echo": 3, "apps/web": 1})
	if !st.WithdrawAt.IsZero() {
		t.Errorf("synced link still has a withdrawal time: %+v", st)
	}
	// The TTL of the old loss no longer applies.
	e.step(10 * time.Minute)
	if st, _ := e.link("cluster2"); st.State != StateSynced || st.Services != 2 {
		t.Errorf("after the old TTL: %+v", st)
	}
}

func TestGatewayRemovedWithdrawsAtOnce(t *testing.T) {
	dir := t.TempDir()
	store, err := NewDirStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	p := newPeer(t)
	p.set(svc("apps", "echo", 2))
	e := newEnv(t, envOpts{store: store})
	e.run()
	e.m.Sync([]*gatewayv1.Gateway{remoteGateway("cluster2", p.port())})
	e.waitState("cluster2", StateSynced)
	file := filepath.Join(dir, "link-cluster2.json")
	eventually(t, "state saved", func() error { _, err := os.Stat(file); return err })

	e.m.Sync(nil)
	// At once: when Sync returns, the index no longer has them.
	if got := e.imported("cluster2"); len(got) != 0 {
		t.Errorf("after the Gateway was removed the index holds %v", got)
	}
	if st := e.m.Status(); len(st) != 0 {
		t.Errorf("Status() = %+v", st)
	}
	eventually(t, "saved state deleted", func() error {
		if _, err := os.Stat(file); !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("stat: %v", err)
		}
		return nil
	})
	e.stop()
	waitNoPeersGoroutines(t)
}

func TestDialChangeRestartsLink(t *testing.T) {
	p := newPeer(t)
	p.set(svc("apps", "echo", 2))
	other := newPeer(t)
	other.set(svc("apps", "echo", 9))
	e := newEnv(t, envOpts{})
	e.run()
	e.m.Sync([]*gatewayv1.Gateway{remoteGateway("cluster2", p.port())})
	e.waitState("cluster2", StateSynced)

	// A label that is not dial-relevant: no reconnect, the status follows.
	e.m.Sync([]*gatewayv1.Gateway{remoteGateway("cluster2", p.port(), withLabel(federation.LabelRegion, "eu"))})
	if got := p.streams.get(); got != 1 {
		t.Errorf("a region change reconnected the link (%d streams)", got)
	}
	// The port: reconnect to the other peer, keeping services meanwhile.
	e.m.Sync([]*gatewayv1.Gateway{remoteGateway("cluster2", p.port(), withXDSPort(other.port()))})
	e.waitImported("cluster2", map[string]uint32{"apps/echo": 9})
	st := e.waitState("cluster2", StateSynced)
	if st.Address != other.addr || other.streams.get() != 1 {
		t.Errorf("after the port change: %+v, %d streams to the new address", st, other.streams.get())
	}
}

func TestSyncTimeout(t *testing.T) {
	p := newPeer(t)
	p.stop() // nobody answers there
	e := newEnv(t, envOpts{})
	e.run()
	if e.m.Synced() {
		t.Fatal("Synced() before the first Sync")
	}
	e.m.Sync([]*gatewayv1.Gateway{remoteGateway("cluster2", p.port())})
	if e.m.Synced() {
		t.Fatal("Synced() with a link that never synced, before the timeout")
	}
	e.step(30 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := e.m.WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}
	warned := e.logs.FilterMessageSnippet("peer sync timeout").All()
	if len(warned) != 1 || !strings.Contains(fmt.Sprint(warned[0].ContextMap()["links"]), "cluster2") {
		t.Errorf("sync timeout warnings: %+v, want one naming cluster2", warned)
	}
}

func TestRestartDuringPartitionKeepsServicesUntilTTL(t *testing.T) {
	store, err := NewDirStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	testRestartDuringPartition(t, store)
}

// testRestartDuringPartition runs three Managers in turn on store, as three
// processes, across a partition: each store must bring the state back.
func testRestartDuringPartition(t *testing.T, store Store) {
	t.Helper()
	p := newPeer(t)
	p.set(svc("apps", "echo", 2), svc("apps", "web", 1))
	first := newEnv(t, envOpts{store: store})
	first.run()
	gws := []*gatewayv1.Gateway{remoteGateway("cluster2", p.port())}
	first.m.Sync(gws)
	first.waitState("cluster2", StateSynced)
	p.stop()
	first.waitState("cluster2", StateStale) // lost at epoch
	first.step(2 * time.Minute)
	first.stop()

	// A new process, two minutes after the loss, the peer still away.
	clk := first.clock
	second := newEnv(t, envOpts{store: store, clock: clk})
	second.run()
	second.m.Sync(gws)
	// Restored synchronously, before any connection: the first model
	// already has them.
	if got := second.imported("cluster2"); !equalMaps(got, map[string]uint32{"apps/echo": 2, "apps/web": 1}) {
		t.Fatalf("restored services = %v", got)
	}
	st, err := second.link("cluster2")
	if err != nil {
		t.Fatal(err)
	}
	if st.State != StateStale || !st.WithdrawAt.Equal(epoch.Add(5*time.Minute)) || !st.Since.Equal(epoch) {
		t.Errorf("restored status = %+v, want stale since %v, withdrawn at %v", st, epoch, epoch.Add(5*time.Minute))
	}
	second.step(3*time.Minute - time.Second)
	if got := second.imported("cluster2"); len(got) != 2 {
		t.Fatalf("withdrawn before the TTL from the original loss: %v", got)
	}
	second.step(time.Second)
	second.waitState("cluster2", StateWithdrawn)
	second.waitImported("cluster2", map[string]uint32{})

	// A third process after the withdrawal restores nothing.
	second.stop()
	third := newEnv(t, envOpts{store: store, clock: clk})
	third.m.Sync(gws)
	if got := third.imported("cluster2"); len(got) != 0 {
		t.Errorf("a withdrawn link's services came back after a restart: %v", got)
	}
}

func TestRestoredLinkResumesWithItsVersions(t *testing.T) {
	dir := t.TempDir()
	store, err := NewDirStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	p := newPeer(t)
	p.set(svc("apps", "echo", 2), svc("apps", "web", 1))
	first := newEnv(t, envOpts{store: store})
	first.run()
	gws := []*gatewayv1.Gateway{remoteGateway("cluster2", p.port())}
	first.m.Sync(gws)
	first.waitState("cluster2", StateSynced)
	first.stop()

	// While this peerd was down the peer stopped exporting web.
	p.set(svc("apps", "echo", 2))
	second := newEnv(t, envOpts{store: store, clock: first.clock})
	second.run()
	second.m.Sync(gws)
	second.waitState("cluster2", StateSynced)
	// Removed thanks to initial_resource_versions: the peer lists it.
	second.waitImported("cluster2", map[string]uint32{"apps/echo": 2})
}

func TestRejectedConnectionIsKeptWithReason(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.m.opts.NewSubscriber = func(cfg SubscriberConfig) Subscriber {
		return subscriberFunc(func(ctx context.Context) error {
			cfg.OnState(ConnState{Failures: 1, Err: errors.New(`rpc error: code = Unavailable desc = connection error: desc = "transport: authentication handshake failed: tls: failed to verify certificate: x509: certificate signed by unknown authority"`)})
			cfg.OnState(ConnState{Failures: 2, Err: Rejected(ReasonTrustDomain, errors.New("peer certificate is for trust domain other.local, want cluster2.local"))})
			<-ctx.Done()
			return ctx.Err()
		})
	}
	e.run()
	e.m.Sync([]*gatewayv1.Gateway{remoteGateway("cluster2", 15012)})
	eventually(t, "rejected for the trust domain", func() error {
		st, err := e.link("cluster2")
		if err == nil && (st.State != StateRejected || st.Reason != ReasonTrustDomain || st.Failures != 2 ||
			st.Rejections[ReasonTLS] != 1 || st.Rejections[ReasonTrustDomain] != 1) {
			err = fmt.Errorf("%+v", st)
		}
		return err
	})
	errs := e.index.Errors()
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "peer link cluster2 (gateway istio-gateways/cluster2): rejected (trust_domain)") {
		t.Errorf("index.Errors() = %v", errs)
	}
}

type subscriberFunc func(ctx context.Context) error

func (f subscriberFunc) Run(ctx context.Context) error { return f(ctx) }

func TestClassify(t *testing.T) {
	tests := []struct {
		err      error
		reason   string
		rejected bool
	}{
		{nil, "", false},
		{errors.New("connection refused"), "", false},
		{errors.New(`transport: authentication handshake failed: x509: certificate signed by unknown authority`), ReasonTLS, true},
		{errors.New(`peer certificate: trust domain "a.local", want "b.local"`), ReasonTrustDomain, true},
		{errors.New(`transport: authentication handshake failed: remote error: tls: bad certificate`), ReasonTLS, true},
		// A passthrough gateway in front of a peerd that is down closes the
		// connection during the handshake: the peer is lost, not refusing.
		{errors.New(`connection error: desc = "transport: authentication handshake failed: EOF"`), "", false},
		{errors.New(`transport: authentication handshake failed: read tcp 127.0.0.1:1->127.0.0.1:2: read: connection reset by peer`), "", false},
		{fmt.Errorf("wrapped: %w", Rejected(ReasonRefused, errors.New("no"))), ReasonRefused, true},
	}
	for _, tc := range tests {
		reason, rejected := classify(tc.err)
		if reason != tc.reason || rejected != tc.rejected {
			t.Errorf("classify(%v) = %q, %v; want %q, %v", tc.err, reason, rejected, tc.reason, tc.rejected)
		}
	}
}

// A Gateway that cannot be read when peerd restarts keeps its saved state
// until it is fixed: a bad edit does not cost the saved services.
func TestSavedStateOfUnreadableGatewayKept(t *testing.T) {
	store := newMemStore()
	p := newPeer(t)
	p.set(svc("apps", "echo", 2))
	first := newEnv(t, envOpts{store: store})
	first.run()
	first.m.Sync([]*gatewayv1.Gateway{remoteGateway("cluster2", p.port())})
	first.waitState("cluster2", StateSynced)
	p.stop()
	first.waitState("cluster2", StateStale)
	first.stop()

	second := newEnv(t, envOpts{store: store, clock: first.clock})
	second.run()
	second.m.Sync([]*gatewayv1.Gateway{remoteGateway("cluster2", p.port(), withLabel(federation.LabelNetwork, ""))})
	second.settle()
	if _, sl := store.get("cluster2"); len(sl.Items) != 1 {
		t.Fatalf("saved state of an unreadable Gateway's cluster deleted: %+v", sl)
	}
	second.m.Sync([]*gatewayv1.Gateway{remoteGateway("cluster2", p.port())})
	if got := second.imported("cluster2"); !equalMaps(got, map[string]uint32{"apps/echo": 2}) {
		t.Errorf("after the fix, restored %v", got)
	}
	// A cluster no Gateway names any more is forgotten.
	second.m.Sync(nil)
	second.settle()
	if n, _ := store.Load(); len(n) != 0 {
		t.Errorf("saved states left: %v", n)
	}
}

// A subscriber that cannot run (no credentials for a TLS link) is a failure
// shown on the link, retried, and logged once.
func TestSubscriberWithoutCredentials(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.m.opts.NewSubscriber = XDSClients(ClientOptions{})
	e.run()
	e.m.Sync([]*gatewayv1.Gateway{remoteGateway("cluster2", 15012)})
	eventually(t, "the failure shown", func() error {
		st, err := e.link("cluster2")
		if err == nil && (st.Failures != 1 || !strings.Contains(st.LastError, "no transport credentials")) {
			err = fmt.Errorf("%+v", st)
		}
		return err
	})
	e.step(restartDelay)
	eventually(t, "retried", func() error {
		if st, _ := e.link("cluster2"); st.Failures != 2 {
			return fmt.Errorf("%+v", st)
		}
		return nil
	})
	if n := e.logs.FilterMessageSnippet("subscriber ended").Len(); n != 1 {
		t.Errorf("logged %d times, want once", n)
	}
}

// TestImportedIdentitiesStayInTheLinksTrustDomain: a peer cannot make
// ztunnel accept identities of another trust domain (this cluster's, say)
// for its endpoints; --skip-validate-trust-domain lifts the check.
func TestImportedIdentitiesStayInTheLinksTrustDomain(t *testing.T) {
	for _, skip := range []bool{false, true} {
		t.Run(fmt.Sprintf("skip=%v", skip), func(t *testing.T) {
			p := newPeer(t)
			forged := svc("apps", "forged", 3)
			forged.SubjectAltNames = []string{"spiffe://cluster1.local/ns/prod/sa/payments"}
			p.set(svc("apps", "echo", 2), forged)
			e := newEnv(t, envOpts{skipTD: skip})
			e.run()
			e.m.Sync([]*gatewayv1.Gateway{remoteGateway("cluster2", p.port())})
			e.waitState("cluster2", StateSynced)
			if skip {
				e.waitImported("cluster2", map[string]uint32{"apps/echo": 2, "apps/forged": 3})
				return
			}
			e.waitImported("cluster2", map[string]uint32{"apps/echo": 2})
			eventually(t, "the forged identity is NACKed", func() error {
				st, err := e.link("cluster2")
				if err != nil {
					return err
				}
				if !strings.Contains(st.LastError, "spiffe://cluster1.local/ns/prod/sa/payments is in trust domain cluster1.local, the link's is cluster2.local") {
					return fmt.Errorf("last error %q", st.LastError)
				}
				return nil
			})
		})
	}
}

// TestServicesPerLinkAreCapped: a peer exporting more than the cap gets the
// excess NACKed (which of a response's services are in excess depends on
// their order); what the link holds stays and can still change.
func TestServicesPerLinkAreCapped(t *testing.T) {
	p := newPeer(t)
	p.set(svc("apps", "a", 1), svc("apps", "b", 1), svc("apps", "c", 1))
	e := newEnv(t, envOpts{maxServices: 2})
	e.run()
	e.m.Sync([]*gatewayv1.Gateway{remoteGateway("cluster2", p.port())})
	e.waitState("cluster2", StateSynced)
	eventually(t, "the third service is NACKed", func() error {
		if n := p.nacks(); n < 1 {
			return fmt.Errorf("%v NACKs", n)
		}
		return nil
	})
	held := e.imported("cluster2")
	if len(held) != 2 {
		t.Fatalf("the link holds %v; want 2 services (the cap)", held)
	}
	// An update of a held service is still accepted.
	want := map[string]uint32{}
	var update []*federationpb.FederatedService
	for key := range held {
		name := strings.TrimPrefix(key, "apps/")
		want[key] = 5
		update = append(update, svc("apps", name, 5))
	}
	p.set(append(update, svc("apps", "d", 1))...)
	e.waitImported("cluster2", want)
}

// TestRefusingPeerStaysRejected: a peer that refuses every stream keeps the
// link rejected across retries; it does not flap to connecting (and log
// the rejection again) each time the requests go out.
func TestRefusingPeerStaysRejected(t *testing.T) {
	var refused atomic.Int64
	p := newPeer(t, grpc.ChainStreamInterceptor(func(any, grpc.ServerStream, *grpc.StreamServerInfo, grpc.StreamHandler) error {
		refused.Add(1)
		return status.Error(codes.PermissionDenied, "not a peerd identity")
	}))
	e := newEnv(t, envOpts{})
	e.run()
	e.m.Sync([]*gatewayv1.Gateway{remoteGateway("cluster2", p.port())})
	eventually(t, "five refused streams", func() error {
		if n := refused.Load(); n < 5 {
			return fmt.Errorf("%d refused", n)
		}
		return nil
	})
	st, err := e.link("cluster2")
	if err != nil {
		t.Fatal(err)
	}
	if st.State != StateRejected || st.Reason != ReasonRefused {
		t.Errorf("link = %s (%s); want rejected (refused)", st.State, st.Reason)
	}
	if n := e.logs.FilterMessage("peer rejected").Len(); n != 1 {
		t.Errorf("logged %d rejections over %d refused streams; want 1", n, refused.Load())
	}
}
