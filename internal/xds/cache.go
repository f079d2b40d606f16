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

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Resource is one named resource handed to Cache.Update or Cache.Replace.
//
// Aliases are extra on-demand keys (for addresses: "network/ip") under which
// a client may ask for the resource. MemberOf names other resources this one
// belongs to (a workload: the services it is an endpoint of): a client that
// asks on demand for one of those also gets their members, and keeps getting
// them as they change. The Message must not be modified after it has been
// handed to the cache: the cache keeps it for Snapshot.
type Resource struct {
	Name     string
	Aliases  []string
	MemberOf []string
	Message  proto.Message
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
	name     string
	aliases  []string
	memberOf []string
	version  string
	message  proto.Message
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
	members  map[string][]string // group -> sorted names of live entries that are members
	log      []change            // ordered by rev, possibly with stale records
	// floor: changes at revisions <= floor may be missing from log and
	// entries (tombstones dropped). A stream with cursor < floor cannot be
	// served incrementally.
	floor    uint64
	watchers map[*watcher]struct{}
	// replacedAt is when the Replace that produced each recent revision
	// started, for the push latency metric. Only the newest is kept.
	replacedAt time.Time
	// rejected holds, per name, why its latest version could not be
	// encoded; the previous version (if any) stays in force meanwhile.
	rejected map[string]error

	// shared memoises, for the current revision, the encoded response of
	// every wildcard stream by the cursor it starts from.
	shared sharedResponses
}

// sharedResponses are the wildcard responses of one revision, encoded once
// and sent to every stream that starts from the same cursor: a change that
// reaches N streams costs one encode and N writes, not N encodes.
type sharedResponses struct {
	mu       sync.Mutex
	revision uint64
	byCursor map[uint64]*sharedResponse
}

// fullSync is the byCursor key of the response that carries every live
// resource (a new wildcard stream that holds nothing).
const fullSync = ^uint64(0)

// sharedResponse is one encoded DeltaDiscoveryResponse without its nonce.
type sharedResponse struct {
	once sync.Once
	// behind: the cursor is below the floor; there is no response.
	behind    bool
	err       error
	bytes     []byte
	resources int
	removed   int
}

// NewCache returns an empty cache for one type URL.
func NewCache(typeURL string) *Cache {
	return &Cache{
		typeURL:  typeURL,
		entries:  map[string]*entry{},
		aliases:  map[string][]string{},
		members:  map[string][]string{},
		watchers: map[*watcher]struct{}{},
		rejected: map[string]error{},
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

// encoded is a resource marshaled outside the lock.
type encoded struct {
	name     string
	aliases  []string
	memberOf []string
	version  string
	message  proto.Message
	bytes    []byte
}

var marshalOpts = proto.MarshalOptions{Deterministic: true}

// versionOf derives a version from content alone, so that restarts and
// replicas agree and initial_resource_versions compare directly.
func versionOf(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// Replace makes resources the cache's full set: names missing from it are
// removed. It is Update with the removals worked out by the cache.
func (c *Cache) Replace(resources []Resource) {
	c.update(resources, nil, true)
}

// Update adds or changes upserts and removes deletes, as one new revision.
// A resource whose encoding, aliases and memberships are unchanged keeps
// its version and is not pushed; deleting a name the cache does not hold is
// a no-op. When two upserts share a name the later one wins, and an upsert
// beats a delete of the same name. Every watcher is woken without blocking.
// A resource that cannot be marshaled (nil, or a string that is not UTF-8)
// is rejected: its previous version, if any, stays in force, and the reason
// is kept for RejectedErrors until the name is updated successfully or
// deleted. The marshaling runs outside the cache lock, so streams keep
// reading while a large batch encodes.
func (c *Cache) Update(upserts []Resource, deletes []string) {
	c.update(upserts, deletes, false)
}

func (c *Cache) update(upserts []Resource, deletes []string, replace bool) {
	start := time.Now()
	c.replaceMu.Lock()
	defer c.replaceMu.Unlock()

	rejected := map[string]error{}
	next := make(map[string]*encoded, len(upserts))
	for _, r := range upserts {
		if r.Message == nil {
			rejected[r.Name] = fmt.Errorf("resource %s: message: nil", r.Name)
			delete(next, r.Name)
			continue
		}
		b, err := marshalOpts.Marshal(r.Message)
		if err != nil {
			rejected[r.Name] = fmt.Errorf("resource %s: marshal: %w", r.Name, err)
			delete(next, r.Name)
			continue
		}
		delete(rejected, r.Name)
		next[r.Name] = &encoded{name: r.Name, aliases: sortedSet(r.Aliases), memberOf: sortedSet(r.MemberOf),
			version: versionOf(b), message: r.Message, bytes: b}
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	if replace {
		// A full set: whatever it lacks goes, except rejected names, whose
		// previous version stays in force.
		clear(c.rejected)
		deletes = deletes[:0]
		for name, e := range c.entries {
			if _, ok := next[name]; !ok && !e.removed && rejected[name] == nil {
				deletes = append(deletes, name)
			}
		}
	}
	for name, err := range rejected {
		c.rejected[name] = err
	}
	rev := c.revision + 1
	changed := false
	for name, n := range next {
		delete(c.rejected, name)
		if c.upsertLocked(n, rev) {
			changed = true
		}
	}
	for _, name := range deletes {
		if _, ok := next[name]; ok {
			continue
		}
		if _, ok := rejected[name]; ok {
			continue
		}
		delete(c.rejected, name)
		if c.deleteLocked(name, rev) {
			changed = true
		}
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

func sortedSet(list []string) []string {
	if len(list) == 0 {
		return nil
	}
	out := slices.Clone(list)
	slices.Sort(out)
	return slices.Compact(out)
}

// upsertLocked installs n at rev unless the live entry already has the same
// version, aliases and memberships; it reports whether anything changed.
// Must be called under the write lock.
func (c *Cache) upsertLocked(n *encoded, rev uint64) bool {
	old := c.entries[n.name]
	if old != nil && !old.removed && old.version == n.version && slices.Equal(old.aliases, n.aliases) && slices.Equal(old.memberOf, n.memberOf) {
		old.message = n.message
		return false
	}
	e := &entry{
		name:      n.name,
		aliases:   n.aliases,
		memberOf:  n.memberOf,
		version:   n.version,
		message:   n.message,
		body:      &anypb.Any{TypeUrl: c.typeURL, Value: n.bytes},
		changedAt: rev,
		createdAt: rev,
	}
	if old != nil {
		c.unindexLocked(old)
		if !old.removed {
			e.createdAt = old.createdAt
		}
	}
	if old == nil || old.removed {
		c.live++
	}
	c.entries[n.name] = e
	c.indexLocked(e)
	c.log = append(c.log, change{rev: rev, name: n.name})
	return true
}

// deleteLocked turns the live entry name into a tombstone at rev; it
// reports whether there was one. Must be called under the write lock.
func (c *Cache) deleteLocked(name string, rev uint64) bool {
	old := c.entries[name]
	if old == nil || old.removed {
		return false
	}
	c.unindexLocked(old)
	c.entries[name] = &entry{name: name, version: old.version, changedAt: rev, createdAt: old.createdAt, removed: true}
	c.live--
	c.log = append(c.log, change{rev: rev, name: name})
	return true
}

// RejectedErrors returns why resources could not be encoded, one error per
// resource, naming it, sorted by name; nil when everything was accepted.
func (c *Cache) RejectedErrors() []error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if len(c.rejected) == 0 {
		return nil
	}
	names := make([]string, 0, len(c.rejected))
	for name := range c.rejected {
		names = append(names, name)
	}
	slices.Sort(names)
	out := make([]error, 0, len(names))
	for _, name := range names {
		out = append(out, c.rejected[name])
	}
	return out
}

func (c *Cache) indexLocked(e *entry) {
	for _, a := range e.aliases {
		c.aliases[a] = insertSorted(c.aliases[a], e.name)
	}
	for _, g := range e.memberOf {
		c.members[g] = insertSorted(c.members[g], e.name)
	}
}

func (c *Cache) unindexLocked(e *entry) {
	for _, a := range e.aliases {
		removeSorted(c.aliases, a, e.name)
	}
	for _, g := range e.memberOf {
		removeSorted(c.members, g, e.name)
	}
}

func insertSorted(names []string, name string) []string {
	i, found := slices.BinarySearch(names, name)
	if found {
		return names
	}
	return slices.Insert(names, i, name)
}

func removeSorted(m map[string][]string, key, name string) {
	names := m[key]
	if i, found := slices.BinarySearch(names, name); found {
		names = slices.Delete(names, i, i+1)
	}
	if len(names) == 0 {
		delete(m, key)
	} else {
		m[key] = names
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

// sharedLocked returns the response for a wildcard stream at cursor (or,
// with cursor fullSync, for one that holds nothing), encoding it on first
// use in this revision. Must be called with c.mu held (read or write).
func (c *Cache) sharedLocked(cursor uint64) *sharedResponse {
	c.shared.mu.Lock()
	if c.shared.byCursor == nil || c.shared.revision != c.revision {
		c.shared.revision = c.revision
		c.shared.byCursor = map[uint64]*sharedResponse{}
	}
	sr := c.shared.byCursor[cursor]
	if sr == nil {
		sr = &sharedResponse{}
		c.shared.byCursor[cursor] = sr
	}
	c.shared.mu.Unlock()
	sr.once.Do(func() { c.encodeSharedLocked(sr, cursor) })
	return sr
}

func (c *Cache) encodeSharedLocked(sr *sharedResponse, cursor uint64) {
	var resources []*discovery.Resource
	var removed []string
	if cursor == fullSync {
		resources = make([]*discovery.Resource, 0, c.live)
		for _, e := range c.entries {
			if !e.removed {
				resources = append(resources, &discovery.Resource{Name: e.name, Version: e.version, Resource: e.body})
			}
		}
	} else {
		ok := c.changesSinceLocked(cursor, func(e *entry) {
			if e.removed {
				if e.createdAt <= cursor { // else it came and went unseen
					removed = append(removed, e.name)
				}
				return
			}
			resources = append(resources, &discovery.Resource{Name: e.name, Version: e.version, Resource: e.body})
		})
		if !ok {
			sr.behind = true
			return
		}
	}
	sr.resources, sr.removed = len(resources), len(removed)
	sr.bytes, sr.err = marshalOpts.Marshal(&discovery.DeltaDiscoveryResponse{
		TypeUrl:          c.typeURL,
		Resources:        resources,
		RemovedResources: removed,
	})
}
