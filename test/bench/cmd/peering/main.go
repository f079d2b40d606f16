// Command peering is the cross-cluster convergence benchmark (`make
// bench-peering`): it starts one real peerd per synthetic cluster on
// loopback, links them all to each other with istio-remote Gateways, and
// measures how fast a readiness change in one cluster reaches ztunnel-like
// streams connected to another cluster's peerd, what it costs the importing
// peerd in CPU, and the importer's heap per imported (cluster, service).
// A second series of two-cluster meshes, which differ only in how many
// services the importer imports, shows whether a remote change costs the
// importer what it touches or what it holds. docs/benchmarks.md records
// the figures and the command lines.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/peerd-mesh/peerd/test/bench"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "peering:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		peerdBin     = flag.String("peerd", "bin/peerd", "peerd binary")
		clusters     = flag.Int("clusters", 10, "clusters of the mesh run (0: skip it)")
		pods         = flag.Int("pods", 10000, "pods per cluster of the mesh run")
		services     = flag.Int("services", 1000, "Services per cluster of the mesh run, all global")
		namespaces   = flag.Int("namespaces", 10, "app namespaces per cluster")
		scale        = flag.String("scale", "1000,10000", "global Services exported to a fixed importer in the two-cluster runs, comma-separated (empty: skip them)")
		scalePods    = flag.Int("scale-pods-per-service", 2, "pods per Service of the exporter in the two-cluster runs")
		scaleNoState = flag.Bool("scale-no-state", true, "also run the two-cluster meshes without --state-dir, which separates the saving of link state from the rest of a change's cost")
		importer     = flag.Int("importer-pods", 1000, "pods of the importer in the two-cluster runs (one Service per 10, none global)")
		changes      = flag.Int("changes", 20, "readiness changes per run")
		clients      = flag.Int("clients", 1, "ztunnel-like streams on the importer")
		changeTO     = flag.Duration("change-timeout", time.Minute, "how long one change may take to reach every stream")
		readyTO      = flag.Duration("ready-timeout", 10*time.Minute, "how long the peerds may take to start, link and sync")
		settle       = flag.Duration("settle", 200*time.Millisecond, "CPU-quiet time every peerd must show before each change")
		drain        = flag.Duration("drain", 1500*time.Millisecond, "CPU-quiet time every peerd must show after the last change before the CPU is read (peerd saves a changed link's state up to 1 s after the change)")
		profile      = flag.Bool("profile", false, "take the importer's CPU profile over each run's changes (importer-cpu.pb.gz in the run's directory; profiling costs the importer CPU, so measure without it)")
		profileSecs  = flag.Int("profile-seconds", 30, "length of the profile")
		workDir      = flag.String("workdir", "", "directory for config dirs, certificates, state and logs (default: a new temporary directory, removed at the end unless a run failed)")
	)
	flag.Parse()
	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", flag.Args())
	}
	if *changes < 1 {
		return fmt.Errorf("--changes: %d, want at least 1", *changes)
	}
	if *clusters == 1 {
		return fmt.Errorf("--clusters: 1, want 0 (skip) or at least 2")
	}
	var scales []int
	if strings.TrimSpace(*scale) != "" {
		var err error
		if scales, err = bench.IntList("--scale", *scale); err != nil {
			return err
		}
	}
	if _, err := os.Stat(*peerdBin); err != nil {
		return fmt.Errorf("--peerd: %w", err)
	}
	dir, err := bench.WorkDir(*workDir, "peerd-bench-peering-")
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	co := bench.ConvergenceOptions{Changes: *changes, Clients: *clients, ChangeTimeout: *changeTO, Settle: *settle, Drain: *drain, ProfileSeconds: *profileSecs}
	cluster := func(i, pods, services, global int) bench.Cluster {
		return bench.Cluster{
			Name: fmt.Sprintf("c%d", i+1), Network: fmt.Sprintf("network%d", i+1),
			Namespaces: *namespaces, Nodes: max(pods/100, 3), Services: services, Global: global, Pods: pods,
			Churn: min(*changes, pods), PodsPerFile: 1000,
		}
	}
	var runs []meshRun
	add := func(name string, cs []bench.Cluster, noState bool) {
		runs = append(runs, meshRun{name, bench.MeshOptions{Peerd: *peerdBin, Clusters: cs, ReadyTimeout: *readyTO, NoState: noState}, co})
	}
	if *clusters > 0 {
		var cs []bench.Cluster
		for i := range *clusters {
			cs = append(cs, cluster(i, *pods, *services, *services))
		}
		add("mesh", cs, false)
	}
	for _, noState := range []bool{false, true} {
		if noState && !*scaleNoState {
			continue
		}
		for _, g := range scales {
			name := fmt.Sprintf("scale %d", g)
			if noState {
				name += " no state"
			}
			add(name, []bench.Cluster{
				cluster(0, g**scalePods, g, g),
				cluster(1, *importer, max(*importer/10, *namespaces), 0),
			}, noState)
		}
	}

	var results []bench.ConvergenceResult
	for k, r := range runs {
		r.mesh.WorkDir = fmt.Sprintf("%s/run-%d", dir, k)
		fmt.Fprintf(os.Stderr, "== %s: %d clusters, %d pods and %d global services in %s, importer %s with %d pods\n",
			r.name, len(r.mesh.Clusters), r.mesh.Clusters[0].Pods, r.mesh.Clusters[0].Global, r.mesh.Clusters[0].Name,
			r.mesh.Clusters[1].Name, r.mesh.Clusters[1].Pods)
		var prof bytes.Buffer
		if *profile {
			r.co.Profile = &prof
		}
		res := bench.RunConvergence(ctx, r.name, r.mesh, r.co)
		if prof.Len() > 0 {
			if err := os.WriteFile(filepath.Join(r.mesh.WorkDir, "importer-cpu.pb.gz"), prof.Bytes(), 0o644); err != nil {
				return err
			}
		}
		if err := saveHeapProfiles(r.mesh.WorkDir, res); err != nil {
			return err
		}
		fmt.Fprintln(os.Stderr, res.Line())
		results = append(results, res)
	}
	fmt.Println()
	bench.WriteConvergenceTable(os.Stdout, results)
	writeRatio(os.Stdout, results)
	for _, r := range results {
		if r.Err != nil {
			return fmt.Errorf("some runs failed; logs are in %s", dir)
		}
	}
	if *workDir == "" {
		return os.RemoveAll(dir)
	}
	return nil
}

// saveHeapProfiles writes the importer's heap profiles before and after
// linking next to the run's logs: `go tool pprof -top -base
// heap-unlinked.pb.gz heap-linked.pb.gz` is what linking added.
func saveHeapProfiles(dir string, r bench.ConvergenceResult) error {
	for name, data := range map[string][]byte{"heap-unlinked.pb.gz": r.HeapProfileUnlinked, "heap-linked.pb.gz": r.HeapProfileLinked} {
		if len(data) == 0 {
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// meshRun is one mesh to measure.
type meshRun struct {
	name string
	mesh bench.MeshOptions
	co   bench.ConvergenceOptions
}

// writeRatio compares the importer's CPU per change between the first and
// the last two-cluster run: near 1 when a change costs what it touches,
// near the ratio of imported services when it costs what the importer
// holds.
func writeRatio(w io.Writer, results []bench.ConvergenceResult) {
	for _, suffix := range []string{"", " no state"} {
		var scaled []bench.ConvergenceResult
		for _, r := range results {
			if strings.HasPrefix(r.Name, "scale ") && strings.HasSuffix(r.Name, " no state") == (suffix != "") && r.Err == nil {
				scaled = append(scaled, r)
			}
		}
		if len(scaled) < 2 {
			continue
		}
		a, b := scaled[0], scaled[len(scaled)-1]
		fmt.Fprintf(w, "\n%s vs %s: importer CPU per remote change %s vs %s: ratio %.2f for %.0fx the imported services; heap %.0f B per added import\n",
			a.Name, b.Name, a.ImporterCPU, b.ImporterCPU,
			float64(b.ImporterCPU)/float64(max(a.ImporterCPU, 1)), float64(b.Imported)/float64(a.Imported),
			(float64(b.HeapLinked)-float64(a.HeapLinked))/float64(b.Imported-a.Imported))
	}
}
