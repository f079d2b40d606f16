package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/peerd-mesh/peerd/internal/clusterops"
)

func newCheckCommand() *cobra.Command {
	var (
		k        kubeFlags
		wait     bool
		timeout  time.Duration
		interval time.Duration
	)
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Check the clusters and their links through the Kubernetes API; exit 0 only when all is well",
		Long: `check reads each cluster and prints, per cluster, a line per check and for each problem its fix:
the system namespace's network label, the mesh config's trust domain, the east-west gateway and its
address, peerd alive (its Lease in the system namespace not expired), each link valid and describing
its target as the target is now (addresses, network, cluster, ports, trust domain), each link's live
state from the conditions peerd writes on it (Connected, Synced), and global services whose ports
conflict between clusters. With --contexts every cluster must link every other.

When a cluster's peerd is not alive its links' state is reported unknown, never OK. The exit status
is 0 only when every check passed. --wait checks again until that is so or --timeout passes.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			contexts, err := k.selected()
			if err != nil {
				return err
			}
			contexts = splitContexts(contexts)
			clusters, err := k.connect(contexts)
			if err != nil {
				return err
			}
			expectPairs := len(clusters) > 1
			var r clusterops.Report
			if wait {
				ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
				defer cancel()
				last := -1
				r = clusterops.WaitHealthy(ctx, clusters, k.cfg, expectPairs, interval, func(r clusterops.Report) {
					// One line per change in the count, so a long wait
					// shows progress without repeating itself.
					if p := r.Problems(); len(p) != last {
						last = len(p)
						fmt.Fprintf(cmd.ErrOrStderr(), "waiting: %d problem(s), first: %s\n", len(p), p[0])
					}
				})
			} else {
				r = clusterops.Check(cmd.Context(), clusters, k.cfg, expectPairs)
			}
			r.Write(cmd.OutOrStdout())
			if f, u := r.Counts(); f+u > 0 {
				return fmt.Errorf("check: %d problem(s)", f+u)
			}
			return nil
		},
	}
	k.register(cmd.Flags())
	cmd.Flags().BoolVar(&wait, "wait", false, "check again until all is well or --timeout passes")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Minute, "how long --wait waits")
	cmd.Flags().DurationVar(&interval, "interval", 2*time.Second, "how often --wait checks")
	return cmd
}
