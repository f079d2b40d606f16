package bench

import (
	"math"
	"slices"
	"time"
)

// Percentile returns the q-th percentile (0 < q <= 100) of samples by the
// nearest-rank method: the smallest sample such that at least q percent of
// the samples are at most it. With 20 samples p99 is the largest one. It
// returns 0 for no samples.
func Percentile(samples []time.Duration, q float64) time.Duration {
	if len(samples) == 0 {
		return 0
	}
	sorted := slices.Clone(samples)
	slices.Sort(sorted)
	rank := int(math.Ceil(q / 100 * float64(len(sorted))))
	return sorted[min(max(rank, 1), len(sorted))-1]
}

// Latency summarises the latencies of one series of changes.
type Latency struct {
	P50, P99 time.Duration
}

func summarise(samples []time.Duration) Latency {
	return Latency{P50: Percentile(samples, 50), P99: Percentile(samples, 99)}
}
