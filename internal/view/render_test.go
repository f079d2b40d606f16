package view

import (
	"encoding/json"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/wrapperspb"

	securitypb "github.com/peerd-mesh/peerd/proto/istio/security"
	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
)

func ipb(s string) []byte { return netip.MustParseAddr(s).AsSlice() }

func vip(network, ip string) *workloadpb.NetworkAddress {
	return &workloadpb.NetworkAddress{Network: network, Address: ipb(ip)}
}

func svc(ns, name, host string, opts ...func(*workloadpb.Service)) *workloadpb.Address {
	s := &workloadpb.Service{Namespace: ns, Name: name, Hostname: host}
	for _, o := range opts {
		o(s)
	}
	return &workloadpb.Address{Type: &workloadpb.Address_Service{Service: s}}
}

func wl(ns, name string, opts ...func(*workloadpb.Workload)) *workloadpb.Address {
	w := &workloadpb.Workload{Uid: "c1//Pod/" + ns + "/" + name, Namespace: ns, Name: name}
	for _, o := range opts {
		o(w)
	}
	return &workloadpb.Address{Type: &workloadpb.Address_Workload{Workload: w}}
}

func endpointOf(keys ...string) func(*workloadpb.Workload) {
	return func(w *workloadpb.Workload) {
		if w.Services == nil {
			w.Services = map[string]*workloadpb.PortList{}
		}
		for _, k := range keys {
			w.Services[k] = &workloadpb.PortList{Ports: []*workloadpb.Port{{ServicePort: 80, TargetPort: 8080}}}
		}
	}
}

const (
	echoKey   = "apps/echo.apps.svc.cluster.local"
	globalKey = "apps/echo.apps.mesh.internal"
)

// fixture is a small cluster plus one remote cluster's endpoints, in
// deliberately unsorted order.
func fixture() Snapshot {
	lb := func(lb *workloadpb.LoadBalancing) func(*workloadpb.Service) {
		return func(s *workloadpb.Service) { s.LoadBalancing = lb }
	}
	return Snapshot{
		Addresses: []*workloadpb.Address{
			wl("apps", "echo-2", func(w *workloadpb.Workload) {
				w.Addresses = [][]byte{ipb("10.244.1.8")}
				w.Network = "net1"
				w.Status = workloadpb.WorkloadStatus_UNHEALTHY
				w.Node = "node-b"
				w.ClusterId = "c1"
			}, endpointOf(echoKey)),
			svc("apps", "echo", "echo.apps.svc.cluster.local", func(s *workloadpb.Service) {
				s.Addresses = []*workloadpb.NetworkAddress{vip("net1", "10.96.0.10"), vip("net1", "fd00::10")}
				s.Ports = []*workloadpb.Port{
					{ServicePort: 80, TargetPort: 8080, AppProtocol: workloadpb.AppProtocol_HTTP11},
					{ServicePort: 9090},
				}
			}),
			svc("kube-system", "dns", "dns.kube-system.svc.cluster.local"),
			wl("apps", "echo-1", func(w *workloadpb.Workload) {
				w.Addresses = [][]byte{ipb("10.244.0.7"), ipb("fd00:10:244::7")}
				w.Network = "net1"
				w.Node = "node-a"
				w.ClusterId = "c1"
				w.TunnelProtocol = workloadpb.TunnelProtocol_HBONE
				w.Locality = &workloadpb.Locality{Region: "eu", Zone: "eu-1"}
			}, endpointOf(echoKey, globalKey)),
			svc("apps", "echo", "echo.apps.mesh.internal", func(s *workloadpb.Service) {
				s.Addresses = []*workloadpb.NetworkAddress{vip("net1", "240.240.0.1")}
				s.Ports = []*workloadpb.Port{{ServicePort: 80, TargetPort: 8080}}
			}, lb(&workloadpb.LoadBalancing{
				Mode:              workloadpb.LoadBalancing_FAILOVER,
				RoutingPreference: []workloadpb.LoadBalancing_Scope{workloadpb.LoadBalancing_NETWORK},
			})),
			svc("apps", "local", "local.apps.svc.cluster.local", func(s *workloadpb.Service) {
				s.Addresses = []*workloadpb.NetworkAddress{vip("", "10.96.0.11")}
			}, lb(&workloadpb.LoadBalancing{
				Mode:              workloadpb.LoadBalancing_STRICT,
				RoutingPreference: []workloadpb.LoadBalancing_Scope{workloadpb.LoadBalancing_NODE},
				HealthPolicy:      workloadpb.LoadBalancing_ALLOW_ALL,
			})),
			svc("apps", "notready", "notready.apps.svc.cluster.local", lb(&workloadpb.LoadBalancing{
				HealthPolicy: workloadpb.LoadBalancing_ALLOW_ALL,
			})),
			// The remote cluster's endpoints: no address, reached through
			// its east-west gateway; capacity = its ready endpoints.
			wl("apps", "echo-c2", func(w *workloadpb.Workload) {
				w.Uid = "c2/remote/apps/echo"
				w.ClusterId = "c2"
				w.Network = "net2"
				w.NetworkGateway = &workloadpb.GatewayAddress{
					Destination:   &workloadpb.GatewayAddress_Address{Address: vip("net2", "172.18.0.5")},
					HboneMtlsPort: 15008,
				}
				w.Capacity = wrapperspb.UInt32(3)
				w.TunnelProtocol = workloadpb.TunnelProtocol_HBONE
				w.Locality = &workloadpb.Locality{Region: "us", Zone: "us-1", Subzone: "rack-9"}
			}, endpointOf(globalKey)),
			// A healthy workload with capacity 0 is never picked.
			wl("apps", "echo-c3", func(w *workloadpb.Workload) {
				w.Uid = "c3/remote/apps/echo"
				w.ClusterId = "c3"
				w.Network = "net3"
				w.NetworkGateway = &workloadpb.GatewayAddress{
					Destination:   &workloadpb.GatewayAddress_Hostname{Hostname: &workloadpb.NamespacedHostname{Namespace: "istio-system", Hostname: "ew.example.com"}},
					HboneMtlsPort: 15008,
				}
				w.Capacity = wrapperspb.UInt32(0)
			}, endpointOf(globalKey)),
			wl("kube-system", "broken", func(w *workloadpb.Workload) {
				w.Name = ""
				w.Uid = "c1//Pod/kube-system/broken"
				w.Addresses = [][]byte{{10, 0, 0}}
			}),
		},
		Authorizations: []*securitypb.Authorization{
			{Namespace: "apps", Name: "deny-all", Scope: securitypb.Scope_NAMESPACE, Action: securitypb.Action_DENY,
				Groups: []*securitypb.Group{{Rules: []*securitypb.Rules{{}, {}}}, {Rules: []*securitypb.Rules{{}}}}},
			{Namespace: "", Name: "global", Scope: securitypb.Scope_GLOBAL, DryRun: true},
		},
	}
}

func TestTable(t *testing.T) {
	const services = `NAMESPACE    NAME      HOSTNAME                           VIPS                           PORTS                        ENDPOINTS  CLUSTERS   LB
apps         echo      echo.apps.mesh.internal            net1/240.240.0.1               80->8080                     2/3        c1=1,c2=3  FAILOVER[NETWORK]
apps         echo      echo.apps.svc.cluster.local        net1/10.96.0.10,net1/fd00::10  80->8080/HTTP11,9090->named  1/2        c1=1       -
apps         local     local.apps.svc.cluster.local       /10.96.0.11                    -                            0/0        -          STRICT[NODE]+ALLOW_ALL
apps         notready  notready.apps.svc.cluster.local    -                              -                            0/0        -          ALLOW_ALL
kube-system  dns       dns.kube-system.svc.cluster.local  -                              -                            0/0        -          -
`
	const workloads = `NAMESPACE    NAME                        CLUSTER  ADDRESS                                NODE    NETWORK  STATUS     CAPACITY  PROTOCOL  LOCALITY        SERVICES
apps         echo-1                      c1       10.244.0.7,fd00:10:244::7              node-a  net1     HEALTHY    -         HBONE     eu/eu-1         2
apps         echo-2                      c1       10.244.1.8                             node-b  net1     UNHEALTHY  -         TCP       -               1
apps         echo-c2                     c2       via:net2/172.18.0.5:15008              -       net2     HEALTHY    3         HBONE     us/us-1/rack-9  1
apps         echo-c3                     c3       via:istio-system/ew.example.com:15008  -       net3     HEALTHY    0         TCP       -               1
kube-system  c1//Pod/kube-system/broken  -        invalid(0a0000)                        -       -        HEALTHY    -         TCP       -               0
`
	const policies = `NAMESPACE  NAME      SCOPE      ACTION  RULES  DRY-RUN
-          global    GLOBAL     ALLOW   0      true
apps       deny-all  NAMESPACE  DENY    3      false
`
	for _, tc := range []struct {
		name string
		kind Kind
		opts Options
		want string
	}{
		{"services", KindServices, Options{}, services},
		{"workloads", KindWorkloads, Options{}, workloads},
		{"policies", KindPolicies, Options{}, policies},
		{"all", KindAll, Options{}, "SERVICES\n" + services + "\nWORKLOADS\n" + workloads + "\nPOLICIES\n" + policies},
		{"services in kube-system", KindServices, Options{Namespace: "kube-system"}, `NAMESPACE    NAME  HOSTNAME                           VIPS  PORTS  ENDPOINTS  CLUSTERS  LB
kube-system  dns   dns.kube-system.svc.cluster.local  -     -      0/0        -         -
`},
		{"workloads in a namespace with none", KindWorkloads, Options{Namespace: "empty"},
			"NAMESPACE  NAME  CLUSTER  ADDRESS  NODE  NETWORK  STATUS  CAPACITY  PROTOCOL  LOCALITY  SERVICES\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Table(tc.kind, fixture(), tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Table(%s) mismatch (-want +got):\n%s\ngot:\n%s", tc.kind, diff, got)
			}
		})
	}
}

func TestTableUnknownKind(t *testing.T) {
	if _, err := Table("pods", fixture(), Options{}); err == nil || !strings.Contains(err.Error(), `"pods"`) {
		t.Errorf("err = %v, want it to name the kind", err)
	}
	if _, err := JSON("pods", fixture(), Options{}); err == nil {
		t.Error("JSON with an unknown kind: want an error")
	}
}

// TestTableIgnoresInputOrder: the same resources in any order give the
// same bytes.
func TestTableIgnoresInputOrder(t *testing.T) {
	s := fixture()
	want, _ := Table(KindAll, s, Options{})
	for i, j := 0, len(s.Addresses)-1; i < j; i, j = i+1, j-1 {
		s.Addresses[i], s.Addresses[j] = s.Addresses[j], s.Addresses[i]
	}
	s.Authorizations[0], s.Authorizations[1] = s.Authorizations[1], s.Authorizations[0]
	if got, _ := Table(KindAll, s, Options{}); got != want {
		t.Errorf("output depends on input order:\n%s\nvs\n%s", got, want)
	}
}

func TestTableSanitisesCells(t *testing.T) {
	s := Snapshot{Addresses: []*workloadpb.Address{svc("a", "x\ty", "h\nz")}}
	got, _ := Table(KindServices, s, Options{})
	if lines := strings.Split(strings.TrimSuffix(got, "\n"), "\n"); len(lines) != 2 || !strings.Contains(lines[1], "x y") {
		t.Errorf("a tab or newline in a value broke the table:\n%s", got)
	}
}

func decodeAddresses(t *testing.T, b []byte) []*workloadpb.Address {
	t.Helper()
	var raw []json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatalf("not a JSON array: %v\n%s", err, b)
	}
	var out []*workloadpb.Address
	for _, r := range raw {
		a := &workloadpb.Address{}
		if err := protojson.Unmarshal(r, a); err != nil {
			t.Fatal(err)
		}
		out = append(out, a)
	}
	return out
}

func TestJSON(t *testing.T) {
	s := fixture()
	byName := map[string]*workloadpb.Address{}
	for _, a := range s.Addresses {
		if sv := a.GetService(); sv != nil {
			byName[serviceKey(sv)] = a
		} else {
			byName[a.GetWorkload().GetUid()] = a
		}
	}
	pick := func(names ...string) []*workloadpb.Address {
		var out []*workloadpb.Address
		for _, n := range names {
			if byName[n] == nil {
				t.Fatalf("fixture has no %s", n)
			}
			out = append(out, byName[n])
		}
		return out
	}
	for _, tc := range []struct {
		name string
		kind Kind
		opts Options
		want []*workloadpb.Address
	}{
		{"services", KindServices, Options{}, pick(globalKey, echoKey, "apps/local.apps.svc.cluster.local",
			"apps/notready.apps.svc.cluster.local", "kube-system/dns.kube-system.svc.cluster.local")},
		{"workloads in kube-system", KindWorkloads, Options{Namespace: "kube-system"}, pick("c1//Pod/kube-system/broken")},
		{"all in kube-system, services first", KindAll, Options{Namespace: "kube-system"},
			pick("kube-system/dns.kube-system.svc.cluster.local", "c1//Pod/kube-system/broken")},
		{"nothing", KindAll, Options{Namespace: "empty"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := JSON(tc.kind, s, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, decodeAddresses(t, b), protocmp.Transform()); diff != "" {
				t.Errorf("JSON(%s) mismatch (-want +got):\n%s", tc.kind, diff)
			}
			again, _ := JSON(tc.kind, s, tc.opts)
			if string(again) != string(b) {
				t.Error("JSON output is not stable")
			}
		})
	}

	b, err := JSON(KindPolicies, s, Options{Namespace: "apps"})
	if err != nil {
		t.Fatal(err)
	}
	var raw []json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil || len(raw) != 1 {
		t.Fatalf("policies JSON = %s (%v), want one element", b, err)
	}
	got := &securitypb.Authorization{}
	if err := protojson.Unmarshal(raw[0], got); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(s.Authorizations[0], got, protocmp.Transform()); diff != "" {
		t.Errorf("policy mismatch (-want +got):\n%s", diff)
	}
}

// BenchmarkTable100k renders a whole-mesh view of 100k workloads and 1k
// services, the size ztunnel-client.md quotes for a large mesh.
func BenchmarkTable100k(b *testing.B) {
	var s Snapshot
	for i := range 1000 {
		ns := "ns-" + strconv.Itoa(i%50)
		s.Addresses = append(s.Addresses, svc(ns, "svc-"+strconv.Itoa(i), "svc-"+strconv.Itoa(i)+"."+ns+".svc.cluster.local",
			func(sv *workloadpb.Service) {
				sv.Addresses = []*workloadpb.NetworkAddress{vip("net1", netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)}).String())}
				sv.Ports = []*workloadpb.Port{{ServicePort: 80, TargetPort: 8080}}
			}))
	}
	for i := range 100000 {
		ns := "ns-" + strconv.Itoa(i%50)
		s.Addresses = append(s.Addresses, wl(ns, "pod-"+strconv.Itoa(i), func(w *workloadpb.Workload) {
			w.Addresses = [][]byte{{10, byte(i >> 16), byte(i >> 8), byte(i)}}
			w.Network = "net1"
			w.Node = "node-" + strconv.Itoa(i%100)
		}, endpointOf("ns-"+strconv.Itoa(i%50)+"/svc-"+strconv.Itoa(i%1000)+".ns-"+strconv.Itoa(i%50)+".svc.cluster.local")))
	}
	b.ResetTimer()
	for b.Loop() {
		if _, err := Table(KindAll, s, Options{}); err != nil {
			b.Fatal(err)
		}
	}
}
