package kubeharness

import (
	"fmt"
	"sort"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// MergedKubeconfig writes one kubeconfig file at path with a context per
// cluster, named by the map's keys (cluster, user and context all take
// that name), as an operator's merged kubeconfig holds several clusters.
// The current context is the first name in sorted order, so a command run
// without --context has a definite target.
func MergedKubeconfig(path string, contexts map[string]*Cluster) error {
	if len(contexts) == 0 {
		return fmt.Errorf("kubeconfig %s: no clusters", path)
	}
	cfg := clientcmdapi.NewConfig()
	names := make([]string, 0, len(contexts))
	for name, c := range contexts {
		if c == nil || c.Config == nil {
			return fmt.Errorf("kubeconfig %s: context %q: cluster not started", path, name)
		}
		cfg.Clusters[name] = &clientcmdapi.Cluster{Server: c.Config.Host, CertificateAuthorityData: c.Config.CAData}
		cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{Token: c.Config.BearerToken}
		cfg.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: name}
		names = append(names, name)
	}
	sort.Strings(names)
	cfg.CurrentContext = names[0]
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	return nil
}
