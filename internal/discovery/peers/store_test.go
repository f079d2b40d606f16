package peers

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

func TestDirStore(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s, err := NewDirStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("state dir: %v, %v; want mode 0700", fi, err)
	}
	for cluster, data := range map[string]string{"cluster2": "a", "odd/name": "b"} {
		if err := s.Save(cluster, []byte(data)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Save("cluster2", []byte("c")); err != nil {
		t.Fatal(err)
	}
	// Not link states: skipped.
	if err := os.WriteFile(filepath.Join(dir, "README"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || string(got["cluster2"]) != "c" || string(got["odd/name"]) != "b" {
		t.Errorf("Load() = %q", got)
	}
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	if want := []string{"README", "link-cluster2.json", "link-odd%2Fname.json"}; fmt.Sprint(names) != fmt.Sprint(want) {
		t.Errorf("files = %v, want %v (no temporary file left)", names, want)
	}
	if err := s.Delete("cluster2"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete("cluster2"); err != nil {
		t.Errorf("deleting a missing state: %v", err)
	}
	if got, _ := s.Load(); len(got) != 1 {
		t.Errorf("after Delete: %q", got)
	}
}

// memStore is a Store in memory that counts writes.
type memStore struct {
	mu     sync.Mutex
	states map[string][]byte
	saves  map[string]int
}

func newMemStore() *memStore {
	return &memStore{states: map[string][]byte{}, saves: map[string]int{}}
}

func (s *memStore) Load() (map[string][]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string][]byte{}
	for k, v := range s.states {
		out[k] = v
	}
	return out, nil
}

func (s *memStore) Save(cluster string, b []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.states[cluster] = b
	s.saves[cluster]++
	return nil
}

func (s *memStore) Delete(cluster string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.states, cluster)
	return nil
}

func (s *memStore) get(cluster string) (int, savedLink) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var sl savedLink
	if b := s.states[cluster]; b != nil {
		_ = json.Unmarshal(b, &sl)
	}
	return s.saves[cluster], sl
}

func TestSavesAreRateLimitedAndCoalesced(t *testing.T) {
	store := newMemStore()
	p := newPeer(t)
	p.set(svc("apps", "echo", 1))
	e := newEnv(t, envOpts{store: store})
	e.run()
	e.m.Sync([]*gatewayv1.Gateway{remoteGateway("cluster2", p.port())})
	e.waitState("cluster2", StateSynced)
	eventually(t, "first save", func() error {
		if n, sl := store.get("cluster2"); n != 1 || sl.State != StateSynced || len(sl.Items) != 1 {
			return fmt.Errorf("%d saves, %+v", n, sl)
		}
		return nil
	})

	// Three changes within the same second: no write until a second has
	// passed since the last one, then one write with the latest state.
	for capacity := uint32(2); capacity <= 4; capacity++ {
		p.set(svc("apps", "echo", capacity))
		e.waitImported("cluster2", map[string]uint32{"apps/echo": capacity})
	}
	e.step(SaveInterval - time.Millisecond)
	if n, _ := store.get("cluster2"); n != 1 {
		t.Fatalf("%d saves within a second, want 1", n)
	}
	e.step(time.Millisecond)
	eventually(t, "the coalesced save", func() error {
		n, sl := store.get("cluster2")
		if n != 2 || len(sl.Items) != 1 || !strings.Contains(string(sl.Items[0].Proto), "echo") {
			return fmt.Errorf("%d saves, %+v", n, sl)
		}
		states, _ := store.Load()
		_, res, err := decodeSaved("cluster2", states["cluster2"])
		if err != nil || res["apps/echo"].service.GetCapacity() != 4 {
			return fmt.Errorf("saved %v, %v; want capacity 4", res, err)
		}
		return nil
	})

	// The final save at Stop marks the link lost at that moment.
	e.step(time.Minute)
	stopAt := e.clock.Now()
	e.stop()
	if _, sl := store.get("cluster2"); !sl.LostAt.Equal(stopAt) || sl.State != StateSynced {
		t.Errorf("final save: %+v, want lost at %v", sl, stopAt)
	}
}

func TestDamagedSavedStateIsIgnored(t *testing.T) {
	store := newMemStore()
	good := savedLink{Format: savedFormat, Cluster: "cluster3", State: StateStale, LostAt: epoch,
		Items: []savedResource{{Name: "apps/x", Version: "1", Proto: []byte("\xff\xff")}}}
	b, _ := good.encode()
	store.states = map[string][]byte{
		"cluster2": []byte("{not json"),
		"cluster3": b,
	}
	e := newEnv(t, envOpts{store: store})
	if n := e.logs.FilterMessageSnippet("saved link state").Len(); n != 2 {
		t.Errorf("%d warnings about saved states, want 2: %v", n, e.logs.All())
	}
	e.m.Sync([]*gatewayv1.Gateway{remoteGateway("cluster2", 1), remoteGateway("cluster3", 1)})
	if got := e.index.Snapshot().ImportedServices; len(got) != 0 {
		t.Errorf("imported from damaged states: %v", got)
	}
}
