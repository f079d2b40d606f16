package xds

import (
	"context"
	"strings"
	"sync"
	"testing"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/testing/protocmp"

	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
	"github.com/peerd-mesh/peerd/test/ztunnel"
)

func TestInitialRequestAnsweredWhenEmpty(t *testing.T) {
	e := newEnv(t)
	r := e.raw()
	r.send(&discovery.DeltaDiscoveryRequest{TypeUrl: AddressTypeURL})
	m := r.recv()
	if m.GetTypeUrl() != AddressTypeURL || m.GetNonce() == "" || len(m.GetResources()) != 0 || len(m.GetRemovedResources()) != 0 {
		t.Fatalf("initial response = %v, want an empty Address response with a nonce", m)
	}

	// The ztunnel-like client becomes ready on an empty server.
	c := e.client(ztunnel.Config{})
	e.wait(c, "ready on an empty server", func(s *ztunnel.State) bool { return s.Ready })
}

func TestOnDemandInitialStarUnstarAnswered(t *testing.T) {
	e := newEnv(t)
	e.addrs.Replace([]Resource{workload("c//Pod/default/a", "10.0.0.5")})
	r := e.raw()
	r.send(&discovery.DeltaDiscoveryRequest{TypeUrl: AddressTypeURL, ResourceNamesSubscribe: []string{"*"}, ResourceNamesUnsubscribe: []string{"*"}})
	m := r.recv()
	if len(m.GetResources()) != 0 || len(m.GetRemovedResources()) != 0 {
		t.Fatalf("on-demand initial response = %v, want empty", m)
	}
}

func TestWildcardSyncAndChanges(t *testing.T) {
	e := newEnv(t)
	a := workload("c//Pod/default/a", "10.0.0.1")
	b := workload("c//Pod/default/b", "10.0.0.2")
	svc := service("default", "echo.default.svc.cluster.local", "10.96.0.1")
	e.addrs.Replace([]Resource{a, b, svc})

	c := e.client(ztunnel.Config{})
	e.wait(c, "initial sync", func(s *ztunnel.State) bool {
		return s.Ready && len(s.Workloads) == 2 && len(s.Services) == 1
	})
	if diff := cmp.Diff(a.Message.(*workloadpb.Address).GetWorkload(), c.Workloads()["c//Pod/default/a"], protocmp.Transform()); diff != "" {
		t.Errorf("workload a (-want +got):\n%s", diff)
	}

	// Change b, add d, remove the service: one push.
	b2 := workload("c//Pod/default/b", "10.0.0.2", func(w *workloadpb.Workload) { w.Status = workloadpb.WorkloadStatus_UNHEALTHY })
	d := workload("c//Pod/default/d", "10.0.0.4")
	e.addrs.Replace([]Resource{a, b2, d})
	e.wait(c, "change push", func(s *ztunnel.State) bool {
		return len(s.Workloads) == 3 && len(s.Services) == 0 &&
			s.Workloads["c//Pod/default/b"].GetStatus() == workloadpb.WorkloadStatus_UNHEALTHY
	})
	if st := c.Stats(); st.NACKs != 0 || st.UnknownRemovals != 0 {
		t.Errorf("stats after changes = %+v, want no NACKs and no unknown removals", st)
	}
}

func TestPushCarriesOnlyChanges(t *testing.T) {
	e := newEnv(t)
	a := workload("c//Pod/default/a", "10.0.0.1")
	b := workload("c//Pod/default/b", "10.0.0.2")
	e.addrs.Replace([]Resource{a, b})
	r := e.raw()
	r.send(&discovery.DeltaDiscoveryRequest{TypeUrl: AddressTypeURL})
	m := r.recv()
	if got := names(m.GetResources()); !cmp.Equal(got, []string{"c//Pod/default/a", "c//Pod/default/b"}) {
		t.Fatalf("initial names = %v", got)
	}
	r.ack(m)
	rev := e.addrs.Revision()

	// The same content again (new message values) is no change at all.
	e.addrs.Replace([]Resource{workload("c//Pod/default/a", "10.0.0.1"), workload("c//Pod/default/b", "10.0.0.2")})
	if e.addrs.Revision() != rev {
		t.Fatalf("revision moved from %d to %d on identical content", rev, e.addrs.Revision())
	}
	// A real change: only b goes out; then a removal.
	e.addrs.Replace([]Resource{a, workload("c//Pod/default/b", "10.0.0.3")})
	m = r.recv()
	if got := names(m.GetResources()); !cmp.Equal(got, []string{"c//Pod/default/b"}) || len(m.GetRemovedResources()) != 0 {
		t.Fatalf("push = %v, want only b", m)
	}
	r.ack(m)
	e.addrs.Replace([]Resource{a})
	m = r.recv()
	if len(m.GetResources()) != 0 || !cmp.Equal(m.GetRemovedResources(), []string{"c//Pod/default/b"}) {
		t.Fatalf("push = %v, want the removal of b only", m)
	}
}

func TestReconnectWithStaleNames(t *testing.T) {
	e := newEnv(t)
	a := workload("c//Pod/default/a", "10.0.0.1")
	b := workload("c//Pod/default/b", "10.0.0.2")
	e.addrs.Replace([]Resource{a, b})
	c := e.client(ztunnel.Config{})
	e.wait(c, "initial sync", func(s *ztunnel.State) bool { return s.Ready && len(s.Workloads) == 2 })

	// Drop the stream and keep the client out while the mesh changes.
	e.setRefuse(true)
	c.Reconnect()
	e.waitEnded()
	a2 := workload("c//Pod/default/a", "10.0.0.1", func(w *workloadpb.Workload) { w.Node = "node-2" })
	e.addrs.Replace([]Resource{a2})

	var initial []*discovery.DeltaDiscoveryRequest
	var mu sync.Mutex
	e.srv.onRequest = func(req *discovery.DeltaDiscoveryRequest) {
		mu.Lock()
		defer mu.Unlock()
		if req.GetTypeUrl() == AddressTypeURL && req.GetResponseNonce() == "" {
			initial = append(initial, req)
		}
	}
	e.setRefuse(false)
	e.wait(c, "resync after reconnect", func(s *ztunnel.State) bool {
		w := s.Workloads["c//Pod/default/a"]
		return s.Ready && len(s.Workloads) == 1 && w.GetNode() == "node-2"
	})
	mu.Lock()
	defer mu.Unlock()
	if len(initial) == 0 {
		t.Fatal("server saw no initial Address request after reconnect")
	}
	want := map[string]string{"c//Pod/default/a": "", "c//Pod/default/b": ""}
	if diff := cmp.Diff(want, initial[0].GetInitialResourceVersions()); diff != "" {
		t.Errorf("initial_resource_versions (-want +got):\n%s", diff)
	}
	if st := c.Stats(); st.UnknownRemovals != 0 {
		t.Errorf("unknown removals = %d, want 0", st.UnknownRemovals)
	}
}

func TestInitialResourceVersions(t *testing.T) {
	e := newEnv(t)
	a := workload("c//Pod/default/a", "10.0.0.1")
	b := workload("c//Pod/default/b", "10.0.0.2")
	e.addrs.Replace([]Resource{a, b})
	_, snap := e.addrs.Snapshot()
	versionA := snap[0].Version

	t.Run("wildcard: matching version skipped, empty resent, gone removed", func(t *testing.T) {
		r := e.raw()
		r.send(&discovery.DeltaDiscoveryRequest{TypeUrl: AddressTypeURL, InitialResourceVersions: map[string]string{
			"c//Pod/default/a": versionA, "c//Pod/default/b": "", "c//Pod/default/gone": "",
		}})
		m := r.recv()
		if got := names(m.GetResources()); !cmp.Equal(got, []string{"c//Pod/default/b"}) {
			t.Errorf("resources = %v, want only b", got)
		}
		if got := m.GetRemovedResources(); !cmp.Equal(got, []string{"c//Pod/default/gone"}) {
			t.Errorf("removed = %v, want gone", got)
		}
	})
	t.Run("explicit: names subscribed, stale version resent", func(t *testing.T) {
		r := e.raw()
		r.send(&discovery.DeltaDiscoveryRequest{TypeUrl: AddressTypeURL,
			ResourceNamesSubscribe: []string{"c//Pod/default/a"},
			InitialResourceVersions: map[string]string{
				"c//Pod/default/a": "stale", "c//Pod/default/gone": versionA,
			}})
		m := r.recv()
		if got := names(m.GetResources()); !cmp.Equal(got, []string{"c//Pod/default/a"}) {
			t.Errorf("resources = %v, want a", got)
		}
		if got := m.GetRemovedResources(); !cmp.Equal(got, []string{"c//Pod/default/gone"}) {
			t.Errorf("removed = %v, want gone", got)
		}
		r.ack(m)
		// "gone" is subscribed now: when it appears it is pushed; b is not.
		e.addrs.Replace([]Resource{a, b, workload("c//Pod/default/gone", "10.0.0.9")})
		m = r.recv()
		if got := names(m.GetResources()); !cmp.Equal(got, []string{"c//Pod/default/gone"}) {
			t.Errorf("push = %v, want gone only", got)
		}
	})
}

func TestOnDemandLookup(t *testing.T) {
	e := newEnv(t)
	a := workload("c//Pod/default/a", "10.0.0.5")
	notEcho := func(w *workloadpb.Workload) {
		w.Services = map[string]*workloadpb.PortList{"default/other.default.svc.cluster.local": {}}
	}
	other := workload("c//Pod/default/other", "10.0.0.6", notEcho)
	svc := service("default", "echo.default.svc.cluster.local", "10.96.0.1")
	e.addrs.Replace([]Resource{a, other, svc})

	t.Run("raw: alias answered by name plus the removed key", func(t *testing.T) {
		r := e.raw()
		r.send(&discovery.DeltaDiscoveryRequest{TypeUrl: AddressTypeURL, ResourceNamesSubscribe: []string{"*"}, ResourceNamesUnsubscribe: []string{"*"}})
		r.ack(r.recv())
		r.send(&discovery.DeltaDiscoveryRequest{TypeUrl: AddressTypeURL, ResourceNamesSubscribe: []string{"/10.0.0.5"}})
		m := r.recv()
		if got := names(m.GetResources()); !cmp.Equal(got, []string{"c//Pod/default/a"}) {
			t.Errorf("resources = %v, want a", got)
		}
		if got := m.GetRemovedResources(); !cmp.Equal(got, []string{"/10.0.0.5"}) {
			t.Errorf("removed = %v, want the demanded key", got)
		}
	})

	c := e.client(ztunnel.Config{OnDemand: true})
	e.wait(c, "ready", func(s *ztunnel.State) bool { return s.Ready })
	if n := len(c.Workloads()); n != 0 {
		t.Fatalf("on-demand client holds %d workloads before any lookup", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	got, err := c.Lookup(ctx, "/10.0.0.5")
	if err != nil {
		t.Fatal(err)
	}
	if !cmp.Equal(got, []string{"c//Pod/default/a"}) {
		t.Errorf("lookup /10.0.0.5 answered %v", got)
	}
	if _, ok := c.Workloads()["c//Pod/default/a"]; !ok {
		t.Errorf("workload a not held after its lookup")
	}
	// A lookup by an unknown IP also completes.
	if got, err := c.Lookup(ctx, "/10.9.9.9"); err != nil || len(got) != 0 {
		t.Errorf("lookup of an unknown IP = %v, %v; want no resources", got, err)
	}

	// The looked-up workload keeps receiving updates, then its removal;
	// the workload nobody asked for is never sent.
	a2 := workload("c//Pod/default/a", "10.0.0.5", func(w *workloadpb.Workload) { w.Node = "node-9" })
	other2 := workload("c//Pod/default/other", "10.0.0.6", notEcho, func(w *workloadpb.Workload) { w.Node = "node-9" })
	e.addrs.Replace([]Resource{a2, other2, svc})
	e.wait(c, "update of a looked-up workload", func(s *ztunnel.State) bool {
		return s.Workloads["c//Pod/default/a"].GetNode() == "node-9"
	})
	e.addrs.Replace([]Resource{other2, svc})
	e.wait(c, "removal of a looked-up workload", func(s *ztunnel.State) bool {
		_, ok := s.Workloads["c//Pod/default/a"]
		return !ok
	})
	if _, ok := c.Workloads()["c//Pod/default/other"]; ok {
		t.Errorf("on-demand client received a workload it never asked for")
	}
}

func TestNACKLoggedCountedNotResent(t *testing.T) {
	e := newEnv(t)
	good := workload("c//Pod/default/good", "10.0.0.1")
	bad := workload("c//Pod/default/bad", "10.0.0.2", func(w *workloadpb.Workload) { w.Addresses = [][]byte{{10, 0, 0}} })
	e.addrs.Replace([]Resource{good, bad})

	r := e.raw()
	r.send(&discovery.DeltaDiscoveryRequest{TypeUrl: AddressTypeURL})
	m := r.recv()
	r.send(&discovery.DeltaDiscoveryRequest{TypeUrl: AddressTypeURL, ResponseNonce: m.GetNonce(),
		ErrorDetail: &statuspb.Status{Code: 0, Message: "c//Pod/default/bad: addresses[0]: IP of 3 bytes, want 4 or 16"}})
	// Requests are handled in order: once the Authorization answer is
	// here, the NACK has been handled.
	r.send(&discovery.DeltaDiscoveryRequest{TypeUrl: AuthorizationTypeURL})
	if m := r.recv(); m.GetTypeUrl() != AuthorizationTypeURL {
		t.Fatalf("response = %v, want the Authorization answer", m)
	}

	// A change to the good resource is pushed alone: the rejected, unchanged
	// version is not resent.
	good2 := workload("c//Pod/default/good", "10.0.0.1", func(w *workloadpb.Workload) { w.Node = "n2" })
	e.addrs.Replace([]Resource{good2, bad})
	m2 := r.recv()
	if got := names(m2.GetResources()); !cmp.Equal(got, []string{"c//Pod/default/good"}) {
		t.Fatalf("push after NACK = %v, want only the changed good resource", got)
	}
	if got := testutil.ToFloat64(e.srv.metrics.nacks.WithLabelValues("istio.workload.Address")); got != 1 {
		t.Errorf("NACK counter = %v, want 1", got)
	}
	logged := e.logs.FilterMessageSnippet("NACK").All()
	if len(logged) != 1 {
		t.Fatalf("NACK log entries = %d, want 1", len(logged))
	}
	fields := logged[0].ContextMap()
	if fields["nonce"] != m.GetNonce() {
		t.Errorf("NACK log nonce = %v, want %q", fields["nonce"], m.GetNonce())
	}
	if res, _ := fields["resources"].([]any); len(res) != 1 || res[0] != "c//Pod/default/bad" {
		t.Errorf("NACK log resources = %v, want [c//Pod/default/bad]", fields["resources"])
	}
	// Once fixed, the bad resource is sent again.
	fixed := workload("c//Pod/default/bad", "10.0.0.2")
	e.addrs.Replace([]Resource{good2, fixed})
	if got := names(r.recv().GetResources()); !cmp.Equal(got, []string{"c//Pod/default/bad"}) {
		t.Fatalf("push after fix = %v, want the fixed resource", got)
	}

	// The ztunnel-like client NACKs the same resource and applies the rest.
	e.addrs.Replace([]Resource{good2, bad})
	c := e.client(ztunnel.Config{})
	e.wait(c, "NACK of the bad workload", func(s *ztunnel.State) bool {
		return s.NACKs == 1 && len(s.Workloads) == 1 && s.Workloads["c//Pod/default/good"] != nil
	})
	if st := c.Stats(); !strings.HasPrefix(st.LastNACK, "c//Pod/default/bad: ") {
		t.Errorf("client NACK message = %q", st.LastNACK)
	}
}

// Wildcard streams at the same cursor are sent one shared encoding of the
// response (the nonce is all that differs), for the initial sync and for
// every change after it; an on-demand answer still shares each resource's
// encoded bytes.
func TestStreamsShareEncodedBytes(t *testing.T) {
	e := newEnv(t)
	e.addrs.Replace([]Resource{workload("c//Pod/default/a", "10.0.0.1")})
	var mu sync.Mutex
	var shared [][]byte
	e.srv.onSend = func(resp *discovery.DeltaDiscoveryResponse, body []byte) {
		mu.Lock()
		defer mu.Unlock()
		if resp.GetTypeUrl() == AddressTypeURL && len(resp.GetResources()) > 0 {
			shared = append(shared, body)
		}
	}
	sameBody := func(what string, want int) {
		t.Helper()
		mu.Lock()
		defer mu.Unlock()
		if len(shared) != want {
			t.Fatalf("%s: saw %d responses, want %d", what, len(shared), want)
		}
		for i := 1; i < len(shared); i++ {
			if shared[i] == nil || &shared[i][0] != &shared[0][0] {
				t.Fatalf("%s: response %d was encoded on its own, not shared", what, i)
			}
		}
		shared = nil
	}
	var streams []*raw
	for range 3 {
		r := e.raw()
		r.send(&discovery.DeltaDiscoveryRequest{TypeUrl: AddressTypeURL})
		m := r.recv()
		if n := len(m.GetResources()); n != 1 || m.GetNonce() == "" {
			t.Fatalf("got %d resources with nonce %q, want 1 with a nonce", n, m.GetNonce())
		}
		r.ack(m)
		streams = append(streams, r)
	}
	sameBody("initial sync", 3)

	e.addrs.Update([]Resource{workload("c//Pod/default/b", "10.0.0.2")}, []string{"c//Pod/default/a"})
	for _, r := range streams {
		m := r.recv()
		if got := names(m.GetResources()); !cmp.Equal(got, []string{"c//Pod/default/b"}) || !cmp.Equal(m.GetRemovedResources(), []string{"c//Pod/default/a"}) {
			t.Fatalf("change = %v removed %v, want b added and a removed", got, m.GetRemovedResources())
		}
		r.ack(m)
	}
	sameBody("change", 3)
}

func TestSotWUnimplemented(t *testing.T) {
	e := newEnv(t)
	r := e.raw()
	s, err := discovery.NewAggregatedDiscoveryServiceClient(r.conn).StreamAggregatedResources(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Recv()
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("SotW stream error = %v, want Unimplemented", err)
	}
}

func TestUnknownTypeAnsweredEmptyWarnedOnce(t *testing.T) {
	e := newEnv(t)
	const typeURL = "type.googleapis.com/example.Unknown"
	r := e.raw()
	r.send(&discovery.DeltaDiscoveryRequest{TypeUrl: typeURL})
	m := r.recv()
	if m.GetTypeUrl() != typeURL || len(m.GetResources()) != 0 {
		t.Fatalf("unknown type answer = %v", m)
	}
	r.ack(m)
	r.send(&discovery.DeltaDiscoveryRequest{TypeUrl: typeURL, ResourceNamesSubscribe: []string{"x"}})
	// A known type still works on the same stream, and it orders after the
	// requests above.
	r.send(&discovery.DeltaDiscoveryRequest{TypeUrl: AddressTypeURL})
	if m := r.recv(); m.GetTypeUrl() != AddressTypeURL {
		t.Fatalf("next response = %v, want the Address answer (no second unknown-type answer)", m)
	}
	if n := e.logs.FilterMessageSnippet("does not serve").Len(); n != 1 {
		t.Errorf("unknown-type warnings = %d, want 1", n)
	}
}

func TestStreamEndsWhenConnectionCloses(t *testing.T) {
	e := newEnv(t)
	r := e.raw()
	r.send(&discovery.DeltaDiscoveryRequest{TypeUrl: AddressTypeURL})
	r.recv()
	if got := testutil.ToFloat64(e.srv.metrics.streams); got != 1 {
		t.Fatalf("connected streams = %v, want 1", got)
	}
	r.conn.Close()
	e.waitEnded()
	if got := testutil.ToFloat64(e.srv.metrics.streams); got != 0 {
		t.Fatalf("connected streams after close = %v, want 0", got)
	}
}

func TestMetricsRegistered(t *testing.T) {
	e := newEnv(t)
	e.addrs.Replace([]Resource{workload("c//Pod/default/a", "10.0.0.1")})
	r := e.raw()
	r.send(&discovery.DeltaDiscoveryRequest{TypeUrl: AddressTypeURL})
	r.ack(r.recv())
	e.addrs.Replace([]Resource{workload("c//Pod/default/a", "10.0.0.2")})
	r.ack(r.recv())
	// The stream handles requests in order, after its previous sends and
	// their metrics: the Authorization answer orders after the push.
	r.send(&discovery.DeltaDiscoveryRequest{TypeUrl: AuthorizationTypeURL})
	r.recv()
	families, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, f := range families {
		got[f.GetName()] = true
	}
	for _, name := range []string{"peerd_xds_connected_streams", "peerd_xds_pushes_total", "peerd_xds_push_latency_seconds", "peerd_xds_resources"} {
		if !got[name] {
			t.Errorf("metric %s not registered (have %v)", name, got)
		}
	}
	if n := testutil.ToFloat64(e.srv.metrics.pushes.WithLabelValues("istio.workload.Address")); n != 2 {
		t.Errorf("Address pushes = %v, want 2", n)
	}
	if n := testutil.CollectAndCount(e.srv.metrics.pushLatency); n != 1 {
		t.Errorf("push latency series = %d, want 1 (Address)", n)
	}
	if n := testutil.ToFloat64(e.srv.metrics.streams); n != 1 {
		t.Errorf("connected streams = %v, want 1", n)
	}
}

// An on-demand request for a Service (by VIP or by namespace/hostname) is
// answered as istiod's lookup answers it: the Service and every workload
// that lists it; workloads that join it later follow, others never come.
func TestOnDemandServiceAnsweredWithItsEndpoints(t *testing.T) {
	for _, key := range []string{"/10.96.0.1", "default/echo.default.svc.cluster.local"} {
		t.Run(key, func(t *testing.T) {
			e := newEnv(t)
			svc := service("default", "echo.default.svc.cluster.local", "10.96.0.1")
			a := workload("c//Pod/default/a", "10.0.0.5")
			b := workload("c//Pod/default/b", "10.0.0.6")
			stranger := workload("c//Pod/default/stranger", "10.0.0.7", func(w *workloadpb.Workload) { w.Services = nil })
			e.addrs.Replace([]Resource{svc, a, b, stranger})

			c := e.client(ztunnel.Config{OnDemand: true})
			e.wait(c, "ready", func(s *ztunnel.State) bool { return s.Ready })
			ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
			defer cancel()
			got, err := c.Lookup(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			want := []string{"c//Pod/default/a", "c//Pod/default/b", "default/echo.default.svc.cluster.local"}
			if !cmp.Equal(sorted(got), want) {
				t.Fatalf("lookup %s answered %v, want the service and its endpoints %v", key, sorted(got), want)
			}
			joined := workload("c//Pod/default/joined", "10.0.0.8")
			e.addrs.Replace([]Resource{svc, a, b, stranger, joined})
			e.wait(c, "an endpoint that joined later", func(s *ztunnel.State) bool {
				_, ok := s.Workloads["c//Pod/default/joined"]
				return ok
			})
			e.addrs.Replace([]Resource{svc, b, stranger, joined})
			e.wait(c, "removal of a departed endpoint", func(s *ztunnel.State) bool {
				_, ok := s.Workloads["c//Pod/default/a"]
				return !ok
			})
			if _, ok := c.Workloads()["c//Pod/default/stranger"]; ok {
				t.Errorf("on-demand client received a workload of no service it asked for")
			}
		})
	}
}
