// Package istio holds the tests that hold peerd against Istio itself.
//
// It is a separate Go module on purpose: it imports istio.io/istio (the
// generated workloadapi types and istiod's ambient index), a dependency far
// too heavy for peerd's own module. Nothing outside this directory may import
// it, and it exports nothing: it is tests only.
//
// What it proves:
//   - wire identity (wire_test.go, descriptor_test.go): peerd's
//     proto/istio/workload and proto/istio/security encode exactly as Istio's
//     pkg/workloadapi and pkg/workloadapi/security do, field for field, in both
//     directions, and their descriptors agree on every number, kind,
//     cardinality and type name;
//   - mapping identity (ambient_diff_test.go, istiod_test.go): for the same
//     Kubernetes manifests (examples/cluster1 and every directory under
//     testdata/), peerd's internal/ambient produces the same Address
//     resources as istiod's ambient index running on Istio's fake kube
//     client, and answers every on-demand key (resource name or
//     network/IP) with the same set of resources as istiod's Lookup: for a
//     Service, the Service and every workload that lists it. The only tolerated difference is the load_balancing of
//     Services whose traffic distribution is a value only peerd knows
//     (PreferNetwork, PreferRegion); each one is logged with its reason.
//
// Run: make test-istio, or from this directory
// GOLANG_PROTOBUF_REGISTRATION_CONFLICT=warn go test -count=1 ./...
// With PEERD_DIFF_DUMP=DIR set, the differential test also writes both
// sides' addresses as JSON under DIR/<case>/ for reading a difference.
//
// Every checker the tests rely on has a self-test that feeds it the kind of
// difference it exists to catch (a renumbered field, an unknown field, a
// changed Address field, a missing resource, a misfiled key).
//
// Both generated packages register the same protobuf full names, so the tests
// must run with GOLANG_PROTOBUF_REGISTRATION_CONFLICT=warn (the Makefile's
// test-istio target sets it). The tests never resolve the shared names
// through the global registry, so which copy wins the registration does not
// matter to them.
//
// Concurrency: each differential case starts its own fake client and ambient
// index and stops them when the case ends; cases do not share state.
package istio
