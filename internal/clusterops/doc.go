// Package clusterops is the operator's side of peerd: what `peerd expose`,
// `peerd link`, `peerd unlink` and `peerd check` do to and read from the
// clusters, through the Kubernetes API only (never a port-forward, never
// peerd itself).
//
// It owns the east-west Gateway it exposes and the link Gateways (class
// istio-remote) it writes, and within those only the labels, annotations,
// addresses and listeners it sets: anything else on them (other labels,
// other listeners, status) is left as found. It never writes a Gateway of
// another class, and never deletes a Gateway that is not a link.
//
// Every operation that writes reads all its inputs first and writes
// nothing when one of them is missing: an error names the context, the
// object and what is missing, with the command that fixes it. Writes are
// idempotent: an object that already says what it should is not written,
// and each result says what changed.
//
// peerd check is split in two: Observe reads a cluster's objects
// (Snapshot), Evaluate turns the snapshots into a Report with no I/O and
// no clock of its own, so every verdict is table-tested from objects.
package clusterops
