package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/peerd-mesh/peerd/internal/clusterops"
	"github.com/peerd-mesh/peerd/internal/kubeyaml"
)

// pairFlags select the links of link and unlink: --contexts (every ordered
// pair) or --from/--to (one way).
type pairFlags struct {
	kubeFlags
	from, to string
}

func (p *pairFlags) register(cmd *cobra.Command) {
	p.kubeFlags.register(cmd.Flags())
	cmd.Flags().StringVar(&p.from, "from", "", "context that gets the link (with --to)")
	cmd.Flags().StringVar(&p.to, "to", "", "context the link describes (with --from)")
}

func (p *pairFlags) pairs() ([]clusterops.Pair, error) {
	switch {
	case (p.from == "") != (p.to == ""):
		return nil, fmt.Errorf("--from and --to go together")
	case p.from != "" && (len(p.contexts) > 0 || p.context != ""):
		return nil, fmt.Errorf("--from/--to and --context(s): give one")
	case p.from != "":
		if p.from == p.to {
			return nil, fmt.Errorf("--from and --to are both %q: a cluster is not linked to itself", p.from)
		}
		clusters, err := p.connect([]string{p.from, p.to})
		if err != nil {
			return nil, err
		}
		return []clusterops.Pair{{From: clusters[0], To: clusters[1]}}, nil
	}
	contexts := splitContexts(p.contexts)
	if len(contexts) < 2 {
		return nil, fmt.Errorf("name the clusters: --contexts a,b[,c...] (every pair, both ways) or --from a --to b")
	}
	clusters, err := p.connect(contexts)
	if err != nil {
		return nil, err
	}
	return clusterops.AllPairs(clusters), nil
}

func newLinkCommand() *cobra.Command {
	var (
		p        pairFlags
		generate bool
	)
	cmd := &cobra.Command{
		Use:   "link",
		Short: "Link clusters: write in each an istio-remote Gateway describing the others",
		Long: `link writes, in a source cluster, the istio-remote Gateway that describes a target cluster:
the target east-west gateway's addresses (from its status) and listener ports, the target's network,
cluster id, trust domain (its mesh config), gateway service account and region/zone.

  peerd link --contexts a,b,c           every pair, both ways
  peerd link --from a --to b            a links b (one way)
  peerd link --generate --context b | kubectl apply -f - --context a

Every target is read first: a target without an east-west gateway, without an address yet or
without a network label is an error naming it, and then nothing is written. link is idempotent and
says what it created or updated.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if generate {
				if p.from != "" || p.to != "" || len(p.contexts) > 0 {
					return fmt.Errorf("--generate describes one cluster: use --context (the target), not --from/--to/--contexts")
				}
				contexts, _ := p.selected()
				clusters, err := p.connect(contexts)
				if err != nil {
					return err
				}
				gw, err := clusterops.Describe(cmd.Context(), clusters[0], p.cfg)
				if err != nil {
					return err
				}
				out, err := kubeyaml.Marshal(gw)
				if err != nil {
					return err
				}
				_, err = cmd.OutOrStdout().Write(out)
				return err
			}
			pairs, err := p.pairs()
			if err != nil {
				return err
			}
			changes, err := clusterops.Link(cmd.Context(), pairs, p.cfg)
			printChanges(cmd.OutOrStdout(), changes)
			return err
		},
	}
	p.register(cmd)
	cmd.Flags().BoolVar(&generate, "generate", false, "print the link describing --context as YAML, for the other side to apply")
	return cmd
}
