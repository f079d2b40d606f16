package ambient

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/peerd-mesh/peerd/internal/federation"
	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
	federationpb "github.com/peerd-mesh/peerd/proto/peerd/federation/v1"
)

// The kinds of input objects, as ObjectRef.Kind spells them.
const (
	KindNamespace     = "namespace"
	KindNode          = "node"
	KindPod           = "pod"
	KindService       = "service"
	KindEndpointSlice = "endpointslice"
	KindGateway       = "gateway"
	// KindImportedService is a service a linked cluster exports
	// (federation.ImportedService); its ObjectRef carries the cluster.
	KindImportedService = "importedservice"
)

// Change is one input object that changed: Object is its new version, or nil
// when it was deleted. Ref names the object (Namespace empty for the
// cluster-scoped kinds); for a non-nil Object it must match the object.
type Change struct {
	Ref    ObjectRef
	Object runtime.Object
}

// Delta is what one Apply changed in the model's output.
type Delta struct {
	// Upserts are the addresses that are new or whose content changed,
	// sorted by resource name.
	Upserts []*workloadpb.Address
	// Deletes are resource names that no longer exist, sorted.
	Deletes []string
	// WarningsChanged: Warnings returns something else than before.
	WarningsChanged bool
	// Exports are the exported services that are new or whose content
	// changed, sorted by resource name ("namespace/name").
	Exports []*federationpb.FederatedService
	// Unexports are the resource names of services no longer exported, sorted.
	Unexports []string
	// VIPsChanged: VIPs returns something else than before (persist it).
	VIPsChanged bool
}

// Model is the incremental form of Build: it holds one cluster's input
// objects, the linked clusters' exports, and the resources mapped from them,
// and Apply recomputes only the resources that depend on the objects that
// changed:
//
//	Pod             -> its workload; the exports of the Services it is an
//	                   endpoint of, when its membership, status or identity
//	                   changes
//	Service         -> that Service and its export; when what workloads join
//	                   with changes (existence, hostname, selector, ports,
//	                   global or not), the workloads of the pods its old or
//	                   new selector picks, of the pods its EndpointSlices
//	                   name, and of its slices' endpoints; its global
//	                   service when it is global or imported; when
//	                   global-only comes or goes, its split-horizon workloads
//	EndpointSlice   -> its endpoint workloads, and the workloads of the pods
//	                   its old or new version names (then, as for a Pod, the
//	                   exports their changes touch)
//	Namespace       -> its Services and their exports when its annotations or
//	                   its solo.io/service-scope label change; everything
//	                   when it is the system namespace and its network label
//	                   changes
//	Node            -> the workloads of the pods on it when its locality
//	                   labels or its existence change
//	Gateway         -> istio-remote ones (links): the gateway workloads (and
//	                   gateway Service) of that link; when the link in force
//	                   for its cluster changes, every split-horizon workload
//	                   of the cluster, the global services it imports and
//	                   their global-only plain Services. istio-eastwest
//	                   ones: every export, when the cluster's locality
//	                   they give changes. Other Gateways: nothing
//	ImportedService -> its split-horizon workload (when its ports, capacity
//	                   or locality change), its global service and, when
//	                   the local Service is global-only, the plain Service
//	                   (when its ports, SANs, traffic distribution or
//	                   creation time change); both when it comes or goes
//	export          -> (a changed local export's SANs) its global service
//
// A change that leaves every field the mapping reads as it was (a node
// heartbeat, say) recomputes nothing beyond those comparisons; a remote
// change costs O(the clusters exporting that service), a link change
// O(the services imported from its cluster).
//
// Model is not safe for concurrent use; it does no I/O and keeps no clock.
// The input objects are read, never modified, and must not be modified by
// the caller after they are handed to Apply.
type Model struct {
	cfg Config
	idx *index

	// published holds, per resource name, every object's version of that
	// resource, sorted by owner: the first is served. Two owners of one
	// name is a warning (duplicates).
	published map[string][]produced
	// producedBy lists the resource names each object produces.
	producedBy map[ObjectRef][]string
	// warnings by the object whose mapping raised them.
	warnings map[ObjectRef][]Warning
	// duplicates: the warnings about each resource name with several owners.
	duplicates map[string][]Warning

	peering
}

// peering is the model's state about linked clusters and global services.
type peering struct {
	// imports by Service key, then exporting cluster; importsByCluster
	// lists each cluster's keys.
	imports          map[objectKey]map[string]*federation.ImportedService
	importsByCluster map[string]map[objectKey]struct{}
	// links: every istio-remote Gateway, parsed. linksByCluster: the valid
	// ones that link another cluster; activeLinks: the one in force per
	// cluster (the first by namespace and name).
	links map[objectKey]linkGateway
	// eastWest: the local istio-eastwest Gateways' localities (made on
	// first use).
	eastWest       map[objectKey]Locality
	linksByCluster map[string]map[objectKey]struct{}
	activeLinks    map[string]activeLink
	// exports of local global Services.
	exports map[objectKey]*federationpb.FederatedService
	// endpoints: the published local workloads (Pods, EndpointSlice
	// endpoints) of global Services by the plain Service key
	// ("ns/hostname") they list, then uid: what an export counts, without
	// scanning the cluster.
	endpoints map[string]map[string]*workloadpb.Workload
	vips      *vipAllocator
	// exported and unexported collect one Apply's export changes.
	exported   []*federationpb.FederatedService
	unexported []string
}

// activeLink is the link in force for a cluster, with the network_gateway
// its split-horizon workloads share.
type activeLink struct {
	federation.Link
	gateway *workloadpb.GatewayAddress
}

// linkGateway is an istio-remote Gateway read as a link, or why it is not one.
type linkGateway struct {
	link federation.Link
	err  error
}

// ownerExport keys the warnings raised while exporting a Service (the
// Service's own mapping keeps its warnings under the Service).
const ownerExport = "export"

// KindCluster names a linked cluster in warnings (ObjectRef.Name is the
// cluster), e.g. about services it exports that no link lets in.
const KindCluster = "cluster"

// produced is one object's version of one resource.
type produced struct {
	owner ObjectRef
	addr  *workloadpb.Address
}

// NewModel returns an empty model for one cluster.
func NewModel(cfg Config) *Model {
	cfg = cfg.withDefaults()
	m := &Model{
		cfg:        cfg,
		idx:        newIndex(),
		published:  map[string][]produced{},
		producedBy: map[ObjectRef][]string{},
		warnings:   map[ObjectRef][]Warning{},
		duplicates: map[string][]Warning{},
		peering: peering{
			imports:          map[objectKey]map[string]*federation.ImportedService{},
			importsByCluster: map[string]map[objectKey]struct{}{},
			links:            map[objectKey]linkGateway{},
			linksByCluster:   map[string]map[objectKey]struct{}{},
			activeLinks:      map[string]activeLink{},
			exports:          map[objectKey]*federationpb.FederatedService{},
			endpoints:        map[string]map[string]*workloadpb.Workload{},
		},
	}
	var w warnings
	m.vips = newVIPAllocator(cfg.VIPv4Range, cfg.VIPv6Range, cfg.VIPs, &w)
	if len(w.list) > 0 {
		m.warnings[ObjectRef{Kind: "config", Name: "vips"}] = w.sorted()
	}
	m.idx.network = localNetwork(cfg, nil)
	return m
}

// dirty is what one Apply must recompute and which names it touched.
type dirty struct {
	all bool
	// allPods: every live pod is in pods already (a first load, say).
	allPods  bool
	services map[objectKey]struct{}
	pods     map[objectKey]struct{}
	slices   map[objectKey]struct{}
	// Peering: link clusters whose link in force may have changed, link
	// Gateways to re-produce, exports, split-horizon workloads (by the
	// imported service's ref) and global services to recompute. Nil until
	// marked (see mark).
	linkClusters map[string]struct{}
	gateways     map[objectKey]struct{}
	exports      map[objectKey]struct{}
	splits       map[ObjectRef]struct{}
	globals      map[objectKey]struct{}
	// names touched, each with whether it was served before this Apply.
	names           map[string]bool
	warningsChanged bool
	vipsChanged     bool
}

func newDirty() *dirty {
	return &dirty{
		services: map[objectKey]struct{}{},
		pods:     map[objectKey]struct{}{},
		slices:   map[objectKey]struct{}{},
		names:    map[string]bool{},
	}
}

// mark adds k to the set *set, making the set on first use: most Applys
// touch no peering output, and five empty maps per Apply are measurable.
func mark[K comparable](set *map[K]struct{}, k K) {
	if *set == nil {
		*set = map[K]struct{}{}
	}
	(*set)[k] = struct{}{}
}

// Apply folds changes into the model and returns what changed in its
// output. Changes are applied in order; a later change of the same object
// wins.
func (m *Model) Apply(changes []Change) Delta {
	d := newDirty()
	for _, ch := range changes {
		m.applyInput(ch, d)
	}
	if d.all {
		for k := range m.idx.k8sServices {
			d.services[k] = struct{}{}
		}
		for k := range m.idx.pods {
			d.pods[k] = struct{}{}
		}
		for k := range m.idx.slices {
			d.slices[k] = struct{}{}
		}
		// Global services carry their VIPs on the local network; those of
		// local Services are marked by their Service.
		for k := range m.imports {
			mark(&d.globals, k)
		}
	}
	d.allPods = d.all || m.coversAllPods(d.pods)
	// Links first: the link in force for a cluster decides which imports
	// count, for the Services (global-only) and everything after them.
	for c := range d.linkClusters {
		m.recomputeLinkCluster(c, d)
	}
	for k := range d.gateways {
		m.recomputeGateway(k, d)
	}
	// Services next: workloads join with the mapped Services, and a
	// Service whose join changed adds its dependents to the sets below.
	for k := range d.services {
		m.recomputeService(k, d)
	}
	for k := range d.pods {
		m.recomputePod(k, d)
	}
	for k := range d.slices {
		m.recomputeSlice(k, d)
	}
	// Exports read the endpoints the workloads above left in the index;
	// global services read the exports.
	for k := range d.exports {
		m.recomputeExport(k, d)
	}
	for ref := range d.splits {
		m.recomputeSplitHorizon(ref, d)
	}
	// VIPs are handed out in hostname order, so one batch allocates the
	// same way whatever order its changes came in.
	if len(d.globals) > 0 {
		globals := slices.SortedFunc(maps.Keys(d.globals), func(a, b objectKey) int {
			return cmp.Compare(globalHostname(a.name, a.namespace, ""), globalHostname(b.name, b.namespace, ""))
		})
		for _, k := range globals {
			m.recomputeGlobal(k, d)
		}
	}
	return m.flush(d)
}

// applyInput records one changed object and marks what depends on it.
func (m *Model) applyInput(ch Change, d *dirty) {
	key := objectKey{namespace: ch.Ref.Namespace, name: ch.Ref.Name}
	x := m.idx
	switch ch.Ref.Kind {
	case KindNamespace:
		ns, _ := ch.Object.(*corev1.Namespace)
		old := x.namespaces[ch.Ref.Name]
		if ns == nil {
			delete(x.namespaces, ch.Ref.Name)
		} else {
			x.namespaces[ch.Ref.Name] = ns
		}
		if ch.Ref.Name == m.cfg.SystemNamespace {
			if network := localNetwork(m.cfg, ns); network != x.network {
				x.network = network
				d.all = true
			}
		}
		if !maps.Equal(namespaceAnnotations(old), namespaceAnnotations(ns)) || namespaceScopeLabel(old) != namespaceScopeLabel(ns) {
			for k := range x.servicesByNamespace[ch.Ref.Name] {
				d.services[k] = struct{}{}
				mark(&d.exports, k)
			}
		}
	case KindNode:
		n, _ := ch.Object.(*corev1.Node)
		old := x.nodes[ch.Ref.Name]
		if n == nil {
			delete(x.nodes, ch.Ref.Name)
		} else {
			x.nodes[ch.Ref.Name] = n
		}
		if (old == nil) != (n == nil) || !sameLocality(old, n) {
			for k := range x.podsByNode[ch.Ref.Name] {
				d.pods[k] = struct{}{}
			}
		}
	case KindPod:
		p, _ := ch.Object.(*corev1.Pod)
		x.setPod(key, p)
		d.pods[key] = struct{}{}
	case KindService:
		if s, _ := ch.Object.(*corev1.Service); s != nil {
			x.k8sServices[key] = s
		} else {
			delete(x.k8sServices, key)
		}
		d.services[key] = struct{}{}
		mark(&d.exports, key)
	case KindEndpointSlice:
		es, _ := ch.Object.(*discoveryv1.EndpointSlice)
		if old := x.slices[key]; old != nil {
			markPods(slicePodRefs(old), d)
		}
		if es != nil {
			markPods(slicePodRefs(es), d)
		}
		x.setSlice(key, es)
		d.slices[key] = struct{}{}
	case KindGateway:
		gw, _ := ch.Object.(*gatewayv1.Gateway)
		if gw != nil {
			x.gateways[key] = gw
		} else {
			delete(x.gateways, key)
		}
		m.applyGateway(key, gw, d)
	case KindImportedService:
		is, _ := ch.Object.(*federation.ImportedService)
		m.applyImport(ch.Ref, is, d)
	}
}

// coversAllPods reports whether marked holds every live pod.
func (m *Model) coversAllPods(marked map[objectKey]struct{}) bool {
	if len(marked) < len(m.idx.pods) {
		return false
	}
	for k := range m.idx.pods {
		if _, ok := marked[k]; !ok {
			return false
		}
	}
	return true
}

func markPods(refs []podRef, d *dirty) {
	for _, ref := range refs {
		d.pods[objectKey{namespace: ref.namespace, name: ref.name}] = struct{}{}
	}
}

func namespaceAnnotations(ns *corev1.Namespace) map[string]string {
	if ns == nil {
		return nil
	}
	return ns.Annotations
}

func sameLocality(a, b *corev1.Node) bool {
	if a == nil || b == nil {
		return a == b
	}
	la, lb := nodeLocality(a), nodeLocality(b)
	if la == nil || lb == nil {
		return la == lb
	}
	return la.Region == lb.Region && la.Zone == lb.Zone && la.Subzone == lb.Subzone
}

func (m *Model) recomputeService(key objectKey, d *dirty) {
	var w warnings
	var info *serviceInfo
	if s := m.idx.k8sServices[key]; s != nil {
		info = newServiceInfo(serviceInput{cfg: m.cfg, network: m.idx.network, svc: s, namespace: m.idx.namespaces[key.namespace]}, &w)
	}
	old := m.idx.services[key]
	if !sameJoin(old, info) {
		m.markServiceDependents(key, old, info, d)
	}
	m.markPeeringDependents(key, old, info, d)
	m.idx.setService(key, info)
	var out []*workloadpb.Address
	if info != nil {
		if info.scope == scopeGlobalOnly {
			// ztunnel's inner HBONE hop to a remote endpoint of the plain
			// name accepts only the Service's SANs.
			info.svc.SubjectAltNames = remoteSANs(m.activeImports(key))
		}
		out = []*workloadpb.Address{{Type: &workloadpb.Address_Service{Service: info.svc}}}
	}
	m.produce(objectRef(KindService, key.namespace, key.name), out, w.list, d)
}

// newServiceInfo maps a Service and keeps what workloads join with; nil
// when the Service is not published.
func newServiceInfo(in serviceInput, w *warnings) *serviceInfo {
	sc := serviceScope(in.svc, in.namespace, w)
	if sc == scopeGlobalOnly {
		in.defaultDistribution = distributionNetwork
	}
	svc := serviceResource(in, w)
	if svc == nil {
		return nil
	}
	info := &serviceInfo{svc: svc, selector: in.svc.Spec.Selector, portNames: make(map[uint32]servicePortName, len(in.svc.Spec.Ports)),
		scope: sc}
	for _, p := range in.svc.Spec.Ports {
		info.portNames[uint32(p.Port)] = servicePortName{portName: p.Name, targetPortName: p.TargetPort.StrVal}
	}
	return info
}

// sameJoin reports whether two versions of a Service look the same to the
// workloads that join with it: existence, hostname, selector, ports, and
// whether its endpoints also join its global service.
func sameJoin(a, b *serviceInfo) bool {
	if a == nil || b == nil {
		return a == b
	}
	if a.svc.Hostname != b.svc.Hostname || !maps.Equal(a.selector, b.selector) || !maps.Equal(a.portNames, b.portNames) ||
		a.scope.global() != b.scope.global() {
		return false
	}
	return slices.EqualFunc(a.svc.Ports, b.svc.Ports, func(x, y *workloadpb.Port) bool {
		return x.ServicePort == y.ServicePort && x.TargetPort == y.TargetPort
	})
}

// markServiceDependents marks every workload that joins with the Service at
// key: pods its old or new selector picks, pods its slices name, and its
// slices' own endpoint workloads.
func (m *Model) markServiceDependents(key objectKey, old, info *serviceInfo, d *dirty) {
	var oldSel, newSel map[string]string
	if old != nil {
		oldSel = old.selector
	}
	if info != nil {
		newSel = info.selector
	}
	// When every pod is already marked (a first load, a network change),
	// scanning them again would only cost time.
	if (len(oldSel) > 0 || len(newSel) > 0) && !d.allPods {
		for pk := range m.idx.podsByNamespace[key.namespace] {
			if _, done := d.pods[pk]; done {
				continue
			}
			labels := m.idx.pods[pk].Labels
			if selects(oldSel, labels) || selects(newSel, labels) {
				d.pods[pk] = struct{}{}
			}
		}
	}
	for sk := range m.idx.slicesByService[key] {
		d.slices[sk] = struct{}{}
		markPods(slicePodRefs(m.idx.slices[sk]), d)
	}
}

func (m *Model) recomputePod(key objectKey, d *dirty) {
	var w warnings
	var out []*workloadpb.Address
	if p := m.idx.pods[key]; p != nil {
		if wl := podWorkload(podInput{cfg: m.cfg, idx: m.idx, pod: p}, &w); wl != nil {
			out = []*workloadpb.Address{{Type: &workloadpb.Address_Workload{Workload: wl}}}
		}
	}
	m.produce(objectRef(KindPod, key.namespace, key.name), out, w.list, d)
}

func (m *Model) recomputeSlice(key objectKey, d *dirty) {
	var w warnings
	var out []*workloadpb.Address
	if es := m.idx.slices[key]; es != nil {
		for _, wl := range endpointSliceWorkloads(endpointSliceInput{cfg: m.cfg, idx: m.idx, slice: es}, &w) {
			out = append(out, &workloadpb.Address{Type: &workloadpb.Address_Workload{Workload: wl}})
		}
	}
	m.produce(objectRef(KindEndpointSlice, key.namespace, key.name), out, w.list, d)
}

// produce makes addrs the complete output of owner, and ws its warnings.
func (m *Model) produce(owner ObjectRef, addrs []*workloadpb.Address, ws []Warning, d *dirty) {
	m.setWarnings(owner, ws, d)
	// Local endpoint workloads are what exports count.
	endpoints := owner.Kind == KindPod || owner.Kind == KindEndpointSlice
	old := m.producedBy[owner]
	// The per-object functions never repeat a name within one object (an
	// EndpointSlice drops a repeated address with a warning).
	names := make([]string, 0, len(addrs))
	for _, a := range addrs {
		name := ResourceName(a)
		names = append(names, name)
		prev, ok := findProduced(m.published[name], owner)
		if ok && proto.Equal(prev.addr, a) {
			continue // recomputed to the same content: nothing to push
		}
		if endpoints {
			m.indexEndpoint(prev.addr.GetWorkload(), a.GetWorkload(), d)
		}
		m.touch(name, d)
		m.published[name] = setProduced(m.published[name], produced{owner: owner, addr: a})
	}
	// An EndpointSlice produces up to 1,000 names: look them up in a set
	// rather than scan the list once per old name.
	stillProduced := func(name string) bool { return slices.Contains(names, name) }
	if len(old) > 1 && len(names) > 8 {
		set := make(map[string]struct{}, len(names))
		for _, n := range names {
			set[n] = struct{}{}
		}
		stillProduced = func(name string) bool { _, ok := set[name]; return ok }
	}
	for _, name := range old {
		if stillProduced(name) {
			continue
		}
		if endpoints {
			if prev, ok := findProduced(m.published[name], owner); ok {
				m.indexEndpoint(prev.addr.GetWorkload(), nil, d)
			}
		}
		m.touch(name, d)
		if rest := dropProduced(m.published[name], owner); len(rest) == 0 {
			delete(m.published, name)
		} else {
			m.published[name] = rest
		}
	}
	if len(names) == 0 {
		delete(m.producedBy, owner)
	} else {
		m.producedBy[owner] = names
	}
}

// setWarnings makes ws the warnings of owner.
func (m *Model) setWarnings(owner ObjectRef, ws []Warning, d *dirty) {
	if !slices.Equal(m.warnings[owner], ws) {
		d.warningsChanged = true
	}
	if len(ws) == 0 {
		delete(m.warnings, owner)
	} else {
		m.warnings[owner] = ws
	}
}

// touch notes that name may change in this Apply, remembering whether it
// was served before.
func (m *Model) touch(name string, d *dirty) {
	if _, seen := d.names[name]; !seen {
		d.names[name] = len(m.published[name]) > 0
	}
}

func compareOwners(a, b ObjectRef) int {
	return cmp.Or(cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Cluster, b.Cluster), cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
}

func searchProduced(list []produced, owner ObjectRef) (int, bool) {
	return slices.BinarySearchFunc(list, owner, func(e produced, o ObjectRef) int { return compareOwners(e.owner, o) })
}

func findProduced(list []produced, owner ObjectRef) (produced, bool) {
	if i, ok := searchProduced(list, owner); ok {
		return list[i], true
	}
	return produced{}, false
}

// setProduced inserts or replaces p in list, keeping it sorted by owner.
func setProduced(list []produced, p produced) []produced {
	i, found := searchProduced(list, p.owner)
	if found {
		list[i] = p
		return list
	}
	return slices.Insert(list, i, p)
}

func dropProduced(list []produced, owner ObjectRef) []produced {
	return slices.DeleteFunc(list, func(e produced) bool { return e.owner == owner })
}

// flush turns the touched names into a Delta and refreshes the duplicate
// warnings of those names.
func (m *Model) flush(d *dirty) Delta {
	names := make([]string, 0, len(d.names))
	for name := range d.names {
		names = append(names, name)
	}
	slices.Sort(names)
	var delta Delta
	for _, name := range names {
		list := m.published[name]
		if len(list) <= 1 {
			if _, had := m.duplicates[name]; had {
				delete(m.duplicates, name)
				d.warningsChanged = true
			}
		}
		if len(list) == 0 {
			if d.names[name] {
				delta.Deletes = append(delta.Deletes, name)
			}
			continue
		}
		delta.Upserts = append(delta.Upserts, list[0].addr)
		if len(list) == 1 {
			continue
		}
		d.warningsChanged = true
		ws := make([]Warning, 0, len(list)-1)
		for _, loser := range list[1:] {
			ws = append(ws, Warning{Object: loser.owner, Message: fmt.Sprintf(
				"resource name %q is also produced by %s; serving the one from %s", name, list[0].owner, list[0].owner)})
		}
		m.duplicates[name] = ws
	}
	delta.WarningsChanged = d.warningsChanged
	// The export changes live on the Model, not in d: a dirty whose slices
	// flowed into the Delta would move all of its maps to the heap.
	slices.SortFunc(m.exported, func(a, b *federationpb.FederatedService) int {
		return cmp.Compare(federation.ResourceName(a.Namespace, a.Name), federation.ResourceName(b.Namespace, b.Name))
	})
	slices.Sort(m.unexported)
	delta.Exports, delta.Unexports = m.exported, m.unexported
	m.exported, m.unexported = nil, nil
	delta.VIPsChanged = d.vipsChanged
	return delta
}

// Addresses returns every served address, sorted by resource name.
func (m *Model) Addresses() []*workloadpb.Address {
	names := make([]string, 0, len(m.published))
	for name := range m.published {
		names = append(names, name)
	}
	slices.Sort(names)
	out := make([]*workloadpb.Address, 0, len(names))
	for _, name := range names {
		out = append(out, m.published[name][0].addr)
	}
	return out
}

// Warnings returns the current warnings of every object, sorted and
// de-duplicated.
func (m *Model) Warnings() []Warning {
	var w warnings
	for _, ws := range m.warnings {
		w.list = append(w.list, ws...)
	}
	for _, ws := range m.duplicates {
		w.list = append(w.list, ws...)
	}
	return w.sorted()
}

// Exports returns every current export, sorted by resource name.
func (m *Model) Exports() []*federationpb.FederatedService {
	if len(m.exports) == 0 {
		return nil
	}
	keys := slices.SortedFunc(maps.Keys(m.exports), func(a, b objectKey) int {
		return cmp.Compare(federation.ResourceName(a.namespace, a.name), federation.ResourceName(b.namespace, b.name))
	})
	out := make([]*federationpb.FederatedService, 0, len(keys))
	for _, k := range keys {
		out = append(out, m.exports[k])
	}
	return out
}

// VIPs returns the VIP allocations of global services by hostname, for the
// caller to persist and hand back as Config.VIPs after a restart: the live
// ones and the seeded ones whose service has not come back yet (a second
// restart before it does must not lose them).
func (m *Model) VIPs() map[string][]netip.Addr { return m.vips.held() }

// ReleaseUnclaimedVIPs frees the seeded allocations whose service has not
// come back, and reports whether there were any (then VIPs changed: persist
// it). The caller calls it once every source that could bring them back
// has synced (the local sources and the peer links), so a service that is
// really gone does not hold its VIPs forever.
func (m *Model) ReleaseUnclaimedVIPs() bool { return m.vips.releaseReserved() }

// Network is the local network the model currently maps addresses onto.
func (m *Model) Network() string { return m.idx.network }

// changes lists every input object as a Change, for a Build from scratch.
func (in Inputs) changes() []Change {
	n := len(in.Namespaces) + len(in.Nodes) + len(in.Pods) + len(in.Services) + len(in.EndpointSlices) + len(in.Gateways) + len(in.ImportedServices)
	out := make([]Change, 0, n)
	for _, o := range in.Namespaces {
		out = append(out, Change{Ref: objectRef(KindNamespace, "", o.Name), Object: o})
	}
	for _, o := range in.Nodes {
		out = append(out, Change{Ref: objectRef(KindNode, "", o.Name), Object: o})
	}
	for _, o := range in.Pods {
		out = append(out, Change{Ref: objectRef(KindPod, o.Namespace, o.Name), Object: o})
	}
	for _, o := range in.Services {
		out = append(out, Change{Ref: objectRef(KindService, o.Namespace, o.Name), Object: o})
	}
	for _, o := range in.EndpointSlices {
		out = append(out, Change{Ref: objectRef(KindEndpointSlice, o.Namespace, o.Name), Object: o})
	}
	for _, o := range in.Gateways {
		out = append(out, Change{Ref: objectRef(KindGateway, o.Namespace, o.Name), Object: o})
	}
	for _, o := range in.ImportedServices {
		out = append(out, Change{Ref: ObjectRef{Kind: KindImportedService, Cluster: o.Cluster, Namespace: o.Namespace, Name: o.Name}, Object: o})
	}
	return out
}
