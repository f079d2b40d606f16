// Package xds is peerd's delta-xDS server: it serves ztunnel (and peerd's
// peers) the resources of one Cache per type URL over envoy's aggregated
// discovery service, delta variant only. It also holds peerd's one
// delta-xDS Client, used by the peer links, the CLI and the tests.
//
// What it owns: the resources' wire encodings and content-hash versions,
// each client's subscription (wildcard, explicit names, on-demand alias
// keys), nonces, ACK/NACK handling, and the fan-out of changes.
//
// What it must never do: decide what the resources are (internal/ambient
// does) or who may have them (ServerOptions.Authorize does, asked once per
// stream and type; a refusal closes the stream with PermissionDenied), read Kubernetes or files (internal/discovery does), delay a push on
// a timer (changes are coalesced only when they are already queued), or
// resend an unchanged version because a client NACKed it.
//
// Concurrency contract:
//   - Cache methods are safe for concurrent use. Replace marshals outside
//     the cache lock, publishes a batch as one revision under it, and wakes
//     watchers with a non-blocking send on a capacity-1 channel, so a slow
//     stream never blocks Replace or another stream.
//   - One goroutine owns each stream's state (subscriptions, cursors,
//     nonces) and does all its sends; a second goroutine only receives
//     requests into a queue, so the server never stops reading a client
//     that is itself blocked writing to us. The queue is bounded (Limits):
//     a client that floods requests without reading has its stream closed
//     with a status naming the limit, as does one that subscribes too many
//     names, sends overlong names, or replies more often than it was sent
//     responses. Other streams are unaffected.
//   - Cache.Update takes upserts and deletes; Replace (a full set) is Update
//     with the deletes worked out.
//
// The Client subscribes to whole types (wildcard) over one stream per
// connection, and reconnects with exponential backoff and full jitter (reset
// after a connection that synced) until its Run context ends. It owns what
// it received, with versions, across reconnects: each new stream lists it
// in initial_resource_versions, so the server sends only what changed and
// removes what went away meanwhile. Every response gets one reply: an ACK,
// or a NACK whose error_detail lists "<name>: <error>" for each rejected
// resource, whose previous version is kept while the valid ones of the same
// response are applied (as ztunnel does). Keepalive pings detect a path that
// swallows traffic without closing it. Client concurrency: Run's goroutine
// alone talks to the server, applies responses and calls the callbacks
// (with no lock held); it starts no goroutine of its own, and the
// connection is closed before Run returns. Status and Resources are safe
// from any goroutine, the callbacks included.
//
// Invariants:
//   - A resource is marshaled once per version (deterministic encoding);
//     its version is derived from those bytes only, and the same *anypb.Any
//     is shared read-only by every response that carries that version.
//   - A response is encoded once per (revision, cursor): every wildcard
//     stream that starts from the same cursor (and a new wildcard stream
//     that holds nothing) is sent the same bytes plus its own nonce, through
//     ServerCodec. A change that reaches N streams costs one encode and N
//     writes.
//   - An on-demand request for a resource that others are members of (a
//     Service: Resource.MemberOf of its workloads) is answered with the
//     resource and its members, as istiod's lookup answers a Service, and
//     the stream follows members that join later.
//   - Per-stream memory does not grow with the number of resources for a
//     wildcard subscription: a stream keeps a revision cursor into the
//     cache's ordered change log, and a wake costs O(changes since the
//     cursor). Only explicitly subscribed names are stored per stream.
//   - Every initial request for a type is answered, even with nothing, and
//     every on-demand key is answered by its own name: as the resource's
//     name, or listed in removed_resources (after the resource it resolved
//     to, when it was an alias).
package xds
