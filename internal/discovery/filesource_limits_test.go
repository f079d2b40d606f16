package discovery

import (
	"os"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap/zaptest"
)

func TestFileSourceRefusesAFileOverTheSizeLimit(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := &fileHarness{t: t, dir: t.TempDir(), idx: NewIndex(), reloads: make(chan []string, 64)}
	const limit = 1024
	h.src = NewFileSource(h.dir, h.idx, zaptest.NewLogger(t), FileSourceOptions{MaxFileSize: limit, Registerer: reg})
	good := svcYAML("apps", "echo", "10.96.0.1")
	h.write("a.yaml", good)
	h.write("b.yaml", nsYAML("apps"))
	h.start()

	// Grown past the limit: refused by name, the last good objects stay.
	// The padding is a comment, so the same file under the limit is good.
	big := strings.Replace(good, "10.96.0.1", "10.96.0.2", 1) + "#" + strings.Repeat("x", limit) + "\n"
	h.write("a.yaml", big)
	h.waitError("the oversize file's error", h.path("a.yaml"), "file too large", "over the limit of 1024")
	if got := h.clusterIP("apps", "echo"); got != "10.96.0.1" {
		t.Errorf("cluster IP = %s after an oversize edit, want the last good 10.96.0.1", got)
	}
	if got := testutil.ToFloat64(h.src.metrics.problems.WithLabelValues(problemTooLarge)); got != 1 {
		t.Errorf("too_large problems counted = %v, want 1", got)
	}

	// Other files keep being read, and the oversize file is counted once,
	// not on every reload.
	h.write("b.yaml", nsYAML("other"))
	h.waitUntil("the other file's edit", func() bool { return h.has("namespace other") })
	if got := testutil.ToFloat64(h.src.metrics.problems.WithLabelValues(problemTooLarge)); got != 1 {
		t.Errorf("too_large problems counted = %v after another reload, want still 1", got)
	}

	// Back under the limit: read, and the error clears.
	h.write("a.yaml", strings.Replace(good, "10.96.0.1", "10.96.0.3", 1))
	h.waitUntil("the file back under the limit", func() bool {
		return h.clusterIP("apps", "echo") == "10.96.0.3" && len(h.idx.Errors()) == 0
	})
	if n, err := testutil.GatherAndCount(reg, "peerd_config_file_problems_total", "peerd_config_documents_skipped_total"); err != nil || n != 6 {
		t.Errorf("registered series = %d (%v), want every reason of both counters (6)", n, err)
	}
}

func TestFileSourceOversizeFileAtStartIsNeverRead(t *testing.T) {
	dir := t.TempDir()
	h := &fileHarness{t: t, dir: dir, idx: NewIndex(), reloads: make(chan []string, 64)}
	h.src = NewFileSource(dir, h.idx, zaptest.NewLogger(t), FileSourceOptions{MaxFileSize: 64})
	h.write("a.yaml", nsYAML("apps"))
	// A sparse file: huge by its size, nothing on disk. Reading it would
	// take 1 GiB of memory; the source must refuse it by its size.
	f, err := os.Create(h.path("huge.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(1 << 30); err != nil {
		t.Fatal(err)
	}
	f.Close()
	h.start()
	h.checkObjects("objects next to an oversize file", "namespace apps")
	if errs := h.errorTexts(); len(errs) != 1 || !containsAll(errs[0], h.path("huge.yaml"), "1073741824 bytes, over the limit of 64") {
		t.Errorf("errors = %q, want the oversize file named with its size", errs)
	}
}

func TestReadLimited(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name    string
		content string
		limit   int64
		err     string
	}{
		{"under", "abc", 4, ""},
		{"at the limit", "abcd", 4, ""},
		{"over", "abcde", 4, "file too large: 5 bytes, over the limit of 4"},
		{"empty", "", 4, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := dir + "/" + strings.ReplaceAll(c.name, " ", "-")
			if err := os.WriteFile(p, []byte(c.content), 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := readLimited(p, c.limit)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("error = %v, want %q", err, c.err)
				}
				return
			}
			if err != nil || string(got) != c.content {
				t.Fatalf("readLimited = %q, %v; want %q", got, err, c.content)
			}
		})
	}
	if _, err := readLimited(dir, 4); err == nil {
		t.Error("readLimited of a directory succeeded")
	}
}

// TestFileSourceMisspeltKindKeepsTheService is the typo the issue names: a
// Service whose kind is misspelt must not silently disappear.
func TestFileSourceMisspeltKindKeepsTheService(t *testing.T) {
	h := newFileHarness(t, t.TempDir())
	h.write("a.yaml", nsYAML("apps")+"---\n"+svcYAML("apps", "echo", "10.96.0.1"))
	h.start()

	h.write("a.yaml", nsYAML("apps")+"---\n"+strings.Replace(svcYAML("apps", "echo", "10.96.0.2"), "kind: Service", "kind: Servce", 1))
	h.waitError("the misspelt kind's error", h.path("a.yaml")+": document 2: servce apps/echo: kind: ", `"Servce"`, "did you mean Service?")
	h.checkObjects("after the typo", "namespace apps", "service apps/echo")

	// An unrelated Kubernetes kind next to it is fine.
	h.write("a.yaml", nsYAML("apps")+"---\n"+svcYAML("apps", "echo", "10.96.0.2")+
		"---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: echo, namespace: apps}\n")
	h.waitUntil("the fixed file", func() bool { return h.clusterIP("apps", "echo") == "10.96.0.2" && len(h.idx.Errors()) == 0 })
	if got := testutil.ToFloat64(h.src.metrics.skipped.WithLabelValues(skippedUnusedKind)); got != 1 {
		t.Errorf("skipped unused kinds counted = %v, want 1 (the Deployment)", got)
	}
}
