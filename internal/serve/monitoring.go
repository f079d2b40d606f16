package serve

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/peerd-mesh/peerd/internal/discovery"
	"github.com/peerd-mesh/peerd/internal/xds"
)

// authorizationGap explains, wherever peerd reports its state, why ztunnels
// receive no policies from it.
const authorizationGap = "authorization: no policy source yet; ztunnels receive an empty istio.security.Authorization set"

// status is what /readyz reports.
type status struct {
	index   *discovery.Index
	serving atomic.Bool
	// rejected lists resources that cannot be encoded (nil: none known).
	rejected func() []error
}

func newStatus(index *discovery.Index, reg prometheus.Registerer) *status {
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "peerd_authorization_source_missing",
		Help: "1 while peerd has no authorization policy source and serves an empty Authorization set.",
	}, func() float64 { return 1 }))
	return &status{index: index}
}

func (s *status) setServing() { s.serving.Store(true) }

// readiness returns whether peerd is ready and the lines that explain it.
func (s *status) readiness() (bool, []string) {
	var lines []string
	ready := true
	if s.index.Synced() {
		lines = append(lines, "sources: synced")
	} else {
		ready = false
		lines = append(lines, "sources: not synced yet")
	}
	if s.serving.Load() {
		lines = append(lines, "xds: serving")
	} else {
		ready = false
		lines = append(lines, "xds: not serving yet")
	}
	for _, err := range s.index.Errors() {
		lines = append(lines, "source error (last good objects kept): "+err.Error())
	}
	if s.rejected != nil {
		for _, err := range s.rejected() {
			lines = append(lines, "resource not served in its latest version (previous version kept): "+err.Error())
		}
	}
	lines = append(lines, authorizationGap)
	return ready, lines
}

func monitoringHandler(reg *prometheus.Registry, st *status, addresses *xds.Cache) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		ready, lines := st.readiness()
		if !ready {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		fmt.Fprintln(w, strings.Join(lines, "\n"))
	})
	mux.HandleFunc("/debug/addresses", func(w http.ResponseWriter, _ *http.Request) {
		writeAddresses(w, addresses)
	})
	return mux
}

// writeAddresses writes the Address resources a wildcard client would hold,
// as a JSON array of {name, version, resource}.
func writeAddresses(w http.ResponseWriter, addresses *xds.Cache) {
	type entry struct {
		Name     string          `json:"name"`
		Version  string          `json:"version"`
		Resource json.RawMessage `json:"resource"`
	}
	_, items := addresses.Snapshot()
	out := make([]entry, 0, len(items))
	for _, it := range items {
		raw, err := protojson.Marshal(it.Message)
		if err != nil {
			http.Error(w, fmt.Sprintf("resource %s: %v", it.Name, err), http.StatusInternalServerError)
			return
		}
		out = append(out, entry{Name: it.Name, Version: it.Version, Resource: raw})
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(out)
}
