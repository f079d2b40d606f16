package clusterops

import (
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/peerd-mesh/peerd/internal/ambient"
	"github.com/peerd-mesh/peerd/internal/federation"
	"github.com/peerd-mesh/peerd/internal/kubestate"
)

// Status is one check's verdict.
type Status int

const (
	OK Status = iota
	// Failed: something is wrong, and the line says how to fix it.
	Failed
	// Unknown: the state cannot be told (peerd is not alive to report it,
	// or has not caught up yet). Never counted as healthy.
	Unknown
)

// Symbol is how a line of the report starts.
func (s Status) Symbol() string {
	switch s {
	case OK:
		return "✔"
	case Failed:
		return "✖"
	}
	return "?"
}

// Line is one check.
type Line struct {
	Status Status
	Text   string
	// Fix is the command or step that fixes a failed check.
	Fix string
}

// Group is the lines of one cluster (Name = its context), or of the mesh.
type Group struct {
	Name  string
	Lines []Line
}

// Report is what check found.
type Report struct {
	Groups []Group
}

// Counts returns the number of failed and unknown lines.
func (r Report) Counts() (failed, unknown int) {
	for _, g := range r.Groups {
		for _, l := range g.Lines {
			switch l.Status {
			case Failed:
				failed++
			case Unknown:
				unknown++
			}
		}
	}
	return failed, unknown
}

// Healthy: nothing failed and nothing is unknown.
func (r Report) Healthy() bool {
	f, u := r.Counts()
	return f == 0 && u == 0
}

// Problems lists the lines that are not OK, each prefixed by its group.
func (r Report) Problems() []string {
	var out []string
	for _, g := range r.Groups {
		for _, l := range g.Lines {
			if l.Status != OK {
				out = append(out, g.Name+": "+l.Text)
			}
		}
	}
	return out
}

// Write prints the report: a line per check grouped per cluster, each
// failure followed by its fix, then the summary.
func (r Report) Write(w io.Writer) {
	clusters := 0
	for _, g := range r.Groups {
		fmt.Fprintln(w, g.Name)
		for _, l := range g.Lines {
			fmt.Fprintf(w, "  %s %s\n", l.Status.Symbol(), l.Text)
			if l.Status != OK && l.Fix != "" {
				fmt.Fprintf(w, "      fix: %s\n", l.Fix)
			}
		}
		if g.Name != meshGroup {
			clusters++
		}
	}
	failed, unknown := r.Counts()
	if failed == 0 && unknown == 0 {
		fmt.Fprintf(w, "Summary: %d cluster(s), all checks passed\n", clusters)
		return
	}
	fmt.Fprintf(w, "Summary: %d cluster(s), %d problem(s): %d failed, %d unknown\n", clusters, failed+unknown, failed, unknown)
}

const meshGroup = "global services"

// CheckOptions tune Evaluate.
type CheckOptions struct {
	// Now is the local time the snapshots were taken. Lease expiry is
	// judged by each snapshot's ServerTime, the API server's clock, which
	// the cluster's own (peerd's) clock is kept close to; Now only for a
	// server that sent no Date header.
	Now time.Time
	// ExpectPairs: every checked cluster must link every other one (check
	// was given several contexts).
	ExpectPairs bool
}

// Evaluate judges the snapshots of the checked clusters. It does no I/O:
// every verdict follows from the objects.
func Evaluate(snaps []Snapshot, o CheckOptions) Report {
	byID := map[string]*Snapshot{}
	for i := range snaps {
		if s := &snaps[i]; s.Err == nil {
			if id := s.ClusterID(); id != "" {
				byID[id] = s
			}
		}
	}
	var r Report
	for i := range snaps {
		r.Groups = append(r.Groups, evaluateCluster(&snaps[i], snaps, byID, o))
	}
	r.Groups = append(r.Groups, Group{Name: meshGroup, Lines: portConflicts(snaps)})
	return r
}

func evaluateCluster(s *Snapshot, all []Snapshot, byID map[string]*Snapshot, o CheckOptions) Group {
	g := Group{Name: s.Context}
	add := func(st Status, fix, format string, args ...any) {
		g.Lines = append(g.Lines, Line{Status: st, Text: fmt.Sprintf(format, args...), Fix: fix})
	}
	if s.Err != nil {
		add(Failed, fmt.Sprintf("check the context's server and credentials: kubectl --context %s get namespaces", s.Context),
			"cannot read the cluster: %v", s.Err)
		return g
	}
	sys := s.Config.SystemNamespace
	switch {
	case s.SystemNamespace == nil:
		add(Failed, "install Istio, or name its namespace with --system-namespace", "namespace %s does not exist", sys)
	case s.Network() == "":
		add(Failed, labelNetworkFix(s.Context, sys), "namespace %s has no %s label", sys, federation.LabelNetwork)
	default:
		add(OK, "", "network %s (namespace %s)", s.Network(), sys)
	}
	if td, err := s.TrustDomain(); err != nil {
		add(Failed, fmt.Sprintf("kubectl --context %s -n %s edit configmap %s", s.Context, sys, s.Config.MeshConfigMap), "%v", err)
	} else {
		add(OK, "", "trust domain %s", td)
	}

	if gw, err := s.EastWest(); err != nil {
		add(Failed, s.exposeFix(), "east-west gateway: %s", trimContext(err, s.Context))
	} else if len(gw.Status.Addresses) == 0 {
		add(Failed, fmt.Sprintf("wait for its gateway controller (kubectl --context %s -n %s describe gateway %s)", s.Context, gw.Namespace, gw.Name),
			"east-west gateway %s/%s has no address yet (status.addresses)", gw.Namespace, gw.Name)
	} else {
		var addrs []string
		for _, a := range gw.Status.Addresses {
			addrs = append(addrs, a.Value)
		}
		add(OK, "", "east-west gateway %s/%s at %s", gw.Namespace, gw.Name, strings.Join(addrs, ", "))
	}

	now, clock := s.ServerTime, ""
	if now.IsZero() && s.Lease != nil {
		now, clock = o.Now, " (by the local clock: the API server sent no Date header)"
	}
	alive, why := peerdAlive(s.Lease, now)
	why += clock
	if alive {
		add(OK, "", "peerd alive: %s", why)
	} else {
		add(Failed, fmt.Sprintf("is peerd installed and running? kubectl --context %s -n %s get pods,lease", s.Context, sys), "peerd not alive: %s", why)
	}

	links := s.Links()
	sort.Slice(links, func(i, j int) bool { return links[i].Name < links[j].Name })
	linked := map[string]bool{}
	for _, gw := range links {
		linked[linkedID(gw)] = true
		g.Lines = append(g.Lines, evaluateLink(s, gw, byID, alive)...)
	}
	if o.ExpectPairs {
		for i := range all {
			t := &all[i]
			if t == s || t.Err != nil {
				continue
			}
			// Another context of this same cluster is not a peer: link
			// refuses to link a cluster to itself.
			id := t.ClusterID()
			if id == "" || linked[id] || id == s.ClusterID() {
				continue
			}
			add(Failed, fmt.Sprintf("peerd link --from %s --to %s", s.Context, t.Context), "no link to %s (cluster %s)", t.Context, id)
		}
	}
	if len(links) == 0 && !o.ExpectPairs {
		add(OK, "", "no links in %s", s.Config.Namespace)
	}
	return g
}

// evaluateLink checks one link Gateway: valid, describing its target as the
// target is now (when the target is among the checked clusters), and its
// live state from the conditions peerd writes.
func evaluateLink(s *Snapshot, gw *gatewayv1.Gateway, byID map[string]*Snapshot, peerdAlive bool) []Line {
	var lines []Line
	add := func(st Status, fix, format string, args ...any) {
		lines = append(lines, Line{Status: st, Text: fmt.Sprintf(format, args...), Fix: fix})
	}
	target := byID[linkedID(gw)]
	name := fmt.Sprintf("link %s/%s", gw.Namespace, gw.Name)
	relink := fmt.Sprintf("peerd link --from %s --to <the linked context>", s.Context)
	if target != nil {
		name += " → " + target.Context
		relink = fmt.Sprintf("peerd link --from %s --to %s", s.Context, target.Context)
	}
	l, err := federation.ParseLink(gw)
	if err != nil {
		add(Failed, relink, "%s: invalid: %v", name, err)
		return lines
	}
	switch {
	case target == s:
		add(Failed, fmt.Sprintf("kubectl --context %s -n %s delete gateway %s", s.Context, gw.Namespace, gw.Name),
			"%s: links this cluster (%s) to itself", name, l.Cluster)
	case target == nil:
		add(OK, "", "%s: cluster %s (none of the checked clusters is %s: not compared)", name, l.Cluster, l.Cluster)
	default:
		want, err := target.TargetLink()
		if err != nil {
			add(Failed, "fix "+target.Context+" (below or above)", "%s: cannot compare with %s: %s", name, target.Context, trimContext(err, target.Context))
			break
		}
		if l.PeerTrustDomain() != want.PeerTrustDomain() {
			add(Failed, relink+fmt.Sprintf(" (or set trustDomain in %s's mesh config)", target.Context),
				"%s: trust domain %s, but %s's mesh config says %s", name, l.PeerTrustDomain(), target.Context, want.PeerTrustDomain())
		}
		if diffs := linkDiffs(l, want); len(diffs) > 0 {
			add(Failed, relink, "%s: out of date: %s", name, strings.Join(diffs, "; "))
		} else {
			add(OK, "", "%s: matches %s's east-west gateway (%s, trust domain %s)", name, target.Context, strings.Join(l.Addresses, ", "), l.PeerTrustDomain())
		}
	}
	lines = append(lines, linkState(name, gw, peerdAlive))
	return lines
}

// linkDiffs lists where a link differs from what its target says now
// (trust domain apart: it has its own line).
func linkDiffs(got, want federation.Link) []string {
	var d []string
	diff := func(field string, g, w any) {
		if fmt.Sprint(g) != fmt.Sprint(w) {
			d = append(d, fmt.Sprintf("%s %v, target has %v", field, g, w))
		}
	}
	ga, wa := slices.Clone(got.Addresses), slices.Clone(want.Addresses)
	sort.Strings(ga)
	sort.Strings(wa)
	diff("addresses", ga, wa)
	diff("network", got.Network, want.Network)
	diff("cluster", got.Cluster, want.Cluster)
	diff("xds-tls port", got.XDSPort, want.XDSPort)
	diff("cross-network port", got.HBONEPort, want.HBONEPort)
	diff("service account", got.ServiceAccount, want.ServiceAccount)
	diff("region", got.Region, want.Region)
	diff("zone", got.Zone, want.Zone)
	return d
}

// linkState reads the conditions peerd writes on a link. Without a live
// peerd they are whatever it last wrote: unknown, never OK.
func linkState(name string, gw *gatewayv1.Gateway, peerdAlive bool) Line {
	if !peerdAlive {
		return Line{Status: Unknown, Text: name + ": live state unknown: peerd is not alive to report it"}
	}
	var bad []string
	for _, typ := range []string{federation.ConditionConnected, federation.ConditionSynced} {
		c := meta.FindStatusCondition(gw.Status.Conditions, typ)
		switch {
		case c == nil:
			return Line{Status: Unknown, Text: fmt.Sprintf("%s: no %s condition yet: peerd has not reported this link", name, typ),
				Fix: "wait (peerd check --wait), or read peerd's log"}
		case c.ObservedGeneration < gw.Generation:
			return Line{Status: Unknown, Text: fmt.Sprintf("%s: %s is for generation %d, the Gateway is at %d: peerd has not caught up",
				name, typ, c.ObservedGeneration, gw.Generation), Fix: "wait (peerd check --wait), or read peerd's log"}
		case c.Status != metav1.ConditionTrue:
			bad = append(bad, fmt.Sprintf("%s=%s (%s): %s", typ, c.Status, c.Reason, c.Message))
		}
	}
	if len(bad) > 0 {
		return Line{Status: Failed, Text: name + ": " + strings.Join(bad, "; "),
			Fix: "see the reason: the peer's peerd, its east-west gateway, or the shared root of trust"}
	}
	return Line{Status: OK, Text: name + ": connected and synced"}
}

// peerdAlive: the Lease is held and its renewal not yet expired.
func peerdAlive(l *coordinationv1.Lease, now time.Time) (bool, string) {
	ref := kubestate.LeaseName
	if l == nil {
		return false, fmt.Sprintf("no Lease %s: peerd has never run here", ref)
	}
	ref = l.Namespace + "/" + l.Name
	holder := ""
	if l.Spec.HolderIdentity != nil {
		holder = *l.Spec.HolderIdentity
	}
	if holder == "" {
		return false, fmt.Sprintf("Lease %s released: peerd stopped, or gave the Lease up because its status writes kept failing (see its log and peerd_leader_stepdowns_total)", ref)
	}
	if l.Spec.RenewTime == nil || l.Spec.LeaseDurationSeconds == nil {
		return false, fmt.Sprintf("Lease %s (holder %s) has no renewTime or leaseDurationSeconds", ref, holder)
	}
	expiry := l.Spec.RenewTime.Add(time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second)
	age := now.Sub(l.Spec.RenewTime.Time).Round(time.Second)
	if !now.Before(expiry) {
		return false, fmt.Sprintf("Lease %s (holder %s) expired: last renewed %s ago", ref, holder, age)
	}
	return true, fmt.Sprintf("%s holds Lease %s, renewed %s ago", holder, ref, age)
}

// globalService is one cluster's global Service.
type globalService struct {
	context string
	svc     *corev1.Service
}

// portConflicts finds global services (solo.io/service-scope global or
// global-only on the Service, else on its namespace) whose ports disagree
// between clusters: one port number with another protocol or target port,
// or one port name with another number. Namespace sameness makes them one
// service, so a client would reach different things by the same port.
func portConflicts(snaps []Snapshot) []Line {
	services := map[string][]globalService{}
	for i := range snaps {
		s := &snaps[i]
		if s.Err != nil {
			continue
		}
		nsScope := map[string]string{}
		for _, ns := range s.Namespaces {
			nsScope[ns.Name] = ns.Labels[ambient.LabelServiceScope]
		}
		for j := range s.Services {
			svc := &s.Services[j]
			scope, ok := svc.Labels[ambient.LabelServiceScope]
			if !ok {
				scope = nsScope[svc.Namespace]
			}
			if scope == ambient.ScopeGlobal || scope == ambient.ScopeGlobalOnly {
				key := svc.Namespace + "/" + svc.Name
				services[key] = append(services[key], globalService{context: s.Context, svc: svc})
			}
		}
	}
	keys := make([]string, 0, len(services))
	for k := range services {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var lines []Line
	for _, k := range keys {
		gs := services[k]
		for i := 0; i < len(gs); i++ {
			for j := i + 1; j < len(gs); j++ {
				for _, c := range comparePorts(gs[i], gs[j]) {
					lines = append(lines, Line{Status: Failed, Text: fmt.Sprintf("service %s: %s", k, c),
						Fix: fmt.Sprintf("make service %s's ports the same in every cluster that exports it", k)})
				}
			}
		}
	}
	if len(lines) == 0 {
		lines = append(lines, Line{Status: OK, Text: fmt.Sprintf("%d global service(s), no port conflicts between clusters", len(keys))})
	}
	return lines
}

func comparePorts(a, b globalService) []string {
	var out []string
	for _, pa := range a.svc.Spec.Ports {
		for _, pb := range b.svc.Spec.Ports {
			if pa.Port == pb.Port && (protocol(pa) != protocol(pb) || pa.TargetPort.String() != pb.TargetPort.String()) {
				out = append(out, fmt.Sprintf("port %d is %s→%s in %s but %s→%s in %s", pa.Port,
					protocol(pa), pa.TargetPort.String(), a.context, protocol(pb), pb.TargetPort.String(), b.context))
			}
			if pa.Name != "" && pa.Name == pb.Name && pa.Port != pb.Port {
				out = append(out, fmt.Sprintf("port %q is %d in %s but %d in %s", pa.Name, pa.Port, a.context, pb.Port, b.context))
			}
		}
	}
	return out
}

func protocol(p corev1.ServicePort) corev1.Protocol {
	if p.Protocol == "" {
		return corev1.ProtocolTCP
	}
	return p.Protocol
}

// trimContext drops the "context X: " an error starts with when the line
// is already under X's heading.
func trimContext(err error, context string) string {
	return strings.ReplaceAll(err.Error(), "context "+context+": ", "")
}
