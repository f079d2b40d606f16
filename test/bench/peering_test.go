package bench

import (
	"bytes"
	"strings"
	"testing"

	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/peerd-mesh/peerd/internal/discovery"
	"github.com/peerd-mesh/peerd/internal/federation"
)

// The written link is one peerd's own parser accepts, naming the peer, its
// network and the port to dial.
func TestWriteLinkParsesAsALink(t *testing.T) {
	var b bytes.Buffer
	WriteLink(&b, Link{Cluster: "c7", Network: "network7", Port: 31012})
	objs, err := discovery.DecodeManifests(LinkFile("c7"), b.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 1 {
		t.Fatalf("got %d objects, want 1", len(objs))
	}
	gw := objs[0].(*gatewayv1.Gateway)
	if !federation.IsRemote(gw) {
		t.Fatalf("gateway class %q is not a link", gw.Spec.GatewayClassName)
	}
	l, err := federation.ParseLink(gw)
	if err != nil {
		t.Fatal(err)
	}
	if l.Cluster != "c7" || l.Network != "network7" || l.Dial() != "127.0.0.1:31012" {
		t.Errorf("link: cluster %q, network %q, dial %s; want c7, network7, 127.0.0.1:31012", l.Cluster, l.Network, l.Dial())
	}
}

// The first Global Services are labelled global, the others not, and the
// system namespace carries the cluster's network.
func TestWriteGlobalServicesAndNetwork(t *testing.T) {
	c := small
	c.Network, c.Global = "network3", 4
	dir := t.TempDir()
	if err := c.Write(dir); err != nil {
		t.Fatal(err)
	}
	objs := decodeDir(t, dir)
	global := map[string]bool{}
	for _, s := range objs.Services {
		if s.Labels[LabelServiceScope] == "global" {
			global[s.Name] = true
		}
	}
	if len(global) != c.Global {
		t.Errorf("got %d global services %v, want %d", len(global), global, c.Global)
	}
	for s := range c.Global {
		if !global[serviceName(s)] {
			t.Errorf("service %s: not global", serviceName(s))
		}
	}
	for _, ns := range objs.Namespaces {
		if ns.Name == "istio-system" && ns.Labels["topology.istio.io/network"] != "network3" {
			t.Errorf("namespace istio-system: network %q, want network3", ns.Labels["topology.istio.io/network"])
		}
	}
}

func TestValidateGlobal(t *testing.T) {
	for _, g := range []int{-1, small.Services + 1} {
		c := small
		c.Global = g
		if err := c.Validate(); err == nil {
			t.Errorf("global %d: no error", g)
		}
	}
}

func TestLinksSynced(t *testing.T) {
	want := map[string]int{"c2": 10, "c3": 5}
	tests := []struct {
		name string
		body string
		done bool
	}{
		{"all synced", `[{"cluster":"c2","state":"synced","services":10},{"cluster":"c3","state":"synced","services":5}]`, true},
		{"one connecting", `[{"cluster":"c2","state":"connecting","services":0},{"cluster":"c3","state":"synced","services":5}]`, false},
		{"synced but short of services", `[{"cluster":"c2","state":"synced","services":9},{"cluster":"c3","state":"synced","services":5}]`, false},
		{"a link missing", `[{"cluster":"c2","state":"synced","services":10}]`, false},
		{"no links", `[]`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			done, behind, err := linksSynced([]byte(tt.body), want)
			if err != nil {
				t.Fatal(err)
			}
			if done != tt.done || (!done && behind == "") {
				t.Errorf("got %t (%q), want %t with a reason when not done", done, behind, tt.done)
			}
		})
	}
	if _, _, err := linksSynced([]byte(`{"not":"a list"}`), want); err == nil {
		t.Error("an object instead of a list: no error")
	}
}

func TestHeapPerImport(t *testing.T) {
	r := ConvergenceResult{Imported: 1000, HeapUnlinked: 10 << 20, HeapLinked: 10<<20 + 512000}
	if got := r.HeapPerImport(); got != 512 {
		t.Errorf("got %v B per import, want 512", got)
	}
	if got := (ConvergenceResult{}).HeapPerImport(); got != 0 {
		t.Errorf("no imports: got %v, want 0", got)
	}
}

// A mesh that cannot measure what it promises is refused before any peerd
// starts (the binary does not exist here).
func TestRunConvergenceRefusesUnmeasurableMeshes(t *testing.T) {
	exporter, importer := small, small
	exporter.Global = small.Services
	importer.Name, importer.Network = "c2", "network2"
	localOnly := exporter
	localOnly.Global = 0
	tests := []struct {
		name     string
		clusters []Cluster
		want     string
	}{
		{"one cluster", []Cluster{exporter}, "at least two clusters"},
		{"changed pods in local services", []Cluster{localOnly, importer}, "not global"},
		{"no pods to change", []Cluster{func() Cluster { c := exporter; c.Churn = 0; return c }(), importer}, "no churned pods"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := RunConvergence(t.Context(), tt.name, MeshOptions{Peerd: "/nonexistent/peerd", Clusters: tt.clusters, WorkDir: t.TempDir()}, ConvergenceOptions{Changes: 1, Clients: 1})
			if r.Err == nil || !strings.Contains(r.Err.Error(), tt.want) {
				t.Fatalf("got error %v, want one saying %q", r.Err, tt.want)
			}
		})
	}
}
