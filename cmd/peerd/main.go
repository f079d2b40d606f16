// Command peerd links Istio ambient-mesh clusters into one mesh and serves
// ztunnel the merged view over delta xDS. See docs and `peerd --help`.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRootCommand().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "peerd:", err)
		os.Exit(1)
	}
}

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "peerd",
		Short:         "Link Istio ambient clusters into one mesh and serve ztunnel over delta xDS",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(
		newServeCommand(),
		newCertsCommand(),
		newViewCommand(),
		newExplainCommand(),
		newExposeCommand(),
		newLinkCommand(),
		newUnlinkCommand(),
		newCheckCommand(),
		&cobra.Command{
			Use:   "version",
			Short: "Print peerd's version",
			Run:   func(cmd *cobra.Command, _ []string) { fmt.Fprintln(cmd.OutOrStdout(), version) },
		},
	)
	return root
}
