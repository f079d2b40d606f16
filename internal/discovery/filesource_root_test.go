package discovery

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// The layouts deploy tools give a config directory: the root is a symlink,
// is re-pointed, swapped, deleted and recreated. Each test drives the real
// filesystem and waits for the Index to reach the expected state.

// writeTree writes files (relative path -> content) below dir.
func writeTree(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for rel, content := range files {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// flipSymlink points link at target atomically, as git-sync and the kubelet
// do: a new symlink under a temporary name renamed over the old one.
func flipSymlink(t *testing.T, target, link string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(link), ".tmp-"+filepath.Base(link))
	if err := os.Symlink(target, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, link); err != nil {
		t.Fatal(err)
	}
}

func mustRename(t *testing.T, from, to string) {
	t.Helper()
	if err := os.Rename(from, to); err != nil {
		t.Fatal(err)
	}
}

// waitObjects waits until the Index holds exactly want and reports no error.
func (h *fileHarness) waitObjects(what string, want ...string) {
	h.t.Helper()
	h.waitUntil(what, func() bool {
		return slices.Equal(names(h.idx.Snapshot()), want) && len(h.idx.Errors()) == 0
	})
}

// waitError waits until an error contains every fragment.
func (h *fileHarness) waitError(what string, fragments ...string) {
	h.t.Helper()
	h.waitUntil(what, func() bool {
		for _, e := range h.errorTexts() {
			if containsAll(e, fragments...) {
				return true
			}
		}
		return false
	})
}

func containsAll(s string, fragments ...string) bool {
	for _, f := range fragments {
		if !strings.Contains(s, f) {
			return false
		}
	}
	return true
}

// checkObjects fails the test unless the Index holds exactly want.
func (h *fileHarness) checkObjects(what string, want ...string) {
	h.t.Helper()
	if diff := cmp.Diff(want, names(h.idx.Snapshot())); diff != "" {
		h.t.Errorf("%s (-want +got):\n%s", what, diff)
	}
}

func TestFileSourceSymlinkedRootIsFollowed(t *testing.T) {
	base := t.TempDir()
	writeTree(t, filepath.Join(base, "real"), map[string]string{
		"a.yaml":     nsYAML("apps"),
		"sub/b.yaml": svcYAML("apps", "echo", "10.96.0.1"),
	})
	root := filepath.Join(base, "root")
	if err := os.Symlink("real", root); err != nil {
		t.Fatal(err)
	}
	h := newFileHarness(t, root)
	h.start()
	h.checkObjects("first load through the symlinked root", "namespace apps", "service apps/echo")
	if files := h.idx.Files(h.src.Source()); !slices.Equal(files, []string{filepath.Join(root, "a.yaml"), filepath.Join(root, "sub", "b.yaml")}) {
		t.Errorf("files are named %v, want them below the configured root", files)
	}

	// Edits through either name reach the source.
	writeTree(t, filepath.Join(base, "real"), map[string]string{"sub/b.yaml": svcYAML("apps", "echo", "10.96.0.2")})
	h.waitUntil("the edit below the symlink target", func() bool { return h.clusterIP("apps", "echo") == "10.96.0.2" })
	h.write("c.yaml", nsYAML("other"))
	h.waitObjects("a new file written through the symlink", "namespace apps", "namespace other", "service apps/echo")
}

// TestFileSourceGitSyncFlip mimics git-sync: every revision is a directory of
// its own, and `root` is a relative symlink re-pointed by renaming a new
// symlink over it; the old revision is removed afterwards.
func TestFileSourceGitSyncFlip(t *testing.T) {
	base := t.TempDir()
	writeTree(t, filepath.Join(base, ".git-sync", "rev1"), map[string]string{
		"a.yaml":     nsYAML("apps"),
		"sub/b.yaml": svcYAML("apps", "echo", "10.96.0.1"),
		"gone.yaml":  podYAML("apps", "old", "10.244.0.1"),
	})
	root := filepath.Join(base, "root")
	if err := os.Symlink(filepath.Join(".git-sync", "rev1"), root); err != nil {
		t.Fatal(err)
	}
	h := newFileHarness(t, root)
	h.start()
	h.checkObjects("rev1", "namespace apps", "pod apps/old", "service apps/echo")

	writeTree(t, filepath.Join(base, ".git-sync", "rev2"), map[string]string{
		"a.yaml":     nsYAML("apps"), // unchanged
		"sub/b.yaml": svcYAML("apps", "echo", "10.96.0.2"),
		"new.yaml":   podYAML("apps", "new", "10.244.0.2"),
	})
	flipSymlink(t, filepath.Join(".git-sync", "rev2"), root)
	if err := os.RemoveAll(filepath.Join(base, ".git-sync", "rev1")); err != nil {
		t.Fatal(err)
	}
	h.waitObjects("rev2", "namespace apps", "pod apps/new", "service apps/echo")
	if got := h.clusterIP("apps", "echo"); got != "10.96.0.2" {
		t.Errorf("cluster IP after the flip = %s, want rev2's 10.96.0.2", got)
	}

	// The new revision's tree is watched, subdirectories included.
	writeTree(t, filepath.Join(base, ".git-sync", "rev2"), map[string]string{"sub/b.yaml": svcYAML("apps", "echo", "10.96.0.3")})
	h.waitUntil("an edit inside rev2's subdirectory", func() bool { return h.clusterIP("apps", "echo") == "10.96.0.3" })
}

// TestFileSourceDirectorySwap swaps a plain directory with two renames, as
// `mv root old && mv new root` does; the root is missing in between.
func TestFileSourceDirectorySwap(t *testing.T) {
	base := t.TempDir()
	root := filepath.Join(base, "root")
	writeTree(t, root, map[string]string{"a.yaml": nsYAML("apps"), "sub/b.yaml": svcYAML("apps", "echo", "10.96.0.1")})
	h := newFileHarness(t, root)
	h.start()

	writeTree(t, filepath.Join(base, "new"), map[string]string{"a.yaml": nsYAML("apps"), "sub/b.yaml": svcYAML("apps", "echo", "10.96.0.2")})
	mustRename(t, root, filepath.Join(base, "old"))
	mustRename(t, filepath.Join(base, "new"), root)
	h.waitUntil("the swapped-in directory", func() bool { return h.clusterIP("apps", "echo") == "10.96.0.2" && len(h.idx.Errors()) == 0 })

	// The new directory is watched, subdirectories included.
	writeTree(t, root, map[string]string{"sub/c.yaml": nsYAML("marker")})
	h.waitObjects("an edit in the new root's subdirectory", "namespace apps", "namespace marker", "service apps/echo")

	// The old directory is no longer read: an edit there changes nothing.
	// The later edit in the new directory shows the source got that far.
	writeTree(t, filepath.Join(base, "old"), map[string]string{"sub/b.yaml": svcYAML("apps", "echo", "10.96.0.9")})
	writeTree(t, root, map[string]string{"sub/c.yaml": nsYAML("marker2")})
	h.waitObjects("a second edit in the new root", "namespace apps", "namespace marker2", "service apps/echo")
	if got := h.clusterIP("apps", "echo"); got != "10.96.0.2" {
		t.Errorf("an edit of the swapped-out directory was applied: cluster IP %s", got)
	}
}

// TestFileSourceRootGoneAndBack removes the root in the ways an operator or
// a tool does. While it is gone the last good state stays and the error says
// why; once a root is back at the same path, what it holds is served, and
// later edits in it are seen.
func TestFileSourceRootGoneAndBack(t *testing.T) {
	cases := []struct {
		name string
		// layout creates the configured root below base with files and
		// returns its path.
		layout func(t *testing.T, base string, files map[string]string) string
		remove func(t *testing.T, base, root string)
		// atomic: the root disappears in one step, so no file of it is
		// seen removed before the root is.
		atomic bool
		// recreate puts a root with files back at root.
		recreate func(t *testing.T, base, root string, files map[string]string)
	}{
		{
			name: "symlink removed, then re-created",
			layout: func(t *testing.T, base string, files map[string]string) string {
				writeTree(t, filepath.Join(base, "v1"), files)
				root := filepath.Join(base, "root")
				if err := os.Symlink("v1", root); err != nil {
					t.Fatal(err)
				}
				return root
			},
			remove: func(t *testing.T, _, root string) {
				if err := os.Remove(root); err != nil {
					t.Fatal(err)
				}
			},
			atomic: true,
			recreate: func(t *testing.T, base, root string, files map[string]string) {
				writeTree(t, filepath.Join(base, "v2"), files)
				if err := os.Symlink("v2", root); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "directory renamed away, then a new one made in its place",
			layout: func(t *testing.T, base string, files map[string]string) string {
				root := filepath.Join(base, "root")
				writeTree(t, root, files)
				return root
			},
			remove: func(t *testing.T, base, root string) { mustRename(t, root, filepath.Join(base, "trash")) },
			atomic: true,
			recreate: func(t *testing.T, _, root string, files map[string]string) {
				writeTree(t, root, files) // mkdir, then files written one by one
			},
		},
		{
			name: "directory deleted with its files, then recreated",
			layout: func(t *testing.T, base string, files map[string]string) string {
				root := filepath.Join(base, "root")
				writeTree(t, root, files)
				return root
			},
			remove: func(t *testing.T, _, root string) {
				if err := os.RemoveAll(root); err != nil {
					t.Fatal(err)
				}
			},
			recreate: func(t *testing.T, _, root string, files map[string]string) { writeTree(t, root, files) },
		},
		{
			name: "the root's parent deleted, then the whole path recreated",
			layout: func(t *testing.T, base string, files map[string]string) string {
				root := filepath.Join(base, "parent", "root")
				writeTree(t, root, files)
				return root
			},
			remove: func(t *testing.T, base, _ string) {
				if err := os.RemoveAll(filepath.Join(base, "parent")); err != nil {
					t.Fatal(err)
				}
			},
			recreate: func(t *testing.T, _, root string, files map[string]string) { writeTree(t, root, files) },
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			base := t.TempDir()
			root := c.layout(t, base, map[string]string{
				"a.yaml":     nsYAML("apps"),
				"sub/b.yaml": svcYAML("apps", "echo", "10.96.0.1"),
			})
			h := newFileHarness(t, root)
			h.start()

			c.remove(t, base, root)
			h.waitError("the missing root to be reported", "config dir "+root, "does not exist")
			if c.atomic {
				h.checkObjects("while the root is gone", "namespace apps", "service apps/echo")
			}

			c.recreate(t, base, root, map[string]string{
				"a.yaml":     nsYAML("apps"),
				"sub/c.yaml": podYAML("apps", "p", "10.244.0.1"),
			})
			h.waitObjects("the recreated root's objects", "namespace apps", "pod apps/p")

			// The new root is watched, subdirectories included: an edit
			// after the recreation is seen.
			h.write("sub/c.yaml", podYAML("apps", "q", "10.244.0.2"))
			h.waitObjects("an edit in the recreated root", "namespace apps", "pod apps/q")
		})
	}
}

// TestFileSourceConfigMapKeyRemoved extends the ConfigMap swap: a key that
// is gone from the new version loses its visible symlink and its objects,
// and a new key appears; the configured root is itself a symlink to the
// mount.
func TestFileSourceConfigMapKeyRemoved(t *testing.T) {
	base := t.TempDir()
	mount := filepath.Join(base, "mount")
	writeTree(t, filepath.Join(mount, "..2026_12_03_10_00_00.000000001"), map[string]string{
		"a.yaml": nsYAML("apps"),
		"b.yaml": svcYAML("apps", "echo", "10.96.0.1"),
	})
	if err := os.Symlink("..2026_12_03_10_00_00.000000001", filepath.Join(mount, "..data")); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"a.yaml", "b.yaml"} {
		if err := os.Symlink(filepath.Join("..data", key), filepath.Join(mount, key)); err != nil {
			t.Fatal(err)
		}
	}
	root := filepath.Join(base, "config")
	if err := os.Symlink(mount, root); err != nil {
		t.Fatal(err)
	}
	h := newFileHarness(t, root)
	h.start()
	h.checkObjects("the first version", "namespace apps", "service apps/echo")

	// The kubelet's update: the new version drops b.yaml and adds c.yaml.
	writeTree(t, filepath.Join(mount, "..2026_12_03_10_05_00.000000002"), map[string]string{
		"a.yaml": nsYAML("apps"),
		"c.yaml": podYAML("apps", "p", "10.244.0.1"),
	})
	if err := os.Symlink(filepath.Join("..data", "c.yaml"), filepath.Join(mount, "c.yaml")); err != nil {
		t.Fatal(err)
	}
	flipSymlink(t, "..2026_12_03_10_05_00.000000002", filepath.Join(mount, "..data"))
	if err := os.Remove(filepath.Join(mount, "b.yaml")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(mount, "..2026_12_03_10_00_00.000000001")); err != nil {
		t.Fatal(err)
	}
	h.waitObjects("the second version", "namespace apps", "pod apps/p")
}

func TestResolveRoot(t *testing.T) {
	base := t.TempDir()
	writeTree(t, filepath.Join(base, "real", "cfg"), map[string]string{"a.yaml": ""})
	for link, target := range map[string]string{"link": "real", "abs": filepath.Join(base, "link"), "loop": "loop"} {
		if err := os.Symlink(target, filepath.Join(base, link)); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		dir      string
		want     string
		elements []string
		err      string
	}{
		{dir: "real/cfg", want: "real/cfg", elements: []string{"real/cfg"}},
		{dir: "link/cfg", want: "real/cfg", elements: []string{"link", "real/cfg"}},
		{dir: "abs/cfg", want: "real/cfg", elements: []string{"abs", "link", "real/cfg"}},
		{dir: "link/cfg/../cfg", want: "real/cfg", elements: []string{"link", "real/cfg"}},
		{dir: "real/missing/cfg", elements: []string{"real/missing"}, err: "does not exist"},
		{dir: "real/cfg/a.yaml", elements: []string{"real/cfg/a.yaml"}, err: "is not a directory"},
		{dir: "loop", err: "too many levels of symbolic links"},
	}
	for _, c := range cases {
		t.Run(c.dir, func(t *testing.T) {
			got := resolveRoot(filepath.Join(base, c.dir))
			if c.err != "" {
				if got.err == nil || !strings.Contains(got.err.Error(), c.err) {
					t.Fatalf("error = %v, want one containing %q", got.err, c.err)
				}
			} else if got.err != nil {
				t.Fatal(got.err)
			}
			if c.want != "" && got.dir != filepath.Join(base, c.want) {
				t.Errorf("dir = %s, want %s", got.dir, filepath.Join(base, c.want))
			}
			if c.elements != nil {
				var want []string
				for _, e := range c.elements {
					want = append(want, filepath.Join(base, e))
				}
				if diff := cmp.Diff(want, got.elements); diff != "" {
					t.Errorf("elements (-want +got):\n%s", diff)
				}
			}
		})
	}
}
