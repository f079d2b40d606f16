package discovery

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

const testTimeout = 10 * time.Second

func svc(ns, name, clusterIP string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       corev1.ServiceSpec{ClusterIP: clusterIP},
	}
}

func pod(ns, name, ip string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Status:     corev1.PodStatus{PodIP: ip},
	}
}

// signalled reports whether a change signal is pending, and consumes it.
// Index signals synchronously inside the mutating call, so after the call
// returns a pending signal is either there or not: no waiting is needed.
func signalled(x *Index) bool {
	select {
	case <-x.Changed():
		return true
	default:
		return false
	}
}

func names(o Objects) []string {
	var out []string
	for _, s := range o.Namespaces {
		out = append(out, "namespace "+s.Name)
	}
	for _, s := range o.Nodes {
		out = append(out, "node "+s.Name)
	}
	for _, s := range o.Pods {
		out = append(out, "pod "+s.Namespace+"/"+s.Name)
	}
	for _, s := range o.Services {
		out = append(out, "service "+s.Namespace+"/"+s.Name)
	}
	for _, s := range o.EndpointSlices {
		out = append(out, "endpointslice "+s.Namespace+"/"+s.Name)
	}
	for _, s := range o.Gateways {
		out = append(out, "gateway "+s.Namespace+"/"+s.Name)
	}
	return out
}

func TestIndexSynced(t *testing.T) {
	x := NewIndex()
	if x.Synced() {
		t.Fatal("Synced with no source registered")
	}
	x.Register("a")
	x.Register("b")
	x.MarkSynced("a")
	if x.Synced() {
		t.Fatal("Synced while b has not loaded")
	}

	short, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := x.WaitSynced(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitSynced before b synced = %v, want deadline exceeded", err)
	}

	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		done <- x.WaitSynced(ctx)
	}()
	x.MarkSynced("b")
	if err := <-done; err != nil {
		t.Fatalf("WaitSynced after every source synced = %v", err)
	}
	if !x.Synced() {
		t.Fatal("not Synced after every source synced")
	}

	// A source that registers later makes the index unsynced until it loads.
	x.Register("c")
	if x.Synced() {
		t.Fatal("Synced while newly registered c has not loaded")
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		done <- x.WaitSynced(ctx)
	}()
	x.MarkSynced("c")
	if err := <-done; err != nil {
		t.Fatalf("WaitSynced after c synced = %v", err)
	}
}

func TestIndexSignalsOnlyRealChanges(t *testing.T) {
	x := NewIndex()
	steps := []struct {
		name string
		do   func() error
		want bool
	}{
		{"first upsert", func() error { return x.Upsert("kube", svc("apps", "echo", "10.0.0.1")) }, true},
		{"deep-equal copy", func() error { return x.Upsert("kube", svc("apps", "echo", "10.0.0.1")) }, false},
		{"content change", func() error { return x.Upsert("kube", svc("apps", "echo", "10.0.0.2")) }, true},
		{"delete of an unknown object", func() error { return x.Delete("kube", svc("apps", "nope", "")) }, false},
		{"delete of another source's object", func() error { return x.Delete("other", svc("apps", "echo", "")) }, false},
		{"file adds a pod", func() error {
			return x.ReplaceFile("files", "a.yaml", []runtime.Object{pod("apps", "p", "10.1.0.1")})
		}, true},
		{"file rewritten with equal objects", func() error {
			return x.ReplaceFile("files", "a.yaml", []runtime.Object{pod("apps", "p", "10.1.0.1")})
		}, false},
		{"removing a file that defines nothing", func() error { x.RemoveFile("files", "none.yaml"); return nil }, false},
		{"delete", func() error { return x.Delete("kube", svc("apps", "echo", "")) }, true},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if got := signalled(x); got != s.want {
			t.Errorf("%s: signalled = %v, want %v", s.name, got, s.want)
		}
	}
}

func TestIndexSameResourceVersionFromInformerIsNoChange(t *testing.T) {
	x := NewIndex()
	a := svc("apps", "echo", "10.0.0.1")
	a.ResourceVersion, a.UID = "7", "u1"
	if err := x.Upsert("kube", a); err != nil {
		t.Fatal(err)
	}
	signalled(x)
	// A relist hands over a new object with the same version: nothing to do.
	b := a.DeepCopy()
	b.Annotations = map[string]string{"not": "compared"}
	if err := x.Upsert("kube", b); err != nil {
		t.Fatal(err)
	}
	if signalled(x) {
		t.Error("same resourceVersion and uid from an informer signalled")
	}
	// Files never compare by version: an edited manifest that kept the
	// resourceVersion it was exported with is still an edit.
	if err := x.ReplaceFile("files", "a.yaml", []runtime.Object{a}); err != nil {
		t.Fatal(err)
	}
	signalled(x)
	if err := x.ReplaceFile("files", "a.yaml", []runtime.Object{b}); err != nil {
		t.Fatal(err)
	}
	// b is shadowed by kube's claim (first seen), so nothing in force changed.
	if signalled(x) {
		t.Error("edit of a shadowed object signalled")
	}
	x.DeleteKey("kube", Key{Kind: KindService, Namespace: "apps", Name: "echo"})
	if !signalled(x) {
		t.Error("hand-over from kube to the file's differing version did not signal")
	}
	if got := x.Snapshot().Services[0].Annotations["not"]; got != "compared" {
		t.Errorf("in force after hand-over: annotation %q, want the file's version", got)
	}
}

func TestIndexSnapshotSortedByNamespaceName(t *testing.T) {
	x := NewIndex()
	objs := []runtime.Object{
		svc("b", "a", "10.0.0.1"), svc("a", "z", "10.0.0.2"), svc("a", "b", "10.0.0.3"),
		pod("default", "p2", ""), pod("apps", "p1", ""),
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n2"}},
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "apps"}},
		&discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "s"}},
		&gatewayv1.Gateway{ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: "east"}},
	}
	for _, o := range objs {
		if err := x.Upsert("kube", o); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{
		"namespace apps", "node n1", "node n2", "pod apps/p1", "pod default/p2",
		"service a/b", "service a/z", "service b/a", "endpointslice x/s", "gateway istio-system/east",
	}
	if diff := cmp.Diff(want, names(x.Snapshot())); diff != "" {
		t.Errorf("snapshot (-want +got):\n%s", diff)
	}
}

func TestIndexRejectsUnsupportedAndNameless(t *testing.T) {
	x := NewIndex()
	if err := x.Upsert("kube", &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "c"}}); !errors.Is(err, ErrUnsupportedKind) {
		t.Errorf("Upsert(ConfigMap) = %v, want ErrUnsupportedKind", err)
	}
	err := x.Upsert("kube", svc("apps", "", ""))
	if err == nil || !strings.Contains(err.Error(), "service: metadata.name") {
		t.Errorf("Upsert(nameless service) = %v, want an error naming metadata.name", err)
	}
	if signalled(x) {
		t.Error("a rejected upsert signalled")
	}
}

func TestIndexReplaceFileDropsWhatTheFileNoLongerDefines(t *testing.T) {
	x := NewIndex()
	if err := x.ReplaceFile("files", "a.yaml", []runtime.Object{svc("apps", "one", "10.0.0.1"), svc("apps", "two", "10.0.0.2")}); err != nil {
		t.Fatal(err)
	}
	if err := x.ReplaceFile("files", "a.yaml", []runtime.Object{svc("apps", "two", "10.0.0.2")}); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"service apps/two"}, names(x.Snapshot())); diff != "" {
		t.Errorf("after dropping one (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"a.yaml"}, x.Files("files")); diff != "" {
		t.Errorf("Files (-want +got):\n%s", diff)
	}
	x.RemoveFile("files", "a.yaml")
	if got := names(x.Snapshot()); len(got) != 0 {
		t.Errorf("after RemoveFile: %v, want nothing", got)
	}
	if got := x.Files("files"); len(got) != 0 {
		t.Errorf("Files after RemoveFile = %v, want none", got)
	}
}

func TestIndexReplaceFileRejectsInFileDuplicate(t *testing.T) {
	x := NewIndex()
	if err := x.ReplaceFile("files", "a.yaml", []runtime.Object{svc("apps", "one", "10.0.0.1")}); err != nil {
		t.Fatal(err)
	}
	signalled(x)
	err := x.ReplaceFile("files", "a.yaml", []runtime.Object{svc("apps", "two", "10.0.0.2"), svc("apps", "two", "10.0.0.3")})
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "a.yaml: service apps/two") {
		t.Fatalf("ReplaceFile with a duplicate = %v, want a conflict naming a.yaml and the object", err)
	}
	if signalled(x) {
		t.Error("rejected ReplaceFile signalled")
	}
	if diff := cmp.Diff([]string{"service apps/one"}, names(x.Snapshot())); diff != "" {
		t.Errorf("rejected ReplaceFile changed the index (-want +got):\n%s", diff)
	}
}

func TestIndexConflictKeepsFirstAndNamesBoth(t *testing.T) {
	x := NewIndex()
	if err := x.ReplaceFile("files", "dir/a.yaml", []runtime.Object{svc("apps", "echo", "10.0.0.1")}); err != nil {
		t.Fatal(err)
	}
	signalled(x)
	if err := x.ReplaceFile("files", "dir/b.yaml", []runtime.Object{svc("apps", "echo", "10.0.0.2")}); err != nil {
		t.Fatal(err)
	}
	if signalled(x) {
		t.Error("a shadowed duplicate signalled")
	}
	if got := x.Snapshot().Services[0].Spec.ClusterIP; got != "10.0.0.1" {
		t.Errorf("in force: clusterIP %s, want the first file's 10.0.0.1", got)
	}
	errs := x.Errors()
	if len(errs) != 1 {
		t.Fatalf("Errors = %v, want one conflict", errs)
	}
	want := "service apps/echo: object defined more than once: in dir/a.yaml and dir/b.yaml; using the one from dir/a.yaml"
	if errs[0].Error() != want || !errors.Is(errs[0], ErrConflict) {
		t.Errorf("conflict error = %q, want %q wrapping ErrConflict", errs[0], want)
	}

	// When the first file lets go, the second one's object takes over.
	x.RemoveFile("files", "dir/a.yaml")
	if !signalled(x) {
		t.Error("hand-over to the second file did not signal")
	}
	if got := x.Snapshot().Services[0].Spec.ClusterIP; got != "10.0.0.2" {
		t.Errorf("after hand-over: clusterIP %s, want 10.0.0.2", got)
	}
	if errs := x.Errors(); len(errs) != 0 {
		t.Errorf("Errors after the conflict ended = %v", errs)
	}
}

func TestIndexErrorsSetAndCleared(t *testing.T) {
	x := NewIndex()
	x.SetError("files", "b.yaml", errors.New("b broke"))
	x.SetError("files", "a.yaml", errors.New("a broke"))
	x.SetError("alpha", "x", errors.New("alpha broke"))
	var got []string
	for _, err := range x.Errors() {
		got = append(got, err.Error())
	}
	if diff := cmp.Diff([]string{"alpha broke", "a broke", "b broke"}, got); diff != "" {
		t.Errorf("Errors order (-want +got):\n%s", diff)
	}
	x.SetError("files", "a.yaml", nil)
	x.SetError("files", "b.yaml", nil)
	x.SetError("alpha", "x", nil)
	if errs := x.Errors(); len(errs) != 0 {
		t.Errorf("Errors after clearing = %v", errs)
	}
}

func TestIndexConcurrentUse(t *testing.T) {
	// Run with -race: sources write while a reader snapshots.
	x := NewIndex()
	done := make(chan struct{})
	for w := range 4 {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := range 200 {
				p := pod("ns", "p"+string(rune('a'+w)), "10.0.0."+string(rune('0'+i%10)))
				if err := x.Upsert("kube", p); err != nil {
					t.Error(err)
					return
				}
				_ = x.ReplaceFile("files", "f"+string(rune('a'+w)), []runtime.Object{p})
			}
		}()
	}
	for range 4 {
	wait:
		for {
			select {
			case <-done:
				break wait
			case <-x.Changed():
				_ = x.Snapshot()
				_ = x.Errors()
			}
		}
	}
	if got := len(x.Snapshot().Pods); got != 4 {
		t.Errorf("pods = %d, want 4", got)
	}
}

func TestIndexTakeChangesOncePerKeyWithCurrentObject(t *testing.T) {
	x := NewIndex()
	echo := svc("apps", "echo", "10.0.0.1")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(x.Upsert("kube", svc("apps", "echo", "10.0.0.9")))
	must(x.Upsert("kube", echo))
	must(x.ReplaceFile("files", "a.yaml", []runtime.Object{pod("apps", "p", "10.1.0.1")}))
	got := x.TakeChanges()
	if len(got) != 2 || got[0].Key != (Key{Kind: KindPod, Namespace: "apps", Name: "p"}) ||
		got[1].Key != (Key{Kind: KindService, Namespace: "apps", Name: "echo"}) || got[1].Object != echo {
		t.Fatalf("changes = %+v, want the pod, then the service in its latest version", got)
	}
	if again := x.TakeChanges(); len(again) != 0 {
		t.Fatalf("changes taken twice: %+v", again)
	}
	x.RemoveFile("files", "a.yaml")
	got = x.TakeChanges()
	if len(got) != 1 || got[0].Object != nil || got[0].Key.Kind != KindPod {
		t.Fatalf("changes after the file went = %+v, want the pod with a nil object", got)
	}
}

// A write that changes only what the API server changes on every write
// (resourceVersion, generation, managedFields) is no change: no signal and
// nothing for the model.
func TestIndexBookkeepingOnlyIsNoChange(t *testing.T) {
	x := NewIndex()
	a := svc("apps", "echo", "10.0.0.1")
	a.ResourceVersion, a.UID = "1", "u1"
	if err := x.Upsert("kube", a); err != nil {
		t.Fatal(err)
	}
	x.TakeChanges()
	signalled(x)
	b := a.DeepCopy()
	b.ResourceVersion, b.Generation = "2", 5
	b.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}
	if err := x.Upsert("kube", b); err != nil {
		t.Fatal(err)
	}
	if signalled(x) || len(x.TakeChanges()) != 0 {
		t.Fatalf("a bookkeeping-only write was taken as a change")
	}
	if a.ResourceVersion != "1" || b.ResourceVersion != "2" {
		t.Fatalf("the comparison modified the objects")
	}
	c := b.DeepCopy()
	c.ResourceVersion = "3"
	c.Labels = map[string]string{"x": "y"}
	if err := x.Upsert("kube", c); err != nil {
		t.Fatal(err)
	}
	if !signalled(x) || len(x.TakeChanges()) != 1 {
		t.Fatalf("a label change was not taken as a change")
	}
}
