package ambient

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/peerd-mesh/peerd/internal/federation"
	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
	federationpb "github.com/peerd-mesh/peerd/proto/peerd/federation/v1"
)

// The Model's peering half: links, imports, exports and global services.
// The pure functions it calls are in export.go, global.go and vip.go.

// valid: a link that contributes (parsed, and to another cluster).
func (m *Model) valid(lg linkGateway) bool {
	return lg.err == nil && lg.link.Cluster != m.cfg.ClusterID
}

// applyGateway records a Gateway's link (if it is an istio-remote one) and
// marks the clusters whose link in force may change.
func (m *Model) applyGateway(key objectKey, gw *gatewayv1.Gateway, d *dirty) {
	m.applyEastWest(key, gw, d)
	old, hadOld := m.links[key]
	if gw != nil && federation.IsRemote(gw) {
		l, err := federation.ParseLink(gw)
		m.links[key] = linkGateway{link: l, err: err}
	} else {
		delete(m.links, key)
	}
	if !hadOld && gw == nil {
		return
	}
	if hadOld && m.valid(old) {
		removeFromMap(m.linksByCluster, old.link.Cluster, key)
		mark(&d.linkClusters, old.link.Cluster)
	}
	if lg, ok := m.links[key]; ok && m.valid(lg) {
		addToMap(m.linksByCluster, lg.link.Cluster, key, struct{}{})
		mark(&d.linkClusters, lg.link.Cluster)
	}
	mark(&d.gateways, key)
}

// applyEastWest records the local east-west Gateways' localities: the
// cluster's locality, sent with every export, when Config.Locality does not
// say it. With several, the first by namespace/name that has one counts.
// A change re-exports every exported Service.
func (m *Model) applyEastWest(key objectKey, gw *gatewayv1.Gateway, d *dirty) {
	before := m.localLocality()
	if gw != nil && string(gw.Spec.GatewayClassName) == federation.ClassEastWest {
		if m.eastWest == nil {
			m.eastWest = map[objectKey]Locality{}
		}
		m.eastWest[key] = Locality{Region: gw.Labels[federation.LabelRegion], Zone: gw.Labels[federation.LabelZone]}
	} else if _, ok := m.eastWest[key]; ok {
		delete(m.eastWest, key)
	} else {
		return
	}
	if m.localLocality() != before {
		for k := range m.exports {
			mark(&d.exports, k)
		}
	}
}

// localLocality is the locality exports carry: Config.Locality, else the
// local east-west Gateways' labels.
func (m *Model) localLocality() Locality {
	if m.cfg.Locality != (Locality{}) {
		return m.cfg.Locality
	}
	keys := slices.SortedFunc(maps.Keys(m.eastWest), func(a, b objectKey) int {
		return cmp.Or(cmp.Compare(a.namespace, b.namespace), cmp.Compare(a.name, b.name))
	})
	for _, k := range keys {
		if l := m.eastWest[k]; l != (Locality{}) {
			return l
		}
	}
	return Locality{}
}

// applyImport records an imported service (nil: withdrawn) and marks what
// reads it.
func (m *Model) applyImport(ref ObjectRef, is *federation.ImportedService, d *dirty) {
	key := objectKey{namespace: ref.Namespace, name: ref.Name}
	c := ref.Cluster
	old := m.imports[key][c]
	if old.Equal(is) {
		return
	}
	hadCluster := len(m.importsByCluster[c]) > 0
	if is == nil {
		removeFromMap(m.imports, key, c)
		removeFromMap(m.importsByCluster, c, key)
	} else {
		addToMap(m.imports, key, c, is)
		addToMap(m.importsByCluster, c, key, struct{}{})
	}
	if hadCluster != (len(m.importsByCluster[c]) > 0) {
		mark(&d.linkClusters, c) // the "not linked" warning may change
	}
	if old == nil || is == nil {
		m.markImportDependents(c, key, d)
		return
	}
	// A readiness change in the exporting cluster changes only capacity:
	// recompute only what reads the fields that changed.
	o, n := old.Service, is.Service
	samePorts := slices.EqualFunc(o.GetPorts(), n.GetPorts(), func(a, b *federationpb.Port) bool { return proto.Equal(a, b) })
	if !samePorts || o.GetCapacity() != n.GetCapacity() || !proto.Equal(o.GetLocality(), n.GetLocality()) {
		mark(&d.splits, ObjectRef{Kind: KindImportedService, Cluster: c, Namespace: key.namespace, Name: key.name})
	}
	if !samePorts || !slices.Equal(o.GetSubjectAltNames(), n.GetSubjectAltNames()) ||
		o.GetTrafficDistribution() != n.GetTrafficDistribution() || !proto.Equal(o.GetCreationTime(), n.GetCreationTime()) ||
		o.GetScope() != n.GetScope() { // the scope-disagreement warning
		mark(&d.globals, key)
		m.markPlainService(key, d)
	}
}

// markPlainService marks the local Service of key when it is global-only:
// it carries the remote SANs.
func (m *Model) markPlainService(key objectKey, d *dirty) {
	if info := m.idx.services[key]; info != nil && info.scope == scopeGlobalOnly {
		d.services[key] = struct{}{}
	}
}

// markImportDependents marks what reads the import of key from cluster c:
// its split-horizon workload, its global service and, when the local
// Service is global-only, the plain Service (its SANs).
func (m *Model) markImportDependents(c string, key objectKey, d *dirty) {
	mark(&d.splits, ObjectRef{Kind: KindImportedService, Cluster: c, Namespace: key.namespace, Name: key.name})
	mark(&d.globals, key)
	m.markPlainService(key, d)
}

// recomputeLinkCluster settles which link is in force for cluster c (the
// first valid one by namespace and name) and, when that changes, marks
// everything imported from c.
func (m *Model) recomputeLinkCluster(c string, d *dirty) {
	// Ordered by "namespace/name" as text, exactly as the link manager
	// picks which Gateway it dials, so both use the same one.
	keys := slices.SortedFunc(maps.Keys(m.linksByCluster[c]), func(a, b objectKey) int {
		return cmp.Compare(a.namespace+"/"+a.name, b.namespace+"/"+b.name)
	})
	for _, k := range keys {
		mark(&d.gateways, k)
	}
	old, had := m.activeLinks[c]
	var active activeLink
	if len(keys) > 0 {
		active.Link = m.links[keys[0]].link
	}
	changed := had != (len(keys) > 0) || !sameLink(old.Link, active.Link)
	switch {
	case len(keys) == 0:
		delete(m.activeLinks, c)
	case changed:
		// One network_gateway message, shared read-only by every
		// split-horizon workload of the cluster (memory per import).
		active.gateway = networkGateway(m.cfg, active.Link)
		m.activeLinks[c] = active
	}
	if changed {
		for key := range m.importsByCluster[c] {
			m.markImportDependents(c, key, d)
		}
	}
	var ws []Warning
	if len(keys) == 0 && len(m.importsByCluster[c]) > 0 {
		ws = []Warning{{Object: ObjectRef{Kind: KindCluster, Name: c},
			Message: "services imported from this cluster are ignored: no istio-remote Gateway links it"}}
	}
	m.setWarnings(ObjectRef{Kind: KindCluster, Name: c}, ws, d)
}

// sameLink compares every field, so a field added to Link is never missed.
func sameLink(a, b federation.Link) bool { return reflect.DeepEqual(a, b) }

// recomputeGateway produces a link Gateway's gateway workloads (and gateway
// Service) when its link is the one in force, and its warnings.
func (m *Model) recomputeGateway(key objectKey, d *dirty) {
	var out []*workloadpb.Address
	var ws []Warning
	ref := objectRef(KindGateway, key.namespace, key.name)
	lg, ok := m.links[key]
	switch {
	case !ok || (lg.err == nil && !m.valid(lg)):
		// Not a link, or a link to this very cluster: nothing to say.
	case lg.err != nil:
		msg := lg.err.Error()
		if inner := errors.Unwrap(lg.err); inner != nil {
			msg = inner.Error() // ParseLink's error repeats the Gateway's name
		}
		ws = []Warning{{Object: ref, Message: "not a usable link: " + strings.ReplaceAll(msg, "\n", "; ")}}
	default:
		active := m.activeLinks[lg.link.Cluster]
		if active.Gateway == lg.link.Gateway {
			out = linkGatewayAddresses(m.cfg, lg.link)
		} else {
			ws = append(ws, Warning{Object: ref, Message: fmt.Sprintf("cluster %s is also linked by gateway %s, which is used: this link is ignored",
				lg.link.Cluster, active.Gateway)})
		}
	}
	m.produce(ref, out, ws, d)
}

// markPeeringDependents marks, for a recomputed local Service, the peering
// outputs that read it.
func (m *Model) markPeeringDependents(key objectKey, old, info *serviceInfo, d *dirty) {
	scopeOf := func(i *serviceInfo) scope {
		if i == nil {
			return scopeNone
		}
		return i.scope
	}
	if scopeOf(old).global() || scopeOf(info).global() || len(m.imports[key]) > 0 {
		mark(&d.globals, key)
	}
	if (scopeOf(old) == scopeGlobalOnly) != (scopeOf(info) == scopeGlobalOnly) {
		for c := range m.imports[key] {
			mark(&d.splits, ObjectRef{Kind: KindImportedService, Cluster: c, Namespace: key.namespace, Name: key.name})
		}
	}
}

// indexEndpoint moves a local workload's entries in the endpoint index from
// its old to its new version, marking the exports whose count or SANs this
// may change. Only global Services' endpoints are indexed, so the index
// costs nothing in a cluster that exports nothing: a Service that becomes
// global (or stops being global) changes its endpoints' services maps (the
// global key), and so passes every endpoint through here.
func (m *Model) indexEndpoint(old, wl *workloadpb.Workload, d *dirty) {
	same := old != nil && wl != nil && old.GetStatus() == wl.GetStatus() &&
		old.GetServiceAccount() == wl.GetServiceAccount() && old.GetNamespace() == wl.GetNamespace() &&
		old.GetWorkloadType() == wl.GetWorkloadType()
	for key := range old.GetServices() {
		if _, still := wl.GetServices()[key]; still {
			continue
		}
		if _, indexed := m.endpoints[key][old.GetUid()]; indexed {
			removeFromMap(m.endpoints, key, old.GetUid())
			m.markExport(key, d)
		}
	}
	for key := range wl.GetServices() {
		if info := m.idx.byKey[key]; info == nil || !info.scope.global() {
			if _, indexed := m.endpoints[key][wl.GetUid()]; indexed {
				removeFromMap(m.endpoints, key, wl.GetUid())
			}
			continue
		}
		_, had := m.endpoints[key][wl.GetUid()]
		addToMap(m.endpoints, key, wl.GetUid(), wl)
		if !had || !same {
			m.markExport(key, d)
		}
	}
}

// markExport marks the export of the global Service whose plain key is key.
func (m *Model) markExport(key string, d *dirty) {
	if info := m.idx.byKey[key]; info != nil && info.scope.global() {
		mark(&d.exports, objectKey{namespace: info.svc.Namespace, name: info.svc.Name})
	}
}

// recomputeExport refreshes a local Service's export; a changed set of SANs
// reaches its global service.
func (m *Model) recomputeExport(key objectKey, d *dirty) {
	var w warnings
	out := m.exportOf(key, &w)
	m.setWarnings(ObjectRef{Kind: ownerExport, Namespace: key.namespace, Name: key.name}, w.sorted(), d)
	old := m.exports[key]
	if proto.Equal(old, out) {
		return
	}
	name := federation.ResourceName(key.namespace, key.name)
	if out == nil {
		delete(m.exports, key)
		m.unexported = append(m.unexported, name)
	} else {
		m.exports[key] = out
		m.exported = append(m.exported, out)
	}
	if (old == nil) != (out == nil) || !slices.Equal(old.GetSubjectAltNames(), out.GetSubjectAltNames()) {
		mark(&d.globals, key)
	}
}

func (m *Model) exportOf(key objectKey, w *warnings) *federationpb.FederatedService {
	info := m.idx.services[key]
	if info == nil || !info.scope.global() {
		return nil
	}
	return exportService(exportInput{
		cfg:       m.cfg,
		locality:  m.localLocality(),
		svc:       m.idx.k8sServices[key],
		scope:     info.scope,
		namespace: m.idx.namespaces[key.namespace],
		endpoints: m.endpoints[namespacedHostname(info.svc.Namespace, info.svc.Hostname)],
	}, w)
}

// activeImports are the imports of key whose cluster has a link in force,
// sorted by cluster.
func (m *Model) activeImports(key objectKey) []*federation.ImportedService {
	byCluster := m.imports[key]
	if len(byCluster) == 0 {
		return nil
	}
	out := make([]*federation.ImportedService, 0, len(byCluster))
	for c, is := range byCluster {
		if _, linked := m.activeLinks[c]; linked {
			out = append(out, is)
		}
	}
	slices.SortFunc(out, func(a, b *federation.ImportedService) int { return cmp.Compare(a.Cluster, b.Cluster) })
	return out
}

// remoteSANs is the sorted union of the exporters' SANs.
func remoteSANs(remotes []*federation.ImportedService) []string {
	var sans []string
	for _, r := range remotes {
		sans = append(sans, r.Service.GetSubjectAltNames()...)
	}
	slices.Sort(sans)
	return slices.Compact(sans)
}

// recomputeSplitHorizon produces the split-horizon workload of one imported
// service, when its cluster is linked.
func (m *Model) recomputeSplitHorizon(ref ObjectRef, d *dirty) {
	key := objectKey{namespace: ref.Namespace, name: ref.Name}
	var out []*workloadpb.Address
	is := m.imports[key][ref.Cluster]
	if link, linked := m.activeLinks[ref.Cluster]; is != nil && linked {
		info := m.idx.services[key]
		wl := splitHorizonWorkload(splitHorizonInput{cfg: m.cfg, link: link.Link, gateway: link.gateway, imported: is,
			plainToo: info != nil && info.scope == scopeGlobalOnly})
		out = []*workloadpb.Address{{Type: &workloadpb.Address_Workload{Workload: wl}}}
	}
	m.produce(ref, out, nil, d)
}

// recomputeGlobal produces the global service of key, or removes it (and
// frees its VIPs) when no cluster makes it global any more.
func (m *Model) recomputeGlobal(key objectKey, d *dirty) {
	owner := ObjectRef{Kind: KindGlobalService, Namespace: key.namespace, Name: key.name}
	hostname := globalHostname(key.name, key.namespace, m.cfg.GlobalSuffix)
	localExport := m.exports[key]
	remotes := m.activeImports(key)
	if localExport == nil && len(remotes) == 0 {
		if m.vips.release(hostname) {
			d.vipsChanged = true
		}
		m.produce(owner, nil, nil, d)
		return
	}
	var w warnings
	vips, changed := m.vips.allocate(hostname, owner, &w)
	d.vipsChanged = d.vipsChanged || changed
	in := globalServiceInput{
		cfg: m.cfg, network: m.idx.network, namespace: key.namespace, name: key.name,
		localExport: localExport, remotes: remotes, vips: vips,
	}
	if m.idx.services[key] != nil {
		in.localSvc, in.localNS = m.idx.k8sServices[key], m.idx.namespaces[key.namespace]
	}
	svc := globalService(in, &w)
	m.produce(owner, []*workloadpb.Address{{Type: &workloadpb.Address_Service{Service: svc}}}, w.sorted(), d)
}
