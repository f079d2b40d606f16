package clusterops

import (
	"context"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/peerd-mesh/peerd/internal/federation"
)

// DefaultXDSPort is the xds-tls listener's port: istiod's, which the
// east-west gateway passes through to peerd.
const DefaultXDSPort = 15012

// EastWest describes the east-west Gateway expose writes.
type EastWest struct {
	Namespace, Name string
	// Network is the cluster's network (the system namespace's label).
	Network string
	// Cluster, when set, is written as topology.istio.io/cluster: the id
	// links use for this cluster instead of the network.
	Cluster string
}

// EastWestGateway is the east-west Gateway of the operator's guide: class
// istio-eastwest, istiod's port exposed, the network label, and the
// cross-network (HBONE) and xds-tls listeners, both TLS passthrough.
func EastWestGateway(e EastWest) *gatewayv1.Gateway {
	labels := map[string]string{
		LabelExposeIstiod:       fmt.Sprint(DefaultXDSPort),
		federation.LabelNetwork: e.Network,
	}
	if e.Cluster != "" {
		labels[federation.LabelCluster] = e.Cluster
	}
	return &gatewayv1.Gateway{
		TypeMeta:   metav1.TypeMeta{APIVersion: gatewayv1.GroupVersion.String(), Kind: "Gateway"},
		ObjectMeta: metav1.ObjectMeta{Namespace: e.Namespace, Name: e.Name, Labels: labels},
		Spec: gatewayv1.GatewaySpec{
			GatewayClassName: federation.ClassEastWest,
			Listeners: []gatewayv1.Listener{
				federation.PassthroughListener(federation.ListenerHBONE, federation.DefaultHBONEPort, federation.ProtocolHBONE),
				federation.PassthroughListener(federation.ListenerXDS, DefaultXDSPort, gatewayv1.TLSProtocolType),
			},
		},
	}
}

// DesiredEastWest reads the cluster's network and returns its east-west
// Gateway. clusterID may be empty (the network is the id).
func DesiredEastWest(ctx context.Context, c *Cluster, cfg Config, clusterID string) (*gatewayv1.Gateway, error) {
	cfg = cfg.withDefaults()
	network, err := c.network(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return EastWestGateway(EastWest{Namespace: cfg.Namespace, Name: cfg.EastWestName, Network: network, Cluster: clusterID}), nil
}

// Expose creates or updates the cluster's east-west Gateway. Without the
// network label it writes nothing.
func Expose(ctx context.Context, c *Cluster, cfg Config, clusterID string) (Change, error) {
	cfg = cfg.withDefaults()
	want, err := DesiredEastWest(ctx, c, cfg, clusterID)
	if err != nil {
		return Change{}, err
	}
	if err := c.requireNamespace(ctx, cfg.Namespace); err != nil {
		return Change{}, err
	}
	own := owned{labels: []string{LabelExposeIstiod, federation.LabelNetwork}}
	if clusterID != "" {
		// Without --cluster the label is the operator's: left as found.
		own.labels = append(own.labels, federation.LabelCluster)
	}
	return applyGateway(ctx, c.Context, c.Gateway.GatewayV1().Gateways(cfg.Namespace), want, own)
}

// requireNamespace fails, naming the fix, when ns does not exist: the
// gateways' namespace is the operator's (it carries their policies), so
// peerd does not create it.
func (c *Cluster) requireNamespace(ctx context.Context, ns string) error {
	if _, err := c.Kube.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); err != nil {
		return fmt.Errorf("context %s: namespace %s: %w; create it: kubectl --context %s create namespace %s", c.Context, ns, err, c.Context, ns)
	}
	return nil
}
