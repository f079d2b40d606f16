// Package ztunnel is a ztunnel-like delta-xDS client for tests and tools.
//
// It behaves as ztunnel-client.md (the project's notes on ztunnel) says
// ztunnel does: one delta ADS stream, one initial request per type carrying
// the node, an ACK (type_url + nonce) for every response, a NACK (error_detail
// code 0, "<name>: <error>" joined by "; ") when a resource is one ztunnel
// rejects, while the valid resources of that response are still applied;
// updates before removals; removals looked up as uid, then
// namespace/hostname; state kept across disconnects; reconnects with doubling
// backoff sending initial_resource_versions with an empty version for every
// held name; on-demand Address lookups that wake only on the exact key.
// Pick and WaitPick say where its traffic for a service would go, ranked by
// internal/explain from the state it holds (the ranking `peerd explain`
// prints), so tests assert "a client in cluster 1 sends to cluster 2".
//
// What it must never do: depend on peerd's server package (it must be able
// to talk to any delta-xDS server, including the go-control-plane baseline),
// or pretend to be more lenient than ztunnel.
//
// Concurrency: Run owns the connection; every other method is safe to call
// from any goroutine. State is guarded by one mutex; WaitFor predicates run
// under it.
package ztunnel
