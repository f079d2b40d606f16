package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/peerd-mesh/peerd/internal/explain"
	"github.com/peerd-mesh/peerd/test/ztunnel"
)

// runExplain runs `peerd explain --addr addr` and returns its stdout,
// stderr and exit code.
func runExplain(t *testing.T, addr string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(peerdBinary, append([]string{"explain", "--addr", addr}, args...)...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		t.Fatalf("peerd explain %v: %v", args, err)
	}
	return out.String(), errOut.String(), code
}

// explainJSON runs `peerd explain -o json` and decodes its answer.
func explainJSON(t *testing.T, p *peerdProcess, args ...string) explain.Result {
	t.Helper()
	out, errOut, code := runExplain(t, p.PlaintextAddr, append(args, "-o", "json")...)
	if code != 0 {
		t.Fatalf("peerd explain %v: exit %d\nstdout:\n%s\nstderr:\n%s", args, code, out, errOut)
	}
	var r explain.Result
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("peerd explain %v -o json: %v\n%s", args, err, out)
	}
	return r
}

// readyTrafficMesh is examples/cluster1 with both backends Ready: backend-a
// on node-a (us-east/us-east-1a/rack-1), backend-b on node-b
// (us-east/us-east-1b), so locality decides between them.
func readyTrafficMesh(t *testing.T) *peerdProcess {
	t.Helper()
	dir := copyDir(t, repoPath("examples", "cluster1"))
	path := filepath.Join(dir, "30-traffic.yaml")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Count(data, []byte(`status: "False"`)) != 1 {
		t.Fatalf("%s: expected exactly one unready pod (backend-b) to make ready", path)
	}
	if err := os.WriteFile(path, bytes.Replace(data, []byte(`status: "False"`), []byte(`status: "True"`), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	return startPeerd(t, peerdOptions{Args: []string{"--cluster-name", cluster, "--config-dir", dir}})
}

const (
	backendA = cluster + "//Pod/traffic/backend-a"
	backendB = cluster + "//Pod/traffic/backend-b"
)

func TestExplainRanksByLocality(t *testing.T) {
	p := readyTrafficMesh(t)
	for _, tc := range []struct {
		name   string
		args   []string
		mode   string
		want   map[string]string // uid -> "outcome rank probability"
		reason map[string]string // uid -> substring of its reason
	}{
		{
			name:   "PreferClose from node-a: the same zone outranks the other zone",
			args:   []string{"--service", "traffic/spec-prefer-close.traffic.svc.cluster.local", "--node", "node-a"},
			mode:   "FAILOVER",
			want:   map[string]string{backendA: "picked 5 1.00", backendB: "outranked 4 0.00"},
			reason: map[string]string{backendA: "same network", backendB: "ZONE differs (endpoint us-east-1b, client us-east-1a)"},
		},
		{
			name: "PreferClose from node-b: the other way round",
			args: []string{"--service", "traffic/spec-prefer-close.traffic.svc.cluster.local", "--node", "node-b"},
			mode: "FAILOVER",
			want: map[string]string{backendA: "outranked 4 0.00", backendB: "picked 5 1.00"},
		},
		{
			name: "PreferClose by VIP: the same service and answer",
			args: []string{"--service", "network1/10.96.2.51", "--node", "node-a"},
			mode: "FAILOVER",
			want: map[string]string{backendA: "picked 5 1.00", backendB: "outranked 4 0.00"},
		},
		{
			name: "PreferClose by hostname, from a zone with no backend (locality flags): both rank equal",
			args: []string{"--service", "spec-prefer-close.traffic.svc.cluster.local", "--network", "network1", "--region", "us-east", "--zone", "us-east-1c"},
			mode: "FAILOVER",
			want: map[string]string{backendA: "picked 4 0.50", backendB: "picked 4 0.50"},
		},
		{
			name: "PreferRegion (annotation): both backends share the region",
			args: []string{"--service", "traffic/annotation-prefer-region.traffic.svc.cluster.local", "--node", "node-a"},
			mode: "FAILOVER",
			want: map[string]string{backendA: "picked 3 0.50", backendB: "picked 3 0.50"},
		},
		{
			name: "PreferSameNode: the node decides after the zone",
			args: []string{"--service", "traffic/spec-prefer-same-node.traffic.svc.cluster.local", "--node", "node-b"},
			mode: "FAILOVER",
			want: map[string]string{backendA: "outranked 6 0.00", backendB: "picked 9 1.00"},
		},
		{
			name: "Any: no load_balancing, every endpoint is equal",
			args: []string{"--service", "traffic/annotation-any.traffic.svc.cluster.local", "--node", "node-a"},
			want: map[string]string{backendA: "picked 0 0.50", backendB: "picked 0 0.50"},
		},
		{
			name:   "internalTrafficPolicy Local: STRICT [NODE] keeps only the node's own pod",
			args:   []string{"--service", "traffic/internal-local.traffic.svc.cluster.local", "--node", "node-b"},
			mode:   "STRICT",
			want:   map[string]string{backendA: "dropped-by-strict -1 0.00", backendB: "picked 1 1.00"},
			reason: map[string]string{backendA: "dropped by STRICT: NODE differs (endpoint node-a, client node-b)"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := explainJSON(t, p, tc.args...)
			if r.Mode != tc.mode {
				t.Errorf("mode %q, want %q", r.Mode, tc.mode)
			}
			got := map[string]string{}
			for _, e := range r.Endpoints {
				got[e.UID] = fmt.Sprintf("%s %d %.2f", e.Outcome, e.Rank, e.Probability)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("endpoints (-want +got):\n%s", diff)
			}
			for uid, want := range tc.reason {
				if e, _ := r.Endpoint(uid); !strings.Contains(e.Reason, want) {
					t.Errorf("%s: reason %q, want it to contain %q", uid, e.Reason, want)
				}
			}
		})
	}

	t.Run("the table says the policy and each endpoint's probability and reason", func(t *testing.T) {
		out, errOut, code := runExplain(t, p.PlaintextAddr, "--service", "traffic/spec-prefer-close.traffic.svc.cluster.local", "--node", "node-a")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		for _, want := range []string{
			"client: network network1, cluster cluster1, node node-a, locality us-east/us-east-1a/rack-1\n",
			"routing preference: NETWORK, REGION, ZONE; mode: FAILOVER; health policy: ONLY_HEALTHY\n",
			"ENDPOINT", "PROBABILITY", "REASON",
			"100.0%", "outranked (rank 4 < 5): ZONE differs",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("table lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("the ztunnel-like client ranks its held state the same way", func(t *testing.T) {
		c := connectZtunnel(t, ztunnel.Config{Target: p.PlaintextAddr, NodeName: "node-b", ClusterID: cluster, Network: "network1"})
		const service = "traffic/spec-prefer-same-node.traffic.svc.cluster.local"
		picked, err := c.Pick(service)
		if err != nil {
			t.Fatal(err)
		}
		cli := explainJSON(t, p, "--service", service, "--node", "node-b")
		if diff := cmp.Diff(cli, picked, cmp.AllowUnexported(explain.Gateway{})); diff != "" {
			t.Errorf("peerd explain and the ztunnel client disagree (-cli +client):\n%s", diff)
		}
	})
}

func TestExplainFailures(t *testing.T) {
	// As shipped, backend-b (the only pod on node-b) is not Ready.
	p := startPeerd(t, peerdOptions{Args: []string{"--cluster-name", cluster, "--config-dir", repoPath("examples", "cluster1")}})
	for _, tc := range []struct {
		name       string
		args       []string
		wantStdout []string // empty: nothing printed
		wantStderr string
	}{
		{
			name:       "no healthy upstream: the table says why, and the exit code fails",
			args:       []string{"--service", "traffic/internal-local.traffic.svc.cluster.local", "--node", "node-b"},
			wantStdout: []string{"dropped by STRICT: NODE differs", "UNHEALTHY"},
			wantStderr: "no healthy upstream: 2 endpoint(s): 1 dropped by STRICT, 1 UNHEALTHY",
		},
		{
			name:       "an unknown service",
			args:       []string{"--service", "traffic/nope.traffic.svc.cluster.local", "--node", "node-a"},
			wantStderr: "service traffic/nope.traffic.svc.cluster.local: unknown service",
		},
		{
			name:       "a VIP of another network",
			args:       []string{"--service", "network2/10.96.2.51", "--node", "node-a"},
			wantStderr: "a client on network network1 looks VIPs up on its own network only (try network1/10.96.2.51)",
		},
		{
			name:       "a node without workloads",
			args:       []string{"--service", "traffic/ns-default.traffic.svc.cluster.local", "--node", "node-z"},
			wantStderr: `--node: node "node-z": no served workload with an address runs on it`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := runExplain(t, p.PlaintextAddr, tc.args...)
			if code != 1 || !strings.Contains(errOut, tc.wantStderr) {
				t.Fatalf("exit %d, stderr %q; want 1 and %q", code, errOut, tc.wantStderr)
			}
			if len(tc.wantStdout) == 0 && out != "" {
				t.Errorf("stdout %q, want nothing", out)
			}
			for _, want := range tc.wantStdout {
				if !strings.Contains(out, want) {
					t.Errorf("stdout lacks %q:\n%s", want, out)
				}
			}
		})
	}
}

// TestExplainOverTLS: explain reaches peerd's TLS listener as view does,
// trusting the mesh root only.
func TestExplainOverTLS(t *testing.T) {
	pki := peerdCerts(t, cluster)
	listen := freePort(t)
	startPeerd(t, peerdOptions{Args: []string{
		"--cluster-name", cluster, "--config-dir", repoPath("examples", "cluster1"),
		"--ca-dir", filepath.Join(pki, cluster), "--listen", listen,
	}})
	root := filepath.Join(pki, "root-cert.pem")
	query := []string{"--service", "traffic/spec-prefer-close.traffic.svc.cluster.local", "--node", "node-a"}

	out, errOut, code := runExplain(t, listen, append(query, "--tls", "--root-cert", root, "--server-name", "istiod.istio-system.svc")...)
	if code != 0 || !strings.Contains(out, "100.0%") {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	// The certificate does not name 127.0.0.1: the error says what to pass.
	_, errOut, code = runExplain(t, listen, append(query, "--tls", "--root-cert", root)...)
	if code != 1 || !strings.Contains(errOut, "pass --server-name") {
		t.Fatalf("exit %d, stderr %q; want 1 and a hint to pass --server-name", code, errOut)
	}
}
