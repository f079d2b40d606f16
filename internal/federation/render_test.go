package federation

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// TestRenderLinkRoundTrips: every Link that ParseLink can return renders to
// a Gateway that parses back to it, field for field.
func TestRenderLinkRoundTrips(t *testing.T) {
	for _, tc := range []struct {
		name string
		link Link
	}{
		{"everything set", Link{
			Gateway: "istio-gateways/cluster2", Namespace: "istio-gateways",
			Cluster: "cluster2", Network: "network2", TrustDomain: "cluster2.local", ServiceAccount: "istio-eastwest",
			Addresses: []string{"172.18.0.5", "ew.cluster2.example.com"}, XDSPort: 15012, HBONEPort: 15008,
			Region: "us-west", Zone: "us-west-1",
		}},
		{"cluster is the network, no trust domain, no locality", Link{
			Gateway: "gw/net3", Namespace: "gw", Cluster: "net3", Network: "net3",
			Addresses: []string{"fd00::5"}, XDSPort: 15443, HBONEPort: 15009,
		}},
		{"hostname only, region without zone", Link{
			Gateway: "istio-gateways/istio-remote-peer-c4", Namespace: "istio-gateways", Cluster: "c4", Network: "n4",
			ServiceAccount: "eastwest", Addresses: []string{"ew.c4.example.com"}, XDSPort: 15012, HBONEPort: 15008,
			Region: "eu",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gw := RenderLink(tc.link)
			if !IsRemote(gw) {
				t.Fatalf("class %q, want %q", gw.Spec.GatewayClassName, ClassRemote)
			}
			got, err := ParseLink(gw)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.link, got); diff != "" {
				t.Errorf("ParseLink(RenderLink(l)) (-l +got):\n%s", diff)
			}
		})
	}
}

func TestRenderLinkFields(t *testing.T) {
	gw := RenderLink(Link{Namespace: "istio-gateways", Network: "n2", Addresses: []string{"10.0.0.1", "ew.example.com"}, XDSPort: 15012})
	if gw.Namespace != "istio-gateways" || gw.Name != "istio-remote-peer-n2" {
		t.Errorf("name %s/%s, want istio-gateways/istio-remote-peer-n2 (the cluster defaults to the network)", gw.Namespace, gw.Name)
	}
	if gw.Labels[LabelCluster] != "n2" {
		t.Errorf("cluster label %q, want the network written out", gw.Labels[LabelCluster])
	}
	if gw.Annotations != nil {
		t.Errorf("annotations %v, want none", gw.Annotations)
	}
	types := []gatewayv1.AddressType{*gw.Spec.Addresses[0].Type, *gw.Spec.Addresses[1].Type}
	if types[0] != gatewayv1.IPAddressType || types[1] != gatewayv1.HostnameAddressType {
		t.Errorf("address types %v, want IPAddress, Hostname", types)
	}
	for _, l := range gw.Spec.Listeners {
		if l.TLS == nil || l.TLS.Mode == nil || *l.TLS.Mode != gatewayv1.TLSModePassthrough {
			t.Errorf("listener %s: tls mode not Passthrough", l.Name)
		}
	}
	if p := gw.Spec.Listeners[0]; p.Name != ListenerHBONE || p.Port != DefaultHBONEPort || p.Protocol != ProtocolHBONE {
		t.Errorf("first listener %s %d %s, want the default HBONE one", p.Name, p.Port, p.Protocol)
	}
}
