package serve

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap/zaptest"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/peerd-mesh/peerd/internal/kubestate"
	kubeharness "github.com/peerd-mesh/peerd/test/kube"
)

func TestVIPKubeStore(t *testing.T) {
	kube := kubeharness.Start(t, kubeharness.Options{})
	ctx := context.Background()
	const ns = "istio-system"
	if _, err := kube.Kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	opts := Options{SystemNamespace: ns, StateDir: t.TempDir()}
	vips, links, err := stateStores(opts, kube.Kube, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if links == nil {
		t.Fatal("no link store in Kubernetes mode")
	}
	if got, err := vips.load(); err != nil || got != nil {
		t.Fatalf("load before any save = %v, %v; want nothing", got, err)
	}
	want := map[string][]netip.Addr{
		"echo.hello.mesh.internal": {netip.MustParseAddr("240.240.1.2"), netip.MustParseAddr("2001:2::1:2")},
	}
	if err := vips.save(want); err != nil {
		t.Fatal(err)
	}
	// A second process (a rescheduled pod) reads them back.
	again, _, err := stateStores(opts, kube.Kube, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	got, err := again.load()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
	if onDisk, err := (vipDir{dir: opts.StateDir}).load(); err != nil || onDisk != nil {
		t.Errorf("Kubernetes mode wrote to --state-dir: %v, %v", onDisk, err)
	}

	// A damaged payload is an error naming the Secret, not fresh VIPs.
	secrets := kube.Kube.CoreV1().Secrets(ns)
	if err := kubestate.Put(ctx, secrets, kubestate.Object{Name: vipObject, Kind: vipKind, Payload: []byte(`{"version":1,"vips":{"a":["x"]}}`)}); err != nil {
		t.Fatal(err)
	}
	if _, err := again.load(); err == nil || !strings.Contains(err.Error(), "secret "+ns+"/"+vipObject) {
		t.Errorf("load of a damaged Secret = %v, want an error naming it", err)
	}
}

// TestStateNamespace: with --state-namespace the VIP table and the link
// states are Secrets of that namespace, and none is written to the system
// namespace (whose Secrets include istiod's CA key).
func TestStateNamespace(t *testing.T) {
	kube := kubeharness.Start(t, kubeharness.Options{})
	ctx := context.Background()
	for _, ns := range []string{"istio-system", "peerd-state"} {
		if _, err := kube.Kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	opts := Options{SystemNamespace: "istio-system", StateNamespace: "peerd-state"}
	vips, links, err := stateStores(opts, kube.Kube, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := vips.save(map[string][]netip.Addr{"echo.hello.mesh.internal": {netip.MustParseAddr("240.240.1.2")}}); err != nil {
		t.Fatal(err)
	}
	if err := links.Save("cluster2", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	names := func(ns string) []string {
		list, err := kube.Kube.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, s := range list.Items {
			out = append(out, s.Name)
		}
		return out
	}
	if got := names("peerd-state"); len(got) != 2 || !slices.Contains(got, vipObject) {
		t.Errorf("secrets in peerd-state = %v, want %s and the link's", got, vipObject)
	}
	if got := names("istio-system"); len(got) != 0 {
		t.Errorf("secrets written to the system namespace despite --state-namespace: %v", got)
	}
	if got, err := vips.load(); err != nil || len(got) != 1 {
		t.Errorf("load from peerd-state = %v, %v", got, err)
	}
}
