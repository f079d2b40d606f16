package e2e

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
	kubeharness "github.com/peerd-mesh/peerd/test/kube"
	"github.com/peerd-mesh/peerd/test/ztunnel"
)

// TestRelayBenchmark is issue 10 section 6, measured (not asserted): how
// much later a change in istiod reaches a client of peerd than a client of
// istiod itself, side by side, and peerd's memory for a relayed cluster of
// PEERD_RELAY_BENCH_PODS pods (default 10,000). It runs only with
// PEERD_RELAY_BENCH=1 (minutes, and a loaded machine makes the figures
// noise); docs/benchmarks.md has the command and the last results.
func TestRelayBenchmark(t *testing.T) {
	if os.Getenv("PEERD_RELAY_BENCH") == "" {
		t.Skip("a benchmark: set PEERD_RELAY_BENCH=1 to run it")
	}
	pods := 10000
	if v := os.Getenv("PEERD_RELAY_BENCH_PODS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("PEERD_RELAY_BENCH_PODS=%q: want a positive number", v)
		}
		pods = n
	}
	kubeharness.RequireIstiod(t)
	kube := kubeharness.Start(t, kubeharness.Options{GatewayCRDs: true})
	istiod := kube.StartIstiod(t, kubeharness.IstiodOptions{ClusterID: cluster})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()

	start := time.Now()
	if err := kube.Apply(ctx, []runtime.Object{&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "bench", Labels: map[string]string{"istio.io/dataplane-mode": "ambient"}}}}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Go(func() {
			var objs []runtime.Object
			for i := w; i < pods; i += 8 {
				objs = append(objs, benchPod(i, true))
			}
			if err := kube.Apply(ctx, objs); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("%d pods created in %s", pods, time.Since(start).Round(time.Second))

	u := connectZtunnel(t, ztunnel.Config{Target: istiod.GRPCAddr, ClusterID: cluster})
	waitStateFor(t, u, 10*time.Minute, "istiod's client holding every pod", func(s *ztunnel.State) bool { return len(s.Workloads) >= pods },
		func() string { return fmt.Sprint(len(u.Workloads())) })
	p := startPeerd(t, peerdOptions{Args: []string{"--cluster-name", cluster, "--kubeconfig", kube.Kubeconfig,
		"--istiod-address", istiod.GRPCAddr, "--peer-sync-timeout", "1s"}})
	c := connectZtunnel(t, ztunnel.Config{Target: p.PlaintextAddr, ClusterID: cluster})
	waitStateFor(t, c, 10*time.Minute, "peerd's client holding every pod", func(s *ztunnel.State) bool { return len(s.Workloads) >= pods },
		func() string { return fmt.Sprint(len(c.Workloads())) })

	// Memory once the relayed state is in and the start-up garbage is gone
	// (peerd frees it after the first model).
	rss, _ := p.metric(t, "process_resident_memory_bytes")
	heap, _ := p.metric(t, "go_memstats_heap_inuse_bytes")
	t.Logf("peerd relaying %d pods: RSS %.0f MiB, heap in use %.0f MiB", pods, rss/(1<<20), heap/(1<<20))

	// Latency: flip one pod's readiness; each client's time to see the
	// new status, from the same status update.
	const changes = 50
	var delays []time.Duration
	pods0 := kube.Kube.CoreV1().Pods("bench")
	for i := range changes {
		ready := i%2 == 1
		want := workloadpb.WorkloadStatus_UNHEALTHY
		if ready {
			want = workloadpb.WorkloadStatus_HEALTHY
		}
		// Each pod goes unready, then ready again.
		n := (i / 2) % pods
		uid := cluster + "//Pod/bench/" + benchPodName(n)
		seen := func(cl *ztunnel.Client) <-chan time.Time {
			ch := make(chan time.Time, 1)
			go func() {
				wctx, wcancel := context.WithTimeout(ctx, time.Minute)
				defer wcancel()
				if cl.WaitFor(wctx, func(s *ztunnel.State) bool { return s.Workloads[uid].GetStatus() == want }) == nil {
					ch <- time.Now()
				}
				close(ch)
			}()
			return ch
		}
		atIstiod, atPeerd := seen(u), seen(c)
		pod, err := pods0.Get(ctx, benchPodName(n), metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pod.Status = benchPod(n, ready).Status
		if _, err := pods0.UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		ti, ok1 := <-atIstiod
		tp, ok2 := <-atPeerd
		if !ok1 || !ok2 {
			t.Fatalf("change %d (%s ready=%v) not seen: istiod's client %v, peerd's %v", i, uid, ready, ok1, ok2)
		}
		delays = append(delays, tp.Sub(ti))
	}
	slices.Sort(delays)
	t.Logf("a change reaches peerd's client after istiod's, over %d changes: p50 %s, p90 %s, max %s",
		changes, delays[len(delays)/2], delays[len(delays)*9/10], delays[len(delays)-1])
}

func benchPodName(i int) string { return fmt.Sprintf("pod-%05d", i) }

// benchPod is a captured pod of the bench namespace with a unique IP.
func benchPod(i int, ready bool) *corev1.Pod {
	cond := corev1.ConditionTrue
	if !ready {
		cond = corev1.ConditionFalse
	}
	ip := fmt.Sprintf("10.%d.%d.%d", 100+i/65536, (i/256)%256, i%256)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: benchPodName(i), Namespace: "bench", Labels: map[string]string{"app": "bench"},
			Annotations: map[string]string{"ambient.istio.io/redirection": "enabled"}},
		Spec: corev1.PodSpec{ServiceAccountName: "bench", NodeName: "node-a",
			Containers: []corev1.Container{{Name: "c", Image: "example.com/c"}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: cond}}},
	}
}
