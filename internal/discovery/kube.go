package discovery

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	kubediscovery "k8s.io/client-go/discovery"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	gatewayinformers "sigs.k8s.io/gateway-api/pkg/client/informers/externalversions"
)

// KubeSourceName is the name the Kubernetes source registers in the Index.
const KubeSourceName = "kubernetes"

// gatewayGroupVersion and gatewayResource are what the Gateway CRD serves;
// discovery listing them is how KubeSource knows the CRD is installed.
const (
	gatewayGroupVersion = "gateway.networking.k8s.io/v1"
	gatewayResource     = "gateways"
)

// KubeSource feeds the Index from a Kubernetes API server through client-go
// shared informers: Namespaces, Nodes, Pods, Services, EndpointSlices and,
// when the CRD is installed, Gateway API Gateways.
type KubeSource struct {
	kube      kubernetes.Interface
	gateway   gatewayclient.Interface
	discovery kubediscovery.DiscoveryInterface
	idx       *Index
	log       *zap.Logger

	// discoveryBackoff bounds the retries of the Gateway CRD check while the
	// API server is unreachable: first and maximum delay.
	discoveryBackoff, discoveryBackoffMax time.Duration
	// gatewayRecheck is how often discovery is asked again when the Gateway
	// CRD was missing at start (it is often installed after peerd).
	gatewayRecheck time.Duration
}

// NewKubeSource builds the clients for cfg and registers the source with
// idx, so idx is not Synced until Run has loaded every informer once.
func NewKubeSource(cfg *rest.Config, idx *Index, log *zap.Logger) (*KubeSource, error) {
	if cfg == nil {
		return nil, errors.New("kubernetes source: no rest config")
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes source: client: %w", err)
	}
	gw, err := gatewayclient.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes source: gateway-api client: %w", err)
	}
	return newKubeSource(kube, gw, kube.Discovery(), idx, log), nil
}

// newKubeSource is the seam unit tests use to pass fake clients.
func newKubeSource(kube kubernetes.Interface, gw gatewayclient.Interface, disco kubediscovery.DiscoveryInterface, idx *Index, log *zap.Logger) *KubeSource {
	if log == nil {
		log = zap.NewNop()
	}
	idx.Register(KubeSourceName)
	return &KubeSource{
		kube:                kube,
		gateway:             gw,
		discovery:           disco,
		idx:                 idx,
		log:                 log.With(zap.String("source", KubeSourceName)),
		discoveryBackoff:    100 * time.Millisecond,
		discoveryBackoffMax: 10 * time.Second,
		gatewayRecheck:      30 * time.Second,
	}
}

// Run starts the informers, marks the source synced in the Index once every
// informer's initial list has reached the Index, and then keeps the Index
// current until ctx ends. It returns nil when ctx ends after the sync, and
// ctx's error when it ends before. Run must be called once.
func (s *KubeSource) Run(ctx context.Context) error {
	gatewaysServed, err := s.gatewayCRDInstalled(ctx)
	if err != nil {
		return err
	}

	// No periodic resync: the Index ignores same-version updates anyway, and
	// informers already relist when a watch breaks.
	factory := informers.NewSharedInformerFactoryWithOptions(s.kube, 0, informers.WithTransform(stripForIndex))
	informersToRun := []cache.SharedIndexInformer{
		factory.Core().V1().Namespaces().Informer(),
		factory.Core().V1().Nodes().Informer(),
		factory.Core().V1().Pods().Informer(),
		factory.Core().V1().Services().Informer(),
		factory.Discovery().V1().EndpointSlices().Informer(),
	}
	gwFactory := gatewayinformers.NewSharedInformerFactoryWithOptions(s.gateway, 0, gatewayinformers.WithTransform(stripForIndex))
	if gatewaysServed {
		informersToRun = append(informersToRun, gwFactory.Gateway().V1().Gateways().Informer())
	} else {
		s.log.Warn("the Gateway API CRD is not installed (discovery does not list "+gatewayGroupVersion+" "+gatewayResource+
			"): Gateways are not watched until it is; east-west and remote gateways are unknown until then",
			zap.Duration("recheck_every", s.gatewayRecheck))
	}

	// Sync is judged on the handler registrations, not the informers: an
	// informer is synced once its store holds the initial list, but the
	// Index only holds it once the handler has been called for each item.
	var synced []cache.InformerSynced
	for _, inf := range informersToRun {
		reg, err := inf.AddEventHandler(s.handler())
		if err != nil {
			return fmt.Errorf("kubernetes source: event handler: %w", err)
		}
		synced = append(synced, reg.HasSynced)
	}

	factory.Start(ctx.Done())
	gwFactory.Start(ctx.Done())
	// Shutdown waits for the informer goroutines, so none outlives Run. The
	// late-CRD check runs on Run's own goroutine and ends with ctx, so no
	// informer can start after Shutdown.
	defer gwFactory.Shutdown()
	defer factory.Shutdown()

	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return fmt.Errorf("kubernetes source: initial sync: %w", context.Cause(ctx))
	}
	s.idx.MarkSynced(KubeSourceName)
	s.log.Info("initial sync done", zap.Bool("gateways", gatewaysServed))
	if !gatewaysServed {
		s.watchLateGatewayCRD(ctx, gwFactory)
	}
	<-ctx.Done()
	return nil
}

// watchLateGatewayCRD asks discovery every gatewayRecheck until the Gateway
// CRD is served, then starts the Gateway informer. Its Gateways reach the
// Index as ordinary adds: the source is already synced, and a late CRD
// cannot hold back readiness. It returns when the informer is started or
// ctx ends.
func (s *KubeSource) watchLateGatewayCRD(ctx context.Context, gwFactory gatewayinformers.SharedInformerFactory) {
	ticker := time.NewTicker(s.gatewayRecheck)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		served, err := s.gatewaysServed()
		if err != nil {
			s.log.Debug("discovery of "+gatewayGroupVersion+" failed", zap.Error(err))
			continue
		}
		if !served {
			continue
		}
		if _, err := gwFactory.Gateway().V1().Gateways().Informer().AddEventHandler(s.handler()); err != nil {
			s.log.Error("cannot watch gateways", zap.Error(err))
			return
		}
		gwFactory.Start(ctx.Done())
		s.log.Info("the Gateway API CRD is installed now: watching gateways")
		return
	}
}

// gatewayCRDInstalled asks discovery whether gateways are served. Errors
// other than "not found" (API server not reachable yet) are retried with
// backoff until ctx ends, since the informers could not start either.
func (s *KubeSource) gatewayCRDInstalled(ctx context.Context) (bool, error) {
	delay := s.discoveryBackoff
	for {
		served, err := s.gatewaysServed()
		if err == nil {
			return served, nil
		}
		s.log.Warn("discovery of "+gatewayGroupVersion+" failed; retrying", zap.Error(err), zap.Duration("retry_in", delay))
		timer := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			timer.Stop()
			return false, fmt.Errorf("kubernetes source: discovery of %s: %w (last error: %w)", gatewayGroupVersion, context.Cause(ctx), err)
		case <-timer.C:
		}
		delay = min(2*delay, s.discoveryBackoffMax)
	}
}

// gatewaysServed asks discovery once. A 404 for the group version means the
// CRD is not installed.
func (s *KubeSource) gatewaysServed() (bool, error) {
	list, err := s.discovery.ServerResourcesForGroupVersion(gatewayGroupVersion)
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	for _, r := range list.APIResources {
		if r.Name == gatewayResource {
			return true, nil
		}
	}
	return false, nil
}

// handler feeds informer events into the Index.
func (s *KubeSource) handler() cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) { s.upsert(obj) },
		UpdateFunc: func(_, obj any) {
			s.upsert(obj)
		},
		DeleteFunc: func(obj any) {
			// A delete seen only on relist arrives as a tombstone holding
			// the last state the informer knew.
			if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = tomb.Obj
			}
			ro, ok := obj.(runtime.Object)
			if !ok {
				s.log.Error("delete event without an object", zap.String("type", fmt.Sprintf("%T", obj)))
				return
			}
			if err := s.idx.Delete(KubeSourceName, ro); err != nil {
				s.log.Error("cannot remove object from the index", zap.Error(err))
			}
		},
	}
}

func (s *KubeSource) upsert(obj any) {
	ro, ok := obj.(runtime.Object)
	if !ok {
		s.log.Error("event without an object", zap.String("type", fmt.Sprintf("%T", obj)))
		return
	}
	if err := s.idx.Upsert(KubeSourceName, ro); err != nil {
		s.log.Error("cannot store object in the index", zap.Error(err))
	}
}

// stripForIndex is the informers' transform: it runs before an object
// enters the informer's store, so neither the store nor the Index ever holds
// the fields peerd does not read.
func stripForIndex(obj any) (any, error) {
	if ro, ok := obj.(runtime.Object); ok {
		return Strip(ro), nil
	}
	return obj, nil
}
