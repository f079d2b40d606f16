package kubeharness

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/yaml"
)

// A real istiod (pilot-discovery) beside the harness's API server, for the
// extension-mode tests: built by hack/istiod-tools.sh into a cache outside
// the repository, run as facts.md describes (ambient on, no injection, no
// analysis, loopback ports, a clean environment).

const (
	// EnvIstioTools overrides where pilot-discovery is looked up.
	EnvIstioTools = "PEERD_ISTIO_TOOLS"
	// EnvIstiodRequired turns a missing pilot-discovery from a skip into a
	// failure.
	EnvIstiodRequired = "PEERD_ISTIOD_REQUIRED"
	// IstioVersion is the istio.io/istio version hack/istiod-tools.sh builds
	// and whose CRDs are installed; keep them equal (and test/istio's).
	IstioVersion = "v0.0.0-20260827124520-eed52ebb66ad"
	// IstioSystem is istiod's namespace.
	IstioSystem = "istio-system"
)

// IstioToolsDir is where hack/istiod-tools.sh puts pilot-discovery.
func IstioToolsDir() string {
	if d := os.Getenv(EnvIstioTools); d != "" {
		return d
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(os.TempDir(), "peerd-istio-tools")
	}
	return filepath.Join(home, ".cache", "peerd", "istio-tools")
}

// RequireIstiod returns pilot-discovery's path; it skips the test when the
// binary is missing, or fails it when EnvIstiodRequired is set.
func RequireIstiod(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(IstioToolsDir(), "pilot-discovery")
	_, err := os.Stat(bin)
	if err == nil {
		// hack/istiod-tools.sh records the version it built beside the
		// binary: a stale build (another Istio than the CRDs installed
		// and the protos peerd speaks) must not pass for the real one.
		v, verr := os.ReadFile(bin + ".version")
		got := strings.TrimSpace(string(v))
		if verr == nil && got == IstioVersion {
			return bin
		}
		if verr != nil {
			err = fmt.Errorf("%s: %w", bin+".version", verr)
		} else {
			err = fmt.Errorf("%s: built from istio.io/istio %s, want %s", bin, got, IstioVersion)
		}
	}
	msg := fmt.Sprintf("pilot-discovery missing or stale (%v); build it with: hack/istiod-tools.sh (about 25 minutes cold)", err)
	if os.Getenv(EnvIstiodRequired) != "" {
		t.Fatalf("%s (%s is set, so this is a failure, not a skip)", msg, EnvIstiodRequired)
	}
	t.Skipf("%s (set %s=1 to make this a failure)", msg, EnvIstiodRequired)
	return ""
}

// IstiodOptions describe the istiod to run.
type IstiodOptions struct {
	ClusterID   string // default Kubernetes
	TrustDomain string // default cluster.local
}

// Istiod is a running pilot-discovery. GRPCAddr serves ztunnel's delta xDS
// in plaintext.
type Istiod struct {
	GRPCAddr string
	// SecureGRPCAddr serves the same over TLS (istiod's 15012), for clients
	// with a service-account token.
	SecureGRPCAddr string
	HTTPAddr       string

	c    *Cluster
	bin  string
	dir  string
	args []string
	env  []string
	proc *process
}

// StartIstiod creates istio-system, installs Istio's CRDs from the
// istio.io/istio module, starts istiod against this API server and waits
// for its /ready. It is stopped with the cluster.
func (c *Cluster) StartIstiod(t testing.TB, opts IstiodOptions) *Istiod {
	t.Helper()
	bin := RequireIstiod(t)
	if opts.ClusterID == "" {
		opts.ClusterID = "Kubernetes"
	}
	if opts.TrustDomain == "" {
		opts.TrustDomain = "cluster.local"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*startTimeout)
	defer cancel()
	if err := c.ensureNamespace(ctx, IstioSystem); err != nil {
		t.Fatalf("istiod: %v", err)
	}
	if err := c.InstallIstioCRDs(ctx); err != nil {
		t.Fatalf("istiod: %v", err)
	}
	i := &Istiod{c: c, bin: bin, dir: filepath.Join(c.Dir, "istiod")}
	if err := os.MkdirAll(i.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	mesh := fmt.Sprintf("trustDomain: %s\nrootNamespace: %s\n", opts.TrustDomain, IstioSystem)
	for name, content := range map[string]string{"mesh.yaml": mesh, "networks.yaml": "networks: {}\n"} {
		if err := os.WriteFile(filepath.Join(i.dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	i.env = []string{
		"HOME=" + i.dir,
		"PILOT_ENABLE_AMBIENT=true",
		"POD_NAMESPACE=" + IstioSystem,
		"POD_NAME=istiod-0",
		"REVISION=default",
		"CLUSTER_ID=" + opts.ClusterID,
		"PILOT_CERT_PROVIDER=istiod",
		"INJECT_ENABLED=false",
		"PILOT_ENABLE_ANALYSIS=false",
	}
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		ports := make([]string, 6)
		for k := range ports {
			p := freePort()
			if p == 0 {
				t.Fatal("istiod: no free loopback port")
			}
			ports[k] = strconv.Itoa(p)
		}
		i.GRPCAddr, i.SecureGRPCAddr, i.HTTPAddr = "127.0.0.1:"+ports[0], "127.0.0.1:"+ports[1], "127.0.0.1:"+ports[2]
		i.args = []string{"discovery",
			"--kubeconfig", c.Kubeconfig,
			"--clusterID", opts.ClusterID,
			"--domain", "cluster.local",
			"--meshConfig", filepath.Join(i.dir, "mesh.yaml"),
			"--networksConfig", filepath.Join(i.dir, "networks.yaml"),
			"--grpcAddr", i.GRPCAddr,
			"--secureGRPCAddr", i.SecureGRPCAddr,
			"--httpAddr", i.HTTPAddr,
			"--monitoringAddr", "127.0.0.1:" + ports[3],
			"--httpsAddr", "127.0.0.1:" + ports[4],
			"--ctrlz_address", "127.0.0.1",
			"--ctrlz_port", ports[5],
		}
		if lastErr = i.Start(ctx); lastErr == nil {
			return i
		}
		if !i.proc.exited() || !i.proc.logContains("address already in use") {
			break
		}
	}
	t.Fatalf("istiod: %v", lastErr)
	return nil
}

// Start runs istiod (again, after Stop: same ports, same configuration, as a
// restarted pod would come back) and waits for /ready.
func (i *Istiod) Start(ctx context.Context) error {
	if i.proc != nil && !i.proc.exited() {
		return errors.New("istiod is running")
	}
	p, err := i.c.spawnIn("istiod", i.dir, i.env, i.bin, i.args...)
	if err != nil {
		return err
	}
	i.proc = p
	return waitHealthy(ctx, p, func(ctx context.Context) error {
		return httpCheck(ctx, http.DefaultClient, "http://"+i.HTTPAddr+"/ready", nil, "")
	})
}

// Stop ends istiod with SIGTERM (about 2 s), as a pod being deleted.
func (i *Istiod) Stop() { i.proc.terminate(10 * time.Second) }

func (c *Cluster) ensureNamespace(ctx context.Context, name string) error {
	_, err := c.Kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", name, err)
	}
	return nil
}

// InstallIstioCRDs creates Istio's CRDs (manifests/charts/base/files/
// crd-all.gen.yaml of the istio.io/istio module) and waits until they are
// established.
func (c *Cluster) InstallIstioCRDs(ctx context.Context) error {
	dir, err := goModDownload(ctx, "istio.io/istio", IstioVersion)
	if err != nil {
		return err
	}
	file := filepath.Join(dir, "manifests", "charts", "base", "files", "crd-all.gen.yaml")
	crds, err := readCRDs(file)
	if err != nil {
		return err
	}
	if len(crds) == 0 {
		return fmt.Errorf("%s: no CustomResourceDefinitions", file)
	}
	for _, crd := range crds {
		_, err := c.Dynamic.Resource(crdGVR).Create(ctx, crd, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("%s: create customresourcedefinition %s: %w", file, crd.GetName(), err)
		}
	}
	for _, crd := range crds {
		if err := c.waitCRDEstablished(ctx, crd.GetName()); err != nil {
			return err
		}
	}
	return nil
}

// istioResources are the Istio kinds ApplyIstio creates, by kind.
var istioResources = map[string]schema.GroupVersionResource{
	"ServiceEntry":        {Group: "networking.istio.io", Version: "v1", Resource: "serviceentries"},
	"WorkloadEntry":       {Group: "networking.istio.io", Version: "v1", Resource: "workloadentries"},
	"AuthorizationPolicy": {Group: "security.istio.io", Version: "v1", Resource: "authorizationpolicies"},
}

// ApplyIstio creates one Istio object (ServiceEntry, WorkloadEntry or
// AuthorizationPolicy) from YAML, or updates it when it exists.
func (c *Cluster) ApplyIstio(ctx context.Context, manifest string) error {
	obj := map[string]any{}
	if err := yaml.Unmarshal([]byte(manifest), &obj); err != nil {
		return err
	}
	u := &unstructured.Unstructured{Object: obj}
	gvr, ok := istioResources[u.GetKind()]
	if !ok {
		return fmt.Errorf("%s %s/%s: the harness cannot apply this kind", u.GetKind(), u.GetNamespace(), u.GetName())
	}
	client := c.Dynamic.Resource(gvr).Namespace(u.GetNamespace())
	_, err := client.Create(ctx, u, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		cur, getErr := client.Get(ctx, u.GetName(), metav1.GetOptions{})
		if getErr != nil {
			return getErr
		}
		u.SetResourceVersion(cur.GetResourceVersion())
		_, err = client.Update(ctx, u, metav1.UpdateOptions{})
	}
	if err != nil {
		return fmt.Errorf("%s %s/%s: %w", u.GetKind(), u.GetNamespace(), u.GetName(), err)
	}
	return nil
}

// DeleteIstio deletes one Istio object (a kind ApplyIstio creates).
func (c *Cluster) DeleteIstio(ctx context.Context, kind, namespace, name string) error {
	gvr, ok := istioResources[kind]
	if !ok {
		return fmt.Errorf("%s %s/%s: the harness cannot delete this kind", kind, namespace, name)
	}
	if err := c.Dynamic.Resource(gvr).Namespace(namespace).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		return fmt.Errorf("%s %s/%s: %w", kind, namespace, name, err)
	}
	return nil
}
