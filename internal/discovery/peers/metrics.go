package peers

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the manager's Prometheus metrics. The per-link ones are
// collected from Status at scrape time, so a removed link's series go away
// with it and nothing is kept in sync by hand.
type metrics struct {
	m               *Manager
	gatewayProblems prometheus.Counter
	saveErrors      prometheus.Counter
	journalDamaged  prometheus.Counter

	state      *prometheus.Desc
	lastMsgAge *prometheus.Desc
	services   *prometheus.Desc
	failures   *prometheus.Desc
	rejections *prometheus.Desc
	invalid    *prometheus.Desc
}

func newMetrics(m *Manager, reg prometheus.Registerer) *metrics {
	x := &metrics{
		m: m,
		gatewayProblems: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "peerd_peer_gateway_problems_total",
			Help: "istio-remote Gateways found unreadable as links (each distinct problem of a Gateway counted once).",
		}),
		saveErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "peerd_peer_state_save_errors_total",
			Help: "Failed writes or deletions of a link's saved state.",
		}),
		journalDamaged: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "peerd_peer_state_journal_damaged_total",
			Help: "Saved link journals found torn or damaged at start (the records from the damage on are ignored).",
		}),
		state: prometheus.NewDesc("peerd_peer_link_state",
			"1 for the state each link is in (connecting, synced, stale, withdrawn, rejected), 0 for the others.",
			[]string{"cluster", "state"}, nil),
		lastMsgAge: prometheus.NewDesc("peerd_peer_last_message_age_seconds",
			"Seconds since the link's last response from its peer (absent before the first).",
			[]string{"cluster"}, nil),
		services: prometheus.NewDesc("peerd_peer_services_imported",
			"Services the link currently imports into the index.",
			[]string{"cluster"}, nil),
		failures: prometheus.NewDesc("peerd_peer_link_failures_total",
			"Failed connection attempts and broken streams of the link.",
			[]string{"cluster"}, nil),
		rejections: prometheus.NewDesc("peerd_peer_rejections_total",
			"Rejections on the link by reason: tls, trust_domain, refused (by the peer), invalid_resource (NACKed).",
			[]string{"cluster", "reason"}, nil),
		invalid: prometheus.NewDesc("peerd_peer_invalid_gateways",
			"istio-remote Gateways that currently cannot be read as links.",
			nil, nil),
	}
	if reg != nil {
		reg.MustRegister(x, x.gatewayProblems, x.saveErrors, x.journalDamaged)
	}
	return x
}

// Describe implements prometheus.Collector.
func (x *metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{x.state, x.lastMsgAge, x.services, x.failures, x.rejections, x.invalid} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (x *metrics) Collect(ch chan<- prometheus.Metric) {
	now := x.m.clock.Now()
	invalid := 0
	for _, st := range x.m.Status() {
		if st.State == StateInvalid || st.GatewayError != "" {
			invalid++
		}
		if st.State == StateInvalid {
			continue
		}
		for _, s := range linkStates {
			v := 0.0
			if st.State == s {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(x.state, prometheus.GaugeValue, v, st.Cluster, string(s))
		}
		if !st.LastMessage.IsZero() {
			ch <- prometheus.MustNewConstMetric(x.lastMsgAge, prometheus.GaugeValue, now.Sub(st.LastMessage).Seconds(), st.Cluster)
		}
		ch <- prometheus.MustNewConstMetric(x.services, prometheus.GaugeValue, float64(st.Services), st.Cluster)
		ch <- prometheus.MustNewConstMetric(x.failures, prometheus.CounterValue, float64(st.Failures), st.Cluster)
		for reason, n := range st.Rejections {
			ch <- prometheus.MustNewConstMetric(x.rejections, prometheus.CounterValue, float64(n), st.Cluster, reason)
		}
	}
	ch <- prometheus.MustNewConstMetric(x.invalid, prometheus.GaugeValue, float64(invalid))
}
