package serve

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"github.com/peerd-mesh/peerd/internal/kubestate"
)

// The Lease timings. The holder renews every leaseRetryPeriod, so a Lease
// whose renewTime+leaseDurationSeconds lies in the future says that some
// peerd is alive (`peerd check` reads it that way); a replica that dies
// without releasing it is replaced after at most leaseDuration.
const (
	leaseDuration      = 15 * time.Second
	leaseRenewDeadline = 10 * time.Second
	leaseRetryPeriod   = 2 * time.Second
)

// podNameEnv is where the pod's name comes from when --pod-name is not set
// (the chart sets it from the downward API).
const podNameEnv = "POD_NAME"

// defaultPodName is the identity peerd holds the Lease under: $POD_NAME,
// else the hostname (a pod's hostname is its name unless spec.hostname is
// set). Two replicas must never share it: both would think they lead.
func defaultPodName() string {
	if name := os.Getenv(podNameEnv); name != "" {
		return name
	}
	name, _ := os.Hostname()
	return name
}

// leader elects, among peerd's replicas, the one that writes live state into
// the API (the Lease kubestate.LeaseName in the system namespace). Only
// status writing depends on it: every replica serves whether or not it
// leads, and a replica that loses the Lease tries again until ctx ends.
type leader struct {
	identity  string
	namespace string
	lock      resourcelock.Interface
	log       *zap.Logger
	// lead runs while this replica holds the Lease; its ctx ends when the
	// Lease is lost or peerd stops. The next term starts only after it
	// returned, so two terms' writers never overlap.
	lead func(ctx context.Context)

	leading atomic.Bool
	// holder is the identity that holds the Lease as last observed.
	holder atomic.Pointer[string]
}

func newLeader(kube kubernetes.Interface, namespace, identity string, lead func(context.Context), log *zap.Logger, reg prometheus.Registerer) (*leader, error) {
	if identity == "" {
		return nil, fmt.Errorf("--pod-name is empty (and $%s is not set, and there is no hostname): the Lease %s/%s needs a holder identity",
			podNameEnv, namespace, kubestate.LeaseName)
	}
	l := &leader{
		identity:  identity,
		namespace: namespace,
		lock: &resourcelock.LeaseLock{
			LeaseMeta:  metav1.ObjectMeta{Name: kubestate.LeaseName, Namespace: namespace},
			Client:     kube.CoordinationV1(),
			LockConfig: resourcelock.ResourceLockConfig{Identity: identity},
			Labels:     map[string]string{kubestate.ManagedByLabel: kubestate.ManagedBy},
		},
		log:  log.With(zap.String("lease", namespace+"/"+kubestate.LeaseName), zap.String("identity", identity)),
		lead: lead,
	}
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "peerd_leader",
		Help: "1 while this replica holds the peerd Lease and writes the links' live state into the API, 0 otherwise.",
	}, func() float64 {
		if l.leading.Load() {
			return 1
		}
		return 0
	}))
	return l, nil
}

// run takes part in the election until ctx ends. At the end a held Lease is
// released (ReleaseOnCancel), so another replica takes over at its next try
// instead of after the Lease expires, and `peerd check` sees at once that
// this one stopped.
func (l *leader) run(ctx context.Context) {
	// One goroutine runs the terms one after the other, so that a new
	// term's writer never starts while the last one is still finishing a
	// request (the elector starts OnStartedLeading on a goroutine of its own
	// and does not wait for it).
	terms := make(chan context.Context)
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		for {
			select {
			case term := <-terms:
				l.lead(term)
			case <-ctx.Done():
				return
			}
		}
	}()
	defer func() { <-writerDone }()
	for ctx.Err() == nil {
		elector, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock:            l.lock,
			Name:            kubestate.LeaseName,
			LeaseDuration:   leaseDuration,
			RenewDeadline:   leaseRenewDeadline,
			RetryPeriod:     leaseRetryPeriod,
			ReleaseOnCancel: true,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(term context.Context) {
					l.leading.Store(true)
					l.log.Info("holding the Lease: this replica writes the links' live state into the API")
					select {
					case terms <- term:
					case <-term.Done():
					}
				},
				OnStoppedLeading: func() {
					if l.leading.Swap(false) {
						l.log.Info("the Lease is no longer held by this replica: it stops writing live state (and keeps serving)")
					}
				},
				OnNewLeader: func(id string) {
					l.holder.Store(&id)
					if id != l.identity {
						l.log.Info("another replica holds the Lease", zap.String("holder", id))
					}
				},
			},
		})
		if err != nil {
			// Only the constants above can make the configuration invalid.
			l.log.Error("leader election cannot start: live state is not written", zap.Error(err))
			return
		}
		elector.Run(ctx)
	}
}

// readiness is /readyz's line about the Lease (it never makes peerd
// unready: serving does not depend on it).
func (l *leader) readiness() string {
	lease := l.namespace + "/" + kubestate.LeaseName
	if l.leading.Load() {
		return fmt.Sprintf("status writer: this replica (%s) holds the Lease %s and writes the links' live state", l.identity, lease)
	}
	holder := ""
	if h := l.holder.Load(); h != nil {
		holder = *h
	}
	if holder == "" || holder == l.identity {
		return fmt.Sprintf("status writer: this replica (%s) is trying to acquire the Lease %s", l.identity, lease)
	}
	return fmt.Sprintf("status writer: the Lease %s is held by %s; this replica (%s) stands by", lease, holder, l.identity)
}
