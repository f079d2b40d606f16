package ambient

import (
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	corev1 "k8s.io/api/core/v1"

	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
	federationpb "github.com/peerd-mesh/peerd/proto/peerd/federation/v1"
)

// extensionExports are the exports extension mode hands out for in: the
// Merger fed the model's delta and, as istiod's stream, the model's own
// mapping of the objects without the scope labels plus extra (workloads
// only istiod knows).
func extensionExports(in Inputs, extra ...*workloadpb.Address) []*federationpb.FederatedService {
	istiod := localOnly(testConfig, Build(testConfig, withoutScope(in)).Addresses)
	for _, a := range extra {
		istiod[ResourceName(a)] = a
	}
	return NewMerger(testConfig).Apply(istiod, NewModel(testConfig).Apply(in.changes())).Exports
}

// workloadEntry is a workload as istiod sends a WorkloadEntry of hello/app:
// no Pod behind it, its own service account.
func workloadEntry(status workloadpb.WorkloadStatus) *workloadpb.Address {
	return wlAddr(&workloadpb.Workload{
		Uid: testCluster + "/networking.istio.io/WorkloadEntry/hello/vm-1", Name: "vm-1", Namespace: "hello",
		Addresses: [][]byte{{10, 0, 9, 1}}, ServiceAccount: "vm", Status: status,
		Services: map[string]*workloadpb.PortList{nameAppPlain: ports(80, 8080)},
	})
}

// TestExportsSameInBothModes: the same objects give the same exports in
// standalone and extension mode; capacity and SANs come from one function
// (ServedSummary) over what each mode serves.
func TestExportsSameInBothModes(t *testing.T) {
	notReady := pod("hello", "app-2", podLabels("app", "app"), captured(), serviceAccount("other"), podIPs("10.0.0.6"), podReadyStatus(corev1.ConditionFalse))
	for _, tt := range []struct {
		name string
		in   Inputs
		want int // exports
	}{
		{"global", peeringInputs(scopeGlobalLabel), 1},
		{"global-only", peeringInputs(scopeGlobalOnlyLabel), 1},
		{"no scope", peeringInputs(func(*corev1.Service) {}), 0},
		{"a pod not Ready: its SAN, no capacity", func() Inputs {
			in := peeringInputs(scopeGlobalLabel)
			in.Pods = append(in.Pods, notReady)
			return in
		}(), 1},
		{"no endpoints", func() Inputs {
			in := peeringInputs(scopeGlobalLabel)
			in.Pods = nil
			return in
		}(), 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			standalone := Build(testConfig, tt.in).Exports
			if len(standalone) != tt.want {
				t.Fatalf("standalone exports %d services, want %d: %v", len(standalone), tt.want, standalone)
			}
			if d := cmp.Diff(standalone, extensionExports(tt.in), protocmp.Transform(), cmpEmptyAsNil()); d != "" {
				t.Errorf("exports differ (-standalone +extension):\n%s", d)
			}
		})
	}
}

// cmpEmptyAsNil: the Delta and Output spell "no exports" as nil or empty.
func cmpEmptyAsNil() cmp.Option {
	return cmp.FilterValues(func(a, b []*federationpb.FederatedService) bool { return len(a)+len(b) == 0 }, cmp.Ignore())
}

// TestExportCountsWorkloadsOnlyIstiodKnows: in extension mode a
// WorkloadEntry of a global Service counts in capacity when HEALTHY and
// adds its SAN either way.
func TestExportCountsWorkloadsOnlyIstiodKnows(t *testing.T) {
	in := peeringInputs(scopeGlobalLabel)
	standalone := Build(testConfig, in).Exports[0]
	vmSAN := spiffeID(testConfig.withDefaults().TrustDomain, "hello", "vm")
	for _, tt := range []struct {
		status       workloadpb.WorkloadStatus
		wantCapacity uint32
	}{
		{workloadpb.WorkloadStatus_HEALTHY, standalone.Capacity + 1},
		{workloadpb.WorkloadStatus_UNHEALTHY, standalone.Capacity},
	} {
		t.Run(tt.status.String(), func(t *testing.T) {
			want := proto.CloneOf(standalone)
			want.Capacity = tt.wantCapacity
			want.SubjectAltNames = append(slices.Clone(want.SubjectAltNames), vmSAN)
			slices.Sort(want.SubjectAltNames)
			got := extensionExports(in, workloadEntry(tt.status))
			if len(got) != 1 {
				t.Fatalf("extension exports %d services, want 1: %v", len(got), got)
			}
			diffProto(t, want, got[0])
		})
	}
}

// TestMergerExportsIncremental: a served workload's change recomputes the
// export of each service it lists, and only when the summary changes.
func TestMergerExportsIncremental(t *testing.T) {
	in := peeringInputs(scopeGlobalLabel)
	istiod := localOnly(testConfig, Build(testConfig, withoutScope(in)).Addresses)
	model := NewModel(testConfig)
	mg := NewMerger(testConfig)
	first := mg.Apply(istiod, model.Apply(in.changes())).Exports
	if len(first) != 1 {
		t.Fatalf("first merge exports %v, want hello/app", first)
	}
	base := first[0]

	// The WorkloadEntry appears: the export gains its capacity and SAN.
	d := mg.Apply(map[string]*workloadpb.Address{ResourceName(workloadEntry(workloadpb.WorkloadStatus_HEALTHY)): workloadEntry(workloadpb.WorkloadStatus_HEALTHY)}, Delta{})
	if len(d.Exports) != 1 || d.Exports[0].Capacity != base.Capacity+1 || len(d.Exports[0].SubjectAltNames) != len(base.SubjectAltNames)+1 {
		t.Fatalf("after the WorkloadEntry joined: exports %v, want hello/app with one more capacity and SAN", d.Exports)
	}
	// A change that leaves the summary as it is (a new address) changes no export.
	moved := workloadEntry(workloadpb.WorkloadStatus_HEALTHY)
	moved.GetWorkload().Addresses = [][]byte{{10, 0, 9, 2}}
	if d := mg.Apply(map[string]*workloadpb.Address{ResourceName(moved): moved}, Delta{}); len(d.Exports)+len(d.Unexports) > 0 {
		t.Errorf("an address change re-exported: %v %v", d.Exports, d.Unexports)
	}
	// It goes: back to the first export.
	d = mg.Apply(map[string]*workloadpb.Address{ResourceName(moved): nil}, Delta{})
	if len(d.Exports) != 1 {
		t.Fatalf("after the WorkloadEntry left: exports %v, want hello/app", d.Exports)
	}
	diffProto(t, base, d.Exports[0])

	// The Service stops being global: unexported.
	d = mg.Apply(nil, model.Apply([]Change{{Ref: objectRef(KindService, "hello", "app"), Object: appService()}}))
	if d := cmp.Diff([]string{"hello/app"}, d.Unexports); d != "" {
		t.Errorf("unexports (-want +got):\n%s", d)
	}
	if len(mg.exported) != 0 {
		t.Errorf("the Merger still holds exports: %v", mg.exported)
	}
}
