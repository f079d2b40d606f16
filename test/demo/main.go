// Command demo is `make demo`: three peerd clusters on loopback from
// examples/multicluster, linked both ways through relays that stand in for
// their east-west gateways, and a ztunnel-like client in cluster1. It shows
// what that ztunnel sees for hello/echo, makes cluster1's echo pods unready
// (a manifest edit, as a failing readiness probe would), shows the traffic
// failing over to cluster2 and cluster3, brings the pods back and shows it
// failing back. It stops by itself; every peerd it started is stopped on
// exit, on Ctrl-C, and (through the parent-death signal) if it is killed.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
	"github.com/peerd-mesh/peerd/test/mesh"
	"github.com/peerd-mesh/peerd/test/ztunnel"
)

const (
	echoKey   = "hello/echo.hello.mesh.internal"
	echoPods  = "10-echo-pods.yaml"
	stepLimit = 60 * time.Second // a step that takes longer has failed
)

func main() {
	var (
		binary   = flag.String("peerd", "bin/peerd", "the peerd binary")
		examples = flag.String("examples", "examples/multicluster", "directory holding cluster1, cluster2 and cluster3")
		keep     = flag.Bool("keep", false, "keep the work directory (configs, certificates, logs) after the demo")
	)
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *binary, *examples, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		if ctx.Err() != nil {
			os.Exit(130)
		}
		os.Exit(1)
	}
}

func run(ctx context.Context, binary, examples string, keep bool) error {
	binary, err := filepath.Abs(binary)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "peerd-demo-")
	if err != nil {
		return err
	}
	if keep {
		defer fmt.Printf("\nwork directory kept: %s (peerd logs: %s/cluster*.log)\n", dir, dir)
	} else {
		defer os.RemoveAll(dir)
	}

	step("Starting three clusters on loopback (certificates from `peerd certs`, one root, an intermediate each)")
	start := time.Now()
	sctx, cancel := context.WithTimeout(ctx, 2*stepLimit)
	m, err := mesh.Start(sctx, mesh.Options{
		Binary:   binary,
		Clusters: mesh.ExampleClusters(examples),
		Dir:      dir,
		LogFiles: true,
	})
	cancel()
	if err != nil {
		return err
	}
	defer m.Close()
	for _, c := range m.Clusters {
		fmt.Printf("  %-8s network %-8s %s/%-9s  trust domain %-14s xDS %s  gateway (relay) %s\n",
			c.Name, c.Network, c.Region, c.Zone, c.TrustDomain, c.PlaintextAddr, c.Relay.Addr())
	}
	fmt.Printf("  each cluster links to the other two: istio-remote Gateways %s/<cluster>/config/90-link-*.yaml\n", dir)

	c1 := m.Cluster("cluster1")
	client := ztunnel.New(c1.ZtunnelConfig("node-a"))
	cctx, stopClient := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = client.Run(cctx) }()
	defer func() { stopClient(); <-done }()

	explain := explainer(ctx, binary, c1)
	show := func() error { return explain(echoKey) }

	step("A ztunnel on node-a of cluster1 looks up echo.hello.mesh.internal")
	if err := waitClient(ctx, client, "echo from all three clusters", func(s *ztunnel.State) bool {
		return localReady(s, 2) && remoteCapacity(s, "cluster2") == 2 && remoteCapacity(s, "cluster3") == 1
	}); err != nil {
		return err
	}
	if err := show(); err != nil {
		return err
	}
	fmt.Println("  -> PreferNetwork (the default for global services): cluster1's own pods take all the traffic.")

	step("cluster1's echo pods become unready (Ready=False in " + echoPods + ")")
	if err := c1.ReplaceInManifest(echoPods, `status: "True"`, `status: "False"`); err != nil {
		return err
	}
	if err := waitClient(ctx, client, "cluster1's echo pods unhealthy", func(s *ztunnel.State) bool { return localReady(s, 0) }); err != nil {
		return err
	}
	if err := show(); err != nil {
		return err
	}
	fmt.Println("  -> no Ready endpoint on network1: traffic fails over to cluster2 and cluster3 through their gateways, by capacity.")
	fmt.Println("\n  The same pods behind echo-region (traffic distribution PreferRegion):")
	if err := explain("hello/echo-region.hello.mesh.internal"); err != nil {
		return err
	}
	fmt.Println("  -> PreferRegion keeps the failover in us-east: cluster2 only.")

	step("cluster1's echo pods are Ready again")
	if err := c1.ReplaceInManifest(echoPods, `status: "False"`, `status: "True"`); err != nil {
		return err
	}
	if err := waitClient(ctx, client, "cluster1's echo pods healthy", func(s *ztunnel.State) bool { return localReady(s, 2) }); err != nil {
		return err
	}
	if err := show(); err != nil {
		return err
	}
	fmt.Println("  -> traffic fails back to cluster1.")

	step(fmt.Sprintf("Done in %s; stopping every peerd", time.Since(start).Round(100*time.Millisecond)))
	return nil
}

// explainer returns what prints the client's view of a service: `peerd
// explain` when the binary has it, else `peerd view services` (its
// CLUSTERS column shows each cluster's usable capacity).
func explainer(ctx context.Context, binary string, c *mesh.Cluster) func(service string) error {
	hasExplain := exec.CommandContext(ctx, binary, "explain", "--help").Run() == nil
	return func(service string) error {
		args := []string{"view", "services", "--addr", c.PlaintextAddr, "--namespace", "hello"}
		if hasExplain {
			args = []string{"explain", "--addr", c.PlaintextAddr, "--service", service, "--node", "node-a"}
		}
		fmt.Printf("  $ peerd %s\n", strings.Join(args, " "))
		out, err := exec.CommandContext(ctx, binary, args...).CombinedOutput()
		for _, line := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
			fmt.Println("    " + line)
		}
		var exit *exec.ExitError
		if errors.As(err, &exit) && hasExplain {
			return nil // explain exits non-zero for "no healthy upstream" and still prints the table
		}
		return err
	}
}

// localReady: cluster1's echo pods that are endpoints of the global
// service number want HEALTHY ones.
func localReady(s *ztunnel.State, want int) bool {
	n, seen := 0, 0
	for _, w := range s.Workloads {
		if _, ok := w.GetServices()[echoKey]; ok && w.GetClusterId() == "cluster1" {
			seen++
			if w.GetStatus() == workloadpb.WorkloadStatus_HEALTHY {
				n++
			}
		}
	}
	return seen == 2 && n == want
}

// remoteCapacity is the capacity of cluster's split-horizon workload for
// echo (0 when absent).
func remoteCapacity(s *ztunnel.State, cluster string) uint32 {
	for _, w := range s.Workloads {
		if _, ok := w.GetServices()[echoKey]; ok && w.GetClusterId() == cluster && len(w.GetAddresses()) == 0 {
			return w.GetCapacity().GetValue()
		}
	}
	return 0
}

func waitClient(ctx context.Context, c *ztunnel.Client, what string, pred func(*ztunnel.State) bool) error {
	ctx, cancel := context.WithTimeout(ctx, stepLimit)
	defer cancel()
	if err := c.WaitFor(ctx, pred); err != nil {
		return fmt.Errorf("waiting for %s: %w", what, err)
	}
	return nil
}

func step(s string) { fmt.Printf("\n== %s\n", s) }
