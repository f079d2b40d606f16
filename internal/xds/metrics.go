package xds

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	streams     prometheus.Gauge
	pushes      *prometheus.CounterVec
	nacks       *prometheus.CounterVec
	pushLatency *prometheus.HistogramVec
	// unknown has no type label: the type URL comes from the client, and a
	// label per value would let a client grow /metrics without bound.
	unknown prometheus.Counter
	// closed counts streams the server ended because the client broke a
	// limit, by the limit ("queue", "names", "name_length", "replies").
	closed *prometheus.CounterVec
	// denied counts types refused by ServerOptions.Authorize. Identity and
	// reason come from a Denial, whose contract keeps them bounded.
	denied *prometheus.CounterVec
}

// shortType turns a type URL into a metric label ("istio.workload.Address").
func shortType(typeURL string) string {
	if i := strings.LastIndexByte(typeURL, '/'); i >= 0 {
		return typeURL[i+1:]
	}
	return typeURL
}

func newMetrics(reg prometheus.Registerer, caches []*Cache) *metrics {
	m := &metrics{
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "peerd_xds_connected_streams",
			Help: "Delta xDS streams currently connected.",
		}),
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "peerd_xds_pushes_total",
			Help: "Delta xDS responses sent, by type.",
		}, []string{"type"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "peerd_xds_nacks_total",
			Help: "Delta xDS responses rejected by clients (error_detail set), by type.",
		}, []string{"type"}),
		pushLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "peerd_xds_push_latency_seconds",
			Help:    "Time from the cache change (Replace) to the end of Send of the response carrying it, by type.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"type"}),
		unknown: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "peerd_xds_unknown_type_requests_total",
			Help: "Streams that subscribed to a type URL this server does not serve (each logged once per stream).",
		}),
		closed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "peerd_xds_streams_closed_for_limits_total",
			Help: "Streams the server closed because the client broke a limit, by limit.",
		}, []string{"limit"}),
		denied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "peerd_xds_requests_denied_total",
			Help: "Subscriptions to a type refused by the authorization policy (the stream is closed), by type, identity (a verified peer identity, or anonymous/other) and reason.",
		}, []string{"type", "identity", "reason"}),
	}
	if reg == nil {
		return m
	}
	reg.MustRegister(m.streams, m.pushes, m.nacks, m.pushLatency, m.unknown, m.closed, m.denied)
	for _, c := range caches {
		c := c
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "peerd_xds_resources",
			Help:        "Resources currently held, by type.",
			ConstLabels: prometheus.Labels{"type": shortType(c.TypeURL())},
		}, func() float64 { return float64(c.Len()) }))
	}
	return m
}
