package discovery

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap/zaptest"
	corev1 "k8s.io/api/core/v1"
)

// fileHarness runs a FileSource on a temporary directory. Tests wait for
// conditions by re-checking them whenever the index signals a change or the
// source finishes a reload; nothing sleeps.
type fileHarness struct {
	t       *testing.T
	dir     string
	idx     *Index
	src     *FileSource
	reloads chan []string
}

func newFileHarness(t *testing.T, dir string) *fileHarness {
	t.Helper()
	h := &fileHarness{t: t, dir: dir, idx: NewIndex(), reloads: make(chan []string, 64)}
	h.src = NewFileSource(dir, h.idx, zaptest.NewLogger(t), FileSourceOptions{})
	return h
}

// start runs the source until the test ends and waits for its first load.
func (h *fileHarness) start() {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	h.src.onReload = func(changed []string) {
		select {
		case h.reloads <- changed:
		case <-ctx.Done():
		}
	}
	done := make(chan error, 1)
	go func() { done <- h.src.Run(ctx) }()
	h.t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				h.t.Errorf("Run returned %v", err)
			}
		case <-time.After(testTimeout):
			h.t.Error("Run did not return after cancel")
		}
	})
	wctx, wcancel := context.WithTimeout(ctx, testTimeout)
	defer wcancel()
	if err := h.idx.WaitSynced(wctx); err != nil {
		h.t.Fatalf("first load: %v", err)
	}
	// The first load reported itself before marking the source synced;
	// forget that report so waitReloadOf only sees reloads caused by the
	// test's own changes.
	select {
	case <-h.reloads:
	default:
		h.t.Fatal("the first load did not report a reload")
	}
}

// waitUntil re-checks cond after every change signal and every reload.
func (h *fileHarness) waitUntil(what string, cond func() bool) {
	h.t.Helper()
	deadline := time.After(testTimeout)
	for !cond() {
		select {
		case <-h.idx.Changed():
		case <-h.reloads:
		case <-deadline:
			h.t.Fatalf("timed out waiting for %s\nobjects: %v\nerrors: %v", what, names(h.idx.Snapshot()), h.idx.Errors())
		}
	}
}

// waitReloadOf waits for a reload that read file's new bytes.
func (h *fileHarness) waitReloadOf(file string) {
	h.t.Helper()
	deadline := time.After(testTimeout)
	for {
		select {
		case changed := <-h.reloads:
			if slices.Contains(changed, file) {
				return
			}
		case <-deadline:
			h.t.Fatalf("timed out waiting for a reload of %s", file)
		}
	}
}

func (h *fileHarness) path(rel string) string { return filepath.Join(h.dir, rel) }

// write replaces a file atomically, as kubectl cp or a ConfigMap update
// would: the temporary name starts with a dot, so the source ignores it.
func (h *fileHarness) write(rel, content string) {
	h.t.Helper()
	p := h.path(rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		h.t.Fatal(err)
	}
	tmp := filepath.Join(filepath.Dir(p), ".tmp-"+filepath.Base(p))
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		h.t.Fatal(err)
	}
	if err := os.Rename(tmp, p); err != nil {
		h.t.Fatal(err)
	}
}

func (h *fileHarness) has(name string) bool {
	return slices.Contains(names(h.idx.Snapshot()), name)
}

func (h *fileHarness) clusterIP(ns, name string) string {
	for _, s := range h.idx.Snapshot().Services {
		if s.Namespace == ns && s.Name == name {
			return s.Spec.ClusterIP
		}
	}
	return ""
}

func (h *fileHarness) errorTexts() []string {
	var out []string
	for _, err := range h.idx.Errors() {
		out = append(out, err.Error())
	}
	return out
}

func nsYAML(name string) string {
	return fmt.Sprintf("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n", name)
}

func svcYAML(ns, name, ip string) string {
	return fmt.Sprintf("apiVersion: v1\nkind: Service\nmetadata:\n  name: %s\n  namespace: %s\nspec:\n  clusterIP: %s\n  ports:\n  - port: 80\n", name, ns, ip)
}

func podYAML(ns, name, ip string) string {
	return fmt.Sprintf("apiVersion: v1\nkind: Pod\nmetadata:\n  name: %s\n  namespace: %s\nspec:\n  containers: [{name: app}]\nstatus:\n  podIP: %s\n", name, ns, ip)
}

func TestFileSourceFirstLoadSkipsDotEntriesAndFollowsFileSymlinks(t *testing.T) {
	dir := t.TempDir()
	outside := t.TempDir()
	h := newFileHarness(t, dir)
	h.write("a.yaml", nsYAML("apps"))
	h.write("sub/b.yml", svcYAML("apps", "echo", "10.96.0.1"))
	h.write("sub/deeper/c.yaml", podYAML("apps", "echo-1", "10.244.0.1"))
	h.write(".hidden/d.yaml", nsYAML("hidden"))
	h.write("..2026_01_01_00_00_00.000000001/e.yaml", nsYAML("configmap-internal"))
	h.write(".dotfile.yaml", nsYAML("dotfile"))
	h.write("notes.txt", nsYAML("not-yaml"))
	if err := os.WriteFile(filepath.Join(outside, "f.yaml"), []byte(nsYAML("linked")), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, "f.yaml"), h.path("linked.yaml")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, h.path("linked-dir.yaml")); err != nil { // a directory: not read
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, "gone.yaml"), h.path("dangling.yaml")); err != nil {
		t.Fatal(err)
	}

	if h.idx.Synced() {
		t.Fatal("index synced before the file source's first load")
	}
	h.start()
	// The first load is synchronous: nothing to wait for after WaitSynced.
	want := []string{"namespace apps", "namespace linked", "pod apps/echo-1", "service apps/echo"}
	if diff := cmp.Diff(want, names(h.idx.Snapshot())); diff != "" {
		t.Errorf("objects after the first load (-want +got):\n%s", diff)
	}
	if errs := h.idx.Errors(); len(errs) != 0 {
		t.Errorf("errors after the first load: %v", errs)
	}
}

func TestFileSourceFollowsChanges(t *testing.T) {
	h := newFileHarness(t, t.TempDir())
	h.write("a.yaml", nsYAML("apps"))
	h.start()

	h.write("b.yaml", svcYAML("apps", "echo", "10.96.0.1"))
	h.waitUntil("the new file's service", func() bool { return h.clusterIP("apps", "echo") == "10.96.0.1" })

	// An in-place edit (truncate, then write) rather than a rename.
	if err := os.WriteFile(h.path("b.yaml"), []byte(svcYAML("apps", "echo", "10.96.0.2")), 0o644); err != nil {
		t.Fatal(err)
	}
	h.waitUntil("the edited cluster IP", func() bool { return h.clusterIP("apps", "echo") == "10.96.0.2" })

	// A new subdirectory gets a watch: a later edit inside it is seen.
	h.write("sub/c.yaml", podYAML("apps", "p1", "10.244.0.1"))
	h.waitUntil("the pod in the new subdirectory", func() bool { return h.has("pod apps/p1") })
	h.write("sub/c.yaml", podYAML("apps", "p2", "10.244.0.2"))
	h.waitUntil("the edit inside the new subdirectory", func() bool { return h.has("pod apps/p2") && !h.has("pod apps/p1") })

	if err := os.Remove(h.path("b.yaml")); err != nil {
		t.Fatal(err)
	}
	h.waitUntil("the deleted file's service to go", func() bool { return !h.has("service apps/echo") })

	if err := os.RemoveAll(h.path("sub")); err != nil {
		t.Fatal(err)
	}
	h.waitUntil("the removed directory's pod to go", func() bool { return !h.has("pod apps/p2") })
	if diff := cmp.Diff([]string{"namespace apps"}, names(h.idx.Snapshot())); diff != "" {
		t.Errorf("final objects (-want +got):\n%s", diff)
	}
}

func TestFileSourceBadEditKeepsLastGood(t *testing.T) {
	h := newFileHarness(t, t.TempDir())
	good := nsYAML("apps") + "---\n" + svcYAML("apps", "echo", "10.96.0.1")
	h.write("apps.yaml", good)
	h.start()

	// Document 2 loses its cluster IP; document 1 is fine, but the file is
	// taken as a whole, so nothing of it changes. Adding a pod in the same
	// edit proves that.
	bad := nsYAML("apps") + "---\n" + strings.Replace(svcYAML("apps", "echo", "x"), "  clusterIP: x\n", "", 1) +
		"---\n" + podYAML("apps", "new", "10.244.0.9")
	h.write("apps.yaml", bad)
	wantErr := h.path("apps.yaml") + ": document 2: service apps/echo: spec.clusterIP: required"
	h.waitUntil("the error for the bad edit", func() bool {
		errs := h.errorTexts()
		return len(errs) == 1 && strings.HasPrefix(errs[0], wantErr)
	})
	if diff := cmp.Diff([]string{"namespace apps", "service apps/echo"}, names(h.idx.Snapshot())); diff != "" {
		t.Errorf("objects after a bad edit (-want +got):\n%s", diff)
	}
	if got := h.clusterIP("apps", "echo"); got != "10.96.0.1" {
		t.Errorf("cluster IP after a bad edit = %q, want the last good 10.96.0.1", got)
	}

	h.write("apps.yaml", nsYAML("apps")+"---\n"+svcYAML("apps", "echo", "10.96.0.2"))
	h.waitUntil("the fix to apply and clear the error", func() bool {
		return h.clusterIP("apps", "echo") == "10.96.0.2" && len(h.idx.Errors()) == 0
	})
}

func TestFileSourceBadFileAtStartIsReportedAndSynced(t *testing.T) {
	h := newFileHarness(t, t.TempDir())
	h.write("good.yaml", nsYAML("apps"))
	h.write("bad.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: apps}\nspec: {ports: [{port: 80, bogus: 1}], clusterIP: 10.0.0.1}\n")
	h.start()
	want := []string{h.path("bad.yaml") + ": document 1: service apps/s: spec.ports[0].bogus: invalid value: unknown field"}
	if diff := cmp.Diff(want, h.errorTexts()); diff != "" {
		t.Errorf("errors (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"namespace apps"}, names(h.idx.Snapshot())); diff != "" {
		t.Errorf("objects (-want +got):\n%s", diff)
	}
	if err := os.Remove(h.path("bad.yaml")); err != nil {
		t.Fatal(err)
	}
	h.waitUntil("the deleted bad file's error to clear", func() bool { return len(h.idx.Errors()) == 0 })
}

func TestFileSourceSameObjectInTwoFiles(t *testing.T) {
	h := newFileHarness(t, t.TempDir())
	h.write("a.yaml", svcYAML("apps", "echo", "10.96.0.1"))
	h.write("b.yaml", svcYAML("apps", "echo", "10.96.0.2"))
	h.start()

	a, b := h.path("a.yaml"), h.path("b.yaml")
	want := []string{fmt.Sprintf("service apps/echo: object defined more than once: in %s and %s; using the one from %s", a, b, a)}
	if diff := cmp.Diff(want, h.errorTexts()); diff != "" {
		t.Errorf("errors (-want +got):\n%s", diff)
	}
	if !errors.Is(h.idx.Errors()[0], ErrConflict) {
		t.Error("conflict does not wrap ErrConflict")
	}
	if got := h.clusterIP("apps", "echo"); got != "10.96.0.1" {
		t.Errorf("in force: %s, want the first file's 10.96.0.1", got)
	}

	if err := os.Remove(a); err != nil {
		t.Fatal(err)
	}
	h.waitUntil("b.yaml's service to take over", func() bool {
		return h.clusterIP("apps", "echo") == "10.96.0.2" && len(h.idx.Errors()) == 0
	})
}

// TestFileSourceConfigMapSwap mimics the kubelet's ConfigMap volume: files
// live in a timestamped dot-directory, `..data` points at it, and the visible
// names are symlinks through `..data`. An update writes a new directory and
// swaps `..data` atomically.
func TestFileSourceConfigMapSwap(t *testing.T) {
	dir := t.TempDir()
	h := newFileHarness(t, dir)
	writeVersion := func(ts string, files map[string]string) {
		for name, content := range files {
			h.write(filepath.Join(ts, name), content)
		}
	}
	writeVersion("..2026_11_25_09_00_00.000000001", map[string]string{
		"apps.yaml":  nsYAML("apps") + "---\n" + svcYAML("apps", "echo", "10.96.0.1"),
		"nodes.yaml": "apiVersion: v1\nkind: Node\nmetadata: {name: worker}\n",
	})
	if err := os.Symlink("..2026_11_25_09_00_00.000000001", h.path("..data")); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"apps.yaml", "nodes.yaml"} {
		if err := os.Symlink(filepath.Join("..data", name), h.path(name)); err != nil {
			t.Fatal(err)
		}
	}
	h.start()
	if diff := cmp.Diff([]string{"namespace apps", "node worker", "service apps/echo"}, names(h.idx.Snapshot())); diff != "" {
		t.Fatalf("first load (-want +got):\n%s", diff)
	}
	if errs := h.idx.Errors(); len(errs) != 0 {
		t.Fatalf("the ConfigMap's internal directory was read too: %v", errs)
	}

	// The kubelet's update: new directory, new `..data_tmp` link, rename it
	// over `..data`, remove the old directory. The visible symlinks do not
	// change at all.
	writeVersion("..2026_11_25_09_05_00.000000002", map[string]string{
		"apps.yaml":  nsYAML("apps") + "---\n" + svcYAML("apps", "echo", "10.96.0.2"),
		"nodes.yaml": "apiVersion: v1\nkind: Node\nmetadata: {name: worker}\n",
	})
	if err := os.Symlink("..2026_11_25_09_05_00.000000002", h.path("..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(h.path("..data_tmp"), h.path("..data")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(h.path("..2026_11_25_09_00_00.000000001")); err != nil {
		t.Fatal(err)
	}
	h.waitUntil("the swapped-in cluster IP", func() bool { return h.clusterIP("apps", "echo") == "10.96.0.2" })
	if errs := h.idx.Errors(); len(errs) != 0 {
		t.Errorf("errors after the swap: %v", errs)
	}
	if diff := cmp.Diff([]string{"namespace apps", "node worker", "service apps/echo"}, names(h.idx.Snapshot())); diff != "" {
		t.Errorf("after the swap (-want +got):\n%s", diff)
	}
}

func TestFileSourceRewriteWithSameObjectsDoesNotSignal(t *testing.T) {
	h := newFileHarness(t, t.TempDir())
	h.write("a.yaml", nsYAML("apps"))
	h.start()
	signalled(h.idx) // the first load's signal

	// Different bytes, same objects: the file is re-read and decoded, and the
	// index sees nothing new. onReload runs after the index was updated in
	// the same goroutine, so the check below is not racing the source.
	h.write("a.yaml", "# reformatted\n"+nsYAML("apps"))
	h.waitReloadOf(h.path("a.yaml"))
	if signalled(h.idx) {
		t.Error("a rewrite with identical objects signalled a change")
	}
	h.write("a.yaml", "# reformatted\n"+nsYAML("apps")+"  labels: {team: a}\n")
	h.waitReloadOf(h.path("a.yaml"))
	if !signalled(h.idx) {
		t.Error("a real edit did not signal")
	}
}

func TestFileSourceEmptiedFileKeepsObjects(t *testing.T) {
	h := newFileHarness(t, t.TempDir())
	h.write("a.yaml", nsYAML("apps"))
	h.write("b.yaml", nsYAML("other"))
	h.start()
	// Truncation is what an in-place save looks like half way through.
	if err := os.WriteFile(h.path("a.yaml"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	h.write("b.yaml", nsYAML("other2")) // a later event to know the truncation was seen
	h.waitUntil("the later edit", func() bool { return h.has("namespace other2") })
	if !h.has("namespace apps") {
		t.Error("an emptied file dropped its objects")
	}
}

func TestFileSourceRunFailsWithoutDirectory(t *testing.T) {
	idx := NewIndex()
	src := NewFileSource(filepath.Join(t.TempDir(), "missing"), idx, zaptest.NewLogger(t), FileSourceOptions{})
	if err := src.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("Run on a missing directory = %v, want an error naming it", err)
	}
	if idx.Synced() {
		t.Error("index synced although the source never loaded")
	}
}

// An edit of one manifest file reads that file alone, so a change costs
// what it touches and not a read of the whole directory; a new directory
// still leads to a full reload that finds and watches it.
func TestFileSourceEditReadsOnlyTheEditedFile(t *testing.T) {
	dir := t.TempDir()
	h := newFileHarness(t, dir)
	for i := range 20 {
		h.write(fmt.Sprintf("pods/p%d.yaml", i), podYAML("apps", fmt.Sprintf("p%d", i), fmt.Sprintf("10.244.0.%d", i+1)))
	}
	reads := make(chan string, 1000)
	h.src.onRead = func(path string) { reads <- path }
	h.start()
	for len(reads) > 0 {
		<-reads // the first load
	}
	drained := func() []string {
		var out []string
		for len(reads) > 0 {
			out = append(out, filepath.Base(<-reads))
		}
		return out
	}

	// podIP waits until the index holds the pod at ip: its file was read
	// before that.
	podIP := func(name, ip string) {
		t.Helper()
		h.waitUntil(name+" at "+ip, func() bool {
			p, _ := h.idx.Get(Key{Kind: KindPod, Namespace: "apps", Name: name}).(*corev1.Pod)
			return p != nil && p.Status.PodIP == ip
		})
	}
	h.write("pods/p7.yaml", podYAML("apps", "p7", "10.244.1.7"))
	podIP("p7", "10.244.1.7")
	// Late events of the same write may read it again; nothing else may
	// be read.
	if got := slices.Compact(drained()); !slices.Equal(got, []string{"p7.yaml"}) {
		t.Fatalf("an edit of p7.yaml read %v, want p7.yaml alone", got)
	}

	if err := os.Remove(h.path("pods/p3.yaml")); err != nil {
		t.Fatal(err)
	}
	h.waitUntil("p3 removed", func() bool { return !h.has("pod apps/p3") })
	if got := drained(); len(got) != 0 {
		t.Fatalf("a deletion read %v, want nothing", got)
	}

	h.write("more/q.yaml", podYAML("apps", "q", "10.244.2.1"))
	h.waitUntil("a file in a new directory", func() bool { return h.has("pod apps/q") })
	h.write("more/q.yaml", podYAML("apps", "q", "10.244.2.2"))
	podIP("q", "10.244.2.2")
	drained()
	h.write("more/q.yaml", podYAML("apps", "q", "10.244.2.3"))
	podIP("q", "10.244.2.3")
	if got := slices.Compact(drained()); !slices.Equal(got, []string{"q.yaml"}) {
		t.Fatalf("an edit in a directory created later read %v, want q.yaml alone", got)
	}
}
