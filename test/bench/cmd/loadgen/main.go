// Command loadgen is the black-box benchmark of a manifest change (`make
// bench-e2e`): for each cluster size and client count it runs each server
// binary on a freshly written config dir, connects ztunnel-like wildcard
// delta clients, replaces manifest files and prints, side by side, the
// latency to the first and the last client, the server's CPU time and
// bytes allocated per change, and its RSS. docs/benchmarks.md explains the
// figures and records the command lines.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/peerd-mesh/peerd/test/bench"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		peerdBin    = flag.String("peerd", "bin/peerd", "peerd binary")
		baselineBin = flag.String("baseline", "bin/peerd-bench-baseline", "go-control-plane baseline binary (test/bench/cmd/baseline)")
		targets     = flag.String("targets", "peerd,baseline", "servers to run, in this order")
		pods        = flag.String("pods", "1000", "cluster sizes in pods, comma-separated")
		services    = flag.Int("services", 0, "Services per cluster (0: one per 10 pods)")
		namespaces  = flag.Int("namespaces", 10, "app namespaces")
		nodes       = flag.Int("nodes", 0, "nodes (0: one per 100 pods, at least 3)")
		perFile     = flag.Int("pods-per-file", 1000, "pods per shared manifest file")
		move        = flag.Int("move", 1000, "pods the selector change moves (at most the pods of namespace team-00)")
		clients     = flag.String("clients", "1,1000", "client stream counts, comma-separated")
		changes     = flag.Int("changes", 20, "changes per scenario")
		scenarios   = flag.String("scenarios", strings.Join(bench.Scenarios, ","), "scenarios to run, in order")
		clusterName = flag.String("cluster-name", "c1", "--cluster-name given to the servers")
		changeTO    = flag.Duration("change-timeout", 2*time.Minute, "how long one change may take to reach every client")
		readyTO     = flag.Duration("ready-timeout", 10*time.Minute, "how long a server may take to become ready and sync every client")
		settle      = flag.Duration("settle", 200*time.Millisecond, "CPU-quiet time the server must show before each change, and after a change that should push nothing")
		workDir     = flag.String("workdir", "", "directory for config dirs and server logs (default: a new temporary directory, removed at the end unless a run failed)")
	)
	flag.Parse()
	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", flag.Args())
	}
	podCounts, err := bench.IntList("--pods", *pods)
	if err != nil {
		return err
	}
	clientCounts, err := bench.IntList("--clients", *clients)
	if err != nil {
		return err
	}
	if *changes < 1 {
		return fmt.Errorf("--changes: %d, want at least 1", *changes)
	}
	known := map[string]bench.Target{
		"peerd":    {Name: "peerd", Binary: *peerdBin, Args: []string{"serve"}},
		"baseline": {Name: "baseline", Binary: *baselineBin},
	}
	var ts []bench.Target
	for _, name := range strings.Split(*targets, ",") {
		t, ok := known[name]
		if !ok {
			return fmt.Errorf("--targets: unknown server %q (known: peerd, baseline)", name)
		}
		if _, err := os.Stat(t.Binary); err != nil {
			return fmt.Errorf("--%s: %w", name, err)
		}
		ts = append(ts, t)
	}
	var clusters []bench.Cluster
	for _, p := range podCounts {
		c := bench.Cluster{
			Name: *clusterName, Namespaces: *namespaces, Nodes: *nodes, Services: *services, Pods: p,
			Churn: min(*changes, p), PodsPerFile: *perFile, Move: *move,
		}
		if c.Services == 0 {
			c.Services = max(p/10, c.Namespaces)
		}
		if c.Nodes == 0 {
			c.Nodes = max(p/100, 3)
		}
		if c.Move > c.MoveCapacity() {
			fmt.Fprintf(os.Stderr, "%d pods: the selector change moves %d pods, all of namespace team-00\n", p, c.MoveCapacity())
			c.Move = c.MoveCapacity()
		}
		if err := c.Validate(); err != nil {
			return fmt.Errorf("%d pods: %w", p, err)
		}
		clusters = append(clusters, c)
	}

	dir, err := bench.WorkDir(*workDir, "peerd-bench-e2e-")
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	results := bench.Run(ctx, bench.Options{
		Targets: ts, Clusters: clusters, Clients: clientCounts, Changes: *changes,
		Scenarios: strings.Split(*scenarios, ","), ChangeTimeout: *changeTO, ReadyTimeout: *readyTO,
		Settle: *settle, WorkDir: dir, Log: os.Stderr,
	})
	fmt.Println()
	bench.WriteTable(os.Stdout, results)
	for _, r := range results {
		if r.Err != nil {
			return fmt.Errorf("some runs failed; server logs are in %s", dir)
		}
	}
	if *workDir == "" {
		return os.RemoveAll(dir)
	}
	return nil
}
