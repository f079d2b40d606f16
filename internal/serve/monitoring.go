package serve

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/peerd-mesh/peerd/internal/discovery"
	"github.com/peerd-mesh/peerd/internal/discovery/peers"
	"github.com/peerd-mesh/peerd/internal/xds"
)

// authorizationGap explains, wherever peerd reports its state, why ztunnels
// receive no policies from it.
const authorizationGap = "authorization: no policy source yet; ztunnels receive an empty istio.security.Authorization set"

// clientAuthenticationGap explains, wherever peerd reports its state, that
// in file mode the TLS listener checks no ztunnel's identity: ztunnel
// proves itself with a token only the Kubernetes API can review.
const clientAuthenticationGap = "ztunnel authentication: none on --listen in file mode (no API server to review tokens with); peers need a peerd certificate under the mesh root, but any other client that reaches it receives ztunnel's view of the mesh"

// status is what /readyz reports.
type status struct {
	index    *discovery.Index
	serving  atomic.Bool
	draining atomic.Bool
	// clientAuthMissing: --listen serves ztunnel's types to clients it
	// does not authenticate (file mode).
	clientAuthMissing atomic.Bool
	// rejected lists resources that cannot be encoded (nil: none known).
	rejected func() []error
	// links are the peer links (nil: none).
	links *peers.Manager
	// relay is istiod's stream in extension mode (nil: standalone).
	relay *istiodRelay
	// leader is the election of the live-state writer (nil: file mode).
	leader *leader
	// meshConfigWait says why start-up waits for the mesh config (empty:
	// it does not).
	meshConfigWait atomic.Pointer[string]
}

func (s *status) setMeshConfigWait(why string) { s.meshConfigWait.Store(&why) }

func newStatus(index *discovery.Index, reg prometheus.Registerer) *status {
	s := &status{index: index}
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "peerd_authorization_source_missing",
		Help: "1 while peerd has no authorization policy source (standalone mode) and serves an empty Authorization set.",
	}, func() float64 {
		if s.relay != nil {
			return 0
		}
		return 1
	}))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "peerd_client_authentication_missing",
		Help: "1 while the TLS listener (--listen) serves ztunnel's types to clients without authenticating them: file mode, which has no TokenReview API (peers are authenticated by certificate; the plaintext listener is unauthenticated by design and not counted here).",
	}, func() float64 {
		if s.clientAuthMissing.Load() {
			return 1
		}
		return 0
	}))
	return s
}

func (s *status) setServing() { s.serving.Store(true) }

// setDraining makes /readyz fail for good: peerd is shutting down.
func (s *status) setDraining() { s.draining.Store(true) }

// readiness returns whether peerd is ready and the lines that explain it.
func (s *status) readiness() (bool, []string) {
	var lines []string
	ready := true
	if s.draining.Load() {
		ready = false
		lines = append(lines, "draining: shutting down; streams are being ended so that clients move to other replicas")
	}
	if s.index.Synced() {
		lines = append(lines, "sources: synced")
	} else {
		ready = false
		lines = append(lines, "sources: not synced yet")
	}
	if why := s.meshConfigWait.Load(); why != nil && *why != "" {
		ready = false
		lines = append(lines, *why)
	}
	if s.serving.Load() {
		lines = append(lines, "xds: serving")
	} else {
		ready = false
		lines = append(lines, "xds: not serving yet")
	}
	peersReady, peerLines := peerReadiness(s.links)
	ready = ready && peersReady
	lines = append(lines, peerLines...)
	relayReady, relayLines := s.relay.readiness()
	ready = ready && relayReady
	lines = append(lines, relayLines...)
	if s.leader != nil {
		lines = append(lines, s.leader.readiness())
	}
	for _, err := range s.index.Errors() {
		lines = append(lines, "source error (last good objects kept): "+err.Error())
	}
	if s.rejected != nil {
		for _, err := range s.rejected() {
			lines = append(lines, "resource not served in its latest version (previous version kept): "+err.Error())
		}
	}
	if s.relay == nil {
		lines = append(lines, authorizationGap)
	}
	if s.clientAuthMissing.Load() {
		lines = append(lines, clientAuthenticationGap)
	}
	return ready, lines
}

// monitoringHandler serves what Prometheus and the kubelet probe on every
// address, and the /debug/ tree (mesh dumps and pprof) only to loopback
// clients unless allowRemoteDebug: those hand out every address, identity
// and node of the mesh, and profiles of the process.
func monitoringHandler(reg *prometheus.Registry, st *status, addresses *xds.Cache, allowRemoteDebug bool) http.Handler {
	debug := http.NewServeMux()
	debug.HandleFunc("/debug/addresses", func(w http.ResponseWriter, _ *http.Request) {
		writeAddresses(w, addresses)
	})
	if st.links != nil {
		debug.Handle("/debug/peers", st.links)
	}
	if st.relay != nil {
		debug.HandleFunc("/debug/istiod", st.relay.serveStatus)
	}
	debug.HandleFunc("/debug/pprof/", pprof.Index)
	debug.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	debug.HandleFunc("/debug/pprof/profile", pprof.Profile)
	debug.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	debug.HandleFunc("/debug/pprof/trace", pprof.Trace)

	mux := http.NewServeMux()
	if allowRemoteDebug {
		mux.Handle("/debug/", debug)
	} else {
		mux.Handle("/debug/", loopbackOnly(debug))
	}
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
	return mux
}

// debugRefused is the answer to a non-loopback client of /debug/.
const debugRefused = "403 forbidden: /debug/ (mesh dumps and pprof) answers only loopback clients, " +
	"for example through `kubectl port-forward` or from inside the pod; " +
	"start peerd with --debug-allow-remote to serve it to every client that reaches the monitoring port"

// loopbackOnly lets h answer only requests whose TCP peer is a loopback
// address. The peer address is the connection's, never a forwarding header a
// client could write itself. kubectl port-forward connects from the pod's own
// loopback, so it keeps working.
func loopbackOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !isLoopbackPeer(r.RemoteAddr) {
			http.Error(w, debugRefused, http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}

func isLoopbackPeer(remoteAddr string) bool {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
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
