// Package kubeharness runs a real Kubernetes control plane for tests: etcd and
// kube-apiserver, built from the Go module proxy by hack/kube-tools.sh and
// started on loopback with free ports and temporary directories.
//
// It owns: starting and stopping those two processes, the credentials they
// need (a serving CA, a service-account key pair, an admin token), a
// kubeconfig file for the cluster, installing the Gateway API CRDs from the
// gateway-api module that go.mod pins, and applying manifest directories
// through the API the way a cluster would hold them.
//
// It must never: run a controller-manager, scheduler or kubelet (tests decide
// every object, so the harness creates what those controllers would: service
// accounts, pod status, EndpointSlices taken from the manifests), reach
// anything but loopback, or leave a process behind after the test ends.
//
// Concurrency: a Cluster is safe for concurrent use once Start returns; its
// clients are client-go's, which are themselves concurrency-safe. Start
// registers cleanup on the testing.TB, so a Cluster lives exactly as long as
// the test (or TestMain-scoped helper) that started it.
//
// Invariants: binaries are looked up in PEERD_KUBE_TOOLS (default
// $HOME/.cache/peerd/kube-tools); when they are missing, tests are skipped
// with the command that builds them, unless PEERD_KUBE_REQUIRED is set, in
// which case they fail, so CI cannot pass by skipping.
package kubeharness
