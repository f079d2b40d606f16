package serve

import (
	"context"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"k8s.io/apimachinery/pkg/runtime"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/peerd-mesh/peerd/internal/ambient"
	"github.com/peerd-mesh/peerd/internal/discovery"
	"github.com/peerd-mesh/peerd/internal/discovery/peers"
	"github.com/peerd-mesh/peerd/internal/federation"
	"github.com/peerd-mesh/peerd/internal/xds"
	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
	federationpb "github.com/peerd-mesh/peerd/proto/peerd/federation/v1"
)

// modelLoop turns the index's changes into Address cache updates. It is
// the only writer of that cache and the only reader of the index's changes.
type modelLoop struct {
	cfg       ambient.Config
	model     *ambient.Model
	index     *discovery.Index
	addresses *xds.Cache
	log       *zap.Logger
	// events is nil unless the source is a Kubernetes API server.
	events *warningEvents
	// relay is istiod's stream in extension mode (relay.go); nil in
	// standalone mode, where the model's output is served as it is.
	relay *istiodRelay

	// The peering side (see peering.go): exports go to federations, the
	// istio-remote Gateways to links, VIP allocations to vips, and the time
	// from a peer's update arriving to its push into convergence.
	federations *xds.Cache
	links       *peers.Manager
	vips        vipStore
	convergence prometheus.Histogram
	// gateways is the model loop's copy of every Gateway, so that links get
	// the whole set on each change without a snapshot of the index.
	gateways map[discovery.Key]*gatewayv1.Gateway
	// goodLinks: the last version of each link Gateway that parsed.
	goodLinks map[discovery.Key]*gatewayv1.Gateway
	// vipsSettled: the saved VIPs nobody claimed were released.
	vipsSettled bool

	// reported remembers the warnings already logged, so a warning is logged
	// once when it appears rather than on every recompute; rejected does the
	// same for resources the cache could not encode.
	reported map[string]bool
	// linksGivenGateways: the links got the Gateways at least once (the first
	// Sync, even with none, is what lets their readiness settle).
	linksGivenGateways bool
	rejected           map[string]bool

	warnings         prometheus.Gauge
	newWarnings      prometheus.Counter
	updates          prometheus.Counter
	changedObjects   prometheus.Counter
	rejectedGauge    prometheus.Gauge
	newRejectedTotal prometheus.Counter
}

func newModelLoop(cfg ambient.Config, index *discovery.Index, addresses *xds.Cache, events *warningEvents, log *zap.Logger, reg prometheus.Registerer) *modelLoop {
	m := &modelLoop{
		cfg:       cfg,
		gateways:  map[discovery.Key]*gatewayv1.Gateway{},
		goodLinks: map[discovery.Key]*gatewayv1.Gateway{},
		model:     ambient.NewModel(cfg),
		index:     index,
		addresses: addresses,
		events:    events,
		log:       log,
		reported:  map[string]bool{},
		rejected:  map[string]bool{},
		warnings: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "peerd_model_warnings",
			Help: "Objects the model currently maps with a warning (an unknown annotation value, say).",
		}),
		newWarnings: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "peerd_model_warnings_total",
			Help: "Distinct model warnings seen since start.",
		}),
		updates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "peerd_model_recomputes_total",
			Help: "Batches of index changes the model applied (each recomputes only what the changed objects touch).",
		}),
		changedObjects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "peerd_model_changed_objects_total",
			Help: "Input objects whose change reached the model.",
		}),
		rejectedGauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "peerd_resources_rejected",
			Help: "Resources that could not be encoded and are not served in their latest version.",
		}),
		newRejectedTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "peerd_resources_rejected_total",
			Help: "Resource versions that could not be encoded since start.",
		}),
	}
	reg.MustRegister(m.warnings, m.newWarnings, m.updates, m.changedObjects, m.rejectedGauge, m.newRejectedTotal)
	return m
}

// useRelay makes istiod's stream the local source (extension mode).
func (m *modelLoop) useRelay(r *istiodRelay) {
	if r == nil {
		return
	}
	r.merger = ambient.NewMerger(m.cfg)
	m.relay = r
}

// run applies changes on every change signal until ctx ends. Signals raised
// while an update is under way collapse into one more update.
func (m *modelLoop) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.index.Changed():
			m.update()
		case <-m.relay.changed():
			m.update()
		}
	}
}

// update folds the index's pending changes into the model and hands the
// resources they touched to the cache, which pushes those whose bytes
// changed.
func (m *modelLoop) update() {
	changes := m.index.TakeChanges()
	var relayed map[string]*workloadpb.Address
	if m.relay != nil {
		relayed = m.relay.take()
	}
	if len(changes) == 0 && len(relayed) == 0 {
		return
	}
	var delta ambient.Delta
	if len(changes) > 0 {
		in := make([]ambient.Change, len(changes))
		for i, ch := range changes {
			in[i] = ambient.Change{Ref: objectRef(ch.Key), Object: m.lastGoodLink(ch)}
		}
		delta = m.model.Apply(in)
	}
	m.syncLinks(changes)
	served, deletes := delta.Upserts, delta.Deletes
	exports, unexports := delta.Exports, delta.Unexports
	if m.relay != nil {
		// Exports count what is served: istiod's workloads, not the
		// model's mapping.
		merged := m.relay.merge(relayed, delta)
		served, deletes, exports, unexports = merged.Upserts, merged.Deletes, merged.Exports, merged.Unexports
	}
	m.addresses.Update(resources(served), deletes)
	m.publishExports(exports, unexports, delta.VIPsChanged)
	m.observeConvergence(changes)
	m.updates.Inc()
	m.changedObjects.Add(float64(len(changes)))
	if delta.WarningsChanged {
		m.report(m.model.Warnings())
	}
	m.reportRejected(m.addresses.RejectedErrors())
}

// observeConvergence records, for each imported service version just
// pushed, the time since it arrived from its peer (restored state carries
// no arrival time and is not measured).
func (m *modelLoop) observeConvergence(changes []discovery.Change) {
	if m.convergence == nil {
		return
	}
	for _, ch := range changes {
		if is, ok := ch.Object.(*federation.ImportedService); ok && !is.Received.IsZero() {
			m.convergence.Observe(time.Since(is.Received).Seconds())
		}
	}
}

// lastGoodLink is what the model gets for a changed object: the object
// itself, except for an istio-remote Gateway whose new version is not a
// usable link while its previous version was. Then the model keeps that
// previous version, as the link manager keeps its connection, so a typo in
// a link Gateway does not withdraw a healthy cluster's services (and
// release their VIPs); the manager reports the bad edit (log, /readyz).
func (m *modelLoop) lastGoodLink(ch discovery.Change) runtime.Object {
	if ch.Key.Kind != discovery.KindGateway {
		return ch.Object
	}
	gw, _ := ch.Object.(*gatewayv1.Gateway)
	if gw == nil || !federation.IsRemote(gw) {
		delete(m.goodLinks, ch.Key)
		return ch.Object
	}
	if _, err := federation.ParseLink(gw); err != nil {
		if good, ok := m.goodLinks[ch.Key]; ok {
			return good
		}
		return ch.Object
	}
	m.goodLinks[ch.Key] = gw
	return gw
}

// syncLinks hands the link manager the Gateways whenever one changed.
func (m *modelLoop) syncLinks(changes []discovery.Change) {
	if m.links == nil {
		return
	}
	changed := false
	for _, ch := range changes {
		if ch.Key.Kind != discovery.KindGateway {
			continue
		}
		changed = true
		if gw, ok := ch.Object.(*gatewayv1.Gateway); ok {
			m.gateways[ch.Key] = gw
		} else {
			delete(m.gateways, ch.Key)
		}
	}
	if changed || !m.linksGivenGateways {
		m.linksGivenGateways = true
		m.links.Sync(slices.Collect(maps.Values(m.gateways)))
	}
}

// publishExports serves the exports' changes to peers and saves the VIP
// allocations (under --state-dir, or in the API in Kubernetes mode).
func (m *modelLoop) publishExports(exports []*federationpb.FederatedService, unexports []string, vipsChanged bool) {
	if m.federations != nil && (len(exports) > 0 || len(unexports) > 0) {
		upserts := make([]xds.Resource, 0, len(exports))
		for _, e := range exports {
			upserts = append(upserts, xds.Resource{Name: federation.ResourceName(e.GetNamespace(), e.GetName()), Message: e})
		}
		m.federations.Update(upserts, unexports)
	}
	if (vipsChanged || m.releaseUnclaimedVIPs()) && m.vips != nil {
		if err := m.vips.save(m.model.VIPs()); err != nil {
			// The VIPs in force stay; only a restart could move them.
			m.log.Error("could not save the VIPs of global services; a restart may give them new ones", zap.Error(err))
		}
	}
}

// releaseUnclaimedVIPs frees, once, the saved VIPs whose global service has
// not come back by the time every source that could bring it back has
// synced (the local sources before the first model, the links now), so a
// service deleted while peerd was down does not hold its VIPs for good.
// It reports whether the allocations changed.
func (m *modelLoop) releaseUnclaimedVIPs() bool {
	if m.vipsSettled || m.links == nil || !m.links.Synced() {
		return false
	}
	m.vipsSettled = true
	return m.model.ReleaseUnclaimedVIPs()
}

// objectRef names an index object the way the model does.
func objectRef(k discovery.Key) ambient.ObjectRef {
	return ambient.ObjectRef{Kind: strings.ToLower(string(k.Kind)), Cluster: k.Cluster, Namespace: k.Namespace, Name: k.Name}
}

// report logs, counts and records as Events the warnings that are new since
// the previous report; a warning that persists is reported once.
func (m *modelLoop) report(warnings []ambient.Warning) {
	current := make(map[string]bool, len(warnings))
	for _, w := range warnings {
		text := w.String()
		current[text] = true
		if !m.reported[text] {
			m.log.Warn("model warning", zap.Stringer("object", w.Object), zap.String("field", w.Field), zap.String("problem", w.Message))
			m.newWarnings.Inc()
			if m.events != nil {
				m.events.record(w, m.index)
			}
		}
	}
	m.reported = current
	m.warnings.Set(float64(len(current)))
}

// reportRejected logs and counts each resource the cache newly refused to
// encode (its previous version, if any, stays served); /readyz lists them.
func (m *modelLoop) reportRejected(errs []error) {
	current := make(map[string]bool, len(errs))
	for _, err := range errs {
		text := err.Error()
		current[text] = true
		if !m.rejected[text] {
			m.log.Error("resource not served in its latest version: it cannot be encoded", zap.Error(err))
			m.newRejectedTotal.Inc()
		}
	}
	m.rejected = current
	m.rejectedGauge.Set(float64(len(current)))
}
