package view

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	securitypb "github.com/peerd-mesh/peerd/proto/istio/security"
	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
)

// Snapshot is what a wildcard ztunnel holds after its first full sync.
type Snapshot struct {
	Addresses      []*workloadpb.Address
	Authorizations []*securitypb.Authorization
}

// Kind selects what to render.
type Kind string

const (
	KindServices  Kind = "services"
	KindWorkloads Kind = "workloads"
	KindPolicies  Kind = "policies"
	KindAll       Kind = "all"
)

// Options filter what is rendered.
type Options struct {
	// Namespace keeps only objects of this namespace; empty keeps all.
	Namespace string
}

func (o Options) keep(ns string) bool { return o.Namespace == "" || o.Namespace == ns }

// Table renders the snapshot as aligned text tables. KindAll prints the
// services, workloads and policies tables one after the other, each under a
// heading.
func Table(kind Kind, s Snapshot, opts Options) (string, error) {
	switch kind {
	case KindServices:
		return servicesTable(s.Addresses, opts), nil
	case KindWorkloads:
		return workloadsTable(s.Addresses, opts), nil
	case KindPolicies:
		return policiesTable(s.Authorizations, opts), nil
	case KindAll:
		return "SERVICES\n" + servicesTable(s.Addresses, opts) +
			"\nWORKLOADS\n" + workloadsTable(s.Addresses, opts) +
			"\nPOLICIES\n" + policiesTable(s.Authorizations, opts), nil
	default:
		return "", fmt.Errorf("view: kind %q: want one of services, workloads, policies, all", kind)
	}
}

// JSON renders the selected resources as an indented JSON array of their
// protojson form: Address messages for services, workloads and all;
// Authorization messages for policies. The output is stable: the same
// snapshot always gives the same bytes.
func JSON(kind Kind, s Snapshot, opts Options) ([]byte, error) {
	var msgs []proto.Message
	switch kind {
	case KindServices, KindWorkloads, KindAll:
		for _, a := range sortedAddresses(s.Addresses) {
			switch {
			case kind != KindWorkloads && a.GetService() != nil && opts.keep(a.GetService().GetNamespace()),
				kind != KindServices && a.GetWorkload() != nil && opts.keep(a.GetWorkload().GetNamespace()):
				msgs = append(msgs, a)
			}
		}
	case KindPolicies:
		for _, p := range sortedPolicies(s.Authorizations) {
			if opts.keep(p.GetNamespace()) {
				msgs = append(msgs, p)
			}
		}
	default:
		return nil, fmt.Errorf("view: kind %q: want one of services, workloads, policies, all", kind)
	}
	var raw bytes.Buffer
	raw.WriteByte('[')
	for i, m := range msgs {
		if i > 0 {
			raw.WriteByte(',')
		}
		b, err := protojson.Marshal(m)
		if err != nil {
			return nil, fmt.Errorf("view: %s: %w", messageName(m), err)
		}
		raw.Write(b)
	}
	raw.WriteByte(']')
	// protojson deliberately varies its whitespace between builds;
	// re-indenting makes the output stable and readable.
	var out bytes.Buffer
	if err := json.Indent(&out, raw.Bytes(), "", "  "); err != nil {
		return nil, fmt.Errorf("view: indent: %w", err)
	}
	out.WriteByte('\n')
	return out.Bytes(), nil
}

// serviceKey is how workloads refer to a service in their services map,
// and the service's resource name.
func serviceKey(s *workloadpb.Service) string { return s.GetNamespace() + "/" + s.GetHostname() }

func messageName(m proto.Message) string {
	switch m := m.(type) {
	case *workloadpb.Address:
		if s := m.GetService(); s != nil {
			return "service " + serviceKey(s)
		}
		return "workload " + m.GetWorkload().GetUid()
	case *securitypb.Authorization:
		return "authorization " + m.GetNamespace() + "/" + m.GetName()
	}
	return string(m.ProtoReflect().Descriptor().FullName())
}

// sortedAddresses orders services by namespace/hostname and workloads by
// namespace, name, uid, services first. Keys are computed once: a whole-mesh
// view holds 100k addresses.
func sortedAddresses(in []*workloadpb.Address) []*workloadpb.Address {
	type keyed struct {
		k [4]string
		i int // input position: the final tie-break keeps the order total
		a *workloadpb.Address
	}
	ks := make([]keyed, len(in))
	for i, a := range in {
		if s := a.GetService(); s != nil {
			ks[i] = keyed{[4]string{"0", s.GetNamespace(), s.GetHostname(), s.GetName()}, i, a}
		} else {
			w := a.GetWorkload()
			ks[i] = keyed{[4]string{"1", w.GetNamespace(), w.GetName(), w.GetUid()}, i, a}
		}
	}
	slices.SortFunc(ks, func(x, y keyed) int {
		for n := range x.k {
			if c := strings.Compare(x.k[n], y.k[n]); c != 0 {
				return c
			}
		}
		return x.i - y.i
	})
	out := make([]*workloadpb.Address, len(ks))
	for i, k := range ks {
		out[i] = k.a
	}
	return out
}

func sortedPolicies(in []*securitypb.Authorization) []*securitypb.Authorization {
	out := append([]*securitypb.Authorization(nil), in...)
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].GetNamespace() != out[j].GetNamespace() {
			return out[i].GetNamespace() < out[j].GetNamespace()
		}
		return out[i].GetName() < out[j].GetName()
	})
	return out
}

var cellReplacer = strings.NewReplacer("\t", " ", "\n", " ")

// table accumulates rows for text/tabwriter.
type table struct {
	buf bytes.Buffer
	tw  *tabwriter.Writer
}

func newTable(header ...string) *table {
	t := &table{}
	t.tw = tabwriter.NewWriter(&t.buf, 0, 0, 2, ' ', 0)
	t.row(header...)
	return t
}

func (t *table) row(cells ...string) {
	for i, c := range cells {
		if c == "" {
			c = "-"
		}
		// A tab or newline inside a value would break the columns.
		c = cellReplacer.Replace(c)
		if i > 0 {
			t.tw.Write([]byte{'\t'})
		}
		t.tw.Write([]byte(c))
	}
	t.tw.Write([]byte{'\n'})
}

func (t *table) String() string {
	t.tw.Flush()
	return t.buf.String()
}

// endpointCounts counts, per service key, the workloads that list the
// service and how many of them ztunnel would pick under the default
// health policy: HEALTHY with a capacity other than 0. byCluster sums,
// per service key and cluster, the capacity of the usable ones: a remote
// cluster's split-horizon workload stands for as many endpoints as its
// capacity says.
func endpointCounts(addrs []*workloadpb.Address) (healthy, total map[string]int, byCluster map[string]map[string]uint32) {
	healthy, total, byCluster = map[string]int{}, map[string]int{}, map[string]map[string]uint32{}
	for _, a := range addrs {
		w := a.GetWorkload()
		if w == nil {
			continue
		}
		capacity := uint32(1)
		if w.GetCapacity() != nil {
			capacity = w.GetCapacity().GetValue()
		}
		usable := w.GetStatus() == workloadpb.WorkloadStatus_HEALTHY && capacity > 0
		for k := range w.GetServices() {
			total[k]++
			if usable {
				healthy[k]++
				if byCluster[k] == nil {
					byCluster[k] = map[string]uint32{}
				}
				byCluster[k][w.GetClusterId()] += capacity
			}
		}
	}
	return healthy, total, byCluster
}

// clusters renders "c1=2,c2=3": per cluster (sorted), the usable capacity
// of a service's endpoints; "-" for a service without usable endpoints.
func clusters(byCluster map[string]uint32) string {
	if len(byCluster) == 0 {
		return "-"
	}
	names := make([]string, 0, len(byCluster))
	for c := range byCluster {
		names = append(names, c)
	}
	sort.Strings(names)
	parts := make([]string, len(names))
	for i, c := range names {
		if c == "" {
			c = "-"
		}
		parts[i] = fmt.Sprintf("%s=%d", c, byCluster[names[i]])
	}
	return strings.Join(parts, ",")
}

func servicesTable(addrs []*workloadpb.Address, opts Options) string {
	healthy, total, byCluster := endpointCounts(addrs)
	t := newTable("NAMESPACE", "NAME", "HOSTNAME", "VIPS", "PORTS", "ENDPOINTS", "CLUSTERS", "LB")
	for _, a := range sortedAddresses(addrs) {
		s := a.GetService()
		if s == nil || !opts.keep(s.GetNamespace()) {
			continue
		}
		var vips []string
		for _, na := range s.GetAddresses() {
			vips = append(vips, networkAddress(na))
		}
		var ports []string
		for _, p := range s.GetPorts() {
			ports = append(ports, port(p))
		}
		k := serviceKey(s)
		t.row(s.GetNamespace(), s.GetName(), s.GetHostname(),
			strings.Join(vips, ","), strings.Join(ports, ","),
			fmt.Sprintf("%d/%d", healthy[k], total[k]), clusters(byCluster[k]),
			loadBalancing(s.GetLoadBalancing()))
	}
	return t.String()
}

func workloadsTable(addrs []*workloadpb.Address, opts Options) string {
	t := newTable("NAMESPACE", "NAME", "CLUSTER", "ADDRESS", "NODE", "NETWORK", "STATUS", "CAPACITY", "PROTOCOL", "LOCALITY", "SERVICES")
	for _, a := range sortedAddresses(addrs) {
		w := a.GetWorkload()
		if w == nil || !opts.keep(w.GetNamespace()) {
			continue
		}
		name := w.GetName()
		if name == "" {
			name = w.GetUid()
		}
		capacity := ""
		if w.GetCapacity() != nil {
			capacity = strconv.FormatUint(uint64(w.GetCapacity().GetValue()), 10)
		}
		t.row(w.GetNamespace(), name, w.GetClusterId(), workloadAddress(w), w.GetNode(), w.GetNetwork(),
			w.GetStatus().String(), capacity, protocol(w.GetTunnelProtocol()), locality(w.GetLocality()),
			strconv.Itoa(len(w.GetServices())))
	}
	return t.String()
}

func policiesTable(auths []*securitypb.Authorization, opts Options) string {
	t := newTable("NAMESPACE", "NAME", "SCOPE", "ACTION", "RULES", "DRY-RUN")
	for _, p := range sortedPolicies(auths) {
		if !opts.keep(p.GetNamespace()) {
			continue
		}
		rules := 0
		for _, g := range p.GetGroups() {
			rules += len(g.GetRules())
		}
		t.row(p.GetNamespace(), p.GetName(), p.GetScope().String(), p.GetAction().String(),
			strconv.Itoa(rules), strconv.FormatBool(p.GetDryRun()))
	}
	return t.String()
}

// ip renders wire bytes as an address; a length other than 4 or 16 (which
// ztunnel would NACK) is shown, not hidden.
func ip(b []byte) string {
	a, ok := netip.AddrFromSlice(b)
	if !ok {
		return fmt.Sprintf("invalid(%x)", b)
	}
	return a.String()
}

// networkAddress renders "network/ip", ztunnel's own lookup key (the
// default network is empty: "/10.0.0.1").
func networkAddress(na *workloadpb.NetworkAddress) string {
	return na.GetNetwork() + "/" + ip(na.GetAddress())
}

// port renders "service->target/protocol". Target 0 means the target port
// is named and resolved per workload (its services map), shown as "named".
func port(p *workloadpb.Port) string {
	target := "named"
	if p.GetTargetPort() != 0 {
		target = strconv.FormatUint(uint64(p.GetTargetPort()), 10)
	}
	s := strconv.FormatUint(uint64(p.GetServicePort()), 10) + "->" + target
	if p.GetAppProtocol() != workloadpb.AppProtocol_UNKNOWN {
		s += "/" + p.GetAppProtocol().String()
	}
	return s
}

// loadBalancing renders "MODE[SCOPE,...]" plus "+ALLOW_ALL" when unhealthy
// endpoints are allowed; nothing when the service has no policy.
func loadBalancing(lb *workloadpb.LoadBalancing) string {
	if lb == nil {
		return ""
	}
	var parts []string
	if lb.GetMode() != workloadpb.LoadBalancing_UNSPECIFIED_MODE || len(lb.GetRoutingPreference()) > 0 {
		var scopes []string
		for _, s := range lb.GetRoutingPreference() {
			scopes = append(scopes, s.String())
		}
		parts = append(parts, lb.GetMode().String()+"["+strings.Join(scopes, ",")+"]")
	}
	if lb.GetHealthPolicy() == workloadpb.LoadBalancing_ALLOW_ALL {
		parts = append(parts, "ALLOW_ALL")
	}
	return strings.Join(parts, "+")
}

// workloadAddress renders a workload's IPs; a workload without any (a
// remote cluster's endpoints behind its east-west gateway) shows the
// gateway it is reached through as "via:<gateway>:<hbone port>".
func workloadAddress(w *workloadpb.Workload) string {
	var ips []string
	for _, a := range w.GetAddresses() {
		ips = append(ips, ip(a))
	}
	if len(ips) == 0 && w.GetHostname() != "" {
		ips = append(ips, w.GetHostname())
	}
	if len(ips) > 0 {
		return strings.Join(ips, ",")
	}
	if gw := w.GetNetworkGateway(); gw != nil {
		return "via:" + gatewayAddress(gw)
	}
	return ""
}

func gatewayAddress(gw *workloadpb.GatewayAddress) string {
	var dst string
	switch d := gw.GetDestination().(type) {
	case *workloadpb.GatewayAddress_Address:
		dst = networkAddress(d.Address)
	case *workloadpb.GatewayAddress_Hostname:
		dst = d.Hostname.GetNamespace() + "/" + d.Hostname.GetHostname()
	default:
		dst = "?"
	}
	return dst + ":" + strconv.FormatUint(uint64(gw.GetHboneMtlsPort()), 10)
}

func protocol(p workloadpb.TunnelProtocol) string {
	if p == workloadpb.TunnelProtocol_NONE {
		return "TCP"
	}
	return p.String()
}

// locality renders region/zone/subzone, dropping empty trailing parts.
func locality(l *workloadpb.Locality) string {
	parts := []string{l.GetRegion(), l.GetZone(), l.GetSubzone()}
	for len(parts) > 0 && parts[len(parts)-1] == "" {
		parts = parts[:len(parts)-1]
	}
	return strings.Join(parts, "/")
}
