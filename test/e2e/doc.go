// Package e2e holds peerd's end-to-end tests: they build the real peerd
// binary, start it on loopback, and talk to it as ztunnel does (through the
// ztunnel-like client in test/ztunnel), as grpcurl does, and as an operator
// does (HTTP monitoring endpoints). Nothing here reaches into peerd's
// internals; the binary is the unit under test. The peering tests (peering_*)
// run three linked peerds from examples/multicluster through test/mesh and
// ask the ztunnel-like client where traffic would go (internal/explain).
// The Kubernetes mesh test (kube_mesh_test.go) is the operator's path on
// three real API servers (test/kube): peerd in Kubernetes mode, the CLI
// (expose, link, unlink, check) through one merged kubeconfig, relays from
// test/mesh on their own loopback addresses as the east-west gateways.
package e2e
