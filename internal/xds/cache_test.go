package xds

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
)

func TestVersionsDeriveFromContent(t *testing.T) {
	a, b := NewCache(AddressTypeURL), NewCache(AddressTypeURL)
	// Same content built twice (maps iterate differently) in two caches.
	a.Replace([]Resource{workload("w", "10.0.0.1", withServices(5))})
	b.Replace([]Resource{workload("w", "10.0.0.1", withServices(5))})
	_, sa := a.Snapshot()
	_, sb := b.Snapshot()
	if sa[0].Version == "" || sa[0].Version != sb[0].Version {
		t.Fatalf("versions %q and %q, want equal and non-empty", sa[0].Version, sb[0].Version)
	}
	b.Replace([]Resource{workload("w", "10.0.0.2", withServices(5))})
	_, sb = b.Snapshot()
	if sa[0].Version == sb[0].Version {
		t.Fatalf("different content kept version %q", sa[0].Version)
	}
}

func withServices(n int) func(*workloadpb.Workload) {
	return func(w *workloadpb.Workload) {
		w.Services = map[string]*workloadpb.PortList{}
		for i := range n {
			w.Services[fmt.Sprintf("ns/s%d.ns.svc.cluster.local", i)] = &workloadpb.PortList{Ports: []*workloadpb.Port{{ServicePort: uint32(i)}}}
		}
	}
}

func TestAliasChangeIsAChange(t *testing.T) {
	c := NewCache(AddressTypeURL)
	r := workload("w", "10.0.0.1")
	c.Replace([]Resource{r})
	rev := c.Revision()
	r.Aliases = append(r.Aliases, "net2/10.0.0.1")
	c.Replace([]Resource{r})
	if c.Revision() == rev {
		t.Fatal("a new alias did not produce a new revision")
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	if got := c.aliases["net2/10.0.0.1"]; !slices.Equal(got, []string{"w"}) {
		t.Errorf("alias index = %v", got)
	}
}

func TestRejectedResourceKeepsPreviousVersion(t *testing.T) {
	c := NewCache(AddressTypeURL)
	good := workload("w", "10.0.0.1")
	c.Replace([]Resource{good})
	_, before := c.Snapshot()
	bad := workload("w", "10.0.0.1", func(w *workloadpb.Workload) { w.Node = "bad\xff" })
	c.Replace([]Resource{bad, {Name: "nil"}})
	errs := c.RejectedErrors()
	if len(errs) != 2 {
		t.Fatalf("rejected = %v, want 2 errors", errs)
	}
	for _, err := range errs {
		if !strings.HasPrefix(err.Error(), "resource w: ") && !strings.HasPrefix(err.Error(), "resource nil: ") {
			t.Errorf("error %q does not name the resource first", err)
		}
	}
	_, after := c.Snapshot()
	if len(after) != 1 || after[0].Version != before[0].Version {
		t.Fatalf("after a rejected update: %v, want the previous version kept", after)
	}
	c.Replace([]Resource{good})
	if errs := c.RejectedErrors(); errs != nil {
		t.Errorf("rejected after a clean Replace = %v", errs)
	}
}

// changes lists, under the lock, the names changed after cursor.
func changes(t *testing.T, c *Cache, cursor uint64) ([]string, bool) {
	t.Helper()
	c.mu.RLock()
	defer c.mu.RUnlock()
	var out []string
	ok := c.changesSinceLocked(cursor, func(e *entry) {
		name := e.name
		if e.removed {
			name = "-" + name
		}
		out = append(out, name)
	})
	slices.Sort(out)
	return out, ok
}

func TestChangeLogCompactsAndBoundsTombstones(t *testing.T) {
	c := NewCache(AddressTypeURL)
	stuck := c.addWatcher(make(chan struct{}, 1)) // never reads: cursor 0
	_ = stuck
	live := c.addWatcher(make(chan struct{}, 1))
	stable := workload("stable", "10.0.0.1")
	for i := range 3000 {
		cursor := c.Revision()
		c.Replace([]Resource{stable, workload(fmt.Sprintf("tmp-%d", i), "10.1.0.1")})
		got, ok := changes(t, c, cursor)
		if !ok {
			t.Fatalf("round %d: an up-to-date cursor fell behind the log", i)
		}
		want := []string{fmt.Sprintf("tmp-%d", i)}
		if i == 0 {
			want = append(want, "stable")
		} else {
			want = append(want, fmt.Sprintf("-tmp-%d", i-1))
		}
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Fatalf("round %d: changes = %v, want %v", i, got, want)
		}
		live.cursor.Store(c.Revision())
		c.mu.RLock()
		logLen, entries := len(c.log), len(c.entries)
		c.mu.RUnlock()
		if logLen > 2*entries+1024+2 {
			t.Fatalf("round %d: log has %d records for %d entries", i, logLen, entries)
		}
	}
	c.mu.RLock()
	entries := len(c.entries)
	c.mu.RUnlock()
	if limit := 2 + maxTombstonesFactor*2 + 1024 + 1; entries > limit {
		t.Errorf("%d entries kept (tombstones unbounded), want at most %d", entries, limit)
	}
	// The watcher that never read is now behind the floor: it must
	// resynchronise rather than miss removals.
	if _, ok := changes(t, c, 0); ok {
		t.Errorf("a cursor at 0 is still served incrementally after tombstones were dropped")
	}
}
