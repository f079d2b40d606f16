package serve

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/grpc/credentials"
	"k8s.io/client-go/kubernetes"

	"github.com/peerd-mesh/peerd/internal/certs"
	"github.com/peerd-mesh/peerd/internal/discovery"
	"github.com/peerd-mesh/peerd/internal/discovery/peers"
	"github.com/peerd-mesh/peerd/internal/federation"
)

// linksDir is the folder under --state-dir that holds each link's last
// known state.
const linksDir = "links"

// peerCredentials are a link's TLS credentials: peerd's own identity, the
// peer verified against the link's trust domain, and the SNI the peer's
// east-west gateway routes to peerd on (federation.PeerServerName; without
// it a link dialling the gateway by IP would send none).
func peerCredentials(opts Options, identity *certs.Credentials) func(federation.Link) credentials.TransportCredentials {
	return func(l federation.Link) credentials.TransportCredentials {
		tlsCreds := credentials.NewTLS(identity.PeerClientTLS(l.PeerTrustDomain(), opts.SkipValidateTrustDomain))
		return serverNameCreds{TransportCredentials: tlsCreds, name: federation.PeerServerName(opts.SystemNamespace)}
	}
}

// serverNameCreds hand the handshake a fixed server name in place of the
// dialled authority: gRPC's TLS credentials set the SNI from the authority
// whatever the config says.
type serverNameCreds struct {
	credentials.TransportCredentials
	name string
}

func (c serverNameCreds) ClientHandshake(ctx context.Context, _ string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return c.TransportCredentials.ClientHandshake(ctx, c.name, conn)
}

func (c serverNameCreds) Clone() credentials.TransportCredentials {
	return serverNameCreds{TransportCredentials: c.TransportCredentials.Clone(), name: c.name}
}

// newPeers makes the peer links' manager. Links dial with peerd's own
// identity (identity nil: no --listen, so no certificate; links then fail
// with a clear error rather than going out in the clear).
func newPeers(opts Options, store peers.Store, index *discovery.Index, identity *certs.Credentials, log *zap.Logger, reg prometheus.Registerer) (*peers.Manager, error) {
	var creds func(federation.Link) credentials.TransportCredentials
	if identity != nil {
		creds = peerCredentials(opts, identity)
	}
	return peers.NewManager(peers.Options{
		LocalCluster: opts.ClusterName,
		Index:        index,
		NewSubscriber: peers.XDSClients(peers.ClientOptions{
			Node:   &corev3.Node{Id: "peerd~" + opts.ClusterName, Cluster: opts.ClusterName},
			Logger: log,
		}),
		Credentials:             creds,
		Store:                   store,
		StaleTTL:                opts.PeerStaleTTL,
		SyncTimeout:             opts.PeerSyncTimeout,
		SkipValidateTrustDomain: opts.SkipValidateTrustDomain,
		Logger:                  log,
		Registerer:              reg,
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

// stateStores returns where the VIPs and the links' last known states
// outlive a restart. In Kubernetes mode (kube set) that is the API, in the
// system namespace, so a rescheduled pod and every replica have them; in
// file mode it is --state-dir (created owner-only: it holds what peers
// exported), and nothing is kept without it (a nil peers.Store).
func stateStores(opts Options, kube kubernetes.Interface, log *zap.Logger) (vipStore, peers.Store, error) {
	if kube != nil {
		if opts.StateDir != "" {
			log.Warn("--state-dir is not used in Kubernetes mode: the VIPs and link states are kept in the API",
				zap.String("state_dir", opts.StateDir), zap.String("namespace", opts.SystemNamespace))
		}
		vips := vipKube{secrets: kube.CoreV1().Secrets(opts.SystemNamespace), namespace: opts.SystemNamespace}
		return vips, peers.NewKubeStore(kube, opts.SystemNamespace), nil
	}
	if opts.StateDir == "" {
		return vipDir{}, nil, nil
	}
	if err := os.MkdirAll(opts.StateDir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("--state-dir: %w", err)
	}
	links, err := peers.NewDirStore(filepath.Join(opts.StateDir, linksDir))
	if err != nil {
		return nil, nil, fmt.Errorf("--state-dir %s: %w", opts.StateDir, err)
	}
	return vipDir{dir: opts.StateDir}, links, nil
}
