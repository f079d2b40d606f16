// Package certs owns peerd's certificate material and its trust decisions:
// it generates a demo/test mesh PKI in Istio's "cacerts" layout (one root,
// one intermediate per cluster), loads, validates and follows such a
// directory (Authority), mints peerd's own short-lived identity certificate
// from it (Credentials), and says which certificates of the other end of a
// connection are trusted.
//
// Layout (the files istiod reads from its cacerts secret):
//
//	DIR/root-cert.pem, DIR/root-key.pem          the shared root (top level only)
//	DIR/<cluster>/root-cert.pem                  the same root, as trust anchor
//	DIR/<cluster>/ca-cert.pem                    the cluster's intermediate CA
//	DIR/<cluster>/ca-key.pem                     its private key (PKCS#8 PEM)
//	DIR/<cluster>/cert-chain.pem                 intermediate, then root
//
// # Trust model
//
// Every cluster of the mesh has its own intermediate under one shared root
// (root-cert.pem; during a root rotation a bundle of the old and the new
// root, all trusted). Trust is the chain, not the name: a certificate is
// trusted when it chains to a root in force, is valid now and carries the
// extended key usage of its role. Its identity is its one SPIFFE URI SAN,
// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>; host names
// are not checked between peers, because a peer is reached through the
// remote east-west gateway, which passes TLS through.
//
//   - peerd's identity is spiffe://<trust-domain>/ns/<system-ns>/sa/<peerd's
//     service account>. Its leaf (ServerAuth and ClientAuth, plus the DNS
//     and IP SANs ztunnel checks) is minted in process, lives DefaultLeafTTL,
//     is re-minted at two thirds of its life and at once after a CA reload.
//   - The TLS listener (ServerTLSConfig) serves ztunnel, which presents no
//     certificate, and peers, which do. A presented certificate that does
//     not chain to a root in force fails the handshake (logged, counted); a
//     verified one names the client for PeerIdentity. What each client may
//     subscribe to is decided per type URL by internal/authz.
//   - A peer link (PeerClientTLS) presents peerd's leaf and accepts the
//     server only when it chains to a root in force and its trust domain is
//     the one the link's gateway.istio.io/trust-domain annotation names
//     (unless --skip-validate-trust-domain).
//   - Any trust domain may chain to the shared root: a root is shared by the
//     clusters of one mesh, and each may have its own trust domain.
//
// Reloads: the Authority re-reads --ca-dir on file events (including a
// Kubernetes volume's ..data flip, read whole through the new target) and
// periodically. A valid new set of files replaces the CA in one step; the
// next handshake uses the new roots and a leaf from the new intermediate,
// and established connections keep the material they were made with. An
// invalid set is logged and counted, and the last good CA stays in force.
//
// What it must never do: overwrite existing key material unless the caller
// forces it; put in force a CA whose chain does not verify up to its own
// root; let a presented but unverified certificate name anyone; keep
// package-level state. CA and the generator never log; Authority and
// Credentials log through the logger they are given.
//
// Concurrency: a *CA is immutable after LoadCA and safe for concurrent use.
// An Authority swaps its CA atomically; Credentials and the *tls.Config
// values they return may be used by any number of listeners and links at
// once (the leaf cache is guarded by a mutex).
//
// Invariants: every minted leaf verifies against the root in root-cert.pem
// through the certificates in cert-chain.pem (the TLS chain we send is the
// leaf followed by that chain, so a client that trusts only the root can
// verify it); a leaf never outlives the intermediate that signed it.
package certs
