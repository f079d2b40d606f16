package explain

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
)

// TestResolve: how a query names a service, as ztunnel finds it (a
// namespace/hostname directly, a VIP on its own network, a hostname through
// its DNS proxy).
func TestResolve(t *testing.T) {
	other := service("other", echoHost, vips("net1/10.96.0.10"))
	canonical := service("canon", echoHost, vips("net1/10.96.0.10"), func(s *workloadpb.Service) { s.Canonical = true })
	private := service("private", echoHost, vips("net1/10.96.0.10"), func(s *workloadpb.Service) { s.Visibility = workloadpb.Service_NAMESPACE })
	remoteOnly := service("apps", "remote.apps.svc.cluster.local", vips("net2/10.96.0.20"))
	headless := service("apps", "headless.apps.svc.cluster.local", vips())
	cidr := service("apps", "range.apps.svc.cluster.local", vips("net1/10.97.0.0/16"))
	for _, tc := range []struct {
		name      string
		svcs      []*workloadpb.Service
		query     string
		namespace string // the client's
		want      string // resolved key
		lookup    string // substring of Result.Lookup
		wantErr   string // substring of the error; ErrUnknownService is implied
	}{
		{name: "namespace/hostname names the service directly", svcs: []*workloadpb.Service{echo(), other},
			query: echoKey, want: echoKey, lookup: "namespace/hostname"},
		{name: "an unknown namespace/hostname", svcs: []*workloadpb.Service{echo()},
			query: "apps/nope.apps.svc.cluster.local", wantErr: "service apps/nope.apps.svc.cluster.local: unknown service"},
		{name: "a VIP network/ip on the client's network", svcs: []*workloadpb.Service{echo()},
			query: "net1/10.96.0.10", want: echoKey, lookup: "VIP net1/10.96.0.10"},
		{name: "a bare IP is a VIP on the client's network", svcs: []*workloadpb.Service{echo()},
			query: "10.96.0.10", want: echoKey, lookup: "VIP net1/10.96.0.10"},
		{name: "a VIP on another network is never looked up by this client", svcs: []*workloadpb.Service{remoteOnly},
			query: "net2/10.96.0.20", wantErr: "looks VIPs up on its own network only (try net1/10.96.0.20)"},
		{name: "a VIP nobody holds", svcs: []*workloadpb.Service{echo()},
			query: "net1/10.96.9.9", wantErr: "VIP net1/10.96.9.9: unknown service"},
		{name: "a shared VIP prefers the client's namespace", svcs: []*workloadpb.Service{echo(), other, canonical},
			query: "net1/10.96.0.10", namespace: "other", want: "other/" + echoHost},
		{name: "a shared VIP prefers a canonical service outside the client's namespace", svcs: []*workloadpb.Service{echo(), other, canonical},
			query: "net1/10.96.0.10", namespace: "elsewhere", want: "canon/" + echoHost},
		{name: "a shared VIP otherwise takes the first", svcs: []*workloadpb.Service{other, echo()},
			query: "net1/10.96.0.10", want: echoKey},
		{name: "NAMESPACE visibility hides a service from other namespaces", svcs: []*workloadpb.Service{private},
			query: "net1/10.96.0.10", namespace: "apps", wantErr: "unknown service"},
		{name: "NAMESPACE visibility shows a service to its own namespace", svcs: []*workloadpb.Service{private},
			query: "net1/10.96.0.10", namespace: "private", want: "private/" + echoHost},
		{name: "a CIDR VIP holds the addresses in its range", svcs: []*workloadpb.Service{cidr},
			query: "net1/10.97.3.4", want: "apps/range.apps.svc.cluster.local", lookup: "CIDR"},
		{name: "a bare hostname resolves to its VIP on the client's network", svcs: []*workloadpb.Service{echo(vips("net2/10.96.1.1", "net1/10.96.0.10"))},
			query: echoHost, want: echoKey, lookup: "hostname " + echoHost + " -> VIP net1/10.96.0.10"},
		{name: "a hostname with VIPs on other networks only does not resolve", svcs: []*workloadpb.Service{remoteOnly},
			query: "remote.apps.svc.cluster.local", wantErr: "has no VIP on network net1"},
		{name: "a headless hostname is not load-balanced", svcs: []*workloadpb.Service{headless},
			query: "headless.apps.svc.cluster.local", wantErr: "has no VIP"},
		{name: "an unknown hostname", svcs: []*workloadpb.Service{echo()},
			query: "nope.example.com", wantErr: "hostname nope.example.com: unknown service"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := client
			c.Namespace = tc.namespace
			r, err := Explain(state(tc.svcs, ep("a")), Query{Service: tc.query, Client: c})
			if tc.wantErr != "" {
				if !errors.Is(err, ErrUnknownService) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want ErrUnknownService with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil && !errors.Is(err, ErrNoHealthyUpstream) {
				t.Fatal(err)
			}
			if r.Service != tc.want || !strings.Contains(r.Lookup, tc.lookup) {
				t.Fatalf("resolved to %s (%s), want %s (%s)", r.Service, r.Lookup, tc.want, tc.lookup)
			}
		})
	}
}

func TestVIPOfAWorkload(t *testing.T) {
	_, err := Explain(state([]*workloadpb.Service{echo()}, ep("a", addr("10.244.0.7"))), Query{Service: "net1/10.244.0.7", Client: client})
	if !errors.Is(err, ErrUnknownService) || !strings.Contains(err.Error(), "address of workload a") {
		t.Fatalf("error %v, want one saying it is workload a's address", err)
	}
}

// TestGateway: how a remote endpoint's network_gateway is found, as
// ztunnel's fetch_network_gateway does.
func TestGateway(t *testing.T) {
	gwPod := func(uid, ip string) *workloadpb.Workload {
		return &workloadpb.Workload{Uid: uid, Namespace: "istio-gateways", Network: "net2", ClusterId: "c2",
			Addresses: [][]byte{ipb(ip)},
			Services: map[string]*workloadpb.PortList{"istio-gateways/eastwest.istio-gateways.svc.cluster.local": {
				Ports: []*workloadpb.Port{{ServicePort: 15008, TargetPort: 15008}}}}}
	}
	ewService := service("istio-gateways", "eastwest.istio-gateways.svc.cluster.local",
		vips("net2/192.0.2.100"), ports(&workloadpb.Port{ServicePort: 15008, TargetPort: 15008}))
	for _, tc := range []struct {
		name     string
		gw       *workloadpb.GatewayAddress
		extra    []*workloadpb.Workload
		svcs     []*workloadpb.Service
		want     Gateway // Via compared as the summary below
		via      []string
		inReason string
	}{
		{
			name:     "an address is the workload at that network/ip",
			gw:       gwAddress("net2", "192.0.2.10", 15008),
			extra:    []*workloadpb.Workload{gwPod("gw-1", "192.0.2.10")},
			want:     Gateway{Address: "net2/192.0.2.10:15008", Workload: "gw-1"},
			inReason: "other network via gateway 192.0.2.10:15008",
		},
		{
			name:     "an address that is a service VIP on that network is load-balanced",
			gw:       gwAddress("net2", "192.0.2.100", 15008),
			extra:    []*workloadpb.Workload{gwPod("gw-1", "192.0.2.10"), gwPod("gw-2", "192.0.2.11")},
			svcs:     []*workloadpb.Service{ewService},
			want:     Gateway{Address: "net2/192.0.2.100:15008", Service: "istio-gateways/eastwest.istio-gateways.svc.cluster.local"},
			via:      []string{"gw-1 picked 0 0.50", "gw-2 picked 0 0.50"},
			inReason: "other network via gateway 192.0.2.100:15008",
		},
		{
			name:     "a hostname is a service, load-balanced like any other",
			gw:       gwHostname("istio-gateways", "eastwest.istio-gateways.svc.cluster.local", 15008),
			extra:    []*workloadpb.Workload{gwPod("gw-1", "192.0.2.10"), gwPod("gw-2", "192.0.2.11")},
			svcs:     []*workloadpb.Service{ewService},
			want:     Gateway{Address: "istio-gateways/eastwest.istio-gateways.svc.cluster.local:15008", Service: "istio-gateways/eastwest.istio-gateways.svc.cluster.local"},
			via:      []string{"gw-1 picked 0 0.50", "gw-2 picked 0 0.50"},
			inReason: "other network via gateway eastwest.istio-gateways.svc.cluster.local:15008",
		},
		{
			name:  "a hostname service without the HBONE port: connections fail",
			gw:    gwHostname("istio-gateways", "eastwest.istio-gateways.svc.cluster.local", 15009),
			extra: []*workloadpb.Workload{gwPod("gw-1", "192.0.2.10")},
			svcs:  []*workloadpb.Service{ewService},
			want: Gateway{Address: "istio-gateways/eastwest.istio-gateways.svc.cluster.local:15009", Service: "istio-gateways/eastwest.istio-gateways.svc.cluster.local",
				Problem: "gateway service: service istio-gateways/eastwest.istio-gateways.svc.cluster.local: no healthy upstream: it has no port 15009: connections fail"},
			via:      []string{},
			inReason: "connections fail",
		},
		{
			name:  "a hostname that is a workload's",
			gw:    gwHostname("istio-gateways", "gw.example.com", 15008),
			extra: []*workloadpb.Workload{{Uid: "gw-host", Namespace: "istio-gateways", Hostname: "gw.example.com", Network: "net2"}},
			want:  Gateway{Address: "istio-gateways/gw.example.com:15008", Workload: "gw-host"},
		},
		{
			name:     "a gateway nobody holds: picked, and connections fail",
			gw:       gwAddress("net2", "192.0.2.99", 15008),
			want:     Gateway{Address: "net2/192.0.2.99:15008", Problem: "gateway not found: connections fail"},
			inReason: "gateway not found",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wls := append([]*workloadpb.Workload{ep("r", remote, via(tc.gw))}, tc.extra...)
			r, err := Explain(state(append([]*workloadpb.Service{echo()}, tc.svcs...), wls...), Query{Service: echoKey, Client: client})
			if err != nil {
				t.Fatal(err)
			}
			e, _ := r.Endpoint("r")
			if e.Gateway == nil {
				t.Fatalf("endpoint r has no gateway: %+v", e)
			}
			got := *e.Gateway
			var gotVia []string
			if got.Via != nil {
				gotVia = summarize(*got.Via)
				if gotVia == nil {
					gotVia = []string{}
				}
			}
			got.Via, got.short = nil, ""
			if diff := cmp.Diff(tc.want, got, cmp.AllowUnexported(Gateway{})); diff != "" {
				t.Errorf("gateway (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.via, gotVia); diff != "" {
				t.Errorf("gateway service endpoints (-want +got):\n%s", diff)
			}
			if e.Outcome != Picked || !strings.Contains(e.Reason, tc.inReason) {
				t.Errorf("endpoint r: %s %q, want picked with %q", e.Outcome, e.Reason, tc.inReason)
			}
		})
	}
}

func TestClientOnNode(t *testing.T) {
	for _, tc := range []struct {
		name    string
		wls     []*workloadpb.Workload
		want    Client
		wantErr string
	}{
		{
			name: "the locality, network and cluster of the workloads on the node",
			wls:  []*workloadpb.Workload{ep("a"), ep("b"), ep("elsewhere", node("node-b"), locality("eu", "", ""))},
			want: Client{Network: "net1", Locality: client.Locality, Node: "node-a", Cluster: "c1"},
		},
		{
			name: "workloads without an address say nothing about the node",
			wls:  []*workloadpb.Workload{ep("a"), ep("split", noAddress, network("net9"))},
			want: Client{Network: "net1", Locality: client.Locality, Node: "node-a", Cluster: "c1"},
		},
		{
			name:    "no workload on the node",
			wls:     []*workloadpb.Workload{ep("a", node("node-b"))},
			wantErr: `node "node-a": no served workload with an address runs on it`,
		},
		{
			name:    "workloads that disagree are named",
			wls:     []*workloadpb.Workload{ep("a"), ep("b", locality("eu", "", ""))},
			wantErr: `node "node-a": workloads disagree: a has`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := state(nil, tc.wls...).ClientOnNode("node-a")
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}
