package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/peerd-mesh/peerd/internal/certs"
)

func newCertsCommand() *cobra.Command {
	var (
		out      string
		clusters []string
		force    bool
		keyType  string
	)
	cmd := &cobra.Command{
		Use:   "certs --out DIR --clusters a,b,c",
		Short: "Write a shared root CA and one intermediate per cluster, in Istio's cacerts layout (demos and tests)",
		Long: `Write a self-signed root CA (DIR/root-cert.pem, DIR/root-key.pem) and, per cluster,
an intermediate CA signed by it in DIR/<cluster>/: root-cert.pem, ca-cert.pem,
ca-key.pem and cert-chain.pem, the files istiod reads from its "cacerts" secret
and peerd reads with --ca-dir. Existing files are never overwritten without --force.

The paths written are printed on stdout, one per line.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			alg, err := keyAlgorithm(keyType)
			if err != nil {
				return err
			}
			written, err := certs.GenerateMesh(out, clusters, certs.MeshOptions{Algorithm: alg, Force: force})
			for _, f := range written {
				fmt.Fprintln(cmd.OutOrStdout(), f)
			}
			if errors.Is(err, certs.ErrExists) {
				return fmt.Errorf("%w (pass --force to replace it, and with it the whole mesh's root)", err)
			}
			if err != nil {
				return err
			}
			for _, c := range clusters {
				fmt.Fprintf(cmd.ErrOrStderr(), "cluster %s: kubectl create secret generic cacerts -n istio-system --from-file=%s\n",
					c, filepath.Join(out, c))
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&out, "out", "", "directory to write into (created if missing)")
	f.StringSliceVar(&clusters, "clusters", nil, "cluster names, comma-separated; one intermediate CA each")
	f.BoolVar(&force, "force", false, "overwrite existing files; this makes a new root, so intermediates of clusters not listed no longer chain to DIR/root-cert.pem")
	f.StringVar(&keyType, "key-type", "ecdsa", "key type of the root and intermediates: ecdsa (P-256) or rsa (2048 bits)")
	_ = cmd.MarkFlagRequired("out")
	_ = cmd.MarkFlagRequired("clusters")
	return cmd
}

func keyAlgorithm(s string) (certs.KeyAlgorithm, error) {
	switch strings.ToLower(s) {
	case "ecdsa", string(certs.ECDSAP256):
		return certs.ECDSAP256, nil
	case "rsa", string(certs.RSA2048):
		return certs.RSA2048, nil
	}
	return "", fmt.Errorf("--key-type %q: want ecdsa or rsa", s)
}
