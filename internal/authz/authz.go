// Package authz decides which clients of peerd's xDS listener may
// subscribe to which type: the policy plugged into xds.ServerOptions.Authorize.
//
// The rule (issue 8, "Trust"): federation data goes only to clients whose
// certificate chains to our root (the TLS listener has verified that; see
// certs.ServerTLSConfig) and names a peerd identity, which is the system
// namespace and peerd's service account in any trust domain under that
// root; ztunnel's types go to everyone except peerd identities, which have
// no business with them. ztunnel presents no certificate: on the TLS
// listener in Kubernetes mode it proves itself with its service-account
// token (Policy.Tokens, tokens.go), reviewed by the API server. The
// plaintext listener is unauthenticated by choice (opt-in, for trusted
// networks), and file mode has no API server to review tokens with.
//
// What it must never do: trust a certificate the handshake did not verify
// (certs.PeerIdentity reads only verified chains), or put an unbounded
// value in a metric label (a refused client that is not a peerd identity is
// "anonymous" or "other").
//
// Concurrency: a Policy is a value; Authorize is safe for concurrent use.
package authz

import (
	"context"
	"fmt"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/peerd-mesh/peerd/internal/certs"
	"github.com/peerd-mesh/peerd/internal/federation"
	"github.com/peerd-mesh/peerd/internal/xds"
)

// Identity label values of refused clients that are not peerd identities.
const (
	Anonymous = "anonymous" // no verified client certificate
	Other     = "other"     // a verified certificate that names no peerd identity
	// PeerdIdentity labels refusals of verified peerd identities.
	PeerdIdentity = "peerd"
)

// Reasons of a refusal (the reason label of peerd_xds_requests_denied_total).
const (
	ReasonNoClientCertificate = "no_client_certificate"
	ReasonNotPeerd            = "not_peerd_identity"
	ReasonPeerIdentity        = "peer_identity"
)

// Policy says who may subscribe to what.
type Policy struct {
	// SystemNamespace and ServiceAccount make a peerd identity:
	// spiffe://<any trust domain>/ns/<SystemNamespace>/sa/<ServiceAccount>.
	SystemNamespace string
	ServiceAccount  string
	// Tokens, when set, must authenticate every client of ztunnel's types
	// on a TLS connection; nil serves them without a token. Connections
	// without TLS come from the plaintext listener, which is
	// unauthenticated by design.
	Tokens *TokenAuthenticator
}

// IsPeerd reports whether id is a peerd identity.
func (p Policy) IsPeerd(id certs.Identity) bool {
	return id.Namespace == p.SystemNamespace && id.ServiceAccount == p.ServiceAccount
}

// Authorize is the xds.ServerOptions.Authorize hook; refusals are
// *xds.Denial. The trust domain is not checked: every trust domain whose
// certificates chain to our root belongs to a cluster of the mesh.
func (p Policy) Authorize(ctx context.Context, typeURL string) error {
	id, verified := certs.PeerIdentity(ctx)
	peerd := verified && p.IsPeerd(id)
	switch {
	case typeURL == federation.TypeURL && peerd:
		return nil
	case typeURL == federation.TypeURL && !verified:
		return &xds.Denial{Identity: Anonymous, Reason: ReasonNoClientCertificate,
			Message: fmt.Sprintf("federation data is served only to peerd identities (spiffe://<trust-domain>/ns/%s/sa/%s) with a client certificate under the mesh root; this client presented none that verified",
				p.SystemNamespace, p.ServiceAccount)}
	case typeURL == federation.TypeURL:
		return &xds.Denial{Identity: Other, Reason: ReasonNotPeerd,
			Message: fmt.Sprintf("federation data is served only to peerd identities (spiffe://<trust-domain>/ns/%s/sa/%s); this client is %s",
				p.SystemNamespace, p.ServiceAccount, id)}
	case peerd:
		// The identity is in the message, not the label: any intermediate
		// under the root can mint trust domains, so as a label it would
		// bound nothing.
		return &xds.Denial{Identity: PeerdIdentity, Reason: ReasonPeerIdentity,
			Message: fmt.Sprintf("%s is a peer's identity: peers get federation data only, not ztunnel's types", id)}
	case p.Tokens == nil || !overTLS(ctx):
		return nil
	default:
		// Checked on each stream's first request of each type; the second
		// type of a stream, and every other stream with the same token,
		// is answered from the cache.
		_, err := p.Tokens.Authenticate(ctx)
		return err
	}
}

// overTLS reports whether the stream in ctx came over a TLS connection
// (the --listen listener) rather than the plaintext one.
func overTLS(ctx context.Context) bool {
	pr, ok := peer.FromContext(ctx)
	if !ok {
		return false
	}
	_, ok = pr.AuthInfo.(credentials.TLSInfo)
	return ok
}
