// Package certs owns peerd's certificate material: it generates a demo/test
// mesh PKI in Istio's "cacerts" layout (one root, one intermediate per
// cluster), loads and validates such a directory, and mints the short-lived
// serving certificate that peerd presents on its TLS listener.
//
// Layout (the files istiod reads from its cacerts secret):
//
//	DIR/root-cert.pem, DIR/root-key.pem          the shared root (top level only)
//	DIR/<cluster>/root-cert.pem                  the same root, as trust anchor
//	DIR/<cluster>/ca-cert.pem                    the cluster's intermediate CA
//	DIR/<cluster>/ca-key.pem                     its private key (PKCS#8 PEM)
//	DIR/<cluster>/cert-chain.pem                 intermediate, then root
//
// What it must never do: overwrite existing key material unless the caller
// forces it; return a CA whose chain does not verify up to its own root; log,
// or keep any package-level state.
//
// Concurrency: a *CA is immutable after LoadCA and safe for concurrent use.
// The *tls.Config from ServerTLSConfig may be used by any number of
// listeners at once; its certificate cache is guarded by a mutex.
//
// Invariants: every minted leaf verifies against the root in root-cert.pem
// through the certificates in cert-chain.pem (the TLS chain we send is the
// leaf followed by that chain, so a client that trusts only the root can
// verify it); a leaf never outlives the intermediate that signed it.
package certs
