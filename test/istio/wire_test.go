package istio

import (
	"bytes"
	"fmt"
	"hash/fnv"
	"net/netip"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	securitypb "github.com/peerd-mesh/peerd/proto/istio/security"
	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"
)

// deterministic is the marshaling both sides use: map entries sorted, so the
// same message always gives the same bytes.
var deterministic = proto.MarshalOptions{Deterministic: true}

func ip(s string) []byte { return netip.MustParseAddr(s).AsSlice() }

func anyString(t *testing.T, s string) *anypb.Any {
	t.Helper()
	a, err := anypb.New(wrapperspb.String(s))
	if err != nil {
		t.Fatalf("anypb.New: %v", err)
	}
	return a
}

// istioAddressFixtures are realistic Addresses built with Istio's own
// generated types. Together they set every field of every istio.workload
// message, every oneof branch and every non-zero enum value;
// TestWireFixturesCoverEverything checks that, so a field Istio adds later
// fails the test until a fixture sets it.
func istioAddressFixtures(t *testing.T) []*workloadapi.Address {
	allPorts := []*workloadapi.Port{
		{ServicePort: 80, TargetPort: 8080, AppProtocol: workloadapi.AppProtocol_HTTP11},
		{ServicePort: 81, TargetPort: 8081, AppProtocol: workloadapi.AppProtocol_HTTP2},
		{ServicePort: 9090, TargetPort: 0, AppProtocol: workloadapi.AppProtocol_GRPC},
		{ServicePort: 5432, TargetPort: 5432, AppProtocol: workloadapi.AppProtocol_TCP},
		{ServicePort: 443, TargetPort: 8443, AppProtocol: workloadapi.AppProtocol_TLS},
		{ServicePort: 7000},
	}
	full := &workloadapi.Workload{
		Uid:            "cluster1//Pod/apps/echo-7d9f-abcde",
		Name:           "echo-7d9f-abcde",
		Namespace:      "apps",
		Addresses:      [][]byte{ip("10.244.1.7"), ip("fd00:10:244::7")},
		Hostname:       "echo.example.com",
		Network:        "network1",
		TunnelProtocol: workloadapi.TunnelProtocol_HBONE,
		TrustDomain:    "cluster1.local",
		ServiceAccount: "echo",
		Waypoint: &workloadapi.GatewayAddress{
			Destination: &workloadapi.GatewayAddress_Hostname{Hostname: &workloadapi.NamespacedHostname{
				Namespace: "apps", Hostname: "waypoint.apps.svc.cluster.local",
			}},
			HboneMtlsPort: 15008,
		},
		NetworkGateway: &workloadapi.GatewayAddress{
			Destination: &workloadapi.GatewayAddress_Address{Address: &workloadapi.NetworkAddress{
				Network: "network2", Address: ip("172.18.0.10"), Length: proto.Uint32(32),
			}},
			HboneMtlsPort: 15008,
		},
		Node:              "worker-1",
		CanonicalName:     "echo",
		CanonicalRevision: "v1",
		WorkloadType:      workloadapi.WorkloadType_POD,
		WorkloadName:      "echo",
		NativeTunnel:      true,
		ApplicationTunnel: &workloadapi.ApplicationTunnel{Protocol: workloadapi.ApplicationTunnel_PROXY, Port: 15088},
		Services: map[string]*workloadapi.PortList{
			"apps/echo.apps.svc.cluster.local":  {Ports: allPorts},
			"apps/echo.apps.mesh.internal":      {Ports: allPorts[:2]},
			"apps/empty.apps.svc.cluster.local": {},
		},
		AuthorizationPolicies: []string{"apps/allow-frontend", "istio-system/deny-all"},
		Status:                workloadapi.WorkloadStatus_UNHEALTHY,
		ClusterId:             "cluster1",
		Locality:              &workloadapi.Locality{Region: "eu-west-1", Zone: "eu-west-1a", Subzone: "rack-7"},
		NetworkMode:           workloadapi.NetworkMode_HOST_NETWORK,
		Extensions:            []*workloadapi.Extension{{Name: "peerd.dev/test", Config: anyString(t, "ext")}},
		Capacity:              wrapperspb.UInt32(3),
	}
	remote := &workloadapi.Workload{
		Uid:            "cluster2/peerd/apps/echo.apps.mesh.internal",
		Name:           "echo",
		Namespace:      "apps",
		Network:        "network2",
		TunnelProtocol: workloadapi.TunnelProtocol_LEGACY_ISTIO_MTLS,
		NetworkGateway: &workloadapi.GatewayAddress{
			Destination: &workloadapi.GatewayAddress_Hostname{Hostname: &workloadapi.NamespacedHostname{
				Namespace: "istio-system", Hostname: "eastwest.example.com",
			}},
		},
		WorkloadType: workloadapi.WorkloadType_CRONJOB,
		// capacity 0 is present (UNHEALTHY remote cluster), not absent.
		Capacity: wrapperspb.UInt32(0),
	}
	job := &workloadapi.Workload{
		Uid:          "cluster1/discovery.k8s.io/EndpointSlice/apps/external-abc/192.0.2.1",
		Addresses:    [][]byte{ip("192.0.2.1")},
		WorkloadType: workloadapi.WorkloadType_JOB,
	}
	svc := &workloadapi.Service{
		Name:      "echo",
		Namespace: "apps",
		Hostname:  "echo.apps.svc.cluster.local",
		Addresses: []*workloadapi.NetworkAddress{
			{Network: "network1", Address: ip("10.96.0.10")},
			{Network: "network1", Address: ip("fd00:10:96::a"), Length: proto.Uint32(0)},
		},
		Ports:           allPorts,
		SubjectAltNames: []string{"spiffe://cluster.local/ns/apps/sa/echo", "spiffe://cluster2.local/ns/apps/sa/echo"},
		Waypoint: &workloadapi.GatewayAddress{
			Destination: &workloadapi.GatewayAddress_Address{Address: &workloadapi.NetworkAddress{
				Network: "network1", Address: ip("10.96.0.99"),
			}},
			HboneMtlsPort: 15008,
		},
		LoadBalancing: &workloadapi.LoadBalancing{
			RoutingPreference: []workloadapi.LoadBalancing_Scope{
				workloadapi.LoadBalancing_NETWORK,
				workloadapi.LoadBalancing_REGION,
				workloadapi.LoadBalancing_ZONE,
				workloadapi.LoadBalancing_SUBZONE,
				workloadapi.LoadBalancing_NODE,
				workloadapi.LoadBalancing_CLUSTER,
				workloadapi.LoadBalancing_UNSPECIFIED_SCOPE,
			},
			Mode:         workloadapi.LoadBalancing_FAILOVER,
			HealthPolicy: workloadapi.LoadBalancing_ALLOW_ALL,
		},
		IpFamilies:         workloadapi.IPFamilies_DUAL,
		Extensions:         []*workloadapi.Extension{{Name: "peerd.dev/svc", Config: anyString(t, "svc")}},
		Canonical:          true,
		IngressUseWaypoint: true,
		WeightedWaypoints: []*workloadapi.WeightedWaypoint{
			{Destination: &workloadapi.GatewayAddress{
				Destination: &workloadapi.GatewayAddress_Hostname{Hostname: &workloadapi.NamespacedHostname{
					Namespace: "apps", Hostname: "waypoint-canary.apps.svc.cluster.local",
				}},
				HboneMtlsPort: 15008,
			}, Weight: 10},
			{Destination: &workloadapi.GatewayAddress{
				Destination: &workloadapi.GatewayAddress_Hostname{Hostname: &workloadapi.NamespacedHostname{
					Namespace: "apps", Hostname: "waypoint.apps.svc.cluster.local",
				}},
			}, Weight: 90},
		},
		Visibility: workloadapi.Service_NAMESPACE,
	}
	local := &workloadapi.Service{
		Name: "local", Namespace: "apps", Hostname: "local.apps.svc.cluster.local",
		Addresses:     []*workloadapi.NetworkAddress{{Network: "network1", Address: ip("10.96.0.11")}},
		LoadBalancing: &workloadapi.LoadBalancing{RoutingPreference: []workloadapi.LoadBalancing_Scope{workloadapi.LoadBalancing_NODE}, Mode: workloadapi.LoadBalancing_STRICT},
		IpFamilies:    workloadapi.IPFamilies_IPV4_ONLY,
	}
	passthrough := &workloadapi.Service{
		Name: "v6", Namespace: "apps", Hostname: "v6.apps.svc.cluster.local",
		LoadBalancing: &workloadapi.LoadBalancing{Mode: workloadapi.LoadBalancing_PASSTHROUGH},
		IpFamilies:    workloadapi.IPFamilies_IPV6_ONLY,
	}
	var out []*workloadapi.Address
	for _, w := range []*workloadapi.Workload{full, remote, job} {
		out = append(out, &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}})
	}
	for _, s := range []*workloadapi.Service{svc, local, passthrough} {
		out = append(out, &workloadapi.Address{Type: &workloadapi.Address_Service{Service: s}})
	}
	return out
}

// istioAuthorizationFixtures set every field of every istio.security
// message, every StringMatch branch and every non-zero enum value.
func istioAuthorizationFixtures(t *testing.T) []*security.Authorization {
	sm := func(kind, v string) *security.StringMatch {
		switch kind {
		case "exact":
			return &security.StringMatch{MatchType: &security.StringMatch_Exact{Exact: v}}
		case "prefix":
			return &security.StringMatch{MatchType: &security.StringMatch_Prefix{Prefix: v}}
		case "suffix":
			return &security.StringMatch{MatchType: &security.StringMatch_Suffix{Suffix: v}}
		default:
			return &security.StringMatch{MatchType: &security.StringMatch_Presence{Presence: &emptypb.Empty{}}}
		}
	}
	full := &security.Match{
		Namespaces:         []*security.StringMatch{sm("exact", "apps"), sm("prefix", "team-")},
		NotNamespaces:      []*security.StringMatch{sm("suffix", "-test")},
		ServiceAccounts:    []*security.ServiceAccountMatch{{Namespace: "apps", ServiceAccount: "frontend"}},
		NotServiceAccounts: []*security.ServiceAccountMatch{{Namespace: "apps", ServiceAccount: "batch"}},
		Principals:         []*security.StringMatch{sm("exact", "cluster.local/ns/apps/sa/frontend"), sm("presence", "")},
		NotPrincipals:      []*security.StringMatch{sm("prefix", "cluster.local/ns/kube-system/")},
		SourceIps:          []*security.Address{{Address: ip("10.244.0.0"), Length: 16}},
		NotSourceIps:       []*security.Address{{Address: ip("10.244.9.9"), Length: 32}},
		DestinationIps:     []*security.Address{{Address: ip("fd00::"), Length: 8}},
		NotDestinationIps:  []*security.Address{{Address: ip("10.96.0.1"), Length: 32}},
		DestinationPorts:   []uint32{80, 8080},
		NotDestinationPorts: []uint32{
			15000, 15020,
		},
		Extensions: []*workloadapi.Extension{{Name: "peerd.dev/match", Config: anyString(t, "match")}},
	}
	return []*security.Authorization{
		{
			Name:      "allow-frontend",
			Namespace: "apps",
			Scope:     security.Scope_WORKLOAD_SELECTOR,
			Action:    security.Action_DENY,
			Groups: []*security.Group{
				{Rules: []*security.Rules{{Matches: []*security.Match{full, {DestinationPorts: []uint32{443}}}}}},
				{Rules: []*security.Rules{{}}},
			},
			DryRun:     true,
			Extensions: []*workloadapi.Extension{{Name: "peerd.dev/authz", Config: anyString(t, "authz")}},
		},
		{Name: "ns-wide", Namespace: "apps", Scope: security.Scope_NAMESPACE},
	}
}

// roundTrip sends src's bytes into dst, checks dst holds no field it did
// not recognise, re-marshals dst and requires the very same bytes.
func roundTrip(t *testing.T, what string, src, dst proto.Message) {
	t.Helper()
	b, err := deterministic.Marshal(src)
	if err != nil {
		t.Fatalf("%s: marshal: %v", what, err)
	}
	if err := proto.Unmarshal(b, dst); err != nil {
		t.Fatalf("%s: unmarshal into %T: %v", what, dst, err)
	}
	if u := unknownFields(dst.ProtoReflect(), string(dst.ProtoReflect().Descriptor().FullName())); len(u) > 0 {
		t.Errorf("%s: %T kept unknown fields (a number the receiver does not know): %s", what, dst, strings.Join(u, "; "))
	}
	b2, err := deterministic.Marshal(dst)
	if err != nil {
		t.Fatalf("%s: re-marshal: %v", what, err)
	}
	if !bytes.Equal(b, b2) {
		t.Errorf("%s: re-marshaled %T differs from the original bytes\n sent: %x\n back: %x", what, dst, b, b2)
	}
	if d := diffByName(src.ProtoReflect(), dst.ProtoReflect(), what); len(d) > 0 {
		t.Errorf("%s: field values differ by name after the round trip:\n  %s", what, strings.Join(d, "\n  "))
	}
}

// unknownFields lists every message, at any depth, that holds unknown bytes.
func unknownFields(m protoreflect.Message, path string) []string {
	var out []string
	if len(m.GetUnknown()) > 0 {
		out = append(out, fmt.Sprintf("%s: %x", path, []byte(m.GetUnknown())))
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		p := path + "." + string(fd.Name())
		switch {
		case fd.IsMap():
			if fd.MapValue().Message() != nil {
				v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
					out = append(out, unknownFields(mv.Message(), fmt.Sprintf("%s[%v]", p, k))...)
					return true
				})
			}
		case fd.IsList():
			if fd.Message() != nil {
				for i := 0; i < v.List().Len(); i++ {
					out = append(out, unknownFields(v.List().Get(i).Message(), fmt.Sprintf("%s[%d]", p, i))...)
				}
			}
		case fd.Message() != nil:
			out = append(out, unknownFields(v.Message(), p)...)
		}
		return true
	})
	return out
}

// diffByName compares two messages of possibly different generated types
// field by field, matching fields by name, not number. Byte identity alone
// would not notice two fields whose numbers are swapped; this does.
func diffByName(a, b protoreflect.Message, path string) []string {
	var out []string
	ad, bd := a.Descriptor(), b.Descriptor()
	if ad.FullName() != bd.FullName() {
		return []string{fmt.Sprintf("%s: message %s vs %s", path, ad.FullName(), bd.FullName())}
	}
	for i := 0; i < ad.Fields().Len(); i++ {
		af := ad.Fields().Get(i)
		bf := bd.Fields().ByName(af.Name())
		p := path + "." + string(af.Name())
		if bf == nil {
			out = append(out, p+": missing on the receiving side")
			continue
		}
		if a.Has(af) != b.Has(bf) {
			out = append(out, fmt.Sprintf("%s: set %v vs %v", p, a.Has(af), b.Has(bf)))
			continue
		}
		if !a.Has(af) {
			continue
		}
		out = append(out, diffValue(af, a.Get(af), b.Get(bf), p)...)
	}
	return out
}

func diffValue(fd protoreflect.FieldDescriptor, a, b protoreflect.Value, path string) []string {
	switch {
	case fd.IsMap():
		var out []string
		am, bm := a.Map(), b.Map()
		if am.Len() != bm.Len() {
			return []string{fmt.Sprintf("%s: %d entries vs %d", path, am.Len(), bm.Len())}
		}
		am.Range(func(k protoreflect.MapKey, av protoreflect.Value) bool {
			p := fmt.Sprintf("%s[%v]", path, k)
			if !bm.Has(k) {
				out = append(out, p+": missing")
				return true
			}
			out = append(out, diffSingle(fd.MapValue(), av, bm.Get(k), p)...)
			return true
		})
		return out
	case fd.IsList():
		al, bl := a.List(), b.List()
		if al.Len() != bl.Len() {
			return []string{fmt.Sprintf("%s: %d elements vs %d", path, al.Len(), bl.Len())}
		}
		var out []string
		for i := 0; i < al.Len(); i++ {
			out = append(out, diffSingle(fd, al.Get(i), bl.Get(i), fmt.Sprintf("%s[%d]", path, i))...)
		}
		return out
	default:
		return diffSingle(fd, a, b, path)
	}
}

func diffSingle(fd protoreflect.FieldDescriptor, a, b protoreflect.Value, path string) []string {
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return diffByName(a.Message(), b.Message(), path)
	case protoreflect.EnumKind:
		if a.Enum() != b.Enum() {
			return []string{fmt.Sprintf("%s: enum %d vs %d", path, a.Enum(), b.Enum())}
		}
	case protoreflect.BytesKind:
		if !bytes.Equal(a.Bytes(), b.Bytes()) {
			return []string{fmt.Sprintf("%s: %x vs %x", path, a.Bytes(), b.Bytes())}
		}
	default:
		if a.Interface() != b.Interface() {
			return []string{fmt.Sprintf("%s: %v vs %v", path, a.Interface(), b.Interface())}
		}
	}
	return nil
}

// coverage records which fields and enum values a set of messages exercise.
type coverage struct {
	fields map[protoreflect.FullName]bool
	enums  map[protoreflect.FullName]map[protoreflect.EnumNumber]bool
}

func newCoverage() *coverage {
	return &coverage{fields: map[protoreflect.FullName]bool{}, enums: map[protoreflect.FullName]map[protoreflect.EnumNumber]bool{}}
}

func (c *coverage) enum(ed protoreflect.EnumDescriptor, n protoreflect.EnumNumber) {
	if c.enums[ed.FullName()] == nil {
		c.enums[ed.FullName()] = map[protoreflect.EnumNumber]bool{}
	}
	c.enums[ed.FullName()][n] = true
}

func (c *coverage) add(m protoreflect.Message) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		c.fields[fd.FullName()] = true
		one := func(fd protoreflect.FieldDescriptor, v protoreflect.Value) {
			switch fd.Kind() {
			case protoreflect.MessageKind:
				c.add(v.Message())
			case protoreflect.EnumKind:
				c.enum(fd.Enum(), v.Enum())
			}
		}
		switch {
		case fd.IsMap():
			v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
				one(fd.MapValue(), mv)
				return true
			})
		case fd.IsList():
			for i := 0; i < v.List().Len(); i++ {
				one(fd, v.List().Get(i))
			}
		default:
			one(fd, v)
		}
		return true
	})
}

// missing lists what the recorded messages never exercised, for every
// message and enum declared in the given file. A singular proto3 enum at
// zero is never on the wire, so zero values are not required (the
// fixtures still put UNSPECIFIED_SCOPE in the repeated routing_preference).
func (c *coverage) missing(fd protoreflect.FileDescriptor) []string {
	var out []string
	var msgs func(protoreflect.MessageDescriptors)
	enums := func(eds protoreflect.EnumDescriptors) {
		for i := 0; i < eds.Len(); i++ {
			ed := eds.Get(i)
			for j := 0; j < ed.Values().Len(); j++ {
				ev := ed.Values().Get(j)
				if ev.Number() != 0 && !c.enums[ed.FullName()][ev.Number()] {
					out = append(out, "enum value "+string(ev.FullName()))
				}
			}
		}
	}
	msgs = func(mds protoreflect.MessageDescriptors) {
		for i := 0; i < mds.Len(); i++ {
			md := mds.Get(i)
			if md.IsMapEntry() {
				continue
			}
			for j := 0; j < md.Fields().Len(); j++ {
				if f := md.Fields().Get(j); !c.fields[f.FullName()] {
					out = append(out, "field "+string(f.FullName()))
				}
			}
			enums(md.Enums())
			msgs(md.Messages())
		}
	}
	enums(fd.Enums())
	msgs(fd.Messages())
	sort.Strings(out)
	return out
}

func TestWireFixturesCoverEverything(t *testing.T) {
	c := newCoverage()
	for _, a := range istioAddressFixtures(t) {
		c.add(a.ProtoReflect())
	}
	for _, a := range istioAuthorizationFixtures(t) {
		c.add(a.ProtoReflect())
	}
	for _, f := range []protoreflect.FileDescriptor{workloadapi.File_workloadapi_workload_proto, security.File_workloadapi_security_authorization_proto} {
		if m := c.missing(f); len(m) > 0 {
			t.Errorf("the fixtures do not exercise everything in %s (add it to a fixture):\n  %s", f.Path(), strings.Join(m, "\n  "))
		}
	}
}

func TestWireIstioToPeerd(t *testing.T) {
	for i, a := range istioAddressFixtures(t) {
		roundTrip(t, fmt.Sprintf("address fixture %d", i), a, &workloadpb.Address{})
	}
	for i, a := range istioAuthorizationFixtures(t) {
		roundTrip(t, fmt.Sprintf("authorization fixture %d", i), a, &securitypb.Authorization{})
	}
}

// TestWirePeerdToIstio fills peerd's messages (every field, each variant
// taking another oneof branch and enum value), sends them to Istio's types
// and requires exactly what the same filler builds with Istio's types.
func TestWirePeerdToIstio(t *testing.T) {
	cases := []struct {
		name        string
		peerd, want func() proto.Message
		file        protoreflect.FileDescriptor
	}{
		{"Address", func() proto.Message { return &workloadpb.Address{} }, func() proto.Message { return &workloadapi.Address{} }, workloadapi.File_workloadapi_workload_proto},
		{"Authorization", func() proto.Message { return &securitypb.Authorization{} }, func() proto.Message { return &security.Authorization{} }, security.File_workloadapi_security_authorization_proto},
	}
	// Enough variants for every oneof branch and, within each branch, for
	// the largest enum (LoadBalancing.Scope: 7 values); see fill.
	const variants = 16
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newCoverage()
			for v := 0; v < variants; v++ {
				src := tc.peerd()
				fill(t, src.ProtoReflect(), v, 0)
				want := tc.want()
				fill(t, want.ProtoReflect(), v, 0)
				got := tc.want()
				roundTrip(t, fmt.Sprintf("%s variant %d", tc.name, v), src, got)
				if d := cmp.Diff(want, got, protocmp.Transform()); d != "" {
					t.Errorf("%s variant %d: Istio decodes peerd's bytes differently from the same values set on Istio's type (-want +got):\n%s", tc.name, v, d)
				}
				c.add(got.ProtoReflect())
			}
			// The filler must itself reach everything, or this test would
			// prove less than it claims. Authorization's file declares no
			// workload messages of its own, so only its own file is checked.
			if m := c.missing(tc.file); len(m) > 0 {
				t.Errorf("the filler did not exercise:\n  %s", strings.Join(m, "\n  "))
			}
		})
	}
}

// fill sets every field of m from values derived from the field's full name
// and the variant: the same (name, variant) gives the same value on both
// generated types, so a message filled on one type and decoded into the
// other must equal the same message filled directly on the other. In each
// oneof, variant v picks branch v mod n. Enums take value (v/2 + h) mod n,
// h derived from the field name: v/2 rather than v, so that the messages
// reached only through one oneof branch (a Service is always an odd
// variant) still see every value.
func fill(t *testing.T, m protoreflect.Message, v, depth int) {
	t.Helper()
	if depth > 8 {
		t.Fatalf("fill: %s nests deeper than expected", m.Descriptor().FullName())
	}
	md := m.Descriptor()
	if md.FullName() == "google.protobuf.Any" {
		a := anyString(t, fmt.Sprintf("any-%d", v))
		m.Set(md.Fields().ByName("type_url"), protoreflect.ValueOfString(a.TypeUrl))
		m.Set(md.Fields().ByName("value"), protoreflect.ValueOfBytes(a.Value))
		return
	}
	for i := 0; i < md.Fields().Len(); i++ {
		fd := md.Fields().Get(i)
		if od := fd.ContainingOneof(); od != nil && !od.IsSynthetic() {
			if od.Fields().Get(v%od.Fields().Len()) != fd {
				continue
			}
		}
		switch {
		case fd.IsMap():
			mp := m.Mutable(fd).Map()
			for k := 0; k < 2; k++ {
				key := protoreflect.ValueOfString(fmt.Sprintf("%s-key-%d-%d", fd.FullName(), v, k)).MapKey()
				if fd.MapValue().Message() != nil {
					val := mp.NewValue()
					fill(t, val.Message(), v+k, depth+1)
					mp.Set(key, val)
				} else {
					mp.Set(key, scalar(fd.MapValue(), v+k))
				}
			}
		case fd.IsList():
			l := m.Mutable(fd).List()
			for k := 0; k < 2; k++ {
				if fd.Message() != nil {
					e := l.NewElement()
					fill(t, e.Message(), v+k, depth+1)
					l.Append(e)
				} else {
					l.Append(scalar(fd, v+k))
				}
			}
		case fd.Message() != nil:
			fill(t, m.Mutable(fd).Message(), v, depth+1)
		default:
			m.Set(fd, scalar(fd, v))
		}
	}
}

func scalar(fd protoreflect.FieldDescriptor, v int) protoreflect.Value {
	h := fnv.New32a()
	h.Write([]byte(fd.FullName()))
	n := h.Sum32()%10000 + uint32(v) + 1
	switch fd.Kind() {
	case protoreflect.StringKind:
		return protoreflect.ValueOfString(fmt.Sprintf("%s-%d", fd.Name(), n))
	case protoreflect.BytesKind:
		return protoreflect.ValueOfBytes([]byte(fmt.Sprintf("%s-%d", fd.Name(), n)))
	case protoreflect.BoolKind:
		return protoreflect.ValueOfBool(true)
	case protoreflect.EnumKind:
		vals := fd.Enum().Values()
		return protoreflect.ValueOfEnum(vals.Get((v/2 + int(h.Sum32()%97)) % vals.Len()).Number())
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return protoreflect.ValueOfUint32(n)
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return protoreflect.ValueOfUint64(uint64(n))
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return protoreflect.ValueOfInt32(int32(n))
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return protoreflect.ValueOfInt64(int64(n))
	case protoreflect.FloatKind:
		return protoreflect.ValueOfFloat32(float32(n))
	case protoreflect.DoubleKind:
		return protoreflect.ValueOfFloat64(float64(n))
	}
	panic(fmt.Sprintf("fill: unhandled kind %v of %s", fd.Kind(), fd.FullName()))
}

// TestWireCheckersAreNotBlind feeds the checkers that the round trips rely
// on what they exist to catch: a field number the receiver does not know,
// and two fields whose values trade places (as swapped numbers would make
// them).
func TestWireCheckersAreNotBlind(t *testing.T) {
	b, err := deterministic.Marshal(&workloadapi.Workload{Uid: "u"})
	if err != nil {
		t.Fatal(err)
	}
	b = protowire.AppendTag(b, 99, protowire.VarintType)
	b = protowire.AppendVarint(b, 1)
	w := &workloadpb.Workload{}
	if err := proto.Unmarshal(b, w); err != nil {
		t.Fatal(err)
	}
	if u := unknownFields(w.ProtoReflect(), "workload"); len(u) != 1 {
		t.Errorf("an unknown field 99 gave %v, want one report", u)
	}

	istio := &workloadapi.Workload{Name: "echo", Namespace: "apps"}
	swapped := &workloadpb.Workload{Name: "apps", Namespace: "echo"}
	if d := diffByName(istio.ProtoReflect(), swapped.ProtoReflect(), "workload"); len(d) != 2 {
		t.Errorf("swapped name/namespace gave %v, want two differences", d)
	}
}
