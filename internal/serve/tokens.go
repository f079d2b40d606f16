package serve

import (
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"k8s.io/client-go/kubernetes"

	"github.com/peerd-mesh/peerd/internal/authz"
)

// ztunnelAuthentication returns what checks ztunnel's bearer tokens on the
// TLS listener: the TokenReview API in Kubernetes mode; nil (no check) in
// file mode, which has no API server, and without --listen. What is not
// authenticated is said at start-up, and for the file-mode TLS listener on
// /readyz and a gauge as well.
func ztunnelAuthentication(opts Options, kube kubernetes.Interface, st *status, log *zap.Logger, reg prometheus.Registerer) *authz.TokenAuthenticator {
	if opts.PlaintextListen != "" {
		log.Warn("--plaintext-listen is unauthenticated by design: every client that reaches it gets ztunnel's view of the mesh (addresses, identities, nodes) without a certificate or token; bind it to loopback or a trusted network only",
			zap.String("plaintext_listen", opts.PlaintextListen))
	}
	if opts.Listen == "" {
		return nil
	}
	if kube == nil {
		st.clientAuthMissing.Store(true)
		log.Warn("no ztunnel authentication on --listen in file mode: there is no API server to review ztunnel's service-account token with, so any client that reaches the address gets ztunnel's view of the mesh (addresses, identities, nodes); peers still need a peerd certificate under the mesh root; reach it only from trusted networks",
			zap.String("listen", opts.Listen))
		return nil
	}
	log.Info("ztunnel authentication on --listen: clients of ztunnel's types must send a service-account token, reviewed with the TokenReview API; peers authenticate by certificate",
		zap.String("listen", opts.Listen), zap.Strings("token_audiences", opts.TokenAudiences))
	return authz.NewTokenAuthenticator(authz.KubeTokenReviewer{Client: kube}, authz.TokenOptions{
		Audiences:  opts.TokenAudiences,
		Logger:     log.Named("tokens"),
		Registerer: reg,
	})
}
