package serve

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/peerd-mesh/peerd/internal/ambient"
	"github.com/peerd-mesh/peerd/internal/authz"
	"github.com/peerd-mesh/peerd/internal/certs"
	"github.com/peerd-mesh/peerd/internal/discovery"
	"github.com/peerd-mesh/peerd/internal/federation"
	"github.com/peerd-mesh/peerd/internal/xds"

	// Registered so that reflection clients (grpcurl) can decode the
	// resources inside the Any fields.
	_ "github.com/peerd-mesh/peerd/proto/istio/security"
	_ "github.com/peerd-mesh/peerd/proto/istio/workload"
)

// serverCertTTL is the lifetime of the TLS listener's minted certificate;
// it is re-minted before it expires.
const serverCertTTL = 24 * time.Hour

// Run serves until ctx ends. Start-up order matters: the monitoring endpoint
// comes first (so /readyz can say what is missing), the gRPC listeners only
// once the first model is in the cache, so that a reconnecting ztunnel never
// sees an empty mesh and drops what it holds.
func Run(ctx context.Context, opts Options, log *zap.Logger) error {
	if err := opts.Validate(); err != nil {
		return err
	}
	// Sources and the model outlive the signal: while streams drain they
	// keep getting updates. A signal before serving starts aborts start-up.
	signalled := ctx
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	stopStartup := context.AfterFunc(signalled, cancel)

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	// peerd's certificate names its trust domain, which in Kubernetes mode
	// comes from istiod's mesh config: it is minted once that is read (after
	// the monitoring listener is up, so /readyz can say what it waits for).
	var authority *certs.Authority
	var identity atomic.Pointer[certs.Credentials]
	if opts.Listen != "" {
		var err error
		if authority, err = certs.NewAuthority(opts.CADir, certs.AuthorityOptions{Logger: log, Registerer: reg}); err != nil {
			return fmt.Errorf("--ca-dir %s: %w", opts.CADir, err)
		}
		// The CA is followed for the life of the process: a new
		// intermediate or root bundle applies to the next handshake.
		go func() {
			// Without the watch (an inotify limit, say) CA rotations would
			// go unnoticed: say so loudly rather than drop the error.
			if err := authority.Run(ctx); err != nil && ctx.Err() == nil {
				log.Error("--ca-dir is no longer followed: a new intermediate or root will not be picked up until restart", zap.String("ca_dir", opts.CADir), zap.Error(err))
			}
		}()
	}

	index := discovery.NewIndex()
	addresses := xds.NewCache(xds.AddressTypeURL)
	authorizations := xds.NewCache(xds.AuthorizationTypeURL)
	federations := xds.NewCache(federation.TypeURL)
	// Kubernetes mode: the source and the state stores share one config.
	var (
		kubeCfg    *rest.Config
		kubeClient kubernetes.Interface
		err        error
	)
	if opts.ConfigDir == "" {
		if kubeCfg, err = kubeConfig(opts.Kubeconfig); err != nil {
			return err
		}
		if kubeClient, err = kubernetes.NewForConfig(kubeCfg); err != nil {
			return fmt.Errorf("kubernetes client: %w", err)
		}
	}
	vips, linkStore, err := stateStores(opts, kubeClient, log)
	if err != nil {
		return err
	}
	links, err := newPeers(opts, linkStore, index, &identity, log, reg)
	if err != nil {
		return err
	}
	// The links outlive the signal like the sources, and their final save
	// (each link's state, marked lost now) must be written before exit.
	linksDone := make(chan struct{})
	go func() {
		defer close(linksDone)
		_ = links.Run(ctx)
	}()
	defer func() {
		cancel()
		select {
		case <-linksDone:
		case <-time.After(5 * time.Second):
			log.Warn("peer links did not stop within 5s; their last state may not be saved")
		}
	}()
	convergence := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "peerd_peer_convergence_seconds",
		Help:    "From a peer's update arriving to the resources it changes being in the ztunnel cache, from which every stream is woken to send them (the sends themselves are not included).",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
	})
	reg.MustRegister(convergence)
	status := newStatus(index, reg)
	status.links = links
	// Tied to the signal, not to ctx: a stopping peerd hands the status
	// writing over before it drains.
	leader, stopLiveState, err := startLiveState(signalled, opts, kubeCfg, kubeClient, links, index, log, reg)
	if err != nil {
		return err
	}
	defer stopLiveState()
	status.leader = leader
	status.rejected = addresses.RejectedErrors
	relay, err := newIstiodRelay(opts, authorizations, log, reg)
	if err != nil {
		return err
	}
	status.relay = relay
	if relay == nil {
		log.Warn("no authorization policy source: ztunnels connected to peerd receive an empty istio.security.Authorization set, so no AuthorizationPolicy is enforced through peerd; --istiod-address relays istiod's")
	}
	tokens, err := ztunnelAuthentication(opts, kubeCfg, status, log, reg)
	if err != nil {
		return err
	}

	sources, events, err := startSources(ctx, opts, kubeCfg, index, log, reg)
	if err != nil {
		return err
	}

	errc := make(chan error, 4)
	monitoring, err := listen("--monitoring-listen", opts.MonitoringListen)
	if err != nil {
		return err
	}
	httpServer := &http.Server{Handler: monitoringHandler(reg, status, addresses, opts.DebugAllowRemote), ReadHeaderTimeout: 10 * time.Second}
	if monitoring != nil {
		log.Info("monitoring listening", zap.String("address", monitoring.Addr().String()))
		go func() { errc <- serveHTTP(httpServer, monitoring) }()
	}
	for _, run := range sources {
		go func() { errc <- run(ctx) }()
	}
	if relay != nil {
		go relay.run(ctx)
	}

	if kubeClient != nil && opts.MeshConfigMap != "" {
		if err := loadMeshConfig(ctx, kubeClient, &opts, status, log); err != nil {
			return err
		}
	}
	var tlsCreds credentials.TransportCredentials
	if authority != nil {
		minted, err := certs.NewCredentials(authority, certs.CredentialsOptions{
			Identity:   opts.identity(),
			SANs:       opts.sans(),
			TTL:        serverCertTTL,
			Logger:     log,
			Registerer: reg,
		})
		if err != nil {
			return fmt.Errorf("--ca-dir %s: minting peerd's certificate: %w", opts.CADir, err)
		}
		identity.Store(minted)
		tlsCreds = minted.ServerCredentials()
	}

	if err := waitSynced(ctx, index, errc); err != nil {
		return err
	}
	if err := relay.waitSynced(ctx, errc); err != nil {
		return err
	}
	// Read once the sources have synced: in Kubernetes mode the VIPs are in
	// the API, and an API server that is not reachable yet must leave peerd
	// waiting with /readyz saying why, not exiting. A failure now (RBAC, a
	// damaged Secret) stops peerd rather than hand out new VIPs.
	savedVIPs, err := vips.load()
	if err != nil {
		return err
	}
	model := newModelLoop(ambient.Config{
		ClusterID:       opts.ClusterName,
		Network:         opts.Network,
		TrustDomain:     opts.TrustDomain,
		DomainSuffix:    opts.DomainSuffix,
		SystemNamespace: opts.SystemNamespace,
		GlobalSuffix:    opts.GlobalSuffix,
		VIPv4Range:      opts.VIPv4Range,
		VIPv6Range:      opts.VIPv6Range,
		VIPs:            savedVIPs,
	}, index, addresses, events, log, reg)
	model.federations, model.links, model.vips = federations, links, vips
	model.convergence = convergence
	model.useRelay(relay)
	model.update()
	// The first load decodes every object, and its garbage is several
	// times the heap that stays live (at 100,000 pods, about 950 MB in use
	// against 470 MB live). Collect it and hand it back to the OS now,
	// rather than carry the start-up peak as RSS for the life of the process.
	debug.FreeOSMemory()
	go model.run(ctx)
	log.Info("sources synced; first model built", zap.Int("addresses", addresses.Len()))

	policy := authz.Policy{SystemNamespace: opts.SystemNamespace, ServiceAccount: opts.ServiceAccount, Tokens: tokens}
	xdsServer := xds.NewServer(xds.ServerOptions{Logger: log, Registerer: reg, Authorize: gateReady(policy.Authorize, links)},
		addresses, authorizations, federations)
	drain := newDrainer()
	var grpcServers []*grpc.Server
	for _, l := range []struct {
		flag, address string
		creds         credentials.TransportCredentials
	}{
		{"--listen", opts.Listen, tlsCreds},
		{"--plaintext-listen", opts.PlaintextListen, nil},
	} {
		lis, err := listen(l.flag, l.address)
		if err != nil {
			return err
		}
		if lis == nil {
			continue
		}
		g := newGRPCServer(opts, l.creds, drain)
		xdsServer.Register(g)
		if l.creds == nil {
			reflection.Register(g)
		}
		grpcServers = append(grpcServers, g)
		log.Info("xDS listening", zap.String("flag", l.flag), zap.String("address", lis.Addr().String()), zap.Bool("tls", l.creds != nil))
		go func() { errc <- g.Serve(lis) }()
	}
	status.setServing()
	stopStartup()

	select {
	case <-signalled.Done():
		log.Info("shutting down", zap.NamedError("cause", context.Cause(signalled)))
	case err = <-errc:
		log.Error("shutting down after a failure", zap.Error(err))
	}
	gracefulStop(status, grpcServers, drain, opts.DrainDuration, log)
	shutdownCtx, stop := context.WithTimeout(context.Background(), 5*time.Second)
	defer stop()
	_ = httpServer.Shutdown(shutdownCtx)
	return err
}

// stopGrace is how long gracefulStop waits, after the drain window, for
// handlers to return before it closes the connections: a handler blocked
// sending to a client that stopped reading notices its cancelled context
// only when the send completes.
const stopGrace = 2 * time.Second

// gracefulStop takes peerd out of service in steps an operator can follow in
// the log: /readyz fails (so the endpoints controller stops sending new
// clients here), the gRPC servers send GOAWAY and stop accepting, the open
// streams are ended with a clean Unavailable status spread over the drain
// window (each ztunnel reconnects to another replica), and whatever is left
// after the window and stopGrace is closed hard.
func gracefulStop(st *status, servers []*grpc.Server, drain *drainer, window time.Duration, log *zap.Logger) {
	st.setDraining()
	log.Info("draining: /readyz fails from now on")
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		var wg sync.WaitGroup
		for _, g := range servers {
			wg.Go(g.GracefulStop)
		}
		wg.Wait()
	}()
	n := drain.drain(window)
	log.Info("draining: GOAWAY sent, listeners closed; ending open streams with status UNAVAILABLE spread over the drain window",
		zap.Int("streams", n), zap.Duration("drain_duration", window))
	timer := time.NewTimer(window + stopGrace)
	defer timer.Stop()
	select {
	case <-stopped:
		log.Info("drained: every stream ended")
		return
	case <-timer.C:
	}
	log.Warn("drain window over: closing the remaining connections", zap.Int("streams", drain.open()))
	for _, g := range servers {
		g.Stop()
	}
	<-stopped
}

// newGRPCServer applies the settings every listener shares. MaxConnectionAge
// makes clients reconnect now and then, so they spread over replicas that
// came up after them.
func newGRPCServer(opts Options, creds credentials.TransportCredentials, drain *drainer) *grpc.Server {
	serverOpts := []grpc.ServerOption{
		xds.ServerCodec(),
		grpc.MaxRecvMsgSize(16 << 20),
		grpc.MaxConcurrentStreams(opts.MaxStreamsPerConnection),
		grpc.ChainStreamInterceptor(drain.interceptor),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 15 * time.Second, PermitWithoutStream: true}),
	}
	if opts.MaxConnectionAge > 0 {
		serverOpts = append(serverOpts, grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionAge:      opts.MaxConnectionAge,
			MaxConnectionAgeGrace: 10 * time.Second,
		}))
	}
	if creds != nil {
		serverOpts = append(serverOpts, grpc.Creds(creds))
	}
	return grpc.NewServer(serverOpts...)
}

// startSources builds the configured source (the files of --config-dir, or
// Kubernetes through cfg) and returns its run function and, for Kubernetes,
// the recorder of warning Events.
func startSources(ctx context.Context, opts Options, cfg *rest.Config, index *discovery.Index, log *zap.Logger, reg prometheus.Registerer) ([]func(context.Context) error, *warningEvents, error) {
	if opts.ConfigDir != "" {
		files := discovery.NewFileSource(opts.ConfigDir, index, log.Named("files"), discovery.FileSourceOptions{MaxFileSize: opts.MaxFileSize, Registerer: reg})
		return []func(context.Context) error{files.Run}, nil, nil
	}
	kube, err := discovery.NewKubeSource(cfg, index, log.Named("kube"))
	if err != nil {
		return nil, nil, err
	}
	events, err := startWarningEvents(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	return []func(context.Context) error{kube.Run}, events, nil
}

func kubeConfig(path string) (*rest.Config, error) {
	if path == "" {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("no --config-dir or --kubeconfig given, and not running in a cluster: %w", err)
		}
		return cfg, nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, fmt.Errorf("--kubeconfig %s: %w", path, err)
	}
	return cfg, nil
}

// waitSynced blocks until every source has done its first full load, or a
// source fails first.
func waitSynced(ctx context.Context, index *discovery.Index, errc <-chan error) error {
	synced := make(chan error, 1)
	go func() { synced <- index.WaitSynced(ctx) }()
	select {
	case err := <-synced:
		return err
	case err := <-errc:
		if err == nil {
			err = errors.New("a source stopped before it synced")
		}
		return err
	}
}

func listen(flag, address string) (net.Listener, error) {
	if address == "" {
		return nil, nil
	}
	lis, err := net.Listen("tcp", address)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", flag, address, err)
	}
	return lis, nil
}

func serveHTTP(s *http.Server, lis net.Listener) error {
	if err := s.Serve(lis); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
