package peers

import (
	"context"
	"errors"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	"github.com/peerd-mesh/peerd/internal/xds"
)

// ClientOptions configure the subscribers XDSClients makes. Every field may
// be left zero except that credentials are required unless Plaintext.
type ClientOptions struct {
	// Node is sent on each initial request (say, id "peerd~<cluster>").
	Node *corev3.Node
	// Backoff and Keepalive as internal/xds takes them (zero: its defaults).
	Backoff   xds.Backoff
	Keepalive keepalive.ClientParameters
	// Plaintext dials links without TLS when the Manager gives no
	// credentials (tests, a local demo's --plaintext-listen). Without it a
	// link without credentials fails instead of going out in the clear.
	Plaintext bool
	Logger    *zap.Logger
}

// maxPeerMessage bounds one message from a peer (ztunnel's own limit, the
// client's default, is 200 MiB).
const maxPeerMessage = 64 << 20

// errNoCredentials ends a subscriber that would otherwise dial a peer in
// plaintext by mistake.
var errNoCredentials = errors.New("no transport credentials for the link (Options.Credentials is nil and ClientOptions.Plaintext is off)")

// XDSClients returns an Options.NewSubscriber that runs internal/xds's
// Client for each link: wildcard on federation.TypeURL, resuming from what
// the link holds, with o's backoff and keepalive.
func XDSClients(o ClientOptions) func(SubscriberConfig) Subscriber {
	log := o.Logger
	if log == nil {
		log = zap.NewNop()
	}
	return func(cfg SubscriberConfig) Subscriber {
		creds := cfg.Credentials
		if creds == nil {
			if !o.Plaintext {
				return subscriberError{errNoCredentials}
			}
			creds = insecure.NewCredentials()
		}
		return xds.NewClient(xds.ClientOptions{
			Dial:      xds.DialTarget(cfg.Link.Dial(), grpc.WithTransportCredentials(creds)),
			TypeURLs:  []string{cfg.TypeURL},
			Node:      o.Node,
			Resume:    map[string][]*discoveryv3.Resource{cfg.TypeURL: cfg.Resume},
			Validate:  cfg.Validate,
			Backoff:   o.Backoff,
			Keepalive: o.Keepalive,
			// A peer's whole export at the cap (DefaultMaxServicesPerLink,
			// a few hundred bytes each) is far below this; more is hostile.
			MaxRecvMsgSize: maxPeerMessage,
			Logger:         log.With(zap.String("cluster", cfg.Link.Cluster), zap.String("gateway", cfg.Link.Gateway)),
			OnUpdate: func(u xds.Update) {
				cfg.OnUpdate(Update{TypeURL: u.TypeURL, Upserts: u.Upserts, Removed: u.Removed, Synced: u.Synced})
			},
			OnState: func(s xds.ClientStatus) {
				cfg.OnState(ConnState{Connected: s.Connected, Failures: s.Failures, Err: s.LastError})
			},
		})
	}
}

// subscriberError is a subscriber that cannot run: its Run fails at once,
// which the Manager counts, shows as the link's last error and retries.
type subscriberError struct{ err error }

func (s subscriberError) Run(context.Context) error { return s.err }
