package federation

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

func linkGateway(change func(*gatewayv1.Gateway)) *gatewayv1.Gateway {
	gw := &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: "istio-gateways", Name: "cluster2",
			Labels: map[string]string{LabelNetwork: "network2", LabelCluster: "cluster2",
				LabelRegion: "us-west", LabelZone: "us-west-1"},
			Annotations: map[string]string{AnnotationTrustDomain: "cluster2.local", AnnotationServiceAccount: "istio-eastwest"},
		},
		Spec: gatewayv1.GatewaySpec{
			GatewayClassName: ClassRemote,
			Addresses:        []gatewayv1.GatewaySpecAddress{{Value: "172.18.0.5"}, {Value: "ew.cluster2.example.com"}},
			Listeners: []gatewayv1.Listener{
				{Name: ListenerHBONE, Port: 15008, Protocol: "HBONE"},
				{Name: ListenerXDS, Port: 15012, Protocol: gatewayv1.TLSProtocolType},
			},
		},
	}
	if change != nil {
		change(gw)
	}
	return gw
}

func TestParseLink(t *testing.T) {
	got, err := ParseLink(linkGateway(nil))
	if err != nil {
		t.Fatal(err)
	}
	want := Link{
		Gateway: "istio-gateways/cluster2", Namespace: "istio-gateways",
		Cluster: "cluster2", Network: "network2", TrustDomain: "cluster2.local", ServiceAccount: "istio-eastwest",
		Addresses: []string{"172.18.0.5", "ew.cluster2.example.com"}, XDSPort: 15012, HBONEPort: 15008,
		Region: "us-west", Zone: "us-west-1",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("ParseLink (-want +got):\n%s", diff)
	}
	if got.Dial() != "172.18.0.5:15012" {
		t.Errorf("Dial = %q", got.Dial())
	}
}

func TestParseLinkDefaults(t *testing.T) {
	got, err := ParseLink(linkGateway(func(gw *gatewayv1.Gateway) {
		delete(gw.Labels, LabelCluster)
		gw.Spec.Listeners = gw.Spec.Listeners[1:]
		gw.Spec.Addresses = []gatewayv1.GatewaySpecAddress{{Value: "fd00::5"}}
	}))
	if err != nil {
		t.Fatal(err)
	}
	if got.Cluster != "network2" || got.HBONEPort != DefaultHBONEPort || got.Dial() != "[fd00::5]:15012" {
		t.Fatalf("defaults: cluster %q, HBONE port %d, dial %q", got.Cluster, got.HBONEPort, got.Dial())
	}
}

func TestParseLinkErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(*gatewayv1.Gateway)
		want   string
	}{
		{"no network", func(gw *gatewayv1.Gateway) { delete(gw.Labels, LabelNetwork) }, "metadata.labels[topology.istio.io/network]: required"},
		{"no address", func(gw *gatewayv1.Gateway) { gw.Spec.Addresses = nil }, "spec.addresses: none"},
		{"bad address", func(gw *gatewayv1.Gateway) { gw.Spec.Addresses[1].Value = "not an address!" }, `spec.addresses[1]: "not an address!" is neither`},
		{"no xds listener", func(gw *gatewayv1.Gateway) { gw.Spec.Listeners = gw.Spec.Listeners[:1] }, `spec.listeners: no "xds-tls" listener`},
		{"bad trust domain", func(gw *gatewayv1.Gateway) { gw.Annotations[AnnotationTrustDomain] = "Bad_TD" }, "metadata.annotations[gateway.istio.io/trust-domain]"},
		{"cluster with a slash", func(gw *gatewayv1.Gateway) { gw.Labels[LabelCluster] = "a/b" }, "must not contain '/'"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseLink(linkGateway(tc.change))
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "gateway istio-gateways/cluster2: ") {
				t.Fatalf("ParseLink = %v; want an error for gateway istio-gateways/cluster2 containing %q", err, tc.want)
			}
		})
	}
}

func TestIsRemote(t *testing.T) {
	if !IsRemote(linkGateway(nil)) {
		t.Error("istio-remote gateway not recognised")
	}
	if IsRemote(linkGateway(func(gw *gatewayv1.Gateway) { gw.Spec.GatewayClassName = ClassEastWest })) || IsRemote(nil) {
		t.Error("non-link gateway taken for a link")
	}
}

func TestPeerTrustDomain(t *testing.T) {
	if got := (Link{TrustDomain: "cluster2.local"}).PeerTrustDomain(); got != "cluster2.local" {
		t.Errorf("annotated: %q", got)
	}
	if got := (Link{}).PeerTrustDomain(); got != DefaultTrustDomain {
		t.Errorf("no annotation: %q, want %q", got, DefaultTrustDomain)
	}
}
