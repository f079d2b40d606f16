package ambient

import (
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	corev1 "k8s.io/api/core/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/peerd-mesh/peerd/internal/federation"
	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
)

func wlAddr(w *workloadpb.Workload) *workloadpb.Address {
	return &workloadpb.Address{Type: &workloadpb.Address_Workload{Workload: w}}
}

func svcAddr(s *workloadpb.Service) *workloadpb.Address {
	return &workloadpb.Address{Type: &workloadpb.Address_Service{Service: s}}
}

// istiodPod is a workload as istiod would send it, listing services.
func istiodPod(services map[string]*workloadpb.PortList) *workloadpb.Address {
	return wlAddr(wantPod("hello", "app-1", func(w *workloadpb.Workload) { w.Services = services }))
}

var preferNetwork = &workloadpb.LoadBalancing{
	RoutingPreference: []workloadpb.LoadBalancing_Scope{workloadpb.LoadBalancing_NETWORK},
	Mode:              workloadpb.LoadBalancing_FAILOVER,
}

// TestAmendAddress follows docs/extension-mode.md's amendment rules, one
// row per rule and per way a rule can decline.
func TestAmendAddress(t *testing.T) {
	am := Amendments{
		Global: map[string]string{nameAppPlain: nameAppGlobal},
		GlobalOnly: map[string]*workloadpb.Service{nameAppPlain: {
			Name: "app", Namespace: "hello", Hostname: "app.hello.svc.cluster.local",
			SubjectAltNames: []string{"spiffe://c3.local/ns/hello/sa/app", "spiffe://c2.local/ns/hello/sa/app"},
			LoadBalancing:   preferNetwork,
		}},
	}
	plainSvc := func(edit func(*workloadpb.Service)) *workloadpb.Address {
		s := &workloadpb.Service{Name: "app", Namespace: "hello", Hostname: "app.hello.svc.cluster.local"}
		if edit != nil {
			edit(s)
		}
		return svcAddr(s)
	}
	tests := []struct {
		name          string
		in            *workloadpb.Address
		want          *workloadpb.Address // nil: in itself, untouched
		wantConflicts []string
	}{
		{name: "workload of a global Service gains the global key with the same ports",
			in:   istiodPod(map[string]*workloadpb.PortList{nameAppPlain: ports(80, 8080)}),
			want: istiodPod(map[string]*workloadpb.PortList{nameAppPlain: ports(80, 8080), nameAppGlobal: ports(80, 8080)})},
		{name: "workload of a local-only Service is untouched",
			in: istiodPod(map[string]*workloadpb.PortList{"hello/other.hello.svc.cluster.local": ports(80, 8080)})},
		{name: "workload that already lists the global key with the same ports is untouched",
			in: istiodPod(map[string]*workloadpb.PortList{nameAppPlain: ports(80, 8080), nameAppGlobal: ports(80, 8080)})},
		{name: "workload that lists the global key with other ports: conflict, the local source's kept",
			in:            istiodPod(map[string]*workloadpb.PortList{nameAppPlain: ports(80, 8080), nameAppGlobal: ports(80, 9090)}),
			wantConflicts: []string{`workload c1//Pod/hello/app-1: services["hello/app.hello.mesh.internal"]: already listed with ports other than "hello/app.hello.svc.cluster.local"'s; the local source's ports are kept`}},
		{name: "global-only Service gains the remote SANs, sorted after its own, and the model's load balancing",
			in: plainSvc(func(s *workloadpb.Service) { s.SubjectAltNames = []string{"spiffe://c1.local/ns/hello/sa/app"} }),
			want: plainSvc(func(s *workloadpb.Service) {
				s.SubjectAltNames = []string{"spiffe://c1.local/ns/hello/sa/app", "spiffe://c2.local/ns/hello/sa/app", "spiffe://c3.local/ns/hello/sa/app"}
				s.LoadBalancing = preferNetwork
			})},
		{name: "global-only Service keeps the local source's load balancing",
			in: plainSvc(func(s *workloadpb.Service) {
				s.LoadBalancing = &workloadpb.LoadBalancing{Mode: workloadpb.LoadBalancing_STRICT}
			}),
			want: plainSvc(func(s *workloadpb.Service) {
				s.SubjectAltNames = []string{"spiffe://c2.local/ns/hello/sa/app", "spiffe://c3.local/ns/hello/sa/app"}
				s.LoadBalancing = &workloadpb.LoadBalancing{Mode: workloadpb.LoadBalancing_STRICT}
			})},
		{name: "Service that is not global-only is untouched",
			in: svcAddr(&workloadpb.Service{Name: "other", Namespace: "hello", Hostname: "other.hello.svc.cluster.local"})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := proto.CloneOf(tt.in)
			got, conflicts := AmendAddress(tt.in, am)
			if tt.want == nil {
				if got != tt.in {
					t.Errorf("got a new resource, want the input itself: %v", got)
				}
			} else {
				diffProto(t, tt.want, got)
			}
			diffProto(t, before, tt.in) // the input is never modified
			if d := cmp.Diff(tt.wantConflicts, conflicts); d != "" {
				t.Errorf("conflicts (-want +got):\n%s", d)
			}
		})
	}
}

func TestIsMeshAddition(t *testing.T) {
	out := Build(testConfig, peeringInputs(scopeGlobalOnlyLabel))
	var added []string
	for _, a := range out.Addresses {
		if IsMeshAddition(testConfig, a) {
			added = append(added, ResourceName(a))
		}
	}
	// (A link with one address has no gateway Service.)
	want := []string{nameGatewayC2, nameSplitC2, nameAppGlobal}
	slices.Sort(want)
	if d := cmp.Diff(want, added); d != "" {
		t.Errorf("mesh additions (-want +got):\n%s", d)
	}
}

// peeringInputs: hello/app with the given scope label, a pod of it, a
// plain Service beside it, a link to c2 and c2's export of hello/app.
func peeringInputs(scope svcOpt) Inputs {
	return Inputs{
		Services: []*corev1.Service{appService(scope), service("hello", "other", selector("app", "app"), clusterIPs("10.96.0.6"), svcPorts(sport("tcp", 90, 9090)))},
		Pods:     []*corev1.Pod{appPod()},
		Gateways: []*gatewayv1.Gateway{linkC2()},
		ImportedServices: []*federation.ImportedService{imported("c2", "hello", "app",
			exportedSANs(spiffeID("c2.local", "hello", "app")))},
	}
}

// withoutScope is in as istiod sees it: the same objects without peerd's
// solo.io/service-scope labels, so the model maps them exactly as istiod
// would (no global keys, no remote SANs).
func withoutScope(in Inputs) Inputs {
	out := in
	out.Services = nil
	for _, s := range in.Services {
		s = s.DeepCopy()
		delete(s.Labels, LabelServiceScope)
		out.Services = append(out.Services, s)
	}
	return out
}

// localOnly is a build's local mapping (no mesh additions), by name.
func localOnly(cfg Config, addrs []*workloadpb.Address) map[string]*workloadpb.Address {
	m := map[string]*workloadpb.Address{}
	for _, a := range addrs {
		if !IsMeshAddition(cfg, a) {
			m[ResourceName(a)] = a
		}
	}
	return m
}

func byName(addrs []*workloadpb.Address) map[string]*workloadpb.Address {
	m := map[string]*workloadpb.Address{}
	for _, a := range addrs {
		m[ResourceName(a)] = a
	}
	return m
}

// TestMergerServesWhatStandaloneServes is "one implementation, two
// sources": with a local source that maps the cluster as istiod does
// (peerd's model without the scope labels), the Merger serves exactly what
// standalone mode serves for the same objects, for each scope.
func TestMergerServesWhatStandaloneServes(t *testing.T) {
	for _, tt := range []struct {
		name  string
		scope svcOpt
	}{
		{"global", scopeGlobalLabel},
		{"global-only", scopeGlobalOnlyLabel},
		{"no scope", func(*corev1.Service) {}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			in := peeringInputs(tt.scope)
			standalone := Build(testConfig, in)
			istiod := localOnly(testConfig, Build(testConfig, withoutScope(in)).Addresses)

			model := NewModel(testConfig)
			mg := NewMerger(testConfig)
			d := mg.Apply(istiod, model.Apply(in.changes()))
			if d.ConflictsChanged || len(mg.Conflicts()) > 0 {
				t.Errorf("conflicts: %q", mg.Conflicts())
			}
			if d := cmp.Diff(byName(standalone.Addresses), byName(d.Upserts), protocmp.Transform()); d != "" {
				t.Errorf("first merge differs from standalone (-standalone +merged):\n%s", d)
			}
			if d := cmp.Diff(byName(standalone.Addresses), byName(mg.Served()), protocmp.Transform()); d != "" {
				t.Errorf("Served differs from standalone (-standalone +merged):\n%s", d)
			}
		})
	}
}

// TestAmendIsIdempotentOnTheModel: the amendment rule is the model's own,
// so amending the model's local mapping changes nothing.
func TestAmendIsIdempotentOnTheModel(t *testing.T) {
	model := NewModel(testConfig)
	mg := NewMerger(testConfig)
	out := model.Apply(peeringInputs(scopeGlobalOnlyLabel).changes())
	mg.Apply(nil, out)
	for _, a := range out.Upserts {
		if IsMeshAddition(testConfig, a) {
			continue
		}
		if got, conflicts := AmendAddress(a, mg.am); got != a || len(conflicts) > 0 {
			t.Errorf("%s: amending the model's own resource changed it (conflicts %q):\n%v", ResourceName(a), conflicts, got)
		}
	}
}

// TestMergerIncremental walks one cluster through the changes the relay
// sees, checking what each batch serves.
func TestMergerIncremental(t *testing.T) {
	model := NewModel(testConfig)
	mg := NewMerger(testConfig)
	in := peeringInputs(func(*corev1.Service) {})
	istiod := localOnly(testConfig, Build(testConfig, withoutScope(in)).Addresses)
	d := mg.Apply(istiod, model.Apply(in.changes()))
	served := byName(d.Upserts)
	if _, ok := served[nameAppPod]; !ok {
		t.Fatalf("istiod's pod is not served: %v", slices.Sorted(maps.Keys(served)))
	}
	if _, ok := served[nameAppPod].GetWorkload().GetServices()[nameAppGlobal]; ok {
		t.Fatalf("pod of a local-only Service joined the global service")
	}

	// The Service becomes global: only the workloads that list it change,
	// and the global service is added.
	svc := appService(scopeGlobalLabel)
	d = mg.Apply(nil, model.Apply([]Change{{Ref: objectRef(KindService, "hello", "app"), Object: svc}}))
	got := byName(d.Upserts)
	if _, ok := got[nameAppPod].GetWorkload().GetServices()[nameAppGlobal]; !ok {
		t.Errorf("the pod did not join the global service: %v", got[nameAppPod])
	}
	if _, ok := got[nameAppGlobal]; !ok {
		t.Errorf("the global service is not served: %v", slices.Sorted(maps.Keys(got)))
	}
	for name := range got {
		if strings.HasPrefix(name, "hello/other") {
			t.Errorf("%s does not depend on hello/app but was recomputed", name)
		}
	}

	// istiod changes the pod (a new port): the amendment follows.
	pod := proto.CloneOf(istiod[nameAppPod])
	pod.GetWorkload().Services[nameAppPlain] = ports(80, 8081)
	d = mg.Apply(map[string]*workloadpb.Address{nameAppPod: pod}, Delta{})
	diffProto(t, ports(80, 8081), byName(d.Upserts)[nameAppPod].GetWorkload().GetServices()[nameAppGlobal])

	// istiod starts serving a name the mesh adds: a conflict, istiod wins.
	clash := svcAddr(&workloadpb.Service{Name: "app", Namespace: "hello", Hostname: "app.hello.mesh.internal"})
	d = mg.Apply(map[string]*workloadpb.Address{nameAppGlobal: clash}, Delta{})
	if !d.ConflictsChanged || len(mg.Conflicts()) != 1 || !strings.Contains(mg.Conflicts()[0], nameAppGlobal) {
		t.Errorf("conflicts = %q, changed %v; want one naming %s", mg.Conflicts(), d.ConflictsChanged, nameAppGlobal)
	}
	diffProto(t, clash, byName(d.Upserts)[nameAppGlobal])
	// ... and stops: the mesh's version is back, the conflict gone.
	d = mg.Apply(map[string]*workloadpb.Address{nameAppGlobal: nil}, Delta{})
	if !d.ConflictsChanged || len(mg.Conflicts()) != 0 {
		t.Errorf("conflicts after istiod dropped the name: %q", mg.Conflicts())
	}
	if got := byName(d.Upserts)[nameAppGlobal]; got == nil || len(got.GetService().GetAddresses()) == 0 {
		t.Errorf("the mesh's global service is not served again: %v", got)
	}

	// The Service is no longer global: the pod leaves the global service.
	d = mg.Apply(nil, model.Apply([]Change{{Ref: objectRef(KindService, "hello", "app"), Object: appService()}}))
	if _, ok := byName(d.Upserts)[nameAppPod].GetWorkload().GetServices()[nameAppGlobal]; ok {
		t.Errorf("the pod still lists the global service after its Service stopped being global")
	}

	// istiod removes the pod: removed, whatever the model still maps.
	d = mg.Apply(map[string]*workloadpb.Address{nameAppPod: nil}, Delta{})
	if !slices.Contains(d.Deletes, nameAppPod) {
		t.Errorf("deletes %v: want %s", d.Deletes, nameAppPod)
	}
	for _, a := range mg.Served() {
		if !IsMeshAddition(testConfig, a) && istiod[ResourceName(a)] == nil {
			t.Errorf("%s is served but istiod does not serve it: the model's local mapping leaked", ResourceName(a))
		}
	}
}

// TestMergerNeverServesTheModelsLocalMapping: without the local source,
// only mesh additions are served.
func TestMergerNeverServesTheModelsLocalMapping(t *testing.T) {
	mg := NewMerger(testConfig)
	d := mg.Apply(nil, NewModel(testConfig).Apply(peeringInputs(scopeGlobalOnlyLabel).changes()))
	for _, a := range d.Upserts {
		if !IsMeshAddition(testConfig, a) {
			t.Errorf("%s served without the local source", ResourceName(a))
		}
	}
	if len(d.Upserts) == 0 {
		t.Fatal("nothing served: the mesh additions are missing")
	}
}
