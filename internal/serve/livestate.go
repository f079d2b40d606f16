package serve

import (
	"context"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/peerd-mesh/peerd/internal/discovery"
	"github.com/peerd-mesh/peerd/internal/discovery/peers"
)

// liveStateStopTimeout bounds how long a stopping peerd waits for the Lease
// to be released (an unreachable API server would otherwise hold it up for
// the renew deadline).
const liveStateStopTimeout = 5 * time.Second

// startLiveState starts, in Kubernetes mode (cfg set), the election of the
// replica that writes the links' live state into their Gateways, and that
// writer while this replica leads. It ends when ctx does, which Run ties to
// the signal, so that a stopping peerd releases the Lease before it drains:
// another replica then takes over the writing at once. stop ends it early
// (Run failed) and waits for the release. In file mode it does nothing and
// returns a nil leader.
func startLiveState(ctx context.Context, opts Options, cfg *rest.Config, kube kubernetes.Interface, links *peers.Manager,
	index *discovery.Index, log *zap.Logger, reg prometheus.Registerer) (l *leader, stop func(), err error) {
	if cfg == nil {
		return nil, func() {}, nil
	}
	gateways, err := gatewayclient.NewForConfig(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("gateway-api client: %w", err)
	}
	log = log.Named("livestate")
	writer := newLinkStatusWriter(links.Status, indexGateway(index), gateways, log, reg)
	identity := opts.PodName
	if identity == "" {
		identity = defaultPodName()
	}
	l, err = newLeader(kube, opts.SystemNamespace, identity, writer.run, log, reg)
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.run(ctx)
	}()
	return l, func() {
		cancel()
		select {
		case <-done:
		case <-time.After(liveStateStopTimeout):
			log.Warn("the Lease was not released in time; another replica takes over once it expires",
				zap.Duration("waited", liveStateStopTimeout), zap.Duration("lease_duration", leaseDuration))
		}
	}, nil
}
