package serve

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/time/rate"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	"k8s.io/utils/clock"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayac "sigs.k8s.io/gateway-api/applyconfiguration/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/peerd-mesh/peerd/internal/discovery"
	"github.com/peerd-mesh/peerd/internal/discovery/peers"
	"github.com/peerd-mesh/peerd/internal/federation"
)

// statusFieldManager owns peerd's conditions on the link Gateways. The
// writes are server-side applies of exactly those conditions on the status
// subresource, so the conditions of any other manager (istiod's Accepted
// and Programmed) are never touched, and a condition type peerd stops
// writing would be removed from the object with its ownership.
const statusFieldManager = "peerd"

// The pacing of the live-state writes. A change of a condition is written
// at the next poll; a change of the last message's time only (a synced
// link's every update) at most every linkHeartbeatInterval per Gateway, so
// a busy peer does not turn into a write per update. The global limit
// bounds what a flapping mesh of many links costs the API server; writes
// over it wait for the next poll.
const (
	linkStatusPoll        = time.Second
	linkHeartbeatInterval = 30 * time.Second
	linkStatusWriteRate   = 10 // per second, over all Gateways
	linkStatusWriteBurst  = 20
	// linkStatusResync re-applies unchanged conditions now and then: a
	// writer that replaces the whole status (not through server-side
	// apply) may have dropped them, and the writer never reads them back.
	linkStatusResync = 10 * time.Minute
	// linkStatusRetryMax caps the backoff after a failed write.
	linkStatusRetryMax = 30 * time.Second
	// maxConditionMessage is below the API's 32768 so that the suffix with
	// the last message's time always fits.
	maxConditionMessage = 32000
)

// linkCondition is one condition as derived from a link's state, without
// the parts that are the writer's business (transition time, generation,
// the time of the last message).
type linkCondition struct {
	Type    string
	Status  metav1.ConditionStatus
	Reason  string
	Message string
}

// linkConditions maps a link's state to its two conditions on the
// istio-remote Gateway: Connected and Synced, both True only while the link
// is synced. The message names the cause (the error of the last attempt,
// the rejection), and is the same on both. It never includes what changes
// without the state changing (counts, the last message's time), so an
// unchanged result means nothing to write.
func linkConditions(st peers.LinkStatus) []linkCondition {
	peer := "cluster " + st.Cluster
	if st.Address != "" {
		peer += " at " + st.Address
	}
	lost := "the stream to " + peer + " is down"
	if st.LastError != "" {
		lost += ": " + st.LastError
	}
	var (
		connected, synced         metav1.ConditionStatus = metav1.ConditionFalse, metav1.ConditionFalse
		connReason, syncReason, m string
	)
	switch st.State {
	case peers.StateSynced:
		connected, synced = metav1.ConditionTrue, metav1.ConditionTrue
		connReason, syncReason = federation.ReasonConnected, federation.ReasonSynced
		m = "synced with " + peer
	case peers.StateConnecting:
		connReason, syncReason = federation.ReasonConnecting, federation.ReasonConnecting
		m = "connecting to " + peer
		if st.LastError != "" {
			m += "; the last attempt failed: " + st.LastError
		}
	case peers.StateStale:
		connReason, syncReason = federation.ReasonDisconnected, federation.ReasonStale
		m = lost + "; its services are kept until they expire (--peer-stale-ttl)"
		if !st.WithdrawAt.IsZero() {
			m += " at " + st.WithdrawAt.UTC().Format(time.RFC3339)
		}
	case peers.StateWithdrawn:
		connReason, syncReason = federation.ReasonDisconnected, federation.ReasonWithdrawn
		m = lost + "; its services were withdrawn after --peer-stale-ttl"
	case peers.StateRejected:
		connReason, syncReason = federation.ReasonRejected, federation.ReasonRejected
		m = "rejected"
		if st.Reason != "" {
			m += " (" + st.Reason + ")"
		}
		m += ": " + peer
		if st.LastError != "" {
			m += ": " + st.LastError
		}
	default: // peers.StateInvalid: the Gateway cannot be read as a link
		connReason, syncReason = federation.ReasonRejected, federation.ReasonRejected
		m = "the Gateway cannot be read as a link: " + st.LastError
	}
	if st.GatewayError != "" && st.State != peers.StateInvalid {
		m += "; the Gateway's latest version cannot be read as a link, so its last good configuration is in use: " + st.GatewayError
	}
	return []linkCondition{
		{Type: federation.ConditionConnected, Status: connected, Reason: connReason, Message: m},
		{Type: federation.ConditionSynced, Status: synced, Reason: syncReason, Message: m},
	}
}

// lastMessageSuffix is appended to every condition's message.
func lastMessageSuffix(last time.Time) string {
	if last.IsZero() {
		return "; no message from the peer yet"
	}
	return "; last message from the peer at " + last.UTC().Format(time.RFC3339)
}

// linkStatusWriter writes the links' live state into their Gateways'
// status. It only reads the link manager (polling Status and comparing
// with what it wrote) and only writes to the API: nothing it does feeds
// back into the model. It runs while this replica holds the Lease; every
// term starts with nothing written, so the first poll writes every link
// once (a previous leader's writes may differ from this replica's view).
type linkStatusWriter struct {
	links func() []peers.LinkStatus
	// gateway returns the Gateway as the source last saw it (nil: not
	// known, or removed: nothing is written then); its uid and generation
	// go into the write.
	gateway func(namespace, name string) *gatewayv1.Gateway
	apply   func(ctx context.Context, gw *gatewayac.GatewayApplyConfiguration) error
	clock   clock.WithTicker
	log     *zap.Logger
	// limiter is shared by the terms, so a quick succession of terms
	// cannot exceed the global rate either.
	limiter *rate.Limiter
	writes  *prometheus.CounterVec
}

// written is what the writer last wrote for one Gateway, or why it waits.
type written struct {
	uid         types.UID
	generation  int64
	conditions  []linkCondition
	transitions map[string]metav1.Time
	lastMessage time.Time
	at          time.Time
	// failures and retryAt: consecutive failed writes and when to try
	// again; a failure leaves uid empty so the retry writes in full.
	failures int
	retryAt  time.Time
}

func newLinkStatusWriter(links func() []peers.LinkStatus, gateway func(namespace, name string) *gatewayv1.Gateway,
	client gatewayclient.Interface, log *zap.Logger, reg prometheus.Registerer) *linkStatusWriter {
	w := &linkStatusWriter{
		links:   links,
		gateway: gateway,
		apply: func(ctx context.Context, gw *gatewayac.GatewayApplyConfiguration) error {
			_, err := client.GatewayV1().Gateways(*gw.Namespace).ApplyStatus(ctx, gw,
				metav1.ApplyOptions{FieldManager: statusFieldManager, Force: true})
			return err
		},
		clock:   clock.RealClock{},
		log:     log,
		limiter: rate.NewLimiter(linkStatusWriteRate, linkStatusWriteBurst),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "peerd_status_writes_total",
			Help: "Writes of the links' live state into their istio-remote Gateways' status, by result (ok, error, gone: the Gateway was removed meanwhile). Unchanged state is not written.",
		}, []string{"result"}),
	}
	for _, r := range []string{"ok", "error", "gone"} {
		w.writes.WithLabelValues(r)
	}
	reg.MustRegister(w.writes)
	return w
}

// indexGateway reads a Gateway from the index, for linkStatusWriter.gateway.
func indexGateway(index *discovery.Index) func(namespace, name string) *gatewayv1.Gateway {
	return func(namespace, name string) *gatewayv1.Gateway {
		gw, _ := index.Get(discovery.Key{Kind: discovery.KindGateway, Namespace: namespace, Name: name}).(*gatewayv1.Gateway)
		return gw
	}
}

// run writes until ctx ends (the term is over, or peerd stops).
func (w *linkStatusWriter) run(ctx context.Context) {
	state := map[string]*written{}
	ticker := w.clock.NewTicker(linkStatusPoll)
	defer ticker.Stop()
	for {
		w.sync(ctx, state)
		select {
		case <-ctx.Done():
			return
		case <-ticker.C():
		}
	}
}

// sync writes what changed since the last call, given what was written
// (state, updated in place).
func (w *linkStatusWriter) sync(ctx context.Context, state map[string]*written) {
	now := w.clock.Now()
	seen := map[string]bool{}
	for _, st := range w.links() {
		seen[st.Gateway] = true
		namespace, name, ok := strings.Cut(st.Gateway, "/")
		if !ok {
			continue // Status names every Gateway namespace/name
		}
		gw := w.gateway(namespace, name)
		if gw == nil {
			continue
		}
		prev := state[st.Gateway]
		if prev != nil && now.Before(prev.retryAt) {
			continue
		}
		conds := linkConditions(st)
		same := prev != nil && prev.uid == gw.UID && prev.generation == gw.Generation && slices.Equal(prev.conditions, conds)
		age := time.Duration(0)
		if prev != nil {
			age = now.Sub(prev.at)
		}
		if same && age < linkStatusResync && (st.LastMessage.Equal(prev.lastMessage) || age < linkHeartbeatInterval) {
			continue
		}
		if !w.limiter.AllowN(now, 1) {
			continue // the next poll tries again
		}
		next := &written{
			uid:         gw.UID,
			generation:  gw.Generation,
			conditions:  conds,
			transitions: transitions(prev, gw.UID, conds, st.Since, now),
			lastMessage: st.LastMessage,
			at:          now,
		}
		err := w.apply(ctx, statusApply(gw, next))
		switch {
		case err == nil:
			w.writes.WithLabelValues("ok").Inc()
			w.log.Debug("link state written into its Gateway's status", zap.String("gateway", st.Gateway), zap.Stringer("conditions", next))
			state[st.Gateway] = next
		case ctx.Err() != nil:
			return // the term ended: the next one starts over
		case apierrors.IsNotFound(err):
			// Removed: the source's next event drops the link.
			w.writes.WithLabelValues("gone").Inc()
			w.log.Debug("link Gateway gone before its status was written", zap.String("gateway", st.Gateway), zap.Error(err))
			delete(state, st.Gateway)
		default:
			w.writes.WithLabelValues("error").Inc()
			failed := &written{}
			if prev != nil {
				failed.failures = prev.failures
			}
			failed.failures++
			backoff := min(linkStatusPoll<<min(failed.failures-1, 5), linkStatusRetryMax)
			failed.retryAt = now.Add(backoff)
			state[st.Gateway] = failed
			w.log.Warn("writing a link's live state into its Gateway's status failed; retrying",
				zap.String("gateway", st.Gateway), zap.Int("failures", failed.failures), zap.Duration("retry_in", backoff), zap.Error(err))
		}
	}
	for gw := range state {
		if !seen[gw] {
			delete(state, gw) // unlinked: a Gateway that is gone needs nothing
		}
	}
}

// transitions gives each condition its lastTransitionTime: kept while its
// status stays as last written to the same object, else when the link
// entered its state (since), or now when that is unknown.
func transitions(prev *written, uid types.UID, conds []linkCondition, since, now time.Time) map[string]metav1.Time {
	out := make(map[string]metav1.Time, len(conds))
	at := now
	if !since.IsZero() && !since.After(now) {
		at = since
	}
	for _, c := range conds {
		t := metav1.NewTime(at.Truncate(time.Second))
		if prev != nil && prev.uid == uid {
			if i := slices.IndexFunc(prev.conditions, func(p linkCondition) bool { return p.Type == c.Type }); i >= 0 &&
				prev.conditions[i].Status == c.Status {
				t = prev.transitions[c.Type]
			}
		}
		out[c.Type] = t
	}
	return out
}

// statusApply is the apply configuration of w's conditions on gw. (A
// server-side apply takes no uid precondition: should gw have been replaced
// by a Gateway of the same name that the source has not seen yet, the
// conditions land on it, and the next poll rewrites them once the source
// has the new object, whose uid differs from the one written.)
func statusApply(gw *gatewayv1.Gateway, w *written) *gatewayac.GatewayApplyConfiguration {
	suffix := lastMessageSuffix(w.lastMessage)
	conds := make([]*metav1ac.ConditionApplyConfiguration, 0, len(w.conditions))
	for _, c := range w.conditions {
		msg := c.Message
		if len(msg) > maxConditionMessage {
			msg = strings.ToValidUTF8(msg[:maxConditionMessage], "") + "…"
		}
		conds = append(conds, metav1ac.Condition().
			WithType(c.Type).
			WithStatus(c.Status).
			WithReason(c.Reason).
			WithMessage(msg+suffix).
			WithObservedGeneration(w.generation).
			WithLastTransitionTime(w.transitions[c.Type]))
	}
	return gatewayac.Gateway(gw.Name, gw.Namespace).
		WithStatus(gatewayac.GatewayStatus().WithConditions(conds...))
}

// String lists the conditions written, for the log.
func (w *written) String() string {
	var parts []string
	for _, c := range w.conditions {
		parts = append(parts, fmt.Sprintf("%s=%s/%s", c.Type, c.Status, c.Reason))
	}
	return strings.Join(parts, ", ")
}
