package clusterops

import (
	"context"
	"sync"
	"time"
)

// Check observes every cluster (concurrently: one slow API server does not
// add to the others) and evaluates them at the time the reads finished.
func Check(ctx context.Context, clusters []*Cluster, cfg Config, expectPairs bool) Report {
	snaps := make([]Snapshot, len(clusters))
	var wg sync.WaitGroup
	for i, c := range clusters {
		wg.Go(func() { snaps[i] = Observe(ctx, c, cfg, true) })
	}
	wg.Wait()
	return Evaluate(snaps, CheckOptions{Now: time.Now(), ExpectPairs: expectPairs})
}

// WaitHealthy checks every interval until the report is healthy or ctx is
// done, and returns the last report. progress sees every report that is
// not healthy.
func WaitHealthy(ctx context.Context, clusters []*Cluster, cfg Config, expectPairs bool, interval time.Duration, progress func(Report)) Report {
	for {
		r := Check(ctx, clusters, cfg, expectPairs)
		if r.Healthy() {
			return r
		}
		if ctx.Err() == nil && progress != nil {
			progress(r)
		}
		t := time.NewTimer(interval)
		select {
		case <-ctx.Done():
		case <-t.C:
			continue
		}
		t.Stop()
		// One last look on a context of its own: the report printed must
		// be the state at the deadline, not reads that failed because of
		// it.
		last, cancel := context.WithTimeout(context.WithoutCancel(ctx), finalCheckTimeout)
		defer cancel()
		return Check(last, clusters, cfg, expectPairs)
	}
}

// finalCheckTimeout bounds the look after --wait's deadline.
const finalCheckTimeout = 15 * time.Second
