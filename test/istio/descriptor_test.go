package istio

import (
	"fmt"
	"sort"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"

	securitypb "github.com/peerd-mesh/peerd/proto/istio/security"
	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"
)

// TestDescriptorsMatchIstio compares the descriptors themselves: same
// package, same messages and enums by full name, and for every field the
// same number, kind, cardinality, presence, oneof, map-ness and referenced
// type; for every enum the same values by number. The wire round trips can
// only exercise what a fixture sets; this check covers the whole contract.
// The file paths differ on purpose (peerd's own layout) and are not compared.
func TestDescriptorsMatchIstio(t *testing.T) {
	for _, tc := range []struct {
		istio, peerd protoreflect.FileDescriptor
	}{
		{workloadapi.File_workloadapi_workload_proto, workloadpb.File_istio_workload_workload_proto},
		{security.File_workloadapi_security_authorization_proto, securitypb.File_istio_security_authorization_proto},
	} {
		t.Run(string(tc.istio.Package()), func(t *testing.T) {
			if d := diffFiles(tc.istio, tc.peerd); len(d) > 0 {
				t.Errorf("peerd's %s differs from Istio's %s:\n  %s", tc.peerd.Path(), tc.istio.Path(), strings.Join(d, "\n  "))
			}
		})
	}
}

// TestDescriptorDiffDetectsChanges makes sure diffFiles is not blind: peerd's
// own descriptor, rebuilt with one field renumbered, one enum value
// renumbered or one field's type changed, must each show the change.
func TestDescriptorDiffDetectsChanges(t *testing.T) {
	base := protodesc.ToFileDescriptorProto(workloadpb.File_istio_workload_workload_proto)
	find := func(fdp *descriptorpb.FileDescriptorProto, msg, field string) *descriptorpb.FieldDescriptorProto {
		for _, m := range fdp.GetMessageType() {
			if m.GetName() != msg {
				continue
			}
			for _, f := range m.GetField() {
				if f.GetName() == field {
					return f
				}
			}
		}
		t.Fatalf("no field %s.%s in peerd's descriptor", msg, field)
		return nil
	}
	for _, tc := range []struct {
		name   string
		change func(*descriptorpb.FileDescriptorProto)
		want   string
	}{
		{"renumbered field", func(fdp *descriptorpb.FileDescriptorProto) {
			find(fdp, "Workload", "uid").Number = proto.Int32(99)
		}, "field istio.workload.Workload.uid number=99"},
		{"renumbered enum value", func(fdp *descriptorpb.FileDescriptorProto) {
			for _, e := range fdp.GetEnumType() {
				if e.GetName() == "TunnelProtocol" {
					e.GetValue()[1].Number = proto.Int32(7)
				}
			}
		}, "enum value istio.workload.HBONE number=7"},
		{"changed kind", func(fdp *descriptorpb.FileDescriptorProto) {
			find(fdp, "Port", "target_port").Type = descriptorpb.FieldDescriptorProto_TYPE_INT32.Enum()
		}, "field istio.workload.Port.target_port number=2 kind=int32"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fdp := proto.Clone(base).(*descriptorpb.FileDescriptorProto)
			tc.change(fdp)
			altered, err := protodesc.NewFile(fdp, protoregistry.GlobalFiles)
			if err != nil {
				t.Fatalf("rebuilding the altered descriptor: %v", err)
			}
			d := diffFiles(workloadapi.File_workloadapi_workload_proto, altered)
			if !strings.Contains(strings.Join(d, "\n"), "only peerd has: "+tc.want) {
				t.Errorf("the %s was not reported; differences were:\n  %s", tc.name, strings.Join(d, "\n  "))
			}
		})
	}
}

func diffFiles(istio, peerd protoreflect.FileDescriptor) []string {
	var out []string
	if istio.Package() != peerd.Package() {
		out = append(out, fmt.Sprintf("package %s vs %s", istio.Package(), peerd.Package()))
	}
	if istio.Syntax() != peerd.Syntax() {
		out = append(out, fmt.Sprintf("syntax %v vs %v", istio.Syntax(), peerd.Syntax()))
	}
	return append(out, diffDescriptions(describeFile(istio), describeFile(peerd))...)
}

// describeFile flattens a file into one line per message, field, enum and
// enum value, each line holding every wire-relevant fact about it.
func describeFile(fd protoreflect.FileDescriptor) map[string]bool {
	out := map[string]bool{}
	var msgs func(protoreflect.MessageDescriptors)
	enums := func(eds protoreflect.EnumDescriptors) {
		for i := 0; i < eds.Len(); i++ {
			ed := eds.Get(i)
			out["enum "+string(ed.FullName())] = true
			for j := 0; j < ed.Values().Len(); j++ {
				ev := ed.Values().Get(j)
				out[fmt.Sprintf("enum value %s number=%d", ev.FullName(), ev.Number())] = true
			}
		}
	}
	msgs = func(mds protoreflect.MessageDescriptors) {
		for i := 0; i < mds.Len(); i++ {
			md := mds.Get(i)
			out[fmt.Sprintf("message %s mapentry=%v", md.FullName(), md.IsMapEntry())] = true
			for j := 0; j < md.Fields().Len(); j++ {
				out[describeField(md.Fields().Get(j))] = true
			}
			for j := 0; j < md.Oneofs().Len(); j++ {
				od := md.Oneofs().Get(j)
				out[fmt.Sprintf("oneof %s synthetic=%v fields=%d", od.FullName(), od.IsSynthetic(), od.Fields().Len())] = true
			}
			enums(md.Enums())
			msgs(md.Messages())
		}
	}
	enums(fd.Enums())
	msgs(fd.Messages())
	return out
}

func describeField(f protoreflect.FieldDescriptor) string {
	var ref string
	switch {
	case f.Message() != nil:
		ref = string(f.Message().FullName())
	case f.Enum() != nil:
		ref = string(f.Enum().FullName())
	}
	oneof := ""
	if od := f.ContainingOneof(); od != nil {
		oneof = string(od.Name())
	}
	return fmt.Sprintf("field %s number=%d kind=%v cardinality=%v type=%q presence=%v packed=%v map=%v oneof=%q",
		f.FullName(), f.Number(), f.Kind(), f.Cardinality(), ref, f.HasPresence(), f.IsPacked(), f.IsMap(), oneof)
}

func diffDescriptions(istio, peerd map[string]bool) []string {
	var out []string
	for k := range istio {
		if !peerd[k] {
			out = append(out, "only Istio has: "+k)
		}
	}
	for k := range peerd {
		if !istio[k] {
			out = append(out, "only peerd has: "+k)
		}
	}
	sort.Strings(out)
	return out
}
