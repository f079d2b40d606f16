package main

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"

	gcptypes "github.com/envoyproxy/go-control-plane/pkg/cache/types"
	gcpcache "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/fsnotify/fsnotify"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/peerd-mesh/peerd/internal/ambient"
	"github.com/peerd-mesh/peerd/internal/discovery"
	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
)

// source is a per-file manifest source feeding a LinearCache, the way a
// small go-control-plane based server would be written: a changed file is
// decoded alone, diffed against its previous objects, and only the Address
// resources those objects influence are recomputed (with peerd's own
// mapping, ambient.Build, on just those objects) and updated in the cache.
//
// Dependencies it follows: a Pod maps to its workload; a Service to its
// Service resource and the workloads of every pod of its namespace (the
// pods its selector may match); a Namespace or Node to every workload.
// EndpointSlices and Gateways are decoded but not mapped: the benchmark's
// clusters have no EndpointSlices, and Gateways feed only peering.
// Directories created after the start are not watched.
//
// One goroutine (run) owns everything; the cache is safe for the gRPC
// server's goroutines.
type source struct {
	dir   string
	cfg   ambient.Config
	cache *gcpcache.LinearCache
	log   *zap.Logger

	files      map[string]*file
	namespaces map[string]*corev1.Namespace
	nodes      map[string]*corev1.Node
	pods       map[string]map[string]*corev1.Pod     // namespace -> name -> pod
	services   map[string]map[string]*corev1.Service // namespace -> name -> service
	// served is what the cache holds; emitted maps a pod or Service to the
	// resource it produced, so that its removal can be sent.
	served  map[string]*workloadpb.Address
	emitted map[discovery.Key]string
}

type file struct {
	data []byte
	objs map[discovery.Key]runtime.Object
}

// scope is what one file change makes stale.
type scope struct {
	all        bool
	namespaces map[string]bool        // every pod and Service of these
	pods       map[discovery.Key]bool // these pods, present or removed
	services   map[discovery.Key]bool // these Services, present or removed
}

func newScope() scope {
	return scope{namespaces: map[string]bool{}, pods: map[discovery.Key]bool{}, services: map[discovery.Key]bool{}}
}

func newSource(dir string, cfg ambient.Config, cache *gcpcache.LinearCache, log *zap.Logger) *source {
	return &source{
		dir: dir, cfg: cfg, cache: cache, log: log,
		files:      map[string]*file{},
		namespaces: map[string]*corev1.Namespace{},
		nodes:      map[string]*corev1.Node{},
		pods:       map[string]map[string]*corev1.Pod{},
		services:   map[string]map[string]*corev1.Service{},
		served:     map[string]*workloadpb.Address{},
		emitted:    map[discovery.Key]string{},
	}
}

// load reads every manifest below dir and fills the cache once. It returns
// the directories to watch.
func (s *source) load() ([]string, error) {
	var dirs []string
	err := filepath.WalkDir(s.dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if path != s.dir && strings.HasPrefix(d.Name(), ".") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			dirs = append(dirs, path)
			return nil
		}
		if manifest(path) {
			s.reload(path, nil)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("config dir %s: %w", s.dir, err)
	}
	sc := newScope()
	sc.all = true
	s.recompute(sc)
	return dirs, nil
}

func manifest(path string) bool {
	ext := filepath.Ext(path)
	return !strings.HasPrefix(filepath.Base(path), ".") && (ext == ".yaml" || ext == ".yml")
}

// run follows changes: the events already queued are drained and each file
// they name is reloaded once.
func (s *source) run(w *fsnotify.Watcher, stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		case err := <-w.Errors:
			s.log.Error("watching config dir", zap.Error(err))
		case ev := <-w.Events:
			pending := map[string]bool{}
			add := func(ev fsnotify.Event) {
				if ev.Op != fsnotify.Chmod && manifest(ev.Name) {
					pending[ev.Name] = true
				}
			}
			add(ev)
			for drained := false; !drained; {
				select {
				case ev := <-w.Events:
					add(ev)
				default:
					drained = true
				}
			}
			for path := range pending {
				sc := newScope()
				s.reload(path, &sc)
				s.recompute(sc)
			}
		}
	}
}

// reload reads one file, diffs its objects with the previous ones and
// applies the difference; sc, when not nil, collects what became stale.
func (s *source) reload(path string, sc *scope) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		s.replaceFile(path, nil, sc)
		delete(s.files, path)
		return
	}
	if err != nil {
		s.log.Error("reading manifest file; keeping its objects", zap.String("file", path), zap.Error(err))
		return
	}
	old := s.files[path]
	if old != nil && bytes.Equal(old.data, data) {
		return
	}
	objs, err := discovery.DecodeManifests(path, data)
	if err != nil {
		s.log.Error("manifest file rejected; keeping its objects", zap.String("file", path), zap.Error(err))
		return
	}
	next := &file{data: data, objs: make(map[discovery.Key]runtime.Object, len(objs))}
	for _, o := range objs {
		k, err := discovery.KeyOf(o)
		if err != nil {
			continue // DecodeManifests returns only kinds KeyOf knows
		}
		next.objs[k] = o
	}
	s.replaceFile(path, next.objs, sc)
	s.files[path] = next
}

// replaceFile makes objs the objects of path, noting in sc every object
// that was added, removed or changed.
func (s *source) replaceFile(path string, objs map[discovery.Key]runtime.Object, sc *scope) {
	var prev map[discovery.Key]runtime.Object
	if f := s.files[path]; f != nil {
		prev = f.objs
	}
	for k := range prev {
		if _, ok := objs[k]; !ok {
			s.set(k, nil)
			sc.mark(k)
		}
	}
	for k, o := range objs {
		if p, ok := prev[k]; ok && reflect.DeepEqual(p, o) {
			continue
		}
		s.set(k, o)
		sc.mark(k)
	}
}

// mark notes that the object under k changed.
func (sc *scope) mark(k discovery.Key) {
	if sc == nil {
		return
	}
	switch k.Kind {
	case discovery.KindPod:
		sc.pods[k] = true
	case discovery.KindService:
		sc.services[k] = true
		sc.namespaces[k.Namespace] = true
	case discovery.KindNamespace, discovery.KindNode:
		sc.all = true
	}
}

// set stores (o != nil) or forgets the object under k.
func (s *source) set(k discovery.Key, o runtime.Object) {
	switch k.Kind {
	case discovery.KindNamespace:
		setIn(s.namespaces, k.Name, o)
	case discovery.KindNode:
		setIn(s.nodes, k.Name, o)
	case discovery.KindPod:
		if s.pods[k.Namespace] == nil {
			s.pods[k.Namespace] = map[string]*corev1.Pod{}
		}
		setIn(s.pods[k.Namespace], k.Name, o)
	case discovery.KindService:
		if s.services[k.Namespace] == nil {
			s.services[k.Namespace] = map[string]*corev1.Service{}
		}
		setIn(s.services[k.Namespace], k.Name, o)
	}
}

func setIn[T runtime.Object](m map[string]T, name string, o runtime.Object) {
	if o == nil {
		delete(m, name)
		return
	}
	m[name] = o.(T)
}

// recompute maps what sc made stale and updates the cache with the
// resources whose content changed and the removals.
func (s *source) recompute(sc scope) {
	var in ambient.Inputs
	for _, ns := range s.namespaces {
		in.Namespaces = append(in.Namespaces, ns)
	}
	for _, n := range s.nodes {
		in.Nodes = append(in.Nodes, n)
	}
	// considered are the pods and Services whose resources this
	// recompute decides: each either produces one or has none.
	considered := map[discovery.Key]bool{}
	withServices := map[string]bool{}
	for ns, pods := range s.pods {
		whole := sc.all || sc.namespaces[ns]
		for name, p := range pods {
			k := discovery.Key{Kind: discovery.KindPod, Namespace: ns, Name: name}
			if whole || sc.pods[k] {
				in.Pods = append(in.Pods, p)
				considered[k] = true
				withServices[ns] = true
			}
		}
	}
	for k := range sc.pods {
		considered[k] = true // removed pods too
	}
	// A pod's services map needs every Service of its namespace.
	for ns := range withServices {
		for _, svc := range s.services[ns] {
			in.Services = append(in.Services, svc)
		}
	}
	for ns, svcs := range s.services {
		for name := range svcs {
			if sc.all || sc.namespaces[ns] {
				considered[discovery.Key{Kind: discovery.KindService, Namespace: ns, Name: name}] = true
			}
		}
	}
	for k := range sc.services {
		considered[k] = true
	}
	if len(considered) == 0 {
		return
	}

	out := ambient.Build(s.cfg, in)
	update := map[string]gcptypes.Resource{}
	produced := map[discovery.Key]bool{}
	for _, a := range out.Addresses {
		k := addressKey(a)
		if !considered[k] {
			continue // a Service passed only for its pods' services maps
		}
		produced[k] = true
		name := ambient.ResourceName(a)
		s.emitted[k] = name
		if !proto.Equal(s.served[name], a) {
			s.served[name] = a
			update[name] = a
		}
	}
	var remove []string
	for k := range considered {
		if name, ok := s.emitted[k]; ok && !produced[k] {
			delete(s.emitted, k)
			delete(s.served, name)
			remove = append(remove, name)
		}
	}
	if len(update) == 0 && len(remove) == 0 {
		return
	}
	if err := s.cache.UpdateResources(update, remove); err != nil {
		s.log.Error("updating the cache", zap.Error(err))
	}
	updates.Add(float64(len(update)))
	removals.Add(float64(len(remove)))
}

// addressKey is the pod or Service an address was built from.
func addressKey(a *workloadpb.Address) discovery.Key {
	if wl := a.GetWorkload(); wl != nil {
		return discovery.Key{Kind: discovery.KindPod, Namespace: wl.GetNamespace(), Name: wl.GetName()}
	}
	svc := a.GetService()
	name, _, _ := strings.Cut(svc.GetHostname(), ".")
	return discovery.Key{Kind: discovery.KindService, Namespace: svc.GetNamespace(), Name: name}
}
