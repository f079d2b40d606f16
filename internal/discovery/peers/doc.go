// Package peers is the discovery source for linked clusters: one link per
// istio-remote Gateway, each a delta-xDS subscription to the peer peerd's
// FederatedService resources, written into the discovery Index as
// *federation.ImportedService objects under the source "peer/<cluster>".
//
// What it owns: the set of links (Manager.Sync turns the local cluster's
// Gateways into links), each link's state (connecting, synced, stale,
// withdrawn, rejected) with its last message, last error, failures and
// rejections by reason, the stale TTL, the readiness of the peer sources
// (Synced, WaitSynced), the persisted last known state of every link
// (Store; DirStore in file mode, KubeStore's Secrets in Kubernetes mode),
// /debug/peers' data (Status) and the per-link metrics.
//
// What it must never do: trust the peer about who it is (the cluster of an
// imported service is the link Gateway's, never the peer's), derive
// anything from what it imports (internal/ambient does), accept a resource
// that fails federation.Validate (it is NACKed and its previous version
// stays), drop a problem silently (an unreadable Gateway, a rejected peer,
// an invalid resource or an unreadable saved state is logged once, counted
// and shown), or block the local sources' readiness (its problems are
// reported under the index source "peers", which holds no objects and is
// marked synced before its first error).
//
// Concurrency contract:
//   - Manager methods are safe for concurrent use. Manager.mu guards the set
//     of links; each link's mu guards its state and is taken after
//     Manager.mu, never before. The subscriber callbacks (Validate,
//     OnUpdate, OnState) take only their link's mu, write to the Index under
//     it (so an Unlink or a TTL withdrawal can never be overtaken by a late
//     upsert), and never call out while holding it. Each imported object
//     carries the time its version arrived (federation.ImportedService's
//     Received), so the model loop measures convergence from the object it
//     applies, with no side channel to race with.
//   - Each subscriber runs on a goroutine of its own and carries a
//     generation: a restarted, unlinked or stopped subscriber's callbacks
//     are ignored.
//   - One loop goroutine (Run) does all timed work and all Store I/O: TTL
//     withdrawals, the sync timeout, subscriber restarts, and saves. It
//     arms a timer for the nearest absolute deadline on the injected clock
//     and checks again after arming, and is woken (capacity-1 channel,
//     latest wins) when state changes; it never sleeps on a fixed delay.
//   - Run returns only after every subscriber goroutine ended and the final
//     save was written: nothing of the manager outlives it.
//
// Invariants:
//   - One link per cluster: a running link keeps its cluster; among new
//     Gateways naming the same cluster the first by namespace/name wins and
//     the others are reported. A Gateway naming the local cluster is
//     ignored.
//   - A bad edit of a linked Gateway keeps the link as it was (its last good
//     configuration) and reports the problem; a change restarts the link
//     only when the address it dials or the trust domain changes, and keeps
//     its services meanwhile.
//   - Unlink (the Gateway is gone) withdraws the link's services from the
//     index before Sync returns and deletes its saved state. Stop (Run's
//     end) withdraws nothing and saves every link, marking a link that was
//     up as lost at that moment.
//   - A lost link's services are withdrawn StaleTTL after the loss, also
//     across restarts: a restored link counts from the saved loss time (or
//     from this process's start when the previous one ended without a final
//     save), and its services are in the index as soon as the first Sync
//     links it, before any connection. A link that syncs again is no longer
//     lost. After a withdrawal the subscriber starts over without resuming,
//     so a peer that comes back with unchanged services sends them again.
//   - A subscriber resumes from exactly what the link holds
//     (initial_resource_versions), so removals that happened while the
//     link was down or this peerd was stopped arrive as removals.
//   - Each link's state is written at most once per SaveInterval; changes in
//     between are coalesced into the next write. DirStore writes a
//     temporary file and renames it, KubeStore replaces one Secret per
//     link: a crash leaves the old or the new state, never a mix. With a
//     Journal store (DirStore) a write of few
//     changes is a record of just those, appended to the link's journal,
//     so its cost follows what changed, not the link's size; a snapshot
//     replaces the journal once the changes are many or the journal would
//     outgrow it, and at Stop. Records name the snapshot they extend, so a
//     journal that outlived its snapshot is skipped, and a torn last record
//     is ignored (logged, counted).
//   - Synced latches: it becomes true once every current link has synced
//     at least once, or SyncTimeout passed since the first Sync (warned
//     once, naming the links still waiting), and stays true: a link added
//     or lost later never makes a serving peerd unready.
package peers
