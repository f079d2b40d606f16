package serve

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/peerd-mesh/peerd/internal/authz"
)

// The TokenReview client's own rate limit. client-go limits each client
// (5 QPS, burst 10 by default), and the limit is shared by everything that
// uses the client: with one client, informer relists and status writes
// would delay ztunnels' reviews past their timeout, and a flood of tokens
// would delay those writes. 100/s reviews a 500-node ztunnel rollout in
// about 5 s (authz's MaxReviews, 64, bounds the calls in flight); the API
// server's own priority and fairness still protects it from peerd.
const (
	tokenReviewQPS   = 100
	tokenReviewBurst = 200
)

// ztunnelAuthentication returns what checks ztunnel's bearer tokens on the
// TLS listener: the TokenReview API through a client of its own over
// kubeCfg in Kubernetes mode; nil (no check) in file mode (kubeCfg nil),
// which has no API server, and without --listen. What is not authenticated
// is said at start-up, and for the file-mode TLS listener on /readyz and a
// gauge as well.
func ztunnelAuthentication(opts Options, kubeCfg *rest.Config, st *status, log *zap.Logger, reg prometheus.Registerer) (*authz.TokenAuthenticator, error) {
	if opts.PlaintextListen != "" {
		log.Warn("--plaintext-listen is unauthenticated by design: every client that reaches it gets ztunnel's view of the mesh (addresses, identities, nodes) without a certificate or token; bind it to loopback or a trusted network only",
			zap.String("plaintext_listen", opts.PlaintextListen))
	}
	if opts.Listen == "" {
		return nil, nil
	}
	if kubeCfg == nil {
		st.clientAuthMissing.Store(true)
		log.Warn("no ztunnel authentication on --listen in file mode: there is no API server to review ztunnel's service-account token with, so any client that reaches the address gets ztunnel's view of the mesh (addresses, identities, nodes); peers still need a peerd certificate under the mesh root; reach it only from trusted networks",
			zap.String("listen", opts.Listen))
		return nil, nil
	}
	client, err := tokenReviewClient(kubeCfg)
	if err != nil {
		return nil, err
	}
	log.Info("ztunnel authentication on --listen: clients of ztunnel's types must send a service-account token, reviewed with the TokenReview API; peers authenticate by certificate",
		zap.String("listen", opts.Listen), zap.Strings("token_audiences", opts.TokenAudiences))
	return authz.NewTokenAuthenticator(authz.KubeTokenReviewer{Client: client}, authz.TokenOptions{
		Audiences:  opts.TokenAudiences,
		Logger:     log.Named("tokens"),
		Registerer: reg,
	}), nil
}

// tokenReviewClient is a client over a copy of cfg with the TokenReview
// rate limit; cfg itself is left as it is for the other clients.
func tokenReviewClient(cfg *rest.Config) (kubernetes.Interface, error) {
	cfg = rest.CopyConfig(cfg)
	cfg.QPS, cfg.Burst = tokenReviewQPS, tokenReviewBurst
	// A RateLimiter set on cfg would override QPS and Burst.
	cfg.RateLimiter = nil
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client for TokenReviews: %w", err)
	}
	return client, nil
}
