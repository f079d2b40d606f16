package e2e

import (
	"net"
	"net/http"
	"strings"
	"testing"
)

// TestDebugEndpointsAnswerOnlyLoopback: with the monitoring listener on every
// interface, probes and metrics answer through any address, while the mesh
// dump and pprof answer through loopback only, unless --debug-allow-remote.
func TestDebugEndpointsAnswerOnlyLoopback(t *testing.T) {
	external := externalIPv4(t)
	for _, allowRemote := range []bool{false, true} {
		name := "default"
		args := []string{"--cluster-name", cluster, "--config-dir", repoPath("examples", "cluster1")}
		if allowRemote {
			name = "--debug-allow-remote"
			args = append(args, "--debug-allow-remote")
		}
		t.Run(name, func(t *testing.T) {
			port := freePort(t)[len("127.0.0.1:"):]
			p := startPeerd(t, peerdOptions{Args: args, MonitoringListen: ":" + port, MonitoringAddr: "127.0.0.1:" + port})
			remote := net.JoinHostPort(external, port)
			debugFromRemote := http.StatusForbidden
			if allowRemote {
				debugFromRemote = http.StatusOK
			}
			tests := []struct {
				addr, path string
				code       int
				body       string
			}{
				{remote, "/metrics", http.StatusOK, "peerd_"},
				{remote, "/healthz", http.StatusOK, "ok"},
				{remote, "/readyz", http.StatusOK, "sources: synced"},
				{p.MonitoringAddr, "/debug/addresses", http.StatusOK, "cluster1//Pod/"},
				{p.MonitoringAddr, "/debug/pprof/", http.StatusOK, "goroutine"},
				{remote, "/debug/addresses", debugFromRemote, ""},
				{remote, "/debug/pprof/goroutine?debug=1", debugFromRemote, ""},
			}
			for _, tc := range tests {
				code, body := p.getAt(tc.addr, tc.path)
				want := tc.body
				if code == http.StatusForbidden {
					want = "--debug-allow-remote"
				}
				if code != tc.code || !strings.Contains(body, want) {
					t.Errorf("GET %s%s: %d %.200q, want %d containing %q", tc.addr, tc.path, code, body, tc.code, want)
				}
			}
		})
	}
}

// externalIPv4 returns a non-loopback IPv4 address of this machine, or
// skips: without one, no request can come from a non-loopback peer.
func externalIPv4(t *testing.T) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil {
			return n.IP.String()
		}
	}
	t.Skip("no non-loopback IPv4 address on this machine")
	return ""
}
