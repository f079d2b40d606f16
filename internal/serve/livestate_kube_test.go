package serve

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap/zaptest"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayac "sigs.k8s.io/gateway-api/applyconfiguration/apis/v1"

	"github.com/peerd-mesh/peerd/internal/discovery/peers"
	"github.com/peerd-mesh/peerd/internal/federation"
	"github.com/peerd-mesh/peerd/internal/kubestate"
	kubeharness "github.com/peerd-mesh/peerd/test/kube"
)

const liveStateNamespace = "istio-system"

// waitFor polls cond until it holds or the deadline passes; what describes
// the state for the failure message.
func waitFor(t *testing.T, timeout time.Duration, desc string, cond func() bool, what func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s; last: %s", timeout, desc, what())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func createNamespace(t *testing.T, kube *kubeharness.Cluster, name string) {
	t.Helper()
	_, err := kube.Kube.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

// TestLeaderElection: two replicas on one API server; exactly one leads,
// the Lease names it; when it stops, it releases the Lease and the other
// takes over without waiting for the Lease to expire.
func TestLeaderElection(t *testing.T) {
	kube := kubeharness.Start(t, kubeharness.Options{})
	createNamespace(t, kube, liveStateNamespace)
	leases := kube.Kube.CoordinationV1().Leases(liveStateNamespace)
	holder := func() string {
		l, err := leases.Get(context.Background(), kubestate.LeaseName, metav1.GetOptions{})
		if err != nil || l.Spec.HolderIdentity == nil {
			return ""
		}
		return *l.Spec.HolderIdentity
	}

	type replica struct {
		l      *leader
		reg    *prometheus.Registry
		terms  chan string
		cancel context.CancelFunc
		done   chan struct{}
	}
	start := func(name string) *replica {
		r := &replica{reg: prometheus.NewRegistry(), terms: make(chan string, 10), done: make(chan struct{})}
		lead := func(ctx context.Context) {
			r.terms <- name
			<-ctx.Done()
		}
		var err error
		if r.l, err = newLeader(kube.Kube, liveStateNamespace, name, lead, zaptest.NewLogger(t).Named(name), r.reg); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		r.cancel = cancel
		go func() {
			defer close(r.done)
			r.l.run(ctx)
		}()
		t.Cleanup(func() { cancel(); <-r.done })
		return r
	}
	gauge := func(r *replica) float64 {
		mfs, err := r.reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "peerd_leader" {
				return mf.GetMetric()[0].GetGauge().GetValue()
			}
		}
		t.Fatal("no peerd_leader metric")
		return 0
	}

	a := start("peerd-a")
	select {
	case <-a.terms:
	case <-time.After(30 * time.Second):
		t.Fatal("peerd-a, alone, did not become the leader")
	}
	b := start("peerd-b")
	// b sees a as the holder (the elector reports the holder after its
	// first look at the Lease) and stands by.
	waitFor(t, 30*time.Second, "peerd-b to see peerd-a holding the Lease",
		func() bool { return strings.Contains(b.l.readiness(), "held by peerd-a") }, b.l.readiness)
	if h := holder(); h != "peerd-a" {
		t.Errorf("Lease holder = %q, want peerd-a", h)
	}
	if gauge(a) != 1 || gauge(b) != 0 {
		t.Errorf("peerd_leader: a=%v b=%v, want 1 and 0", gauge(a), gauge(b))
	}
	if !strings.Contains(a.l.readiness(), "holds the Lease") {
		t.Errorf("leader's /readyz line: %q", a.l.readiness())
	}
	select {
	case name := <-b.terms:
		t.Fatalf("%s leads while peerd-a holds the Lease", name)
	default:
	}

	// a stops: it releases the Lease on the way out, so b acquires it at
	// its next try (every 2s) rather than once the 15s lease expired.
	a.cancel()
	<-a.done
	if gauge(a) != 0 {
		t.Error("a stopped replica still reports peerd_leader 1")
	}
	select {
	case <-b.terms:
	case <-time.After(leaseDuration - time.Second):
		t.Fatalf("peerd-b did not take over before the Lease expired (holder %q): was it released?", holder())
	}
	if h := holder(); h != "peerd-b" {
		t.Errorf("Lease holder after the takeover = %q, want peerd-b", h)
	}
}

// linkFeed is a settable stand-in for the link manager's Status.
type linkFeed struct {
	mu    sync.Mutex
	links []peers.LinkStatus
}

func (f *linkFeed) set(links ...peers.LinkStatus) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.links = links
}

func (f *linkFeed) status() []peers.LinkStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]peers.LinkStatus(nil), f.links...)
}

// TestLinkStatusWriter drives the writer poll by poll against a real API
// server: the conditions land on the Gateway's status with the
// Gateway's generation, next to an istiod-owned condition that survives;
// nothing is written while nothing changed; a change of the last message's
// time only is written once linkHeartbeatInterval passed; a state change
// at the next poll.
func TestLinkStatusWriter(t *testing.T) {
	kube := kubeharness.Start(t, kubeharness.Options{GatewayCRDs: true})
	createNamespace(t, kube, liveStateNamespace)
	ctx := context.Background()
	gateways := kube.Gateway.GatewayV1().Gateways(liveStateNamespace)
	port := gatewayv1.PortNumber(15012)
	created, err := gateways.Create(ctx, &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Name: "cluster2", Namespace: liveStateNamespace},
		Spec: gatewayv1.GatewaySpec{
			GatewayClassName: "istio-remote",
			Listeners:        []gatewayv1.Listener{{Name: "xds-tls", Port: port, Protocol: gatewayv1.HTTPProtocolType}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// istiod's own condition, written by another field manager.
	_, err = gateways.ApplyStatus(ctx, gatewayac.Gateway("cluster2", liveStateNamespace).WithStatus(
		gatewayac.GatewayStatus().WithConditions(metav1ac.Condition().
			WithType("Accepted").WithStatus(metav1.ConditionTrue).WithReason("Accepted").WithMessage("istiod says so").
			WithLastTransitionTime(metav1.Now()))),
		metav1.ApplyOptions{FieldManager: "istio.io/gateway-controller", Force: true})
	if err != nil {
		t.Fatal(err)
	}

	feed := &linkFeed{}
	clk := clocktesting.NewFakeClock(time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC))
	reg := prometheus.NewRegistry()
	w := newLinkStatusWriter(feed.status, func(namespace, name string) *gatewayv1.Gateway {
		gw, err := kube.Gateway.GatewayV1().Gateways(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil
		}
		return gw
	}, kube.Gateway, zaptest.NewLogger(t), reg)
	w.clock = clk
	state := map[string]*written{}
	writes := func() float64 { return testutil.ToFloat64(w.writes.WithLabelValues("ok")) }
	get := func() *gatewayv1.Gateway {
		gw, err := gateways.Get(ctx, "cluster2", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return gw
	}
	cond := func(gw *gatewayv1.Gateway, typ string) *metav1.Condition {
		for i := range gw.Status.Conditions {
			if gw.Status.Conditions[i].Type == typ {
				return &gw.Status.Conditions[i]
			}
		}
		t.Fatalf("gateway %s/%s has no condition %s: %+v", gw.Namespace, gw.Name, typ, gw.Status.Conditions)
		return nil
	}

	link := peers.LinkStatus{Gateway: liveStateNamespace + "/cluster2", Cluster: "cluster2", Address: "127.0.0.1:1",
		State: peers.StateConnecting, LastError: "connection refused", Since: clk.Now()}
	feed.set(link)
	w.sync(ctx, state)
	gw := get()
	if c := cond(gw, federation.ConditionConnected); c.Status != metav1.ConditionFalse || c.Reason != federation.ReasonConnecting ||
		!strings.Contains(c.Message, "connection refused") || !strings.Contains(c.Message, "no message from the peer yet") {
		t.Errorf("Connected = %+v", c)
	}
	if c := cond(gw, federation.ConditionSynced); c.Status != metav1.ConditionFalse || c.Reason != federation.ReasonConnecting || c.ObservedGeneration != created.Generation {
		t.Errorf("Synced = %+v, want False/Connecting at generation %d", c, created.Generation)
	}
	if c := cond(gw, "Accepted"); c.Status != metav1.ConditionTrue || c.Message != "istiod says so" {
		t.Errorf("istiod's Accepted condition was touched: %+v", c)
	}
	for _, mf := range gw.ManagedFields {
		if mf.Manager == statusFieldManager && mf.Subresource != "status" {
			t.Errorf("peerd owns fields outside the status subresource: %+v", mf)
		}
	}

	// Nothing changed: no write, the object's resourceVersion stays.
	rv := gw.ResourceVersion
	clk.Step(time.Second)
	w.sync(ctx, state)
	clk.Step(time.Minute)
	w.sync(ctx, state)
	if got := get().ResourceVersion; got != rv || writes() != 1 {
		t.Errorf("unchanged link: resourceVersion %s → %s, %v writes; want no write after the first", rv, got, writes())
	}

	// Synced: written at the next poll.
	link.State, link.Since, link.LastMessage = peers.StateSynced, clk.Now(), clk.Now()
	feed.set(link)
	w.sync(ctx, state)
	gw = get()
	if c := cond(gw, federation.ConditionSynced); c.Status != metav1.ConditionTrue || c.Reason != federation.ReasonSynced ||
		!strings.Contains(c.Message, clk.Now().Format(time.RFC3339)) {
		t.Errorf("Synced after the link synced = %+v", c)
	}
	synced := cond(gw, federation.ConditionSynced).LastTransitionTime

	// Only the last message's time moves: held back for the heartbeat
	// interval, then written; the transition time stays.
	rv = gw.ResourceVersion
	clk.Step(time.Second)
	link.LastMessage = clk.Now()
	feed.set(link)
	w.sync(ctx, state)
	if got := get().ResourceVersion; got != rv {
		t.Errorf("a new last-message time alone was written within %v", linkHeartbeatInterval)
	}
	clk.Step(linkHeartbeatInterval)
	w.sync(ctx, state)
	gw = get()
	c := cond(gw, federation.ConditionSynced)
	if !strings.Contains(c.Message, link.LastMessage.Format(time.RFC3339)) {
		t.Errorf("after %v the last message's time is not written: %q", linkHeartbeatInterval, c.Message)
	}
	if !c.LastTransitionTime.Equal(&synced) {
		t.Errorf("lastTransitionTime moved from %v to %v without a status change", synced, c.LastTransitionTime)
	}

	// Unchanged conditions are re-applied after linkStatusResync (another
	// writer may have replaced the whole status), not before.
	clk.Step(linkStatusResync - time.Second)
	before := writes()
	w.sync(ctx, state)
	if writes() != before {
		t.Errorf("re-applied before %v", linkStatusResync)
	}
	clk.Step(time.Second)
	w.sync(ctx, state)
	if writes() != before+1 {
		t.Errorf("not re-applied after %v", linkStatusResync)
	}

	// A new generation of the Gateway is observed.
	gw.Spec.Listeners[0].Port = 15013
	if _, err := gateways.Update(ctx, gw, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	clk.Step(time.Second)
	w.sync(ctx, state)
	gw = get()
	if c := cond(gw, federation.ConditionConnected); c.ObservedGeneration != gw.Generation {
		t.Errorf("observedGeneration %d, Gateway generation %d", c.ObservedGeneration, gw.Generation)
	}

	// A removed Gateway needs nothing: no error, no write.
	if err := gateways.Delete(ctx, "cluster2", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	before = writes()
	link.State = peers.StateStale
	feed.set(link)
	clk.Step(time.Second)
	w.sync(ctx, state)
	if e := testutil.ToFloat64(w.writes.WithLabelValues("error")); e != 0 || writes() != before {
		t.Errorf("after the Gateway's removal: %v errors, %v writes (want 0 and %v)", e, writes(), before)
	}
}
