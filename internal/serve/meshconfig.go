package serve

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"
	meshv1alpha1 "istio.io/api/mesh/v1alpha1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/kubernetes"

	"github.com/peerd-mesh/peerd/internal/meshconfig"
)

// meshConfigRetryMax caps the wait between attempts to read the ConfigMap
// while the API server does not answer.
const meshConfigRetryMax = 30 * time.Second

// loadMeshConfig takes, in Kubernetes mode, the settings peerd shares with
// istiod from where istiod keeps them: the mesh config in the ConfigMap
// opts.MeshConfigMap of the system namespace. Its trustDomain is used
// unless --trust-domain was given (opts.TrustDomainFromFlag). It is read
// once, at start, before peerd's certificate is minted: a change needs a
// restart of peerd (as a new trust domain does of istiod and every
// workload).
//
// A missing ConfigMap, or one without the key, leaves the flags' values (a
// mesh installed without one runs on istiod's defaults, which the flags'
// defaults match). A ConfigMap that cannot be parsed is an error: peerd must
// not start under a guessed trust domain, minting certificates its peers
// reject. Anything else (the API server does not answer, RBAC forbids the
// read) is retried until ctx ends, with the reason in /readyz (st), as the
// sources do: an operator fixes the RBAC and peerd carries on.
func loadMeshConfig(ctx context.Context, kube kubernetes.Interface, opts *Options, st *status, log *zap.Logger) error {
	name := opts.SystemNamespace + "/" + opts.MeshConfigMap
	log = log.With(zap.String("configmap", name))
	configMaps := kube.CoreV1().ConfigMaps(opts.SystemNamespace)
	defer st.setMeshConfigWait("")
	delay := time.Second
	for {
		mc, err := meshconfig.Get(ctx, configMaps, opts.SystemNamespace, opts.MeshConfigMap)
		switch {
		case err == nil && mc == nil:
			log.Warn("no mesh config (the ConfigMap or its key "+meshconfig.Key+" is missing): using the flags' values",
				zap.String("trust_domain", opts.TrustDomain))
			return nil
		case err == nil:
			applyMeshConfig(opts, mc, log)
			return nil
		case errors.Is(err, meshconfig.ErrInvalid):
			return fmt.Errorf("--mesh-configmap: %w (fix it, or point --mesh-configmap at the ConfigMap istiod reads)", err)
		case apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err):
			err = fmt.Errorf("%w (peerd needs get on configmaps %s in %s; or pass --mesh-configmap=\"\" and --trust-domain)",
				err, opts.MeshConfigMap, opts.SystemNamespace)
		}
		st.setMeshConfigWait(fmt.Sprintf("mesh config: waiting to read configmap %s (peerd's certificate names its trust domain): %v", name, err))
		log.Warn("cannot read the mesh config yet; retrying", zap.Duration("retry_in", delay), zap.Error(err))
		select {
		case <-ctx.Done():
			return fmt.Errorf("--mesh-configmap: %w", errors.Join(ctx.Err(), err))
		case <-time.After(delay):
		}
		delay = min(2*delay, meshConfigRetryMax)
	}
}

// applyMeshConfig sets what opts takes from the mesh config: the trust
// domain, unless --trust-domain was given. The root namespace is only
// logged: peerd reads no mesh-wide policy from it (yet).
func applyMeshConfig(opts *Options, mc *meshv1alpha1.MeshConfig, log *zap.Logger) {
	switch td := mc.GetTrustDomain(); {
	case td == "":
	case opts.TrustDomainFromFlag:
		if td != opts.TrustDomain {
			log.Warn("--trust-domain overrides the mesh config's trustDomain", zap.String("flag", opts.TrustDomain), zap.String("mesh_config", td))
		}
	default:
		opts.TrustDomain = td
	}
	log.Info("mesh config read (a change needs a restart of peerd)",
		zap.String("trust_domain", opts.TrustDomain), zap.String("root_namespace", mc.GetRootNamespace()))
}
