package kubeharness

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

func TestClusterHoldsTheExamplesAsWritten(t *testing.T) {
	c := Start(t, Options{GatewayCRDs: true})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	dir := filepath.Join("..", "..", "examples", "cluster1")
	if err := c.ApplyDir(ctx, dir); err != nil {
		t.Fatal(err)
	}
	// Applying again must converge, not fail on existing objects.
	if err := c.ApplyDir(ctx, dir); err != nil {
		t.Fatalf("second apply: %v", err)
	}

	// The kubeconfig file is what the peerd binary gets: it must work alone.
	fileCfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	fileClient, err := kubernetes.NewForConfig(fileCfg)
	if err != nil {
		t.Fatal(err)
	}
	ns, err := fileClient.CoreV1().Namespaces().Get(ctx, "istio-system", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("through the kubeconfig file: %v", err)
	}
	if got := ns.Labels["topology.istio.io/network"]; got != "network1" {
		t.Errorf("namespace istio-system: label topology.istio.io/network = %q, want network1", got)
	}

	pods := c.Kube.CoreV1().Pods("apps")
	ready, err := pods.Get(ctx, "echo-7d9f8b6c4d-abcde", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ready.Status.PodIP != "10.244.1.10" || ready.Status.Phase != corev1.PodRunning || !podReady(ready) {
		t.Errorf("pod apps/echo-7d9f8b6c4d-abcde: status not applied: %+v", ready.Status)
	}
	if ready.Spec.ServiceAccountName != "echo" {
		t.Errorf("pod apps/echo-7d9f8b6c4d-abcde: spec.serviceAccountName = %q", ready.Spec.ServiceAccountName)
	}
	terminating, err := pods.Get(ctx, "echo-7d9f8b6c4d-klmno", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if terminating.DeletionTimestamp == nil {
		t.Errorf("pod apps/echo-7d9f8b6c4d-klmno: metadata.deletionTimestamp not set")
	}
	db, err := pods.Get(ctx, "db-0", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(db.Status.PodIPs) != 2 {
		t.Errorf("pod apps/db-0: status.podIPs = %v, want both families", db.Status.PodIPs)
	}
	// The pod that names no service account got the "default" one, which
	// the harness created since no controller-manager does.
	if _, err := c.Kube.CoreV1().ServiceAccounts("apps").Get(ctx, "default", metav1.GetOptions{}); err != nil {
		t.Errorf("serviceaccount apps/default: %v", err)
	}

	api, err := c.Kube.CoreV1().Services("apps").Get(ctx, "api", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"10.96.0.20", "fd00:10:96::20"}; len(api.Spec.ClusterIPs) != 2 ||
		api.Spec.ClusterIPs[0] != want[0] || api.Spec.ClusterIPs[1] != want[1] {
		t.Errorf("service apps/api: spec.clusterIPs = %v, want %v", api.Spec.ClusterIPs, want)
	}
	slice, err := c.Kube.DiscoveryV1().EndpointSlices("apps").Get(ctx, "external-db-manual", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(slice.Endpoints) != 2 {
		t.Errorf("endpointslice apps/external-db-manual: %d endpoints, want 2", len(slice.Endpoints))
	}

	// The Gateway CRDs are served: a Gateway round-trips with its status.
	gw := &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: "eastwest"},
		Spec: gatewayv1.GatewaySpec{
			GatewayClassName: "istio-eastwest",
			Listeners: []gatewayv1.Listener{{
				Name: "cross-network", Port: 15008, Protocol: gatewayv1.TLSProtocolType,
				TLS: &gatewayv1.ListenerTLSConfig{Mode: ptr(gatewayv1.TLSModePassthrough)},
			}},
		},
		Status: gatewayv1.GatewayStatus{Addresses: []gatewayv1.GatewayStatusAddress{{Value: "172.18.0.10"}}},
	}
	if err := c.Apply(ctx, []runtime.Object{gw}); err != nil {
		t.Fatal(err)
	}
	got, err := c.Gateway.GatewayV1().Gateways("istio-system").Get(ctx, "eastwest", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Status.Addresses) != 1 || got.Status.Addresses[0].Value != "172.18.0.10" {
		t.Errorf("gateway istio-system/eastwest: status.addresses = %v", got.Status.Addresses)
	}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func ptr[T any](v T) *T { return &v }

func TestBinariesNamesTheMissingFile(t *testing.T) {
	dir := t.TempDir()
	t.Setenv(EnvTools, dir)
	if got := ToolsDir(); got != dir {
		t.Fatalf("ToolsDir() = %q with %s=%q", got, EnvTools, dir)
	}
	_, _, err := Binaries()
	if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, "etcd")) {
		t.Fatalf("Binaries() in an empty dir = %v, want an error naming %s", err, filepath.Join(dir, "etcd"))
	}
}
