package xds

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Resource is one named resource handed to Cache.Replace.
//
// Aliases are extra on-demand keys (for addresses: "network/ip") under which
// a client may ask for the resource. The Message must not be modified after
// it has been handed to Replace: the cache keeps it for Snapshot.
type Resource struct {
	Name    string
	Aliases []string
	Message proto.Message
}

// CachedResource is a read-only view of one resource held by a Cache.
type CachedResource struct {
	Name    string
	Version string
	Aliases []string
	Message proto.Message
}

// entry is the cache's record of one name. A removed name stays as a
// tombstone (removed=true) until no watcher can still need its removal.
type entry struct {
	name    string
	aliases []string
	version string
	message proto.Message
	// body is marshaled once per version and shared, read-only, by every
	// stream that sends this version.
	body *anypb.Any
	// changedAt is the revision of the last update or removal.
	changedAt uint64
	// createdAt is the revision at which the name last came into existence;
	// a stream whose cursor is at or after it may hold the resource.
	createdAt uint64
	removed   bool
}

// change is one change log record: name changed at rev. The log is ordered
// by rev; a record is stale when the entry's changedAt moved on since.
type change struct {
	rev  uint64
	name string
}

// watcher is one stream's interest in one cache. The cache only ever does a
// non-blocking send on wake (capacity 1, latest wins), so a slow stream never
// holds the cache lock.
type watcher struct {
	wake chan<- struct{}
	// cursor is the revision the stream is synced to. Written under the
	// cache read lock by the stream, read under the write lock by compaction.
	cursor atomic.Uint64
}

// Cache holds the full current set of resources of one type URL, their
// content-hash versions and shared encodings, a change log and the watchers
// of the streams that subscribe to the type.
type Cache struct {
	typeURL string

	// replaceMu serialises Replace calls so that "full set" replacements
	// apply in call order; the expensive marshaling runs under it but
	// outside mu.
	replaceMu sync.Mutex

	mu       sync.RWMutex // guards every field below
	revision uint64
	entries  map[string]*entry   // live entries and tombstones
	live     int                 // number of entries that are not tombstones
	aliases  map[string][]string // alias -> sorted names of live entries
	log      []change            // ordered by rev, possibly with stale records
	// floor: changes at revisions <= floor may be missing from log and
	// entries (tombstones dropped). A stream with cursor < floor cannot be
	// served incrementally.
	floor    uint64
	watchers map[*watcher]struct{}
	// replacedAt is when the Replace that produced each recent revision
	// started, for the push latency metric. Only the newest is kept.
	replacedAt time.Time
	rejected   []error
}

// NewCache returns an empty cache for one type URL.
func NewCache(typeURL string) *Cache {
	return &Cache{
		typeURL:  typeURL,
		entries:  map[string]*entry{},
		aliases:  map[string][]string{},
		watchers: map[*watcher]struct{}{},
	}
}

// TypeURL is the type URL of every resource in the cache.
func (c *Cache) TypeURL() string { return c.typeURL }

// Revision is the cache's current revision; it grows by one per Replace that
// changed anything.
func (c *Cache) Revision() uint64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.revision
}

// Len is the number of resources currently held.
func (c *Cache) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.live
}

// Snapshot returns the revision and every live resource, sorted by name: what
// a wildcard client holds once it is in sync.
func (c *Cache) Snapshot() (uint64, []CachedResource) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]CachedResource, 0, c.live)
	for _, e := range c.entries {
		if e.removed {
			continue
		}
		out = append(out, CachedResource{Name: e.name, Version: e.version, Aliases: e.aliases, Message: e.message})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return c.revision, out
}

// encoded is a resource marshaled outside the lock during Replace.
type encoded struct {
	name    string
	aliases []string
	version string
	message proto.Message
	bytes   []byte
}

var marshalOpts = proto.MarshalOptions{Deterministic: true}

// versionOf derives a version from content alone, so that restarts and
// replicas agree and initial_resource_versions compare directly.
func versionOf(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// Replace makes resources the cache's full set. Names missing from it are
// removed; a resource whose encoding and aliases are unchanged keeps its
// version and is not pushed. Everything that changed is published as one new
// revision, and every watcher is woken without blocking. When two resources
// share a name the later one wins. A resource that cannot be marshaled (nil,
// or a string that is not UTF-8) is rejected: its previous version, if any,
// stays in force, and the reason is kept for RejectedErrors.
func (c *Cache) Replace(resources []Resource) {
	start := time.Now()
	c.replaceMu.Lock()
	defer c.replaceMu.Unlock()

	var errs []error
	var keep []string // rejected names whose previous version stays
	next := make(map[string]*encoded, len(resources))
	for _, r := range resources {
		if r.Message == nil {
			errs = append(errs, fmt.Errorf("resource %s: message: nil", r.Name))
			keep = append(keep, r.Name)
			continue
		}
		b, err := marshalOpts.Marshal(r.Message)
		if err != nil {
			errs = append(errs, fmt.Errorf("resource %s: marshal: %w", r.Name, err))
			keep = append(keep, r.Name)
			continue
		}
		aliases := slices.Clone(r.Aliases)
		slices.Sort(aliases)
		aliases = slices.Compact(aliases)
		next[r.Name] = &encoded{name: r.Name, aliases: aliases, version: versionOf(b), message: r.Message, bytes: b}
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	c.rejected = errs
	for _, name := range keep {
		if _, ok := next[name]; ok {
			continue
		}
		if old := c.entries[name]; old != nil && !old.removed {
			next[name] = &encoded{name: name, aliases: old.aliases, version: old.version, message: old.message}
		}
	}
	rev := c.revision + 1
	changed := false
	for name, n := range next {
		old := c.entries[name]
		if old != nil && !old.removed && old.version == n.version && slices.Equal(old.aliases, n.aliases) {
			old.message = n.message
			continue
		}
		e := &entry{
			name:      name,
			aliases:   n.aliases,
			version:   n.version,
			message:   n.message,
			body:      &anypb.Any{TypeUrl: c.typeURL, Value: n.bytes},
			changedAt: rev,
			createdAt: rev,
		}
		if old != nil {
			c.unindexAliasesLocked(old)
			if !old.removed {
				e.createdAt = old.createdAt
			}
		}
		if old == nil || old.removed {
			c.live++
		}
		c.entries[name] = e
		c.indexAliasesLocked(e)
		c.log = append(c.log, change{rev: rev, name: name})
		changed = true
	}
	for name, old := range c.entries {
		if old.removed {
			continue
		}
		if _, ok := next[name]; ok {
			continue
		}
		c.unindexAliasesLocked(old)
		c.entries[name] = &entry{name: name, version: old.version, changedAt: rev, createdAt: old.createdAt, removed: true}
		c.live--
		c.log = append(c.log, change{rev: rev, name: name})
		changed = true
	}
	if changed {
		c.revision = rev
		c.replacedAt = start
		c.maybeCompactLocked()
		for w := range c.watchers {
			select {
			case w.wake <- struct{}{}:
			default:
			}
		}
	}
}

// RejectedErrors returns why resources of the last Replace were rejected, one
// error per resource, naming it; nil when everything was accepted.
func (c *Cache) RejectedErrors() []error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return slices.Clone(c.rejected)
}

func (c *Cache) indexAliasesLocked(e *entry) {
	for _, a := range e.aliases {
		names := c.aliases[a]
		i, found := slices.BinarySearch(names, e.name)
		if !found {
			c.aliases[a] = slices.Insert(names, i, e.name)
		}
	}
}

func (c *Cache) unindexAliasesLocked(e *entry) {
	for _, a := range e.aliases {
		names := c.aliases[a]
		if i, found := slices.BinarySearch(names, e.name); found {
			names = slices.Delete(names, i, i+1)
		}
		if len(names) == 0 {
			delete(c.aliases, a)
		} else {
			c.aliases[a] = names
		}
	}
}

// maybeCompactLocked keeps the log within a constant factor of the number of
// entries (it rewrites it with one record per name) and the tombstones
// within tombstoneCapLocked: those every watcher has moved past are dropped,
// and if a watcher that does not read still pins too many, the oldest go
// too. Amortised O(1) per logged change.
func (c *Cache) maybeCompactLocked() {
	tombstones := len(c.entries) - c.live
	if len(c.log) <= 2*len(c.entries)+1024 && tombstones <= c.tombstoneCapLocked() {
		return
	}
	minCursor := c.revision
	for w := range c.watchers {
		if cur := w.cursor.Load(); cur < minCursor {
			minCursor = cur
		}
	}
	c.compactLocked(minCursor)
}

// maxTombstonesFactor bounds how many removals are kept for lagging watchers
// (a multiple of the live resources, plus a constant); past it, the oldest
// are dropped and those watchers fall back to a full resynchronisation.
const maxTombstonesFactor = 4

func (c *Cache) tombstoneCapLocked() int { return maxTombstonesFactor*c.live + 1024 }

func (c *Cache) compactLocked(minCursor uint64) {
	log := make([]change, 0, len(c.entries))
	tombstones := 0
	for name, e := range c.entries {
		if e.removed && e.changedAt <= minCursor {
			delete(c.entries, name)
			continue
		}
		if e.removed {
			tombstones++
		}
		log = append(log, change{rev: e.changedAt, name: name})
	}
	sort.Slice(log, func(i, j int) bool {
		if log[i].rev != log[j].rev {
			return log[i].rev < log[j].rev
		}
		return log[i].name < log[j].name
	})
	// A watcher that never reads would pin every tombstone forever: cap
	// them, and move the floor so that such a watcher resynchronises fully.
	if limit := c.tombstoneCapLocked(); tombstones > limit {
		drop := tombstones - limit/2 // hysteresis: not again on the next change
		kept := log[:0]
		for _, ch := range log {
			e := c.entries[ch.name]
			if drop > 0 && e.removed {
				delete(c.entries, ch.name)
				if ch.rev > c.floor {
					c.floor = ch.rev
				}
				drop--
				continue
			}
			kept = append(kept, ch)
		}
		log = kept
	}
	c.log = log
}

// addWatcher registers a stream's wake channel.
func (c *Cache) addWatcher(wake chan<- struct{}) *watcher {
	w := &watcher{wake: wake}
	c.mu.Lock()
	w.cursor.Store(c.revision)
	c.watchers[w] = struct{}{}
	c.mu.Unlock()
	return w
}

func (c *Cache) removeWatcher(w *watcher) {
	c.mu.Lock()
	delete(c.watchers, w)
	c.mu.Unlock()
}

// The helpers below are used by streams; each must be called with c.mu held
// (read or write).

// liveLocked returns the live entry named name, or nil.
func (c *Cache) liveLocked(name string) *entry {
	if e := c.entries[name]; e != nil && !e.removed {
		return e
	}
	return nil
}

// changesSinceLocked calls fn for the latest change of every name changed
// after cursor, in revision order. ok is false when cursor is below the
// floor, i.e. some removals after cursor are no longer known.
func (c *Cache) changesSinceLocked(cursor uint64, fn func(e *entry)) (ok bool) {
	if cursor < c.floor {
		return false
	}
	i := sort.Search(len(c.log), func(i int) bool { return c.log[i].rev > cursor })
	for _, ch := range c.log[i:] {
		e := c.entries[ch.name]
		if e == nil || e.changedAt != ch.rev {
			continue // a later record for the same name follows
		}
		fn(e)
	}
	return true
}
