package e2e

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
	"github.com/peerd-mesh/peerd/test/ztunnel"
)

func TestNACKIsLoggedCountedAndNotResentUntilChanged(t *testing.T) {
	dir := copyDir(t, repoPath("examples", "cluster1"))
	p := startPeerd(t, peerdOptions{Args: []string{"--cluster-name", cluster, "--config-dir", dir}})

	// The client rejects one workload while rejecting is on, as ztunnel
	// rejects a resource it cannot use.
	const victim = "cluster1//Pod/legacy/web-1"
	var rejecting atomic.Bool
	rejecting.Store(true)
	c := ztunnel.Start(t, ztunnel.Config{Target: p.PlaintextAddr, ClusterID: cluster, Reject: func(name string, _ *workloadpb.Address) error {
		if name == victim && rejecting.Load() {
			return errors.New("rejected by the test")
		}
		return nil
	}})
	// The Address response is NACKed, so the client is not ready (as
	// ztunnel); wait for both initial responses instead.
	waitState(t, c, "both initial responses", func(s *ztunnel.State) bool { return s.Responses >= 2 })
	if st := c.Stats(); st.NACKs != 1 || !strings.Contains(st.LastNACK, victim) {
		t.Fatalf("client NACKs = %d (last %q), want exactly one naming %s", st.NACKs, st.LastNACK, victim)
	}
	if c.Workloads()[victim] != nil {
		t.Fatalf("the client holds the resource it rejected")
	}
	p.waitMetric(t, 1, "peerd_xds_nacks_total", "Address")
	waitLogContains(t, p, "NACK", victim)

	// A change elsewhere is pushed without resending the rejected,
	// unchanged resource.
	edit(t, filepath.Join(dir, "10-apps-echo.yaml"), "canonical-revision: canary", "canonical-revision: canary-2")
	waitState(t, c, "unrelated change", func(s *ztunnel.State) bool {
		return s.Workloads["cluster1//Pod/apps/echo-canary"].GetCanonicalRevision() == "canary-2"
	})
	// The Address response is NACKed, so the client is not ready (as
	// ztunnel); wait for both initial responses instead.
	waitState(t, c, "both initial responses", func(s *ztunnel.State) bool { return s.Responses >= 2 })
	if st := c.Stats(); st.NACKs != 1 {
		t.Fatalf("peerd resent the rejected resource unchanged: NACKs = %d (last %q)", st.NACKs, st.LastNACK)
	}

	// Once it changes, it is sent again and, now accepted, held.
	rejecting.Store(false)
	edit(t, filepath.Join(dir, "20-legacy.yaml"), "serviceAccountName: web", "serviceAccountName: web-v2")
	waitState(t, c, "changed resource resent", func(s *ztunnel.State) bool {
		return s.Workloads[victim].GetServiceAccount() == "web-v2"
	})
}

func edit(t *testing.T, path, old, new string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), old) {
		t.Fatalf("%s does not contain %q", path, old)
	}
	writeFile(t, path, strings.Replace(string(data), old, new, 1))
}

func waitLogContains(t *testing.T, p *peerdProcess, fragments ...string) {
	t.Helper()
	waitFor(t, "peerd log line with "+strings.Join(fragments, ", "), func() bool {
		for _, line := range strings.Split(p.Logs(), "\n") {
			all := true
			for _, f := range fragments {
				all = all && strings.Contains(line, f)
			}
			if all {
				return true
			}
		}
		return false
	})
}
