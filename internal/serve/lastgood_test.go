package serve

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/peerd-mesh/peerd/internal/discovery"
	"github.com/peerd-mesh/peerd/internal/federation"
)

// TestLastGoodLinkKeepsAWorkingLinkThroughABadEdit: the model keeps a link
// Gateway's last version that parsed while its current one does not, so a
// typo does not withdraw the cluster; a fixed edit, a deletion or a change
// of class go through.
func TestLastGoodLinkKeepsAWorkingLinkThroughABadEdit(t *testing.T) {
	link := func(addr string) *gatewayv1.Gateway {
		gw := &gatewayv1.Gateway{
			ObjectMeta: metav1.ObjectMeta{Namespace: "istio-gateways", Name: "cluster2",
				Labels: map[string]string{federation.LabelNetwork: "network2"}},
			Spec: gatewayv1.GatewaySpec{
				GatewayClassName: federation.ClassRemote,
				Listeners:        []gatewayv1.Listener{{Name: federation.ListenerXDS, Port: 15012}},
			},
		}
		if addr != "" {
			gw.Spec.Addresses = []gatewayv1.GatewaySpecAddress{{Value: addr}}
		}
		return gw
	}
	key := discovery.Key{Kind: discovery.KindGateway, Namespace: "istio-gateways", Name: "cluster2"}
	m := &modelLoop{goodLinks: map[discovery.Key]*gatewayv1.Gateway{}}
	good, bad, fixed := link("10.0.0.1"), link(""), link("10.0.0.2")

	if got := m.lastGoodLink(discovery.Change{Key: key, Object: bad}); got != bad {
		t.Errorf("a bad link never good before: model gets %v; want the bad one (its warning)", got)
	}
	if got := m.lastGoodLink(discovery.Change{Key: key, Object: good}); got != good {
		t.Errorf("good link: model gets %v", got)
	}
	if got := m.lastGoodLink(discovery.Change{Key: key, Object: bad}); got != good {
		t.Errorf("bad edit of a good link: model gets %v; want the last good version", got)
	}
	if got := m.lastGoodLink(discovery.Change{Key: key, Object: fixed}); got != fixed {
		t.Errorf("fixed edit: model gets %v", got)
	}
	eastWest := link("10.0.0.3")
	eastWest.Spec.GatewayClassName = federation.ClassEastWest
	if got := m.lastGoodLink(discovery.Change{Key: key, Object: eastWest}); got != eastWest {
		t.Errorf("class changed: model gets %v", got)
	}
	if got := m.lastGoodLink(discovery.Change{Key: key, Object: bad}); got != bad {
		t.Errorf("bad link after it stopped being one: model gets %v; want the bad one", got)
	}
	if got := m.lastGoodLink(discovery.Change{Key: key}); got != nil {
		t.Errorf("deleted: model gets %v; want nil", got)
	}
}
