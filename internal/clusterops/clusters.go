package clusterops

import (
	"context"
	"fmt"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/peerd-mesh/peerd/internal/federation"
)

// Defaults of the namespaces, as in the operator's guide.
const (
	DefaultSystemNamespace = "istio-system"
	DefaultNamespace       = "istio-gateways"
	// DefaultEastWestName is the east-west Gateway's name.
	DefaultEastWestName = "istio-eastwest"
	// LabelExposeIstiod asks the east-west gateway to pass the port to
	// istiod (here: peerd's xDS).
	LabelExposeIstiod = "istio.io/expose-istiod"
	// MeshConfigMap and MeshConfigKey hold istiod's mesh config in the
	// system namespace.
	MeshConfigMap = "istio"
	MeshConfigKey = "mesh"
)

// Config names where the objects are.
type Config struct {
	// SystemNamespace carries the network label, the mesh config and
	// peerd's Lease.
	SystemNamespace string
	// Namespace holds the east-west Gateway and the link Gateways.
	Namespace string
	// EastWestName is the east-west Gateway that expose writes; when
	// reading, a lone Gateway of class istio-eastwest is used whatever its
	// name.
	EastWestName string
}

func (c Config) withDefaults() Config {
	if c.SystemNamespace == "" {
		c.SystemNamespace = DefaultSystemNamespace
	}
	if c.Namespace == "" {
		c.Namespace = DefaultNamespace
	}
	if c.EastWestName == "" {
		c.EastWestName = DefaultEastWestName
	}
	return c
}

// Cluster is one kubeconfig context and its clients.
type Cluster struct {
	// Context is the kubeconfig context's name: how every message names
	// the cluster, since that is what the operator typed.
	Context string
	Kube    kubernetes.Interface
	Gateway gatewayclient.Interface
}

// NewCluster builds the clients of one context from a rest config.
func NewCluster(context string, cfg *rest.Config) (*Cluster, error) {
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("context %s: %w", context, err)
	}
	gw, err := gatewayclient.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("context %s: %w", context, err)
	}
	return &Cluster{Context: context, Kube: kube, Gateway: gw}, nil
}

// Connect opens the given contexts of a kubeconfig as kubectl does:
// kubeconfig is the file (empty: $KUBECONFIG, else ~/.kube/config), and
// no contexts means the current one. Contexts are checked to exist before
// any is used, and a context named twice is an error.
func Connect(kubeconfig string, contexts []string) ([]*Cluster, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	raw, err := rules.Load()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	if len(contexts) == 0 {
		if raw.CurrentContext == "" {
			return nil, fmt.Errorf("kubeconfig: no current context; name one with --context")
		}
		contexts = []string{raw.CurrentContext}
	}
	seen := map[string]bool{}
	for _, name := range contexts {
		if _, ok := raw.Contexts[name]; !ok {
			return nil, fmt.Errorf("kubeconfig: no context %q (have: %s)", name, strings.Join(contextNames(raw.Contexts), ", "))
		}
		if seen[name] {
			return nil, fmt.Errorf("context %q named twice", name)
		}
		seen[name] = true
	}
	var out []*Cluster
	for _, name := range contexts {
		cfg, err := clientcmd.NewNonInteractiveClientConfig(*raw, name, &clientcmd.ConfigOverrides{}, rules).ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("context %s: %w", name, err)
		}
		c, err := NewCluster(name, cfg)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

func contextNames[V any](m map[string]V) []string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sortStrings(names)
	return names
}

// network reads the system namespace's network label. The error says the
// command that adds it.
func (c *Cluster) network(ctx context.Context, cfg Config) (string, error) {
	ns, err := c.Kube.CoreV1().Namespaces().Get(ctx, cfg.SystemNamespace, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", fmt.Errorf("context %s: namespace %s does not exist: is Istio installed? (--system-namespace names another)", c.Context, cfg.SystemNamespace)
	}
	if err != nil {
		return "", fmt.Errorf("context %s: namespace %s: %w", c.Context, cfg.SystemNamespace, err)
	}
	if n := ns.Labels[federation.LabelNetwork]; n != "" {
		return n, nil
	}
	return "", fmt.Errorf("context %s: namespace %s has no label %s; add it: %s", c.Context, cfg.SystemNamespace,
		federation.LabelNetwork, labelNetworkFix(c.Context, cfg.SystemNamespace))
}

func labelNetworkFix(context, ns string) string {
	return fmt.Sprintf("kubectl --context %s label namespace %s %s=<network>", context, ns, federation.LabelNetwork)
}
