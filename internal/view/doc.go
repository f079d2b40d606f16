// Package view is peerd's "way to look": it fetches what a ztunnel would
// receive from a running peerd (a wildcard delta-xDS subscription to
// istio.workload.Address and istio.security.Authorization) and renders it as
// tables or JSON, in the spirit of `istioctl ztunnel-config`.
//
// It owns two things: Fetch, which runs internal/xds's Client in one-shot
// mode (the first full response per type, ACKed, then it leaves); and the
// renderers (Table, JSON), which are pure functions of a Snapshot so that
// their output is table-tested byte for byte.
//
// What it must never do: import test/ or use any server-side code (it sees
// peerd only over the wire, as ztunnel does: from internal/xds it uses the
// Client alone); keep a stream open after the snapshot is complete; hold a
// response it could not decode (it NACKs the response and fails instead of
// showing a partial view as complete).
//
// Concurrency: Fetch runs on the caller's goroutine (the Client's RunOnce);
// nothing outlives the call. The renderers are pure and safe for
// concurrent use.
//
// Invariants: rendering is deterministic: rows are sorted (namespace, then
// name, then uid/hostname) and independent of response order; an empty
// column value is shown as "-".
package view
