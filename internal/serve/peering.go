package serve

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/grpc/credentials"

	"github.com/peerd-mesh/peerd/internal/ambient"
	"github.com/peerd-mesh/peerd/internal/certs"
	"github.com/peerd-mesh/peerd/internal/discovery"
	"github.com/peerd-mesh/peerd/internal/discovery/peers"
	"github.com/peerd-mesh/peerd/internal/federation"
)

// linksDir is the folder under --state-dir that holds each link's last
// known state.
const linksDir = "links"

// newPeers makes the peer links' manager. Links dial with peerd's own
// identity (identity nil: no --listen, so no certificate; links then fail
// with a clear error rather than going out in the clear).
func newPeers(opts Options, index *discovery.Index, identity *certs.Credentials, log *zap.Logger, reg prometheus.Registerer) (*peers.Manager, error) {
	var store peers.Store
	if opts.StateDir != "" {
		s, err := peers.NewDirStore(filepath.Join(opts.StateDir, linksDir))
		if err != nil {
			return nil, fmt.Errorf("--state-dir %s: %w", opts.StateDir, err)
		}
		store = s
	}
	var creds func(federation.Link) credentials.TransportCredentials
	if identity != nil {
		creds = func(l federation.Link) credentials.TransportCredentials {
			// A link Gateway without the trust-domain annotation describes
			// a cluster in the default trust domain, as ztunnel reads an
			// empty trust domain.
			td := l.TrustDomain
			if td == "" {
				td = ambient.DefaultTrustDomain
			}
			return credentials.NewTLS(identity.PeerClientTLS(td, opts.SkipValidateTrustDomain))
		}
	}
	return peers.NewManager(peers.Options{
		LocalCluster: opts.ClusterName,
		Index:        index,
		NewSubscriber: peers.XDSClients(peers.ClientOptions{
			Node:   &corev3.Node{Id: "peerd~" + opts.ClusterName, Cluster: opts.ClusterName},
			Logger: log,
		}),
		Credentials: creds,
		Store:       store,
		StaleTTL:    opts.PeerStaleTTL,
		SyncTimeout: opts.PeerSyncTimeout,
		Logger:      log,
		Registerer:  reg,
	})
}

// gateReady wraps an authorization hook: ztunnel's types are answered only
// once every link has synced or --peer-sync-timeout passed, so a restarted
// peerd never hands a ztunnel a mesh without its remote services while the
// peers are reachable. Federation is answered at once: two peerds that
// restart together would otherwise wait for each other until the timeout.
func gateReady(authorize func(context.Context, string) error, links *peers.Manager) func(context.Context, string) error {
	return func(ctx context.Context, typeURL string) error {
		if err := authorize(ctx, typeURL); err != nil {
			return err
		}
		if typeURL == federation.TypeURL {
			return nil
		}
		return links.WaitSynced(ctx)
	}
}

// peerReadiness is /readyz's account of the links.
func peerReadiness(links *peers.Manager) (bool, []string) {
	if links == nil {
		return true, nil
	}
	var lines []string
	ready := links.Synced()
	if ready {
		lines = append(lines, "peers: synced (or --peer-sync-timeout passed)")
	} else {
		lines = append(lines, "peers: waiting for links to sync")
	}
	for _, st := range links.Status() {
		line := fmt.Sprintf("peer %s (gateway %s, %s): %s", st.Cluster, st.Gateway, st.Address, st.State)
		if st.Reason != "" {
			line += " (" + st.Reason + ")"
		}
		if st.LastError != "" && st.State != peers.StateSynced {
			line += ": " + st.LastError
		}
		if st.GatewayError != "" {
			line += "; gateway: " + st.GatewayError
		}
		lines = append(lines, line)
	}
	return ready, lines
}

// prepareStateDir creates --state-dir (owner only: it holds what peers
// exported) and returns the VIP store in it.
func prepareStateDir(dir string) (vipStore, error) {
	if dir == "" {
		return vipStore{}, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return vipStore{}, fmt.Errorf("--state-dir: %w", err)
	}
	return vipStore{dir: dir}, nil
}
