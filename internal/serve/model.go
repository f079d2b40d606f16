package serve

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/peerd-mesh/peerd/internal/ambient"
	"github.com/peerd-mesh/peerd/internal/discovery"
	"github.com/peerd-mesh/peerd/internal/xds"
)

// modelLoop turns index snapshots into the Address cache. It is the only
// writer of that cache.
type modelLoop struct {
	config    ambient.Config
	index     *discovery.Index
	addresses *xds.Cache
	log       *zap.Logger
	// events is nil unless the source is a Kubernetes API server.
	events *warningEvents

	// reported remembers the warnings already logged, so a warning is logged
	// once when it appears rather than on every recompute.
	reported map[string]bool

	warnings    prometheus.Gauge
	newWarnings prometheus.Counter
	recomputes  prometheus.Counter
}

func newModelLoop(cfg ambient.Config, index *discovery.Index, addresses *xds.Cache, events *warningEvents, log *zap.Logger, reg prometheus.Registerer) *modelLoop {
	m := &modelLoop{
		config:    cfg,
		index:     index,
		addresses: addresses,
		events:    events,
		log:       log,
		reported:  map[string]bool{},
		warnings: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "peerd_model_warnings",
			Help: "Objects the model currently maps with a warning (an unknown annotation value, say).",
		}),
		newWarnings: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "peerd_model_warnings_total",
			Help: "Distinct model warnings seen since start.",
		}),
		recomputes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "peerd_model_recomputes_total",
			Help: "Times the model was rebuilt from an index snapshot.",
		}),
	}
	reg.MustRegister(m.warnings, m.newWarnings, m.recomputes)
	return m
}

// run recomputes on every change signal until ctx ends. Signals raised while
// a recompute is under way collapse into one more recompute.
func (m *modelLoop) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.index.Changed():
			m.recompute()
		}
	}
}

// recompute builds the model from the index's current snapshot and hands the
// full set to the cache, which pushes only what really changed.
func (m *modelLoop) recompute() {
	objs := m.index.Snapshot()
	out := ambient.Build(m.config, ambient.Inputs(objs))
	resources := make([]xds.Resource, 0, len(out.Addresses))
	for _, a := range out.Addresses {
		resources = append(resources, xds.Resource{
			Name:    ambient.ResourceName(a),
			Aliases: ambient.LookupKeys(a),
			Message: a,
		})
	}
	m.addresses.Replace(resources)
	m.recomputes.Inc()
	m.report(out.Warnings, objs)
}

// report logs, counts and records as Events the warnings that are new since
// the previous recompute; a warning that persists is reported once.
func (m *modelLoop) report(warnings []ambient.Warning, objs discovery.Objects) {
	current := make(map[string]bool, len(warnings))
	for _, w := range warnings {
		text := w.String()
		current[text] = true
		if !m.reported[text] {
			m.log.Warn("model warning", zap.Stringer("object", w.Object), zap.String("field", w.Field), zap.String("problem", w.Message))
			m.newWarnings.Inc()
			if m.events != nil {
				m.events.record(w, objs)
			}
		}
	}
	m.reported = current
	m.warnings.Set(float64(len(current)))
}
