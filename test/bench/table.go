package bench

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// line is a one-line progress report of r.
func (r Result) line() string {
	if r.Err != nil {
		return fmt.Sprintf("%s %s: %d pods, %d clients: FAILED: %v", r.Target, r.Scenario, r.Pods, r.Clients, r.Err)
	}
	return fmt.Sprintf("%s %s: %d pods, %d clients: first p50 %s p99 %s, last p50 %s p99 %s, %s CPU-s/change, %s MB/change, %.1f msgs/change, RSS %s MiB",
		r.Target, r.Scenario, r.Pods, r.Clients, ms(r.First.P50), ms(r.First.P99), ms(r.Last.P50), ms(r.Last.P99),
		cpuSeconds(r.CPUPerChange), megabytes(r.AllocPerChange), r.MessagesPerChange, mebibytes(r.Memory.RSS))
}

// WriteTable writes the results as a Markdown table, the servers of one
// load next to each other.
func WriteTable(w io.Writer, results []Result) {
	fmt.Fprintln(w, "| scenario | pods | services | clients | server | first p50 | first p99 | last p50 | last p99 | CPU-s/change | MB alloc/change | msgs/change | RSS MiB (peak) | sync | held |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, r := range results {
		if r.Err != nil {
			fmt.Fprintf(w, "| %s | %d | %d | %d | %s | failed: %s |||||||||\n", r.Scenario, r.Pods, r.Services, r.Clients, r.Target,
				strings.ReplaceAll(r.Err.Error(), "|", "/"))
			continue
		}
		fmt.Fprintf(w, "| %s | %d | %d | %d | %s | %s | %s | %s | %s | %s | %s | %.1f | %s (%s) | %s | %d |\n",
			r.Scenario, r.Pods, r.Services, r.Clients, r.Target,
			ms(r.First.P50), ms(r.First.P99), ms(r.Last.P50), ms(r.Last.P99),
			cpuSeconds(r.CPUPerChange), megabytes(r.AllocPerChange), r.MessagesPerChange,
			mebibytes(r.Memory.RSS), mebibytes(r.Memory.Peak), ms(r.Sync), r.Held)
	}
}

// ms renders a latency in milliseconds with three significant digits, or
// "-" for a scenario that measures none.
func ms(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	v := float64(d) / float64(time.Millisecond)
	switch {
	case v >= 10000:
		return fmt.Sprintf("%.0f s", v/1000)
	case v >= 100:
		return fmt.Sprintf("%.0f ms", v)
	case v >= 10:
		return fmt.Sprintf("%.1f ms", v)
	}
	return fmt.Sprintf("%.2f ms", v)
}

func cpuSeconds(d time.Duration) string { return fmt.Sprintf("%.3f", d.Seconds()) }
func megabytes(b float64) string        { return fmt.Sprintf("%.2f", b/1e6) }
func mebibytes(b uint64) string         { return fmt.Sprintf("%d", b>>20) }

// Line is a one-line progress report of r.
func (r ConvergenceResult) Line() string {
	if r.Err != nil {
		return fmt.Sprintf("%s: %d clusters: FAILED: %v", r.Name, r.Clusters, r.Err)
	}
	return fmt.Sprintf("%s: %d clusters, %d imported: p50 %s p99 %s, importer %s CPU-ms/change, exporter %s, in importer %s, heap %s B per import, RSS %s MiB",
		r.Name, r.Clusters, r.Imported, ms(r.Latency.P50), ms(r.Latency.P99), cpuMillis(r.ImporterCPU), cpuMillis(r.ExporterCPU),
		ms(r.InImporter), perImport(r), mebibytes(r.RSS))
}

// WriteConvergenceTable writes the results of the peering benchmark as a
// Markdown table.
func WriteConvergenceTable(w io.Writer, results []ConvergenceResult) {
	fmt.Fprintln(w, "| run | clusters | pods/cluster (exporter) | global services/cluster (exporter) | importer pods | imported (cluster, service) | link sync | p50 | p99 | importer CPU-ms/change | exporter CPU-ms/change | in-importer mean | importer heap MiB unlinked → linked | heap B per import | importer RSS MiB |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, r := range results {
		if r.Err != nil {
			fmt.Fprintf(w, "| %s | %d | %d | %d | %d | failed: %s ||||||||||\n", r.Name, r.Clusters, r.Exporter.Pods, r.Exporter.Global, r.Importer.Pods,
				strings.ReplaceAll(r.Err.Error(), "|", "/"))
			continue
		}
		fmt.Fprintf(w, "| %s | %d | %d | %d | %d | %d | %s | %s | %s | %s | %s | %s | %s → %s | %s | %s |\n",
			r.Name, r.Clusters, r.Exporter.Pods, r.Exporter.Global, r.Importer.Pods, r.Imported, ms(r.Link),
			ms(r.Latency.P50), ms(r.Latency.P99), cpuMillis(r.ImporterCPU), cpuMillis(r.ExporterCPU), ms(r.InImporter),
			mebibytes(r.HeapUnlinked), mebibytes(r.HeapLinked), perImport(r), mebibytes(r.RSS))
	}
}

// cpuMillis renders CPU time in milliseconds: /proc counts 10 ms ticks, so
// a per-change figure below 10 ms is an average of whole ticks.
func cpuMillis(d time.Duration) string {
	return fmt.Sprintf("%.1f", float64(d)/float64(time.Millisecond))
}

func perImport(r ConvergenceResult) string { return fmt.Sprintf("%.0f", r.HeapPerImport()) }
