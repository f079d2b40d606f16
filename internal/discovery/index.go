package discovery

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"github.com/peerd-mesh/peerd/internal/federation"
	"slices"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Kind names one of the object kinds the index stores.
type Kind string

// The kinds the index stores. The values are the Kubernetes kind names.
const (
	KindNamespace     Kind = "Namespace"
	KindNode          Kind = "Node"
	KindPod           Kind = "Pod"
	KindService       Kind = "Service"
	KindEndpointSlice Kind = "EndpointSlice"
	KindGateway       Kind = "Gateway"
	// KindImportedService is a service a linked cluster exports
	// (federation.ImportedService); its key carries that cluster.
	KindImportedService Kind = "ImportedService"
)

// Key identifies one object in the index: kind, namespace (empty for
// cluster-scoped kinds) and name, and for an object of a linked cluster
// (an imported service) that cluster; empty for the local cluster's objects.
type Key struct {
	Kind      Kind
	Cluster   string
	Namespace string
	Name      string
}

// String renders the key the way errors name objects: "service apps/echo",
// "node worker-1", "importedservice apps/echo of cluster cluster2".
func (k Key) String() string {
	kind := strings.ToLower(string(k.Kind))
	s := kind + " " + k.Name
	if k.Namespace != "" {
		s = kind + " " + k.Namespace + "/" + k.Name
	}
	if k.Cluster != "" {
		s += " of cluster " + k.Cluster
	}
	return s
}

// ErrConflict is wrapped by the errors reported when two origins (two files,
// or two sources) define the same object.
var ErrConflict = errors.New("object defined more than once")

// ErrUnsupportedKind is wrapped by the error returned when an object of a
// type the index does not store is given to it.
var ErrUnsupportedKind = errors.New("unsupported kind")

// KeyOf returns the index key of a supported object.
func KeyOf(obj runtime.Object) (Key, error) {
	var kind Kind
	switch o := obj.(type) {
	case *corev1.Namespace:
		kind = KindNamespace
	case *corev1.Node:
		kind = KindNode
	case *corev1.Pod:
		kind = KindPod
	case *corev1.Service:
		kind = KindService
	case *discoveryv1.EndpointSlice:
		kind = KindEndpointSlice
	case *gatewayv1.Gateway:
		kind = KindGateway
	case *federation.ImportedService:
		if o.Cluster == "" || o.Name == "" || o.Namespace == "" {
			return Key{}, fmt.Errorf("importedservice %s/%s of cluster %q: cluster, namespace and name are required", o.Namespace, o.Name, o.Cluster)
		}
		return Key{Kind: KindImportedService, Cluster: o.Cluster, Namespace: o.Namespace, Name: o.Name}, nil
	default:
		return Key{}, fmt.Errorf("%w: %T", ErrUnsupportedKind, obj)
	}
	m, err := apimeta.Accessor(obj)
	if err != nil {
		return Key{}, fmt.Errorf("%w: %T: %w", ErrUnsupportedKind, obj, err)
	}
	if m.GetName() == "" {
		return Key{}, fmt.Errorf("%s: metadata.name: required", strings.ToLower(string(kind)))
	}
	ns := m.GetNamespace()
	if kind == KindNamespace || kind == KindNode {
		ns = ""
	}
	return Key{Kind: kind, Namespace: ns, Name: m.GetName()}, nil
}

// origin is who put a claim on an object: a source, and for the file source
// the file it came from.
type origin struct {
	source string
	file   string
}

func (o origin) String() string {
	if o.file != "" {
		return o.file
	}
	return fmt.Sprintf("source %q", o.source)
}

// claim is one origin's version of an object.
type claim struct {
	from origin
	obj  runtime.Object
}

type sourceState struct {
	synced bool
	// errs holds the source's current problems by subject (for the file
	// source: by file). A nil error is never stored.
	errs map[string]error
}

// Index is the in-process store every source feeds. It is safe for
// concurrent use. See doc.go for the contract.
type Index struct {
	changed chan struct{}

	mu sync.Mutex
	// claims holds every origin's version of every object in arrival order;
	// claims[k][0] is the one in force. Guarded by mu.
	claims map[Key][]claim
	// files maps a file origin to the keys it currently claims. Guarded by mu.
	files   map[origin][]Key
	sources map[string]*sourceState
	// syncedCh is closed while every registered source is synced. It is
	// replaced when a new, unsynced source registers after that.
	syncedCh chan struct{}
	// snap caches the last Snapshot; nil after a change.
	snap *Objects
	// pending are the keys whose object in force changed since the last
	// TakeChanges. Guarded by mu.
	pending map[Key]struct{}
	// conflicts are the keys claimed by more than one origin, so that
	// Errors costs the conflicts, not every object. Guarded by mu.
	conflicts map[Key]struct{}
}

// NewIndex returns an empty index with no sources registered.
func NewIndex() *Index {
	return &Index{
		changed:   make(chan struct{}, 1),
		claims:    map[Key][]claim{},
		files:     map[origin][]Key{},
		sources:   map[string]*sourceState{},
		syncedCh:  make(chan struct{}),
		pending:   map[Key]struct{}{},
		conflicts: map[Key]struct{}{},
	}
}

// Register declares a source. Synced stays false until every registered
// source has called MarkSynced. Registering a name twice is a no-op.
// Sources register in their constructors, before anyone waits on the index.
func (x *Index) Register(source string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.registerLocked(source)
}

func (x *Index) registerLocked(source string) *sourceState {
	if s, ok := x.sources[source]; ok {
		return s
	}
	s := &sourceState{errs: map[string]error{}}
	x.sources[source] = s
	select {
	case <-x.syncedCh:
		// Everyone else was synced; this newcomer is not yet.
		x.syncedCh = make(chan struct{})
	default:
	}
	return s
}

// MarkSynced records that source finished its first full load. An
// unregistered source is registered first.
func (x *Index) MarkSynced(source string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.registerLocked(source).synced = true
	if x.allSyncedLocked() {
		select {
		case <-x.syncedCh:
		default:
			close(x.syncedCh)
		}
	}
}

// allSyncedLocked is false while no source is registered: an index nobody
// feeds has not loaded anything. Must be called under lock.
func (x *Index) allSyncedLocked() bool {
	if len(x.sources) == 0 {
		return false
	}
	for _, s := range x.sources {
		if !s.synced {
			return false
		}
	}
	return true
}

// Synced reports whether at least one source is registered and every
// registered source did its first full load.
func (x *Index) Synced() bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.allSyncedLocked()
}

// WaitSynced blocks until Synced is true or ctx is done.
func (x *Index) WaitSynced(ctx context.Context) error {
	for {
		x.mu.Lock()
		if x.allSyncedLocked() {
			x.mu.Unlock()
			return nil
		}
		ch := x.syncedCh
		x.mu.Unlock()
		select {
		case <-ch:
			// Re-check: a source may have registered since.
		case <-ctx.Done():
			return fmt.Errorf("waiting for sources to sync: %w", ctx.Err())
		}
	}
}

// Changed returns a capacity-1 channel that receives a value after the
// objects in force changed. Signals coalesce: one receive may stand for many
// changes, so a receiver calls TakeChanges (or takes a fresh Snapshot) after
// each one. Updates that change nothing the index keeps do not signal.
func (x *Index) Changed() <-chan struct{} { return x.changed }

// Change is one object whose version in force changed: Object is the new
// version, nil when the object is gone.
type Change struct {
	Key    Key
	Object runtime.Object
}

// TakeChanges returns every object whose version in force changed since the
// previous call, once per key with its current version, sorted by key, and
// forgets them. It is meant for one consumer (the model): a second one
// would steal the first one's changes.
func (x *Index) TakeChanges() []Change {
	x.mu.Lock()
	defer x.mu.Unlock()
	out := make([]Change, 0, len(x.pending))
	for key := range x.pending {
		ch := Change{Key: key}
		if cs := x.claims[key]; len(cs) > 0 {
			ch.Object = cs[0].obj
		}
		out = append(out, ch)
	}
	clear(x.pending)
	slices.SortFunc(out, func(a, b Change) int { return compareKeys(a.Key, b.Key) })
	return out
}

// Get returns the object in force under key, or nil.
func (x *Index) Get(key Key) runtime.Object {
	x.mu.Lock()
	defer x.mu.Unlock()
	if cs := x.claims[key]; len(cs) > 0 {
		return cs[0].obj
	}
	return nil
}

// notifyLocked records that key's object in force changed, marks the
// snapshot stale and signals without blocking. Must be called under lock.
func (x *Index) notifyLocked(key Key) {
	x.pending[key] = struct{}{}
	x.snap = nil
	select {
	case x.changed <- struct{}{}:
	default:
	}
}

// Upsert adds or replaces source's version of obj. The index keeps obj
// itself: the caller must not mutate it afterwards.
func (x *Index) Upsert(source string, obj runtime.Object) error {
	key, err := KeyOf(obj)
	if err != nil {
		return err
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.putLocked(key, origin{source: source}, obj) {
		x.notifyLocked(key)
	}
	return nil
}

// Delete removes source's version of obj; only obj's key is used. Deleting
// an object the source does not hold is a no-op.
func (x *Index) Delete(source string, obj runtime.Object) error {
	key, err := KeyOf(obj)
	if err != nil {
		return err
	}
	x.DeleteKey(source, key)
	return nil
}

// DeleteKey removes source's version of the object with this key.
func (x *Index) DeleteKey(source string, key Key) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.dropLocked(key, origin{source: source}) {
		x.notifyLocked(key)
	}
}

// ReplaceFile makes objs the complete set of objects that file (of source)
// defines: objects the file defined before and no longer does are removed.
// If objs holds the same object twice nothing changes and an error naming
// the object is returned. Objects also defined by another origin stay with
// whichever origin was first; Errors reports the conflict.
// The index keeps Strip(obj) of each object, so objs must not be modified
// afterwards.
func (x *Index) ReplaceFile(source, file string, objs []runtime.Object) error {
	keys := make([]Key, 0, len(objs))
	seen := make(map[Key]bool, len(objs))
	for _, obj := range objs {
		key, err := KeyOf(obj)
		if err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
		if seen[key] {
			return fmt.Errorf("%s: %s: %w: appears twice in this file", file, key, ErrConflict)
		}
		seen[key] = true
		keys = append(keys, key)
	}
	from := origin{source: source, file: file}
	x.mu.Lock()
	defer x.mu.Unlock()
	x.registerLocked(source)
	for _, old := range x.files[from] {
		if !seen[old] && x.dropLocked(old, from) {
			x.notifyLocked(old)
		}
	}
	for i, obj := range objs {
		// Keep only what the model reads, as the informers' transform does,
		// so that a file edit of a field the model ignores changes nothing.
		if x.putLocked(keys[i], from, Strip(obj)) {
			x.notifyLocked(keys[i])
		}
	}
	if len(keys) == 0 {
		delete(x.files, from)
	} else {
		x.files[from] = keys
	}
	return nil
}

// RemoveFile removes every object file defined, as when it was deleted.
func (x *Index) RemoveFile(source, file string) {
	_ = x.ReplaceFile(source, file, nil) // cannot fail without objects
}

// Files returns the files of source that currently define objects, sorted.
func (x *Index) Files(source string) []string {
	x.mu.Lock()
	defer x.mu.Unlock()
	var out []string
	for o := range x.files {
		if o.source == source {
			out = append(out, o.file)
		}
	}
	slices.Sort(out)
	return out
}

// putLocked records from's version of key and reports whether the object in
// force changed. Must be called under lock.
func (x *Index) putLocked(key Key, from origin, obj runtime.Object) bool {
	defer x.trackConflictLocked(key)
	cs := x.claims[key]
	for i := range cs {
		if cs[i].from != from {
			continue
		}
		if sameObject(cs[i].obj, obj, from.file == "") {
			return false
		}
		cs[i].obj = obj
		return i == 0
	}
	x.claims[key] = append(cs, claim{from: from, obj: obj})
	return len(cs) == 0
}

// dropLocked removes from's claim on key and reports whether the object in
// force changed. Must be called under lock.
func (x *Index) dropLocked(key Key, from origin) bool {
	defer x.trackConflictLocked(key)
	cs := x.claims[key]
	for i := range cs {
		if cs[i].from != from {
			continue
		}
		dropped := cs[i].obj
		cs = slices.Delete(cs, i, i+1)
		if len(cs) == 0 {
			delete(x.claims, key)
		} else {
			x.claims[key] = cs
		}
		// Dropping a shadowed claim changes nothing in force. Dropping the
		// claim in force hands the object to the next origin, which is a
		// change unless that origin's version is the same.
		if i != 0 {
			return false
		}
		return len(cs) == 0 || !sameObject(dropped, cs[0].obj, false)
	}
	return false
}

// trackConflictLocked records whether key is claimed by several origins.
// Must be called under lock.
func (x *Index) trackConflictLocked(key Key) {
	if len(x.claims[key]) > 1 {
		x.conflicts[key] = struct{}{}
	} else {
		delete(x.conflicts, key)
	}
}

// sameObject reports whether b changes nothing compared to a: the same
// content apart from bookkeeping (resourceVersion, generation,
// managedFields) or, when byVersion, the same non-empty resourceVersion and
// uid (an informer resync or relist). Files never compare by version: a
// manifest copied from a cluster keeps its resourceVersion while being
// edited. Sources strip what the model never reads before they hand objects
// over (Strip), so a status heartbeat compares equal here and causes no
// recompute at all.
func sameObject(a, b runtime.Object, byVersion bool) bool {
	if a == nil || b == nil {
		return a == b
	}
	if ia, ok := a.(*federation.ImportedService); ok {
		ib, ok := b.(*federation.ImportedService)
		return ok && ia.Equal(ib)
	}
	if byVersion {
		ma, errA := apimeta.Accessor(a)
		mb, errB := apimeta.Accessor(b)
		if errA == nil && errB == nil && ma.GetResourceVersion() != "" &&
			ma.GetResourceVersion() == mb.GetResourceVersion() && ma.GetUID() == mb.GetUID() {
			return true
		}
	}
	return apiequality.Semantic.DeepEqual(withoutBookkeeping(a), withoutBookkeeping(b))
}

// withoutBookkeeping returns a shallow copy of obj whose metadata lacks the
// fields the API server changes on every write. The copy shares everything
// else with obj and must not be modified.
func withoutBookkeeping(obj runtime.Object) runtime.Object {
	switch o := obj.(type) {
	case *corev1.Namespace:
		return shallowWithoutBookkeeping(o)
	case *corev1.Node:
		return shallowWithoutBookkeeping(o)
	case *corev1.Pod:
		return shallowWithoutBookkeeping(o)
	case *corev1.Service:
		return shallowWithoutBookkeeping(o)
	case *discoveryv1.EndpointSlice:
		return shallowWithoutBookkeeping(o)
	case *gatewayv1.Gateway:
		return shallowWithoutBookkeeping(o)
	}
	return obj
}

func shallowWithoutBookkeeping[T any, P interface {
	*T
	metav1.Object
}](o P) P {
	c := *(*T)(o)
	p := P(&c)
	p.SetResourceVersion("")
	p.SetGeneration(0)
	p.SetManagedFields(nil)
	return p
}

// SetError records (or with err == nil clears) a current problem of source
// about subject (for the file source: a file path). Errors reports it until
// it is cleared.
func (x *Index) SetError(source, subject string, err error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	s := x.registerLocked(source)
	if err == nil {
		delete(s.errs, subject)
		return
	}
	s.errs[subject] = err
}

// Errors returns the current problems: every error a source set and not yet
// cleared (by source, then subject), then one error per object defined by
// more than one origin (by key). The order is stable.
func (x *Index) Errors() []error {
	x.mu.Lock()
	defer x.mu.Unlock()
	var out []error
	names := make([]string, 0, len(x.sources))
	for name := range x.sources {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		errs := x.sources[name].errs
		subjects := make([]string, 0, len(errs))
		for s := range errs {
			subjects = append(subjects, s)
		}
		slices.Sort(subjects)
		for _, s := range subjects {
			out = append(out, errs[s])
		}
	}
	conflicts := make([]Key, 0, len(x.conflicts))
	for key := range x.conflicts {
		conflicts = append(conflicts, key)
	}
	slices.SortFunc(conflicts, compareKeys)
	for _, key := range conflicts {
		cs := x.claims[key]
		others := make([]string, 0, len(cs)-1)
		for _, c := range cs[1:] {
			others = append(others, c.from.String())
		}
		out = append(out, fmt.Errorf("%s: %w: in %s and %s; using the one from %s",
			key, ErrConflict, cs[0].from, strings.Join(others, " and "), cs[0].from))
	}
	return out
}

func compareKeys(a, b Key) int {
	return cmp.Or(cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Cluster, b.Cluster), cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
}

// Snapshot returns the objects in force, each kind sorted by namespace, then
// name. The objects and slices are shared: callers must not mutate them.
func (x *Index) Snapshot() Objects {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.snap != nil {
		return *x.snap
	}
	keys := make([]Key, 0, len(x.claims))
	for key := range x.claims {
		keys = append(keys, key)
	}
	slices.SortFunc(keys, compareKeys)
	var o Objects
	for _, key := range keys {
		o.Add(x.claims[key][0].obj)
	}
	x.snap = &o
	return o
}
