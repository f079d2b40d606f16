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
// the xDS caches, plus the gRPC and HTTP servers. The model goroutine
// recomputes on every index change signal; signals that arrive while it is
// busy coalesce into one recompute (no debounce timer).
package serve
