package clusterops

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/peerd-mesh/peerd/internal/federation"
)

func TestTargetLink(t *testing.T) {
	s := healthyMesh(t, 1)[0]
	ew := eastWest(t, &s)
	ew.Labels[federation.LabelRegion] = "eu"
	ew.Status.Addresses = append(ew.Status.Addresses, gatewayv1.GatewayStatusAddress{Value: "ew.c1.example.com"})
	got, err := s.TargetLink()
	if err != nil {
		t.Fatal(err)
	}
	want := federation.Link{
		Gateway: "istio-gateways/istio-remote-peer-c1", Namespace: "istio-gateways",
		Cluster: "c1", Network: "net1", TrustDomain: "c1.local", ServiceAccount: "istio-eastwest-istio-eastwest",
		Addresses: []string{"172.18.0.1", "ew.c1.example.com"}, XDSPort: 15012, HBONEPort: 15008, Region: "eu",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("TargetLink (-want +got):\n%s", diff)
	}
	if back, err := federation.ParseLink(federation.RenderLink(got)); err != nil || !cmp.Equal(back, got) {
		t.Errorf("the rendered link does not read back: %v %s", err, cmp.Diff(got, back))
	}
}

// TestTargetLinkNamesEverythingMissing: one error per missing piece, each
// naming the context and the fix, all at once.
func TestTargetLinkNamesEverythingMissing(t *testing.T) {
	s := healthyMesh(t, 1)[0]
	s.SystemNamespace.Labels = nil
	eastWest(t, &s).Status.Addresses = nil
	_, err := s.TargetLink()
	if err == nil {
		t.Fatal("no error")
	}
	for _, w := range []string{
		"context c1: namespace istio-system has no label topology.istio.io/network; add it: kubectl --context c1 label namespace istio-system topology.istio.io/network=<network>",
		"context c1: gateway istio-gateways/istio-eastwest: status.addresses: none yet",
	} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q:\n%v", w, err)
		}
	}
	s.Gateways = nil
	if _, err := s.TargetLink(); err == nil || !strings.Contains(err.Error(), "no east-west Gateway (class istio-eastwest) in namespace istio-gateways; create it: peerd expose --context c1 --namespace istio-gateways") {
		t.Errorf("no gateway: %v", err)
	}
}

func TestServiceAccount(t *testing.T) {
	gw := EastWestGateway(EastWest{Namespace: "gw", Name: "ew", Network: "n"})
	pod := func(gateway, sa string) corev1.Pod {
		return corev1.Pod{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{LabelGatewayName: gateway}},
			Spec: corev1.PodSpec{ServiceAccountName: sa}}
	}
	for _, tc := range []struct {
		name       string
		annotation string
		pods       []corev1.Pod
		want       string
	}{
		{"istio's default name", "", nil, "ew-istio-eastwest"},
		{"the annotation istio obeys", "custom", []corev1.Pod{pod("ew", "other")}, "custom"},
		{"its pods' account", "", []corev1.Pod{pod("ew", "ew-sa"), pod("ew", "ew-sa"), pod("another", "x")}, "ew-sa"},
		{"pods that disagree: the default", "", []corev1.Pod{pod("ew", "a"), pod("ew", "b")}, "ew-istio-eastwest"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := gw.DeepCopy()
			if tc.annotation != "" {
				g.Annotations = map[string]string{federation.AnnotationServiceAccount: tc.annotation}
			}
			s := Snapshot{GatewayPods: tc.pods}
			if got := s.ServiceAccount(g); got != tc.want {
				t.Errorf("ServiceAccount = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestMergeKeys(t *testing.T) {
	cur := map[string]string{"a": "1", "b": "2", "mine": "x", "gone": "y"}
	details := mergeKeys("labels", &cur, map[string]string{"mine": "z", "new": "n"}, []string{"mine", "new", "gone"})
	if diff := cmp.Diff(map[string]string{"a": "1", "b": "2", "mine": "z", "new": "n"}, cur); diff != "" {
		t.Errorf("labels (-want +got):\n%s", diff)
	}
	want := []string{`labels[mine]: "x" → "z"`, `labels[new]: set "n"`, `labels[gone]: removed "y"`}
	if diff := cmp.Diff(want, details); diff != "" {
		t.Errorf("details (-want +got):\n%s", diff)
	}
	var empty map[string]string
	if d := mergeKeys("annotations", &empty, nil, []string{"k"}); d != nil || empty != nil {
		t.Errorf("nothing wanted, nothing there: %v %v", d, empty)
	}
}

func TestMergeListeners(t *testing.T) {
	want := EastWestGateway(EastWest{Name: "ew", Network: "n"}).Spec.Listeners
	cur := []gatewayv1.Listener{{Name: "extra", Port: 443, Protocol: gatewayv1.HTTPSProtocolType}, want[1]}
	cur[1].AllowedRoutes = &gatewayv1.AllowedRoutes{} // an API server default: no difference
	cur[1].Port = 15013
	details := mergeListeners(&cur, want)
	if diff := cmp.Diff([]string{
		"spec.listeners[cross-network]: added (15008/HBONE)",
		"spec.listeners[xds-tls]: 15013/TLS/Passthrough → 15012/TLS/Passthrough",
	}, details); diff != "" {
		t.Errorf("details (-want +got):\n%s", diff)
	}
	if len(cur) != 3 || cur[0].Name != "extra" || cur[1].Port != 15012 || cur[2].Name != federation.ListenerHBONE {
		t.Errorf("listeners %+v: want extra kept, xds-tls fixed, cross-network added", cur)
	}
	if d := mergeListeners(&cur, want); d != nil {
		t.Errorf("second merge changed %v", d)
	}
}
