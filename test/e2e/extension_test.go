package e2e

import (
	"context"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
	"github.com/peerd-mesh/peerd/test/ztunnel"
)

// Extension mode against a fake istiod: a standalone peerd serves
// ztunnel's stream exactly as istiod would for the objects it is given, so
// it stands in for istiod where no pilot-discovery binary is needed (the
// real one is in test/istio). The real istiod test covers waypoints,
// ServiceEntries, WorkloadEntries and policies; this one covers the relay,
// the amendments, the additions and a restart, fast.

const (
	echoPlain  = "apps/echo.apps.svc.cluster.local"
	echoGlobal = "apps/echo.apps.mesh.internal"
)

// onlyPod is a captured pod of app=only in apps; no Service selects it.
func onlyPod(name, ip string) string {
	return `apiVersion: v1
kind: Pod
metadata: {name: ` + name + `, namespace: apps, labels: {app: only}, annotations: {ambient.istio.io/redirection: enabled}}
spec: {nodeName: node-a, containers: [{name: c, image: example.com/c}]}
status: {phase: Running, podIP: ` + ip + `, podIPs: [{ip: ` + ip + `}], conditions: [{type: Ready, status: "True"}]}
`
}

func TestExtensionModeRelaysTheUpstreamAndAddsTheMesh(t *testing.T) {
	// What istiod sees: the cluster without peerd's scope labels, plus a pod
	// standing in for what only istiod serves (peerd's files lack it).
	istiodDir := copyDir(t, repoPath("examples", "cluster1"))
	writeFile(t, filepath.Join(istiodDir, "90-only-istiod.yaml"), onlyPod("only-istiod", "10.1.9.1"))
	upstream := startPeerd(t, peerdOptions{Args: []string{"--cluster-name", cluster, "--config-dir", istiodDir}})

	// What peerd sees: echo is global, and a pod istiod does not serve
	// (peerd's own mapping of it must not reach ztunnel).
	peerdDir := copyDir(t, repoPath("examples", "cluster1"))
	edit(t, filepath.Join(peerdDir, "10-apps-echo.yaml"), "  labels:\n    app: echo\nspec:", "  labels:\n    app: echo\n    solo.io/service-scope: global\nspec:")
	writeFile(t, filepath.Join(peerdDir, "90-only-peerd.yaml"), onlyPod("only-peerd", "10.1.9.2"))
	relay := startPeerd(t, peerdOptions{Args: []string{"--cluster-name", cluster, "--config-dir", peerdDir, "--istiod-address", upstream.PlaintextAddr}})

	u := connectZtunnel(t, ztunnel.Config{Target: upstream.PlaintextAddr, ClusterID: cluster})
	c := connectZtunnel(t, ztunnel.Config{Target: relay.PlaintextAddr, ClusterID: cluster})
	standalone := expectedAddresses(t, peerdDir)
	want := relayedWant(t, held(u), standalone)
	waitHolds(t, c, "the relayed cluster plus the mesh", want)
	if _, ok := held(c)[cluster+"//Pod/apps/only-istiod"]; !ok {
		t.Errorf("the pod only istiod serves is missing")
	}
	if st := c.Stats(); st.NACKs != 0 {
		t.Errorf("client NACKed: %s", st.LastNACK)
	}
	if _, body := relay.get("/readyz"); !strings.Contains(body, "istiod: synced") || strings.Contains(body, "authorization: no policy source") {
		t.Errorf("/readyz does not say it relays istiod:\n%s", body)
	}
	if _, metrics := relay.get("/metrics"); !strings.Contains(metrics, "peerd_authorization_source_missing 0") || !strings.Contains(metrics, "peerd_istiod_conflicts 0") {
		t.Errorf("metrics: want peerd_authorization_source_missing 0 and peerd_istiod_conflicts 0")
	}

	// On demand, peerd answers from the relayed state as istiod does.
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	uo := ztunnel.Start(t, ztunnel.Config{Target: upstream.PlaintextAddr, ClusterID: cluster, OnDemand: true})
	co := ztunnel.Start(t, ztunnel.Config{Target: relay.PlaintextAddr, ClusterID: cluster, OnDemand: true})
	for _, key := range []string{"network1/10.1.9.1", echoPlain, cluster + "//Pod/apps/only-istiod"} {
		fromIstiod, err := uo.Lookup(ctx, key)
		if err != nil {
			t.Fatalf("lookup %s at the upstream: %v", key, err)
		}
		fromPeerd, err := co.Lookup(ctx, key)
		if err != nil {
			t.Fatalf("lookup %s at peerd: %v", key, err)
		}
		slices.Sort(fromIstiod)
		slices.Sort(fromPeerd)
		if len(fromIstiod) == 0 || !slices.Equal(fromIstiod, fromPeerd) {
			t.Errorf("on-demand %s: upstream answers %v, peerd %v", key, fromIstiod, fromPeerd)
		}
	}

	// istiod goes away: peerd keeps serving everything and says it is stale.
	upstream.Stop()
	waitReadyzContains(t, relay, "istiod: stale since")
	if code, body := relay.get("/readyz"); code != http.StatusOK {
		t.Errorf("/readyz %d while serving the last relayed state:\n%s", code, body)
	}
	if _, metrics := relay.get("/metrics"); !strings.Contains(metrics, "peerd_istiod_stale 1") {
		t.Errorf("metrics: want peerd_istiod_stale 1")
	}
	if _, dbg := relay.get("/debug/istiod"); !strings.Contains(dbg, `"stale": true`) || !strings.Contains(dbg, `"lastError"`) {
		t.Errorf("/debug/istiod does not show the relay stale with its error:\n%s", dbg)
	}
	if d := cmp.Diff(want, held(c), protocmp.Transform()); d != "" {
		t.Errorf("the client lost state while istiod was down (-before +now):\n%s", d)
	}

	// While it is down, the pod only istiod served goes; istiod comes back
	// on the same address; peerd resumes and converges.
	if err := os.Remove(filepath.Join(istiodDir, "90-only-istiod.yaml")); err != nil {
		t.Fatal(err)
	}
	startPeerd(t, peerdOptions{PlaintextAddr: upstream.PlaintextAddr, Args: []string{"--cluster-name", cluster, "--config-dir", istiodDir}})
	delete(want, cluster+"//Pod/apps/only-istiod")
	waitHolds(t, c, "convergence after istiod's restart", want)
	waitReadyzContains(t, relay, "istiod: synced")
}

// relayedWant is what a client of peerd must hold: every resource the
// upstream serves, the workloads of the global echo Service as standalone
// peerd maps them (the upstream's plus the global key), and the global
// service as standalone peerd serves it.
func relayedWant(t *testing.T, upstream, standalone map[string]*workloadpb.Address) map[string]*workloadpb.Address {
	t.Helper()
	want := maps.Clone(upstream)
	amended := 0
	for name, a := range upstream {
		w := a.GetWorkload()
		if _, ok := w.GetServices()[echoPlain]; !ok {
			continue
		}
		// The amendment adds the key and nothing else.
		plus := proto.CloneOf(w)
		plus.Services[echoGlobal] = proto.CloneOf(w.Services[echoPlain])
		if d := cmp.Diff(plus, standalone[name].GetWorkload(), protocmp.Transform()); d != "" {
			t.Fatalf("%s: standalone peerd's workload is not the upstream's plus the global key (-upstream+key +standalone):\n%s", name, d)
		}
		want[name] = standalone[name]
		amended++
	}
	if amended == 0 {
		t.Fatalf("no upstream workload lists %s: the test proves nothing; upstream names %v", echoPlain, slices.Sorted(maps.Keys(upstream)))
	}
	if standalone[echoGlobal] == nil {
		t.Fatalf("standalone peerd serves no %s", echoGlobal)
	}
	want[echoGlobal] = standalone[echoGlobal]
	return want
}

// waitHolds waits until c holds exactly want, and says what differs if it
// never does.
func waitHolds(t *testing.T, c *ztunnel.Client, what string, want map[string]*workloadpb.Address) {
	t.Helper()
	// A bound for a stuck relay (the reconnect backoff included), not a
	// latency assertion.
	deadline := time.Now().Add(peeringWait)
	for !cmp.Equal(want, held(c), protocmp.Transform()) {
		if time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		t.Fatalf("%s: the client holds something else (-want +held):\n%s", what, cmp.Diff(want, held(c), protocmp.Transform()))
	}
}
