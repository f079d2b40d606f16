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

// LoadMeshConfig takes, in Kubernetes mode, the settings peerd shares with
// istiod from where istiod keeps them: the mesh config in the ConfigMap
// opts.MeshConfigMap of the system namespace. Its trustDomain is used
// unless --trust-domain was given (explicit reports whether a flag was set
// on the command line). It is read once, at start: a change needs a restart
// of peerd (as a new trust domain does of istiod and every workload).
//
// A missing ConfigMap, or one without the key, leaves the flags' values (a
// mesh installed without one runs on istiod's defaults, which the flags'
// defaults match). A ConfigMap that cannot be parsed is an error: peerd must
// not start under a guessed trust domain, minting certificates its peers
// reject. While the API server does not answer, LoadMeshConfig retries
// until ctx ends; an answer such as Forbidden is an error.
func LoadMeshConfig(ctx context.Context, opts *Options, explicit func(flag string) bool, log *zap.Logger) error {
	if opts.ConfigDir != "" || opts.MeshConfigMap == "" {
		return nil
	}
	// A flag mistake is reported at once, not after a wait for the API.
	if err := opts.Validate(); err != nil {
		return err
	}
	cfg, err := kubeConfig(opts.Kubeconfig)
	if err != nil {
		return err
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	return loadMeshConfig(ctx, kube, opts, explicit, log)
}

func loadMeshConfig(ctx context.Context, kube kubernetes.Interface, opts *Options, explicit func(string) bool, log *zap.Logger) error {
	log = log.With(zap.String("configmap", opts.SystemNamespace+"/"+opts.MeshConfigMap))
	configMaps := kube.CoreV1().ConfigMaps(opts.SystemNamespace)
	delay := time.Second
	for {
		mc, err := meshconfig.Get(ctx, configMaps, opts.SystemNamespace, opts.MeshConfigMap)
		switch {
		case err == nil && mc == nil:
			log.Warn("no mesh config (the ConfigMap or its key "+meshconfig.Key+" is missing): using the flags' values",
				zap.String("trust_domain", opts.TrustDomain))
			return nil
		case err == nil:
			applyMeshConfig(opts, mc, explicit, log)
			return nil
		case errors.Is(err, meshconfig.ErrInvalid):
			return fmt.Errorf("--mesh-configmap: %w (fix it, or point --mesh-configmap at the ConfigMap istiod reads)", err)
		case !transient(err):
			return fmt.Errorf("--mesh-configmap: %w (peerd needs get on configmaps in %s)", err, opts.SystemNamespace)
		}
		log.Warn("cannot read the mesh config yet; retrying", zap.Duration("retry_in", delay), zap.Error(err))
		select {
		case <-ctx.Done():
			return fmt.Errorf("--mesh-configmap: %w", errors.Join(ctx.Err(), err))
		case <-time.After(delay):
		}
		delay = min(2*delay, meshConfigRetryMax)
	}
}

// transient reports whether a failed read is worth retrying: the API
// server did not answer, or answered that it cannot now.
func transient(err error) bool {
	var status apierrors.APIStatus
	return !errors.As(err, &status) || apierrors.IsTimeout(err) || apierrors.IsServerTimeout(err) ||
		apierrors.IsTooManyRequests(err) || apierrors.IsInternalError(err) || apierrors.IsServiceUnavailable(err)
}

// applyMeshConfig sets what opts takes from the mesh config: the trust
// domain, unless --trust-domain was given. The root namespace is only
// logged: peerd reads no mesh-wide policy from it (yet).
func applyMeshConfig(opts *Options, mc *meshv1alpha1.MeshConfig, explicit func(string) bool, log *zap.Logger) {
	switch td := mc.GetTrustDomain(); {
	case td == "":
	case explicit("trust-domain"):
		if td != opts.TrustDomain {
			log.Warn("--trust-domain overrides the mesh config's trustDomain", zap.String("flag", opts.TrustDomain), zap.String("mesh_config", td))
		}
	default:
		opts.TrustDomain = td
	}
	log.Info("mesh config read (a change needs a restart of peerd)",
		zap.String("trust_domain", opts.TrustDomain), zap.String("root_namespace", mc.GetRootNamespace()))
}
