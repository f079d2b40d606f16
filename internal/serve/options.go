package serve

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/peerd-mesh/peerd/internal/authz"
	"github.com/peerd-mesh/peerd/internal/certs"
	"github.com/peerd-mesh/peerd/internal/discovery"
	"github.com/peerd-mesh/peerd/internal/discovery/peers"
	"github.com/peerd-mesh/peerd/internal/meshconfig"
)

// defaultDrainDuration spreads the reconnects of every ztunnel of a replica
// over 5s: the remaining replicas serve those full initial syncs at a fifth
// of the rate they would arrive at all at once, and the endpoints controller
// has time to take this pod out of the Service (readiness fails first), while
// the whole stop stays far inside Kubernetes' default 30s grace period.
const defaultDrainDuration = 5 * time.Second

// Options are the `peerd serve` settings. Field names follow the flags.
type Options struct {
	ClusterName     string
	Network         string
	TrustDomain     string
	SystemNamespace string
	DomainSuffix    string
	GlobalSuffix    string

	// Exactly one source: ConfigDir, or Kubernetes through Kubeconfig (empty
	// means in-cluster configuration).
	ConfigDir  string
	Kubeconfig string
	// IstiodAddress selects extension mode (docs/extension-mode.md): the
	// local cluster is istiod's ztunnel stream at this HOST:PORT
	// (plaintext), relayed with the linked mesh laid over it. Empty:
	// standalone mode, peerd maps local objects itself.
	IstiodAddress string
	// IstiodTLS dials IstiodAddress with TLS (istiod's 15012), trusting
	// IstiodCAFile (default: --ca-dir's root-cert.pem), checking the name
	// IstiodServerName (default istiod.<system namespace>.svc), and sends
	// the service-account token in IstiodTokenFile as ztunnel does
	// (authorization: Bearer, re-read on every connection: it rotates).
	IstiodTLS        bool
	IstiodCAFile     string
	IstiodServerName string
	IstiodTokenFile  string
	// MaxFileSize is the largest manifest file the file source reads.
	MaxFileSize int64

	CADir            string
	Listen           string
	PlaintextListen  string
	MonitoringListen string
	// DebugAllowRemote serves /debug/ (mesh dumps, pprof) to every client of
	// the monitoring listener, not only to loopback ones.
	DebugAllowRemote bool
	// ServerSANs are the DNS names on the TLS listener's certificate.
	ServerSANs       []string
	MaxConnectionAge time.Duration
	// MaxStreamsPerConnection caps concurrent streams per client connection.
	MaxStreamsPerConnection uint32
	// DrainDuration is how long, after SIGTERM, open streams are given
	// before peerd exits; their ends are spread over it.
	DrainDuration   time.Duration
	PeerStaleTTL    time.Duration
	PeerSyncTimeout time.Duration
	// StateDir keeps what must outlive a restart in file mode: the last
	// known state of every link and the VIPs of global services. Empty:
	// nothing is kept (a restart during a partition forgets the peer).
	// Kubernetes mode keeps both in Secrets of StateNamespace instead.
	StateDir string
	// StateNamespace is where Kubernetes mode keeps those Secrets; empty:
	// SystemNamespace. A namespace of peerd's own lets its Role on Secrets
	// stay out of istio-system, where istiod keeps its CA key (cacerts).
	StateNamespace string
	// SkipValidateTrustDomain accepts a peer whose certificate names another
	// trust domain than its link Gateway's annotation (as istiod's
	// SKIP_VALIDATE_TRUST_DOMAIN); the chain must still lead to the root.
	SkipValidateTrustDomain bool
	// ServiceAccount is peerd's own: its identity is
	// spiffe://<trust-domain>/ns/<system-namespace>/sa/<service-account>,
	// and peers are recognised by the same namespace and account.
	ServiceAccount string
	// MeshConfigMap is istiod's ConfigMap in SystemNamespace whose key
	// "mesh" gives the trust domain unless the flag sets it (Kubernetes
	// mode; empty: not read).
	MeshConfigMap string
	// TrustDomainFromFlag: --trust-domain was given on the command line, so
	// it wins over the mesh config's trustDomain.
	TrustDomainFromFlag bool
	// PodName is the identity this replica holds the Lease under in
	// Kubernetes mode; empty: $POD_NAME, else the hostname. Replicas must
	// not share it.
	PodName string
	// TokenAudiences: in Kubernetes mode, a client of ztunnel's types on
	// the TLS listener must send a service-account token valid for one of
	// them (checked with the TokenReview API), as istiod asks of ztunnel.
	TokenAudiences []string
	// VIPv4Range and VIPv6Range are where global services' VIPs come from.
	VIPv4Range netip.Prefix
	VIPv6Range netip.Prefix
}

// DefaultOptions returns the defaults the design promises.
func DefaultOptions() Options {
	return Options{
		TrustDomain:      "cluster.local",
		SystemNamespace:  "istio-system",
		DomainSuffix:     "cluster.local",
		GlobalSuffix:     "mesh.internal",
		Listen:           ":15012",
		MonitoringListen: ":15014",
		MaxFileSize:      discovery.DefaultMaxFileSize,
		MaxConnectionAge: 30 * time.Minute,
		// ztunnel and peer links open one stream per connection; the cap
		// stops one connection from holding thousands.
		MaxStreamsPerConnection: 100,
		DrainDuration:           defaultDrainDuration,
		PeerStaleTTL:            peers.DefaultStaleTTL,
		PeerSyncTimeout:         peers.DefaultSyncTimeout,
		ServiceAccount:          "peerd",
		// Where Kubernetes mounts a projected token with audience istio-ca,
		// as in ztunnel's and istiod's own pods.
		IstiodTokenFile: "/var/run/secrets/tokens/istio-token",
		MeshConfigMap:   meshconfig.DefaultConfigMap,
		TokenAudiences:  []string{authz.DefaultTokenAudience},
		VIPv4Range:      netip.MustParsePrefix("240.240.0.0/16"),
		VIPv6Range:      netip.MustParsePrefix("2001:2::/48"),
	}
}

// sans returns the configured SANs or the defaults for the system namespace.
func (o Options) sans() []string {
	if len(o.ServerSANs) > 0 {
		return o.ServerSANs
	}
	return []string{
		"peerd." + o.SystemNamespace + ".svc",
		"istiod." + o.SystemNamespace + ".svc",
	}
}

// identity is peerd's own SPIFFE identity.
func (o Options) identity() certs.Identity {
	return certs.Identity{TrustDomain: o.TrustDomain, Namespace: o.SystemNamespace, ServiceAccount: o.ServiceAccount}
}

// stateNamespace is the namespace of the state Secrets (StateNamespace's
// default applied).
func (o Options) stateNamespace() string {
	if o.StateNamespace != "" {
		return o.StateNamespace
	}
	return o.SystemNamespace
}

// Validate reports the first setting that cannot work, naming the flag.
func (o Options) Validate() error {
	var errs []error
	if o.ClusterName == "" {
		errs = append(errs, errors.New("--cluster-name is required"))
	}
	if o.Listen != "" && o.CADir == "" {
		errs = append(errs, fmt.Errorf("--listen %q serves TLS and needs --ca-dir (a cacerts directory: root-cert.pem, ca-cert.pem, ca-key.pem, cert-chain.pem); pass --listen=\"\" to turn the TLS listener off", o.Listen))
	}
	if o.Listen == "" && o.PlaintextListen == "" {
		errs = append(errs, errors.New("no gRPC listener: set --listen (TLS) or --plaintext-listen"))
	}
	if o.StateNamespace != "" {
		if bad := validation.IsDNS1123Label(o.StateNamespace); len(bad) > 0 {
			errs = append(errs, fmt.Errorf("--state-namespace %q: not a namespace name: %s", o.StateNamespace, strings.Join(bad, "; ")))
		}
	}
	if o.MaxStreamsPerConnection == 0 {
		errs = append(errs, errors.New("--max-streams-per-connection 0: no client could open a stream"))
	}
	if o.DrainDuration < 0 {
		errs = append(errs, fmt.Errorf("--drain-duration %v: must not be negative", o.DrainDuration))
	}
	if o.MaxFileSize <= 0 {
		errs = append(errs, fmt.Errorf("--max-file-size %d: must be positive", o.MaxFileSize))
	}
	if !o.VIPv4Range.IsValid() || !o.VIPv4Range.Addr().Is4() || o.VIPv4Range.Bits() > 30 {
		errs = append(errs, fmt.Errorf("--vip-ipv4-range %v: must be an IPv4 prefix of at most /30", o.VIPv4Range))
	}
	if !o.VIPv6Range.IsValid() || !o.VIPv6Range.Addr().Is6() || o.VIPv6Range.Addr().Is4In6() || o.VIPv6Range.Bits() > 126 {
		errs = append(errs, fmt.Errorf("--vip-ipv6-range %v: must be an IPv6 prefix of at most /126", o.VIPv6Range))
	}
	if o.ServiceAccount == "" {
		errs = append(errs, errors.New("--service-account is required: it is peerd's identity towards its peers"))
	}
	if o.PeerStaleTTL <= 0 || o.PeerSyncTimeout <= 0 {
		errs = append(errs, fmt.Errorf("--peer-stale-ttl %v, --peer-sync-timeout %v: must be positive (a lost peer's services need some time to ride out a restart; readiness needs some time for links to sync)", o.PeerStaleTTL, o.PeerSyncTimeout))
	}
	if o.IstiodTLS && o.IstiodAddress == "" {
		errs = append(errs, errors.New("--istiod-tls needs --istiod-address"))
	}
	if o.IstiodTLS && o.IstiodCAFile == "" && o.CADir == "" {
		errs = append(errs, errors.New("--istiod-tls needs --istiod-ca-file (istiod's root certificate) or --ca-dir (its root-cert.pem)"))
	}
	if o.ConfigDir == "" && o.Listen != "" && (len(o.TokenAudiences) == 0 || slices.Contains(o.TokenAudiences, "")) {
		errs = append(errs, fmt.Errorf("--token-audience %q: ztunnel's tokens on --listen are reviewed for these audiences; give at least one, none empty (ztunnel's is %s)", o.TokenAudiences, authz.DefaultTokenAudience))
	}
	if o.MaxConnectionAge < 0 {
		errs = append(errs, fmt.Errorf("--max-connection-age %v: must not be negative", o.MaxConnectionAge))
	}
	return errors.Join(errs...)
}
