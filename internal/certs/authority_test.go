package certs

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/peerd-mesh/peerd/internal/fsutil"
)

var cacertsFiles = []string{RootCertFile, CACertFile, CAKeyFile, CertChainFile}

// caDir copies cluster's cacerts files from mesh into a fresh directory
// that the test may rewrite.
func caDir(t *testing.T, mesh, cluster string) string {
	t.Helper()
	dir := t.TempDir()
	install(t, dir, mesh, cluster)
	return dir
}

// install writes cluster's cacerts files from mesh into dir, each through
// a rename, as a careful operator's tool does.
func install(t *testing.T, dir, mesh, cluster string) {
	t.Helper()
	for _, f := range cacertsFiles {
		b, err := os.ReadFile(filepath.Join(mesh, cluster, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := fsutil.WriteFileAtomic(filepath.Join(dir, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// bundleRoots writes root-cert.pem in dir as the roots of the given meshes,
// in order: a root rotation's bundle.
func bundleRoots(t *testing.T, dir string, meshes ...string) {
	t.Helper()
	var bundle []byte
	for _, m := range meshes {
		b, err := os.ReadFile(filepath.Join(m, RootCertFile))
		if err != nil {
			t.Fatal(err)
		}
		bundle = append(bundle, b...)
	}
	if err := fsutil.WriteFileAtomic(filepath.Join(dir, RootCertFile), bundle, 0o644); err != nil {
		t.Fatal(err)
	}
}

func newAuthority(t *testing.T, dir string, now func() time.Time) (*Authority, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	a, err := NewAuthority(dir, AuthorityOptions{Registerer: reg, Now: now, Resync: -1})
	if err != nil {
		t.Fatalf("NewAuthority(%s): %v", dir, err)
	}
	return a, reg
}

// runAuthority follows the directory until the test ends.
func runAuthority(t *testing.T, a *Authority) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

// waitChanged waits for the CA in force to be replaced.
func waitChanged(t *testing.T, changed <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: the Authority did not pick up the change", what)
	}
}

// waitIntermediate waits until the CA in force is cluster's of mesh.
func waitIntermediate(t *testing.T, a *Authority, mesh, cluster, what string) {
	t.Helper()
	want := intermediateOf(t, mesh, cluster)
	deadline := time.After(10 * time.Second)
	for {
		changed := a.Changed() // before the check, so no change slips between
		if a.CA().Certificate().Subject.String() == want {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("%s: the CA in force is %s, want %s", what, a.CA().Certificate().Subject, want)
		}
	}
}

func intermediateOf(t *testing.T, mesh, cluster string) string {
	t.Helper()
	return readPEMCerts(t, filepath.Join(mesh, cluster, CACertFile))[0].Subject.String()
}

func TestAuthorityFollowsFileChanges(t *testing.T) {
	mesh := genMesh(t, "a", "b", "c")
	dir := caDir(t, mesh, "a")
	a, reg := newAuthority(t, dir, nil)
	runAuthority(t, a)

	// A new intermediate written file by file, each through a rename.
	install(t, dir, mesh, "b")
	waitIntermediate(t, a, mesh, "b", "new intermediate b")

	// Written in place (no rename), as `cp` does. Run has its watch by
	// now (it watches before its first read), so only fsnotify can tell.
	for _, f := range cacertsFiles {
		copyFile(t, filepath.Join(mesh, "c", f), filepath.Join(dir, f))
	}
	waitIntermediate(t, a, mesh, "c", "intermediate c written in place")
	if n := testutil.ToFloat64(a.reloads.WithLabelValues("replaced")); n < 2 {
		t.Errorf("peerd_ca_reloads_total{result=replaced} = %v, want at least 2", n)
	}
	if got := a.Status().Reloads; got < 2 {
		t.Errorf("Status().Reloads = %d, want at least 2", got)
	}
	if n, err := testutil.GatherAndCount(reg, "peerd_ca_intermediate_expiry_timestamp_seconds"); err != nil || n != 1 {
		t.Errorf("expiry gauge: %d series, %v", n, err)
	}
}

// TestAuthorityKubernetesSecretFlip: a Secret volume publishes a new
// version by flipping the ..data symlink; every file is a symlink through it.
func TestAuthorityKubernetesSecretFlip(t *testing.T) {
	mesh := genMesh(t, "a", "b")
	dir := t.TempDir()
	version := func(name, cluster string) {
		t.Helper()
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		install(t, filepath.Join(dir, name), mesh, cluster)
	}
	version("..2026_12_01_00_00_00.1", "a")
	if err := os.Symlink("..2026_12_01_00_00_00.1", filepath.Join(dir, kubeDataLink)); err != nil {
		t.Fatal(err)
	}
	for _, f := range cacertsFiles {
		if err := os.Symlink(filepath.Join(kubeDataLink, f), filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	a, _ := newAuthority(t, dir, nil)
	if got, want := a.CA().Certificate().Subject.String(), intermediateOf(t, mesh, "a"); got != want {
		t.Fatalf("initial CA %s, want %s", got, want)
	}
	runAuthority(t, a)

	changed := a.Changed()
	version("..2026_12_02_00_00_00.2", "b")
	if err := os.Symlink("..2026_12_02_00_00_00.2", filepath.Join(dir, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, kubeDataLink)); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(dir, "..2026_12_01_00_00_00.1")); err != nil {
		t.Fatal(err)
	}
	waitChanged(t, changed, "..data flipped to b")
	if got, want := a.CA().Certificate().Subject.String(), intermediateOf(t, mesh, "b"); got != want {
		t.Fatalf("after the flip the CA is %s, want %s (one version, read whole)", got, want)
	}
	if err := a.Status().LastError; err != nil {
		t.Errorf("a flip read a mixed set of files: %v", err)
	}
}

func TestAuthorityKeepsLastGoodCA(t *testing.T) {
	mesh := genMesh(t, "a", "b")
	dir := caDir(t, mesh, "a")
	a, _ := newAuthority(t, dir, nil)
	changed := a.Changed()

	// Half an update: b's key beside a's certificate.
	copyFile(t, filepath.Join(mesh, "b", CAKeyFile), filepath.Join(dir, CAKeyFile))
	err := a.Reload()
	if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, CAKeyFile)) || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("Reload = %v, want an error naming %s", err, CAKeyFile)
	}
	if got, want := a.CA().Certificate().Subject.String(), intermediateOf(t, mesh, "a"); got != want {
		t.Errorf("after a bad reload the CA is %s, want the last good one %s", got, want)
	}
	if st := a.Status(); st.LastError == nil || st.Reloads != 0 {
		t.Errorf("Status = %+v, want LastError set and no reload", st)
	}
	select {
	case <-changed:
		t.Fatal("Changed fired for a bad set of files")
	default:
	}
	// Found again (a resync): counted again.
	_ = a.Reload()
	if n := testutil.ToFloat64(a.reloads.WithLabelValues("failed")); n != 2 {
		t.Errorf("peerd_ca_reloads_total{result=failed} = %v, want 2", n)
	}

	// Unchanged files are no change.
	copyFile(t, filepath.Join(mesh, "a", CAKeyFile), filepath.Join(dir, CAKeyFile))
	if err := a.Reload(); err != nil {
		t.Fatal(err)
	}
	if st := a.Status(); st.LastError != nil || st.Reloads != 0 {
		t.Errorf("Status after fixing the files = %+v, want no error and no reload", st)
	}
	select {
	case <-changed:
		t.Fatal("Changed fired for identical files")
	default:
	}

	install(t, dir, mesh, "b")
	if err := a.Reload(); err != nil {
		t.Fatal(err)
	}
	waitChanged(t, changed, "b")
}

func TestAuthorityRootBundle(t *testing.T) {
	oldMesh, newMesh := genMesh(t, "a"), genMesh(t, "a")
	dir := caDir(t, oldMesh, "a")
	bundleRoots(t, dir, oldMesh, newMesh)
	a, _ := newAuthority(t, dir, func() time.Time { return t0 })
	for _, m := range []string{oldMesh, newMesh} {
		ca := mustLoad(t, filepath.Join(m, "a"), t0)
		leaf, err := ca.ServerCertificate([]string{"x"}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if err := verifyChain(leaf, a.CA().Roots(), "x", t0); err != nil {
			t.Errorf("a leaf under %s does not verify against the bundle: %v", m, err)
		}
	}
	if _, err := NewAuthority(filepath.Join(t.TempDir(), "missing"), AuthorityOptions{}); err == nil {
		t.Error("NewAuthority of a missing directory: want an error")
	}
}
