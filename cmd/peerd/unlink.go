package main

import (
	"github.com/spf13/cobra"

	"github.com/peerd-mesh/peerd/internal/clusterops"
)

func newUnlinkCommand() *cobra.Command {
	var p pairFlags
	cmd := &cobra.Command{
		Use:   "unlink",
		Short: "Remove the links between clusters (their istio-remote Gateways)",
		Long: `unlink deletes, in a source cluster, the link Gateways (class istio-remote) that name the
target's cluster id; no other Gateway is touched. Selectors as for link:

  peerd unlink --contexts a,b,c         every pair, both ways
  peerd unlink --from a --to b          a's link to b only`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pairs, err := p.pairs()
			if err != nil {
				return err
			}
			changes, err := clusterops.Unlink(cmd.Context(), pairs, p.cfg)
			printChanges(cmd.OutOrStdout(), changes)
			return err
		},
	}
	p.register(cmd)
	return cmd
}
