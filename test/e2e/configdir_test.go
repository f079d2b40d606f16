package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"

	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
	"github.com/peerd-mesh/peerd/test/ztunnel"
)

// TestConfigDirAsDeployToolsLayItOut runs the real binary on a config dir
// that is a symlink (as git-sync makes it), flips it to another revision,
// deletes and recreates it, and puts an oversize file and a misspelt kind in
// it. After each step a ztunnel-like client holds exactly the mesh the
// directory defines (or, while the directory is broken, the last good one),
// and /readyz says what is wrong.
func TestConfigDirAsDeployToolsLayItOut(t *testing.T) {
	base := t.TempDir()
	rev1 := filepath.Join(base, ".revs", "rev1")
	copyInto(t, repoPath("examples", "cluster1"), rev1)
	root := filepath.Join(base, "root")
	if err := os.Symlink(filepath.Join(".revs", "rev1"), root); err != nil {
		t.Fatal(err)
	}
	p := startPeerd(t, peerdOptions{Args: []string{"--cluster-name", cluster, "--config-dir", root, "--max-file-size", "16384"}})
	c := connectZtunnel(t, ztunnel.Config{Target: p.PlaintextAddr, ClusterID: cluster})
	full := expectedAddresses(t, rev1)
	if len(full) == 0 {
		t.Fatal("the example mesh is empty")
	}
	waitMesh(t, c, "the mesh behind the symlinked root", full)

	// git-sync's flip: the next revision lacks the legacy namespace's file.
	rev2 := filepath.Join(base, ".revs", "rev2")
	copyInto(t, rev1, rev2)
	if err := os.Remove(filepath.Join(rev2, "20-legacy.yaml")); err != nil {
		t.Fatal(err)
	}
	flip(t, filepath.Join(".revs", "rev2"), root)
	if err := os.RemoveAll(rev1); err != nil {
		t.Fatal(err)
	}
	withoutLegacy := expectedAddresses(t, rev2)
	if len(withoutLegacy) >= len(full) {
		t.Fatalf("rev2 should define less than rev1: %d vs %d addresses", len(withoutLegacy), len(full))
	}
	waitMesh(t, c, "the mesh after the flip", withoutLegacy)

	// The root goes away: the last good mesh stays, and /readyz says why.
	if err := os.Remove(root); err != nil {
		t.Fatal(err)
	}
	waitReadyzContains(t, p, root+" does not exist")
	if diff := cmp.Diff(withoutLegacy, held(c), protocmp.Transform()); diff != "" {
		t.Fatalf("the mesh changed while the root was gone (-before +now):\n%s", diff)
	}

	// A plain directory takes its place, holding all of the example again.
	copyInto(t, repoPath("examples", "cluster1"), root)
	waitMesh(t, c, "the mesh of the recreated root", full)
	waitFor(t, "/readyz to forget the missing root", func() bool {
		_, body := p.get("/readyz")
		return !strings.Contains(body, "does not exist")
	})

	// An oversize file is refused by name and its objects stay out; the
	// rest of the directory keeps working.
	huge := filepath.Join(root, "40-huge.yaml")
	writeFile(t, huge, webPod("web-9", "10.244.2.39")+"#"+strings.Repeat("x", 20000)+"\n")
	waitReadyzContains(t, p, huge+": file too large: 20")
	p.waitMetric(t, 1, "peerd_config_file_problems_total", `reason="too_large"`)
	if _, ok := c.Workloads()[cluster+"//Pod/legacy/web-9"]; ok {
		t.Fatal("the oversize file's pod reached the client")
	}

	// A misspelt kind keeps the file's last good objects: the legacy
	// Service stays, and /readyz names the document and the typo.
	legacy := filepath.Join(root, "20-legacy.yaml")
	data, err := os.ReadFile(legacy)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, legacy, strings.Replace(string(data), "kind: Service\n", "kind: Servce\n", 1))
	waitReadyzContains(t, p, `kind: invalid value "Servce"`)
	waitReadyzContains(t, p, "did you mean Service?")
	if _, ok := c.Services()["legacy/web.legacy.svc.cluster.local"]; !ok {
		t.Fatal("a misspelt kind deleted the legacy Service")
	}

	// Fixing both brings the directory's mesh, and /readyz is clean.
	if err := os.Remove(huge); err != nil {
		t.Fatal(err)
	}
	writeFile(t, legacy, string(data))
	writeFile(t, filepath.Join(root, "40-web-9.yaml"), webPod("web-9", "10.244.2.39"))
	want := expectedAddresses(t, root)
	if _, ok := want[cluster+"//Pod/legacy/web-9"]; !ok {
		t.Fatal("the model has no web-9 pod: the test's manifest is wrong")
	}
	waitMesh(t, c, "the mesh after the fixes", want)
	waitFor(t, "/readyz without source errors", func() bool {
		_, body := p.get("/readyz")
		return !strings.Contains(body, "source error")
	})
	if st := c.Stats(); st.NACKs != 0 {
		t.Fatalf("client NACKed a response: %s", st.LastNACK)
	}
}

// webPod is a Ready pod of the legacy web Service.
func webPod(name, ip string) string {
	return `apiVersion: v1
kind: Pod
metadata: {name: ` + name + `, namespace: legacy, labels: {app: web}}
spec:
  nodeName: node-b
  containers: [{name: web, image: example.com/web:1.0, ports: [{name: web, containerPort: 8000}]}]
status:
  phase: Running
  podIP: ` + ip + `
  podIPs: [{ip: ` + ip + `}]
  conditions: [{type: Ready, status: "True"}]
`
}

// waitMesh waits until the client holds exactly want.
func waitMesh(t *testing.T, c *ztunnel.Client, what string, want map[string]*workloadpb.Address) {
	t.Helper()
	waitState(t, c, what, func(s *ztunnel.State) bool {
		got := make(map[string]*workloadpb.Address, len(s.Workloads)+len(s.Services))
		for name, w := range s.Workloads {
			got[name] = &workloadpb.Address{Type: &workloadpb.Address_Workload{Workload: w}}
		}
		for name, svc := range s.Services {
			got[name] = &workloadpb.Address{Type: &workloadpb.Address_Service{Service: svc}}
		}
		return cmp.Equal(want, got, protocmp.Transform())
	})
}

// copyInto copies the files of src into dst, creating dst.
func copyInto(t *testing.T, src, dst string) {
	t.Helper()
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		copyFile(t, filepath.Join(src, e.Name()), filepath.Join(dst, e.Name()))
	}
}

// flip re-points link at target atomically, as git-sync does.
func flip(t *testing.T, target, link string) {
	t.Helper()
	tmp := link + ".tmp~"
	if err := os.Symlink(target, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, link); err != nil {
		t.Fatal(err)
	}
}
