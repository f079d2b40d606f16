package main

import (
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	gcpcache "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"

	"github.com/peerd-mesh/peerd/internal/ambient"
	"github.com/peerd-mesh/peerd/internal/discovery"
	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
	"github.com/peerd-mesh/peerd/test/bench"
)

var cluster = bench.Cluster{Name: "c1", Namespaces: 2, Nodes: 3, Services: 4, Pods: 30, Churn: 2, PodsPerFile: 10, Move: 6}

// fullBuild maps every object below dir at once: what the per-file source
// must hold after any sequence of changes.
func fullBuild(t *testing.T, dir string) map[string]*workloadpb.Address {
	t.Helper()
	var in ambient.Inputs
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !manifest(path) {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		objs, err := discovery.DecodeManifests(path, data)
		if err != nil {
			return err
		}
		for _, o := range objs {
			switch o := o.(type) {
			case *corev1.Namespace:
				in.Namespaces = append(in.Namespaces, o)
			case *corev1.Node:
				in.Nodes = append(in.Nodes, o)
			case *corev1.Pod:
				in.Pods = append(in.Pods, o)
			case *corev1.Service:
				in.Services = append(in.Services, o)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*workloadpb.Address{}
	for _, a := range ambient.Build(ambient.Config{ClusterID: cluster.Name}, in).Addresses {
		out[ambient.ResourceName(a)] = a
	}
	return out
}

func assertCacheMatches(t *testing.T, cache *gcpcache.LinearCache, want map[string]*workloadpb.Address) {
	t.Helper()
	got := cache.GetResources()
	if len(got) != len(want) {
		t.Errorf("cache holds %d resources, a full build %d", len(got), len(want))
	}
	for name, w := range want {
		if g, ok := got[name]; !ok || !proto.Equal(g, w) {
			t.Errorf("resource %s: cache holds %v, a full build gives %v", name, g, w)
		}
	}
}

// After each kind of file change the scenarios make, the cache holds
// exactly what mapping the whole directory gives.
func TestSourceFollowsFileChangesLikeAFullBuild(t *testing.T) {
	dir := t.TempDir()
	if err := cluster.Write(dir); err != nil {
		t.Fatal(err)
	}
	cache := gcpcache.NewLinearCache(addressTypeURL)
	src := newSource(dir, ambient.Config{ClusterID: cluster.Name}, cache, zap.NewNop())
	if _, err := src.load(); err != nil {
		t.Fatal(err)
	}
	assertCacheMatches(t, cache, fullBuild(t, dir))

	churned := cluster.ChurnPods()[0]
	steps := []struct {
		name    string
		file    string
		content func(io.Writer)
	}{
		{"pod not ready", bench.ChurnFile(churned), func(w io.Writer) { bench.WritePod(w, churned, false) }},
		{"selector moves pods", bench.MoverFile, func(w io.Writer) { bench.WriteMover(w, "b") }},
		{"node heartbeat", bench.NodeFile(1), func(w io.Writer) { bench.WriteNode(w, 1, bench.Start.Add(time.Minute)) }},
		{"pod file removed", bench.ChurnFile(churned), nil},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			path := filepath.Join(dir, st.file)
			if st.content == nil {
				if err := os.Remove(path); err != nil {
					t.Fatal(err)
				}
			} else {
				staged, err := bench.Stage(dir, st.file, st.content)
				if err != nil {
					t.Fatal(err)
				}
				if err := staged.Commit(); err != nil {
					t.Fatal(err)
				}
			}
			sc := newScope()
			src.reload(path, &sc)
			src.recompute(sc)
			assertCacheMatches(t, cache, fullBuild(t, dir))
		})
	}
}
