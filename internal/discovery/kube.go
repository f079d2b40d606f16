package discovery

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"sync"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/apimachinery/pkg/watch"
	kubediscovery "k8s.io/client-go/discovery"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
)

// KubeSourceName is the name the Kubernetes source registers in the Index.
const KubeSourceName = "kubernetes"

// discoverySubject names, in the Index's errors, the API discovery call made
// before the informers start.
const discoverySubject = "api discovery of " + gatewayGroupVersion

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
//
// While a list or watch fails, the Index holds an error for that resource
// saying why (forbidden, unauthorized, unreachable), so /readyz shows it; it
// is cleared by the next list or watch that succeeds.
func (s *KubeSource) Run(ctx context.Context) error {
	// Informer goroutines end with ctx; waiting for them means none outlives
	// Run. The late-CRD check runs on Run's own goroutine and ends with ctx,
	// so no informer can start after this wait.
	var running sync.WaitGroup
	defer running.Wait()
	start := func(inf cache.SharedIndexInformer) { running.Go(func() { inf.RunWithContext(ctx) }) }

	gatewaysServed, err := s.gatewayCRDInstalled(ctx)
	if err != nil {
		return err
	}

	namespaces := s.kube.CoreV1().Namespaces()
	nodes := s.kube.CoreV1().Nodes()
	pods := s.kube.CoreV1().Pods(metav1.NamespaceAll)
	services := s.kube.CoreV1().Services(metav1.NamespaceAll)
	slices := s.kube.DiscoveryV1().EndpointSlices(metav1.NamespaceAll)
	informersToRun := []cache.SharedIndexInformer{
		s.newInformer("namespaces", &corev1.Namespace{}, s.kube, listOf(namespaces.List), namespaces.Watch),
		s.newInformer("nodes", &corev1.Node{}, s.kube, listOf(nodes.List), nodes.Watch),
		s.newInformer("pods", &corev1.Pod{}, s.kube, listOf(pods.List), pods.Watch),
		s.newInformer("services", &corev1.Service{}, s.kube, listOf(services.List), services.Watch),
		s.newInformer("endpointslices", &discoveryv1.EndpointSlice{}, s.kube, listOf(slices.List), slices.Watch),
	}
	if gatewaysServed {
		informersToRun = append(informersToRun, s.gatewayInformer())
	} else {
		s.log.Warn("the Gateway API CRD is not installed (discovery does not list "+gatewayGroupVersion+" "+gatewayResource+
			"): Gateways are not watched until it is; east-west and remote gateways are unknown until then",
			zap.Duration("recheck_every", s.gatewayRecheck))
		s.idx.SetError(KubeSourceName, gatewayResource, fmt.Errorf("kubernetes source: %s: the Gateway API CRD is not installed "+
			"(discovery does not list %s %s): Gateways are not watched until it is (rechecked every %s)",
			gatewayResource, gatewayGroupVersion, gatewayResource, s.gatewayRecheck))
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
	for _, inf := range informersToRun {
		start(inf)
	}

	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return fmt.Errorf("kubernetes source: initial sync: %w", context.Cause(ctx))
	}
	s.idx.MarkSynced(KubeSourceName)
	s.log.Info("initial sync done", zap.Bool("gateways", gatewaysServed))
	if !gatewaysServed {
		s.watchLateGatewayCRD(ctx, start)
	}
	<-ctx.Done()
	return nil
}

func (s *KubeSource) gatewayInformer() cache.SharedIndexInformer {
	gateways := s.gateway.GatewayV1().Gateways(metav1.NamespaceAll)
	return s.newInformer(gatewayResource, &gatewayv1.Gateway{}, s.gateway, listOf(gateways.List), gateways.Watch)
}

// listOf adapts a typed List method to the untyped one cache.ListWatch takes.
func listOf[L runtime.Object](list func(context.Context, metav1.ListOptions) (L, error)) func(context.Context, metav1.ListOptions) (runtime.Object, error) {
	return func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
		return list(ctx, opts)
	}
}

// newInformer builds the informer of one resource. Its list and watch calls
// report their outcome to the Index (an error naming resource and verb, or
// clearing it), and its watch error handler logs through peerd's logger
// instead of klog. client tells client-go whether the clientset supports
// watch-list streaming (fake clientsets do not).
func (s *KubeSource) newInformer(resource string, example runtime.Object, client any,
	list func(context.Context, metav1.ListOptions) (runtime.Object, error),
	watchFn func(context.Context, metav1.ListOptions) (watch.Interface, error),
) cache.SharedIndexInformer {
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
			obj, err := list(ctx, opts)
			s.trackListWatch(ctx, resource, "list", err)
			return obj, err
		},
		WatchFuncWithContext: func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
			w, err := watchFn(ctx, opts)
			s.trackListWatch(ctx, resource, "watch", err)
			return w, err
		},
	}
	// No periodic resync: the Index ignores same-version updates anyway, and
	// informers already relist when a watch breaks.
	inf := cache.NewSharedIndexInformerWithOptions(cache.ToListWatcherWithWatchListSemantics(lw, client), example,
		cache.SharedIndexInformerOptions{ObjectDescription: resource})
	// Both fail only once the informer has started, which it has not.
	_ = inf.SetTransform(stripForIndex)
	_ = inf.SetWatchErrorHandlerWithContext(func(ctx context.Context, _ *cache.Reflector, err error) {
		s.watchFailed(ctx, resource, err)
	})
	return inf
}

// trackListWatch records the outcome of one list or watch call: an error
// explaining the failure, or, on success, the end of any earlier one.
func (s *KubeSource) trackListWatch(ctx context.Context, resource, verb string, err error) {
	if err != nil && ctx.Err() != nil {
		return // shutting down: not a problem worth reporting
	}
	if err == nil {
		s.idx.SetError(KubeSourceName, resource, nil)
		return
	}
	s.idx.SetError(KubeSourceName, resource, explainAPIError(resource, verb, err))
}

// watchFailed is the informers' watch error handler: the reflector calls it
// whenever a list or watch ends with an error, then retries with backoff.
// It replaces client-go's default, which logs through klog. A watch that
// expired or closed is routine; other errors are logged. It records nothing:
// the failed call has already put its explanation, with the right verb, in
// the Index (an error event inside an open watch ends it, and the call that
// follows reports).
func (s *KubeSource) watchFailed(ctx context.Context, resource string, err error) {
	if ctx.Err() != nil || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		apierrors.IsResourceExpired(err) || apierrors.IsGone(err) {
		return
	}
	s.log.Warn("list/watch failed; retrying with backoff", zap.String("resource", resource), zap.Error(err))
}

// explainAPIError says why a call to the API server failed in the terms an
// operator acts on: RBAC (which verb on which resource to grant),
// credentials, or the network path to the API server.
func explainAPIError(resource, verb string, err error) error {
	switch {
	case apierrors.IsForbidden(err):
		return fmt.Errorf("kubernetes source: %s: forbidden: the API server does not let peerd %s %s "+
			"(grant get, list and watch on %s cluster-wide to peerd's service account): %w", resource, verb, resource, resource, err)
	case apierrors.IsUnauthorized(err):
		return fmt.Errorf("kubernetes source: %s: unauthorized: the API server rejected peerd's credentials "+
			"when it tried to %s %s: %w", resource, verb, resource, err)
	case isUnreachable(err):
		return fmt.Errorf("kubernetes source: %s: unreachable: cannot %s %s, the API server cannot be reached "+
			"(connection or TLS failure): %w", resource, verb, resource, err)
	default:
		return fmt.Errorf("kubernetes source: %s: %s failed: %w", resource, verb, err)
	}
}

// isUnreachable: the request never got an HTTP answer. client-go's transport
// errors are *url.Error (refused, reset, DNS, timeouts, TLS handshake and
// certificate failures); API errors are status errors and never match.
func isUnreachable(err error) bool {
	var urlErr *url.Error
	var netErr net.Error
	return errors.As(err, &urlErr) || errors.As(err, &netErr) || utilnet.IsConnectionRefused(err)
}

// watchLateGatewayCRD asks discovery every gatewayRecheck until the Gateway
// CRD is served, then starts the Gateway informer. Its Gateways reach the
// Index as ordinary adds: the source is already synced, and a late CRD
// cannot hold back readiness. It returns when the informer is started or
// ctx ends.
func (s *KubeSource) watchLateGatewayCRD(ctx context.Context, start func(cache.SharedIndexInformer)) {
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
		inf := s.gatewayInformer()
		if _, err := inf.AddEventHandler(s.handler()); err != nil {
			s.log.Error("cannot watch gateways", zap.Error(err))
			return
		}
		s.idx.SetError(KubeSourceName, gatewayResource, nil)
		start(inf)
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
			s.idx.SetError(KubeSourceName, discoverySubject, nil)
			return served, nil
		}
		s.idx.SetError(KubeSourceName, discoverySubject, explainAPIError(discoverySubject, "get", err))
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
