// Package explain answers "where would a ztunnel send this traffic, and
// why": given the istio.workload Address resources a ztunnel holds, a
// service and the client that sends the traffic, it computes what
// ztunnel's find_upstream and load_balance (src/state.rs) would do, endpoint
// by endpoint. `peerd explain` prints it for a running peerd; the ztunnel-like
// test client uses it so end-to-end tests assert where a client would send
// traffic. One implementation, so the tool and the tests cannot disagree.
//
// The rules (../shared/ztunnel-client.md, "How the resources are used"):
//   - Candidates are the service's endpoints (workloads whose services map
//     names it) that are HEALTHY, or any health when the service's health
//     policy is ALLOW_ALL. An endpoint with no address is usable only from
//     another network, through its network_gateway.
//   - STRICT and FAILOVER rank candidates by routing_preference: +1 per
//     consecutive scope whose value equals the client's, stopping at the
//     first mismatch; with NETWORK first, a same-network endpoint gets a
//     bonus of len-1 and a remote one skips NETWORK. STRICT drops what does
//     not match every scope. Only the highest rank is kept. Without
//     load_balancing, or with mode UNSPECIFIED_MODE, every candidate is
//     equal; PASSTHROUGH picks nothing (the original destination is used).
//   - The pick is weighted random by capacity (unset = 1, 0 never picked).
//
// What it must never do: I/O, logging, randomness, or mutate its inputs (the
// maps may be a live client's state, read under that client's lock). It
// reports probabilities; it never rolls the dice.
//
// Concurrency: every function is pure; State is read-only here.
//
// Invariants: the output is deterministic (endpoints sorted: chosen first,
// then by probability, rank and uid); where ztunnel's own order would decide
// (several services sharing a VIP or hostname with no better match), the
// first by namespace/hostname wins and the Result says how it was resolved.
package explain
