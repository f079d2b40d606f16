// Package bench is the black-box benchmark of a manifest change (`make
// bench-e2e`): it writes a --config-dir of a synthetic cluster, starts a
// server binary on it (the real peerd, or the go-control-plane baseline in
// cmd/baseline), connects N ztunnel-like wildcard delta clients, rewrites
// manifest files the way a tool that replaces a file atomically does (write a
// temporary file, rename it over the old one) and measures, from the rename,
// when the first and the last client received the changed resources, with
// the server's CPU time, bytes allocated and RSS.
//
// The clients look only at resource names and versions and never decode the
// Any bodies, so that on a machine the clients share with the server they
// cost as little as a client can.
//
// What it must never do: import peerd's serving packages (internal/serve,
// internal/xds): the server under test is a separate process reached only
// through its listeners, its /metrics and /proc, so that peerd and the
// baseline are measured the same way. It reads /proc and so runs on Linux.
//
// Concurrency: every client stream has its own goroutine; a change is
// published to them through one atomic pointer, and each stream writes only
// its own slot of the change's results.
package bench
