package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/peerd-mesh/peerd/internal/explain"
	"github.com/peerd-mesh/peerd/internal/view"
)

func newExplainCommand() *cobra.Command {
	var (
		server  serverFlags
		output  string
		service string
		port    uint32
		node    string
		from    explain.Client // the locality flags
	)
	cmd := &cobra.Command{
		Use:   "explain --addr HOST:PORT --service SERVICE (--node NAME | --network NET [--region R --zone Z])",
		Short: "Show where a ztunnel would send a client's traffic for a service, and why",
		Long: `Take what a ztunnel receives from a running peerd (as peerd view does) and rank the
service's endpoints for one client exactly as ztunnel's load balancer does: candidates
(HEALTHY, or any with health policy ALLOW_ALL; an endpoint without an address only from
another network, through its network_gateway), the rank by the service's routing
preference (STRICT drops what does not match every scope), the top rank group, and the
capacity-weighted pick. Every endpoint is listed with its rank, its probability of being
picked, and the reason.

--service is namespace/hostname, a VIP (network/ip, or an IP on the client's network), or a
hostname (resolved as ztunnel's DNS proxy would: only VIPs on the client's network count).

The client is a workload on --node (its network, locality and cluster are read from the
workloads peerd serves for that node, as ztunnel ranks against its own workload's), or
is described by --network, --region, --zone, --subzone, --cluster. Flags given with
--node override what the node says.

Exits non-zero when the service is unknown or no endpoint would be picked ("no healthy
upstream"); the table is still printed in the second case.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return fmt.Errorf("--output %q: want table or json", output)
			}
			flags := cmd.Flags()
			if node == "" && !flags.Changed("network") {
				return errors.New("say where the client runs: --node NAME, or --network NET (with --region, --zone, --subzone as needed; the default network is --network '')")
			}
			snap, err := server.snapshot(cmd.Context(), []string{view.AddressTypeURL})
			if err != nil {
				return err
			}
			state := explain.NewState(snap.Addresses)

			client := explain.Client{Node: node}
			if node != "" {
				client, err = state.ClientOnNode(node)
				if err != nil && !flags.Changed("network") {
					return fmt.Errorf("--node: %w (describe the client with --network, --region and --zone instead)", err)
				}
				client.Node = node
			}
			override := func(flag string, dst *string, v string) {
				if flags.Changed(flag) {
					*dst = v
				}
			}
			override("network", &client.Network, from.Network)
			override("region", &client.Locality.Region, from.Locality.Region)
			override("zone", &client.Locality.Zone, from.Locality.Zone)
			override("subzone", &client.Locality.Subzone, from.Locality.Subzone)
			override("cluster", &client.Cluster, from.Cluster)
			override("client-namespace", &client.Namespace, from.Namespace)

			r, err := explain.Explain(state, explain.Query{Service: service, Client: client, Port: port})
			if (err != nil && !errors.Is(err, explain.ErrNoHealthyUpstream)) || r.Service == "" {
				return err
			}
			if output == "json" {
				b, jerr := explain.JSON(r)
				if jerr != nil {
					return jerr
				}
				if _, werr := cmd.OutOrStdout().Write(b); werr != nil {
					return werr
				}
			} else if _, werr := fmt.Fprint(cmd.OutOrStdout(), explain.Table(r)); werr != nil {
				return werr
			}
			return err
		},
	}
	f := cmd.Flags()
	server.register(f)
	f.StringVarP(&output, "output", "o", "table", "table or json")
	f.StringVar(&service, "service", "", "the service: namespace/hostname, a VIP (network/ip or ip), or a hostname")
	f.Uint32Var(&port, "port", 0, "a service port: also apply ztunnel's per-port checks (0: the service as a whole)")
	f.StringVar(&node, "node", "", "the client runs on this node: network, locality and cluster from the workloads served for it")
	f.StringVar(&from.Network, "network", "", "the client's network")
	f.StringVar(&from.Locality.Region, "region", "", "the client's region")
	f.StringVar(&from.Locality.Zone, "zone", "", "the client's zone")
	f.StringVar(&from.Locality.Subzone, "subzone", "", "the client's subzone")
	f.StringVar(&from.Cluster, "cluster", "", "the client's cluster (default with --node: the node's workloads'; otherwise Kubernetes, as ztunnel)")
	f.StringVar(&from.Namespace, "client-namespace", "", "the client's namespace: preferred when services share a VIP or hostname")
	_ = cmd.MarkFlagRequired("addr")
	_ = cmd.MarkFlagRequired("service")
	return cmd
}
