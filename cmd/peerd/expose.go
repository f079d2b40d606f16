package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/peerd-mesh/peerd/internal/clusterops"
	"github.com/peerd-mesh/peerd/internal/kubeyaml"
)

func newExposeCommand() *cobra.Command {
	var (
		k         kubeFlags
		generate  bool
		clusterID string
	)
	cmd := &cobra.Command{
		Use:   "expose",
		Short: "Create the cluster's east-west Gateway (class istio-eastwest), or print it with --generate",
		Long: `expose creates or updates the east-west Gateway that other clusters reach this one through:
class istio-eastwest, istiod's port 15012 exposed, the system namespace's network label, and the
cross-network (15008, HBONE) and xds-tls (15012, TLS) passthrough listeners. It says whether it
created, updated (and what) or left the Gateway unchanged. It needs the system namespace's
topology.istio.io/network label and writes nothing without it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			contexts, err := k.selected()
			if err != nil {
				return err
			}
			if clusterID != "" && len(contexts) > 1 {
				return fmt.Errorf("--cluster names one cluster: use it with --context")
			}
			clusters, err := k.connect(splitContexts(contexts))
			if err != nil {
				return err
			}
			if generate {
				var objs []any
				for _, c := range clusters {
					gw, err := clusterops.DesiredEastWest(cmd.Context(), c, k.cfg, clusterID)
					if err != nil {
						return err
					}
					objs = append(objs, gw)
				}
				out, err := kubeyaml.Marshal(objs...)
				if err != nil {
					return err
				}
				_, err = cmd.OutOrStdout().Write(out)
				return err
			}
			for _, c := range clusters {
				ch, err := clusterops.Expose(cmd.Context(), c, k.cfg, clusterID)
				if err != nil {
					return err
				}
				printChanges(cmd.OutOrStdout(), []clusterops.Change{ch})
			}
			return nil
		},
	}
	k.register(cmd.Flags())
	cmd.Flags().BoolVar(&generate, "generate", false, "print the Gateway as YAML instead of applying it")
	cmd.Flags().StringVar(&clusterID, "cluster", "", "cluster id to label the Gateway with (topology.istio.io/cluster; default: links use the network)")
	return cmd
}
