package bench

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/peerd-mesh/peerd/internal/ambient"
	"github.com/peerd-mesh/peerd/internal/discovery"
	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
)

var small = Cluster{Name: "c1", Namespaces: 3, Nodes: 4, Services: 7, Pods: 50, Churn: 5, PodsPerFile: 20, Move: 4}

// decodeDir decodes every manifest below dir the way peerd's file source
// does, failing the test on any error.
func decodeDir(t *testing.T, dir string) discovery.Objects {
	t.Helper()
	var objs discovery.Objects
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		got, err := discovery.DecodeManifests(path, data)
		if err != nil {
			t.Errorf("decoding: %v", err)
			return nil
		}
		for _, o := range got {
			objs.Add(o)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

func TestWriteDecodesAsTheClusterDescribes(t *testing.T) {
	dir := t.TempDir()
	if err := small.Write(dir); err != nil {
		t.Fatal(err)
	}
	objs := decodeDir(t, dir)
	for _, c := range []struct {
		kind      string
		got, want int
	}{
		{"namespaces", len(objs.Namespaces), small.Namespaces + 1},
		{"nodes", len(objs.Nodes), small.Nodes},
		{"services", len(objs.Services), small.Services + 1},
		{"pods", len(objs.Pods), small.Pods},
		{"gateways", len(objs.Gateways), 1},
	} {
		if c.got != c.want {
			t.Errorf("%s: got %d, want %d", c.kind, c.got, c.want)
		}
	}
	// Every churned pod has a file of its own holding just that pod.
	for _, p := range small.ChurnPods() {
		data, err := os.ReadFile(filepath.Join(dir, ChurnFile(p)))
		if err != nil {
			t.Fatal(err)
		}
		got, err := discovery.DecodeManifests(ChurnFile(p), data)
		if err != nil || len(got) != 1 || got[0].(*corev1.Pod).Name != p.Name {
			t.Errorf("%s: got %d objects, err %v; want pod %s alone", ChurnFile(p), len(got), err, p.Name)
		}
	}
}

// The generated cluster maps to what the scenarios rely on: a Ready HBONE
// workload per pod, named by Cluster.UID, an endpoint of its Service, and
// the "a" movers also of the mover Service.
func TestWriteMapsToHealthyWorkloads(t *testing.T) {
	dir := t.TempDir()
	if err := small.Write(dir); err != nil {
		t.Fatal(err)
	}
	out := ambient.Build(ambient.Config{ClusterID: small.Name}, ambient.Inputs(decodeDir(t, dir)))
	if len(out.Warnings) > 0 {
		t.Errorf("warnings: %v", out.Warnings)
	}
	workloads := map[string]*workloadpb.Workload{}
	services := 0
	for _, a := range out.Addresses {
		if wl := a.GetWorkload(); wl != nil {
			workloads[wl.GetUid()] = wl
		} else {
			services++
		}
	}
	if services != small.Services+1 {
		t.Errorf("got %d Service addresses, want %d", services, small.Services+1)
	}
	movers := map[string]string{}
	for _, p := range small.MoverPods() {
		movers[small.UID(p)] = p.Mover
	}
	if len(movers) != small.Move {
		t.Fatalf("got %d movers, want %d", len(movers), small.Move)
	}
	for i := range small.Pods {
		p := small.Pod(i)
		wl := workloads[small.UID(p)]
		if wl == nil {
			t.Errorf("pod %s/%s: no workload %s", p.Namespace, p.Name, small.UID(p))
			continue
		}
		if wl.GetStatus() != workloadpb.WorkloadStatus_HEALTHY || wl.GetTunnelProtocol() != workloadpb.TunnelProtocol_HBONE || wl.GetNetwork() != "network1" {
			t.Errorf("workload %s: status %v, tunnel %v, network %q; want HEALTHY, HBONE, network1", wl.GetUid(), wl.GetStatus(), wl.GetTunnelProtocol(), wl.GetNetwork())
		}
		if wl.GetLocality().GetZone() == "" {
			t.Errorf("workload %s: no zone", wl.GetUid())
		}
		want := []string{p.Namespace + "/" + serviceName(p.Service) + "." + p.Namespace + ".svc.cluster.local"}
		if movers[small.UID(p)] == "a" {
			want = append(want, moverNS+"/"+MoverService+"."+moverNS+".svc.cluster.local")
		}
		if len(wl.GetServices()) != len(want) {
			t.Errorf("workload %s: services %v, want %v", wl.GetUid(), keys(wl.GetServices()), want)
		}
		for _, k := range want {
			if wl.GetServices()[k] == nil {
				t.Errorf("workload %s: services %v, want %v", wl.GetUid(), keys(wl.GetServices()), want)
			}
		}
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// The scenarios' rewrites decode, and change only what they say.
func TestRewritesDecode(t *testing.T) {
	later := Start.Add(time.Hour)
	p := small.ChurnPods()[0]
	tests := []struct {
		name  string
		write func(*bytes.Buffer)
		check func(t *testing.T, o runtime.Object)
	}{
		{"pod not ready", func(b *bytes.Buffer) { WritePod(b, p, false) }, func(t *testing.T, o runtime.Object) {
			pod := o.(*corev1.Pod)
			if pod.Status.Conditions[0].Status != corev1.ConditionFalse {
				t.Errorf("Ready = %s, want False", pod.Status.Conditions[0].Status)
			}
		}},
		{"node heartbeat", func(b *bytes.Buffer) { WriteNode(b, 2, later) }, func(t *testing.T, o runtime.Object) {
			n := o.(*corev1.Node)
			if !n.Status.Conditions[0].LastHeartbeatTime.Time.Equal(later) {
				t.Errorf("heartbeat = %v, want %v", n.Status.Conditions[0].LastHeartbeatTime, later)
			}
		}},
		{"gateway status", func(b *bytes.Buffer) { WriteGateway(b, "network1", later) }, func(t *testing.T, o runtime.Object) {
			g := o.(*gatewayv1.Gateway)
			if !g.Status.Conditions[0].LastTransitionTime.Time.Equal(later) {
				t.Errorf("condition time = %v, want %v", g.Status.Conditions[0].LastTransitionTime, later)
			}
		}},
		{"mover selects b", func(b *bytes.Buffer) { WriteMover(b, "b") }, func(t *testing.T, o runtime.Object) {
			if got := o.(*corev1.Service).Spec.Selector[MoverLabel]; got != "b" {
				t.Errorf("selector %s = %q, want b", MoverLabel, got)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			tt.write(&b)
			objs, err := discovery.DecodeManifests("rewrite.yaml", b.Bytes())
			if err != nil {
				t.Fatal(err)
			}
			if len(objs) != 1 {
				t.Fatalf("got %d objects, want 1", len(objs))
			}
			tt.check(t, objs[0])
		})
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		change func(*Cluster)
		want   string // substring of the error; "" for none
	}{
		{"small is valid", func(*Cluster) {}, ""},
		{"no name", func(c *Cluster) { c.Name = "" }, "name: required"},
		{"fewer services than namespaces", func(c *Cluster) { c.Services = 2 }, "one per namespace"},
		{"more churn than pods", func(c *Cluster) { c.Churn = 51 }, "churn: 51"},
		{"more movers than the namespace holds", func(c *Cluster) { c.Move = 40 }, "namespace team-00 has only"},
		{"zero pods per file", func(c *Cluster) { c.PodsPerFile = 0 }, "pods per file: 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := small
			tt.change(&c)
			err := c.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("unexpected error: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestStageCommitLeavesNoTemporaryFile(t *testing.T) {
	dir := t.TempDir()
	st, err := Stage(dir, "pods/x.yaml", func(b io.Writer) { WriteMover(b, "a") })
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Commit(); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(filepath.Join(dir, "pods"))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != "x.yaml" {
		t.Errorf("pods/ holds %v, want x.yaml alone", entries)
	}
}
