package clusterops

import (
	"context"
	"errors"
	"fmt"
	"strings"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"

	"github.com/peerd-mesh/peerd/internal/federation"
	"github.com/peerd-mesh/peerd/internal/kubestate"
)

// LabelGatewayName is set by Istio's gateway controller on the pods of the
// Gateway it deploys.
const LabelGatewayName = "gateway.networking.k8s.io/gateway-name"

// Snapshot is what one cluster holds that the operations read. Nil or
// empty means absent.
type Snapshot struct {
	Context string
	// Err: the cluster could not be read at all; nothing else is set.
	Err error

	Config Config
	// SystemNamespace is nil when it does not exist.
	SystemNamespace *corev1.Namespace
	// MeshConfig is the `mesh` key of the istio ConfigMap ("" when absent).
	MeshConfig string
	// Gateways are the Gateways of Config.Namespace (every class).
	Gateways []gatewayv1.Gateway
	// GatewayPods are the pods in Config.Namespace that Istio deployed for
	// a Gateway (label LabelGatewayName).
	GatewayPods []corev1.Pod

	// The rest only for check (Observe with full).
	Lease      *coordinationv1.Lease
	Namespaces []corev1.Namespace
	Services   []corev1.Service
}

// Observe reads a cluster. With full, also peerd's Lease, every Namespace
// and every Service (what check needs). A failed read other than "not
// found" is the Snapshot's Err.
func Observe(ctx context.Context, c *Cluster, cfg Config, full bool) Snapshot {
	cfg = cfg.withDefaults()
	s := Snapshot{Context: c.Context, Config: cfg}
	fail := func(what string, err error) Snapshot {
		return Snapshot{Context: c.Context, Config: cfg, Err: fmt.Errorf("context %s: %s: %w", c.Context, what, err)}
	}
	ns, err := c.Kube.CoreV1().Namespaces().Get(ctx, cfg.SystemNamespace, metav1.GetOptions{})
	switch {
	case err == nil:
		s.SystemNamespace = ns
	case !apierrors.IsNotFound(err):
		return fail("namespace "+cfg.SystemNamespace, err)
	}
	cm, err := c.Kube.CoreV1().ConfigMaps(cfg.SystemNamespace).Get(ctx, MeshConfigMap, metav1.GetOptions{})
	switch {
	case err == nil:
		s.MeshConfig = cm.Data[MeshConfigKey]
	case !apierrors.IsNotFound(err):
		return fail("configmap "+cfg.SystemNamespace+"/"+MeshConfigMap, err)
	}
	gws, err := c.Gateway.GatewayV1().Gateways(cfg.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return fail("gateways in "+cfg.Namespace, err)
	}
	s.Gateways = gws.Items
	pods, err := c.Kube.CoreV1().Pods(cfg.Namespace).List(ctx, metav1.ListOptions{LabelSelector: LabelGatewayName})
	if err != nil {
		return fail("pods in "+cfg.Namespace, err)
	}
	s.GatewayPods = pods.Items
	if !full {
		return s
	}
	lease, err := c.Kube.CoordinationV1().Leases(cfg.SystemNamespace).Get(ctx, kubestate.LeaseName, metav1.GetOptions{})
	switch {
	case err == nil:
		s.Lease = lease
	case !apierrors.IsNotFound(err):
		return fail("lease "+cfg.SystemNamespace+"/"+kubestate.LeaseName, err)
	}
	nss, err := c.Kube.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fail("namespaces", err)
	}
	s.Namespaces = nss.Items
	svcs, err := c.Kube.CoreV1().Services(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return fail("services", err)
	}
	s.Services = svcs.Items
	return s
}

// Network is the system namespace's network label ("" when absent).
func (s *Snapshot) Network() string {
	if s.SystemNamespace == nil {
		return ""
	}
	return s.SystemNamespace.Labels[federation.LabelNetwork]
}

// TrustDomain is the mesh config's trustDomain, else cluster.local, as
// istiod defaults it.
func (s *Snapshot) TrustDomain() (string, error) {
	var mc struct {
		TrustDomain string `json:"trustDomain"`
	}
	if err := yaml.Unmarshal([]byte(s.MeshConfig), &mc); err != nil {
		return "", fmt.Errorf("context %s: configmap %s/%s: data[%s]: %w", s.Context, s.Config.SystemNamespace, MeshConfigMap, MeshConfigKey, err)
	}
	if mc.TrustDomain == "" {
		return federation.DefaultTrustDomain, nil
	}
	return mc.TrustDomain, nil
}

// Links are the Gateways of class istio-remote.
func (s *Snapshot) Links() []*gatewayv1.Gateway {
	var out []*gatewayv1.Gateway
	for i := range s.Gateways {
		if federation.IsRemote(&s.Gateways[i]) {
			out = append(out, &s.Gateways[i])
		}
	}
	return out
}

// EastWest is the cluster's east-west Gateway: the one of class
// istio-eastwest, or among several the one named Config.EastWestName. The
// error says what is missing and how to fix it.
func (s *Snapshot) EastWest() (*gatewayv1.Gateway, error) {
	var found []*gatewayv1.Gateway
	for i := range s.Gateways {
		if string(s.Gateways[i].Spec.GatewayClassName) == federation.ClassEastWest {
			found = append(found, &s.Gateways[i])
		}
	}
	switch len(found) {
	case 0:
		return nil, fmt.Errorf("context %s: no east-west Gateway (class %s) in namespace %s; create it: %s",
			s.Context, federation.ClassEastWest, s.Config.Namespace, s.exposeFix())
	case 1:
		return found[0], nil
	}
	var names []string
	for _, gw := range found {
		if gw.Name == s.Config.EastWestName {
			return gw, nil
		}
		names = append(names, gw.Name)
	}
	return nil, fmt.Errorf("context %s: %d east-west Gateways (class %s) in namespace %s (%s) and none named %s: name the one to use with --eastwest-name",
		s.Context, len(found), federation.ClassEastWest, s.Config.Namespace, strings.Join(names, ", "), s.Config.EastWestName)
}

func (s *Snapshot) exposeFix() string {
	return fmt.Sprintf("peerd expose --context %s --namespace %s", s.Context, s.Config.Namespace)
}

// ClusterID is how links name this cluster: topology.istio.io/cluster on
// its east-west Gateway, else its network.
func (s *Snapshot) ClusterID() string {
	if gw, err := s.EastWest(); err == nil && gw.Labels[federation.LabelCluster] != "" {
		return gw.Labels[federation.LabelCluster]
	}
	return s.Network()
}

// ServiceAccount is the east-west gateway's service account, what a link
// names so the linking cluster knows the gateway's identity. In order:
// the Gateway's gateway.istio.io/service-account annotation (which Istio's
// gateway controller itself obeys); the service account of the pods Istio
// deployed for it, when they agree; else the name Istio's controller gives
// the deployment it creates for a Gateway, "<name>-<class>".
func (s *Snapshot) ServiceAccount(gw *gatewayv1.Gateway) string {
	if sa := gw.Annotations[federation.AnnotationServiceAccount]; sa != "" {
		return sa
	}
	sas := map[string]bool{}
	for _, p := range s.GatewayPods {
		if p.Labels[LabelGatewayName] == gw.Name && p.Spec.ServiceAccountName != "" {
			sas[p.Spec.ServiceAccountName] = true
		}
	}
	if len(sas) == 1 {
		for sa := range sas {
			return sa
		}
	}
	return gw.Name + "-" + string(gw.Spec.GatewayClassName)
}

// TargetLink is the link that describes this cluster to another one: its
// east-west gateway's status addresses and listener ports, its network,
// cluster, trust domain, gateway service account and locality; the link
// Gateway lives in Config.Namespace under federation.LinkName. The error
// names the context and everything missing, each with its fix.
func (s *Snapshot) TargetLink() (federation.Link, error) {
	if s.Err != nil {
		return federation.Link{}, s.Err
	}
	var errs []error
	network := s.Network()
	if s.SystemNamespace == nil {
		errs = append(errs, fmt.Errorf("context %s: namespace %s does not exist: is Istio installed? (--system-namespace names another)", s.Context, s.Config.SystemNamespace))
	} else if network == "" {
		errs = append(errs, fmt.Errorf("context %s: namespace %s has no label %s; add it: %s",
			s.Context, s.Config.SystemNamespace, federation.LabelNetwork, labelNetworkFix(s.Context, s.Config.SystemNamespace)))
	}
	td, err := s.TrustDomain()
	if err != nil {
		errs = append(errs, err)
	}
	l := federation.Link{Namespace: s.Config.Namespace, Network: network, TrustDomain: td}
	gw, err := s.EastWest()
	if err != nil {
		errs = append(errs, err)
	} else {
		ref := fmt.Sprintf("context %s: gateway %s/%s", s.Context, gw.Namespace, gw.Name)
		for _, a := range gw.Status.Addresses {
			l.Addresses = append(l.Addresses, a.Value)
		}
		if len(l.Addresses) == 0 {
			errs = append(errs, fmt.Errorf("%s: status.addresses: none yet: its gateway controller has not given it an address (a LoadBalancer Service waiting for an IP?)", ref))
		}
		l.HBONEPort = federation.DefaultHBONEPort
		for _, lis := range gw.Spec.Listeners {
			switch string(lis.Name) {
			case federation.ListenerXDS:
				l.XDSPort = uint32(lis.Port)
			case federation.ListenerHBONE:
				l.HBONEPort = uint32(lis.Port)
			}
		}
		if l.XDSPort == 0 {
			errs = append(errs, fmt.Errorf("%s: spec.listeners: no %q listener: peerd is reached through it; fix: %s", ref, federation.ListenerXDS, s.exposeFix()))
		}
		l.Cluster = gw.Labels[federation.LabelCluster]
		l.ServiceAccount = s.ServiceAccount(gw)
		l.Region, l.Zone = gw.Labels[federation.LabelRegion], gw.Labels[federation.LabelZone]
	}
	if l.Cluster == "" {
		l.Cluster = network
	}
	if err := errors.Join(errs...); err != nil {
		return federation.Link{}, err
	}
	l.Gateway = l.Namespace + "/" + federation.LinkName(l.Cluster)
	return l, nil
}
