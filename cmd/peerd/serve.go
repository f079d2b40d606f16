package main

import (
	"fmt"
	"net/netip"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/peerd-mesh/peerd/internal/serve"
)

func newServeCommand() *cobra.Command {
	opts := serve.DefaultOptions()
	logLevel := "info"
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve the mesh to ztunnel (and, later, to peers) over delta xDS",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			level, err := zapcore.ParseLevel(logLevel)
			if err != nil {
				return fmt.Errorf("--log-level %q: %w", logLevel, err)
			}
			logConfig := zap.NewProductionConfig()
			logConfig.Level = zap.NewAtomicLevelAt(level)
			logConfig.Sampling = nil
			logConfig.DisableStacktrace = true
			log, err := logConfig.Build()
			if err != nil {
				return err
			}
			defer func() { _ = log.Sync() }()
			serve.RouteKlog(log)
			opts.TrustDomainFromFlag = cmd.Flags().Changed("trust-domain")
			return serve.Run(cmd.Context(), opts, log)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.ClusterName, "cluster-name", opts.ClusterName, "this cluster's name (required); the cluster_id of its workloads")
	f.StringVar(&opts.Network, "network", opts.Network, "this cluster's network (default: the system namespace's topology.istio.io/network label)")
	f.StringVar(&opts.TrustDomain, "trust-domain", opts.TrustDomain, "this cluster's trust domain (Kubernetes mode: default the trustDomain of the --mesh-configmap mesh config, else cluster.local)")
	f.StringVar(&opts.SystemNamespace, "system-namespace", opts.SystemNamespace, "the namespace istiod and peerd run in")
	f.StringVar(&opts.DomainSuffix, "domain-suffix", opts.DomainSuffix, "the cluster's DNS domain suffix")
	f.StringVar(&opts.GlobalSuffix, "global-suffix", opts.GlobalSuffix, "the DNS suffix of global services: <name>.<namespace>.<global-suffix>")
	f.StringVar(&opts.ConfigDir, "config-dir", opts.ConfigDir, "read Kubernetes manifests from this directory instead of an API server (reloaded on change)")
	f.Int64Var(&opts.MaxFileSize, "max-file-size", opts.MaxFileSize, "largest manifest file read from --config-dir, in bytes; a larger file is refused by name and its last good objects stay")
	f.StringVar(&opts.Kubeconfig, "kubeconfig", opts.Kubeconfig, "kubeconfig file (default: in-cluster configuration)")
	f.StringVar(&opts.IstiodAddress, "istiod-address", opts.IstiodAddress, "extension mode: relay istiod's ztunnel stream from this HOST:PORT (plaintext, e.g. localhost:15010 beside istiod) and add the linked mesh to it; empty: standalone mode, peerd maps local objects itself (docs/extension-mode.md)")
	f.BoolVar(&opts.IstiodTLS, "istiod-tls", opts.IstiodTLS, "dial --istiod-address with TLS (istiod's 15012) and send the service-account token of --istiod-token-file, as ztunnel does")
	f.StringVar(&opts.IstiodCAFile, "istiod-ca-file", opts.IstiodCAFile, "root certificate(s) istiod's serving certificate must chain to, PEM (default: --ca-dir's root-cert.pem)")
	f.StringVar(&opts.IstiodServerName, "istiod-server-name", opts.IstiodServerName, "name istiod's certificate must carry (default istiod.<system-namespace>.svc)")
	f.StringVar(&opts.IstiodTokenFile, "istiod-token-file", opts.IstiodTokenFile, "service-account token (audience istio-ca) sent to istiod with --istiod-tls; re-read on each connection")
	f.StringVar(&opts.CADir, "ca-dir", opts.CADir, "cacerts directory (root-cert.pem, ca-cert.pem, ca-key.pem, cert-chain.pem) that signs the TLS listener's certificate")
	f.StringVar(&opts.Listen, "listen", opts.Listen, "TLS gRPC address for ztunnel and peers (empty: off)")
	f.StringVar(&opts.PlaintextListen, "plaintext-listen", opts.PlaintextListen, "plaintext gRPC address with reflection, for grpcurl and local ztunnels (empty: off)")
	f.StringVar(&opts.MonitoringListen, "monitoring-listen", opts.MonitoringListen, "HTTP address for /metrics, /healthz, /readyz and /debug/ (empty: off)")
	f.BoolVar(&opts.DebugAllowRemote, "debug-allow-remote", opts.DebugAllowRemote, "serve /debug/ (mesh dumps and pprof) on the monitoring listener to every client, not only loopback ones")
	f.StringSliceVar(&opts.ServerSANs, "server-san", nil, "DNS SAN of the TLS listener's certificate, repeatable (default peerd.<system-ns>.svc and istiod.<system-ns>.svc)")
	f.DurationVar(&opts.MaxConnectionAge, "max-connection-age", opts.MaxConnectionAge, "close client connections after this long so clients rebalance across replicas (0: never)")
	f.Uint32Var(&opts.MaxStreamsPerConnection, "max-streams-per-connection", opts.MaxStreamsPerConnection, "concurrent gRPC streams one client connection may open (ztunnel and peers use one)")
	f.DurationVar(&opts.DrainDuration, "drain-duration", opts.DrainDuration, "on SIGTERM, how long open streams get before peerd exits; their ends are spread over it so clients reconnect to other replicas gradually (0: end them all at once)")
	f.DurationVar(&opts.PeerStaleTTL, "peer-stale-ttl", opts.PeerStaleTTL, "how long a lost peer's services are kept, from the moment the link is lost")
	f.DurationVar(&opts.PeerSyncTimeout, "peer-sync-timeout", opts.PeerSyncTimeout, "how long /readyz and the opening of the xDS listeners wait for peer links that have not synced")
	f.StringVar(&opts.StateDir, "state-dir", opts.StateDir, "file mode: directory for what must outlive a restart, each link's last known state and the VIPs of global services (empty: nothing is kept); Kubernetes mode keeps them in Secrets of --state-namespace")
	f.StringVar(&opts.StateNamespace, "state-namespace", opts.StateNamespace, "Kubernetes mode: namespace of the Secrets that keep each link's last known state and the VIPs (default: --system-namespace); one of peerd's own keeps its Role on Secrets out of istio-system")
	f.BoolVar(&opts.SkipValidateTrustDomain, "skip-validate-trust-domain", opts.SkipValidateTrustDomain, "accept a peer whose certificate names another trust domain than its link Gateway's gateway.istio.io/trust-domain (the chain must still lead to the root)")
	f.StringVar(&opts.ServiceAccount, "service-account", opts.ServiceAccount, "peerd's service account: its identity is spiffe://<trust-domain>/ns/<system-namespace>/sa/<service-account>, and peers must present the same namespace and account")
	f.StringVar(&opts.MeshConfigMap, "mesh-configmap", opts.MeshConfigMap, "Kubernetes mode: istiod's ConfigMap in the system namespace whose key \"mesh\" gives the trust domain unless --trust-domain is set; read once at start (empty: not read)")
	f.StringVar(&opts.PodName, "pod-name", opts.PodName, "Kubernetes mode: this replica's identity as holder of the peerd Lease, which elects the one replica that writes the links' live state into the API; must differ between replicas (default $POD_NAME, else the hostname)")
	f.StringSliceVar(&opts.TokenAudiences, "token-audience", opts.TokenAudiences, "Kubernetes mode: audience the service-account token of a ztunnel on --listen must be valid for (checked with the TokenReview API), repeatable; ztunnel requests istio-ca")
	f.Var(prefixFlag{&opts.VIPv4Range}, "vip-ipv4-range", "IPv4 range the VIPs of global services are allocated from")
	f.Var(prefixFlag{&opts.VIPv6Range}, "vip-ipv6-range", "IPv6 range the VIPs of global services are allocated from")
	f.StringVar(&logLevel, "log-level", logLevel, "debug, info, warn or error")
	return cmd
}

// prefixFlag is a pflag.Value for a netip.Prefix.
type prefixFlag struct{ p *netip.Prefix }

func (f prefixFlag) String() string {
	if f.p == nil || !f.p.IsValid() {
		return ""
	}
	return f.p.String()
}

func (f prefixFlag) Set(s string) error {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return err
	}
	*f.p = p.Masked()
	return nil
}

func (prefixFlag) Type() string { return "prefix" }
