package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/peerd-mesh/peerd/internal/view"
)

func newViewCommand() *cobra.Command {
	var (
		server serverFlags
		output string
		ns     string
	)
	run := func(kind view.Kind) func(*cobra.Command, []string) error {
		return func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return fmt.Errorf("--output %q: want table or json", output)
			}
			var types []string
			switch kind {
			case view.KindServices, view.KindWorkloads:
				types = []string{view.AddressTypeURL}
			case view.KindPolicies:
				types = []string{view.AuthorizationTypeURL}
			}
			snap, err := server.snapshot(cmd.Context(), types)
			if err != nil {
				return err
			}

			opts := view.Options{Namespace: ns}
			if output == "json" {
				b, err := view.JSON(kind, snap, opts)
				if err != nil {
					return err
				}
				_, err = cmd.OutOrStdout().Write(b)
				return err
			}
			s, err := view.Table(kind, snap, opts)
			if err != nil {
				return err
			}
			_, err = fmt.Fprint(cmd.OutOrStdout(), s)
			return err
		}
	}

	cmd := &cobra.Command{
		Use:   "view [services|workloads|policies|all]",
		Short: "Show what a ztunnel receives from a running peerd",
		Long: `Connect to peerd as a wildcard ztunnel would (delta xDS for istio.workload.Address
and istio.security.Authorization), take the first full response, ACK it, and print it.

Services show their VIPs as network/ip, ports as service->target/protocol ("named":
resolved per workload), ENDPOINTS as usable/total (usable: HEALTHY with capacity > 0)
and the load-balancing policy. Workloads without an address (a remote cluster's
endpoints) show the east-west gateway they are reached through.

Without a subcommand, everything is shown.`,
		Args: cobra.NoArgs,
		RunE: run(view.KindAll),
	}
	pf := cmd.PersistentFlags()
	server.register(pf)
	pf.StringVarP(&output, "output", "o", "table", "table or json (protojson of the resources)")
	pf.StringVarP(&ns, "namespace", "n", "", "show only this namespace")
	_ = cmd.MarkPersistentFlagRequired("addr")

	for _, sub := range []struct {
		kind  view.Kind
		short string
	}{
		{view.KindServices, "Services: hostname, VIPs, ports, endpoints, load balancing"},
		{view.KindWorkloads, "Workloads: address, node, network, status, protocol, locality"},
		{view.KindPolicies, "Authorization policies: scope, action, rules"},
		{view.KindAll, "Services, workloads and policies"},
	} {
		cmd.AddCommand(&cobra.Command{
			Use:   string(sub.kind),
			Short: sub.short,
			Args:  cobra.NoArgs,
			RunE:  run(sub.kind),
		})
	}
	return cmd
}
