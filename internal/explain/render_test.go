package explain

import (
	"encoding/json"
	"testing"

	"github.com/google/go-cmp/cmp"

	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
)

// renderFixture: a same-zone endpoint, one outranked by zone, an
// UNHEALTHY one, and a remote cluster behind an e/w gateway workload.
func renderFixture(t *testing.T) Result {
	t.Helper()
	gw := &workloadpb.Workload{Uid: "c2//Pod/istio-gateways/eastwest-0", Namespace: "istio-gateways", Network: "net2", ClusterId: "c2",
		Addresses: [][]byte{ipb("192.0.2.10")}}
	s := state([]*workloadpb.Service{echo(lb(FAILOVER, NETWORK, REGION, ZONE))},
		ep("c1//Pod/apps/a"),
		ep("c1//Pod/apps/b", locality("us-east", "us-east-1b", "")),
		ep("c1//Pod/apps/c", unhealthy),
		ep("c2/apps/echo", remote, capacity(3)),
		gw)
	r, err := Explain(s, Query{Service: "10.96.0.10", Client: client})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestTable(t *testing.T) {
	want := `service apps/echo.apps.svc.cluster.local (VIP net1/10.96.0.10)
client: network net1, cluster c1, node node-a, locality us-east/us-east-1a/rack-1
routing preference: NETWORK, REGION, ZONE; mode: FAILOVER; health policy: ONLY_HEALTHY
ENDPOINT        CLUSTER  NETWORK  LOCALITY                   CAPACITY  HEALTH     RANK  PROBABILITY  REASON
c1//Pod/apps/a  c1       net1     us-east/us-east-1a/rack-1  1         HEALTHY    5     100.0%       same network
c1//Pod/apps/b  c1       net1     us-east/us-east-1b         1         HEALTHY    4     -            outranked (rank 4 < 5): ZONE differs (endpoint us-east-1b, client us-east-1a)
c2/apps/echo    c2       net2     us-east/us-east-1a/rack-1  3         HEALTHY    2     -            outranked by same-network endpoints
c1//Pod/apps/c  c1       net1     us-east/us-east-1a/rack-1  1         UNHEALTHY  -     -            UNHEALTHY
`
	if diff := cmp.Diff(want, Table(renderFixture(t))); diff != "" {
		t.Errorf("table (-want +got):\n%s", diff)
	}
}

func TestJSONRoundTrip(t *testing.T) {
	r := renderFixture(t)
	b, err := JSON(r)
	if err != nil {
		t.Fatal(err)
	}
	var back Result
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	if diff := cmp.Diff(r, back, cmp.AllowUnexported(Gateway{}), cmp.FilterPath(func(p cmp.Path) bool {
		return p.Last().String() == ".short" // not serialized: only the reason text uses it
	}, cmp.Ignore())); diff != "" {
		t.Errorf("JSON round trip (-want +got):\n%s", diff)
	}
}
