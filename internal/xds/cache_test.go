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

func TestUpdateUpsertsAndDeletesOnlyWhatItNames(t *testing.T) {
	c := NewCache(AddressTypeURL)
	c.Update([]Resource{workload("a", "10.0.0.1"), workload("b", "10.0.0.2")}, nil)
	rev := c.Revision()
	c.Update([]Resource{workload("c", "10.0.0.3")}, []string{"a", "never-there"})
	if got, _ := changes(t, c, rev); !slices.Equal(got, []string{"-a", "c"}) {
		t.Fatalf("changes after Update = %v, want -a and c only", got)
	}
	_, held := c.Snapshot()
	var names []string
	for _, r := range held {
		names = append(names, r.Name)
	}
	if !slices.Equal(names, []string{"b", "c"}) {
		t.Fatalf("held %v, want b and c", names)
	}
	rev = c.Revision()
	c.Update([]Resource{workload("b", "10.0.0.2")}, []string{"nothing"})
	if c.Revision() != rev {
		t.Errorf("an unchanged upsert and a delete of an unknown name made a new revision")
	}
	// An upsert beats a delete of the same name in one Update.
	c.Update([]Resource{workload("b", "10.0.0.9")}, []string{"b"})
	if _, held := c.Snapshot(); len(held) != 2 {
		t.Errorf("upsert and delete of b in one Update left %d resources, want b kept", len(held))
	}
}

func TestMembersFollowMemberships(t *testing.T) {
	c := NewCache(AddressTypeURL)
	member := func(name string, groups ...string) Resource {
		r := workload(name, "10.0.0.1")
		r.MemberOf = groups
		return r
	}
	c.Update([]Resource{member("a", "svc1"), member("b", "svc1", "svc2")}, nil)
	members := func(g string) []string {
		c.mu.RLock()
		defer c.mu.RUnlock()
		return slices.Clone(c.members[g])
	}
	if got := members("svc1"); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("svc1 members = %v", got)
	}
	c.Update([]Resource{member("a", "svc2")}, []string{"b"})
	if got := members("svc1"); len(got) != 0 {
		t.Errorf("svc1 members after a moved and b went = %v, want none", got)
	}
	if got := members("svc2"); !slices.Equal(got, []string{"a"}) {
		t.Errorf("svc2 members = %v, want a", got)
	}
	rev := c.Revision()
	c.Update([]Resource{member("a")}, nil)
	if c.Revision() == rev {
		t.Errorf("a membership change alone is not a change")
	}
}

func TestRejectedStaysUntilFixedOrDeleted(t *testing.T) {
	c := NewCache(AddressTypeURL)
	bad := workload("w", "10.0.0.1", func(w *workloadpb.Workload) { w.Node = "bad\xff" })
	c.Update([]Resource{bad}, nil)
	c.Update([]Resource{workload("other", "10.0.0.2")}, nil)
	if errs := c.RejectedErrors(); len(errs) != 1 || !strings.HasPrefix(errs[0].Error(), "resource w: ") {
		t.Fatalf("rejected after an unrelated update = %v, want w's error kept", errs)
	}
	c.Update(nil, []string{"w"})
	if errs := c.RejectedErrors(); errs != nil {
		t.Errorf("rejected after w was deleted = %v", errs)
	}
}
