// Package serve wires peerd's parts into the running control plane:
// sources → index → model → versioned caches → gRPC streams, plus the
// monitoring endpoints.
//
// It owns the process lifecycle (listeners, the model loop, shutdown) and
// nothing else: mapping rules live in internal/ambient, protocol behaviour in
// internal/xds and object sources in internal/discovery. Data flows one way;
// nothing here reaches back from a stream into a source.
//
// Concurrency: Run starts one model goroutine, which is the only writer of
// the xDS caches and the only reader of the index's changes, plus the gRPC
// and HTTP servers. On every index change signal the model goroutine takes
// the objects that changed (Index.TakeChanges), applies them to the
// incremental ambient.Model, and hands the cache only the resources they
// touched (Cache.Update). Signals that arrive while it is busy coalesce into
// one batch (no debounce timer). Every grpc.Server carries xds.ServerCodec,
// which lets streams share one encoding of a response.
//
// Shutdown (SIGTERM or a failure) is graceful: /readyz fails at once, the
// gRPC servers send GOAWAY and stop accepting, and every open stream is ended
// with status UNAVAILABLE at a random moment within --drain-duration (a
// stream interceptor owns a cancellable context per stream), so clients
// reconnect to other replicas spread over that window. Sources and the model
// keep running until the streams are gone; connections still open after the
// window and a short grace are closed hard.
//
// Monitoring: /metrics, /healthz and /readyz answer every client; /debug/
// (mesh dumps, pprof) answers only loopback peers unless --debug-allow-remote.
package serve
