package peers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
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
	// peerd's Secret for another cluster under the same name (a hash
	// collision of sanitised names): not overwritten.
	if err := kubestate.Put(ctx, secrets, kubestate.Object{Name: LinkObjectName("cluster7"), Kind: LinkStateKind,
		Annotations: map[string]string{ClusterAnnotation: "Cluster7"}, Payload: []byte("d")}); err != nil {
		t.Fatal(err)
	}
	if err := s.Save("cluster7", []byte("e")); err == nil || !strings.Contains(err.Error(), `cluster "Cluster7"`) {
		t.Errorf("Save over another cluster's state = %v, want a refusal naming it", err)
	}
	// A labelled Secret without the annotation is reported; the rest load.
	if err := kubestate.Put(ctx, secrets, kubestate.Object{Name: "peerd-link-anonymous", Kind: LinkStateKind, Payload: []byte("f")}); err != nil {
		t.Fatal(err)
	}
	got, err = s.Load()
	if err == nil || !strings.Contains(err.Error(), "secret peerd-link-anonymous") || len(got) != 3 {
		t.Errorf("Load with an unannotated Secret = %q, %v; want the 3 others and an error naming it", got, err)
	}
	for _, name := range []string{"peerd-link-anonymous", LinkObjectName("cluster7")} {
		if err := kubestate.Delete(ctx, secrets, name); err != nil {
			t.Fatal(err)
		}
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

// BenchmarkLinkStateSize reports what one imported service costs in a
// link's saved state, as JSON and as KubeStore stores it (gzip), and so
// how many services one Secret (kubestate.MaxPayload) holds.
func BenchmarkLinkStateSize(b *testing.B) {
	const services = 1000
	s := savedLink{Format: savedFormat, Cluster: "cluster2", Gateway: "istio-gateways/cluster2", State: StateSynced, SavedAt: epoch}
	for i := range services {
		msg := svc(fmt.Sprintf("team-%d", i%37), fmt.Sprintf("service-%d", i), uint32(i%5))
		body, err := proto.Marshal(msg)
		if err != nil {
			b.Fatal(err)
		}
		sum := sha256.Sum256(body)
		s.Items = append(s.Items, savedResource{Name: msg.GetNamespace() + "/" + msg.GetName(), Version: hex.EncodeToString(sum[:]), Proto: body})
	}
	var raw, packed []byte
	for b.Loop() {
		var err error
		if raw, err = s.encode(); err != nil {
			b.Fatal(err)
		}
		if packed, err = kubestate.Compress(raw); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(raw))/services, "json-B/service")
	b.ReportMetric(float64(len(packed))/services, "gzip-B/service")
	b.ReportMetric(float64(kubestate.MaxPayload)/(float64(len(packed))/services), "services/secret")
}
