package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/peerd-mesh/peerd/internal/view"
)

func newViewCommand() *cobra.Command {
	var (
		addr    string
		dial    view.DialOptions
		output  string
		ns      string
		timeout time.Duration
	)
	run := func(kind view.Kind) func(*cobra.Command, []string) error {
		return func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return fmt.Errorf("--output %q: want table or json", output)
			}
			if !dial.TLS && (dial.RootCert != "" || dial.ServerName != "") {
				return errors.New("--root-cert and --server-name apply only with --tls")
			}
			if dial.TLS && dial.RootCert == "" {
				return errors.New("--tls needs --root-cert (the mesh root, e.g. root-cert.pem from `peerd certs`)")
			}
			d := dial
			if d.TLS && d.ServerName == "" {
				// As any TLS client: expect the host we dial in the certificate.
				if host, _, err := net.SplitHostPort(addr); err == nil {
					d.ServerName = host
				}
			}
			var types []string
			switch kind {
			case view.KindServices, view.KindWorkloads:
				types = []string{view.AddressTypeURL}
			case view.KindPolicies:
				types = []string{view.AuthorizationTypeURL}
			}

			ctx := cmd.Context()
			if ctx == nil {
				ctx = context.Background()
			}
			ctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			cc, err := view.Dial(addr, d)
			if err != nil {
				return err
			}
			defer cc.Close()
			snap, err := view.Fetch(ctx, cc, view.FetchOptions{TypeURLs: types})
			if err != nil {
				if d.TLS && dial.ServerName == "" && strings.Contains(err.Error(), "x509") {
					return fmt.Errorf("--addr %s: %w (the certificate was checked for %q, the host of --addr; pass --server-name, e.g. peerd.istio-system.svc)", addr, err, d.ServerName)
				}
				return fmt.Errorf("--addr %s: %w", addr, err)
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
	pf.StringVar(&addr, "addr", "", "peerd's gRPC address, HOST:PORT (its --plaintext-listen, or --listen with --tls)")
	pf.BoolVar(&dial.TLS, "tls", false, "use TLS, verifying peerd against --root-cert only")
	pf.StringVar(&dial.RootCert, "root-cert", "", "PEM file of the mesh root to trust with --tls")
	pf.StringVar(&dial.ServerName, "server-name", "", "name expected in peerd's certificate with --tls (default: the host of --addr), e.g. peerd.istio-system.svc")
	pf.StringVarP(&output, "output", "o", "table", "table or json (protojson of the resources)")
	pf.StringVarP(&ns, "namespace", "n", "", "show only this namespace")
	pf.DurationVar(&timeout, "timeout", 30*time.Second, "give up when the full view has not arrived by then")
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
