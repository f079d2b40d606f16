package clusterops

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/peerd-mesh/peerd/internal/federation"
	"github.com/peerd-mesh/peerd/internal/kubestate"
)

var now = time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)

// healthyMesh is n clusters c1..cn, each with network net<i>, trust domain
// c<i>.local, an addressed east-west gateway, a live peerd, and a link to
// every other cluster whose conditions say connected and synced.
func healthyMesh(t *testing.T, n int) []Snapshot {
	t.Helper()
	cfg := Config{}.withDefaults()
	snaps := make([]Snapshot, n)
	for i := range snaps {
		name := fmt.Sprintf("c%d", i+1)
		ew := EastWestGateway(EastWest{Namespace: cfg.Namespace, Name: cfg.EastWestName, Network: "net" + name[1:], Cluster: name})
		ew.Status.Addresses = []gatewayv1.GatewayStatusAddress{{Value: fmt.Sprintf("172.18.0.%d", i+1)}}
		snaps[i] = Snapshot{
			Context: name, Config: cfg,
			SystemNamespace: &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: cfg.SystemNamespace,
				Labels: map[string]string{federation.LabelNetwork: "net" + name[1:]}}},
			MeshConfig: "trustDomain: " + name + ".local\nrootNamespace: istio-system\n",
			Gateways:   []gatewayv1.Gateway{*ew},
			Lease:      lease("peerd-"+name, now.Add(-2*time.Second), 15),
		}
	}
	for i := range snaps {
		for j := range snaps {
			if i == j {
				continue
			}
			l, err := snaps[j].TargetLink()
			if err != nil {
				t.Fatal(err)
			}
			gw := federation.RenderLink(l)
			gw.Generation = 3
			setConditions(gw, metav1.ConditionTrue, federation.ReasonSynced, 3)
			snaps[i].Gateways = append(snaps[i].Gateways, *gw)
		}
	}
	return snaps
}

func lease(holder string, renewed time.Time, seconds int32) *coordinationv1.Lease {
	return &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: kubestate.LeaseName},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: &seconds,
			RenewTime: &metav1.MicroTime{Time: renewed}},
	}
}

func setConditions(gw *gatewayv1.Gateway, synced metav1.ConditionStatus, reason string, gen int64) {
	gw.Status.Conditions = []metav1.Condition{
		{Type: federation.ConditionConnected, Status: metav1.ConditionTrue, Reason: federation.ReasonConnected, ObservedGeneration: gen},
		{Type: federation.ConditionSynced, Status: synced, Reason: reason, Message: "peer says " + reason, ObservedGeneration: gen},
	}
}

// link returns the link Gateway in snaps[from] that links to cluster "to".
func link(t *testing.T, snaps []Snapshot, from int, to string) *gatewayv1.Gateway {
	t.Helper()
	for _, gw := range snaps[from].Links() {
		if gw.Labels[federation.LabelCluster] == to {
			return gw
		}
	}
	t.Fatalf("%s has no link to %s", snaps[from].Context, to)
	return nil
}

func eastWest(t *testing.T, s *Snapshot) *gatewayv1.Gateway {
	t.Helper()
	gw, err := s.EastWest()
	if err != nil {
		t.Fatal(err)
	}
	return gw
}

func globalSvc(ns, name string, ports ...corev1.ServicePort) corev1.Service {
	return corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name,
		Labels: map[string]string{"solo.io/service-scope": "global"}}, Spec: corev1.ServiceSpec{Ports: ports}}
}

func port(name string, p int32, target int, proto corev1.Protocol) corev1.ServicePort {
	return corev1.ServicePort{Name: name, Port: p, TargetPort: intstr.FromInt(target), Protocol: proto}
}

// want is a line the report must hold: in group, with status, containing
// every one of text.
type want struct {
	group  string
	status Status
	text   []string
}

func TestEvaluate(t *testing.T) {
	for _, tc := range []struct {
		name     string
		clusters int
		pairs    bool
		change   func(t *testing.T, s []Snapshot)
		healthy  bool
		want     []want
	}{
		{name: "healthy pair", clusters: 2, pairs: true, healthy: true, want: []want{
			{"c1", OK, []string{"network net1"}},
			{"c1", OK, []string{"peerd alive", "peerd-c1"}},
			{"c1", OK, []string{"istio-remote-peer-c2 → c2", "matches"}},
			{"c1", OK, []string{"istio-remote-peer-c2 → c2", "connected and synced"}},
			{"c2", OK, []string{"istio-remote-peer-c1 → c1", "connected and synced"}},
		}},
		{name: "healthy single cluster without links", clusters: 1, healthy: true, want: []want{
			{"c1", OK, []string{"no links in istio-gateways"}},
		}},
		{name: "expired lease: peerd not alive, its links unknown, never OK", clusters: 2, pairs: true,
			change: func(t *testing.T, s []Snapshot) { s[0].Lease = lease("peerd-c1", now.Add(-20*time.Second), 15) },
			want: []want{
				{"c1", Failed, []string{"peerd not alive", "expired", "peerd-c1", "20s ago"}},
				{"c1", Unknown, []string{"istio-remote-peer-c2", "live state unknown"}},
				{"c2", OK, []string{"istio-remote-peer-c1", "connected and synced"}},
			}},
		{name: "lease exactly at expiry is expired", clusters: 1,
			change: func(t *testing.T, s []Snapshot) { s[0].Lease = lease("p", now.Add(-15*time.Second), 15) },
			want:   []want{{"c1", Failed, []string{"expired"}}}},
		{name: "released lease: peerd stopped", clusters: 1,
			change: func(t *testing.T, s []Snapshot) { s[0].Lease = lease("", now, 15) },
			want:   []want{{"c1", Failed, []string{"released", "peerd stopped"}}}},
		{name: "no lease", clusters: 1,
			change: func(t *testing.T, s []Snapshot) { s[0].Lease = nil },
			want:   []want{{"c1", Failed, []string{"no Lease peerd"}}}},
		{name: "synced false: the reason and message, naming the link's target", clusters: 2, pairs: true,
			change: func(t *testing.T, s []Snapshot) {
				setConditions(link(t, s, 1, "c1"), metav1.ConditionFalse, federation.ReasonStale, 3)
			},
			want: []want{{"c2", Failed, []string{"istio-remote-peer-c1 → c1", "peerd.io/Synced=False (Stale): peer says Stale"}}}},
		{name: "connected false", clusters: 2, pairs: true,
			change: func(t *testing.T, s []Snapshot) {
				gw := link(t, s, 0, "c2")
				gw.Status.Conditions[0] = metav1.Condition{Type: federation.ConditionConnected, Status: metav1.ConditionFalse,
					Reason: federation.ReasonDisconnected, Message: "tls: bad certificate", ObservedGeneration: 3}
			},
			want: []want{{"c1", Failed, []string{"peerd.io/Connected=False (Disconnected): tls: bad certificate"}}}},
		{name: "no conditions yet: unknown", clusters: 2, pairs: true,
			change: func(t *testing.T, s []Snapshot) { link(t, s, 0, "c2").Status.Conditions = nil },
			want:   []want{{"c1", Unknown, []string{"no peerd.io/Connected condition"}}}},
		{name: "conditions for an older generation: unknown", clusters: 2, pairs: true,
			change: func(t *testing.T, s []Snapshot) { link(t, s, 0, "c2").Generation = 4 },
			want:   []want{{"c1", Unknown, []string{"generation 3, the Gateway is at 4"}}}},
		{name: "target's address moved: link out of date", clusters: 2, pairs: true,
			change: func(t *testing.T, s []Snapshot) {
				eastWest(t, &s[1]).Status.Addresses = []gatewayv1.GatewayStatusAddress{{Value: "10.9.9.9"}}
			},
			want: []want{{"c1", Failed, []string{"out of date", "addresses [172.18.0.2], target has [10.9.9.9]"}}}},
		{name: "target's trust domain changed", clusters: 2, pairs: true,
			change: func(t *testing.T, s []Snapshot) { s[1].MeshConfig = "trustDomain: other.local\n" },
			want:   []want{{"c1", Failed, []string{"trust domain c2.local", "c2's mesh config says other.local"}}}},
		{name: "no mesh config: cluster.local", clusters: 1, healthy: true,
			change: func(t *testing.T, s []Snapshot) { s[0].MeshConfig = "" },
			want:   []want{{"c1", OK, []string{"trust domain cluster.local"}}}},
		{name: "missing link in a checked pair", clusters: 3, pairs: true,
			change: func(t *testing.T, s []Snapshot) {
				gw := link(t, s, 2, "c1")
				gw.Spec.GatewayClassName = "something-else"
			},
			want: []want{{"c3", Failed, []string{"no link to c1"}}}},
		{name: "invalid link", clusters: 2, pairs: true,
			change: func(t *testing.T, s []Snapshot) { link(t, s, 0, "c2").Spec.Addresses = nil },
			want:   []want{{"c1", Failed, []string{"invalid", "spec.addresses"}}}},
		{name: "link to itself", clusters: 2,
			change: func(t *testing.T, s []Snapshot) { link(t, s, 0, "c2").Labels[federation.LabelCluster] = "c1" },
			want:   []want{{"c1", Failed, []string{"to itself"}}}},
		{name: "link to a cluster not checked: valid, live state read", clusters: 1, healthy: true,
			change: func(t *testing.T, s []Snapshot) {
				gw := federation.RenderLink(federation.Link{Namespace: "istio-gateways", Network: "far", Addresses: []string{"10.1.1.1"}, XDSPort: 15012})
				setConditions(gw, metav1.ConditionTrue, federation.ReasonSynced, 0)
				s[0].Gateways = append(s[0].Gateways, *gw)
			},
			want: []want{{"c1", OK, []string{"cluster far (none of the checked clusters is far"}}}},
		{name: "no network label", clusters: 1,
			change: func(t *testing.T, s []Snapshot) { s[0].SystemNamespace.Labels = nil },
			want:   []want{{"c1", Failed, []string{"namespace istio-system has no topology.istio.io/network label"}}}},
		{name: "east-west gateway without address", clusters: 1,
			change: func(t *testing.T, s []Snapshot) { eastWest(t, &s[0]).Status.Addresses = nil },
			want:   []want{{"c1", Failed, []string{"no address yet"}}}},
		{name: "no east-west gateway", clusters: 1,
			change: func(t *testing.T, s []Snapshot) { s[0].Gateways = nil },
			want:   []want{{"c1", Failed, []string{"no east-west Gateway (class istio-eastwest)"}}}},
		{name: "unreachable cluster", clusters: 2, pairs: true,
			change: func(t *testing.T, s []Snapshot) {
				s[1] = Snapshot{Context: "c2", Err: errors.New("connection refused")}
			},
			want: []want{
				{"c2", Failed, []string{"cannot read the cluster", "connection refused"}},
				// c1's link to c2 can no longer be matched; its live state still counts.
				{"c1", OK, []string{"none of the checked clusters is c2"}},
			}},
		{name: "global service: same port, other target port", clusters: 2, pairs: true,
			change: func(t *testing.T, s []Snapshot) {
				s[0].Services = []corev1.Service{globalSvc("apps", "echo", port("http", 80, 8080, ""))}
				s[1].Services = []corev1.Service{globalSvc("apps", "echo", port("http", 80, 9090, corev1.ProtocolTCP))}
			},
			want: []want{{meshGroup, Failed, []string{"service apps/echo", "port 80 is TCP→8080 in c1 but TCP→9090 in c2"}}}},
		{name: "global service by namespace: same name, other number", clusters: 2, pairs: true,
			change: func(t *testing.T, s []Snapshot) {
				s[0].Namespaces = []corev1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: "apps", Labels: map[string]string{"solo.io/service-scope": "global-only"}}}}
				plain := globalSvc("apps", "echo", port("http", 80, 8080, ""))
				plain.Labels = nil
				s[0].Services = []corev1.Service{plain}
				s[1].Services = []corev1.Service{globalSvc("apps", "echo", port("http", 8080, 8080, ""))}
			},
			want: []want{{meshGroup, Failed, []string{`port "http" is 80 in c1 but 8080 in c2`}}}},
		{name: "a service global in one cluster only is no conflict", clusters: 2, pairs: true, healthy: true,
			change: func(t *testing.T, s []Snapshot) {
				s[0].Services = []corev1.Service{globalSvc("apps", "echo", port("http", 80, 8080, ""))}
				other := globalSvc("apps", "echo", port("http", 80, 9090, ""))
				other.Labels = nil
				s[1].Services = []corev1.Service{other}
			},
			want: []want{{meshGroup, OK, []string{"1 global service(s), no port conflicts"}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			snaps := healthyMesh(t, tc.clusters)
			if tc.change != nil {
				tc.change(t, snaps)
			}
			r := Evaluate(snaps, CheckOptions{Now: now, ExpectPairs: tc.pairs})
			var out strings.Builder
			r.Write(&out)
			if r.Healthy() != tc.healthy {
				t.Errorf("Healthy() = %v, want %v:\n%s", r.Healthy(), tc.healthy, out.String())
			}
			for _, w := range tc.want {
				if !hasLine(r, w) {
					t.Errorf("no %s line in %s with %q:\n%s", w.status.Symbol(), w.group, w.text, out.String())
				}
			}
			summary := out.String()[strings.LastIndex(strings.TrimSpace(out.String()), "\n")+1:]
			if tc.healthy != strings.Contains(summary, "all checks passed") {
				t.Errorf("summary %q for healthy=%v", summary, tc.healthy)
			}
		})
	}
}

func hasLine(r Report, w want) bool {
	for _, g := range r.Groups {
		if g.Name != w.group {
			continue
		}
	lines:
		for _, l := range g.Lines {
			if l.Status != w.status {
				continue
			}
			for _, s := range w.text {
				if !strings.Contains(l.Text, s) {
					continue lines
				}
			}
			return true
		}
	}
	return false
}

// TestEvaluateFailuresCarryAFix: every line that is not OK because
// something is wrong says how to fix it.
func TestEvaluateFailuresCarryAFix(t *testing.T) {
	snaps := healthyMesh(t, 2)
	snaps[0].SystemNamespace.Labels = nil
	snaps[0].Lease = nil
	snaps[1].Gateways = snaps[1].Gateways[1:]
	r := Evaluate(snaps, CheckOptions{Now: now, ExpectPairs: true})
	for _, g := range r.Groups {
		for _, l := range g.Lines {
			if l.Status == Failed && l.Fix == "" {
				t.Errorf("%s: %q has no fix", g.Name, l.Text)
			}
		}
	}
}
