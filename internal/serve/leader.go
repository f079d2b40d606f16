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
	// maxStandDown caps how long a replica whose term ended because its
	// status writes kept failing stays out of the election: leaseDuration,
	// doubling with each such term in a row.
	maxStandDown = 2 * time.Minute
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
	// returned, so two terms' writers never overlap. A non-nil error says
	// the writer cannot write: the replica then releases the Lease and
	// stays out of the election for a while. probation is set for the
	// term after such a one.
	lead func(ctx context.Context, probation bool) error

	// leading is set and cleared by the goroutine that runs the terms, so
	// it is true exactly while a term's writer runs.
	leading atomic.Bool
	// holder is the identity that holds the Lease as last observed.
	holder atomic.Pointer[string]
	// standDownUntil (Unix nanoseconds, 0: not standing down) is when a
	// replica that gave the Lease up stands for it again.
	standDownUntil atomic.Int64
	stepDowns      prometheus.Counter
}

// term is one tenure of the Lease: ctx ends with it, and stepDown ends it
// from this side (the elector then releases the Lease).
type term struct {
	ctx      context.Context
	stepDown context.CancelFunc
}

func newLeader(kube kubernetes.Interface, namespace, identity string, lead func(context.Context, bool) error, log *zap.Logger, reg prometheus.Registerer) (*leader, error) {
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
		stepDowns: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "peerd_leader_stepdowns_total",
			Help: "Times this replica gave the peerd Lease up because its writes of the links' live state kept failing for longer than the lease duration.",
		}),
	}
	reg.MustRegister(l.stepDowns)
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
	// and does not wait for it). It alone sets leading, so the gauge cannot
	// be left at 1 by a short term's callbacks running out of order.
	terms := make(chan term)
	// steppedDown carries, from a term that gave the Lease up, to the
	// election loop that it must stand down before trying again.
	steppedDown := make(chan struct{}, 1)
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		probation := false
		for {
			select {
			case t := <-terms:
				l.leading.Store(true)
				l.log.Info("holding the Lease: this replica writes the links' live state into the API", zap.Bool("probation", probation))
				err := l.lead(t.ctx, probation)
				l.leading.Store(false)
				probation = err != nil
				if err == nil {
					l.log.Info("the Lease is no longer held by this replica: it stops writing live state (and keeps serving)")
					continue
				}
				l.stepDowns.Inc()
				l.log.Error("giving the Lease up: the links' conditions this replica wrote can no longer be kept current, "+
					"and `peerd check` trusts them while the Lease is held (this replica keeps serving)", zap.Error(err))
				select {
				case steppedDown <- struct{}{}:
				default:
				}
				t.stepDown()
			case <-ctx.Done():
				return
			}
		}
	}()
	defer func() { <-writerDone }()
	standDowns := 0
	for ctx.Err() == nil {
		select {
		case <-steppedDown:
			wait := min(leaseDuration<<min(standDowns, 4), maxStandDown)
			standDowns++
			l.standDownUntil.Store(time.Now().Add(wait).UnixNano())
			l.log.Warn("standing down from the election after giving the Lease up", zap.Duration("for", wait))
			select {
			case <-time.After(wait):
			case <-ctx.Done():
			}
			l.standDownUntil.Store(0)
			if ctx.Err() != nil {
				return
			}
		default:
			standDowns = 0
		}
		electCtx, stepDown := context.WithCancel(ctx)
		elector, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock:            l.lock,
			Name:            kubestate.LeaseName,
			LeaseDuration:   leaseDuration,
			RenewDeadline:   leaseRenewDeadline,
			RetryPeriod:     leaseRetryPeriod,
			ReleaseOnCancel: true,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(ctx context.Context) {
					select {
					case terms <- term{ctx: ctx, stepDown: stepDown}:
					case <-ctx.Done():
					}
				},
				// leading is the term goroutine's to clear.
				OnStoppedLeading: func() {},
				OnNewLeader: func(id string) {
					l.holder.Store(&id)
					if id != l.identity {
						l.log.Info("another replica holds the Lease", zap.String("holder", id))
					}
				},
			},
		})
		if err != nil {
			stepDown()
			// Only the constants above can make the configuration invalid.
			l.log.Error("leader election cannot start: live state is not written", zap.Error(err))
			return
		}
		elector.Run(electCtx)
		stepDown()
	}
}

// readiness is /readyz's line about the Lease (it never makes peerd
// unready: serving does not depend on it).
func (l *leader) readiness() string {
	lease := l.namespace + "/" + kubestate.LeaseName
	if l.leading.Load() {
		return fmt.Sprintf("status writer: this replica (%s) holds the Lease %s and writes the links' live state", l.identity, lease)
	}
	if until := l.standDownUntil.Load(); until != 0 {
		return fmt.Sprintf("status writer: this replica (%s) gave the Lease %s up because its status writes kept failing (see the log); it stands for it again at %s",
			l.identity, lease, time.Unix(0, until).UTC().Format(time.RFC3339))
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
