package mesh

import (
	"fmt"

	"github.com/peerd-mesh/peerd/internal/federation"
	"github.com/peerd-mesh/peerd/internal/kubeyaml"
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
// writes it into the source cluster (federation.RenderLink, the one writer
// of link Gateways), pointing at target's relay. It is named for target.
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
	gw := federation.RenderLink(federation.Link{
		Gateway:        LinkNamespace + "/" + target.Name,
		Namespace:      LinkNamespace,
		Cluster:        target.Name,
		Network:        target.Network,
		TrustDomain:    td,
		ServiceAccount: GatewayServiceAccount,
		Addresses:      []string{addr},
		XDSPort:        uint32(port),
		HBONEPort:      federation.DefaultHBONEPort,
		Region:         target.Region,
		Zone:           target.Zone,
	})
	b, err := kubeyaml.Marshal(gw)
	if err != nil {
		// A Gateway built from strings and numbers always marshals.
		panic(fmt.Sprintf("mesh: link to %s: %v", target.Name, err))
	}
	return "# Link to " + target.Name + ": its east-west gateway (here the harness's relay).\n" + string(b)
}
