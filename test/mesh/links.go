package mesh

import (
	"fmt"
	"strings"
)

// LinkOptions change what a link Gateway says about its target, for the
// scenarios where the operator wrote it wrong or the target is not who it
// claims to be. Zero values describe the target truthfully.
type LinkOptions struct {
	// TrustDomain replaces the gateway.istio.io/trust-domain annotation.
	TrustDomain string
	// Address replaces spec.addresses[0] (default 127.0.0.1) and Port the
	// xds-tls listener's port (default the target's relay), e.g. to point
	// the link at a stand-in peer.
	Address string
	Port    int
}

// LinkFile is the config-dir file that holds the link to target.
func LinkFile(target *Cluster) string { return "90-link-" + target.Name + ".yaml" }

// Link writes the istio-remote Gateway that links c to target (one way):
// the target's network, cluster, locality, trust domain and gateway
// service account, its relay as the address. Writing it again replaces it.
func (c *Cluster) Link(target *Cluster, o LinkOptions) error {
	if err := c.WriteManifest(LinkFile(target), LinkGateway(target, o)); err != nil {
		return fmt.Errorf("mesh: link %s -> %s: %w", c.Name, target.Name, err)
	}
	return nil
}

// Unlink removes the link from c to target.
func (c *Cluster) Unlink(target *Cluster) error { return c.RemoveManifest(LinkFile(target)) }

// LinkGateway is the istio-remote Gateway describing target, as `peerd link`
// writes it into the source cluster (the operator's guide, "Linking
// clusters"), pointing at target's relay.
func LinkGateway(target *Cluster, o LinkOptions) string {
	td := target.TrustDomain
	if o.TrustDomain != "" {
		td = o.TrustDomain
	}
	addr := "127.0.0.1"
	if o.Address != "" {
		addr = o.Address
	}
	port := o.Port
	if port == 0 {
		port = target.Relay.Port()
	}
	var locality strings.Builder
	if target.Region != "" {
		fmt.Fprintf(&locality, "    topology.kubernetes.io/region: %s\n", target.Region)
	}
	if target.Zone != "" {
		fmt.Fprintf(&locality, "    topology.kubernetes.io/zone: %s\n", target.Zone)
	}
	return fmt.Sprintf(`# Link to %[1]s: its east-west gateway (here the harness's relay).
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: %[1]s
  namespace: %[2]s
  labels:
    topology.istio.io/network: %[3]s
    topology.istio.io/cluster: %[1]s
%[4]s  annotations:
    gateway.istio.io/trust-domain: %[5]s
    gateway.istio.io/service-account: %[6]s
spec:
  gatewayClassName: istio-remote
  addresses:
  - type: IPAddress
    value: %[7]s
  listeners:
  - name: cross-network
    port: 15008
    protocol: HBONE
    tls:
      mode: Passthrough
  - name: xds-tls
    port: %[8]d
    protocol: TLS
    tls:
      mode: Passthrough
`, target.Name, LinkNamespace, target.Network, locality.String(), td, GatewayServiceAccount, addr, port)
}
