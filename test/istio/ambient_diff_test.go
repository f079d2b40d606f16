package istio

import (
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/peerd-mesh/peerd/internal/ambient"
	"github.com/peerd-mesh/peerd/internal/discovery"
	"istio.io/istio/pkg/workloadapi"
)

// The cluster both sides describe. The network is deliberately not given to
// peerd: both must read it from the system namespace's label.
const (
	diffClusterID    = "cluster1"
	diffDomainSuffix = "cluster.local"
	diffSystemNS     = "istio-system"
)

var defaultDiffConfig = istiodConfig{ClusterID: diffClusterID, DomainSuffix: diffDomainSuffix, SystemNamespace: diffSystemNS}

// caseConfigs holds the cases that describe another cluster than the
// default one: every value that peerd takes as a flag, changed at once.
var caseConfigs = map[string]istiodConfig{
	"testdata/custom-cluster": {
		ClusterID:       "east-1",
		DomainSuffix:    "corp.example",
		SystemNamespace: "mesh-system",
		TrustDomain:     "east.example",
	},
}

// diffCases are the manifest sets fed to both sides: the project's own
// realistic set, and the extra edge cases kept under testdata/.
func diffCases(t *testing.T) map[string][]string {
	t.Helper()
	cases := map[string][]string{}
	add := func(name, dir string) {
		files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		if len(files) == 0 {
			t.Fatalf("differential case %s: no *.yaml in %s", name, dir)
		}
		sort.Strings(files)
		cases[name] = files
	}
	add("examples/cluster1", filepath.Join("..", "..", "examples", "cluster1"))
	dirs, err := os.ReadDir("testdata")
	if err != nil {
		t.Fatalf("reading testdata: %v", err)
	}
	for _, d := range dirs {
		if d.IsDir() {
			add("testdata/"+d.Name(), filepath.Join("testdata", d.Name()))
		}
	}
	return cases
}

// TestAmbientMatchesIstiod is the differential test: the same manifests go
// to Istio's ambient index and to peerd's internal/ambient, and every
// Address must be identical, resource by resource, after peerd's is carried
// into Istio's type over the wire.
//
// Both sides are fed the objects peerd's discovery.DecodeManifests produces,
// with the API server's defaults applied: Istio's fake client applies no
// defaults, and a real istiod only ever sees defaulted objects. Whether those
// defaults match the API server's is discovery's own test, not this one.
func TestAmbientMatchesIstiod(t *testing.T) {
	cases := diffCases(t)
	for name := range caseConfigs {
		if _, ok := cases[name]; !ok {
			t.Errorf("caseConfigs names %s, which has no manifests", name)
		}
	}
	names := make([]string, 0, len(cases))
	for name := range cases {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		files := cases[name]
		t.Run(name, func(t *testing.T) {
			objs := decodeFiles(t, files)
			cfg, ok := caseConfigs[name]
			if !ok {
				cfg = defaultDiffConfig
			}
			istiod := runIstiod(t, cfg, objs)
			want := istiod.Addresses
			got, keys := peerdAddresses(t, cfg, objs)
			if len(want) == 0 {
				t.Fatal("istiod produced no addresses at all: the harness, not the mapping, is broken")
			}
			dumpAddresses(t, name, map[string]map[string]*workloadapi.Address{"istiod": want, "peerd": got})
			problems, notes := compareAddresses(want, got, peerdOnlyTrafficDistribution(cfg, objs))
			for _, n := range notes {
				t.Log(n)
			}
			for _, p := range problems {
				t.Error(p)
			}
			for _, p := range compareLookups(istiod, got, keys) {
				t.Error(p)
			}
		})
	}
}

func decodeFiles(t *testing.T, files []string) []runtime.Object {
	t.Helper()
	var objs []runtime.Object
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		o, err := discovery.DecodeManifests(f, data)
		if err != nil {
			t.Fatalf("decoding %s: %v", f, err)
		}
		objs = append(objs, o...)
	}
	return objs
}

// peerdAddresses runs peerd's mapping and carries each Address into Istio's
// generated type through its wire bytes, which is what ztunnel would decode.
// keys maps each resource name to its ambient.LookupKeys.
func peerdAddresses(t *testing.T, cfg istiodConfig, objs []runtime.Object) (addrs map[string]*workloadapi.Address, keys map[string][]string) {
	t.Helper()
	var in discovery.Objects
	for _, o := range objs {
		switch o := o.(type) {
		case *corev1.Namespace:
			in.Namespaces = append(in.Namespaces, o.DeepCopy())
		case *corev1.Node:
			in.Nodes = append(in.Nodes, o.DeepCopy())
		case *corev1.Pod:
			in.Pods = append(in.Pods, o.DeepCopy())
		case *corev1.Service:
			in.Services = append(in.Services, o.DeepCopy())
		case *discoveryv1.EndpointSlice:
			in.EndpointSlices = append(in.EndpointSlices, o.DeepCopy())
		case *gatewayv1.Gateway:
			in.Gateways = append(in.Gateways, o.DeepCopy())
		default:
			t.Fatalf("peerd: %T %s: no Objects field for this kind", o, objectName(o))
		}
	}
	out := ambient.Build(ambient.Config{
		ClusterID:       cfg.ClusterID,
		DomainSuffix:    cfg.DomainSuffix,
		SystemNamespace: cfg.SystemNamespace,
		TrustDomain:     cfg.TrustDomain,
	}, ambient.Inputs(in))
	for _, w := range out.Warnings {
		t.Logf("peerd warning: %s", w)
	}
	res := map[string]*workloadapi.Address{}
	keys = map[string][]string{}
	for _, a := range out.Addresses {
		name := ambient.ResourceName(a)
		keys[name] = ambient.LookupKeys(a)
		if _, dup := res[name]; dup {
			t.Errorf("peerd: two addresses named %q", name)
			continue
		}
		b, err := deterministic.Marshal(a)
		if err != nil {
			t.Fatalf("peerd: address %q: marshal: %v", name, err)
		}
		ia := &workloadapi.Address{}
		if err := proto.Unmarshal(b, ia); err != nil {
			t.Fatalf("peerd: address %q: Istio cannot decode it: %v", name, err)
		}
		if u := unknownFields(ia.ProtoReflect(), name); len(u) > 0 {
			t.Errorf("peerd: address %q carries fields Istio does not know: %s", name, strings.Join(u, "; "))
		}
		res[name] = ia
	}
	return res, keys
}

// compareLookups checks peerd's on-demand answers against istiod's own
// lookup, which is what answers ztunnel's on-demand requests. For every key
// either side knows (each resource name, peerd's LookupKeys, and each
// address of istiod's resources), peerd's answer (peerdLookup) must hold
// exactly the resources of istiod's Lookup. They are compared as sets:
// ztunnel waits for the key it asked for and files each resource under its
// own name, so the order of an answer means nothing to it.
func compareLookups(istiod istiodView, peerd map[string]*workloadapi.Address, peerdKeys map[string][]string) []string {
	lookup := newPeerdLookup(peerd, peerdKeys)
	candidates := map[string]bool{}
	for n := range peerd {
		candidates[n] = true
	}
	for k := range lookup.byKey {
		candidates[k] = true
	}
	for n, a := range istiod.Addresses {
		candidates[n] = true
		for _, k := range addressKeys(a) {
			candidates[k] = true
		}
	}
	keys := make([]string, 0, len(candidates))
	for k := range candidates {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var problems []string
	for _, k := range keys {
		want := slices.Compact(slices.Sorted(slices.Values(istiod.Lookup(k))))
		got := lookup.answer(k)
		if !slices.Equal(want, got) {
			problems = append(problems, fmt.Sprintf("on-demand key %q: istiod answers with %v, peerd with %v", k, want, got))
		}
	}
	return problems
}

// peerdLookup is peerd's on-demand rule, stated from peerd's own output:
// the answer for key K is every resource filed under K by
// ambient.LookupKeys, or the resource named K; and, for each Service among
// those, every Workload whose services map has that Service's resource name
// (namespace/hostname) as a key, as istiod's Lookup adds them.
type peerdLookup struct {
	addresses map[string]*workloadapi.Address
	// byKey: a LookupKeys key to the names of the resources filed under it.
	byKey map[string][]string
	// members: a Service's resource name to the Workloads that list it.
	members map[string][]string
}

func newPeerdLookup(addresses map[string]*workloadapi.Address, keys map[string][]string) peerdLookup {
	l := peerdLookup{addresses: addresses, byKey: map[string][]string{}, members: map[string][]string{}}
	for n, a := range addresses {
		for _, k := range keys[n] {
			l.byKey[k] = append(l.byKey[k], n)
		}
		for svc := range a.GetWorkload().GetServices() {
			l.members[svc] = append(l.members[svc], n)
		}
	}
	return l
}

// answer is peerd's answer for key, sorted, each name once.
func (l peerdLookup) answer(key string) []string {
	direct := slices.Clone(l.byKey[key])
	if _, ok := l.addresses[key]; ok {
		direct = append(direct, key)
	}
	out := slices.Clone(direct)
	for _, n := range direct {
		if l.addresses[n].GetService() != nil {
			out = append(out, l.members[n]...)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// addressKeys derives the "network/ip" keys of one of istiod's addresses:
// each workload address on the workload's network, each service VIP on its
// own network.
func addressKeys(a *workloadapi.Address) []string {
	var keys []string
	add := func(network string, raw []byte) {
		if ip, ok := netip.AddrFromSlice(raw); ok {
			keys = append(keys, network+"/"+ip.String())
		}
	}
	if w := a.GetWorkload(); w != nil {
		for _, raw := range w.GetAddresses() {
			add(w.GetNetwork(), raw)
		}
	}
	for _, na := range a.GetService().GetAddresses() {
		add(na.GetNetwork(), na.GetAddress())
	}
	return keys
}

// peerdOnlyTrafficDistribution names the Services whose load_balancing is
// decided by a traffic-distribution value that only peerd knows
// (PreferNetwork, PreferRegion). istiod reads any such annotation as
// "unknown: Any" and sends no load_balancing, while peerd deliberately maps
// it (design: Traffic distribution). For those Services, and only for their
// load_balancing field, the two sides are allowed to differ; the reason is
// printed with each ignored field.
//
// Everything else is compared, including "Any" and unknown values (both
// sides send no load_balancing) and PreferNetwork/PreferRegion when a
// higher-precedence setting (internalTrafficPolicy: Local,
// spec.trafficDistribution) decides instead. The precedence below follows
// istiod's model.GetTrafficDistribution.
func peerdOnlyTrafficDistribution(cfg istiodConfig, objs []runtime.Object) map[string]string {
	nsAnnotations := map[string]map[string]string{}
	for _, o := range objs {
		if ns, ok := o.(*corev1.Namespace); ok {
			nsAnnotations[ns.Name] = ns.Annotations
		}
	}
	const key = "networking.istio.io/traffic-distribution"
	peerdOnly := func(v string) bool {
		switch strings.ToLower(v) {
		case "prefernetwork", "preferregion":
			return true
		}
		return false
	}
	known := func(v string) bool {
		switch v {
		case corev1.ServiceTrafficDistributionPreferClose, corev1.ServiceTrafficDistributionPreferSameZone,
			corev1.ServiceTrafficDistributionPreferSameNode:
			return true
		}
		return false
	}
	out := map[string]string{}
	for _, o := range objs {
		svc, ok := o.(*corev1.Service)
		if !ok {
			continue
		}
		name := svc.Namespace + "/" + svc.Name + "." + svc.Namespace + ".svc." + cfg.DomainSuffix
		switch {
		case svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == corev1.ServiceInternalTrafficPolicyLocal:
		case svc.Spec.TrafficDistribution != nil && known(*svc.Spec.TrafficDistribution):
		case svc.Annotations[key] != "":
			if v := svc.Annotations[key]; peerdOnly(v) {
				out[name] = fmt.Sprintf("Service annotation %s=%s is a value only peerd knows", key, v)
			}
		case nsAnnotations[svc.Namespace][key] != "":
			if v := nsAnnotations[svc.Namespace][key]; peerdOnly(v) {
				out[name] = fmt.Sprintf("Namespace %s annotation %s=%s is a value only peerd knows", svc.Namespace, key, v)
			}
		}
	}
	return out
}

// compareAddresses lists every difference: a name on one side only, or any
// field of a shared name, except the load_balancing of services listed in
// ignored. Each difference names the resource, then every differing field
// with istiod's and peerd's values, then the full cmp diff. notes explain
// each ignored field and end with the tally.
func compareAddresses(istiod, peerd map[string]*workloadapi.Address, ignored map[string]string) (problems, notes []string) {
	names := map[string]bool{}
	for n := range istiod {
		names[n] = true
	}
	for n := range peerd {
		names[n] = true
	}
	sorted := make([]string, 0, len(names))
	for n := range names {
		sorted = append(sorted, n)
	}
	sort.Strings(sorted)
	same := 0
	for _, n := range sorted {
		want, inIstiod := istiod[n]
		got, inPeerd := peerd[n]
		switch {
		case !inPeerd:
			problems = append(problems, fmt.Sprintf("%s: istiod serves it, peerd does not:\n%s", n, describe(want)))
			continue
		case !inIstiod:
			problems = append(problems, fmt.Sprintf("%s: peerd serves it, istiod does not:\n%s", n, describe(got)))
			continue
		}
		want, got = proto.Clone(want).(*workloadapi.Address), proto.Clone(got).(*workloadapi.Address)
		if why, ok := ignored[n]; ok && want.GetService() != nil && got.GetService() != nil {
			if !proto.Equal(want.GetService().GetLoadBalancing(), got.GetService().GetLoadBalancing()) {
				notes = append(notes, fmt.Sprintf("%s: service.load_balancing ignored (%s): istiod {%v}, peerd {%v}", n, why,
					want.GetService().GetLoadBalancing(), got.GetService().GetLoadBalancing()))
			}
			want.GetService().LoadBalancing = nil
			got.GetService().LoadBalancing = nil
		}
		if d := cmp.Diff(want, got, protocmp.Transform()); d != "" {
			fields := diffByName(want.ProtoReflect(), got.ProtoReflect(), "address")
			problems = append(problems, fmt.Sprintf("%s differs (values are istiod vs peerd):\n  %s\nfull diff (-istiod +peerd):\n%s",
				n, strings.Join(fields, "\n  "), d))
			continue
		}
		same++
	}
	notes = append(notes, fmt.Sprintf("%d of %d addresses identical (istiod %d, peerd %d)", same, len(sorted), len(istiod), len(peerd)))
	return problems, notes
}

// dumpAddresses writes both sides as JSON under $PEERD_DIFF_DUMP/<case>/
// when that variable is set, for reading a difference at leisure.
func dumpAddresses(t *testing.T, name string, sides map[string]map[string]*workloadapi.Address) {
	t.Helper()
	root := os.Getenv("PEERD_DIFF_DUMP")
	if root == "" {
		return
	}
	dir := filepath.Join(root, strings.ReplaceAll(name, "/", "_"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for side, addrs := range sides {
		names := make([]string, 0, len(addrs))
		for n := range addrs {
			names = append(names, n)
		}
		sort.Strings(names)
		var b strings.Builder
		for _, n := range names {
			fmt.Fprintf(&b, "# %s\n%s\n", n, describe(addrs[n]))
		}
		if err := os.WriteFile(filepath.Join(dir, side+".txt"), []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

var protojsonOptions = protojson.MarshalOptions{Multiline: true}

func describe(a *workloadapi.Address) string {
	b, err := protojsonOptions.Marshal(a)
	if err != nil {
		return fmt.Sprintf("%v", a)
	}
	return string(b)
}

// TestCompareAddressesCatchesDifferences keeps the differential test honest:
// istiod's own output, altered in one field, in the ignored field of a
// service not on the ignore list, or missing one resource, must be reported,
// and so must on-demand keys that are missing or filed under the wrong
// resource, and a service's on-demand answer that lacks a member workload.
func TestCompareAddressesCatchesDifferences(t *testing.T) {
	files := diffCases(t)["examples/cluster1"]
	objs := decodeFiles(t, files)
	view := runIstiod(t, defaultDiffConfig, objs)
	want := view.Addresses
	ignored := peerdOnlyTrafficDistribution(defaultDiffConfig, objs)
	clone := func() map[string]*workloadapi.Address {
		out := map[string]*workloadapi.Address{}
		for n, a := range want {
			out[n] = proto.Clone(a).(*workloadapi.Address)
		}
		return out
	}
	if p, _ := compareAddresses(want, clone(), ignored); len(p) != 0 {
		t.Fatalf("istiod's output compared with itself differs: %v", p)
	}

	var wl, svc string
	for n, a := range want {
		if a.GetWorkload() != nil && len(a.GetWorkload().GetServices()) > 0 && (wl == "" || n < wl) {
			wl = n
		}
		if a.GetService() != nil && ignored[n] == "" && (svc == "" || n < svc) {
			svc = n
		}
	}
	if wl == "" || svc == "" {
		t.Fatal("examples/cluster1 has no workload with services or no service: the manifests changed under this test")
	}

	got := clone()
	w := got[wl].GetWorkload()
	w.Status = 1 - w.Status
	if p, _ := compareAddresses(want, got, ignored); len(p) != 1 || !strings.Contains(p[0], "address.workload.status") {
		t.Errorf("a flipped workload status gave %v", p)
	}

	got = clone()
	got[svc].GetService().LoadBalancing = &workloadapi.LoadBalancing{Mode: workloadapi.LoadBalancing_STRICT}
	if p, _ := compareAddresses(want, got, ignored); len(p) != 1 || !strings.Contains(p[0], "load_balancing") {
		t.Errorf("a changed load_balancing on a service not on the ignore list gave %v", p)
	}

	got = clone()
	delete(got, wl)
	if p, _ := compareAddresses(want, got, ignored); len(p) != 1 || !strings.Contains(p[0], "istiod serves it, peerd does not") {
		t.Errorf("a missing workload gave %v", p)
	}

	// The lookup comparison: istiod's own keys pass; a key dropped from a
	// workload, a key filed under the wrong resource, or a workload that no
	// longer lists one of its services (so peerd's answer for that service
	// lacks a member) does not.
	keys := func() map[string][]string {
		out := map[string][]string{}
		for n, a := range want {
			out[n] = addressKeys(a)
		}
		return out
	}
	if p := compareLookups(view, want, keys()); len(p) != 0 {
		t.Fatalf("istiod's own keys against istiod's lookup: %v", p)
	}
	k := keys()
	dropped := k[wl][0]
	k[wl] = k[wl][1:]
	if p := compareLookups(view, want, k); len(p) != 1 || !strings.Contains(p[0], dropped) {
		t.Errorf("dropping key %s of %s gave %v", dropped, wl, p)
	}
	k = keys()
	k[svc] = append(k[svc], keys()[wl][0])
	if p := compareLookups(view, want, k); len(p) != 1 || !strings.Contains(p[0], keys()[wl][0]) {
		t.Errorf("filing %s's key under %s gave %v", wl, svc, p)
	}

	got = clone()
	member := slices.Sorted(maps.Keys(got[wl].GetWorkload().GetServices()))[0]
	delete(got[wl].GetWorkload().GetServices(), member)
	// The service's answer lacks the member under its name and each VIP.
	wantKeys := append([]string{member}, addressKeys(want[member])...)
	p := compareLookups(view, got, keys())
	if len(p) != len(wantKeys) {
		t.Errorf("%s no longer listing %s gave %d problems, want one per key %v: %v", wl, member, len(p), wantKeys, p)
	}
	for _, key := range wantKeys {
		if !slices.ContainsFunc(p, func(s string) bool { return strings.Contains(s, fmt.Sprintf("key %q", key)) && strings.Contains(s, wl) }) {
			t.Errorf("%s no longer listing %s: no problem names key %s and the workload: %v", wl, member, key, p)
		}
	}
}
