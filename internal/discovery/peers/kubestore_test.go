package peers

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/peerd-mesh/peerd/internal/kubestate"
	kubeharness "github.com/peerd-mesh/peerd/test/kube"
)

const kubeStoreNamespace = "istio-system"

// startKubeStore runs a real API server with the system namespace and
// returns a KubeStore in it.
func startKubeStore(t *testing.T) (*kubeharness.Cluster, *KubeStore) {
	t.Helper()
	kube := kubeharness.Start(t, kubeharness.Options{})
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: kubeStoreNamespace}}
	if _, err := kube.Kube.CoreV1().Namespaces().Create(context.Background(), ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return kube, NewKubeStore(kube.Kube, kubeStoreNamespace)
}

func TestLinkObjectName(t *testing.T) {
	for _, tc := range []struct{ cluster, want string }{
		{"cluster2", "peerd-link-cluster2"},
		{"a.b", "peerd-link-a-b-"},    // dots are not valid in a label: hashed
		{"East", "peerd-link-east-"},  // upper case: hashed
		{"east_", "peerd-link-east-"}, // same sanitised base, other hash
		{"___", "peerd-link-"},        // nothing left but the hash
		{strings.Repeat("x", 80), "peerd-link-xxxx"},
	} {
		got := LinkObjectName(tc.cluster)
		if !strings.HasPrefix(got, tc.want) {
			t.Errorf("LinkObjectName(%q) = %q, want prefix %q", tc.cluster, got, tc.want)
		}
		if errs := validation.IsDNS1123Label(got); len(errs) != 0 {
			t.Errorf("LinkObjectName(%q) = %q: not a valid name: %v", tc.cluster, got, errs)
		}
		if v := clusterLabelValue(tc.cluster); len(validation.IsValidLabelValue(v)) != 0 {
			t.Errorf("clusterLabelValue(%q) = %q: not a valid label value", tc.cluster, v)
		}
	}
	if LinkObjectName("East") == LinkObjectName("east_") {
		t.Errorf("East and east_ share the name %s", LinkObjectName("East"))
	}
}

func TestKubeStore(t *testing.T) {
	kube, s := startKubeStore(t)
	ctx := context.Background()
	secrets := kube.Kube.CoreV1().Secrets(kubeStoreNamespace)
	if got, err := s.Load(); err != nil || len(got) != 0 {
		t.Fatalf("Load of an empty namespace = %q, %v", got, err)
	}
	// A Secret without peerd's labels (someone else's, of the same name
	// shape) is never read.
	foreign := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "peerd-link-cluster9"}, Data: map[string][]byte{"x": []byte("y")}}
	if _, err := secrets.Create(ctx, foreign, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for cluster, data := range map[string]string{"cluster2": "a", "Odd/Name": "b"} {
		if err := s.Save(cluster, []byte(data)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Save("cluster2", []byte("c")); err != nil { // an update
		t.Fatal(err)
	}
	got, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || string(got["cluster2"]) != "c" || string(got["Odd/Name"]) != "b" {
		t.Errorf("Load() = %q", got)
	}
	sec, err := secrets.Get(ctx, "peerd-link-cluster2", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{kubestate.ManagedByLabel: "peerd", kubestate.KindLabel: LinkStateKind, ClusterLabel: "cluster2"} {
		if sec.Labels[k] != v {
			t.Errorf("label %s = %q, want %q", k, sec.Labels[k], v)
		}
	}
	if sec.Type != kubestate.SecretType {
		t.Errorf("type = %q, want %q", sec.Type, kubestate.SecretType)
	}
	// Saving what is already there does not write.
	rv := sec.ResourceVersion
	if err := s.Save("cluster2", []byte("c")); err != nil {
		t.Fatal(err)
	}
	if again, _ := secrets.Get(ctx, "peerd-link-cluster2", metav1.GetOptions{}); again.ResourceVersion != rv {
		t.Errorf("an identical save wrote: resourceVersion %s → %s", rv, again.ResourceVersion)
	}
	// The Secret of a foreign name is not peerd's: not overwritten.
	if err := s.Save("cluster9", []byte("z")); err == nil || !strings.Contains(err.Error(), "not peerd's") {
		t.Errorf("Save over a foreign Secret = %v, want a refusal", err)
	}
	if err := s.Delete("cluster2"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete("cluster2"); err != nil {
		t.Errorf("deleting a missing state: %v", err)
	}
	if got, _ := s.Load(); len(got) != 1 || string(got["Odd/Name"]) != "b" {
		t.Errorf("after Delete: %q", got)
	}
	if _, err := secrets.Get(ctx, foreign.Name, metav1.GetOptions{}); err != nil {
		t.Errorf("the foreign Secret: %v", err)
	}
}

func TestKubeStoreRefusesTooLargeState(t *testing.T) {
	_, s := startKubeStore(t)
	// Random-looking bytes do not compress: over the limit after gzip.
	big := make([]byte, kubestate.MaxPayload+1)
	x := uint32(1)
	for i := range big {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		big[i] = byte(x)
	}
	err := s.Save("cluster2", big)
	if err == nil || !strings.Contains(err.Error(), "link cluster2") || !strings.Contains(err.Error(), "after compression") {
		t.Fatalf("Save of %d bytes = %v, want an error naming the link and the size", len(big), err)
	}
	// Repetitive JSON of the same size compresses below it and is saved.
	compressible := []byte(strings.Repeat(`{"name":"apps/echo","version":"1"},`, kubestate.MaxPayload/34+1))
	if err := s.Save("cluster2", compressible); err != nil {
		t.Fatalf("Save of %d compressible bytes: %v", len(compressible), err)
	}
	if got, err := s.Load(); err != nil || len(got["cluster2"]) != len(compressible) {
		t.Errorf("Load = %d bytes, %v; want %d", len(got["cluster2"]), err, len(compressible))
	}
}

// TestRestartDuringPartitionKubeStore: the restart test of the file store,
// with the states in the API server.
func TestRestartDuringPartitionKubeStore(t *testing.T) {
	_, s := startKubeStore(t)
	testRestartDuringPartition(t, s)
}
