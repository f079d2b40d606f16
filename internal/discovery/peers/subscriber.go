package peers

import (
	"context"
	"errors"
	"strings"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/peerd-mesh/peerd/internal/federation"
)

// Subscriber is one link's delta-xDS client: it dials the link, subscribes
// (wildcard) to federation.TypeURL, and reports through the handlers of its
// SubscriberConfig until ctx is done. It reconnects by itself (with
// backoff), resuming with initial_resource_versions: Resume on its first
// connect, what it holds afterwards. Run returns when ctx is done; an
// earlier return is counted as a failure and the manager starts a new
// subscriber.
type Subscriber interface {
	Run(ctx context.Context) error
}

// SubscriberConfig is what the Manager hands a new Subscriber.
type SubscriberConfig struct {
	Link federation.Link
	// Credentials for the dial; nil when Options.Credentials is nil.
	Credentials credentials.TransportCredentials
	// TypeURL is federation.TypeURL.
	TypeURL string
	// Resume are the resources the link holds when the subscriber starts
	// (restored from the store, or kept across a restart of the
	// subscriber), with their versions. The subscriber starts from them and
	// lists them in initial_resource_versions on its first connect, so the
	// peer names the ones that went away in removed_resources; without them
	// a service removed while this peerd was not connected would be kept.
	Resume []*discoveryv3.Resource
	// Validate checks one received resource; an error NACKs it (its
	// previous version, if any, stays in force on both sides). It is safe to
	// call from any goroutine.
	Validate func(typeURL string, r *discoveryv3.Resource) error
	// OnUpdate is called with each response's accepted resources, in order,
	// from one goroutine.
	OnUpdate func(Update)
	// OnState is called when the connection comes up or fails, from the
	// same goroutine as OnUpdate.
	OnState func(ConnState)
}

// Update is one response's effect: the resources that passed Validate, the
// names the peer removed, and whether the subscription is now synced (the
// first response after a connect: the peer's full set, relative to what
// initial_resource_versions said the subscriber held).
type Update struct {
	TypeURL string
	Upserts []*discoveryv3.Resource
	Removed []string
	Synced  bool
}

// ConnState is a subscriber's connection state.
type ConnState struct {
	// Connected: the stream is up (the handshake passed and the peer
	// answered).
	Connected bool
	// Failures counts this subscriber's failed connection attempts and
	// broken streams since it started (cumulative, never reset).
	Failures int
	// Err is why the last attempt failed or the stream ended (nil while
	// connected). Wrap an error with Rejected to classify it precisely;
	// otherwise the manager classifies it from its gRPC status.
	Err error
}

// Rejection reasons (the reason label of peerd_peer_rejections_total, and
// LinkStatus.Reason of a rejected link).
const (
	// ReasonTLS: the TLS handshake failed (the peer's chain does not lead to
	// our root, or it refused ours).
	ReasonTLS = "tls"
	// ReasonTrustDomain: the peer's certificate is for another trust domain
	// than the link Gateway's gateway.istio.io/trust-domain names.
	ReasonTrustDomain = "trust_domain"
	// ReasonRefused: the peer answered but refused to serve us
	// (PermissionDenied, Unauthenticated).
	ReasonRefused = "refused"
	// ReasonInvalidResource: a resource failed federation.Validate and was
	// NACKed (the link stays up; the previous version is kept).
	ReasonInvalidResource = "invalid_resource"
)

// RejectionError marks a connection error as a rejection with a reason.
type RejectionError struct {
	Reason string
	Err    error
}

func (e *RejectionError) Error() string { return e.Reason + ": " + e.Err.Error() }
func (e *RejectionError) Unwrap() error { return e.Err }

// Rejected wraps err as a rejection for reason (one of the Reason
// constants).
func Rejected(reason string, err error) error { return &RejectionError{Reason: reason, Err: err} }

// lostDuringHandshake: the handshake did not fail on what either side
// presented but because the connection went away.
func lostDuringHandshake(msg string) bool {
	if !strings.Contains(msg, "authentication handshake failed") {
		return false
	}
	for _, s := range []string{": EOF", "connection reset by peer", "broken pipe", "i/o timeout", "use of closed network connection"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// classify says whether a connection error is a rejection (retrying will not
// help until someone changes certificates or configuration) and why.
// gRPC flattens handshake errors into a status message, so beyond an
// explicit RejectionError the message is what there is to read.
func classify(err error) (reason string, rejected bool) {
	if err == nil {
		return "", false
	}
	if re, ok := errors.AsType[*RejectionError](err); ok {
		return re.Reason, true
	}
	msg := err.Error()
	switch {
	case strings.Contains(msg, "trust domain"):
		return ReasonTrustDomain, true
	case lostDuringHandshake(msg):
		// A TLS-passthrough gateway whose peerd is down accepts the
		// connection and closes it (as Envoy does): the handshake ends in
		// EOF or a reset. That is a lost peer, not a refused one.
		return "", false
	case strings.Contains(msg, "x509:"),
		strings.Contains(msg, "peer certificate"),
		strings.Contains(msg, "tls: "):
		return ReasonTLS, true
	}
	if s, ok := status.FromError(err); ok {
		switch s.Code() {
		case codes.PermissionDenied, codes.Unauthenticated:
			return ReasonRefused, true
		}
	}
	return "", false
}
