package e2e

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayac "sigs.k8s.io/gateway-api/applyconfiguration/apis/v1"

	"github.com/peerd-mesh/peerd/internal/certs"
	"github.com/peerd-mesh/peerd/internal/discovery"
	"github.com/peerd-mesh/peerd/internal/federation"
	"github.com/peerd-mesh/peerd/internal/kubestate"
	"github.com/peerd-mesh/peerd/internal/kubeyaml"
	kubeharness "github.com/peerd-mesh/peerd/test/kube"
)

// liveStateLink is an istio-remote Gateway to cluster, dialled at
// 127.0.0.1:port.
func liveStateLink(t *testing.T, cluster string, port int) string {
	t.Helper()
	link, err := kubeyaml.Marshal(federation.RenderLink(federation.Link{
		Gateway: "istio-system/" + cluster, Namespace: "istio-system",
		Cluster: cluster, Network: "net-" + cluster,
		Addresses: []string{"127.0.0.1"}, XDSPort: uint32(port), HBONEPort: federation.DefaultHBONEPort,
	}))
	if err != nil {
		t.Fatal(err)
	}
	return string(link)
}

// TestKubernetesModeWritesLiveState: two peerd replicas against one API
// server elect one writer through the peerd Lease (its holder is the
// writer's pod name); the writer puts each link's live state on its
// istio-remote Gateway (a peer where nothing listens: Connecting; a peer
// whose certificate chains to another root: Rejected, naming the TLS
// error) and leaves istiod's own conditions alone; when the writer stops,
// the other replica takes the Lease over.
func TestKubernetesModeWritesLiveState(t *testing.T) {
	kube := kubeharness.Start(t, kubeharness.Options{GatewayCRDs: true})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	meshes := t.TempDir()
	for _, mesh := range []string{"ours", "theirs"} {
		if _, err := certs.GenerateMesh(filepath.Join(meshes, mesh), []string{"cluster1", "cluster3"}, certs.MeshOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// cluster3's peerd, as far as the handshake goes: a certificate of
	// another mesh.
	theirs, err := certs.LoadCA(filepath.Join(meshes, "theirs", "cluster3"))
	if err != nil {
		t.Fatal(err)
	}
	serverTLS, err := theirs.ServerTLSConfig([]string{"peerd.istio-system.svc"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	wrongRoot := grpc.NewServer(grpc.Creds(credentials.NewTLS(serverTLS)))
	go func() { _ = wrongRoot.Serve(lis) }()
	t.Cleanup(wrongRoot.Stop)
	// cluster2: nothing listens at its address.
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := closed.Addr().(*net.TCPAddr).Port
	closed.Close()

	base := kubeStateManifest(t)
	manifest := base[:strings.Index(base, "---")] + "---\n" +
		liveStateLink(t, "cluster2", closedPort) + "---\n" + liveStateLink(t, "cluster3", lis.Addr().(*net.TCPAddr).Port)
	objs, err := discovery.DecodeManifests("test.yaml", []byte(manifest))
	if err != nil {
		t.Fatal(err)
	}
	if err := kube.Apply(ctx, objs); err != nil {
		t.Fatal(err)
	}
	gateways := kube.Gateway.GatewayV1().Gateways("istio-system")
	// istiod's condition on the same Gateway, under its own field manager.
	if _, err := gateways.ApplyStatus(ctx, gatewayac.Gateway("cluster3", "istio-system").WithStatus(
		gatewayac.GatewayStatus().WithConditions(metav1ac.Condition().
			WithType("Programmed").WithStatus(metav1.ConditionTrue).WithReason("Programmed").WithMessage("by istiod").
			WithLastTransitionTime(metav1.Now()))),
		metav1.ApplyOptions{FieldManager: "istio.io/gateway-controller", Force: true}); err != nil {
		t.Fatal(err)
	}

	args := func(pod string) []string {
		return []string{"--cluster-name", "cluster1", "--kubeconfig", kube.Kubeconfig, "--pod-name", pod,
			"--ca-dir", filepath.Join(meshes, "ours", "cluster1"), "--listen", freePort(t),
			"--peer-sync-timeout", "1s", "--drain-duration", "0s"}
	}
	replicas := map[string]*peerdProcess{
		"peerd-a": startPeerd(t, peerdOptions{Args: args("peerd-a")}),
		"peerd-b": startPeerd(t, peerdOptions{Args: args("peerd-b")}),
	}

	leases := kube.Kube.CoordinationV1().Leases("istio-system")
	holder := func() string {
		l, err := leases.Get(ctx, kubestate.LeaseName, metav1.GetOptions{})
		if err != nil {
			return err.Error()
		}
		if l.Spec.HolderIdentity == nil {
			return ""
		}
		return *l.Spec.HolderIdentity
	}
	waitUntil(t, time.Minute, "one replica to hold the Lease", func() bool { return replicas[holder()] != nil }, holder)
	first := holder()
	other := "peerd-a"
	if first == other {
		other = "peerd-b"
	}
	for name, p := range replicas {
		want := "0"
		if name == first {
			want = "1"
		}
		_, metrics := p.get("/metrics")
		if !strings.Contains(metrics, "\npeerd_leader "+want+"\n") {
			t.Errorf("%s: peerd_leader is not %s", name, want)
		}
	}
	if _, readyz := replicas[first].get("/readyz"); !strings.Contains(readyz, "holds the Lease") {
		t.Errorf("the leader's /readyz does not say it holds the Lease:\n%s", readyz)
	}

	condition := func(name, typ string) func() *metav1.Condition {
		return func() *metav1.Condition {
			gw, err := gateways.Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return nil
			}
			for i := range gw.Status.Conditions {
				if gw.Status.Conditions[i].Type == typ {
					return &gw.Status.Conditions[i]
				}
			}
			return nil
		}
	}
	waitCondition := func(name, typ string, status metav1.ConditionStatus, reason string, message ...string) {
		t.Helper()
		get := condition(name, typ)
		waitUntil(t, time.Minute, fmt.Sprintf("gateway %s: %s %s/%s", name, typ, status, reason), func() bool {
			c := get()
			if c == nil || c.Status != status || c.Reason != reason {
				return false
			}
			for _, m := range message {
				if !strings.Contains(c.Message, m) {
					return false
				}
			}
			return true
		}, func() string { return fmt.Sprintf("%+v", get()) })
	}
	waitCondition("cluster2", federation.ConditionConnected, metav1.ConditionFalse, federation.ReasonConnecting, "connecting to cluster cluster2")
	waitCondition("cluster2", federation.ConditionSynced, metav1.ConditionFalse, federation.ReasonConnecting, "no message from the peer yet")
	waitCondition("cluster3", federation.ConditionConnected, metav1.ConditionFalse, federation.ReasonRejected, "rejected (tls)", "certificate")
	waitCondition("cluster3", federation.ConditionSynced, metav1.ConditionFalse, federation.ReasonRejected, "rejected (tls)", "certificate")
	if c := condition("cluster3", "Programmed")(); c == nil || c.Status != metav1.ConditionTrue || c.Message != "by istiod" {
		t.Errorf("istiod's Programmed condition on cluster3 was touched: %+v", c)
	}
	gw, err := gateways.Get(ctx, "cluster3", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range gw.ManagedFields {
		if mf.Manager == "peerd" && mf.Subresource != "status" {
			t.Errorf("peerd owns fields of gateway cluster3 outside its status: %+v", mf)
		}
	}

	okWrites := func(name string) string {
		_, metrics := replicas[name].get("/metrics")
		for _, line := range strings.Split(metrics, "\n") {
			if strings.HasPrefix(line, `peerd_status_writes_total{result="ok"}`) {
				return strings.Fields(line)[1]
			}
		}
		return "absent"
	}
	if w := okWrites(other); w != "0" {
		t.Errorf("%s, not holding the Lease, wrote status: peerd_status_writes_total{result=\"ok\"} %s", other, w)
	}

	// The writer stops; the other replica takes over and writes every
	// link once (its own view).
	replicas[first].Stop()
	waitUntil(t, time.Minute, other+" to take the Lease over", func() bool { return holder() == other }, holder)
	waitUntil(t, time.Minute, other+" to report peerd_leader 1", func() bool {
		_, metrics := replicas[other].get("/metrics")
		return strings.Contains(metrics, "\npeerd_leader 1\n")
	}, func() string { _, r := replicas[other].get("/readyz"); return r })
	waitUntil(t, time.Minute, other+" to write the links' state", func() bool {
		w := okWrites(other)
		return w != "0" && w != "absent"
	}, func() string { return okWrites(other) })
	var gw2 *gatewayv1.Gateway
	if gw2, err = gateways.Get(ctx, "cluster2", metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	}
	if c := condition("cluster2", federation.ConditionSynced)(); c == nil || c.ObservedGeneration != gw2.Generation {
		t.Errorf("cluster2's Synced condition %+v does not observe generation %d", c, gw2.Generation)
	}
}

// waitUntil polls cond every 100ms until it holds, failing after timeout
// with what describes the last state.
func waitUntil(t *testing.T, timeout time.Duration, desc string, cond func() bool, what func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s; last: %s", timeout, desc, what())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestKubernetesModeReadsTheMeshConfig: peerd takes its trust domain from
// istiod's ConfigMap, and refuses to start on one it cannot parse rather
// than guess.
func TestKubernetesModeReadsTheMeshConfig(t *testing.T) {
	kube := kubeharness.Start(t, kubeharness.Options{GatewayCRDs: true})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	base := kubeStateManifest(t)
	objs, err := discovery.DecodeManifests("test.yaml", []byte(base[:strings.Index(base, "---")]))
	if err != nil {
		t.Fatal(err)
	}
	if err := kube.Apply(ctx, objs); err != nil {
		t.Fatal(err)
	}
	configMaps := kube.Kube.CoreV1().ConfigMaps("istio-system")
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "istio"}, Data: map[string]string{"mesh": "trustDomain: [\n"}}
	if cm, err = configMaps.Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	args := []string{"--cluster-name", "cluster1", "--kubeconfig", kube.Kubeconfig, "--peer-sync-timeout", "1s"}

	broken := startPeerd(t, peerdOptions{Args: args, NoWait: true})
	if logs := broken.waitExit(t); !strings.Contains(logs, "configmap istio-system/istio: data.mesh") {
		t.Errorf("peerd on a malformed mesh config did not name it:\n%s", logs)
	}

	cm.Data["mesh"] = "trustDomain: cluster1.example\nrootNamespace: istio-system\n"
	if _, err := configMaps.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	p := startPeerd(t, peerdOptions{Args: args})
	if logs := p.Logs(); !strings.Contains(logs, `"trust_domain":"cluster1.example"`) {
		t.Errorf("peerd did not take the mesh config's trust domain:\n%s", logs)
	}
	p.Stop()
	flagged := startPeerd(t, peerdOptions{Args: append(args, "--trust-domain", "override.example")})
	if logs := flagged.Logs(); !strings.Contains(logs, "--trust-domain overrides") || !strings.Contains(logs, `"trust_domain":"override.example"`) {
		t.Errorf("--trust-domain did not override the mesh config:\n%s", logs)
	}
}
