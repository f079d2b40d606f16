package serve

import (
	"context"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/peerd-mesh/peerd/internal/ambient"
	"github.com/peerd-mesh/peerd/internal/discovery"
	"github.com/peerd-mesh/peerd/internal/xds"
)

// modelLoop turns the index's changes into Address cache updates. It is
// the only writer of that cache and the only reader of the index's changes.
type modelLoop struct {
	model     *ambient.Model
	index     *discovery.Index
	addresses *xds.Cache
	log       *zap.Logger
	// events is nil unless the source is a Kubernetes API server.
	events *warningEvents

	// reported remembers the warnings already logged, so a warning is logged
	// once when it appears rather than on every recompute; rejected does the
	// same for resources the cache could not encode.
	reported map[string]bool
	rejected map[string]bool

	warnings         prometheus.Gauge
	newWarnings      prometheus.Counter
	updates          prometheus.Counter
	changedObjects   prometheus.Counter
	rejectedGauge    prometheus.Gauge
	newRejectedTotal prometheus.Counter
}

func newModelLoop(cfg ambient.Config, index *discovery.Index, addresses *xds.Cache, events *warningEvents, log *zap.Logger, reg prometheus.Registerer) *modelLoop {
	m := &modelLoop{
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

// run applies changes on every change signal until ctx ends. Signals raised
// while an update is under way collapse into one more update.
func (m *modelLoop) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.index.Changed():
			m.update()
		}
	}
}

// update folds the index's pending changes into the model and hands the
// resources they touched to the cache, which pushes those whose bytes
// changed.
func (m *modelLoop) update() {
	changes := m.index.TakeChanges()
	if len(changes) == 0 {
		return
	}
	in := make([]ambient.Change, len(changes))
	for i, ch := range changes {
		in[i] = ambient.Change{Ref: objectRef(ch.Key), Object: ch.Object}
	}
	delta := m.model.Apply(in)
	upserts := make([]xds.Resource, 0, len(delta.Upserts))
	for _, a := range delta.Upserts {
		upserts = append(upserts, xds.Resource{
			Name:     ambient.ResourceName(a),
			Aliases:  ambient.LookupKeys(a),
			MemberOf: ambient.EndpointOf(a),
			Message:  a,
		})
	}
	m.addresses.Update(upserts, delta.Deletes)
	m.updates.Inc()
	m.changedObjects.Add(float64(len(changes)))
	if delta.WarningsChanged {
		m.report(m.model.Warnings())
	}
	m.reportRejected(m.addresses.RejectedErrors())
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
