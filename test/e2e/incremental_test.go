package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
	"github.com/peerd-mesh/peerd/test/ztunnel"
)

// Edits of fields the mapping never reads (a node's status heartbeat, a pod
// condition other than Ready, resourceVersion and managedFields) reach
// neither the model nor any client: only the real change that follows them
// does, as exactly one changed object and one push.
func TestIrrelevantEditsCauseNoRecomputeAndNoPush(t *testing.T) {
	dir := copyDir(t, repoPath("examples", "cluster1"))
	p := startPeerd(t, peerdOptions{Args: []string{"--cluster-name", cluster, "--config-dir", dir}})
	c := connectZtunnel(t, ztunnel.Config{Target: p.PlaintextAddr, ClusterID: cluster})

	const uid = "cluster1//Pod/legacy/web-3"
	pod := `apiVersion: v1
kind: Pod
metadata: {name: web-3, namespace: legacy, labels: {app: web}, resourceVersion: "1"}
spec:
  nodeName: node-b
  containers: [{name: web, image: example.com/web:1.0}]
status:
  phase: Running
  podIP: 10.244.2.33
  podIPs: [{ip: 10.244.2.33}]
  conditions: [{type: Ready, status: "True"}]
`
	podFile := filepath.Join(dir, "41-web-3.yaml")
	writeFile(t, podFile, pod)
	waitState(t, c, "new pod", func(s *ztunnel.State) bool { return s.Workloads[uid] != nil })
	changed, _ := p.metric(t, "peerd_model_changed_objects_total")
	pushes, _ := p.metric(t, "peerd_xds_pushes_total", "istio.workload.Address")

	// Irrelevant edits: a node heartbeat and a pod's other conditions and
	// bookkeeping.
	nodes := filepath.Join(dir, "01-nodes.yaml")
	data, err := os.ReadFile(nodes)
	if err != nil {
		t.Fatal(err)
	}
	heartbeat := strings.Replace(string(data), "  name: node-a\n", "  name: node-a\n  resourceVersion: \"77\"\n", 1) +
		"status:\n  conditions: [{type: Ready, status: \"True\", lastHeartbeatTime: \"2026-12-03T20:00:00Z\"}]\n"
	writeFile(t, nodes, heartbeat)
	writeFile(t, podFile, strings.Replace(
		strings.Replace(pod, `resourceVersion: "1"`, `resourceVersion: "2", managedFields: [{manager: kubelet, operation: Update}]`, 1),
		`conditions: [{type: Ready, status: "True"}]`,
		`conditions: [{type: Ready, status: "True"}, {type: ContainersReady, status: "False"}, {type: PodScheduled, status: "True"}]`, 1))
	// The real change, after them: once the client has it, every earlier
	// edit has been processed.
	writeFile(t, podFile, strings.Replace(pod, `{type: Ready, status: "True"}`, `{type: Ready, status: "False"}`, 1))
	waitState(t, c, "pod turns unhealthy", func(s *ztunnel.State) bool {
		return s.Workloads[uid].GetStatus() == workloadpb.WorkloadStatus_UNHEALTHY
	})
	p.waitMetric(t, changed+1, "peerd_model_changed_objects_total")
	p.waitMetric(t, pushes+1, "peerd_xds_pushes_total", "istio.workload.Address")
	if got, _ := p.metric(t, "peerd_model_changed_objects_total"); got != changed+1 {
		t.Fatalf("changed objects went from %v to %v: irrelevant edits reached the model", changed, got)
	}
}
