package certs

import (
	"context"
	"crypto/x509"
	"fmt"
	"net/url"
	"strings"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// Identity is an Istio workload identity: the SPIFFE ID
// spiffe://<TrustDomain>/ns/<Namespace>/sa/<ServiceAccount>.
type Identity struct {
	TrustDomain    string
	Namespace      string
	ServiceAccount string
}

// String is the SPIFFE ID.
func (id Identity) String() string {
	return "spiffe://" + id.TrustDomain + "/ns/" + id.Namespace + "/sa/" + id.ServiceAccount
}

// URI is the SPIFFE ID as the URI SAN of a certificate.
func (id Identity) URI() *url.URL {
	return &url.URL{Scheme: "spiffe", Host: id.TrustDomain, Path: "/ns/" + id.Namespace + "/sa/" + id.ServiceAccount}
}

// Validate checks what ParseSPIFFE checks, so that a minted certificate
// always carries an ID its peers can parse back.
func (id Identity) Validate() error {
	_, err := ParseSPIFFE(id.String())
	return err
}

// ParseSPIFFE parses an Istio SPIFFE ID. The trust domain follows the
// SPIFFE rules (lower-case letters, digits, '.', '-', '_'); the path must be
// exactly /ns/<namespace>/sa/<service-account>, both non-empty. Istio writes
// no other shape, and accepting more would let two spellings name one
// identity.
func ParseSPIFFE(uri string) (Identity, error) {
	fail := func(format string, args ...any) (Identity, error) {
		return Identity{}, fmt.Errorf("spiffe id %q: %s", truncate(uri, 256), fmt.Sprintf(format, args...))
	}
	rest, ok := strings.CutPrefix(uri, "spiffe://")
	if !ok {
		return fail("scheme: want spiffe://")
	}
	td, path, _ := strings.Cut(rest, "/")
	if td == "" {
		return fail("trust domain: empty")
	}
	for _, r := range td {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_') {
			return fail("trust domain %q: character %q (want lower-case letters, digits, '.', '-', '_')", td, r)
		}
	}
	parts := strings.Split(path, "/")
	if len(parts) != 4 || parts[0] != "ns" || parts[2] != "sa" {
		return fail("path %q: want /ns/<namespace>/sa/<service-account>", "/"+path)
	}
	for _, f := range []struct{ field, value string }{{"namespace", parts[1]}, {"service account", parts[3]}} {
		if f.value == "" {
			return fail("%s: empty", f.field)
		}
		if strings.ContainsAny(f.value, "?#%") {
			return fail("%s %q: contains '?', '#' or '%%'", f.field, f.value)
		}
	}
	return Identity{TrustDomain: td, Namespace: parts[1], ServiceAccount: parts[3]}, nil
}

// CertificateIdentity returns the SPIFFE ID of a certificate: it must carry
// exactly one URI SAN (as X.509-SVIDs do), and that URI must parse.
func CertificateIdentity(cert *x509.Certificate) (Identity, error) {
	switch len(cert.URIs) {
	case 0:
		return Identity{}, fmt.Errorf("no SPIFFE ID (no URI SAN)")
	case 1:
		return ParseSPIFFE(cert.URIs[0].String())
	default:
		return Identity{}, fmt.Errorf("%d URI SANs, want exactly one SPIFFE ID", len(cert.URIs))
	}
}

// PeerIdentity returns the SPIFFE ID of the client of a gRPC call served
// over TLS, read from the certificate chain that the handshake verified
// (against the roots current at that moment). It is false for a plaintext
// connection, a client without a certificate, and a certificate without a
// single valid SPIFFE ID. Only verified chains count: a certificate that
// was merely presented never names anyone.
func PeerIdentity(ctx context.Context) (Identity, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Identity{}, false
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return Identity{}, false
	}
	id, err := CertificateIdentity(info.State.VerifiedChains[0][0])
	if err != nil {
		return Identity{}, false
	}
	return id, true
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
