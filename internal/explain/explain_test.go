package explain

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
)

// TestRanking has one row per rule of ztunnel-client.md "How the resources
// are used", in its order: candidates, ranking, pick. Endpoints are
// summarized as "uid outcome rank probability"; reasons are checked by
// substring where the row is about the words.
func TestRanking(t *testing.T) {
	for _, tc := range []struct {
		name    string
		svc     *workloadpb.Service
		wls     []*workloadpb.Workload
		client  Client // default: the fixture client
		want    []string
		reasons map[string]string // uid -> substring of its reason
		wantErr error
	}{
		// Candidates.
		{
			name:    "HEALTHY endpoints are candidates, UNHEALTHY ones are not",
			svc:     echo(),
			wls:     []*workloadpb.Workload{ep("a"), ep("b", unhealthy)},
			want:    []string{"a picked 0 1.00", "b unhealthy -1 0.00"},
			reasons: map[string]string{"a": "same network", "b": "UNHEALTHY"},
		},
		{
			name: "health policy ALLOW_ALL makes UNHEALTHY endpoints candidates",
			svc:  echo(allowAll),
			wls:  []*workloadpb.Workload{ep("a"), ep("b", unhealthy)},
			want: []string{"a picked 0 0.50", "b picked 0 0.50"},
		},
		{
			name:    "only UNHEALTHY endpoints: no healthy upstream",
			svc:     echo(),
			wls:     []*workloadpb.Workload{ep("a", unhealthy)},
			want:    []string{"a unhealthy -1 0.00"},
			wantErr: ErrNoHealthyUpstream,
		},
		{
			name:    "an endpoint with no address on the client's network is unusable, gateway or not",
			svc:     echo(),
			wls:     []*workloadpb.Workload{ep("a", noAddress, via(gwAddress("net1", "192.0.2.1", 15008)))},
			want:    []string{"a unreachable -1 0.00"},
			reasons: map[string]string{"a": "on the client's network"},
			wantErr: ErrNoHealthyUpstream,
		},
		{
			name:    "an endpoint with no address and no network_gateway is unusable",
			svc:     echo(),
			wls:     []*workloadpb.Workload{ep("a", noAddress, network("net2"))},
			want:    []string{"a unreachable -1 0.00"},
			reasons: map[string]string{"a": "no network_gateway"},
			wantErr: ErrNoHealthyUpstream,
		},
		{
			name:    "an endpoint with no address on another network is reached through its network_gateway",
			svc:     echo(),
			wls:     []*workloadpb.Workload{ep("r", remote)},
			want:    []string{"r picked 0 1.00"},
			reasons: map[string]string{"r": "other network via gateway 192.0.2.10:15008: gateway not found"},
		},
		{
			name:    "an endpoint on another network without a network_gateway is picked, and the connection fails",
			svc:     echo(),
			wls:     []*workloadpb.Workload{ep("r", network("net2"))},
			want:    []string{"r picked 0 1.00"},
			reasons: map[string]string{"r": "without a network_gateway: connections fail"},
		},

		// Ranking.
		{
			name: "without load_balancing every candidate is equal",
			svc:  echo(),
			wls:  []*workloadpb.Workload{ep("a"), ep("r", remote)},
			want: []string{"a picked 0 0.50", "r picked 0 0.50"},
		},
		{
			name: "mode UNSPECIFIED_MODE ignores the routing preference",
			svc:  echo(lb(UNSPECIFIED, NETWORK)),
			wls:  []*workloadpb.Workload{ep("a"), ep("r", remote)},
			want: []string{"a picked 0 0.50", "r picked 0 0.50"},
		},
		{
			name:    "FAILOVER [NETWORK]: same-network endpoints outrank remote ones",
			svc:     echo(lb(FAILOVER, NETWORK)),
			wls:     []*workloadpb.Workload{ep("a"), ep("r", remote)},
			want:    []string{"a picked 1 1.00", "r outranked 0 0.00"},
			reasons: map[string]string{"r": "outranked by same-network endpoints"},
		},
		{
			name:    "FAILOVER [NETWORK]: no healthy same-network endpoint fails over to the remote one",
			svc:     echo(lb(FAILOVER, NETWORK)),
			wls:     []*workloadpb.Workload{ep("a", unhealthy), ep("r", remote)},
			want:    []string{"r picked 0 1.00", "a unhealthy -1 0.00"},
			reasons: map[string]string{"r": "failover: no usable endpoint on the client's network"},
		},
		{
			name: "+1 per consecutive matching scope: [NETWORK, REGION, ZONE]",
			svc:  echo(lb(FAILOVER, NETWORK, REGION, ZONE)),
			wls: []*workloadpb.Workload{
				ep("zone"),
				ep("region", locality("us-east", "us-east-1b", "")),
				ep("network", locality("eu-west", "eu-west-1a", "")),
			},
			want:    []string{"zone picked 5 1.00", "region outranked 4 0.00", "network outranked 3 0.00"},
			reasons: map[string]string{"region": "outranked (rank 4 < 5): ZONE differs (endpoint us-east-1b, client us-east-1a)"},
		},
		{
			name: "the walk stops at the first mismatch: a later matching scope does not count",
			svc:  echo(lb(FAILOVER, REGION, ZONE, SUBZONE)),
			wls: []*workloadpb.Workload{
				ep("zone-differs", locality("us-east", "us-east-1b", "rack-1")),
				ep("subzone-differs", locality("us-east", "us-east-1a", "rack-2")),
			},
			want: []string{"subzone-differs picked 2 1.00", "zone-differs outranked 1 0.00"},
		},
		{
			name:   "values compare as strings: an empty locality on both sides matches",
			svc:    echo(lb(FAILOVER, REGION, ZONE)),
			client: Client{Network: "net1"},
			wls: []*workloadpb.Workload{
				ep("none", locality("", "", "")),
				ep("located", locality("us-east", "", "")),
			},
			want: []string{"none picked 2 1.00", "located outranked 0 0.00"},
		},
		{
			name: "NETWORK first: every same-network endpoint outranks every remote one",
			svc:  echo(lb(FAILOVER, NETWORK, REGION, ZONE)),
			wls: []*workloadpb.Workload{
				ep("local-far", locality("eu-west", "eu-west-1a", "")),
				ep("remote-close", remote, locality("us-east", "us-east-1a", "")),
			},
			// local: 1 (NETWORK) + bonus 2 = 3; remote skips NETWORK: REGION, ZONE = 2.
			want:    []string{"local-far picked 3 1.00", "remote-close outranked 2 0.00"},
			reasons: map[string]string{"remote-close": "outranked by same-network endpoints"},
		},
		{
			name: "NETWORK first: remote endpoints rank among themselves on the other scopes",
			svc:  echo(lb(FAILOVER, NETWORK, REGION, ZONE)),
			wls: []*workloadpb.Workload{
				ep("remote-close", remote, locality("us-east", "us-east-1a", "")),
				ep("remote-region", remote, locality("us-east", "us-east-1b", "")),
			},
			want: []string{"remote-close picked 2 1.00", "remote-region outranked 1 0.00"},
		},
		{
			name: "NETWORK not first is a scope like any other",
			svc:  echo(lb(FAILOVER, REGION, NETWORK)),
			wls: []*workloadpb.Workload{
				ep("local-far", locality("eu-west", "", "")),
				ep("remote-close", remote, locality("us-east", "", "")),
			},
			want: []string{"remote-close picked 1 1.00", "local-far outranked 0 0.00"},
		},
		{
			name:   "CLUSTER compares cluster_id; empty is Kubernetes on both sides",
			svc:    echo(lb(FAILOVER, CLUSTER)),
			client: Client{Network: "net1"},
			wls: []*workloadpb.Workload{
				ep("default", cluster("")),
				ep("named", cluster("c1")),
			},
			want: []string{"default picked 1 1.00", "named outranked 0 0.00"},
		},
		{
			name:    "STRICT drops endpoints that do not match every scope",
			svc:     echo(lb(STRICT, NODE)),
			wls:     []*workloadpb.Workload{ep("same-node"), ep("other-node", node("node-b"))},
			want:    []string{"same-node picked 1 1.00", "other-node dropped-by-strict -1 0.00"},
			reasons: map[string]string{"other-node": "dropped by STRICT: NODE differs (endpoint node-b, client node-a)"},
		},
		{
			name:    "STRICT with nothing matching: no healthy upstream",
			svc:     echo(lb(STRICT, NODE)),
			wls:     []*workloadpb.Workload{ep("other-node", node("node-b"))},
			want:    []string{"other-node dropped-by-strict -1 0.00"},
			wantErr: ErrNoHealthyUpstream,
		},
		{
			name:    "STRICT with NETWORK first drops every remote endpoint",
			svc:     echo(lb(STRICT, NETWORK, REGION)),
			wls:     []*workloadpb.Workload{ep("remote-close", remote, locality("us-east", "", ""))},
			want:    []string{"remote-close dropped-by-strict -1 0.00"},
			reasons: map[string]string{"remote-close": "NETWORK differs (endpoint net2, client net1)"},
			wantErr: ErrNoHealthyUpstream,
		},
		{
			name:    "only the top rank group is kept, even when lower ranks have more capacity",
			svc:     echo(lb(FAILOVER, NETWORK)),
			wls:     []*workloadpb.Workload{ep("a", capacity(1)), ep("r", remote, capacity(100))},
			want:    []string{"a picked 1 1.00", "r outranked 0 0.00"},
			reasons: map[string]string{"a": "same network"},
		},

		// Pick.
		{
			name: "the pick is weighted by capacity",
			svc:  echo(),
			wls:  []*workloadpb.Workload{ep("a", capacity(3)), ep("b", capacity(1))},
			want: []string{"a picked 0 0.75", "b picked 0 0.25"},
		},
		{
			name: "an unset capacity is 1",
			svc:  echo(),
			wls:  []*workloadpb.Workload{ep("a"), ep("b", capacity(1))},
			want: []string{"a picked 0 0.50", "b picked 0 0.50"},
		},
		{
			name:    "capacity 0 is never picked",
			svc:     echo(),
			wls:     []*workloadpb.Workload{ep("a", capacity(0)), ep("b", capacity(2))},
			want:    []string{"b picked 0 1.00", "a capacity-0 0 0.00"},
			reasons: map[string]string{"a": "capacity 0"},
		},
		{
			name:    "a top group of capacity 0 is no healthy upstream, even with a usable lower rank",
			svc:     echo(lb(FAILOVER, NETWORK)),
			wls:     []*workloadpb.Workload{ep("a", capacity(0)), ep("r", remote)},
			want:    []string{"a capacity-0 1 0.00", "r outranked 0 0.00"},
			wantErr: ErrNoHealthyUpstream,
		},
		{
			name:    "PASSTHROUGH picks no endpoint: traffic goes to the original destination",
			svc:     echo(lb(PASSTHROUGH)),
			wls:     []*workloadpb.Workload{ep("a")},
			want:    []string{"a passthrough -1 0.00"},
			reasons: map[string]string{"a": "PASSTHROUGH"},
		},
		{
			name:    "a service without endpoints: no healthy upstream",
			svc:     echo(),
			wantErr: ErrNoHealthyUpstream,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.client
			if c == (Client{}) {
				c = client
			}
			r, err := Explain(state([]*workloadpb.Service{tc.svc}, tc.wls...), Query{Service: echoKey, Client: c})
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("error %v, want %v", err, tc.wantErr)
			}
			if diff := cmp.Diff(tc.want, summarize(r)); diff != "" {
				t.Errorf("endpoints (-want +got):\n%s", diff)
			}
			for uid, want := range tc.reasons {
				e, ok := r.Endpoint(uid)
				if !ok || !strings.Contains(e.Reason, want) {
					t.Errorf("endpoint %s: reason %q, want it to contain %q", uid, e.Reason, want)
				}
			}
		})
	}
}

func TestRejectedLoadBalancing(t *testing.T) {
	for _, tc := range []struct {
		name string
		lb   *workloadpb.LoadBalancing
		want string
	}{
		{"UNSPECIFIED_SCOPE", &workloadpb.LoadBalancing{Mode: FAILOVER, RoutingPreference: []workloadpb.LoadBalancing_Scope{NETWORK, 0}},
			"routing_preference[1]: UNSPECIFIED_SCOPE"},
		{"unknown scope", &workloadpb.LoadBalancing{Mode: FAILOVER, RoutingPreference: []workloadpb.LoadBalancing_Scope{42}},
			"routing_preference[0]: 42"},
		{"unknown mode", &workloadpb.LoadBalancing{Mode: 9}, "load_balancing.mode: 9"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			svc := echo(func(s *workloadpb.Service) { s.LoadBalancing = tc.lb })
			_, err := Explain(state([]*workloadpb.Service{svc}, ep("a")), Query{Service: echoKey, Client: client})
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), echoKey) {
				t.Fatalf("error %v, want one naming %s and %q", err, echoKey, tc.want)
			}
		})
	}
}

func TestPort(t *testing.T) {
	named := ports(&workloadpb.Port{ServicePort: 80, TargetPort: 0}, &workloadpb.Port{ServicePort: 90, TargetPort: 9090})
	mapsOnly90 := func(w *workloadpb.Workload) {
		w.Services[echoKey] = &workloadpb.PortList{Ports: []*workloadpb.Port{{ServicePort: 90, TargetPort: 9090}}}
	}
	for _, tc := range []struct {
		name    string
		port    uint32
		want    []string
		wantErr error
	}{
		{"port 0 explains the service as a whole", 0, []string{"a picked 0 0.50", "b picked 0 0.50"}, nil},
		{"a numeric target port needs no mapping", 90, []string{"a picked 0 0.50", "b picked 0 0.50"}, nil},
		{"a named target port needs the endpoint's mapping", 80, []string{"a picked 0 1.00", "b no-port -1 0.00"}, nil},
		{"a port the service does not have: no healthy upstream", 81, nil, ErrNoHealthyUpstream},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := state([]*workloadpb.Service{echo(named)}, ep("a"), ep("b", mapsOnly90))
			r, err := Explain(s, Query{Service: echoKey, Client: client, Port: tc.port})
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("error %v, want %v", err, tc.wantErr)
			}
			if diff := cmp.Diff(tc.want, summarize(r)); diff != "" {
				t.Errorf("endpoints (-want +got):\n%s", diff)
			}
		})
	}
}

func TestNoHealthyUpstreamSaysWhy(t *testing.T) {
	svc := echo(lb(STRICT, NODE))
	_, err := Explain(state([]*workloadpb.Service{svc}, ep("a", node("node-b")), ep("b", unhealthy)), Query{Service: echoKey, Client: client})
	want := "service " + echoKey + ": no healthy upstream: 2 endpoint(s): 1 dropped by STRICT, 1 UNHEALTHY"
	if err == nil || err.Error() != want {
		t.Fatalf("error %v, want %q", err, want)
	}
}
