package bench

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestIntList(t *testing.T) {
	got, err := IntList("--pods", "1000, 10000")
	if err != nil || !cmp.Equal(got, []int{1000, 10000}) {
		t.Fatalf("IntList = %v, %v", got, err)
	}
	for _, bad := range []string{"", "0", "x", "1,,2"} {
		if _, err := IntList("--pods", bad); err == nil || !strings.HasPrefix(err.Error(), "--pods: ") {
			t.Errorf("IntList(%q) = %v; want an error naming --pods", bad, err)
		}
	}
}

func TestWorkDir(t *testing.T) {
	want := filepath.Join(t.TempDir(), "a", "b")
	if got, err := WorkDir(want, "x-"); err != nil || got != want {
		t.Fatalf("WorkDir(%q) = %q, %v", want, got, err)
	}
	if _, err := os.Stat(want); err != nil {
		t.Fatal(err)
	}
	tmp, err := WorkDir("", "peerd-bench-test-")
	if err != nil || !strings.Contains(filepath.Base(tmp), "peerd-bench-test-") {
		t.Fatalf("WorkDir(\"\") = %q, %v", tmp, err)
	}
	os.RemoveAll(tmp)
}
