package ambient

import (
	"cmp"
	"fmt"
	"iter"
	"maps"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/peerd-mesh/peerd/internal/federation"
	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
	federationpb "github.com/peerd-mesh/peerd/proto/peerd/federation/v1"
)

// Extension mode (docs/extension-mode.md): the local cluster comes from
// istiod's own ztunnel stream instead of peerd's mapping, and the linked
// mesh is laid over it. The model's output splits in two by name: the
// mesh's additions, served in both modes, and the local mapping, which in
// extension mode only says what the mesh amends in istiod's resources.

// IsMeshAddition reports whether a model output is something the linked
// mesh adds (a global service, a link's gateway Service, a split-horizon or
// gateway workload) rather than peerd's mapping of a local object. The names
// are built in names.go so that these never collide with istiod's.
func IsMeshAddition(cfg Config, a *workloadpb.Address) bool {
	cfg = cfg.withDefaults()
	if w := a.GetWorkload(); w != nil {
		return strings.HasPrefix(w.GetUid(), cfg.ClusterID+"/peerd/")
	}
	return strings.HasSuffix(a.GetService().GetHostname(), "."+cfg.GlobalSuffix)
}

// Amendments are what the linked mesh changes in the local source's
// resources, derived from the model.
type Amendments struct {
	// Global maps the services-map key of each local global Service
	// ("<ns>/<name>.<ns>.svc.<domain suffix>") to its global service's key
	// ("<ns>/<name>.<ns>.<global suffix>").
	Global map[string]string
	// GlobalOnly holds the model's plain Service of each local global-only
	// Service, by resource name: its SANs include the remote endpoints'.
	GlobalOnly map[string]*workloadpb.Service
}

// exportKeys are the services-map keys of a local Service's plain and
// global names.
func exportKeys(cfg Config, namespace, name string) (plain, global string) {
	return namespacedHostname(namespace, serviceHostname(name, namespace, cfg.DomainSuffix)),
		namespacedHostname(namespace, globalHostname(name, namespace, cfg.GlobalSuffix))
}

// AmendAddress returns a with what the mesh adds to it, or a itself when
// nothing is added, and the conflicts (a global key a already lists with
// other ports), each naming the resource and field. a is never modified.
//
//   - A workload whose services map lists a local global Service also
//     joins its global service, with the same ports: the model's rule
//     (globalKey) applied to whatever the local source's workload lists,
//     so a WorkloadEntry of a global Service joins too.
//   - A global-only Service gains the SANs of its remote endpoints (ztunnel's
//     inner HBONE hop accepts only those) and, when it has no
//     load_balancing, the model's, which keeps traffic on the local network
//     while it has healthy endpoints.
func AmendAddress(a *workloadpb.Address, am Amendments) (*workloadpb.Address, []string) {
	switch {
	case a.GetWorkload() != nil:
		w, conflicts := amendWorkload(a.GetWorkload(), am.Global)
		if w == a.GetWorkload() {
			return a, conflicts
		}
		return &workloadpb.Address{Type: &workloadpb.Address_Workload{Workload: w}}, conflicts
	case a.GetService() != nil:
		s := a.GetService()
		own := am.GlobalOnly[namespacedHostname(s.GetNamespace(), s.GetHostname())]
		if own == nil {
			return a, nil
		}
		if out := amendService(s, own); out != s {
			return &workloadpb.Address{Type: &workloadpb.Address_Service{Service: out}}, nil
		}
	}
	return a, nil
}

func amendWorkload(w *workloadpb.Workload, global map[string]string) (*workloadpb.Workload, []string) {
	var add map[string]*workloadpb.PortList
	var conflicts []string
	// Sorted, so conflicts come out in a stable order.
	for _, key := range slices.Sorted(maps.Keys(w.GetServices())) {
		gk, ok := global[key]
		if !ok {
			continue
		}
		ports := w.GetServices()[key]
		if have, ok := w.GetServices()[gk]; ok {
			if !proto.Equal(have, ports) {
				conflicts = append(conflicts, fmt.Sprintf("workload %s: services[%q]: already listed with ports other than %q's; the local source's ports are kept", w.GetUid(), gk, key))
			}
			continue
		}
		if add == nil {
			add = map[string]*workloadpb.PortList{}
		}
		add[gk] = ports
	}
	if len(add) == 0 {
		return w, conflicts
	}
	out := proto.CloneOf(w)
	for k, ports := range add {
		out.Services[k] = proto.CloneOf(ports)
	}
	return out, conflicts
}

func amendService(s, own *workloadpb.Service) *workloadpb.Service {
	var extra []string
	for _, san := range own.GetSubjectAltNames() {
		if !slices.Contains(s.GetSubjectAltNames(), san) && !slices.Contains(extra, san) {
			extra = append(extra, san)
		}
	}
	takeLB := s.GetLoadBalancing() == nil && own.GetLoadBalancing() != nil
	if len(extra) == 0 && !takeLB {
		return s
	}
	out := proto.CloneOf(s)
	if len(extra) > 0 {
		// The local source's SANs keep their order; the remote ones follow, sorted.
		slices.Sort(extra)
		out.SubjectAltNames = append(out.SubjectAltNames, extra...)
	}
	if takeLB {
		out.LoadBalancing = proto.CloneOf(own.GetLoadBalancing())
	}
	return out
}

// Merger lays the model's mesh over a local source's resources (istiod's,
// relayed) and says what to serve. It holds both sides and recomputes only
// the names a batch touches: a relayed change costs one name, a Service
// becoming global or not the workloads that list it.
//
// Per name it serves the local source's resource amended (AmendAddress),
// else the model's mesh addition, else nothing: the model's own mapping of
// local objects is never served, only read for the amendments. A name both
// the local source and the mesh produce is a conflict; the local source's
// version is served.
//
// Like Model it does no I/O and is not safe for concurrent use.
type Merger struct {
	cfg   Config
	local map[string]*workloadpb.Address
	added map[string]*workloadpb.Address
	// ownServices: the model's plain Services, for global-only amendments.
	ownServices map[string]*workloadpb.Service
	// exportScope: each local global Service's scope, by its plain key.
	exportScope map[string]federationpb.Scope
	am          Amendments
	// listing: the local workloads by the services-map keys they list.
	listing map[string]map[string]struct{}
	// conflicts by resource name.
	conflicts map[string][]string
	// modelExports: the model's exports by plain key. Their Capacity and
	// SANs count the model's own mapping; exported replaces those with
	// the served workloads' (ServedSummary), and is what was last handed
	// out.
	modelExports map[string]*federationpb.FederatedService
	exported     map[string]*federationpb.FederatedService
}

// NewMerger returns an empty Merger for the cluster cfg describes (the
// Config the model was built with).
func NewMerger(cfg Config) *Merger {
	return &Merger{
		cfg:         cfg.withDefaults(),
		local:       map[string]*workloadpb.Address{},
		added:       map[string]*workloadpb.Address{},
		ownServices: map[string]*workloadpb.Service{},
		exportScope: map[string]federationpb.Scope{},
		am:          Amendments{Global: map[string]string{}, GlobalOnly: map[string]*workloadpb.Service{}},
		listing:     map[string]map[string]struct{}{},
		conflicts:   map[string][]string{},

		modelExports: map[string]*federationpb.FederatedService{},
		exported:     map[string]*federationpb.FederatedService{},
	}
}

// MergeDelta is what to change in the served cache: upserts sorted by
// resource name, deletes sorted (some may not be served; deleting those is
// a no-op for the cache).
type MergeDelta struct {
	Upserts []*workloadpb.Address
	Deletes []string
	// ConflictsChanged: Conflicts returns something else than before.
	ConflictsChanged bool
	// Exports are the exports that are new or changed, sorted by resource
	// name; Unexports the resource names of those withdrawn, sorted. Like
	// the model's, with Capacity and SANs counted over what is served.
	Exports   []*federationpb.FederatedService
	Unexports []string
}

// Apply folds one batch into the merge: local are the local source's
// changes by resource name (nil: removed), model the model's Delta.
func (m *Merger) Apply(local map[string]*workloadpb.Address, model Delta) MergeDelta {
	touched := map[string]struct{}{}
	// exports: the plain keys whose export to recompute.
	exports := map[string]struct{}{}
	touchListing := func(key string) {
		touched[key] = struct{}{} // the plain Service itself
		for name := range m.listing[key] {
			touched[name] = struct{}{}
		}
	}
	for _, e := range model.Exports {
		plain, global := exportKeys(m.cfg, e.GetNamespace(), e.GetName())
		m.modelExports[plain] = e
		exports[plain] = struct{}{}
		if old, ok := m.exportScope[plain]; ok && old == e.GetScope() {
			continue
		}
		m.exportScope[plain] = e.GetScope()
		m.am.Global[plain] = global
		m.syncGlobalOnly(plain)
		touchListing(plain)
	}
	for _, name := range model.Unexports {
		ns, n, _ := strings.Cut(name, "/")
		plain, _ := exportKeys(m.cfg, ns, n)
		delete(m.modelExports, plain)
		exports[plain] = struct{}{}
		delete(m.exportScope, plain)
		delete(m.am.Global, plain)
		m.syncGlobalOnly(plain)
		touchListing(plain)
	}
	for _, a := range model.Upserts {
		name := ResourceName(a)
		switch {
		case IsMeshAddition(m.cfg, a):
			m.added[name] = a
		case a.GetService() != nil:
			m.ownServices[name] = a.GetService()
			m.syncGlobalOnly(name)
		default:
			continue // a local workload: the local source has its own
		}
		touched[name] = struct{}{}
	}
	for _, name := range model.Deletes {
		_, wasAdded := m.added[name]
		_, wasService := m.ownServices[name]
		if !wasAdded && !wasService {
			continue
		}
		delete(m.added, name)
		delete(m.ownServices, name)
		m.syncGlobalOnly(name)
		touched[name] = struct{}{}
	}
	for name, a := range local {
		// A served workload joining, leaving or changing may change the
		// summary of each service it lists, before or after.
		for key := range m.local[name].GetWorkload().GetServices() {
			exports[key] = struct{}{}
		}
		for key := range a.GetWorkload().GetServices() {
			exports[key] = struct{}{}
		}
		m.unlist(name, m.local[name])
		if a == nil {
			delete(m.local, name)
		} else {
			m.local[name] = a
			m.list(name, a)
		}
		touched[name] = struct{}{}
	}

	var out MergeDelta
	for _, name := range slices.Sorted(maps.Keys(touched)) {
		served, conflicts := m.serve(name)
		if !slices.Equal(m.conflicts[name], conflicts) {
			out.ConflictsChanged = true
			if len(conflicts) == 0 {
				delete(m.conflicts, name)
			} else {
				m.conflicts[name] = conflicts
			}
		}
		if served == nil {
			out.Deletes = append(out.Deletes, name)
		} else {
			out.Upserts = append(out.Upserts, served)
		}
	}
	for key := range exports {
		m.recomputeExport(key, &out)
	}
	slices.SortFunc(out.Exports, func(a, b *federationpb.FederatedService) int {
		return cmp.Compare(federation.ResourceName(a.GetNamespace(), a.GetName()), federation.ResourceName(b.GetNamespace(), b.GetName()))
	})
	slices.Sort(out.Unexports)
	return out
}

// recomputeExport refreshes the export of the local Service whose plain
// key is key (if it has one) and records a change in out.
func (m *Merger) recomputeExport(key string, out *MergeDelta) {
	base, old := m.modelExports[key], m.exported[key]
	if base == nil {
		if old != nil {
			delete(m.exported, key)
			out.Unexports = append(out.Unexports, federation.ResourceName(old.GetNamespace(), old.GetName()))
		}
		return
	}
	e := proto.CloneOf(base)
	e.Capacity, e.SubjectAltNames = ServedSummary(m.cfg.TrustDomain, m.servedWorkloads(key))
	if proto.Equal(old, e) {
		return
	}
	m.exported[key] = e
	out.Exports = append(out.Exports, e)
}

// servedWorkloads are the local source's workloads that list key.
func (m *Merger) servedWorkloads(key string) iter.Seq[*workloadpb.Workload] {
	return func(yield func(*workloadpb.Workload) bool) {
		for name := range m.listing[key] {
			if !yield(m.local[name].GetWorkload()) {
				return
			}
		}
	}
}

// syncGlobalOnly keeps am.GlobalOnly[key] the model's Service of a local
// global-only Service.
func (m *Merger) syncGlobalOnly(key string) {
	if s := m.ownServices[key]; s != nil && m.exportScope[key] == federationpb.Scope_GLOBAL_ONLY {
		m.am.GlobalOnly[key] = s
	} else {
		delete(m.am.GlobalOnly, key)
	}
}

// serve is what name is served as, and its conflicts.
func (m *Merger) serve(name string) (*workloadpb.Address, []string) {
	l, a := m.local[name], m.added[name]
	if l == nil {
		return a, nil
	}
	out, conflicts := AmendAddress(l, m.am)
	if a != nil {
		conflicts = append(conflicts, fmt.Sprintf("%s: produced by the local source and by the linked mesh; the local source's version is served", name))
	}
	return out, conflicts
}

func (m *Merger) list(name string, a *workloadpb.Address) {
	for key := range a.GetWorkload().GetServices() {
		set := m.listing[key]
		if set == nil {
			set = map[string]struct{}{}
			m.listing[key] = set
		}
		set[name] = struct{}{}
	}
}

func (m *Merger) unlist(name string, a *workloadpb.Address) {
	for key := range a.GetWorkload().GetServices() {
		if set := m.listing[key]; set != nil {
			delete(set, name)
			if len(set) == 0 {
				delete(m.listing, key)
			}
		}
	}
}

// Conflicts are the current conflicts, sorted.
func (m *Merger) Conflicts() []string {
	var out []string
	for _, name := range slices.SortedFunc(maps.Keys(m.conflicts), cmp.Compare) {
		out = append(out, m.conflicts[name]...)
	}
	return out
}

// Served returns every name the merge serves now, sorted, with its
// resource: what a wildcard client holds.
func (m *Merger) Served() []*workloadpb.Address {
	names := map[string]struct{}{}
	for name := range m.local {
		names[name] = struct{}{}
	}
	for name := range m.added {
		names[name] = struct{}{}
	}
	out := make([]*workloadpb.Address, 0, len(names))
	for _, name := range slices.Sorted(maps.Keys(names)) {
		a, _ := m.serve(name)
		out = append(out, a)
	}
	return out
}
