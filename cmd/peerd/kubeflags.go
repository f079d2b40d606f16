package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/pflag"

	"github.com/peerd-mesh/peerd/internal/clusterops"
)

// kubeFlags are the kubeconfig and namespace flags the cluster commands
// share, spelled as kubectl's.
type kubeFlags struct {
	kubeconfig string
	context    string
	contexts   []string
	cfg        clusterops.Config
}

func (k *kubeFlags) register(f *pflag.FlagSet) {
	f.StringVar(&k.kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)")
	f.StringVar(&k.context, "context", "", "kubeconfig context (default: the current one)")
	f.StringSliceVar(&k.contexts, "contexts", nil, "kubeconfig contexts, comma-separated: one cluster each")
	f.StringVar(&k.cfg.SystemNamespace, "system-namespace", clusterops.DefaultSystemNamespace,
		"Istio's namespace: the network label, the mesh config and peerd's Lease")
	f.StringVarP(&k.cfg.Namespace, "namespace", "n", clusterops.DefaultNamespace, "namespace of the east-west and link Gateways")
	f.StringVar(&k.cfg.EastWestName, "eastwest-name", clusterops.DefaultEastWestName, "name of the east-west Gateway")
}

// selected is --contexts, else --context (else the current context).
func (k *kubeFlags) selected() ([]string, error) {
	if len(k.contexts) > 0 && k.context != "" {
		return nil, fmt.Errorf("--context and --contexts: give one")
	}
	if len(k.contexts) > 0 {
		return k.contexts, nil
	}
	if k.context != "" {
		return []string{k.context}, nil
	}
	return nil, nil
}

func (k *kubeFlags) connect(contexts []string) ([]*clusterops.Cluster, error) {
	return clusterops.Connect(k.kubeconfig, contexts)
}

func printChanges(w io.Writer, changes []clusterops.Change) {
	for _, c := range changes {
		fmt.Fprintln(w, c.String())
	}
}

// splitContexts trims the names of a comma-separated flag value.
func splitContexts(list []string) []string {
	var out []string
	for _, c := range list {
		if c = strings.TrimSpace(c); c != "" {
			out = append(out, c)
		}
	}
	return out
}
