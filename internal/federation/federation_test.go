package federation

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	federationpb "github.com/peerd-mesh/peerd/proto/peerd/federation/v1"
)

func validService() *federationpb.FederatedService {
	return &federationpb.FederatedService{
		Name:      "echo",
		Namespace: "hello",
		Ports: []*federationpb.Port{
			{Port: 80, TargetPort: 8080, Protocol: "TCP", AppProtocol: "http", Name: "http"},
			{Port: 53, Protocol: "UDP"},
		},
		SubjectAltNames: []string{"spiffe://cluster2.local/ns/hello/sa/echo"},
		Capacity:        3,
		Scope:           federationpb.Scope_GLOBAL,
		Locality:        &federationpb.Locality{Region: "eu", Zone: "eu-1"},
		CreationTime:    timestamppb.New(timestamppb.Now().AsTime()),
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(*federationpb.FederatedService)
		rname  string
		want   string // substring of the error; "" = valid
	}{
		{"valid", func(*federationpb.FederatedService) {}, "", ""},
		{"global-only is valid", func(s *federationpb.FederatedService) { s.Scope = federationpb.Scope_GLOBAL_ONLY }, "", ""},
		{"resource name differs from the content", func(*federationpb.FederatedService) {}, "hello/other", `name: resource is named "hello/other" but describes "hello/echo"`},
		{"unspecified scope", func(s *federationpb.FederatedService) { s.Scope = federationpb.Scope_SCOPE_UNSPECIFIED }, "", "scope: SCOPE_UNSPECIFIED is not GLOBAL or GLOBAL_ONLY"},
		{"unknown scope number", func(s *federationpb.FederatedService) { s.Scope = 7 }, "", "scope: 7 is not GLOBAL or GLOBAL_ONLY"},
		{"bad namespace", func(s *federationpb.FederatedService) { s.Namespace = "Hello_World" }, "Hello_World/echo", `namespace: "Hello_World"`},
		{"bad name", func(s *federationpb.FederatedService) { s.Name = "9echo" }, "hello/9echo", `name: "9echo"`},
		{"port zero", func(s *federationpb.FederatedService) { s.Ports[0].Port = 0 }, "", "ports[0].port: 0 is not in 1-65535"},
		{"port too large", func(s *federationpb.FederatedService) { s.Ports[1].Port = 70000 }, "", "ports[1].port: 70000 is not in 1-65535"},
		{"target port too large", func(s *federationpb.FederatedService) { s.Ports[0].TargetPort = 65536 }, "", "ports[0].target_port: 65536"},
		{"unknown protocol", func(s *federationpb.FederatedService) { s.Ports[0].Protocol = "XTP" }, "", `ports[0].protocol: "XTP" is not TCP, UDP or SCTP`},
		{"port listed twice", func(s *federationpb.FederatedService) { s.Ports[1].Port = 80 }, "", "ports[1].port: 80 listed twice"},
		{"san not spiffe", func(s *federationpb.FederatedService) { s.SubjectAltNames = []string{"https://x/ns/a/sa/b"} }, "", "subject_alt_names[0]"},
		{"san without sa", func(s *federationpb.FederatedService) { s.SubjectAltNames = []string{"spiffe://td/ns/a"} }, "", "want /ns/<namespace>/sa/<service-account>"},
		{"san with a port and a query", func(s *federationpb.FederatedService) {
			s.SubjectAltNames = []string{"spiffe://evil@TD:99/ns/a/sa/b?x#y"}
		}, "", "subject_alt_names[0]"},
		{"huge san", func(s *federationpb.FederatedService) {
			s.SubjectAltNames = []string{"spiffe://td/ns/a/sa/" + strings.Repeat("b", 600)}
		}, "", "subject_alt_names[0]: 620 bytes"},
		{"huge port name", func(s *federationpb.FederatedService) { s.Ports[0].Name = strings.Repeat("p", 64) }, "", "ports[0].name: 64 bytes"},
		{"huge app protocol", func(s *federationpb.FederatedService) { s.Ports[0].AppProtocol = strings.Repeat("h", 300) }, "", "ports[0].app_protocol: 300 bytes"},
		{"huge traffic distribution", func(s *federationpb.FederatedService) { s.TrafficDistribution = strings.Repeat("x", 1<<20) }, "", "traffic_distribution: 1048576 bytes"},
		{"too many sans", func(s *federationpb.FederatedService) { s.SubjectAltNames = make([]string, MaxSANs+1) }, "", "subject_alt_names: 4097 names"},
		{"bad timestamp", func(s *federationpb.FederatedService) { s.CreationTime = &timestamppb.Timestamp{Nanos: -1} }, "", "creation_time"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := validService()
			tc.change(s)
			name := tc.rname
			if name == "" {
				name = ResourceName(s.GetNamespace(), s.GetName())
			}
			err := Validate(name, s)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Validate = %v; want nil", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("Validate = %v; want an error containing %q", err, tc.want)
			}
		})
	}
	if err := Validate("a/b", nil); err == nil {
		t.Error("Validate(nil) = nil; want an error")
	}
}

func TestImportedServiceCopyAndEqual(t *testing.T) {
	a := NewImported("cluster2", validService())
	b := a.DeepCopyObject().(*ImportedService)
	if !a.Equal(b) || b.Namespace != "hello" || b.Name != "echo" || b.Cluster != "cluster2" {
		t.Fatalf("copy %+v differs from %+v", b, a)
	}
	b.Service.Capacity = 0
	if a.Equal(b) || a.Service.Capacity != 3 {
		t.Fatal("the copy shares its summary with the original")
	}
	c := NewImported("cluster3", proto.Clone(a.Service).(*federationpb.FederatedService))
	if a.Equal(c) {
		t.Fatal("services of two clusters compare equal")
	}
}

func TestTypeURLNamesTheMessage(t *testing.T) {
	want := "type.googleapis.com/" + string((&federationpb.FederatedService{}).ProtoReflect().Descriptor().FullName())
	if TypeURL != want {
		t.Fatalf("TypeURL = %q; the message is %q", TypeURL, want)
	}
}
