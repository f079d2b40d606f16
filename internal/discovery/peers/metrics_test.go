package peers

import (
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/peerd-mesh/peerd/internal/federation"
)

func TestMetrics(t *testing.T) {
	p := newPeer(t)
	p.set(svc("apps", "echo", 2), svc("apps", "web", 1))
	e := newEnv(t, envOpts{})
	e.run()
	e.m.Sync([]*gatewayv1.Gateway{
		remoteGateway("cluster2", p.port()),
		remoteGateway("cluster3", p.port(), func(gw *gatewayv1.Gateway) { gw.Spec.Addresses = nil }),
	})
	e.waitState("cluster2", StateSynced)
	e.waitImported("cluster2", map[string]uint32{"apps/echo": 2, "apps/web": 1})
	e.step(90 * time.Second)

	want := `
# HELP peerd_peer_invalid_gateways istio-remote Gateways that currently cannot be read as links.
# TYPE peerd_peer_invalid_gateways gauge
peerd_peer_invalid_gateways 1
# HELP peerd_peer_last_message_age_seconds Seconds since the link's last response from its peer (absent before the first).
# TYPE peerd_peer_last_message_age_seconds gauge
peerd_peer_last_message_age_seconds{cluster="cluster2"} 90
# HELP peerd_peer_link_state 1 for the state each link is in (connecting, synced, stale, withdrawn, rejected), 0 for the others.
# TYPE peerd_peer_link_state gauge
peerd_peer_link_state{cluster="cluster2",state="connecting"} 0
peerd_peer_link_state{cluster="cluster2",state="rejected"} 0
peerd_peer_link_state{cluster="cluster2",state="stale"} 0
peerd_peer_link_state{cluster="cluster2",state="synced"} 1
peerd_peer_link_state{cluster="cluster2",state="withdrawn"} 0
# HELP peerd_peer_services_imported Services the link currently imports into the index.
# TYPE peerd_peer_services_imported gauge
peerd_peer_services_imported{cluster="cluster2"} 2
# HELP peerd_peer_gateway_problems_total istio-remote Gateways found unreadable as links (each distinct problem of a Gateway counted once).
# TYPE peerd_peer_gateway_problems_total counter
peerd_peer_gateway_problems_total 1
`
	if err := testutil.GatherAndCompare(e.reg, strings.NewReader(want),
		"peerd_peer_invalid_gateways", "peerd_peer_last_message_age_seconds", "peerd_peer_link_state",
		"peerd_peer_services_imported", "peerd_peer_gateway_problems_total"); err != nil {
		t.Error(err)
	}

	// An unlinked cluster's series go away with it.
	e.m.Sync(nil)
	if n := testutil.CollectAndCount(e.m.metrics, "peerd_peer_link_state"); n != 0 {
		t.Errorf("%d state series after unlinking everything", n)
	}
}

// Linking and unlinking leaves no goroutine behind, and Run ends every one
// it started.
func TestNoGoroutineLeaks(t *testing.T) {
	p := newPeer(t)
	p.set(svc("apps", "echo", 2))
	e := newEnv(t, envOpts{})
	e.run()
	for range 3 {
		e.m.Sync([]*gatewayv1.Gateway{remoteGateway("cluster2", p.port()), remoteGateway("cluster3", p.port())})
		e.waitState("cluster2", StateSynced)
		e.waitState("cluster3", StateSynced)
		e.m.Sync([]*gatewayv1.Gateway{remoteGateway("cluster3", p.port())})
		eventually(t, "cluster2's client gone", func() error {
			if g := peersGoroutines(); strings.Count(strings.Join(g, "\n"), "xds.(*Client).Run") > 1 {
				return fmt.Errorf("client goroutines:\n%s", strings.Join(g, "\n\n"))
			}
			return nil
		})
	}
	e.stop()
	waitNoPeersGoroutines(t)
}

func TestDebugJSON(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.m.Sync([]*gatewayv1.Gateway{remoteGateway("cluster2", 15012), remoteGateway("cluster3", 15012, withLabel(federation.LabelNetwork, ""))})
	rec := httptest.NewRecorder()
	e.m.ServeHTTP(rec, httptest.NewRequest("GET", "/debug/peers", nil))
	var got []LinkStatus
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
		t.Fatalf("%v in %s", err, rec.Body)
	}
	if len(got) != 2 || got[0].Cluster != "cluster2" || got[0].State != StateConnecting || got[1].State != StateInvalid ||
		!strings.Contains(rec.Body.String(), `"lastError": "gateway istio-gateways/cluster3: metadata.labels[topology.istio.io/network]`) {
		t.Errorf("/debug/peers:\n%s", rec.Body)
	}
	if strings.Contains(rec.Body.String(), "0001-01-01") {
		t.Errorf("zero times rendered:\n%s", rec.Body)
	}
}
