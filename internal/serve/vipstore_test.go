package serve

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestVIPStoreRoundTrip(t *testing.T) {
	s := vipDir{dir: t.TempDir()}
	got, err := s.load()
	if err != nil || got != nil {
		t.Fatalf("load of an empty dir = %v, %v; want nothing", got, err)
	}
	want := map[string][]netip.Addr{
		"echo.hello.mesh.internal": {netip.MustParseAddr("240.240.1.2"), netip.MustParseAddr("2001:2::1:2")},
	}
	if err := s.save(want); err != nil {
		t.Fatal(err)
	}
	got, err = s.load()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
}

func TestVIPStoreRefusesDamagedFile(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, vipFile), []byte(`{"version":1,"vips":{"a":["not-an-ip"]}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := vipDir{dir: dir}.load()
	if err == nil || !strings.Contains(err.Error(), vipFile) {
		t.Fatalf("load = %v; want an error naming %s", err, vipFile)
	}
}

func TestVIPStoreWithoutDirKeepsNothing(t *testing.T) {
	if err := (vipDir{}).save(map[string][]netip.Addr{"a": nil}); err != nil {
		t.Fatal(err)
	}
	if got, err := (vipDir{}).load(); got != nil || err != nil {
		t.Fatalf("load = %v, %v", got, err)
	}
}
