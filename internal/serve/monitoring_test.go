package serve

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/peerd-mesh/peerd/internal/discovery"
	"github.com/peerd-mesh/peerd/internal/xds"
)

// TestMonitoringDebugIsLoopbackOnly: probes and metrics answer everyone; the
// mesh dumps and pprof answer only loopback peers unless remote debugging is
// allowed, and a refused client learns how to get in.
func TestMonitoringDebugIsLoopbackOnly(t *testing.T) {
	const (
		remote    = "10.1.2.3:40000"
		loopback4 = "127.0.0.1:40000"
		loopback6 = "[::1]:40000"
	)
	tests := []struct {
		name        string
		path        string
		peer        string
		allowRemote bool
		wantCode    int
		wantBody    string
	}{
		{"metrics from remote", "/metrics", remote, false, http.StatusOK, "go_goroutines"},
		{"healthz from remote", "/healthz", remote, false, http.StatusOK, "ok"},
		{"readyz from remote", "/readyz", remote, false, http.StatusServiceUnavailable, "sources: not synced yet"},
		{"addresses from remote refused", "/debug/addresses", remote, false, http.StatusForbidden, "--debug-allow-remote"},
		{"pprof from remote refused", "/debug/pprof/", remote, false, http.StatusForbidden, "--debug-allow-remote"},
		{"pprof heap from remote refused", "/debug/pprof/heap?debug=1", remote, false, http.StatusForbidden, "loopback"},
		{"addresses from IPv4 loopback", "/debug/addresses", loopback4, false, http.StatusOK, "["},
		{"pprof from IPv6 loopback", "/debug/pprof/", loopback6, false, http.StatusOK, "goroutine"},
		{"pprof heap from loopback", "/debug/pprof/heap?debug=1", loopback4, false, http.StatusOK, "heap profile"},
		{"addresses from remote when allowed", "/debug/addresses", remote, true, http.StatusOK, "["},
		{"pprof from remote when allowed", "/debug/pprof/", remote, true, http.StatusOK, "goroutine"},
		{"unparsable peer refused", "/debug/addresses", "not-an-address", false, http.StatusForbidden, "--debug-allow-remote"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			reg.MustRegister(collectors.NewGoCollector())
			h := monitoringHandler(reg, newStatus(discovery.NewIndex(), reg), xds.NewCache(xds.AddressTypeURL), tc.allowRemote)
			req := httptest.NewRequest(http.MethodGet, tc.path, nil)
			req.RemoteAddr = tc.peer
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != tc.wantCode || !strings.Contains(rec.Body.String(), tc.wantBody) {
				t.Fatalf("GET %s from %s: %d %q, want %d containing %q", tc.path, tc.peer, rec.Code, truncate(rec.Body.String()), tc.wantCode, tc.wantBody)
			}
		})
	}
}

func truncate(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}

// TestClientAuthenticationGapIsReported: while --listen serves without
// authenticating clients, /readyz says so (without failing) and the gauge is
// 1; without --listen neither appears.
func TestClientAuthenticationGapIsReported(t *testing.T) {
	tests := []struct {
		name      string
		listen    bool
		wantGauge string
		wantLine  bool
	}{
		{"TLS listener without authentication", true, "peerd_client_authentication_missing 1", true},
		{"no TLS listener", false, "peerd_client_authentication_missing 0", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			st := newStatus(discovery.NewIndex(), reg)
			st.clientAuthMissing.Store(tc.listen)
			h := monitoringHandler(reg, st, xds.NewCache(xds.AddressTypeURL), false)
			get := func(path string) string {
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
				return rec.Body.String()
			}
			if metrics := get("/metrics"); !strings.Contains(metrics, tc.wantGauge+"\n") {
				t.Errorf("/metrics lacks %q:\n%s", tc.wantGauge, truncate(metrics))
			}
			if readyz := get("/readyz"); strings.Contains(readyz, clientAuthenticationGap) != tc.wantLine {
				t.Errorf("/readyz mentions the missing client authentication = %v, want %v:\n%s", !tc.wantLine, tc.wantLine, readyz)
			}
		})
	}
}
