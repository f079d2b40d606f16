package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/peerd-mesh/peerd/internal/discovery"
	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
	kubeharness "github.com/peerd-mesh/peerd/test/kube"
	"github.com/peerd-mesh/peerd/test/ztunnel"
)

// kubeChange is one manifest applied the same way to both sources: written
// as a file under the file peerd's --config-dir, and created through the API
// server the Kubernetes peerd watches.
const kubeChangePod = `apiVersion: v1
kind: Pod
metadata:
  name: web-2
  namespace: legacy
  labels: {app: web2}
spec:
  serviceAccountName: web
  nodeName: node-b
  containers:
  - name: web
    image: example.com/web:1.0
    ports: [{name: web, containerPort: 8000}]
status:
  phase: Running
  podIP: 10.244.2.31
  podIPs: [{ip: 10.244.2.31}]
  conditions: [{type: Ready, status: "True"}]
`

const kubeChangeService = `apiVersion: v1
kind: Service
metadata:
  name: web2
  namespace: legacy
spec:
  clusterIP: 10.96.1.20
  selector: {app: web2}
  ports: [{name: http, port: 80, targetPort: web}]
`

// apiServerService is the Service every API server makes for itself. It is
// real, so peerd serves it from Kubernetes; no manifest has it, so the
// comparison with the file source leaves it out.
const apiServerService = "default/kubernetes.default.svc.cluster.local"

// TestKubernetesSourceServesWhatTheFileSourceServes runs a real
// kube-apiserver, puts the example manifests into it, and checks that a
// peerd watching it through --kubeconfig gives a wildcard ztunnel exactly
// what a peerd reading the same manifests with --config-dir gives; then that
// creates, status updates and deletes made through the API arrive, again
// identical to the same edits made to files.
func TestKubernetesSourceServesWhatTheFileSourceServes(t *testing.T) {
	kube := kubeharness.Start(t, kubeharness.Options{GatewayCRDs: true})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := copyDir(t, repoPath("examples", "cluster1"))
	if err := kube.ApplyDir(ctx, dir); err != nil {
		t.Fatal(err)
	}

	kubePeerd := startPeerd(t, peerdOptions{Args: []string{"--cluster-name", cluster, "--kubeconfig", kube.Kubeconfig}})
	filePeerd := startPeerd(t, peerdOptions{Args: []string{"--cluster-name", cluster, "--config-dir", dir}})
	kc := connectZtunnel(t, ztunnel.Config{Target: kubePeerd.PlaintextAddr, ClusterID: cluster, Network: "network1"})
	fc := connectZtunnel(t, ztunnel.Config{Target: filePeerd.PlaintextAddr, ClusterID: cluster, Network: "network1"})

	// The file side is checked against the model by files_test.go; here it
	// is the reference, and it must not be trivially empty.
	want := expectedAddresses(t, dir)
	if len(want) < 10 {
		t.Fatalf("the example manifests map to only %d addresses", len(want))
	}
	waitSame(t, "initial state", kc, fc, func(h map[string]*workloadpb.Address) bool { return len(h) == len(want) })
	if held(kc)[apiServerService] == nil {
		t.Errorf("the API server's own Service %s is not served", apiServerService)
	}
	if diff := cmp.Diff(want, withoutAPIServer(held(kc)), protocmp.Transform()); diff != "" {
		t.Fatalf("kubernetes-sourced client differs from the model (-model +client):\n%s", diff)
	}

	// Create: a pod and a service selecting it by a named port.
	const uid = "cluster1//Pod/legacy/web-2"
	const svc = "legacy/web2.legacy.svc.cluster.local"
	file := filepath.Join(dir, "40-web-2.yaml")
	applyBoth(t, ctx, kube, file, kubeChangePod+"---\n"+kubeChangeService)
	waitSame(t, "pod and service created", kc, fc, func(h map[string]*workloadpb.Address) bool {
		w := h[uid].GetWorkload()
		return w != nil && h[svc] != nil && w.GetStatus() == workloadpb.WorkloadStatus_HEALTHY &&
			w.GetServices()[svc] != nil
	})
	if got := held(kc)[uid].GetWorkload().GetServices()[svc].GetPorts(); len(got) != 1 || got[0].TargetPort != 8000 {
		t.Errorf("pod legacy/web-2: named target port web resolved to %v, want 80->8000", got)
	}

	// Status update through the status subresource: the pod turns not ready.
	notReady := strings.Replace(kubeChangePod, `status: "True"`, `status: "False"`, 1)
	applyBoth(t, ctx, kube, file, notReady+"---\n"+kubeChangeService)
	waitSame(t, "pod not ready", kc, fc, func(h map[string]*workloadpb.Address) bool {
		return h[uid].GetWorkload().GetStatus() == workloadpb.WorkloadStatus_UNHEALTHY
	})

	// Metadata update: the CNI captures the pod, so it becomes HBONE.
	captured := strings.Replace(notReady, "  labels: {app: web2}\n",
		"  labels: {app: web2}\n  annotations: {ambient.istio.io/redirection: enabled}\n", 1)
	applyBoth(t, ctx, kube, file, captured+"---\n"+kubeChangeService)
	waitSame(t, "pod captured", kc, fc, func(h map[string]*workloadpb.Address) bool {
		return h[uid].GetWorkload().GetTunnelProtocol() == workloadpb.TunnelProtocol_HBONE
	})

	// Delete both objects.
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	if err := kube.Kube.CoreV1().Pods("legacy").Delete(ctx, "web-2", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	if err := kube.Kube.CoreV1().Services("legacy").Delete(ctx, "web2", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitSame(t, "pod and service deleted", kc, fc, func(h map[string]*workloadpb.Address) bool {
		return h[uid] == nil && h[svc] == nil
	})
	if diff := cmp.Diff(want, withoutAPIServer(held(kc)), protocmp.Transform()); diff != "" {
		t.Fatalf("after the deletes the kubernetes-sourced client differs from the start (-start +now):\n%s", diff)
	}
	for name, c := range map[string]*ztunnel.Client{"kubernetes": kc, "files": fc} {
		if st := c.Stats(); st.NACKs != 0 {
			t.Errorf("%s-sourced client NACKed: %s", name, st.LastNACK)
		}
	}
}

// applyBoth makes the same manifest hold in both sources: the file is
// (re)written and its objects are applied through the API server.
func applyBoth(t *testing.T, ctx context.Context, kube *kubeharness.Cluster, file, manifest string) {
	t.Helper()
	objs, err := discovery.DecodeManifests(file, []byte(manifest))
	if err != nil {
		t.Fatal(err)
	}
	if err := kube.Apply(ctx, objs); err != nil {
		t.Fatal(err)
	}
	writeFile(t, file, manifest)
}

// waitSame waits until both clients hold identical Address resources and
// cond holds for them; on timeout it shows how they differ.
func waitSame(t *testing.T, what string, kubeClient, fileClient *ztunnel.Client, cond func(map[string]*workloadpb.Address) bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	for {
		k, kResponses := snapshot(kubeClient)
		f, fResponses := snapshot(fileClient)
		if cond(k) && cond(f) && cmp.Equal(k, f, protocmp.Transform()) {
			return
		}
		// Wake on the next response to either client; neither one getting
		// another response within the bound is the failure.
		iterCtx, iterCancel := context.WithCancel(ctx)
		kubeCh := nextResponse(iterCtx, kubeClient, kResponses)
		fileCh := nextResponse(iterCtx, fileClient, fResponses)
		select {
		case <-kubeCh:
		case <-fileCh:
		case <-ctx.Done():
			iterCancel()
			t.Fatalf("%s: the kubernetes-sourced and file-sourced clients did not converge (condition on kubernetes side %v, files side %v); (-files +kubernetes):\n%s",
				what, cond(k), cond(f), cmp.Diff(f, k, protocmp.Transform()))
		}
		iterCancel()
	}
}

// snapshot returns what c holds and how many responses it had, atomically.
func snapshot(c *ztunnel.Client) (map[string]*workloadpb.Address, int) {
	var held map[string]*workloadpb.Address
	var responses int
	_ = c.WaitFor(context.Background(), func(s *ztunnel.State) bool {
		held = make(map[string]*workloadpb.Address, len(s.Workloads)+len(s.Services))
		for name, w := range s.Workloads {
			held[name] = &workloadpb.Address{Type: &workloadpb.Address_Workload{Workload: w}}
		}
		for name, svc := range s.Services {
			held[name] = &workloadpb.Address{Type: &workloadpb.Address_Service{Service: svc}}
		}
		responses = s.Responses
		return true
	})
	return withoutAPIServer(held), responses
}

func withoutAPIServer(h map[string]*workloadpb.Address) map[string]*workloadpb.Address {
	delete(h, apiServerService)
	return h
}

// nextResponse closes its channel once c has received more than seen
// responses (or ctx ends).
func nextResponse(ctx context.Context, c *ztunnel.Client, seen int) <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		_ = c.WaitFor(ctx, func(s *ztunnel.State) bool { return s.Responses > seen })
	}()
	return ch
}

// TestKubernetesSourceWithoutGatewayCRD: a cluster without the Gateway API
// CRDs must not hold peerd's readiness back; peerd says what is missing.
func TestKubernetesSourceWithoutGatewayCRD(t *testing.T) {
	kube := kubeharness.Start(t, kubeharness.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := repoPath("examples", "cluster1")
	if err := kube.ApplyDir(ctx, dir); err != nil {
		t.Fatal(err)
	}
	// startPeerd waits for /readyz, which needs the Kubernetes source synced.
	p := startPeerd(t, peerdOptions{Args: []string{"--cluster-name", cluster, "--kubeconfig", kube.Kubeconfig}})
	c := connectZtunnel(t, ztunnel.Config{Target: p.PlaintextAddr, ClusterID: cluster, Network: "network1"})
	want := expectedAddresses(t, dir)
	waitState(t, c, "the example mesh", func(s *ztunnel.State) bool {
		return len(s.Workloads)+len(s.Services) == len(want)+1 // + the API server's own Service
	})
	if !strings.Contains(p.Logs(), "Gateway API CRD is not installed") {
		t.Errorf("no warning about the missing Gateway API CRD in the log:\n%s", p.Logs())
	}

	// The example's unknown traffic-distribution value is reported where
	// `kubectl describe service` shows it: a Warning Event on the Service.
	svc, err := kube.Kube.CoreV1().Services("traffic").Get(ctx, "annotation-unknown", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a Warning Event on service traffic/annotation-unknown", func() bool {
		events, err := kube.Kube.CoreV1().Events("traffic").List(ctx, metav1.ListOptions{
			FieldSelector: "involvedObject.name=annotation-unknown,involvedObject.uid=" + string(svc.UID) + ",reason=PeerdInvalidConfig",
		})
		if err != nil || len(events.Items) == 0 {
			return false
		}
		e := events.Items[0]
		return e.Type == "Warning" && strings.Contains(e.Message, "Closest") &&
			strings.Contains(e.Message, "networking.istio.io/traffic-distribution")
	})
}
