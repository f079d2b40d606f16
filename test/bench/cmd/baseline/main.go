// Command baseline is the comparison server of the black-box benchmark
// (test/bench): stock go-control-plane v0.14, a LinearCache of
// istio.workload.Address behind its delta ADS server, fed by a per-file
// manifest source (source.go) that maps with peerd's own ambient.Build.
// It takes the flags of `peerd serve` that the harness uses, so both are
// driven the same way, and serves /readyz and /metrics (Go and process
// collectors) on its monitoring listener.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"

	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	gcpcache "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	gcpserver "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/peerd-mesh/peerd/internal/ambient"
)

const addressTypeURL = "type.googleapis.com/istio.workload.Address"

var (
	updates = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "baseline_resource_updates_total",
		Help: "Address resources updated in the LinearCache.",
	})
	removals = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "baseline_resource_removals_total",
		Help: "Address resources removed from the LinearCache.",
	})
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "baseline:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		clusterName = flag.String("cluster-name", "", "cluster name (workload uid prefix); required")
		configDir   = flag.String("config-dir", "", "directory of manifests; required")
		listen      = flag.String("listen", "", "accepted for peerd's flag shape; must be empty (no TLS here)")
		plaintext   = flag.String("plaintext-listen", "", "plaintext gRPC address; required")
		monitoring  = flag.String("monitoring-listen", "127.0.0.1:15014", "HTTP address of /metrics and /readyz")
	)
	flag.Parse()
	switch {
	case *clusterName == "":
		return errors.New("--cluster-name: required")
	case *configDir == "":
		return errors.New("--config-dir: required")
	case *plaintext == "":
		return errors.New("--plaintext-listen: required")
	case *listen != "":
		return errors.New("--listen: the baseline serves plaintext only; pass --listen \"\"")
	}
	log, err := zap.NewProduction()
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), updates, removals)
	var ready atomic.Bool
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready.Load() {
			http.Error(w, "loading the config dir", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	monLis, err := net.Listen("tcp", *monitoring)
	if err != nil {
		return fmt.Errorf("--monitoring-listen: %w", err)
	}
	httpSrv := &http.Server{Handler: mux}
	go func() { _ = httpSrv.Serve(monLis) }()
	defer httpSrv.Close()

	cache := gcpcache.NewLinearCache(addressTypeURL)
	src := newSource(*configDir, ambient.Config{ClusterID: *clusterName}, cache, log)
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	defer w.Close()
	// Watch before reading, so that nothing written in between is missed.
	if err := w.Add(*configDir); err != nil {
		return fmt.Errorf("--config-dir: %w", err)
	}
	dirs, err := src.load()
	if err != nil {
		return err
	}
	for _, d := range dirs {
		if err := w.Add(d); err != nil {
			return fmt.Errorf("watching %s: %w", d, err)
		}
	}
	log.Info("config dir loaded", zap.String("dir", *configDir), zap.Int("resources", cache.NumResources()))
	go src.run(w, ctx.Done())

	grpcLis, err := net.Listen("tcp", *plaintext)
	if err != nil {
		return fmt.Errorf("--plaintext-listen: %w", err)
	}
	// The same receive limit as peerd's listeners.
	g := grpc.NewServer(grpc.MaxRecvMsgSize(16 << 20))
	discoverypb.RegisterAggregatedDiscoveryServiceServer(g, gcpserver.NewServer(ctx, cache, nil))
	errc := make(chan error, 1)
	go func() { errc <- g.Serve(grpcLis) }()
	ready.Store(true)
	select {
	case <-ctx.Done():
		g.Stop()
		return nil
	case err := <-errc:
		return err
	}
}
