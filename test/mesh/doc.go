// Package mesh runs a multi-cluster peerd mesh on loopback: one real peerd
// process per cluster, each with its own config dir (a copy of an examples
// directory plus the link Gateways), its own intermediate CA from `peerd
// certs` (one shared root), its own state dir and free loopback ports, and a
// TLS-passthrough TCP relay per cluster standing in for its east-west
// gateway. Links point at the target's relay, never at the target itself,
// so a test can blackhole or cut a path without touching either peerd.
//
// The end-to-end tests (test/e2e) and the demo (test/demo, `make demo`)
// share it. It talks to peerd only as an operator and a ztunnel do: flags,
// manifest files, HTTP monitoring endpoints, xDS.
//
// What it must never do: sleep for a fixed time (Poll waits for a condition
// with the caller's deadline), or leave a process behind: every peerd runs
// in its own process group with a parent-death signal, and Close stops them
// all.
//
// Concurrency: a Mesh is built by Start and then used from one goroutine
// (a test or the demo); a Cluster's Stop, Kill, Running and the relay's
// methods are safe from any goroutine.
package mesh
